//! Activity and idle end to end (issue 21): containers of the private engine
//! running a busy loop or sleeping, host GPU processes of the test user busy
//! or sleeping (listed by the scripted nvidia-smi, whose GPU utilisation
//! query stands for the device fallback), across oneshot runs: the activity
//! fields, `idle_since`, `detection.workload_idle` and
//! `detection.workload_active` once each, and the usage totals of the exit
//! events.

mod common;

use common::{
    as_test_user, docker, docker_host, seconds_pass, test_image, test_user, Containers, Scratch,
    UUID,
};
use serde_json::Value;

const UUID2: &str = "GPU-0a1b2c3d-0000-1111-2222-333344445555";

fn activity<'a>(inv: &'a Value, section: &str, key: &str) -> &'a Value {
    let a = &inv[section][key]["activity"];
    assert!(
        a.is_object(),
        "{section}.{key} has no activity: {}",
        inv[section][key]
    );
    a
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event_type"] == t).collect()
}

/// Events of `t` about container `id` or host process `pid`.
fn about<'a>(events: &'a [Value], t: &str, key: &str) -> Vec<&'a Value> {
    of_type(events, t)
        .into_iter()
        .filter(|e| {
            e["details"]["container_id"] == key
                || e["details"]["pid"]
                    .as_u64()
                    .is_some_and(|p| p.to_string() == key)
        })
        .collect()
}

#[test]
#[ignore = "needs the private Docker engine, root and the test user dwtest: run by tests/run.sh"]
fn busy_and_sleeping_workloads_are_told_apart_and_idle_is_told_once() {
    let host = docker_host();
    let img = test_image();
    let s = Scratch::new();
    let mut c = Containers::new(&host);
    let busy = c.run(&["--network", "none", &img, "sh", "-c", "while :; do :; done"]);
    let asleep = c.run(&["--network", "none", &img, "sleep", "600"]);
    let host_net = c.run(&["--network", "host", &img, "sleep", "600"]);
    let busy_proc = as_test_user("while :; do :; done");
    let sleeping_proc = as_test_user("exec sleep 600");
    let (busy_pid, sleeping_pid) = (busy_proc.pid().to_string(), sleeping_proc.pid().to_string());
    // Each alone on its GPU: the device's utilisation is theirs.
    s.set_gpu_apps(&format!(
        "{busy_pid}, 100, {UUID2}\n{sleeping_pid}, 200, {UUID}\n"
    ));
    s.set_gpu_utilization(&format!("{UUID}, 0\n{UUID2}, 90\n"));
    let config = s.config(
        Some(&host),
        "[[stages.idle]]\ngrace = \"1s\"\nidle_after = \"4s\"\n",
    );

    let mut events = s.scan_events(&config);
    let first = s.inventory();
    let a = activity(&first, "containers", &busy);
    assert!(
        a["cpu_cores"].is_null() && a["sampled_s"].is_null(),
        "first reading: {a}"
    );
    seconds_pass(2);
    events.extend(s.scan_events(&config));
    let inv = s.inventory();
    let a = activity(&inv, "containers", &busy);
    // A busy loop takes what the machine gives it: on two cores shared
    // with the rest of the suite, a quarter of one or less; well above the
    // idle threshold (0.05) and the sleeper, whatever the load.
    let cores = a["cpu_cores"].as_f64().expect("busy cores");
    assert!(cores > 0.1, "a busy loop uses a core: {a}");
    assert!(a["sampled_s"].as_f64().is_some_and(|s| s >= 1.0), "{a}");
    assert!(a["idle_since"].is_null(), "{a}");
    let z = activity(&inv, "containers", &asleep);
    assert!(z["cpu_cores"].as_f64().is_some_and(|c| c < 0.05), "{z}");
    assert_eq!(z["net_bytes_per_s"], 0.0, "own namespace, no traffic: {z}");
    assert!(z["idle_since"].is_string(), "{z}");
    assert_eq!(z["idle"], false, "not yet idle_after: {z}");
    let h = activity(&inv, "containers", &host_net);
    assert!(h["net_bytes_per_s"].is_null(), "host network: {h}");
    assert!(inv["_activity_counters"][format!("container:{busy}")].is_object());
    // Confirmed at this scan: their first reading.
    assert!(activity(&inv, "host_processes", &busy_pid)["cpu_cores"].is_null());

    seconds_pass(2);
    events.extend(s.scan_events(&config));
    let inv = s.inventory();
    let p = activity(&inv, "host_processes", &busy_pid);
    assert!(p["cpu_cores"].as_f64().is_some_and(|c| c > 0.1), "{p}");
    assert_eq!(p["gpu_util_percent"], 90.0, "alone on its GPU: {p}");
    let q = activity(&inv, "host_processes", &sleeping_pid);
    assert_eq!(q["gpu_util_percent"], 0.0, "{q}");
    assert!(q["idle_since"].is_string(), "{q}");

    // Long enough for both sleepers to be idle for idle_after; then once
    // more: nothing is told twice, by a new run of the program or otherwise.
    seconds_pass(5);
    events.extend(s.scan_events(&config));
    seconds_pass(1);
    events.extend(s.scan_events(&config));
    let idle = about(&events, "detection.workload_idle", &asleep);
    assert_eq!(idle.len(), 1, "{events:#?}");
    assert_eq!(idle[0]["details"]["kind"], "container");
    assert!(idle[0]["details"]["idle_since"].is_string());
    assert!(idle[0]["details"]["signals"]["cpu_cores"].is_number());
    let idle = about(&events, "detection.workload_idle", &sleeping_pid);
    assert_eq!(idle.len(), 1, "{events:#?}");
    assert_eq!(idle[0]["details"]["kind"], "host_process");
    assert_eq!(idle[0]["details"]["gpu_memory_mb"], 200);
    assert_eq!(idle[0]["user"], test_user().0);
    assert!(about(&events, "detection.workload_idle", &busy).is_empty());
    assert!(about(&events, "detection.workload_idle", &busy_pid).is_empty());
    assert_eq!(
        activity(&s.inventory(), "containers", &asleep)["idle"],
        true
    );

    // The sleeper wakes up: active again, once, saying for how long it idled.
    docker(
        &host,
        &["exec", "-d", &asleep, "sh", "-c", "while :; do :; done"],
    );
    seconds_pass(1);
    let woke = s.scan_events(&config);
    let active = about(&woke, "detection.workload_active", &asleep);
    assert_eq!(active.len(), 1, "{woke:#?}");
    assert!(active[0]["details"]["idle_for_s"]
        .as_i64()
        .is_some_and(|s| s >= 4));
    seconds_pass(1);
    let again = s.scan_events(&config);
    assert!(about(&again, "detection.workload_active", &asleep).is_empty());

    // The sleeping GPU process ends: its exit carries the GPU time it held.
    let held_before = s.inventory()["host_processes"][&sleeping_pid]["usage"].clone();
    drop(sleeping_proc);
    s.set_gpu_apps(&format!("{busy_pid}, 100, {UUID2}\n"));
    let gone = s.scan_events(&config);
    let exited = about(&gone, "detection.host_gpu_process_exited", &sleeping_pid);
    assert_eq!(exited.len(), 1, "{gone:#?}");
    let usage = &exited[0]["details"]["usage"];
    assert_eq!(usage, &held_before, "{gone:#?}");
    let held = usage["gpu_seconds_held"].as_f64().expect("held");
    let idle = usage["gpu_seconds_idle"].as_f64().expect("idle");
    assert!(held >= 7.0 && idle > 0.0 && idle <= held, "{usage}");
    drop(busy_proc);
}

#[test]
#[ignore = "needs the private Docker engine, root and the test user dwtest: run by tests/run.sh"]
fn a_shared_gpu_is_unknown_unless_it_is_idle_and_unknown_is_never_idle() {
    let host = docker_host();
    let s = Scratch::new();
    let one = as_test_user("exec sleep 600");
    let two = as_test_user("exec sleep 600");
    let (a, b) = (one.pid().to_string(), two.pid().to_string());
    s.set_gpu_apps(&format!("{a}, 100, {UUID}\n{b}, 100, {UUID}\n"));
    s.set_gpu_utilization(&format!("{UUID}, 60\n"));
    let config = s.config(
        Some(&host),
        "[[stages.idle]]\ngrace = \"1s\"\nidle_after = \"1s\"\n",
    );
    for _ in 0..3 {
        s.scan(&config);
        seconds_pass(1);
    }
    let inv = s.inventory();
    for pid in [&a, &b] {
        let p = activity(&inv, "host_processes", pid);
        assert!(
            p["gpu_util_percent"].is_null(),
            "shared and busy: unknown, not 0: {p}"
        );
        assert!(p["idle_since"].is_null(), "unknown is never idle: {p}");
    }
    // The shared GPU goes quiet: no one on it computes.
    s.set_gpu_utilization(&format!("{UUID}, 1\n"));
    let mut events = s.scan_events(&config);
    seconds_pass(2);
    events.extend(s.scan_events(&config));
    let inv = s.inventory();
    for pid in [&a, &b] {
        assert!(activity(&inv, "host_processes", pid)["idle_since"].is_string());
        assert_eq!(
            about(&events, "detection.workload_idle", pid).len(),
            1,
            "{events:#?}"
        );
    }
}
