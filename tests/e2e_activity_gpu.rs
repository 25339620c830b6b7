//! The GPU signal of activity and idle end to end (issue 21), with the real
//! binary: the fake NVML (`tests/fake-nvml`) serving per-process samples
//! with timestamps (a busy process, an idle one, one whose old busy sample
//! is still in the driver's buffer, NOT_FOUND, MIG), and the scripted
//! nvidia-smi fallback (a GPU's utilisation: alone idle, alone busy,
//! shared). Every GPU process is a real `sleep` of the test user, so its
//! CPU signal is idle and the GPU signal alone decides. Checked across
//! oneshot runs, watch mode's GPU polls and a restart of watch mode:
//! `gpu_util_percent`, `idle_since`, and `detection.workload_idle` and
//! `detection.workload_active` once each.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{
    as_test_user, binary, edit_config, fake_nvml, seconds_pass, signal, use_nvml, Proc, Scratch,
    UUID,
};
use serde_json::Value;

const UUID2: &str = "GPU-0a1b2c3d-0000-1111-2222-333344445555";
const UUID3: &str = "GPU-0a1b2c3d-0000-1111-2222-333344446666";
const UUID4: &str = "GPU-0a1b2c3d-0000-1111-2222-333344447777";
const UUID5: &str = "GPU-0a1b2c3d-0000-1111-2222-333344448888";
const MIG2: &str = "MIG-9f8e7d6c-0000-1111-2222-333344445555";
const MIG5: &str = "MIG-9f8e7d6c-0000-1111-2222-333344448888";
const MIB: u64 = 1024 * 1024;

/// Short thresholds: judged after a second, told idle after two.
const IDLE: &str = "[[stages.idle]]\ngrace = \"1s\"\nidle_after = \"2s\"\n";

/// How long a test waits for a condition.
const DEADLINE: Duration = Duration::from_secs(30);

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event_type"] == t).collect()
}

/// Events of `t` about host process `pid`.
fn about<'a>(events: &'a [Value], t: &str, pid: &str) -> Vec<&'a Value> {
    of_type(events, t)
        .into_iter()
        .filter(|e| {
            e["details"]["pid"]
                .as_u64()
                .map(|p| p.to_string())
                .as_deref()
                == Some(pid)
        })
        .collect()
}

/// How many `workload_idle` and `workload_active` events are about `pid`.
fn told(events: &[Value], pid: &str) -> (usize, usize) {
    (
        about(events, "detection.workload_idle", pid).len(),
        about(events, "detection.workload_active", pid).len(),
    )
}

/// The activity of confirmed host process `pid` (null when there is none).
fn activity<'a>(inv: &'a Value, pid: &str) -> &'a Value {
    &inv["host_processes"][pid]["activity"]
}

/// The inventory, when it is there and whole (a watch may be replacing it).
fn read_inventory(s: &Scratch) -> Option<Value> {
    let text = std::fs::read_to_string(s.inventory_path()).ok()?;
    serde_json::from_str(&text).ok()
}

/// A test user's `sleep`: a real process, CPU idle.
fn sleeper() -> (Proc, String) {
    let p = as_test_user("exec sleep 600");
    let pid = p.pid().to_string();
    (p, pid)
}

/// The config with the fake NVML as the GPU source (the scripted
/// nvidia-smi only its fallback), the idle stage's short thresholds and
/// `agent` added to `[agent]`.
fn nvml_config(s: &Scratch, agent: &str) -> PathBuf {
    let config = s.config(None, IDLE);
    use_nvml(&config, fake_nvml());
    if !agent.is_empty() {
        edit_config(&config, "[agent]\n", &format!("[agent]\n{agent}\n"));
    }
    config
}

/// One oneshot run with the fake NVML reading `scenario` (none for the
/// scripted nvidia-smi alone); returns the events it wrote.
fn scan(s: &Scratch, config: &Path, scenario: Option<&Path>) -> Vec<Value> {
    let before = s.event_lines().len();
    let mut cmd = binary(config, &[]);
    if let Some(path) = scenario {
        cmd.env("FAKE_NVML_SCENARIO", path);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run detect-workloads");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scan failed: {stderr}");
    s.events().split_off(before)
}

/// Oneshot runs a second apart until `done` holds for the inventory (each
/// run's inventory checked by `each` first), then `extra` more; returns
/// every event they wrote.
fn scan_until(
    s: &Scratch,
    config: &Path,
    scenario: Option<&Path>,
    extra: usize,
    mut each: impl FnMut(&Value),
    done: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let start = Instant::now();
    let mut events = Vec::new();
    loop {
        seconds_pass(1);
        events.extend(scan(s, config, scenario));
        let inv = s.inventory();
        each(&inv);
        if done(&inv) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "not within {DEADLINE:?}: {inv:#}\n{events:#?}"
        );
    }
    for _ in 0..extra {
        seconds_pass(1);
        events.extend(scan(s, config, scenario));
        each(&s.inventory());
    }
    events
}

/// `detect-workloads watch` with this config, its standard error appended
/// to `log`; the fake NVML, when given a scenario, reads it again at each
/// collection.
fn watch(config: &Path, scenario: Option<&Path>, log: &Path) -> Child {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the watch log");
    let mut cmd = binary(config, &["watch"]);
    if let Some(path) = scenario {
        cmd.env("FAKE_NVML_SCENARIO", path)
            .env("FAKE_NVML_FOLLOW", "1");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start detect-workloads watch")
}

/// Waits until `check` holds for the inventory, or panics after
/// [`DEADLINE`] (or when the watch exits) saying `what`, with its log.
fn wait_until(
    what: &str,
    s: &Scratch,
    child: &mut Child,
    log: &Path,
    mut check: impl FnMut(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        if let Some(inv) = read_inventory(s) {
            if check(&inv) {
                return inv;
            }
        }
        let log_text = || std::fs::read_to_string(log).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            panic!("watch exited ({status}) waiting for {what}: {}", log_text());
        }
        assert!(
            start.elapsed() < DEADLINE,
            "not within {DEADLINE:?}: {what}\ninventory: {:#}\nlog: {}",
            read_inventory(s).unwrap_or_default(),
            log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `n` more cycles of the watch: a cycle starting in another
/// second than the last one written (`last_scan` is in whole seconds).
fn cycles(n: usize, s: &Scratch, child: &mut Child, log: &Path) -> Value {
    let mut inv = read_inventory(s).unwrap_or_default();
    for i in 0..n {
        let last = inv["last_scan"].clone();
        inv = wait_until(&format!("cycle {i} after {last}"), s, child, log, |inv| {
            inv["last_scan"] != last
        });
    }
    inv
}

/// SIGTERM, and the exit status 0.
fn stop(mut child: Child, log: &Path) {
    signal(&child, libc::SIGTERM);
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            assert_eq!(status.code(), Some(0), "watch: {text}");
            return;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("watch did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root and the test user dwtest: run by tests/run.sh"]
fn nvml_samples_tell_busy_idle_stale_unsampled_and_mig_processes_apart_across_oneshot_runs() {
    let s = Scratch::new();
    let (_p1, busy) = sleeper();
    let (_p2, idle) = sleeper();
    let (_p3, stale) = sleeper();
    let (_p4, mig) = sleeper();
    let (_p5, quiet) = sleeper();
    let (_p6, split) = sleeper();
    let scenario = s.path("nvml-scenario");
    // GPU 0, shared by three: `busy` has a sample at every reading, `idle`
    // none, `stale` one old busy sample. Its busy device figure is never
    // theirs (their samples are known). GPU 1 in MIG mode: no samples, no
    // device figure. GPU 2: its process alone, no sample at all (NOT_FOUND
    // at every reading), the device below the threshold. `split` is on GPU 3
    // (no sample) and on a MIG device of GPU 4: one of its GPUs is unknown.
    let write = |extra: &str| {
        std::fs::write(
            &scenario,
            format!(
                "gpu {UUID} busy=60\n\
                 compute {busy} {}\n\
                 compute {idle} {}\n\
                 compute {stale} {}\n\
                 util {busy} 90 ts=now\n\
                 util {stale} 80 ts=100\n\
                 {extra}\n\
                 gpu {UUID2} mig=on busy=70\n\
                 mig {MIG2} gi=1 ci=0\n\
                 compute {mig} {}\n\
                 gpu {UUID3} busy=3\n\
                 compute {quiet} {}\n\
                 gpu {UUID4}\n\
                 compute {split} {}\n\
                 gpu {UUID5} mig=on\n\
                 mig {MIG5} gi=2 ci=0\n\
                 compute {split} {}\n",
                100 * MIB,
                200 * MIB,
                300 * MIB,
                400 * MIB,
                500 * MIB,
                50 * MIB,
                60 * MIB,
            ),
        )
        .expect("write the scenario")
    };
    write("");
    let config = nvml_config(&s, "");

    // The first run sees them all for the first time (pending): the GPU's
    // first reading takes the driver's whole buffer, the stale sample too.
    let mut events = scan(&s, &config, Some(&scenario));
    let inv = s.inventory();
    assert_eq!(inv["scan"]["collectors"]["nvml"]["ok"], true, "{inv:#}");
    let pending = &inv["_pending_processes"];
    assert_eq!(pending[&stale]["sm_util"], 80, "{pending:#}");
    assert_eq!(pending[&busy]["sm_util"], 90, "{pending:#}");
    assert_eq!(pending[&idle]["sm_util"], 0, "{pending:#}");
    let until = inv["gpus"][UUID]["_samples_until_us"].as_u64();
    assert!(until.is_some_and(|u| u > 100), "{:#}", inv["gpus"]);
    assert!(inv["gpus"][UUID2]["_samples_until_us"].is_null());

    // Then each run reads the samples after the previous one's.
    let mut stale_since = std::collections::BTreeSet::new();
    let check = |inv: &Value, stale_since: &mut std::collections::BTreeSet<String>| {
        let hosts = &inv["host_processes"];
        if hosts.get(&busy).is_none() {
            return;
        }
        let a = activity(inv, &busy);
        assert_eq!(a["gpu_util_percent"], 90.0, "its samples: {a}");
        assert!(a["idle_since"].is_null(), "{a}");
        for pid in [&idle, &stale] {
            let a = activity(inv, pid);
            assert_eq!(a["gpu_util_percent"], 0.0, "no newer sample: {pid} {a}");
            assert_eq!(hosts[pid]["sm_util"], 0, "{pid}: {}", hosts[pid]);
        }
        let a = activity(inv, &quiet);
        assert_eq!(
            a["gpu_util_percent"], 0.0,
            "NOT_FOUND: 0, not the device's 3 nor unknown: {a}"
        );
        let a = activity(inv, &mig);
        assert!(a["gpu_util_percent"].is_null(), "MIG: unknown: {a}");
        assert!(a["idle_since"].is_null(), "unknown is never idle: {a}");
        assert_eq!(hosts[&mig]["mig_uuid"], MIG2);
        let a = activity(inv, &split);
        assert!(
            a["gpu_util_percent"].is_null(),
            "one of its GPUs unknown: {a} {}",
            hosts[&split]
        );
        assert!(a["idle_since"].is_null(), "unknown is never idle: {a}");
        if let Some(since) = activity(inv, &stale)["idle_since"].as_str() {
            stale_since.insert(since.to_string());
        }
    };
    let idle_ones = [idle.clone(), stale.clone(), quiet.clone()];
    events.extend(scan_until(
        &s,
        &config,
        Some(&scenario),
        3,
        |inv| check(inv, &mut stale_since),
        |inv| idle_ones.iter().all(|p| activity(inv, p)["idle"] == true),
    ));
    for pid in &idle_ones {
        assert_eq!(told(&events, pid), (1, 0), "{pid}: {events:#?}");
    }
    for pid in [&busy, &mig, &split] {
        assert_eq!(told(&events, pid), (0, 0), "{pid}: {events:#?}");
    }
    assert_eq!(stale_since.len(), 1, "idle_since kept: {stale_since:?}");
    let told_idle = &about(&events, "detection.workload_idle", &stale)[0]["details"];
    assert_eq!(told_idle["signals"]["gpu_util_percent"], 0.0, "{told_idle}");
    assert_eq!(told_idle["gpu_memory_mb"], 300);
    assert_eq!(told_idle["gpu_uuids"], serde_json::json!([UUID]));

    // `stale` computes again: a new sample at each reading. Active, once.
    write(&format!("util {stale} 70 ts=now"));
    seconds_pass(1);
    let woke = scan(&s, &config, Some(&scenario));
    let inv = s.inventory();
    let a = activity(&inv, &stale);
    assert_eq!(a["gpu_util_percent"], 70.0, "{a}");
    assert!(a["idle_since"].is_null() && a["idle"] == false, "{a}");
    let active = about(&woke, "detection.workload_active", &stale);
    assert_eq!(active.len(), 1, "{woke:#?}");
    let idle_for = active[0]["details"]["idle_for_s"].as_i64();
    assert!(idle_for.is_some_and(|s| s >= 2), "{:#}", active[0]);
    assert_eq!(
        active[0]["details"]["idle_since"].as_str(),
        stale_since.iter().next().map(String::as_str)
    );
    events.extend(woke);
    seconds_pass(1);
    events.extend(scan(&s, &config, Some(&scenario)));
    assert_eq!(told(&events, &stale), (1, 1), "{events:#?}");
    for pid in [&idle, &quiet] {
        assert_eq!(told(&events, pid), (1, 0), "{pid}: {events:#?}");
    }
}

#[test]
#[ignore = "needs root and the test user dwtest: run by tests/run.sh"]
fn without_samples_a_process_alone_has_its_gpus_figure_and_a_shared_one_is_unknown() {
    let s = Scratch::new();
    let (_p1, alone) = sleeper();
    let (_p2, one) = sleeper();
    let (_p3, two) = sleeper();
    let scenario = s.path("nvml-scenario");
    // The driver gives no per-process samples (NOT_SUPPORTED, an old one).
    std::fs::write(
        &scenario,
        format!(
            "fail nvmlDeviceGetProcessUtilization 3\n\
             gpu {UUID} busy=2\n\
             compute {alone} {MIB}\n\
             util {alone} 90 ts=now\n\
             gpu {UUID2} busy=2\n\
             compute {one} {MIB}\n\
             compute {two} {MIB}\n"
        ),
    )
    .expect("write the scenario");
    let config = nvml_config(&s, "");
    let events = scan_until(
        &s,
        &config,
        Some(&scenario),
        1,
        |inv| {
            if let Some(a) = inv["host_processes"].get(&alone).map(|p| &p["activity"]) {
                assert_eq!(a["gpu_util_percent"], 2.0, "the device's figure: {a}");
                assert!(inv["host_processes"][&alone]["sm_util"].is_null());
                for pid in [&one, &two] {
                    let a = activity(inv, pid);
                    assert!(a["gpu_util_percent"].is_null(), "shared: {a}");
                }
            }
        },
        |inv| {
            [&alone, &one, &two]
                .iter()
                .all(|p| activity(inv, p)["idle"] == true)
        },
    );
    // The shared GPU is below the threshold: no one on it computes.
    for pid in [&alone, &one, &two] {
        assert_eq!(told(&events, pid), (1, 0), "{pid}: {events:#?}");
    }
}

#[test]
#[ignore = "needs root and the test user dwtest: run by tests/run.sh"]
fn nvml_idle_is_told_once_across_watch_gpu_polls_and_a_restart_of_watch() {
    let s = Scratch::new();
    let (_p1, busy) = sleeper();
    let (_p2, idle) = sleeper();
    let (_p3, stale) = sleeper();
    let scenario = s.path("nvml-scenario");
    let write = |extra: &str| {
        std::fs::write(
            &scenario,
            format!(
                "gpu {UUID}\n\
                 compute {busy} {MIB}\n\
                 compute {idle} {MIB}\n\
                 compute {stale} {MIB}\n\
                 util {busy} 90 ts=now\n\
                 util {stale} 80 ts=100\n\
                 {extra}\n"
            ),
        )
        .expect("write the scenario")
    };
    write("");
    // No full scan but the first: every later cycle is a GPU poll (a new
    // sample of `busy` at each makes each one run).
    let config = nvml_config(&s, "interval = \"1h\"\ngpu_interval = \"300ms\"");
    let log = s.path("watch.log");
    let mut w = watch(&config, Some(&scenario), &log);
    let inv = wait_until("idle and stale told idle", &s, &mut w, &log, |inv| {
        [&idle, &stale]
            .iter()
            .all(|p| activity(inv, p)["idle"] == true)
    });
    let since = |inv: &Value, pid: &str| activity(inv, pid)["idle_since"].clone();
    let (stale_since, idle_since) = (since(&inv, &stale), since(&inv, &idle));
    assert!(stale_since.is_string() && idle_since.is_string(), "{inv:#}");
    let inv = cycles(3, &s, &mut w, &log);
    assert_eq!(since(&inv, &stale), stale_since, "{inv:#}");
    assert_eq!(since(&inv, &idle), idle_since, "{inv:#}");
    assert_eq!(activity(&inv, &stale)["gpu_util_percent"], 0.0);
    assert_eq!(activity(&inv, &busy)["gpu_util_percent"], 90.0);
    let opened = &inv["scan"]["collectors"]["nvml"]["stats"]["sessions_opened"];
    assert_eq!(
        opened, 1,
        "one session, kept across polls: {:#}",
        inv["scan"]
    );
    let events = s.events();
    for pid in [&idle, &stale] {
        assert_eq!(told(&events, pid), (1, 0), "{pid}: {events:#?}");
    }
    assert_eq!(told(&events, &busy), (0, 0), "{events:#?}");
    stop(w, &log);

    // A restart: the state says who was told; the new session reads the
    // samples after the last reading.
    let mut w = watch(&config, Some(&scenario), &log);
    let inv = cycles(3, &s, &mut w, &log);
    assert_eq!(since(&inv, &stale), stale_since, "{inv:#}");
    assert_eq!(since(&inv, &idle), idle_since, "{inv:#}");
    assert_eq!(activity(&inv, &stale)["gpu_util_percent"], 0.0, "{inv:#}");
    assert_eq!(activity(&inv, &stale)["idle"], true);
    let events = s.events();
    for pid in [&idle, &stale] {
        assert_eq!(told(&events, pid), (1, 0), "{pid}: {events:#?}");
    }

    // `stale` computes again: active, once, on a GPU poll.
    write(&format!("util {stale} 70 ts=now"));
    wait_until("stale told active", &s, &mut w, &log, |_| {
        told(&s.events(), &stale).1 > 0
    });
    let inv = cycles(2, &s, &mut w, &log);
    let a = activity(&inv, &stale);
    assert_eq!(a["gpu_util_percent"], 70.0, "{a}");
    assert!(a["idle_since"].is_null(), "{a}");
    let events = s.events();
    assert_eq!(told(&events, &stale), (1, 1), "{events:#?}");
    assert_eq!(told(&events, &idle), (1, 0), "{events:#?}");
    assert_eq!(since(&inv, &idle), idle_since, "{inv:#}");
    stop(w, &log);
}

#[test]
#[ignore = "needs root and the test user dwtest: run by tests/run.sh"]
fn the_nvidia_smi_fallback_tells_idle_once_across_oneshot_runs_and_watch_gpu_polls() {
    let s = Scratch::new();
    let (_p1, quiet) = sleeper();
    let (_p2, busy) = sleeper();
    let (_p3, one) = sleeper();
    let (_p4, two) = sleeper();
    s.set_gpu_apps(&format!(
        "{quiet}, 100, {UUID}\n{busy}, 200, {UUID2}\n{one}, 300, {UUID3}\n{two}, 300, {UUID3}\n"
    ));
    let utilization = |busy_pct: u32, quiet_pct: u32| {
        s.set_gpu_utilization(&format!(
            "{UUID}, {quiet_pct}\n{UUID2}, {busy_pct}\n{UUID3}, 40\n"
        ));
    };
    utilization(90, 2);
    let config = s.config(None, IDLE);
    let mut quiet_since = std::collections::BTreeSet::new();
    let mut check = |inv: &Value| {
        if inv["host_processes"].get(&quiet).is_none() {
            return;
        }
        let a = activity(inv, &quiet);
        assert_eq!(a["gpu_util_percent"], 2.0, "alone: its GPU's: {a}");
        if let Some(since) = a["idle_since"].as_str() {
            quiet_since.insert(since.to_string());
        }
        let a = activity(inv, &busy);
        assert!(
            a["gpu_util_percent"].as_f64().is_some_and(|u| u >= 90.0),
            "{a}"
        );
        assert!(a["idle_since"].is_null(), "{a}");
        for pid in [&one, &two] {
            let a = activity(inv, pid);
            assert!(a["gpu_util_percent"].is_null(), "shared, busy: {a}");
            assert!(a["idle_since"].is_null(), "unknown is never idle: {a}");
        }
    };
    let mut events = scan_until(&s, &config, None, 2, &mut check, |inv| {
        activity(inv, &quiet)["idle"] == true
    });
    assert_eq!(told(&events, &quiet), (1, 0), "{events:#?}");
    for pid in [&busy, &one, &two] {
        assert_eq!(told(&events, pid), (0, 0), "{pid}: {events:#?}");
    }

    // Watch mode: after its full scan, GPU polls only. A poll whose
    // nvidia-smi answer is what the last one said is skipped, so each step
    // changes the busy GPU's figure and waits for a poll to have read it.
    edit_config(
        &config,
        "[agent]\n",
        "[agent]\ninterval = \"1h\"\ngpu_interval = \"300ms\"\n",
    );
    let log = s.path("watch.log");
    let mut w = watch(&config, None, &log);
    for pct in [91, 92, 93] {
        utilization(pct, 2);
        let inv = wait_until(
            &format!("a poll reading {pct} %"),
            &s,
            &mut w,
            &log,
            |inv| activity(inv, &busy)["gpu_util_percent"] == f64::from(pct),
        );
        check(&inv);
        assert_eq!(activity(&inv, &quiet)["idle"], true, "{inv:#}");
    }
    // And the quiet one computes: active, once.
    utilization(94, 50);
    wait_until("quiet told active", &s, &mut w, &log, |_| {
        told(&s.events(), &quiet).1 > 0
    });
    utilization(95, 50);
    let inv = wait_until("a poll reading 95 %", &s, &mut w, &log, |inv| {
        activity(inv, &busy)["gpu_util_percent"] == 95.0
    });
    stop(w, &log);
    let a = activity(&inv, &quiet);
    assert_eq!(a["gpu_util_percent"], 50.0, "{a}");
    assert!(a["idle_since"].is_null(), "{a}");
    events = s.events();
    assert_eq!(told(&events, &quiet), (1, 1), "{events:#?}");
    for pid in [&busy, &one, &two] {
        assert_eq!(told(&events, pid), (0, 0), "{pid}: {events:#?}");
    }
    assert_eq!(quiet_since.len(), 1, "idle_since kept: {quiet_since:?}");
}
