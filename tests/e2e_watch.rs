//! `detect-workloads watch`: the real binary, long-lived, against the
//! private engine, the scripted nvidia-smi and real processes. Assertions are
//! on events and files, each waited for with a generous bound (never on speed).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `[agent]` lines after the config's `source`.
fn with_agent(s: &Scratch, docker: Option<&str>, agent: &str, extra: &str) -> std::path::PathBuf {
    let config = s.config(docker, extra);
    edit_config(
        &config,
        "source = \"detect-workloads-test\"\n",
        &format!("source = \"detect-workloads-test\"\n{agent}\n"),
    );
    config
}

fn events_of(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn has_event(path: &Path, event_type: &str, key: &str, value: &str) -> bool {
    events_of(path)
        .iter()
        .any(|e| e["event_type"] == format!("detection.{event_type}") && e["details"][key] == value)
}

fn inventory_has(s: &Scratch, pointer: &str) -> bool {
    std::fs::read_to_string(s.inventory_path())
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .is_some_and(|inv| inv.pointer(pointer).is_some())
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn a_container_started_while_watching_is_in_the_inventory_and_the_event_log() {
    let host = docker_host();
    let s = Scratch::new();
    // Timers far away: only the engine's event can bring the container in.
    let config = with_agent(
        &s,
        Some(&host),
        "interval = \"1h\"\ngpu_interval = \"1h\"",
        "",
    );
    let mut watch = s.spawn(&config, &["watch"]);
    wait_for("the first scan", &mut watch, || s.inventory_path().exists());
    let mut containers = Containers::new(&host);
    let name = unique("dw-watch");
    let id = containers.run(&["--name", &name, &test_image(), "sleep", "600"]);
    wait_for("container_discovered", &mut watch, || {
        has_event(
            &s.events_path(),
            "container_discovered",
            "container_id",
            &id,
        )
    });
    assert!(
        inventory_has(&s, &format!("/containers/{id}")),
        "{id} in the inventory"
    );
    // And its exit, the same way.
    docker(&host, &["kill", &id]);
    wait_for("container_exited", &mut watch, || {
        events_of(&s.events_path()).iter().any(|e| {
            e["details"]["container_id"] == id.as_str()
                && e["event_type"] != "detection.container_discovered"
        })
    });
    let (code, err) = stop(watch);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn sigterm_exits_0_with_the_last_scan_written() {
    let s = Scratch::new();
    let config = with_agent(&s, None, "interval = \"1h\"\ngpu_interval = \"300ms\"", "");
    let mut watch = s.spawn(&config, &["watch"]);
    let gpu = s.gpu_process();
    wait_for("host_gpu_process_discovered", &mut watch, || {
        events_of(&s.events_path())
            .iter()
            .any(|e| e["details"]["pid"] == gpu.pid())
    });
    let (code, err) = stop(watch);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("SIGTERM: stopping"), "{err}");
    let inv = s.inventory();
    assert!(
        inv["host_processes"].get(gpu.pid().to_string()).is_some(),
        "{inv}"
    );
}

#[test]
fn gpu_polls_confirm_a_new_gpu_process_without_a_full_scan() {
    let s = Scratch::new();
    // The full-scan timer is an hour away: only GPU polls can confirm it
    // (transient-filter needs two sightings).
    let config = with_agent(&s, None, "interval = \"1h\"\ngpu_interval = \"300ms\"", "");
    let mut watch = s.spawn(&config, &["watch"]);
    wait_for("the first scan", &mut watch, || s.inventory_path().exists());
    let gpu = s.gpu_process();
    wait_for("host_gpu_process_discovered", &mut watch, || {
        events_of(&s.events_path()).iter().any(|e| {
            e["event_type"] == "detection.host_gpu_process_discovered"
                && e["details"]["pid"] == gpu.pid()
        })
    });
    let (code, err) = stop(watch);
    assert_eq!(code, Some(0), "{err}");
}

/// NVML configured but absent, nvidia-smi its fallback: the GPU polls ask
/// the fallback, so a new GPU process is confirmed within `min_scans` polls
/// (here 2 x 300 ms + 1 s), not at the next full scan (an hour away).
#[test]
fn gpu_polls_ask_the_nvidia_smi_fallback_when_nvml_is_absent() {
    let s = Scratch::new();
    let config = with_agent(&s, None, "interval = \"1h\"\ngpu_interval = \"300ms\"", "");
    use_nvml(&config, &s.path("no-such-libnvidia-ml.so.1"));
    let mut watch = s.spawn(&config, &["watch"]);
    wait_for("the first scan", &mut watch, || s.inventory_path().exists());
    // A GPU poll's cycle that found nothing pending: from then on, polls
    // whose probes list what they listed before are skipped.
    let inode = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(s.inventory_path()).map(|m| m.ino()).ok()
    };
    let first = inode();
    wait_for("a GPU poll's cycle", &mut watch, || inode() != first);
    let gpu = s.gpu_process();
    wait_for("host_gpu_process_discovered", &mut watch, || {
        events_of(&s.events_path()).iter().any(|e| {
            e["event_type"] == "detection.host_gpu_process_discovered"
                && e["details"]["pid"] == gpu.pid()
        })
    });
    let (code, err) = stop(watch);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn sighup_with_a_broken_config_keeps_the_running_one() {
    let s = Scratch::new();
    let config = with_agent(&s, None, "interval = \"1h\"\ngpu_interval = \"300ms\"", "");
    let log = s.path("watch.log");
    let mut watch = spawn_logged(&config, &["watch"], &log);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("the first scan", &mut watch, || s.inventory_path().exists());
    edit_config(&config, "[[stages.classify]]", "[[stages.no-such-stage]]");
    signal(&watch, libc::SIGHUP);
    // The reload was tried and refused ...
    wait_for("the refused reload", &mut watch, || {
        logged().contains("invalid configuration, keeping the running one")
    });
    // ... and it still watches with the old configuration: a new GPU
    // process is found.
    let gpu = s.gpu_process();
    wait_for(
        "host_gpu_process_discovered after the reload",
        &mut watch,
        || {
            events_of(&s.events_path()).iter().any(|e| {
                e["event_type"] == "detection.host_gpu_process_discovered"
                    && e["details"]["pid"] == gpu.pid()
            })
        },
    );
    let (code, _) = stop(watch);
    let err = logged();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("no-such-stage"), "{err}");
}

#[test]
fn a_valid_config_is_reloaded_on_sighup() {
    let s = Scratch::new();
    let config = with_agent(&s, None, "interval = \"1h\"\ngpu_interval = \"1h\"", "");
    let mut watch = s.spawn(&config, &["watch"]);
    wait_for("the first scan", &mut watch, || s.inventory_path().exists());
    // Only the reloaded configuration polls the GPU.
    edit_config(&config, "gpu_interval = \"1h\"", "gpu_interval = \"300ms\"");
    signal(&watch, libc::SIGHUP);
    let gpu = s.gpu_process();
    wait_for(
        "host_gpu_process_discovered after the reload",
        &mut watch,
        || {
            events_of(&s.events_path()).iter().any(|e| {
                e["event_type"] == "detection.host_gpu_process_discovered"
                    && e["details"]["pid"] == gpu.pid()
            })
        },
    );
    let (code, err) = stop(watch);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("configuration reloaded"), "{err}");
}

/// Each GPU process started is one `host_gpu_process_discovered` line.
fn discover_one(s: &Scratch, watch: &mut Child, keep: &mut Vec<Proc>) -> u32 {
    let p = sleeper();
    let pid = p.pid();
    s.set_gpu_apps(&format!("{pid}, 10, {UUID}\n"));
    keep.push(p);
    wait_for("a discovery in the event log", watch, || {
        events_of(&s.events_path()).iter().any(|e| {
            e["event_type"] == "detection.host_gpu_process_discovered" && e["details"]["pid"] == pid
        })
    });
    pid
}

#[test]
fn the_event_log_follows_copytruncate_and_create_rotation() {
    let s = Scratch::new();
    let config = with_agent(&s, None, "interval = \"1h\"\ngpu_interval = \"300ms\"", "");
    let mut watch = s.spawn(&config, &["watch"]);
    let mut keep = Vec::new();
    wait_for("the first scan", &mut watch, || s.inventory_path().exists());
    let log = s.events_path();
    discover_one(&s, &mut watch, &mut keep);

    // copytruncate: copied away, then emptied in place.
    std::fs::copy(&log, s.path("log/events.jsonl.1")).expect("copy");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .and_then(|f| f.set_len(0))
        .expect("truncate");
    let pid = discover_one(&s, &mut watch, &mut keep);
    let text = std::fs::read(&log).expect("read");
    assert!(!text.contains(&0), "no hole of NULs before the new line");
    assert!(text.starts_with(b"{"), "the new line starts the file");

    // create: renamed away, a new file made in its place.
    std::fs::rename(&log, s.path("log/events.jsonl.2")).expect("rename");
    let pid2 = discover_one(&s, &mut watch, &mut keep);
    let rotated = events_of(&s.path("log/events.jsonl.2"));
    assert!(
        !rotated.iter().any(|e| e["details"]["pid"] == pid2),
        "nothing written to the rotated-away file"
    );
    assert!(rotated.iter().any(|e| e["details"]["pid"] == pid));
    let (code, err) = stop(watch);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn metrics_are_served_in_watch_mode_with_process_metrics() {
    let s = Scratch::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let extra = format!("\n[[sinks.prometheus]]\nlisten = \"127.0.0.1:{port}\"\n");
    let config = with_agent(&s, None, "interval = \"1h\"\ngpu_interval = \"1h\"", &extra);
    let mut watch = s.spawn(&config, &["watch"]);
    let mut body = String::new();
    wait_for("/metrics with the scan's metrics", &mut watch, || {
        body = get_metrics(port).unwrap_or_default();
        body.contains("ds01_workload_") && body.contains("process_resident_memory_bytes")
    });
    assert!(body.contains("process_cpu_seconds_total"), "{body}");
    if let Some(promtool) = std::env::var_os("DW_TEST_PROMTOOL").filter(|p| !p.is_empty()) {
        let file = s.path("metrics.txt");
        std::fs::write(&file, &body).expect("write");
        let out = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&file).expect("open"))
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (code, err) = stop(watch);
    assert_eq!(code, Some(0), "{err}");
}

fn get_metrics(port: u16) -> Option<String> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}

/// A unix-socket forwarder to the private engine that the test switches off
/// and on: while off, its socket is gone and every connection through it
/// (the event stream included) is cut, as when the engine restarts.
struct EngineProxy {
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EngineProxy {
    /// Forwards `path` to `upstream`, up at once.
    fn start(path: std::path::PathBuf, upstream: std::path::PathBuf) -> Self {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let up = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (u, s) = (Arc::clone(&up), Arc::clone(&stop));
        let thread = std::thread::spawn(move || proxy_loop(&path, &upstream, &u, &s));
        EngineProxy {
            up,
            stop,
            thread: Some(thread),
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        // The loop notices within its 10 ms tick.
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn proxy_loop(
    path: &Path,
    upstream: &Path,
    up: &std::sync::atomic::AtomicBool,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::atomic::Ordering;
    let mut listener: Option<UnixListener> = None;
    let mut open: Vec<UnixStream> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        if !up.load(Ordering::SeqCst) {
            // Away: the socket disappears, live connections are cut.
            if listener.take().is_some() {
                let _ = std::fs::remove_file(path);
            }
            for c in open.drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        } else if listener.is_none() {
            let l = UnixListener::bind(path).expect("bind the proxy socket");
            l.set_nonblocking(true).expect("nonblocking");
            listener = Some(l);
        }
        if let Some(l) = &listener {
            while let Ok((client, _)) = l.accept() {
                let _ = client.set_nonblocking(false);
                let Ok(server) = UnixStream::connect(upstream) else {
                    continue;
                };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (
                        from.try_clone().expect("clone"),
                        to.try_clone().expect("clone"),
                    );
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
                open.push(client);
                open.push(server);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for c in open {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    let _ = std::fs::remove_file(path);
}

fn docker_report(s: &Scratch) -> Value {
    std::fs::read_to_string(s.inventory_path())
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .map(|inv| inv["scan"]["collectors"]["docker"].clone())
        .unwrap_or(Value::Null)
}

fn exited(s: &Scratch, id: &str) -> bool {
    events_of(&s.events_path()).iter().any(|e| {
        e["event_type"] == "detection.container_exited" && e["details"]["container_id"] == id
    })
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn the_engine_restarted_while_watching_recovers_and_reconciles_without_false_exits() {
    let host = docker_host();
    let Some(upstream) = host.strip_prefix("unix://") else {
        assert!(
            !common::in_ci(),
            "CI=true but the private engine is not on a unix socket: {host}"
        );
        eprintln!("skipped: the private engine is not on a unix socket");
        return;
    };
    let s = Scratch::new();
    let proxy_sock = s.path("engine.sock");
    let proxy = EngineProxy::start(proxy_sock.clone(), upstream.into());
    // Only the engine's events (and the stream's loss) can bring full scans:
    // the timer is an hour away; GPU polls run all along.
    let endpoint = format!("unix://{}", proxy_sock.display());
    let config = with_agent(
        &s,
        Some(&endpoint),
        "interval = \"1h\"\ngpu_interval = \"300ms\"",
        "",
    );
    let mut watch = s.spawn(&config, &["watch"]);
    wait_for("the first scan", &mut watch, || s.inventory_path().exists());
    let mut containers = Containers::new(&host);
    let kept = containers.run(&[
        "--name",
        &unique("dw-watch-kept"),
        &test_image(),
        "sleep",
        "600",
    ]);
    wait_for("the running container discovered", &mut watch, || {
        has_event(
            &s.events_path(),
            "container_discovered",
            "container_id",
            &kept,
        )
    });

    // The engine goes away.
    proxy.set_up(false);
    wait_for("the engine reported down", &mut watch, || {
        docker_report(&s)["ok"] == false
    });
    // Created while the watcher cannot see the engine.
    let created = containers.create(&["--name", &unique("dw-watch-during"), &test_image()]);
    // Several GPU polls (and retries) while away: none may end the container.
    let polls = events_of(&s.events_path()).len();
    let away = Instant::now();
    while away.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(docker_report(&s)["ok"], false, "still away");
    assert!(!exited(&s, &kept), "no false exit while the engine is away");
    assert!(
        inventory_has(&s, &format!("/containers/{kept}")),
        "carried over"
    );
    assert_eq!(
        events_of(&s.events_path()).len(),
        polls,
        "no event while away"
    );

    // The engine is back: the stream is followed again and the inventory reconciled.
    proxy.set_up(true);
    wait_for(
        "the container created while away discovered",
        &mut watch,
        || {
            has_event(
                &s.events_path(),
                "container_discovered",
                "container_id",
                &created,
            )
        },
    );
    wait_for("the engine reported up again", &mut watch, || {
        docker_report(&s)["ok"] == true
    });
    assert!(!exited(&s, &kept), "no false exit after the outage");
    assert!(inventory_has(&s, &format!("/containers/{kept}")));
    // And the stream works again: a new container is seen through its events.
    let after = containers.run(&[
        "--name",
        &unique("dw-watch-after"),
        &test_image(),
        "sleep",
        "600",
    ]);
    wait_for(
        "a container started after the outage discovered",
        &mut watch,
        || {
            has_event(
                &s.events_path(),
                "container_discovered",
                "container_id",
                &after,
            )
        },
    );
    let (code, err) = stop(watch);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("event stream lost"), "{err}");
}
