//! `/metrics` of `detect-workloads watch` as an operator meets it: the real
//! binary, loopback ports, the scripted nvidia-smi. A port that cannot be
//! bound is fatal at start; a reload never releases the address it keeps and
//! keeps the running configuration when the new address cannot be bound; a
//! failed full scan is tried again soon, not at the next interval; the soft
//! descriptor limit is raised at start. (TLS, authentication and the
//! connection cap under load: `tests/e2e_fleet.rs` and the unit tests of
//! `sinks/src/prometheus/http`.)

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A config without Docker that serves `/metrics` on `port`, with `agent` lines.
fn config(s: &Scratch, port: u16, agent: &str) -> PathBuf {
    let config = s.config(
        None,
        &format!("\n[[sinks.prometheus]]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    edit_config(
        &config,
        "source = \"detect-workloads-test\"\n",
        &format!("source = \"detect-workloads-test\"\n{agent}\n"),
    );
    config
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// SIGTERM, which must exit 0; standard error.
fn stop(child: Child) -> String {
    let (code, err) = common::stop(child);
    assert_eq!(code, Some(0), "{err}");
    err
}

#[test]
fn a_port_in_use_is_fatal_at_start_and_names_the_address() {
    let s = Scratch::new();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let config = config(&s, port, "interval = \"1h\"\ngpu_interval = \"1h\"");
    let mut watch = s.spawn(&config, &["watch"]);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = watch.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > BOUND {
            let _ = watch.kill();
            panic!("watch kept running without its port");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = stderr_of(&mut watch);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")) && err.contains("in use"),
        "{err}"
    );
    // It stopped before scanning: nothing written.
    assert!(!s.inventory_path().exists(), "{err}");
}

#[test]
fn a_reload_keeps_the_address_bound_and_a_bad_new_address_keeps_the_running_config() {
    let s = Scratch::new();
    let port = free_port();
    let config = config(&s, port, "interval = \"1h\"\ngpu_interval = \"1h\"");
    let mut watch = s.spawn(&config, &["watch"]);
    wait_for("/metrics", &mut watch, || {
        get(port, "/metrics").is_some_and(|r| r.contains("ds01_workload_scan_timestamp_seconds"))
    });
    // Another local program tries to take the port all through the reload.
    let stop_racer = Arc::new(AtomicBool::new(false));
    let racer = {
        let stop_racer = Arc::clone(&stop_racer);
        std::thread::spawn(move || {
            let mut won = 0u32;
            while !stop_racer.load(Ordering::SeqCst) {
                if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                    won += 1;
                    drop(l);
                }
            }
            won
        })
    };
    let stamp = |r: &str| -> Option<u64> {
        r.lines()
            .find_map(|l| l.strip_prefix("ds01_workload_scan_timestamp_seconds "))
            .and_then(|v| v.trim().parse().ok())
    };
    let before = get(port, "/metrics").and_then(|r| stamp(&r));
    // Scan times are in seconds: the reload's scan must fall in a later one.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    };
    wait_for("the next second", &mut watch, || Some(now()) > before);
    // Same address, another interval: the listener is handed over.
    edit_config(
        &config,
        "interval = \"1h\"\ngpu_interval",
        "interval = \"2h\"\ngpu_interval",
    );
    signal(&watch, libc::SIGHUP);
    // The reload is done once a full scan of the new configuration is served
    // (a reload starts one); its timestamp moves.
    let mut after = None;
    wait_for("a scan after the reload", &mut watch, || {
        after = get(port, "/metrics").and_then(|r| stamp(&r));
        after.is_some() && after != before
    });
    stop_racer.store(true, Ordering::SeqCst);
    let won = racer.join().expect("racer");
    assert_eq!(won, 0, "another program bound the port during the reload");

    // A new address that is taken: the running configuration goes on.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let other = taken.local_addr().expect("addr").port();
    edit_config(
        &config,
        &format!("listen = \"127.0.0.1:{port}\""),
        &format!("listen = \"127.0.0.1:{other}\""),
    );
    // Its log, read as it comes (the refusal is only seen there).
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let log = Arc::clone(&log);
        let mut stderr = watch.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                log.lock().expect("log").push_str(&text);
            }
        })
    };
    signal(&watch, libc::SIGHUP);
    let refusal = format!("cannot listen on 127.0.0.1:{other}");
    wait_for("the refused reload in the log", &mut watch, || {
        let log = log.lock().expect("log");
        log.contains("keeping the running one") && log.contains(&refusal)
    });
    assert!(
        get(port, "/metrics").is_some_and(|r| r.starts_with("HTTP/1.1 200")),
        "the running listener was dropped"
    );
    stop(watch);
    reader.join().expect("reader");
    drop(taken);
}

#[test]
fn a_failed_full_scan_is_tried_again_before_the_next_interval() {
    let s = Scratch::new();
    let port = free_port();
    // One hour between full scans and between GPU polls: only a retry can
    // bring the next scan.
    let config = config(&s, port, "interval = \"1h\"\ngpu_interval = \"1h\"");
    s.set_smi_mode("fail");
    let mut watch = s.spawn(&config, &["watch"]);
    let smi_ok = || {
        std::fs::read_to_string(s.inventory_path())
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["scan"]["collectors"]["nvidia-smi"]["ok"].as_bool())
    };
    wait_for("the first scan, nvidia-smi failing", &mut watch, || {
        smi_ok() == Some(false)
    });
    s.set_smi_mode("");
    wait_for("a retried scan with nvidia-smi back", &mut watch, || {
        smi_ok() == Some(true)
    });
    let err = stop(watch);
    assert!(err.contains("trying again in"), "{err}");
}

#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    let s = Scratch::new();
    let port = free_port();
    let config = config(&s, port, "interval = \"1h\"\ngpu_interval = \"1h\"");
    let mut watch = Command::new("prlimit")
        .arg("--nofile=128:4096")
        .arg("--")
        .arg(BIN)
        .arg("--config")
        .arg(&config)
        .arg("watch")
        .env_remove("DETECT_WORKLOADS_CONFIG")
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prlimit");
    wait_for("/metrics", &mut watch, || get(port, "/-/healthy").is_some());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", watch.id())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{line}");
    stop(watch);
}

#[test]
fn a_listener_open_to_the_network_without_tls_or_authentication_is_a_warning() {
    let s = Scratch::new();
    let port = free_port();
    let open = config(&s, port, "interval = \"1h\"\ngpu_interval = \"1h\"");
    edit_config(
        &open,
        &format!("listen = \"127.0.0.1:{port}\""),
        &format!("listen = \"0.0.0.0:{port}\""),
    );
    let mut watch = s.spawn(&open, &["watch"]);
    wait_for("the first scan", &mut watch, || s.inventory_path().exists());
    let err = stop(watch);
    assert!(
        err.lines()
            .any(|l| l.contains("WARN") && l.contains(&format!("0.0.0.0:{port}"))),
        "{err}"
    );
    // On loopback: no such warning.
    let s = Scratch::new();
    let port = free_port();
    let local = config(&s, port, "interval = \"1h\"\ngpu_interval = \"1h\"");
    let mut watch = s.spawn(&local, &["watch"]);
    wait_for("the first scan", &mut watch, || s.inventory_path().exists());
    let err = stop(watch);
    assert!(!err.contains("WARN"), "{err}");
}
