//! A deadline is a deadline: blocking reads under `/proc` run where the
//! collector's timeout can abandon them, and the scan still writes its
//! inventory within `scan_timeout` (issue 10, point 4).

mod common;

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use common::{edit_config, Scratch, UUID};

/// The crafted process that the scripted nvidia-smi lists.
const PID: u32 = 447;

/// A crafted `/proc` with one process, copied from `tests/fixtures/proc`.
fn crafted_root(s: &Scratch) -> std::path::PathBuf {
    let root = s.path("proc");
    let dir = root.join(PID.to_string());
    std::fs::create_dir_all(&dir).expect("mkdir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proc/447");
    for name in ["stat", "status", "cmdline", "cgroup"] {
        std::fs::copy(fixture.join(name), dir.join(name)).expect("copy fixture");
    }
    root
}

/// Replaces `<root>/447/cmdline` by a FIFO that nobody writes: opening it for
/// reading blocks for ever.
fn make_cmdline_a_fifo(root: &Path) {
    let cmdline = root.join(PID.to_string()).join("cmdline");
    std::fs::remove_file(&cmdline).expect("rm cmdline");
    let status = Command::new("mkfifo")
        .arg(&cmdline)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo failed");
}

/// Runs one scan; kills it if it has not exited after 30 s (a hang, not a
/// measure of speed). Returns its exit status, stderr and wall time.
fn scan_with_kill(s: &Scratch, config: &Path) -> (Option<ExitStatus>, String, Duration) {
    let start = Instant::now();
    let mut child = s.spawn(config, &[]);
    let status = loop {
        match child.try_wait().expect("wait") {
            Some(status) => break Some(status),
            None if start.elapsed() > Duration::from_secs(30) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let elapsed = start.elapsed();
    let stderr = child
        .wait_with_output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    (status, stderr, elapsed)
}

#[test]
fn a_cmdline_that_blocks_is_abandoned_at_the_deadline() {
    let s = Scratch::new();
    let root = crafted_root(&s);
    let config = s.config(None, "");
    edit_config(&config, "scan_timeout = \"25s\"", "scan_timeout = \"3s\"");
    edit_config(
        &config,
        "[[collectors.procfs]]\n",
        &format!("[[collectors.procfs]]\nroot = \"{}\"\n", root.display()),
    );
    s.set_gpu_apps(&format!("{PID}, 1542, {UUID}\n"));

    // Two readable scans confirm the process.
    s.scan(&config);
    s.scan(&config);
    let confirmed = s.inventory()["host_processes"].clone();
    assert_eq!(
        confirmed[PID.to_string()]["cmdline"],
        "python3 train.py",
        "{confirmed}"
    );

    // Its cmdline now blocks whoever opens it.
    make_cmdline_a_fifo(&root);
    let (status, stderr, elapsed) = scan_with_kill(&s, &config);
    eprintln!("scan with a blocking cmdline took {elapsed:?}");
    let status = status.unwrap_or_else(|| panic!("the scan hung past 30 s: {stderr}"));
    assert!(status.success(), "scan failed: {stderr}");
    assert!(stderr.contains("Scan complete: "), "{stderr}");

    let inv = s.inventory();
    let procfs = &inv["scan"]["collectors"]["procfs"];
    assert_eq!(procfs["ok"], false, "{procfs}");
    assert!(
        procfs["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("timed out after")),
        "{procfs}"
    );
    assert_eq!(inv["scan"]["collectors"]["nvidia-smi"]["ok"], true);
    assert_eq!(inv["host_processes"], confirmed, "carried over");
}
