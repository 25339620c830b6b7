//! `detect-workloads report` end to end (issue 21, point 5): GPU processes
//! of the test user, one busy and one sleeping, scanned until the sleeper is
//! told idle, then ended; the report of the real event log and inventory
//! says the GPU-hours each held, the idle share, and names the idle one, in
//! every format; a line appended twice counts once; a period that ends
//! before now leaves the inventory out.

mod common;

use std::io::Write;

use common::{as_test_user, seconds_pass, test_user, Scratch, UUID};
use serde_json::Value;

const UUID2: &str = "GPU-0a1b2c3d-0000-1111-2222-333344445555";

fn report(s: &Scratch, config: &std::path::Path, args: &[&str]) -> String {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    let out = s.run(config, &all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "report {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
#[ignore = "needs root and the test user dwtest: run by tests/run.sh"]
fn the_report_sums_gpu_hours_per_user_and_names_the_idle_workloads() {
    let (user, _) = test_user();
    let s = Scratch::new();
    let busy = as_test_user("while :; do :; done");
    let sleeper = as_test_user("exec sleep 600");
    let (busy_pid, sleeper_pid) = (busy.pid().to_string(), sleeper.pid().to_string());
    s.set_gpu_apps(&format!(
        "{busy_pid}, 100, {UUID2}\n{sleeper_pid}, 2048, {UUID}\n"
    ));
    s.set_gpu_utilization(&format!("{UUID}, 0\n{UUID2}, 90\n"));
    let config = s.config(
        None,
        "[[stages.idle]]\ngrace = \"1s\"\nidle_after = \"2s\"\n",
    );
    // Until the sleeper is told idle (a deadline, not a fixed wait).
    let mut told = false;
    for _ in 0..20 {
        s.scan(&config);
        told = s
            .events()
            .iter()
            .any(|e| e["event_type"] == "detection.workload_idle");
        if told {
            break;
        }
        seconds_pass(1);
    }
    assert!(told, "the sleeper was never told idle: {:#?}", s.events());
    seconds_pass(1);
    s.scan(&config);
    // The sleeper ends: its exit event carries its totals.
    drop(sleeper);
    s.set_gpu_apps(&format!("{busy_pid}, 100, {UUID2}\n"));
    s.scan(&config);
    let events = s.events();
    let exit = events
        .iter()
        .find(|e| e["event_type"] == "detection.host_gpu_process_exited")
        .expect("exit event");
    let held = exit["details"]["usage"]["gpu_seconds_held"]
        .as_f64()
        .expect("held");
    let idle = exit["details"]["usage"]["gpu_seconds_idle"]
        .as_f64()
        .expect("idle");
    assert!(idle > 0.0 && held >= idle, "{exit}");
    let inv = s.inventory();
    let busy_held = inv["host_processes"][&busy_pid]["usage"]["gpu_seconds_held"]
        .as_f64()
        .expect("busy held");

    let json: Value =
        serde_json::from_str(&report(&s, &config, &["--format", "json"])).expect("report JSON");
    assert_eq!(json["includes_inventory"], true, "{json:#}");
    let users = json["users"].as_array().expect("users");
    assert_eq!(users.len(), 1, "{json:#}");
    let u = &users[0];
    assert_eq!(u["user"], user.as_str());
    let total = u["gpu_hours_held"].as_f64().expect("held");
    assert!(close(total, (held + busy_held) / 3600.0), "{u:#}");
    assert!(
        close(u["gpu_hours_idle"].as_f64().expect("idle"), idle / 3600.0),
        "{u:#}"
    );
    assert_eq!(u["workloads"], 2, "{u:#}");
    let idle_ones = u["idle_workloads"].as_array().expect("idle workloads");
    assert_eq!(idle_ones.len(), 1, "only the sleeper: {u:#}");
    assert_eq!(idle_ones[0]["id"], sleeper_pid.as_str());
    assert_eq!(idle_ones[0]["kind"], "host_process");
    assert_eq!(idle_ones[0]["state"], "exited");
    assert_eq!(idle_ones[0]["gpu_memory_mb"], 2048);
    assert!(idle_ones[0]["idle_since"].is_string(), "{u:#}");

    let table = report(&s, &config, &["--since", "1h"]);
    assert!(table.starts_with("GPU usage from "), "{table}");
    assert!(
        table.contains(&user) && table.contains("Idle workloads:"),
        "{table}"
    );
    assert!(table.contains(&format!("pid {sleeper_pid}")), "{table}");
    assert!(table.contains("2048 MiB"), "{table}");

    let csv = report(&s, &config, &["--format", "csv"]);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(rows[1].starts_with(&format!("{user},")), "{csv}");
    assert!(rows[1].contains(",2,1,"), "two workloads, one idle: {csv}");

    // The exit line appended again (as a repaired rotation can): same sums.
    let text = std::fs::read_to_string(s.events_path()).expect("log");
    let line = text
        .lines()
        .find(|l| l.contains("detection.host_gpu_process_exited"))
        .expect("exit line");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(s.events_path())
        .expect("open log");
    writeln!(log, "{line}").expect("append");
    let again: Value =
        serde_json::from_str(&report(&s, &config, &["--format", "json"])).expect("report JSON");
    assert_eq!(again["users"][0]["gpu_hours_held"], u["gpu_hours_held"]);

    // A period that ended an hour ago: no event, no inventory.
    let past: Value = serde_json::from_str(&report(
        &s,
        &config,
        &["--since", "2h", "--until", "1h", "--format", "json"],
    ))
    .expect("report JSON");
    assert_eq!(past["includes_inventory"], false);
    assert_eq!(past["users"], serde_json::json!([]), "{past:#}");

    // An empty period is a usage error.
    let out = s.run(&config, &["report", "--since", "1h", "--until", "2h"]);
    assert_eq!(out.status.code(), Some(2));
    drop(busy);
}
