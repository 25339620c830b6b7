//! Host GPU processes end to end: a scripted `nvidia-smi` lists real PIDs and
//! the real binary attributes them from the real `/proc`.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::{sleeper, Proc, Scratch, UUID};
use serde_json::Value;

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
#[ignore = "needs root and the test user dwtest: run by tests/run.sh"]
fn host_processes_are_attributed_filtered_and_confirmed() {
    let s = Scratch::new();
    let config = s.config(None, "");

    // As another user.
    let (other_name, other_uid) = common::test_user();
    let as_other = Proc(
        Command::new("sleep")
            .arg("600")
            .uid(other_uid)
            .spawn()
            .expect("spawn as test user"),
    );
    // Spaces and invalid UTF-8 in argv.
    let odd = Proc(
        Command::new("sh")
            .arg("-c")
            .arg("sleep 600")
            .arg(OsStr::from_bytes(b"my script.py"))
            .arg(OsStr::from_bytes(b"--name=\xff\xfeend"))
            .spawn()
            .expect("spawn odd argv"),
    );
    // A system process, by name.
    let sys_dir = s.path("sbin");
    std::fs::create_dir_all(&sys_dir).expect("mkdir");
    let sys_bin = sys_dir.join("nvidia-persistenced");
    std::fs::copy("/bin/sleep", &sys_bin).expect("copy sleep");
    let system = Proc(
        Command::new(&sys_bin)
            .arg("600")
            .spawn()
            .expect("spawn system"),
    );
    let plain = sleeper();
    let transient = sleeper();
    let missing_pid = 4_194_301u32; // above any default pid_max: never exists

    let mut csv = format!(
        "{}, 1542, {UUID}\n{}, 1030, {UUID}\n{}, 20, {UUID}\n{}, [N/A], {UUID}\n{missing_pid}, 5, {UUID}\n{}, 7, {UUID}\n",
        plain.pid(),
        odd.pid(),
        system.pid(),
        transient.pid(),
        transient.pid(),
    );
    csv += &format!("{}, 100, {UUID}\n", as_other.pid());
    s.set_gpu_apps(&csv);

    // Scan 1: everything new is pending; no process event.
    let stderr = s.scan(&config);
    assert!(stderr.contains("0 host GPU processes"), "{stderr}");
    let inv = s.inventory();
    assert!(inv["host_processes"]
        .as_object()
        .expect("object")
        .is_empty());
    let pending = inv["_pending_processes"].as_object().expect("pending");
    assert!(pending.contains_key(&plain.pid().to_string()));
    assert!(
        !pending.contains_key(&missing_pid.to_string()),
        "missing pid skipped"
    );
    assert!(
        !pending.contains_key(&system.pid().to_string()),
        "system process excluded"
    );
    assert!(types(&s.events()).iter().all(|t| !t.contains("process")));

    // Scan 2: the transient one is gone; the rest is confirmed.
    drop(transient);
    let csv2: String = csv
        .lines()
        .filter(|l| !l.contains("[N/A]") && !l.contains(", 7, "))
        .map(|l| format!("{l}\n"))
        .collect();
    s.set_gpu_apps(&csv2);
    s.scan(&config);
    let inv = s.inventory();
    let host = inv["host_processes"].as_object().expect("object");
    let entry = &host[&plain.pid().to_string()];
    assert_eq!(entry["pid"], plain.pid());
    assert_eq!(entry["user"], "root");
    assert_eq!(entry["cmdline"], "sleep 600");
    assert_eq!(entry["gpu_memory_mb"], 1542);
    assert_eq!(entry["gpu_uuid"], UUID);
    assert!(entry["detected_at"].as_str().expect("ts").ends_with('Z'));
    assert_eq!(
        host[&odd.pid().to_string()]["cmdline"],
        "sh -c sleep 600 my script.py --name=\u{fffd}\u{fffd}end"
    );
    assert_eq!(
        host[&as_other.pid().to_string()]["user"],
        other_name.as_str()
    );
    assert!(!host.contains_key(&system.pid().to_string()));
    assert!(inv["_pending_processes"]
        .as_object()
        .expect("pending")
        .is_empty());

    let discovered: Vec<&Value> = s
        .events()
        .iter()
        .filter(|e| e["event_type"] == "detection.host_gpu_process_discovered")
        .cloned()
        .collect::<Vec<_>>()
        .leak()
        .iter()
        .collect();
    assert_eq!(
        discovered.len(),
        host.len(),
        "one event per confirmed process"
    );
    // The exact line for the plain process.
    let ts = inv["last_scan"].as_str().expect("ts");
    // Its cgroup (issue 18, additive), as the event gives it: a path.
    let cgroup = discovered
        .iter()
        .find(|e| e["details"]["pid"] == plain.pid())
        .and_then(|e| e["details"]["cgroup"].as_str())
        .expect("the plain process's event names its cgroup")
        .to_string();
    assert!(cgroup.starts_with('/'), "{cgroup}");
    let line = format!(
        "{{\"timestamp\":\"{ts}\",\"event_type\":\"detection.host_gpu_process_discovered\",\"schema_version\":\"1\",\"user\":\"root\",\"source\":\"detect-workloads-test\",\"details\":{{\"pid\":{},\"cmdline\":\"sleep 600\",\"gpu_memory_mb\":1542,\"gpu_uuid\":\"{UUID}\",\"cgroup\":{}}}}}",
        plain.pid(),
        serde_json::Value::String(cgroup.clone())
    );
    assert!(
        s.event_lines().contains(&line),
        "missing {line}\nin {:#?}",
        s.event_lines()
    );
    // The transient process never produced an event.
    assert!(!s
        .event_lines()
        .iter()
        .any(|l| l.contains("[N/A]") || l.contains("\"gpu_memory_mb\":7")));

    // Scan 3: nothing changed: no new events; detected_at kept.
    let before = s.event_lines().len();
    s.scan(&config);
    assert_eq!(s.event_lines().len(), before);
    assert_eq!(
        s.inventory()["host_processes"][plain.pid().to_string()]["detected_at"],
        entry["detected_at"]
    );

    // Scan 4: the plain process exits.
    let plain_pid = plain.pid();
    drop(plain);
    s.set_gpu_apps(&csv2.replace(&format!("{plain_pid}, 1542, {UUID}\n"), ""));
    s.scan(&config);
    let line = format!(
        "\"event_type\":\"detection.host_gpu_process_exited\",\"schema_version\":\"1\",\"user\":\"root\",\"source\":\"detect-workloads-test\",\"details\":{{\"pid\":{plain_pid},\"cmdline\":\"sleep 600\",\"usage\":{{\"gpu_seconds_held\":"
    );
    let new_lines = &s.event_lines()[before..];
    assert_eq!(new_lines.len(), 1, "{new_lines:#?}");
    assert!(new_lines[0].contains(&line), "{}", new_lines[0]);
    // The usage it leaves behind: held from the first scan that saw it to
    // its exit, none of it idle (the idle stage waits 30 minutes).
    let exit: serde_json::Value = serde_json::from_str(&new_lines[0]).expect("json");
    let usage = &exit["details"]["usage"];
    assert!(
        usage["gpu_seconds_held"].as_f64().expect("held") > 0.0,
        "{usage}"
    );
    assert_eq!(usage["gpu_seconds_idle"], 0.0, "{usage}");
    assert!(!s.inventory()["host_processes"]
        .as_object()
        .expect("object")
        .contains_key(&plain_pid.to_string()));
}

#[test]
fn dry_run_reads_state_but_writes_nothing() {
    let s = Scratch::new();
    let config = s.config(None, "");
    let p = s.gpu_process();
    s.scan(&config);
    let state_before = std::fs::read(s.inventory_path()).expect("state");
    // The first scan created the event log (empty: nothing is confirmed yet).
    let events_before = std::fs::read(s.events_path()).expect("event log");
    for args in [&["--sink", "stdout"][..], &["--dry-run"][..]] {
        let out = s.run(&config, args);
        assert!(out.status.success());
        let printed: Value =
            serde_json::from_slice(&out.stdout).expect("stdout is the inventory JSON");
        // The previous state was read: the process is confirmed (second sighting).
        assert!(printed["host_processes"]
            .as_object()
            .expect("object")
            .contains_key(&p.pid().to_string()));
        assert_eq!(
            std::fs::read(s.inventory_path()).expect("state"),
            state_before
        );
        assert_eq!(
            std::fs::read(s.events_path()).expect("event log"),
            events_before,
            "no event emitted"
        );
    }
    let names = common::listing(s.inventory_path().parent().expect("dir"));
    assert_eq!(
        names.iter().filter(|n| n.contains("tmp")).count(),
        0,
        "{names:?}"
    );
}

#[test]
fn nvidia_smi_failure_is_recorded_and_keeps_processes() {
    let s = Scratch::new();
    let config = s.config(None, "");
    let _process = s.gpu_process(); // kept alive for the scans
    s.scan(&config);
    s.scan(&config);
    let confirmed = s.inventory()["host_processes"].clone();
    assert_eq!(confirmed.as_object().expect("object").len(), 1);
    for mode in ["fail", "garbage", "hang"] {
        s.set_smi_mode(mode);
        let before = s.event_lines().len();
        s.scan(&config);
        let inv = s.inventory();
        let smi = &inv["scan"]["collectors"]["nvidia-smi"];
        assert_eq!(smi["ok"], false, "{mode}");
        assert!(
            smi["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{mode}"
        );
        assert_eq!(inv["host_processes"], confirmed, "{mode}: carried over");
        assert_eq!(s.event_lines().len(), before, "{mode}: no exited event");
    }
    // The hung script's child was killed with its process group.
    let child: i32 = std::fs::read_to_string(s.path("child.pid"))
        .expect("child pid written")
        .trim()
        .parse()
        .expect("pid");
    // Killed means gone, or a zombie waiting for init to reap it.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{child}/stat"))
            .map(|stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    };
    for _ in 0..20 {
        if !alive() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !alive(),
        "the hung nvidia-smi's child {child} is still running"
    );
}
