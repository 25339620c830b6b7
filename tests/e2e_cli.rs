//! The command line and configuration contract of SPEC.md, through the binary.

mod common;

use std::process::{Command, Output};

use common::{Scratch, BIN};
use detect_workloads_collectors as _;
use detect_workloads_core::plugin::{find_collector, find_sink, find_stage};
use detect_workloads_sinks as _;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("DETECT_WORKLOADS_CONFIG")
        // Never the machine's real engine.
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_builtin_plugin_is_registered_and_listed() {
    let collectors = ["docker", "nvml", "nvidia-smi", "procfs"];
    let stages = [
        "classify",
        "resolve-user",
        "gpu-devices",
        "exclude-system",
        "transient-filter",
        "redact",
    ];
    let sinks = ["inventory-file", "event-log", "stdout"];
    for name in collectors {
        assert!(find_collector(name).is_some(), "collector {name}");
    }
    for name in stages {
        assert!(find_stage(name).is_some(), "stage {name}");
    }
    for name in sinks {
        assert!(find_sink(name).is_some(), "sink {name}");
    }
    let out = run(&["plugins"], &[]);
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    for name in collectors.iter().chain(&stages).chain(&sinks) {
        assert!(
            listing
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{name} "))),
            "{name} not listed:\n{listing}"
        );
    }
}

#[test]
fn shipped_configs_validate() {
    let mut files = vec![format!("{ROOT}/config/default.toml")];
    for entry in std::fs::read_dir(format!("{ROOT}/config/examples")).expect("examples") {
        files.push(entry.expect("entry").path().to_string_lossy().into_owned());
    }
    for file in files {
        let out = run(&["validate", "--config", &file], &[]);
        assert!(out.status.success(), "{file}: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
    }
}

#[test]
fn config_errors_exit_2_naming_file_line_and_key() {
    let s = Scratch::new();
    let cases = [
        (
            "[agent]\nscan_timeout = \"5s\"\n\n[[collectors.docker]]\ntimeout = \"1s\"\nendpoitn = \"x\"\n",
            ":6:",
            "endpoitn",
        ),
        ("[[collectors.dockr]]\n", ":1:", "known: docker"),
        ("[[stages.classify]]\ndefault = 5\n", ":2:", "default"),
        ("[agent]\nscan_timeout = \"soon\"\n", ":2:", "soon"),
        ("[agent]\nbogus = 1\n", ":2:", "bogus"),
        ("[agent]\nsource = \"x\"\nscan_timeout = \"0s\"\n", ":3:", "scan_timeout"),
        ("[collector]\n", ":1:", "unknown section"),
        ("[[sinks.inventory-file]]\npath = \"/tmp/x\"\nmode = \"rw\"\n", ":3:", "mode"),
        ("[[stages.transient-filter]]\n\nmin_scans = 0\n", ":3:", "min_scans"),
        ("this is not toml", ":1:", ""),
    ];
    for (text, line, key) in cases {
        let path = s.path("bad.toml");
        std::fs::write(&path, text).expect("write");
        let file = path.to_string_lossy().into_owned();
        for args in [vec!["validate", "--config", &file], vec!["--config", &file]] {
            let out = run(&args, &[]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
            assert!(err.contains(&format!("{file}{line}")), "{text:?}: {err}");
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }
    let out = run(&["--sink", "nope"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("known: event-log, inventory-file, prometheus, stdout"),
        "{}",
        stderr(&out)
    );
    let out = run(&["--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_from_environment_and_builtin_default() {
    let s = Scratch::new();
    let config = s.config(None, "");
    let out = run(
        &["validate"],
        &[("DETECT_WORKLOADS_CONFIG", &config.to_string_lossy())],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&*config.to_string_lossy()));

    // No file anywhere: the compiled-in default, which equals config/default.toml.
    if !std::path::Path::new("/etc/ds01/detect-workloads.toml").exists() {
        let out = run(&["validate"], &[]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("built-in default config"));
        assert_eq!(
            detect_workloads_core::config::DEFAULT_CONFIG,
            std::fs::read_to_string(format!("{ROOT}/config/default.toml")).expect("default.toml")
        );
        // One scan with nothing available: exit 0, warnings, failures recorded.
        let out = run(&["--sink", "stdout"], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let inv: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        assert_eq!(inv["scan"]["collectors"]["docker"]["ok"], false);
        assert!(stderr(&out).contains("WARN"));
        assert!(stderr(&out).contains("Scan complete: "));
    }
}

#[test]
fn help_and_version() {
    let out = run(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "validate",
        "plugins",
        "--config",
        "--sink",
        "--dry-run",
        "--verbose",
        "--quiet",
    ] {
        assert!(help.contains(word), "{word} missing from --help");
    }
    let out = run(&["--version"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("detect-workloads "));
}

#[test]
fn systemd_units_match_the_deployment() {
    let service =
        std::fs::read_to_string(format!("{ROOT}/config/systemd/detect-workloads.service"))
            .expect("service unit");
    for line in [
        "Type=oneshot",
        "TimeoutSec=25s",
        "Nice=10",
        "IOSchedulingClass=idle",
    ] {
        assert!(service.lines().any(|l| l == line), "{line}");
    }
    let timer = std::fs::read_to_string(format!("{ROOT}/config/systemd/detect-workloads.timer"))
        .expect("timer unit");
    for line in [
        "OnBootSec=30s",
        "OnUnitActiveSec=30s",
        "WantedBy=timers.target",
    ] {
        assert!(timer.lines().any(|l| l == line), "{line}");
    }
}
