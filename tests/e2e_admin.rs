//! The administrator's second hour (issue 23), end to end: commands that
//! never mislead. Default stages when a file lists none, an override that
//! would log events without their state, both GPU collectors side by side,
//! Docker unreachable or forbidden or misnamed, and what `ps`, `validate`
//! and the scan say about each.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{docker_host, edit_config, test_image, unique, Containers, Scratch, BIN};
use serde_json::Value;

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The config of [`Scratch::config`] with its `[[stages.*]]` lines removed:
/// collectors and sinks only.
fn without_stages(s: &Scratch, docker: Option<&str>) -> PathBuf {
    let config = s.config(docker, "");
    let text = std::fs::read_to_string(&config).expect("read config");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("[[stages."))
        .collect();
    std::fs::write(&config, kept.join("\n")).expect("write config");
    config
}

#[test]
fn a_file_without_stages_runs_the_default_stages_and_validate_says_why() {
    let s = Scratch::new();
    let config = without_stages(&s, None);
    let (out, err) = text(&s.run(&config, &["validate"]));
    assert!(err.is_empty(), "{err}");
    let stages = out
        .lines()
        .find(|l| l.starts_with("stages (in run order): "))
        .unwrap_or_else(|| panic!("no stage line: {out}"));
    for stage in [
        "redact",
        "classify",
        "resolve-user",
        "gpu-devices",
        "exclude-system",
        "transient-filter",
    ] {
        assert!(stages.contains(stage), "{stage} not in {stages}");
    }
    assert!(
        out.contains("the file lists no [[stages.*]]: the built-in default stages are in force"),
        "{out}"
    );
    // The transient filter is in force: a GPU process seen once is pending.
    let p = s.gpu_process();
    s.scan(&config);
    let inv = s.inventory();
    let pid = p.pid().to_string();
    assert!(inv["host_processes"].get(&pid).is_none(), "{inv}");
    assert!(inv["_pending_processes"].get(&pid).is_some(), "{inv}");
    s.scan(&config);
    assert!(s.inventory()["host_processes"].get(&pid).is_some());
    // A file listing its stages says so.
    let listed = s.config(None, "");
    let (out, _) = text(&s.run(&listed, &["validate"]));
    assert!(out.contains("(the stages the file lists;"), "{out}");
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn a_file_without_stages_classifies_and_attributes_containers() {
    let host = docker_host();
    let s = Scratch::new();
    let config = without_stages(&s, Some(&host));
    let mut containers = Containers::new(&host);
    let name = unique("dw23-nostages");
    let id = containers.create(&[
        "--name",
        &name,
        "--label",
        "ds01.user=alice",
        &test_image(),
        "true",
    ]);
    s.scan(&config);
    let entry = &s.inventory()["containers"][&id];
    assert_eq!(entry["origin"], "raw-docker", "{entry}");
    assert_eq!(entry["user"], "alice", "{entry}");
}

#[test]
fn an_override_that_would_log_events_without_state_is_refused() {
    let s = Scratch::new();
    let config = s.config(None, "");
    let out = s.run(&config, &["--sink", "event-log"]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--sink event-log would write events without the state")
            && err.contains("Add --sink inventory-file beside it"),
        "{err}"
    );
    // Nothing was written, not even the lock.
    assert!(
        !s.path("state").exists(),
        "{:?}",
        common::listing(&s.path("state"))
    );
    assert!(!s.events_path().exists());
    // With the state beside it, it runs: and a second run discovers nothing again.
    let _p = s.gpu_process();
    let both = ["--sink", "inventory-file", "--sink", "event-log"];
    for _ in 0..3 {
        let out = s.run(&config, &both);
        assert!(out.status.success(), "{}", text(&out).1);
    }
    let discovered = s
        .events()
        .iter()
        .filter(|e| e["event_type"] == "detection.host_gpu_process_discovered")
        .count();
    assert_eq!(discovered, 1);
    // A file whose sinks log events but keep no state is refused the same way.
    let events_only = s.path("events-only.toml");
    std::fs::write(
        &events_only,
        format!(
            "[[collectors.procfs]]\n\n[[sinks.event-log]]\npath = \"{}\"\n",
            s.events_path().display()
        ),
    )
    .expect("write config");
    let out = s.run(&events_only, &["validate"]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("[sinks.event-log] writes events, but no sink keeps the state"),
        "{err}"
    );
}

#[test]
fn nvidia_smi_counts_when_nvml_is_unavailable_without_fallback_for() {
    let s = Scratch::new();
    let config = s.config(None, "");
    // Both GPU collectors side by side, NVML's library absent.
    edit_config(
        &config,
        "[[collectors.nvidia-smi]]\n",
        "[[collectors.nvml]]\nlibrary = \"/nonexistent/libnvidia-ml.so.1\"\n\n[[collectors.nvidia-smi]]\n",
    );
    let p = s.gpu_process();
    let pid = p.pid().to_string();
    s.scan(&config);
    let err = s.scan(&config);
    let inv = s.inventory();
    assert_eq!(inv["scan"]["collectors"]["nvml"]["ok"], false, "{inv}");
    assert_eq!(inv["scan"]["collectors"]["nvidia-smi"]["ok"], true, "{inv}");
    assert_eq!(
        inv["host_processes"][&pid]["gpu_memory_mb"], 10,
        "nvidia-smi's answer counts: {inv}"
    );
    assert!(
        err.contains("Scan complete: 0 containers (0 with GPU), 1 host GPU processes"),
        "{err}"
    );
    let discovered: Vec<Value> = s
        .events()
        .into_iter()
        .filter(|e| e["event_type"] == "detection.host_gpu_process_discovered")
        .collect();
    assert_eq!(discovered.len(), 1, "{discovered:?}");
    // nvidia-smi failing for real as well: nothing is known, the process is kept.
    s.set_smi_mode("fail");
    let err = s.scan(&config);
    assert!(s.inventory()["host_processes"].get(&pid).is_some());
    assert!(
        err.contains(
            "host GPU processes not seen (no complete GPU view; 1 kept from the last scan)"
        ),
        "{err}"
    );
}

/// A scan (`--sink stdout`) with `DOCKER_HOST` set and no `endpoint` key.
fn scan_with_docker_host(s: &Scratch, docker_host: &str) -> (Output, String) {
    let config = s.config(None, "");
    edit_config(
        &config,
        "[[collectors.nvidia-smi]]\n",
        "[[collectors.docker]]\ntimeout = \"5s\"\n\n[[collectors.nvidia-smi]]\n",
    );
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["--sink", "stdout"])
        .env("DOCKER_HOST", docker_host)
        .env_remove("DETECT_WORKLOADS_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, err)
}

#[test]
fn docker_unreachable_or_misnamed_says_so_with_what_to_do() {
    let s = Scratch::new();
    // A malformed DOCKER_HOST is a warning with the fix, at every scan.
    let (out, err) = scan_with_docker_host(&s, "garbage://x");
    assert!(out.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("collector=docker"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(" WARN "), "{line}");
    assert!(
        line.contains("$DOCKER_HOST=\"garbage://x\" is not a usable Docker endpoint")
            && line.contains("fix or unset DOCKER_HOST"),
        "{line}"
    );
    assert!(
        !err.contains("not available on this machine: unsupported"),
        "{err}"
    );
    // Nothing listening: the hint, and the summary does not say "0 containers".
    let port = free_port();
    let (out, err) = scan_with_docker_host(&s, &format!("tcp://127.0.0.1:{port}"));
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("(is the engine running? `systemctl status docker`)"),
        "{err}"
    );
    assert!(
        err.contains(
            "Scan complete: containers not seen (docker unavailable; 0 kept from the last scan)"
        ),
        "{err}"
    );
    assert!(!err.contains("Scan complete: 0 containers"), "{err}");
    // An engine that never answers: that is a failure, and said so.
    let mute = s.path("mute-docker.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&mute).expect("bind");
    let (out, err) = scan_with_docker_host(&s, &format!("unix://{}", mute.display()));
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(
            "Scan complete: containers not seen (docker failed; 0 kept from the last scan)"
        ),
        "{err}"
    );
    // No engine installed (no socket): not on this machine, not failed.
    let missing = s.path("no-such-docker.sock");
    let (out, err) = scan_with_docker_host(&s, &format!("unix://{}", missing.display()));
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(
            "Scan complete: containers not seen (docker unavailable; 0 kept from the last scan)"
        ),
        "{err}"
    );
}

/// A loopback port nobody listens on (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The test user's group (`DW_TEST_GID`, else its uid as tests/run.sh makes it).
fn test_gid(uid: u32) -> u32 {
    std::env::var("DW_TEST_GID")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(uid)
}

/// A directory and config the test user can read (root-owned, 0755/0644).
fn readable_config(dir: &Path, body: &str) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.join("user.toml");
    std::fs::write(&path, body).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    path
}

#[test]
#[ignore = "needs root, the test user dwtest and the private Docker engine: run by tests/run.sh"]
fn a_socket_we_may_not_open_is_a_warning_naming_who_may() {
    let host = docker_host();
    let (_, uid) = common::test_user();
    let dir = tempfile::Builder::new()
        .prefix("dw-e2e-")
        .tempdir()
        .expect("tempdir");
    let config = readable_config(
        dir.path(),
        &format!("[[collectors.docker]]\nendpoint = \"{host}\"\n\n[[sinks.stdout]]\n"),
    );
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .env_remove("DETECT_WORKLOADS_CONFIG")
        .env_remove("DOCKER_HOST")
        .current_dir(dir.path())
        .uid(uid)
        .gid(test_gid(uid))
        .stdin(Stdio::null())
        .output()
        .expect("run as the test user");
    let (_, err) = text(&out);
    let line = err
        .lines()
        .find(|l| l.contains("collector=docker"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains("Permission denied"), "{line}");
    assert!(
        line.contains("run as root (as the systemd units do) or as a member of the socket's group"),
        "{line}"
    );
    assert!(!err.contains("not available on this machine"), "{err}");
}

#[test]
fn validate_shows_the_intervals_the_nvml_library_and_prometheus_and_refuses_relative_paths() {
    let s = Scratch::new();
    let textfile = s.path("textfile");
    std::fs::create_dir_all(&textfile).expect("mkdir");
    let config = s.config(
        None,
        &format!(
            "[[sinks.prometheus]]\ntextfile_dir = \"{}\"\nlisten = \"127.0.0.1:9102\"\n",
            textfile.display()
        ),
    );
    edit_config(
        &config,
        "[agent]\n",
        "[agent]\ninterval = \"45s\"\ngpu_interval = \"3s\"\n",
    );
    edit_config(
        &config,
        "[[collectors.nvidia-smi]]\n",
        "[[collectors.nvml]]\nlibrary = \"/opt/nvidia/libnvidia-ml.so.1\"\n\n[[collectors.nvidia-smi]]\n",
    );
    let out = s.run(&config, &["validate"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(", interval 45s, gpu_interval 3s"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  nvml: library /opt/nvidia/libnvidia-ml.so.1, timeout 5s\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "  prometheus: writes {}/detect_workloads.prom atomically (mode 0644); serves http://127.0.0.1:9102/metrics (watch mode only)\n",
            textfile.display()
        )),
        "{stdout}"
    );
    // A relative inventory or event log would land under the working
    // directory (/ under systemd): refused, naming the key.
    for (from, key) in [
        (s.inventory_path(), "sinks.inventory-file"),
        (s.events_path(), "sinks.event-log"),
    ] {
        let config = s.config(None, "");
        edit_config(
            &config,
            &format!("path = \"{}\"", from.display()),
            "path = \"state/relative.json\"",
        );
        let out = s.run(&config, &["validate"]);
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(key), "{err}");
        assert!(
            err.contains("\"state/relative.json\" is relative: it would be written under the working directory of each run (/ under systemd)"),
            "{err}"
        );
    }
}

#[test]
fn dry_run_watch_prints_and_writes_nothing() {
    for args in [&["--dry-run", "watch"][..], &["watch", "--dry-run"]] {
        let s = Scratch::new();
        let config = s.config(None, "");
        let out = s.path("watch.out");
        let mut child = common::binary(&config, args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("start watch");
        common::wait_for("the first scan printed", &mut child, || {
            std::fs::read_to_string(&out).is_ok_and(|t| t.contains("\"last_scan\""))
        });
        let (code, err) = common::stop(child);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!s.inventory_path().exists(), "{args:?} wrote the inventory");
        assert!(!s.events_path().exists(), "{args:?} wrote events");
        assert!(
            !s.inventory_path().with_extension("json.lock").exists()
                && common::listing(s.inventory_path().parent().expect("dir")).is_empty(),
            "{args:?} left files: {:?}",
            common::listing(s.inventory_path().parent().expect("dir"))
        );
    }
    // Half-obeyed is refused, as for a scan.
    let s = Scratch::new();
    let config = s.config(None, "");
    let out = s.run(&config, &["--dry-run", "--sink", "event-log", "watch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dry-run writes nothing"));
}

#[test]
fn a_directory_given_as_the_configuration_is_no_file_not_a_chmod() {
    let s = Scratch::new();
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(s.dir.path())
        .env_remove("DETECT_WORKLOADS_CONFIG")
        .output()
        .expect("run");
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is not a file but a directory"), "{err}");
    assert!(!err.contains("chmod") && !err.contains("chown"), "{err}");
}

#[test]
fn ps_exits_1_when_no_container_source_answered_and_scans_quietly() {
    let s = Scratch::new();
    let port = free_port();
    let config = s.config(Some(&format!("tcp://127.0.0.1:{port}")), "");
    let run = |args: &[&str]| common::binary(&config, args).output().expect("run");
    for format in ["table", "json"] {
        let out = run(&["ps", "--scan", "--format", format]);
        let (stdout, err) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{format}: {stdout} {err}");
        assert!(
            err.contains("no container source answered the last scan (docker: unavailable"),
            "{err}"
        );
        if format == "json" {
            assert_eq!(stdout.trim(), "[]");
        }
        // No progress lines: only what went wrong.
        assert!(!err.contains(" INFO "), "{err}");
        assert!(!err.contains("Scan complete"), "{err}");
    }
    // A scan of its own (not ps) still says it at INFO.
    let out = run(&["--sink", "stdout"]);
    assert!(text(&out).1.contains("Scan complete"));
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn ps_shows_engine_ages_health_gpu_grants_and_unknown_gpu_memory() {
    let host = docker_host();
    let s = Scratch::new();
    // No GPU source answers: memory is unknown, not 0.
    s.set_smi_mode("fail");
    let config = s.config(Some(&host), "");
    let mut c = Containers::new(&host);
    let healthy = c.run(&[
        "--name",
        &unique("adm-health"),
        "--health-cmd",
        "true",
        "--health-interval",
        "1s",
        &test_image(),
        "sleep",
        "300",
    ]);
    let all = c.create(&[
        "--name",
        &unique("adm-all"),
        "--gpus",
        "all",
        &test_image(),
        "true",
    ]);
    let paper = c.run(&[
        "--name",
        &unique("adm-paper"),
        "--label",
        "ds01.gpu.slots=1:0",
        &test_image(),
        "sleep",
        "300",
    ]);
    let rows = |args: &[&str]| -> Vec<Value> {
        let mut full = vec!["ps", "--scan", "-a", "--format", "json"];
        full.extend_from_slice(args);
        let out = common::binary(&config, &full).output().expect("run");
        serde_json::from_slice(&out.stdout).expect("rows")
    };
    let row_of = |rows: &[Value], id: &str| -> Value {
        rows.iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {id} in {rows:#?}"))
    };
    // The engine's health verdict and creation time (AGE was "since first
    // seen": always 0s with --scan).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let rows = rows(&[]);
        let r = row_of(&rows, &healthy);
        if r["health"] == "healthy" && r["created_s"].as_i64() >= Some(2) {
            assert_eq!(r["age_s"], 0, "first seen now: {r}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = common::binary(&config, &["ps", "--scan", "-a"])
        .output()
        .expect("run");
    let (table, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let line = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no {id}: {table}"))
            .to_string()
    };
    assert!(
        line(&healthy).contains("(healthy)") && line(&healthy).contains(" Up "),
        "{table}"
    );
    assert!(line(&healthy).trim_end().ends_with(" ago"), "{table}");
    assert!(line(&all).contains(" all "), "--gpus all: {table}");
    assert!(line(&paper).contains("1:0 (labels only)"), "{table}");
    assert!(table.contains("GPU memory unknown"), "{table}");
    assert!(!table.contains("0 MiB GPU memory"), "{table}");
    // -v is this program's debug lines, not the HTTP client's internals.
    let out = common::binary(&config, &["-v", "ps", "--scan"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(" DEBUG "), "{err}");
    let hex_socket: String = host
        .trim_start_matches("unix://")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!err.contains(&hex_socket), "bollard's internals: {err}");
    assert!(err.lines().all(|l| l.len() < 2000), "{err}");
}
