//! Shared helpers of the end-to-end tests: a scratch directory with a config,
//! a scripted `nvidia-smi`, runs of the real binary, and the private Docker
//! engine that `tests/run.sh` starts (`DW_TEST_DOCKER_HOST`).
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_detect-workloads");

/// The GPU of the real H100 capture in `tests/fixtures/gpu`.
pub const UUID: &str = "GPU-56c0b0b8-eb5c-605d-11d6-1bac317b478c";

/// A scratch directory holding a config, the inventory, the event log and a
/// scripted `nvidia-smi`.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("dw-e2e-")
            .tempdir()
            .expect("create scratch dir");
        let s = Scratch { dir };
        s.set_gpu_apps("");
        s.write_script();
        s
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn inventory_path(&self) -> PathBuf {
        self.path("state/inventory.json")
    }

    pub fn events_path(&self) -> PathBuf {
        self.path("log/events.jsonl")
    }

    /// The scripted nvidia-smi: prints `apps.csv`, or fails / hangs / prints
    /// garbage when `mode` says so.
    fn write_script(&self) {
        let script = format!(
            r#"#!/bin/sh
dir='{dir}'
mode=$(cat "$dir/mode" 2>/dev/null)
case "$mode" in
  fail) echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." >&2; exit 9 ;;
  hang) sleep 300 & echo $! > "$dir/child.pid"; wait ;;
  garbage) printf 'garbage \001\002 not csv\n' ;;
  *) case "$*" in
       *--query-gpu=*) cat "$dir/gpus.csv" 2>/dev/null ;;
       *) cat "$dir/apps.csv" ;;
     esac ;;
esac
"#,
            dir = self.dir.path().display()
        );
        let path = self.path("nvidia-smi");
        std::fs::write(&path, script).expect("write fake nvidia-smi");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// What the scripted nvidia-smi lists: `pid, MiB, uuid` lines.
    pub fn set_gpu_apps(&self, csv: &str) {
        std::fs::write(self.path("apps.csv"), csv).expect("write apps.csv");
    }

    /// A `sleep` that the scripted nvidia-smi lists as the only GPU process
    /// (10 MiB on the fixture's GPU).
    pub fn gpu_process(&self) -> Proc {
        let p = sleeper();
        self.set_gpu_apps(&format!("{}, 10, {UUID}\n", p.pid()));
        p
    }

    /// What the scripted nvidia-smi says of the GPUs' utilisation:
    /// `uuid, percent` lines (`--query-gpu=uuid,utilization.gpu`).
    pub fn set_gpu_utilization(&self, csv: &str) {
        std::fs::write(self.path("gpus.csv"), csv).expect("write gpus.csv");
    }

    pub fn set_smi_mode(&self, mode: &str) {
        std::fs::write(self.path("mode"), mode).expect("write mode");
    }

    /// A config with every built-in plugin; `docker_host` None leaves Docker out.
    pub fn config(&self, docker_host: Option<&str>, extra: &str) -> PathBuf {
        let docker = match docker_host {
            Some(host) => {
                format!("[[collectors.docker]]\nendpoint = \"{host}\"\ntimeout = \"20s\"\n")
            }
            None => String::new(),
        };
        let text = format!(
            r#"[agent]
scan_timeout = "25s"
source = "detect-workloads-test"

{docker}
[[collectors.nvidia-smi]]
command = "{smi}"
timeout = "3s"

[[collectors.procfs]]

[[stages.classify]]
[[stages.resolve-user]]
[[stages.gpu-devices]]
[[stages.exclude-system]]
[[stages.transient-filter]]

[[sinks.inventory-file]]
path = "{inv}"
mode = "0640"

[[sinks.event-log]]
path = "{events}"
{extra}
"#,
            smi = self.path("nvidia-smi").display(),
            inv = self.inventory_path().display(),
            events = self.events_path().display(),
        );
        let path = self.path("config.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Runs the binary with this config and extra arguments.
    pub fn run(&self, config: &Path, args: &[&str]) -> Output {
        self.spawn(config, args)
            .wait_with_output()
            .expect("run detect-workloads")
    }

    /// One scan that must succeed; returns its stderr.
    pub fn scan(&self, config: &Path) -> String {
        let out = self.run(config, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "scan failed: {stderr}");
        assert!(
            stderr.contains("Scan complete: "),
            "no summary line: {stderr}"
        );
        stderr
    }

    /// One scan that must succeed; returns the events it wrote.
    pub fn scan_events(&self, config: &Path) -> Vec<Value> {
        let before = self.event_lines().len();
        self.scan(config);
        self.events().split_off(before)
    }

    pub fn inventory(&self) -> Value {
        let text = std::fs::read_to_string(self.inventory_path()).expect("inventory written");
        serde_json::from_str(&text).expect("inventory is JSON")
    }

    /// Every event line so far, parsed.
    pub fn events(&self) -> Vec<Value> {
        self.event_lines()
            .iter()
            .map(|l| serde_json::from_str(l).expect("event line is JSON"))
            .collect()
    }

    /// Every event line so far, each with its `event_id` (checked to be
    /// there, last, a UUID) taken off, so that tests can compare whole lines.
    pub fn event_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.events_path())
            .unwrap_or_default()
            .lines()
            .map(without_event_id)
            .collect()
    }
}

/// `line` without its trailing `,"event_id":"<UUID>"`, which must be there.
pub fn without_event_id(line: &str) -> String {
    let (head, id) = line
        .rsplit_once(",\"event_id\":\"")
        .unwrap_or_else(|| panic!("no event_id last in {line}"));
    let id = id
        .strip_suffix("\"}")
        .unwrap_or_else(|| panic!("event_id not last in {line}"));
    assert!(
        id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
        "event_id {id:?} is not a UUID"
    );
    format!("{head}}}")
}

/// Whether this is a CI run (`CI=true` or `CI=1`, as tests/run.sh reads it).
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// The private engine's endpoint.
///
/// Tests that need what tests/run.sh sets up (this engine, the test user, the
/// Prometheus tools) are `#[ignore]`d with the reason, so that a plain `cargo
/// test` lists them as ignored rather than as passed; the test command runs
/// them (`--include-ignored`) once it has set everything up, and a missing
/// prerequisite is then a failure, never a silent pass.
pub fn docker_host() -> String {
    match std::env::var("DW_TEST_DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host,
        _ => panic!("no private Docker engine (DW_TEST_DOCKER_HOST): run tests/run.sh"),
    }
}

pub fn test_image() -> String {
    std::env::var("DW_TEST_IMAGE").unwrap_or_else(|_| "dw-test/busybox:latest".to_string())
}

/// `docker` against the private engine; panics with its stderr on failure.
pub fn docker(host: &str, args: &[&str]) -> String {
    let out = Command::new("docker")
        .arg("-H")
        .arg(host)
        .args(args)
        .output()
        .expect("run docker client");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Containers created by one test, removed when dropped.
pub struct Containers {
    pub host: String,
    pub ids: Vec<String>,
}

impl Containers {
    pub fn new(host: &str) -> Self {
        Containers {
            host: host.to_string(),
            ids: Vec::new(),
        }
    }

    /// `docker create` (or `run -d` when `args` start with "run") with a
    /// marker label; returns the short id.
    pub fn create(&mut self, args: &[&str]) -> String {
        let mut full = vec!["create", "--label", "dw-test=1"];
        full.extend_from_slice(args);
        let id = docker(&self.host, &full);
        self.ids.push(id.clone());
        id[..12].to_string()
    }

    pub fn run(&mut self, args: &[&str]) -> String {
        let mut full = vec!["run", "-d", "--label", "dw-test=1"];
        full.extend_from_slice(args);
        let id = docker(&self.host, &full);
        self.ids.push(id.clone());
        id[..12].to_string()
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = Command::new("docker")
                .args(["-H", &self.host, "rm", "-f", id])
                .output();
        }
    }
}

/// A unique name for this test run.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A `sleep 600` to list as a GPU process, killed when dropped.
pub fn sleeper() -> Proc {
    Proc(
        Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep"),
    )
}

/// The names in a directory (empty when it does not exist).
pub fn listing(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A spawned process, killed when dropped.
pub struct Proc(pub std::process::Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test user (created by tests/run.sh) and its uid; see [`docker_host`]
/// for how tests that need it are run.
pub fn test_user() -> (String, u32) {
    let name = std::env::var("DW_TEST_USER").unwrap_or_else(|_| "dwtest".to_string());
    let out = Command::new("id").arg("-u").arg(&name).output();
    let uid = out
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok());
    match uid {
        Some(uid) => (name, uid),
        None => panic!("no test user {name}: run tests/run.sh (as root)"),
    }
}

/// `sh -c script` as the test user (its own uid and gid, no other group),
/// killed when dropped.
pub fn as_test_user(script: &str) -> Proc {
    let (_, uid) = test_user();
    Proc(
        Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", "--", "sh", "-c", script])
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("setpriv (util-linux)"),
    )
}

/// The binary with this config and arguments, in an environment that
/// names no other config and no Docker host.
pub fn binary(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("DETECT_WORKLOADS_CONFIG")
        .env_remove("DOCKER_HOST");
    cmd
}

impl Scratch {
    /// Starts the binary with this config without waiting for it (standard
    /// output and error captured).
    pub fn spawn(&self, config: &Path, args: &[&str]) -> std::process::Child {
        binary(config, args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start detect-workloads")
    }
}

/// Starts the binary with this config, its standard error appended to `log`
/// (nothing blocks on a full pipe, however long it runs) and its standard
/// input and output closed.
pub fn spawn_logged(config: &Path, args: &[&str], log: &Path) -> std::process::Child {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the stderr log");
    binary(config, args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start detect-workloads")
}

/// Rewrites a config file, replacing `from` (which must be there) by `to`.
pub fn edit_config(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read config");
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).expect("write config");
}

// --- watch-mode children (e2e_watch, e2e_metrics_http) ----------------------

/// How long a watch-mode test waits for anything.
pub const BOUND: std::time::Duration = std::time::Duration::from_secs(20);

/// Waits until `check` holds, or panics after [`BOUND`] saying `what`.
pub fn wait_for(what: &str, child: &mut std::process::Child, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "watch exited ({status}) while waiting for {what}: {}",
                stderr_of(child)
            );
        }
        assert!(start.elapsed() < BOUND, "not within {BOUND:?}: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// What the child wrote to standard error (taken once).
pub fn stderr_of(child: &mut std::process::Child) -> String {
    let mut text = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut text);
    }
    text
}

/// Sends `sig` to the child.
pub fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on our own child's PID.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill");
}

/// SIGTERM; the exit status and standard error.
pub fn stop(mut child: std::process::Child) -> (Option<i32>, String) {
    signal(&child, libc::SIGTERM);
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status.code(), stderr_of(&mut child));
        }
        if start.elapsed() > BOUND {
            let _ = child.kill();
            panic!("watch did not stop on SIGTERM: {}", stderr_of(&mut child));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits until the clock's whole-second count is `n` above what it is now:
/// for the engine's events and the inventory's times, stamped in whole
/// seconds, "later" means another second, not a fixed sleep.
pub fn seconds_pass(n: u64) {
    let secs = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let target = secs() + n;
    while secs() < target {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Puts an NVML collector loading `library` before the config's scripted
/// nvidia-smi, which becomes its fallback (`fallback_for = "nvml"`).
pub fn use_nvml(config: &Path, library: &Path) {
    edit_config(
        config,
        "[[collectors.nvidia-smi]]",
        &format!(
            "[[collectors.nvml]]\nlibrary = \"{}\"\n\n[[collectors.nvidia-smi]]\nfallback_for = \"nvml\"",
            library.display()
        ),
    );
}

/// The fake NVML library (`tests/fake-nvml`), built once per test binary into
/// its own target directory (as `collectors/tests/nvml_fake.rs` does).
pub fn fake_nvml() -> &'static std::path::Path {
    static LIBRARY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    LIBRARY.get_or_init(|| {
        let target_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-nvml-e2e");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet", "-p", "fake-nvml", "--target-dir"])
            .arg(&target_dir)
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build fake-nvml: {e}"));
        assert!(status.success(), "building fake-nvml failed: {status}");
        let library = target_dir.join("debug").join("libfake_nvml.so");
        assert!(library.exists(), "{} was not built", library.display());
        library
    })
}
