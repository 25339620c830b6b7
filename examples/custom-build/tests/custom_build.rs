//! The extension story end to end: a binary built from the stock plugin crates
//! plus `device-files`, run against real processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use detect_workloads_api::plugin::{find_collector, PluginKind};
use detect_workloads_device_files as _;

const BIN: &str = env!("CARGO_BIN_EXE_detect-workloads-custom");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("DETECT_WORKLOADS_CONFIG")
        .env_remove("DETECT_WORKLOADS_LOG")
        .output()
        .expect("run detect-workloads-custom")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A child process, killed and reaped when the test ends, passed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Creates a character device node (1:3, the same device as /dev/null).
fn mknod_char(path: &Path) -> nix::Result<()> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )
}

#[test]
#[ignore = "needs root (mknod) and a file system that allows device nodes: run by tests/run.sh"]
fn reports_a_process_holding_a_gpu_device_node() {
    // Under target/ rather than /tmp, which may be mounted nodev.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let base: PathBuf = tmp.path().canonicalize().expect("canonicalize");
    let dev = base.join("dev");
    std::fs::create_dir(&dev).expect("mkdir dev");
    let node = dev.join("nvidia0");
    if let Err(e) = mknod_char(&node) {
        panic!(
            "cannot create a device node here ({e}): run as root, on a file system without nodev"
        );
    }
    let held = std::fs::File::open(&node)
        .unwrap_or_else(|e| panic!("cannot open the device node {} ({e})", node.display()));
    // The child holds the node as its standard input, the test process does not.
    let child = KillOnDrop(
        Command::new("sleep")
            .arg("30")
            .stdin(held)
            .spawn()
            .expect("spawn sleep"),
    );
    let pid = child.0.id();

    let inventory_path = base.join("inventory.json");
    let events_path = base.join("events.jsonl");
    let config_path = base.join("config.toml");
    let config = format!(
        r#"
[agent]
scan_timeout = "20s"

[[collectors.device-files]]
dev_dir = {dev:?}

[[collectors.procfs]]

[[stages.exclude-system]]

[[stages.transient-filter]]
min_scans = 1

[[sinks.inventory-file]]
path = {inventory:?}

[[sinks.event-log]]
path = {events:?}
"#,
        dev = dev.display().to_string(),
        inventory = inventory_path.display().to_string(),
        events = events_path.display().to_string(),
    );
    std::fs::write(&config_path, config).expect("write config");

    let config_arg = config_path.to_str().expect("utf-8 temp path");
    let out = run(&["--config", config_arg]);
    assert!(
        out.status.success(),
        "scan failed ({:?}): {}",
        out.status,
        text(&out.stderr)
    );

    let inventory: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&inventory_path).expect("read inventory"))
            .expect("inventory is JSON");
    let report = &inventory["scan"]["collectors"]["device-files"];
    assert_eq!(report["ok"], true, "{report}");
    let entry = &inventory["host_processes"][pid.to_string()];
    assert_eq!(entry["pid"], pid, "pid {pid} not reported: {inventory:#}");
    assert!(entry["gpu_memory_mb"].is_null(), "{entry}");
    assert_eq!(entry["gpu_uuid"], node.display().to_string(), "{entry}");
    assert_eq!(entry["cmdline"], "sleep 30", "{entry}");
    assert!(
        entry["user"].as_str().is_some_and(|u| !u.is_empty()),
        "{entry}"
    );
    assert!(
        entry["detected_at"]
            .as_str()
            .is_some_and(|d| d.ends_with('Z')),
        "{entry}"
    );

    let events = std::fs::read_to_string(&events_path).expect("read events");
    let discovered = events
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .any(|e| {
            e["event_type"] == "detection.host_gpu_process_discovered"
                && e["details"]["pid"] == pid
                && e["details"]["gpu_uuid"] == node.display().to_string()
        });
    assert!(discovered, "no discovered event for {pid}: {events}");
    drop(child);
}

#[test]
fn plugins_lists_device_files_and_the_built_ins() {
    let out = run(&["plugins"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    // Section by section: "collectors:", "stages:", "sinks:", then indented names.
    let mut section = "";
    let mut listed: Vec<(String, String)> = Vec::new();
    for line in listing.lines() {
        if let Some(name) = line.strip_suffix(':') {
            section = name;
        } else if let Some(name) = line.split_whitespace().next() {
            listed.push((section.to_string(), name.to_string()));
        }
    }
    let expected = [
        ("collectors", "device-files"),
        ("collectors", "docker"),
        ("collectors", "nvml"),
        ("collectors", "nvidia-smi"),
        ("collectors", "procfs"),
        ("stages", "classify"),
        ("sinks", "inventory-file"),
        ("sinks", "event-log"),
        ("sinks", "stdout"),
    ];
    for (section, name) in expected {
        assert!(
            listed.iter().any(|(s, n)| s == section && n == name),
            "{section}.{name} missing from:\n{listing}"
        );
    }
}

#[test]
fn device_files_is_registered_by_linking_the_crate() {
    let plugin = find_collector("device-files").expect("device-files is registered");
    assert_eq!(plugin.name, "device-files");
    assert!(PluginKind::Collector
        .registered()
        .iter()
        .any(|(name, _)| *name == "device-files"));
}

#[test]
fn an_unknown_plugin_is_a_configuration_error_listing_the_known_ones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, "[[collectors.procfs]]\n\n[[collectors.nope]]\n").expect("write");
    let out = run(&["validate", "--config", config.to_str().expect("utf-8 path")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("config.toml:3"), "{stderr}");
    assert!(
        stderr.contains("unknown collector plugin `nope`"),
        "{stderr}"
    );
    for known in ["device-files", "docker", "procfs"] {
        assert!(stderr.contains(known), "{known} not listed: {stderr}");
    }
}

#[test]
fn validate_accepts_device_files_with_its_settings() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        "[[collectors.device-files]]\nroot = \"/proc\"\ndev_dir = \"/dev\"\ntimeout = \"2s\"\n[[sinks.stdout]]\n",
    )
    .expect("write");
    let out = run(&["validate", "--config", config.to_str().expect("utf-8 path")]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("  device-files: timeout 2s\n"), "{stdout}");
}
