//! Nothing lost, nothing told twice: the real binary killed with SIGKILL at
//! random moments under container churn on the private engine (oneshot scans
//! from a loop, and watch mode), lab-style writers appending to the same
//! event log, and a file system that is full or read-only while writing.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A small deterministic generator (the seed is printed, to replay a run).
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("DW_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("DW_TEST_SEED={seed}");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// Creates and removes containers on the private engine until stopped: at
/// most `alive` at once, each removed after a random time; the ids of all
/// of them are kept (and every one left is removed when dropped).
struct Churn {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    all: Arc<Mutex<Vec<String>>>,
    host: String,
}

impl Churn {
    fn start(host: &str, tag: &str, alive: usize, pause_ms: u64) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let all = Arc::new(Mutex::new(Vec::new()));
        let (stop2, all2, host2, tag) =
            (stop.clone(), all.clone(), host.to_string(), tag.to_string());
        let thread = std::thread::spawn(move || {
            let mut rng = Rng(0x5eed ^ std::process::id() as u64);
            let mut live: Vec<String> = Vec::new();
            let mut n = 0;
            while !stop2.load(Ordering::SeqCst) {
                let name = format!("{tag}-{n}");
                n += 1;
                let out = Command::new("docker")
                    .args(["-H", &host2, "create", "--label", "dw-test=1"])
                    .args(["--label", "ds01.user=alice", "--name", &name])
                    .arg(test_image())
                    .arg("true")
                    .output();
                if let Ok(out) = out {
                    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    if out.status.success() && id.len() >= 12 {
                        all2.lock().expect("ids").push(id.clone());
                        live.push(id);
                    }
                }
                while live.len() > alive || (!live.is_empty() && rng.below(3) == 0) {
                    let id = live.remove(rng.below(live.len() as u64) as usize);
                    let _ = Command::new("docker")
                        .args(["-H", &host2, "rm", "-f", &id])
                        .output();
                }
                std::thread::sleep(Duration::from_millis(rng.below(pause_ms)));
            }
            for id in live {
                let _ = Command::new("docker")
                    .args(["-H", &host2, "rm", "-f", &id])
                    .output();
            }
        });
        Churn {
            stop,
            thread: Some(thread),
            all,
            host: host.to_string(),
        }
    }

    /// Stops the churn and removes what is left; the short ids of every
    /// container it made.
    fn finish(mut self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("churn thread");
        }
        self.so_far()
    }

    /// The short ids of the containers created so far.
    fn so_far(&self) -> BTreeSet<String> {
        self.all
            .lock()
            .expect("ids")
            .iter()
            .map(|id| id[..12].to_string())
            .collect()
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for id in self.all.lock().map(|a| a.clone()).unwrap_or_default() {
            let _ = Command::new("docker")
                .args(["-H", &self.host, "rm", "-f", &id])
                .output();
        }
    }
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The inventory as it is now: it must parse whenever it exists. The short
/// ids of its containers.
fn inventory_now(s: &Scratch, ids: &mut BTreeSet<String>) {
    let Ok(text) = std::fs::read(s.inventory_path()) else {
        return;
    };
    let inv: Value = serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("the inventory does not parse at a kill point: {e}"));
    if let Some(containers) = inv["containers"].as_object() {
        ids.extend(containers.keys().cloned());
    }
}

/// Every line of `path` parsed; panics on one that does not parse.
fn parsed_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read(path).unwrap_or_default();
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice(l).unwrap_or_else(|e| {
                panic!(
                    "a line of {} does not parse ({e}): {}",
                    path.display(),
                    String::from_utf8_lossy(l)
                )
            })
        })
        .collect()
}

/// Checks the log after churn: no `event_id` twice; every container in
/// `must_pair` discovered once and exited once; every other container of
/// the churn at most once each, and never one without the other.
fn check_exactly_once(events: &[Value], churned: &BTreeSet<String>, must_pair: &BTreeSet<String>) {
    let mut ids = HashSet::new();
    for e in events {
        let id = e["event_id"].as_str().unwrap_or_default();
        if e["source"] == "detect-workloads-test" {
            assert!(!id.is_empty(), "an event without an id: {e}");
            assert!(ids.insert(id.to_string()), "event_id {id} twice: {e}");
        }
    }
    let mut counts: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for e in events {
        let Some(c) = e["details"]["container_id"].as_str() else {
            continue;
        };
        let entry = counts.entry(c.to_string()).or_default();
        match e["event_type"].as_str() {
            Some("detection.container_discovered") => entry.0 += 1,
            Some("detection.container_exited") => entry.1 += 1,
            _ => {}
        }
    }
    for c in must_pair {
        assert!(churned.contains(c), "{c} is not one of the churn's");
        assert_eq!(
            counts.get(c),
            Some(&(1, 1)),
            "{c} lived across scans: one discovered and one exited"
        );
    }
    for (c, n) in &counts {
        if churned.contains(c) {
            assert!(
                *n == (1, 1) || *n == (0, 0),
                "{c}: {} discovered, {} exited",
                n.0,
                n.1
            );
        }
    }
}

fn churn_config(s: &Scratch, host: &str, agent: &str) -> PathBuf {
    let config = s.config(Some(host), "");
    edit_config(
        &config,
        "source = \"detect-workloads-test\"\n",
        &format!("source = \"detect-workloads-test\"\n{agent}\n"),
    );
    config
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn killed_at_100_random_moments_no_event_is_lost_or_told_twice() {
    let host = docker_host();
    let s = Scratch::new();
    let config = churn_config(&s, &host, "interval = \"1s\"\ngpu_interval = \"1s\"");
    let stderr = s.path("stderr.log");
    let mut rng = Rng::seeded();
    let mut in_state = BTreeSet::new();
    // How long a scan takes here, to kill within it.
    let started = Instant::now();
    s.scan(&config);
    let scan_ms = (started.elapsed().as_millis() as u64).max(20);
    let churn = Churn::start(&host, &unique("dw-crash"), 4, 150);
    let mut killed = 0;
    // 50 oneshot scans from a loop, each killed at a random moment of its
    // run (or let finish, when it is quicker).
    for _ in 0..50 {
        let mut scan = spawn_logged(&config, &[], &stderr);
        std::thread::sleep(Duration::from_millis(rng.below(scan_ms * 3 / 2)));
        if scan.try_wait().expect("wait").is_none() {
            killed += 1;
        }
        kill9(&mut scan);
        inventory_now(&s, &mut in_state);
    }
    // 50 kills of watch mode, each after a random time.
    for _ in 0..50 {
        let mut watch = spawn_logged(&config, &["watch"], &stderr);
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        assert!(
            watch.try_wait().expect("wait").is_none(),
            "watch mode exited by itself: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        kill9(&mut watch);
        killed += 1;
        inventory_now(&s, &mut in_state);
    }
    let churned = churn.finish();
    // Two scans in peace: what is owed is written, every container is gone.
    s.scan(&config);
    s.scan(&config);
    inventory_now(&s, &mut in_state);
    eprintln!(
        "{killed} kills, {} containers churned, {} seen in a state",
        churned.len(),
        in_state.len()
    );
    let events = parsed_lines(&s.events_path());
    let must_pair: BTreeSet<String> = in_state.intersection(&churned).cloned().collect();
    assert!(
        must_pair.len() >= 10,
        "too little churn seen: {must_pair:?}"
    );
    check_exactly_once(&events, &churned, &must_pair);
    assert!(
        s.inventory()["_outbox"].is_null() || !s.inventory()["_outbox"]["events"].is_null(),
        "the outbox is well formed"
    );
}

/// A writer as the lab's `ds01_events.log_event`: Python, the file opened in
/// append mode for each event, one line written (and flushed) at once.
const LAB_WRITER: &str = r#"
import json, sys, time, random
path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for seq in range(count):
    line = json.dumps({"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "event_type": "lab.job_note", "schema_version": "1",
                       "source": name, "details": {"seq": seq, "pad": "x" * random.randint(0, 3000)}})
    with open(path, "a") as f:
        f.write(line + "\n")
    time.sleep(random.random() * 0.004)
"#;

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn lines_never_interleave_with_four_lab_writers() {
    let host = docker_host();
    let s = Scratch::new();
    let config = churn_config(&s, &host, "");
    s.scan(&config);
    let log = s.events_path();
    // A writer that crashed mid-line: the file ends without a newline.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"timestamp\":\"2026-12-03T10:"))
        .expect("a partial line");
    let churn = Churn::start(&host, &unique("dw-lab"), 3, 100);
    let script = s.path("lab_writer.py");
    std::fs::write(&script, LAB_WRITER).expect("write");
    let writers: Vec<Child> = (0..4)
        .map(|n| {
            Command::new("python3")
                .arg(&script)
                .arg(&log)
                .arg(format!("lab-writer-{n}"))
                .arg("1500")
                .spawn()
                .expect("python3")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut writers = writers;
    let mut scans = 0;
    while writers
        .iter_mut()
        .any(|w| w.try_wait().expect("wait").is_none())
    {
        s.scan(&config);
        scans += 1;
        assert!(Instant::now() < deadline, "the writers did not finish");
    }
    for w in &mut writers {
        assert!(w.wait().expect("wait").success(), "a lab writer failed");
    }
    let churned = churn.finish();
    s.scan(&config);
    s.scan(&config);
    let text = std::fs::read(&log).expect("read");
    let lines: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut events = Vec::new();
    let mut broken = Vec::new();
    for line in &lines {
        match serde_json::from_slice::<Value>(line) {
            Ok(v) => events.push(v),
            Err(_) => broken.push(String::from_utf8_lossy(line).into_owned()),
        }
    }
    assert_eq!(
        broken,
        vec!["{\"timestamp\":\"2026-12-03T10:".to_string()],
        "only the crashed writer's partial line is broken"
    );
    for n in 0..4 {
        let seqs: Vec<u64> = events
            .iter()
            .filter(|e| e["source"] == format!("lab-writer-{n}"))
            .map(|e| e["details"]["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(
            seqs,
            (0..1500).collect::<Vec<_>>(),
            "writer {n}: every line, in order"
        );
    }
    let ours = events
        .iter()
        .filter(|e| e["source"] == "detect-workloads-test")
        .count();
    eprintln!(
        "{scans} scans, {ours} of our events among {} lines",
        lines.len()
    );
    assert!(ours >= 10, "churn produced events: {ours}");
    check_exactly_once(&events, &churned, &BTreeSet::new());
}

/// A tmpfs of `size` mounted for this test at `dir` (unmounted when dropped).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mount tmpfs (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Fills it to the brim.
    fn fill(&self) {
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0x55u8; 4096];
        while std::io::Write::write_all(&mut f, &block).is_ok() {}
        // And the last bytes a page could still take.
        while std::io::Write::write_all(&mut f, &block[..1]).is_ok() {}
    }

    fn unfill(&self) {
        std::fs::remove_file(self.0.join("filler")).expect("remove filler");
    }

    fn remount(&self, how: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(&self.0)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "remount {how}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

fn discovered(events: &[Value], id: &str) -> usize {
    events
        .iter()
        .filter(|e| {
            e["event_type"] == "detection.container_discovered"
                && e["details"]["container_id"] == id
        })
        .count()
}

#[test]
#[ignore = "needs root (tmpfs) and the private Docker engine: run by tests/run.sh"]
fn a_full_or_read_only_disk_loses_nothing_and_leaves_the_state_as_it_was() {
    let host = docker_host();
    let s = Scratch::new();
    let state = Tmpfs::mount(&s.path("state"), "256k");
    let log = Tmpfs::mount(&s.path("log"), "256k");
    let config = s.config(Some(&host), "");
    let mut containers = Containers::new(&host);
    s.scan(&config);

    // Both full: the oneshot scan fails saying why, the inventory is byte
    // for byte as it was, no temporary file is left.
    let before = std::fs::read(s.inventory_path()).expect("inventory");
    state.fill();
    log.fill();
    let listing_before = listing(&s.path("state"));
    let a = containers.create(&["--name", &unique("dw-full"), &test_image(), "true"]);
    let out = s.run(&config, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(
        std::fs::read(s.inventory_path()).expect("inventory"),
        before
    );
    assert_eq!(
        listing(&s.path("state")),
        listing_before,
        "no temporary file"
    );

    // Watch mode records the failure and goes on.
    let stderr = s.path("watch.log");
    let watch_config = churn_config(&s, &host, "interval = \"500ms\"\ngpu_interval = \"1h\"");
    let mut watch = spawn_logged(&watch_config, &["watch"], &stderr);
    let bound = Instant::now() + BOUND;
    while !std::fs::read_to_string(&stderr)
        .unwrap_or_default()
        .contains("No space left on device")
    {
        assert!(
            Instant::now() < bound,
            "watch mode did not report the full disk"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        watch.try_wait().expect("wait").is_none(),
        "watch mode went on"
    );
    assert_eq!(
        std::fs::read(s.inventory_path()).expect("inventory"),
        before
    );

    kill9(&mut watch);
    assert_eq!(
        std::fs::read(s.inventory_path()).expect("inventory"),
        before
    );
    assert_eq!(discovered(&parsed_lines(&s.events_path()), &a), 0);

    // Space back for the state, the log read-only: the scan succeeds (a log
    // that cannot be written is a warning) and the events are owed. (A full
    // tmpfs may still take a short line into the last page a file holds, so
    // the log is made read-only rather than relied on to be full.)
    log.remount("ro");
    state.unfill();
    let err = s.scan(&config);
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(discovered(&parsed_lines(&s.events_path()), &a), 0);
    let b = containers.create(&["--name", &unique("dw-ro"), &test_image(), "true"]);
    s.scan(&config);
    let owed = s.inventory()["_outbox"]["events"].clone();
    assert!(
        discovered(owed.as_array().expect("owed events"), &a) == 1
            && discovered(owed.as_array().expect("owed events"), &b) == 1,
        "{owed}"
    );
    log.remount("rw");
    log.unfill();

    // Space back: what was owed is written, once, and never again.
    s.scan(&config);
    s.scan(&config);
    let events = parsed_lines(&s.events_path());
    assert_eq!(discovered(&events, &a), 1, "{events:?}");
    assert_eq!(discovered(&events, &b), 1, "{events:?}");
    let ids: Vec<&str> = events
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    let unique_ids: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique_ids.len(), "no event_id twice");
    // Nothing of them owed any more (other tests' containers on the same
    // engine may give the last scan events of its own).
    let outbox = s.inventory()["_outbox"]["events"].clone();
    let outbox = outbox.as_array().cloned().unwrap_or_default();
    assert!(
        discovered(&outbox, &a) == 0 && discovered(&outbox, &b) == 0,
        "nothing of them owed any more: {outbox:?}"
    );
    drop(containers);
    drop(log);
    drop(state);
}

/// Runs the binary under `strace`, killed with SIGKILL on entering its
/// `nth` `write` or `rename` (`call`) system call; whether it was killed
/// (a run still going after 5 s, watch mode idle, is stopped and was not).
fn killed_at(config: &Path, args: &[&str], call: &str, nth: u32) -> bool {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg(format!("trace={call}"))
        .arg("-e")
        .arg(format!("inject={call}:signal=KILL:when={nth}"))
        .arg(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("DETECT_WORKLOADS_CONFIG")
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, to stop strace and the scanner at once.
        .process_group(0)
        .spawn()
        .expect("strace (tests/run.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return !status.success();
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) on the process group of our own child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[ignore = "needs the private Docker engine and strace: run by tests/run.sh"]
fn killed_before_every_write_and_rename_of_a_scan_no_event_is_lost_or_told_twice() {
    // The random kills above rarely land in the microseconds between the
    // inventory's rename and the first event line; here the scan is killed
    // on entering each of its write(2) and rename(2) calls in turn, one
    // container created before each run, so every window is hit.
    let host = docker_host();
    let s = Scratch::new();
    let config = churn_config(&s, &host, "interval = \"1h\"\ngpu_interval = \"1h\"");
    let mut containers = Containers::new(&host);
    let mut in_state = BTreeSet::new();
    let mut created = BTreeSet::new();
    s.scan(&config);
    let mut runs = 0;
    for (args, call) in [
        (&[][..], "write"),
        (&[][..], "rename"),
        (&["watch"][..], "write"),
        (&["watch"][..], "rename"),
    ] {
        for nth in 1..200 {
            created.insert(containers.create(&[
                "--name",
                &unique("dw-sweep"),
                &test_image(),
                "true",
            ]));
            runs += 1;
            let killed = killed_at(&config, args, call, nth);
            inventory_now(&s, &mut in_state);
            // A scan that ends before its nth call has been killed at every
            // one; watch mode idle after its first cycle is stopped by the
            // timeout, its first cycle swept.
            if !killed || nth > 80 {
                break;
            }
        }
    }
    for id in &containers.ids {
        docker(&host, &["rm", "-f", id]);
    }
    s.scan(&config);
    s.scan(&config);
    inventory_now(&s, &mut in_state);
    let events = parsed_lines(&s.events_path());
    eprintln!("{runs} runs killed in turn, {} containers", created.len());
    let must_pair: BTreeSet<String> = in_state.intersection(&created).cloned().collect();
    check_exactly_once(&events, &created, &must_pair);
    for c in &created {
        assert_eq!(discovered(&events, c), 1, "{c} discovered once: {events:?}");
    }
}

fn short_lived_of<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["details"]["name"] == name)
        .collect()
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn short_lived_containers_are_classified_attributed_and_told_once() {
    let host = docker_host();
    let s = Scratch::new();
    let config = s.config(Some(&host), "");
    s.scan(&config);
    // Oneshot: created and removed between two scans.
    let name = unique("dw-blink");
    let id = docker(
        &host,
        &[
            "create",
            "--label",
            "dw-test=1",
            "--label",
            "com.docker.compose.project=exp",
            "--label",
            "ds01.user=alice",
            "--name",
            &name,
            &test_image(),
            "true",
        ],
    );
    docker(&host, &["rm", "-f", &id]);
    s.scan(&config);
    s.scan(&config);
    s.scan(&config);
    let events = parsed_lines(&s.events_path());
    let told = short_lived_of(&events, &name);
    assert_eq!(told.len(), 2, "one discovered, one exited: {told:?}");
    for e in &told {
        assert_eq!(e["details"]["short_lived"], true, "{e}");
        assert_eq!(e["details"]["origin"], "compose", "{e}");
        assert_eq!(e["user"], "alice", "{e}");
    }
    // Watch mode: `docker run --rm` (seen running or not) is told once,
    // never again as short-lived a cycle later.
    let stderr = s.path("watch.log");
    let watch_config = churn_config(&s, &host, "interval = \"300ms\"\ngpu_interval = \"300ms\"");
    let mut watch = spawn_logged(&watch_config, &["watch"], &stderr);
    std::thread::sleep(Duration::from_secs(1));
    let mut names = Vec::new();
    for _ in 0..4 {
        let name = unique("dw-rm");
        docker(
            &host,
            &[
                "run",
                "--rm",
                "--label",
                "dw-test=1",
                "--label",
                "ds01.user=bob",
                "--name",
                &name,
                &test_image(),
                "sleep",
                "0.3",
            ],
        );
        names.push(name);
    }
    // Several cycles after the last one.
    std::thread::sleep(Duration::from_secs(4));
    kill9(&mut watch);
    let events = parsed_lines(&s.events_path());
    for name in &names {
        let told = short_lived_of(&events, name);
        let kinds: Vec<&str> = told
            .iter()
            .filter_map(|e| e["event_type"].as_str())
            .collect();
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == "detection.container_discovered")
                .count(),
            1,
            "{name}: {told:?}"
        );
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == "detection.container_exited")
                .count(),
            1,
            "{name}: {told:?}"
        );
        assert!(told.iter().all(|e| e["user"] == "bob"), "{told:?}");
    }
}

/// Rotates the event log with the real logrotate, `how` being `create` or
/// `copytruncate` (uncompressed, every rotated file kept).
fn logrotate(s: &Scratch, how: &str) {
    let conf = s.path("logrotate.conf");
    std::fs::write(
        &conf,
        format!(
            "{} {{\n  {how}\n  rotate 10000\n  missingok\n  nocompress\n}}\n",
            s.events_path().display()
        ),
    )
    .expect("write");
    let out = Command::new("logrotate")
        .arg("-f")
        .arg("-s")
        .arg(s.path("logrotate.state"))
        .arg(&conf)
        .output()
        .expect("logrotate (tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "logrotate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The event log and every rotated file, parsed (each line must parse).
fn all_rotated(s: &Scratch) -> Vec<Value> {
    let mut all = parsed_lines(&s.events_path());
    for n in 1.. {
        let rotated = s.path(&format!("log/events.jsonl.{n}"));
        if !rotated.exists() {
            break;
        }
        all.extend(parsed_lines(&rotated));
    }
    all
}

#[test]
#[ignore = "needs the private Docker engine and logrotate: run by tests/run.sh"]
fn rotation_during_churn_loses_nothing_in_either_mode() {
    let host = docker_host();
    for how in ["create", "copytruncate"] {
        for watch_mode in [false, true] {
            let s = Scratch::new();
            let config = churn_config(&s, &host, "interval = \"300ms\"\ngpu_interval = \"1h\"");
            s.scan(&config);
            let churn = Churn::start(&host, &unique("dw-rot"), 3, 120);
            let mut in_state = BTreeSet::new();
            let stderr = s.path("watch.log");
            let mut watch = watch_mode.then(|| spawn_logged(&config, &["watch"], &stderr));
            // Fifteen rotations at least, and more until five of the churned
            // containers were seen in a state (a loaded machine creates
            // fewer in the same time), within a deadline.
            let start = Instant::now();
            for round in 0.. {
                if round >= 15 && in_state.intersection(&churn.so_far()).count() >= 5 {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(180),
                    "five churned containers never seen in a state: {in_state:?}"
                );
                if watch.is_none() {
                    s.scan(&config);
                    s.scan(&config);
                } else {
                    std::thread::sleep(Duration::from_millis(400));
                }
                logrotate(&s, how);
                inventory_now(&s, &mut in_state);
            }
            let churned = churn.finish();
            if let Some(w) = watch.take() {
                std::thread::sleep(Duration::from_secs(1));
                let (code, err) = stop(w);
                assert_eq!(code, Some(0), "{err}");
            }
            s.scan(&config);
            s.scan(&config);
            inventory_now(&s, &mut in_state);
            let events = all_rotated(&s);
            let must_pair: BTreeSet<String> = in_state.intersection(&churned).cloned().collect();
            eprintln!(
                "{how}, {}: {} events in {} files, {} containers paired",
                if watch_mode { "watch" } else { "oneshot" },
                events.len(),
                listing(&s.path("log")).len(),
                must_pair.len()
            );
            assert!(must_pair.len() >= 5, "churn seen: {must_pair:?}");
            check_exactly_once(&events, &churned, &must_pair);
        }
    }
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn lines_copytruncate_cuts_between_its_copy_and_its_truncation_are_appended_again() {
    let host = docker_host();
    let s = Scratch::new();
    let config = s.config(Some(&host), "");
    let mut containers = Containers::new(&host);
    s.scan(&config);
    let log = s.events_path();
    // copytruncate's copy is taken ...
    std::fs::copy(&log, s.path("log/events.jsonl.1")).expect("copy");
    // ... a scan appends (a new container) ...
    let a = containers.create(&["--name", &unique("dw-cut"), &test_image(), "true"]);
    s.scan(&config);
    assert_eq!(discovered(&parsed_lines(&log), &a), 1);
    // ... and the log is emptied: that line is in neither file.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .and_then(|f| f.set_len(0))
        .expect("truncate");
    s.scan(&config);
    s.scan(&config);
    let events = all_rotated(&s);
    assert_eq!(
        discovered(&events, &a),
        1,
        "appended again, once: {events:?}"
    );
    assert_eq!(discovered(&parsed_lines(&log), &a), 1);

    // Emptied by hand with no copy beside it: nothing is appended again.
    std::fs::remove_file(s.path("log/events.jsonl.1")).expect("rm");
    let b = containers.create(&["--name", &unique("dw-cut"), &test_image(), "true"]);
    s.scan(&config);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .and_then(|f| f.set_len(0))
        .expect("truncate");
    let err = s.scan(&config);
    assert!(err.contains("emptied in place"), "{err}");
    assert_eq!(discovered(&parsed_lines(&log), &b), 0);
}
