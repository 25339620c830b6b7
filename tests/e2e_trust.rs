//! Trust, round two (issue 18), end to end: the unprivileged test user
//! (`dwtest`) tries to hide a GPU job or charge it to someone else, and the
//! real binary still reports it as theirs: a process name that is not UTF-8,
//! look-alike container cgroups under the user's slice (moved there as
//! root, standing in for systemd's delegation), a job sliced into
//! short-lived processes, 300 processes with 6 MB command lines, and an
//! inventory mode that would let anyone forge the state.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event_type"] == format!("detection.{t}"))
        .collect()
}

/// Waits (a generous bound) until `done` holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 64 random hex digits.
fn random_hex() -> String {
    let bytes = std::fs::read("/proc/sys/kernel/random/uuid").expect("uuid");
    let a = String::from_utf8_lossy(&bytes).replace(['-', '\n'], "");
    let bytes = std::fs::read("/proc/sys/kernel/random/uuid").expect("uuid");
    let b = String::from_utf8_lossy(&bytes).replace(['-', '\n'], "");
    format!("{a}{b}")
}

#[test]
#[ignore = "needs root and the test user: run by tests/run.sh"]
fn a_gpu_process_with_a_name_that_is_not_utf8_is_reported_as_its_owners() {
    let s = Scratch::new();
    let (user, _) = test_user();
    // The job renames itself with one invalid byte, then runs on.
    let job = as_test_user("printf '\\377gpu' > /proc/self/comm; while :; do sleep 1; done");
    let pid = job.pid();
    wait_until("the new name", || {
        std::fs::read(format!("/proc/{pid}/comm")).is_ok_and(|n| n.starts_with(b"\xffgpu"))
    });
    s.set_gpu_apps(&format!("{pid}, 4096, {UUID}\n"));
    let config = s.config(None, "");
    s.scan(&config);
    let events = s.scan_events(&config);
    let found = of_type(&events, "host_gpu_process_discovered");
    assert_eq!(found.len(), 1, "{events:#?}");
    assert_eq!(found[0]["user"], user.as_str());
    assert_eq!(found[0]["details"]["pid"], pid);
    let inv = s.inventory();
    let p = &inv["host_processes"][pid.to_string()];
    assert_eq!(p["user"], user.as_str(), "{inv:#}");
    assert_eq!(p["gpu_memory_mb"], 4096);
    assert!(p.get("read_error").is_none(), "{p}");
    // ps shows it, its name decoded (U+FFFD), nothing dropped.
    let ps = s.run(&config, &["ps"]);
    let table = String::from_utf8_lossy(&ps.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&pid.to_string()) && l.contains(&user)),
        "{table}"
    );
}

/// Cgroups this test creates in every v1 hierarchy (and the v2 one when
/// mounted), removed when dropped (deepest first, only what it created).
struct Cgroups {
    created: Vec<PathBuf>,
    leaves: Vec<PathBuf>,
}

const HIERARCHIES: [&str; 3] = ["pids", "systemd", "unified"];

impl Cgroups {
    fn new() -> Self {
        Cgroups {
            created: Vec::new(),
            leaves: Vec::new(),
        }
    }

    /// Creates `path` (relative to each hierarchy's root) and moves `pid` in.
    fn put(&mut self, path: &str, pid: u32) {
        let mut moved = 0;
        for h in HIERARCHIES {
            let root = Path::new("/sys/fs/cgroup").join(h);
            if !root.join("cgroup.procs").exists() {
                continue;
            }
            let mut dir = root.clone();
            for part in path.trim_start_matches('/').split('/') {
                dir.push(part);
                if !dir.exists() {
                    std::fs::create_dir(&dir).expect("mkdir cgroup");
                    self.created.push(dir.clone());
                }
            }
            std::fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("move into cgroup");
            self.leaves.push(dir);
            moved += 1;
        }
        assert!(moved > 0, "no cgroup hierarchy to move {pid} into");
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            // Empty by now (the processes are killed first); retried briefly
            // while the kernel lets go of them.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
#[ignore = "needs root, the test user and the private Docker engine: run by tests/run.sh"]
fn look_alike_container_cgroups_neither_hide_nor_frame() {
    let host = docker_host();
    let (user, uid) = test_user();
    let s = Scratch::new();
    let mut containers = Containers::new(&host);
    // Alice's container: no GPU granted, so a process charged to it would
    // be a "not granted" mismatch against her.
    let alice = containers.run(&[
        "--label",
        "ds01.user=alice",
        "--name",
        &unique("trust-alice"),
        &test_image(),
        "sleep",
        "600",
    ]);
    let mut cgroups = Cgroups::new();
    let slice = format!("/user.slice/user-{uid}.slice/user@{uid}.service");
    let places = [
        format!("{slice}/docker-{}.scope", random_hex()),
        format!("{slice}/docker-{alice}{}.scope", &random_hex()[..52]),
        format!("{slice}/libpod-{}.scope", random_hex()),
        format!("{slice}/kubepods/burstable/pod{}", &random_hex()[..32]),
    ];
    let jobs: Vec<Proc> = places
        .iter()
        .map(|_| as_test_user("while :; do sleep 1; done"))
        .collect();
    for (job, place) in jobs.iter().zip(&places) {
        cgroups.put(place, job.pid());
    }
    let csv: String = jobs
        .iter()
        .map(|j| format!("{}, 8192, {UUID}\n", j.pid()))
        .collect();
    s.set_gpu_apps(&csv);
    let prom = s.path("prom");
    std::fs::create_dir_all(&prom).expect("mkdir");
    let config = s.config(
        Some(&host),
        &format!(
            "[[sinks.prometheus]]\ntextfile_dir = \"{}\"\n",
            prom.display()
        ),
    );
    s.scan(&config);
    let before = s.event_lines().len();
    let summary = s.scan(&config);
    let events: Vec<Value> = s.events().split_off(before);

    let inv = s.inventory();
    for (job, place) in jobs.iter().zip(&places) {
        let p = &inv["host_processes"][job.pid().to_string()];
        assert_eq!(p["user"], user.as_str(), "{place}: {inv:#}");
        assert_eq!(p["gpu_memory_mb"], 8192, "{place}");
        assert_eq!(p["cgroup"], place.as_str(), "{place}: its cgroup recorded");
        let told = of_type(&events, "host_gpu_process_discovered");
        assert!(
            told.iter()
                .any(|e| e["details"]["pid"] == job.pid()
                    && e["details"]["cgroup"] == place.as_str()),
            "{place}: {events:#?}"
        );
    }
    // Nothing charged to alice's container, no alert against her.
    let c = &inv["containers"][&alice];
    assert_eq!(c["gpu_in_use"], false, "{c:#}");
    assert!(c.get("gpu_mismatch").is_none(), "{c:#}");
    assert!(
        of_type(&events, "container_gpu_mismatch").is_empty(),
        "{events:#?}"
    );
    assert!(of_type(&events, "container_gpu_started").is_empty());
    // The summary line, the metrics and ps count them.
    assert!(
        summary.contains(
            "4 host GPU processes (0 pending), 4 of them in a look-alike container cgroup"
        ),
        "{summary}"
    );
    let metrics = std::fs::read_to_string(prom.join("detect_workloads.prom")).expect("metrics");
    assert!(
        metrics.contains(&format!(
            "ds01_workload_host_gpu_processes{{user=\"{user}\"}} 4"
        )),
        "{metrics}"
    );
    let ps = s.run(&config, &["ps"]);
    let table = String::from_utf8_lossy(&ps.stdout);
    for job in &jobs {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&format!("{} ", job.pid()))
                    && l.contains(" host ")
                    && l.contains(&user)),
            "{table}"
        );
    }
}

#[test]
#[ignore = "needs root and the test user: run by tests/run.sh"]
fn a_job_sliced_into_short_lived_processes_is_reported_once() {
    let s = Scratch::new();
    let (user, _) = test_user();
    let config = s.config(None, "");
    // Each slice lives 2 s and holds 4 GiB; one is listed at each scan.
    let slice = || {
        let p = as_test_user("sleep 2");
        s.set_gpu_apps(&format!("{}, 4096, {UUID}\n", p.pid()));
        p
    };
    let first = slice();
    assert!(s.scan_events(&config).is_empty());
    let mut first = first;
    first.0.wait().expect("first slice ends");
    let second = slice();
    let events = s.scan_events(&config);
    let started = of_type(&events, "user_gpu_use_started");
    assert_eq!(started.len(), 1, "{events:#?}");
    assert_eq!(started[0]["user"], user.as_str());
    assert_eq!(started[0]["details"]["gpu_uuid"], UUID);
    assert_eq!(started[0]["details"]["gpu_memory_mb"], 4096);
    let inv = s.inventory();
    assert_eq!(inv["user_gpu_use"][0]["user"], user.as_str(), "{inv:#}");
    let ps = s.run(&config, &["ps"]);
    let table = String::from_utf8_lossy(&ps.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.contains(" short-lived ") && l.contains(&user) && l.contains("4.0 GiB")),
        "{table}"
    );
    let mut second = second;
    second.0.wait().expect("second slice ends");
    let third = slice();
    let events = s.scan_events(&config);
    assert!(of_type(&events, "user_gpu_use_started").is_empty(), "once");
    assert!(of_type(&events, "host_gpu_process_discovered").is_empty());
    let mut third = third;
    third.0.wait().expect("third slice ends");
    s.set_gpu_apps("");
    let events = s.scan_events(&config);
    let stopped = of_type(&events, "user_gpu_use_stopped");
    assert_eq!(stopped.len(), 1, "{events:#?}");
    assert_eq!(stopped[0]["details"]["processes_seen"], 3);
    assert!(of_type(&s.scan_events(&config), "user_gpu_use_stopped").is_empty());
}

#[test]
#[ignore = "needs root and the test user: run by tests/run.sh"]
fn three_hundred_gpu_processes_with_6_mb_command_lines_cost_little() {
    let s = Scratch::new();
    // 46 arguments of 128 KiB - 1 (the kernel's limit per argument): 6.03 MB
    // (the kernel allows at most 6 MiB of arguments, whatever the stack).
    let arg = "x".repeat(128 * 1024 - 1);
    let (_, uid) = test_user();
    let mut jobs = Vec::new();
    for _ in 0..300 {
        // A shell waiting on its standard input (kept open by the test),
        // its command line 6 MB: `sh -c 'read x' sh ARG...`.
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "read x", "sh"])
            .args(std::iter::repeat_n(&arg, 46))
            .env_clear()
            .stdin(Stdio::piped())
            .uid(uid)
            .gid(uid);
        // SAFETY: setrlimit is async-signal-safe; nothing else runs
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // The argument area comes out of the stack limit (a quarter
                // of it may hold arguments).
                let limit = libc::rlimit {
                    rlim_cur: 64 << 20,
                    rlim_max: 64 << 20,
                };
                if libc::setrlimit(libc::RLIMIT_STACK, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        jobs.push(Proc(cmd.spawn().expect("spawn a 6 MB command line")));
    }
    let csv: String = jobs
        .iter()
        .map(|j| format!("{}, 100, {UUID}\n", j.pid()))
        .collect();
    s.set_gpu_apps(&csv);
    let config = s.config(None, "");
    let rusage = s.path("rusage.txt");
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %M", "-o"])
        .arg(&rusage)
        .arg(BIN)
        .arg("--config")
        .arg(&config)
        .env_remove("DOCKER_HOST")
        .output()
        .expect("run under /usr/bin/time");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let figures = std::fs::read_to_string(&rusage).expect("time's figures");
    let mut parts = figures.split_whitespace();
    let wall: f64 = parts.next().and_then(|t| t.parse().ok()).expect("wall");
    let kb: u64 = parts.next().and_then(|t| t.parse().ok()).expect("maxrss");
    eprintln!(
        "300 GPU processes x 6 MB command lines: scan {wall:.2} s, peak RSS {} MB",
        kb / 1024
    );
    let inv = s.inventory();
    let procfs = &inv["scan"]["collectors"]["procfs"];
    assert_eq!(
        procfs["ok"], true,
        "within the collector's deadline: {procfs}"
    );
    let pending = inv["_pending_processes"]
        .as_object()
        .expect("pending")
        .len();
    assert_eq!(pending, 300, "every one read");
    let cmdline = inv["_pending_processes"][jobs[0].pid().to_string()]["cmdline"]
        .as_str()
        .expect("cmdline");
    assert!(
        cmdline.len() <= 4096 + 3,
        "stored capped: {}",
        cmdline.len()
    );
    assert!(kb < 100 * 1024, "peak RSS {kb} kB, at most 100 MB");
}

#[test]
fn an_inventory_or_event_log_anyone_could_write_is_refused() {
    for (table, key) in [
        ("[[sinks.inventory-file]]", "mode = \"0640\""),
        ("[[sinks.event-log]]", ""),
    ] {
        let s = Scratch::new();
        let config = s.config(None, "");
        if key.is_empty() {
            let events = s.events_path();
            edit_config(
                &config,
                &format!("path = \"{}\"", events.display()),
                &format!("path = \"{}\"\nmode = \"0666\"", events.display()),
            );
        } else {
            edit_config(&config, key, "mode = \"0666\"");
        }
        for args in [&["validate"][..], &[][..]] {
            let out = s.run(&config, args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{table} {args:?}: {stderr}");
            assert!(
                stderr.contains("0666") && stderr.contains("write"),
                "{stderr}"
            );
        }
        assert!(!s.inventory_path().exists(), "nothing written");
    }
}
