//! A container storm in watch mode: 2000 containers created and removed
//! within a minute (through the Engine API, about 35 s here) on the private
//! engine, while a few long-lived ones
//! stay across it. Memory stays bounded (the peak is printed: run with
//! `--nocapture`, docs/benchmarks.md quotes it), no transition of a container
//! that lived across two full scans is lost, and the rest are told as
//! short-lived pairs or not at all, never half and never twice.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Containers created and removed by the storm.
const STORM: usize = 2000;
/// Clients creating and removing them at once.
const CLIENTS: usize = 6;

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
}

/// One Engine API request on its own connection to the engine's socket
/// (`Connection: close`, as cheap as a request gets: no `docker` process);
/// the body of a 2xx answer.
fn api(socket: &str, method: &str, path: &str, body: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(socket).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok()?;
    let status: u16 = answer.split(' ').nth(1)?.parse().ok()?;
    let (_, body) = answer.split_once("\r\n\r\n")?;
    (200..300).contains(&status).then(|| body.to_string())
}

/// Creates a container through the API; its full id.
fn create(socket: &str, name: &str) -> Option<String> {
    let body = format!(
        r#"{{"Image":"{}","Cmd":["true"],"Labels":{{"dw-test":"1"}},"HostConfig":{{"NetworkMode":"none"}}}}"#,
        test_image()
    );
    let answer = api(
        socket,
        "POST",
        &format!("/containers/create?name={name}"),
        &body,
    )?;
    // A chunked body ends in its terminator; the JSON object is inside.
    let start = answer.find('{')?;
    let end = answer.rfind('}')?;
    let v: Value = serde_json::from_str(&answer[start..=end]).ok()?;
    v["Id"].as_str().map(str::to_string)
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn a_storm_of_2000_containers_keeps_memory_bounded_and_loses_no_transition() {
    let host = docker_host();
    let s = Scratch::new();
    let config = s.config(Some(&host), "");
    edit_config(
        &config,
        "source = \"detect-workloads-test\"\n",
        "source = \"detect-workloads-test\"\ninterval = \"2s\"\ngpu_interval = \"1h\"\n",
    );
    let mut watch = spawn_logged(&config, &["watch"], &s.path("watch.log"));
    let pid = watch.id();
    let socket = host
        .strip_prefix("unix://")
        .expect("the private engine's unix socket")
        .to_string();
    wait_for("the first scan", &mut watch, || s.inventory_path().exists());
    let rss_start = status_kib(pid, "VmRSS:").unwrap_or(0);

    // Long-lived ones, there before the storm and after it.
    let mut long = Containers::new(&host);
    let long_ids: BTreeSet<String> = (0..10)
        .map(|_| {
            long.create(&[
                "--network",
                "none",
                "--name",
                &unique("dw-long"),
                &test_image(),
                "true",
            ])
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));

    let made = Arc::new(Mutex::new(Vec::<String>::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (socket, made, next) = (socket.clone(), made.clone(), next.clone());
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::SeqCst) < STORM {
                    let Some(id) = create(&socket, &unique("dw-storm")) else {
                        continue;
                    };
                    made.lock().expect("ids").push(id.clone());
                    let _ = api(&socket, "DELETE", &format!("/containers/{id}?force=1"), "");
                }
            })
        })
        .collect();
    let mut peak_rss = rss_start;
    while clients.iter().any(|c| !c.is_finished()) {
        peak_rss = peak_rss.max(status_kib(pid, "VmRSS:").unwrap_or(0));
        assert!(
            watch.try_wait().expect("wait").is_none(),
            "watch mode exited during the storm"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for c in clients {
        c.join().expect("client");
    }
    let storm_s = started.elapsed().as_secs_f64();
    // Two full scans after the storm, then the long-lived ones go.
    std::thread::sleep(Duration::from_secs(5));
    for id in &long.ids {
        let _ = api(&socket, "DELETE", &format!("/containers/{id}?force=1"), "");
    }
    std::thread::sleep(Duration::from_secs(5));
    let hwm = status_kib(pid, "VmHWM:").unwrap_or(0);
    let (code, stderr) = stop(watch);
    assert_eq!(code, Some(0), "{stderr}");
    let made: BTreeSet<String> = made
        .lock()
        .expect("ids")
        .iter()
        .map(|id| id[..12].to_string())
        .collect();

    let text = std::fs::read(s.events_path()).expect("events");
    let events: Vec<Value> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("every line parses"))
        .collect();
    let mut ids = HashSet::new();
    let mut counts: BTreeMap<String, (u32, u32, bool)> = BTreeMap::new();
    for e in &events {
        let id = e["event_id"].as_str().expect("event_id");
        assert!(ids.insert(id.to_string()), "event_id {id} twice");
        let Some(c) = e["details"]["container_id"].as_str() else {
            continue;
        };
        let n = counts.entry(c.to_string()).or_default();
        match e["event_type"].as_str() {
            Some("detection.container_discovered") => n.0 += 1,
            Some("detection.container_exited") => n.1 += 1,
            _ => {}
        }
        n.2 |= e["details"]["short_lived"] == true;
    }
    for c in &long_ids {
        assert_eq!(
            counts.get(c).map(|n| (n.0, n.1)),
            Some((1, 1)),
            "long-lived {c}"
        );
    }
    let (mut short, mut listed, mut untold) = (0, 0, 0);
    for c in &made {
        match counts.get(c) {
            None => untold += 1,
            Some((1, 1, true)) => short += 1,
            Some((1, 1, false)) => listed += 1,
            Some(n) => panic!("{c}: {} discovered, {} exited", n.0, n.1),
        }
    }
    eprintln!(
        "storm: {} containers created and removed in {storm_s:.1} s ({:.0}/min) by {CLIENTS} clients; \
         watch VmRSS {rss_start} kB at start, peak sampled {peak_rss} kB, VmHWM {hwm} kB; \
         told as short-lived {short}, listed by a scan {listed}, not told {untold}",
        made.len(),
        made.len() as f64 * 60.0 / storm_s
    );
    assert!(
        made.len() >= STORM * 9 / 10,
        "the storm ran: {}",
        made.len()
    );
    // Bounded: the storm's containers are not kept once gone.
    assert!(hwm < 96 * 1024, "VmHWM {hwm} kB");
    assert!(
        untold * 20 <= made.len(),
        "most are told: {untold} of {} untold",
        made.len()
    );
}
