//! Secrets in command lines never reach the inventory, the event log or the
//! standard output; a user's GPU process is never excluded as a "system"
//! one, whatever it calls itself. Real processes, listed by the scripted
//! `nvidia-smi`, attributed from the real `/proc`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::{edit_config, test_user, Proc, Scratch, UUID};

const SECRETS: [&str; 6] = [
    "hf_abc",
    "hunter2",
    "wJalrXUtnFEMI",
    "s3cr3t-q",
    "k3y-head",
    "k3y-tail",
];

/// A real process whose argv holds a secret of each kind.
fn leaky() -> Proc {
    Proc(
        Command::new("sh")
            .arg("-c")
            .arg("sleep 600; exit 0")
            .arg("train.py")
            .args([
                "--token=hf_abc",
                "--password",
                "hunter2",
                "postgres://bob:hunter2@db/x",
                "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI",
                "https://h/x?api_key=s3cr3t-q",
                // One argument with a space: hidden whole, not up to the space.
                "--api-key",
                "k3y-head k3y-tail",
                "--epochs",
                "3",
            ])
            .spawn()
            .expect("spawn"),
    )
}

const REDACTED: [&str; 7] = [
    "sh -c sleep 600; exit 0 train.py",
    "--token=***",
    "--password ***",
    "postgres://bob:***@db/x",
    "AWS_SECRET_ACCESS_KEY=***",
    "--api-key *** --epochs 3",
    "--epochs 3",
];

/// A config where a GPU process is reported at its first scan.
fn config(s: &Scratch, extra: &str) -> std::path::PathBuf {
    let config = s.config(None, extra);
    edit_config(
        &config,
        "[[stages.transient-filter]]",
        "[[stages.transient-filter]]\nmin_scans = 1",
    );
    config
}

fn assert_redacted(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} holds {secret:?}: {text}");
    }
    for kept in REDACTED {
        assert!(text.contains(kept), "{what} lacks {kept:?}: {text}");
    }
}

#[test]
fn secrets_reach_neither_the_inventory_nor_the_events_nor_stdout() {
    let s = Scratch::new();
    let p = leaky();
    s.set_gpu_apps(&format!("{}, 100, {UUID}\n", p.pid()));
    let config = config(&s, "");
    // Its stages are listed without `redact`: redaction is still in force.
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.contains("[[stages.") && !text.contains("redact"));

    let stderr = s.scan(&config);
    let inventory = std::fs::read_to_string(s.inventory_path()).expect("inventory");
    let entry = &s.inventory()["host_processes"][p.pid().to_string()];
    assert_redacted(
        "the inventory entry",
        entry["cmdline"].as_str().expect("cmdline"),
    );
    assert_redacted("the inventory", &inventory);
    let events = s.event_lines().join("\n");
    assert!(events.contains("detection.host_gpu_process_discovered"));
    assert_redacted("the event log", &events);
    for secret in SECRETS {
        assert!(!stderr.contains(secret), "the log holds {secret:?}");
    }

    let out = s.run(&config, &["--sink", "stdout"]);
    assert!(out.status.success());
    assert_redacted("stdout", &String::from_utf8_lossy(&out.stdout));

    // Gone: the exit event holds the stored, redacted command line.
    drop(p);
    s.set_gpu_apps("");
    let exited = s.scan_events(&config);
    assert!(exited
        .iter()
        .any(|e| e["event_type"] == "detection.host_gpu_process_exited"));
    assert_redacted(
        "the exit event",
        &serde_json::to_string(&exited).expect("json"),
    );
}

#[test]
fn mode_full_keeps_the_command_line_and_argv0_keeps_the_program() {
    let s = Scratch::new();
    let p = leaky();
    s.set_gpu_apps(&format!("{}, 100, {UUID}\n", p.pid()));
    let key = p.pid().to_string();

    let full = config(&s, "\n[[stages.redact]]\nmode = \"full\"\n");
    s.scan(&full);
    let cmdline = s.inventory()["host_processes"][&key]["cmdline"].clone();
    let cmdline = cmdline.as_str().expect("cmdline");
    assert!(cmdline.contains("--password hunter2 postgres://bob:hunter2@db/x"));

    let argv0 = config(&s, "\n[[stages.redact]]\nmode = \"argv0\"\n");
    s.scan(&argv0);
    assert_eq!(s.inventory()["host_processes"][&key]["cmdline"], "sh");
}

#[test]
fn long_command_lines_are_capped() {
    let s = Scratch::new();
    let long = "a".repeat(100_000);
    let p = Proc(
        Command::new("sh")
            .arg("-c")
            .arg("sleep 600; exit 0")
            .arg(&long)
            .spawn()
            .expect("spawn"),
    );
    s.set_gpu_apps(&format!("{}, 100, {UUID}\n", p.pid()));
    let config = config(&s, "\n[[stages.redact]]\nmax_length = 100\n");
    s.scan(&config);
    let entry = &s.inventory()["host_processes"][p.pid().to_string()];
    let cmdline = entry["cmdline"].as_str().expect("cmdline");
    assert!(cmdline.len() <= 100, "{}", cmdline.len());
    assert!(cmdline.starts_with("sh -c sleep 600; exit 0 aaa") && cmdline.ends_with('…'));
}

/// `sleep 600` run as `uid` under the name `argv0`.
fn named(program: &Path, argv0: &str, uid: u32) -> Proc {
    Proc(
        Command::new(program)
            .arg0(argv0)
            .arg("600")
            .uid(uid)
            .spawn()
            .expect("spawn"),
    )
}

#[test]
#[ignore = "needs root and the test user dwtest: run by tests/run.sh"]
fn a_users_process_is_reported_whatever_it_calls_itself() {
    let (user, uid) = test_user();
    let s = Scratch::new();
    // A binary named like a system one, that the test user may run.
    let bin = s.path("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    for dir in [s.dir.path(), bin.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let smi = bin.join("nvidia-smi");
    std::fs::copy("/bin/sleep", &smi).expect("copy sleep");
    let sleep = Path::new("/bin/sleep");
    let users_x = named(sleep, "X", uid);
    let users_xorg = named(sleep, "/usr/lib/xorg/Xorg", uid);
    let users_smi = named(&smi, "nvidia-smi", uid);
    let roots_x = named(sleep, "X", 0);
    let procs = [&users_x, &users_xorg, &users_smi, &roots_x];
    let csv: String = procs
        .iter()
        .map(|p| format!("{}, 40000, {UUID}\n", p.pid()))
        .collect();
    s.set_gpu_apps(&csv);
    let config = config(&s, "");
    // UID_MIN 500 from a login.defs of the tests.
    let login_defs = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/login.defs");
    edit_config(
        &config,
        "[[stages.exclude-system]]",
        &format!("[[stages.exclude-system]]\nlogin_defs = \"{login_defs}\""),
    );

    let stderr = s.scan(&config);
    let inv = s.inventory();
    let host = inv["host_processes"].as_object().expect("host processes");
    for p in &procs[..3] {
        let entry = &host[&p.pid().to_string()];
        assert_eq!(entry["user"], user.as_str(), "{inv}");
        assert_eq!(entry["gpu_memory_mb"], 40000);
    }
    assert!(!host.contains_key(&roots_x.pid().to_string()), "{inv}");
    // The exclusion is logged, with pid, uid, name and executable.
    let line = stderr
        .lines()
        .find(|l| l.contains("excluded as a system process"))
        .unwrap_or_else(|| panic!("no exclusion logged: {stderr}"));
    assert!(line.contains("INFO"), "{line}");
    for field in [
        format!("pid={}", roots_x.pid()),
        "uid=0".into(),
        "name=\"X\"".into(),
    ] {
        assert!(line.contains(&field), "{field} not in {line}");
    }
    // The executable it really runs, from /proc/<pid>/exe, beside the name it gave.
    let exe = std::fs::read_link(format!("/proc/{}/exe", roots_x.pid())).expect("exe");
    assert!(
        line.contains(&format!("exe=\"{}\"", exe.display())),
        "{exe:?} not in {line}"
    );
    assert!(line.contains("argv0=\"X\""), "{line}");

    // With UID_MIN above the test user's uid, its `X` is a system process.
    let defs = s.path("login.defs");
    std::fs::write(&defs, format!("UID_MIN {}\n", uid + 1)).expect("write");
    edit_config(&config, login_defs, &defs.display().to_string());
    s.scan(&config);
    let inv = s.inventory();
    assert!(
        inv["host_processes"]
            .get(users_x.pid().to_string())
            .is_none(),
        "{inv}"
    );
}
