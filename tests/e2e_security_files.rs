//! Trust in files and outputs, end to end (issue 10 points 1, 5, 6, 7, 9): the
//! real binary, run as root, against what the unprivileged test user (dwtest)
//! can do: hold the lock, plant links and files in a shared sticky directory,
//! write a configuration; and against hostile text in command lines.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{edit_config, Proc, Scratch, UUID};

/// The test user's uid and gid (tests using it are `#[ignore]`d: see
/// `common::docker_host`).
fn attacker() -> (u32, u32) {
    let (name, uid) = common::test_user();
    let out = Command::new("id")
        .arg("-g")
        .arg(&name)
        .output()
        .expect("id -g");
    let gid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("gid");
    (uid, gid)
}

/// A command run as the test user in its own process group, all of which is
/// killed when dropped.
struct Group(Child);

impl Group {
    fn spawn(user: (u32, u32), program: &str, args: &[&str]) -> Group {
        Group(
            Command::new(program)
                .args(args)
                .uid(user.0)
                .gid(user.1)
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn as the test user"),
        )
    }

    /// Waits for the line the command prints once it is ready.
    fn wait_for(&mut self, line: &str) {
        let stdout = self.0.stdout.as_mut().expect("piped");
        let mut got = String::new();
        BufReader::new(stdout).read_line(&mut got).expect("read");
        assert_eq!(got.trim(), line, "the test user's command did not start");
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A config whose lock wait is short, with the scratch directory open for the
/// test user to traverse (still root's and not writable by others).
fn config_for_attack(s: &Scratch) -> std::path::PathBuf {
    chmod(s.dir.path(), 0o755);
    let config = s.config(None, "");
    edit_config(
        &config,
        "source = \"detect-workloads-test\"\n",
        "source = \"detect-workloads-test\"\nlock_timeout = \"2s\"\n",
    );
    edit_config(
        &config,
        "[[stages.transient-filter]]\n",
        "[[stages.transient-filter]]\nmin_scans = 1\n",
    );
    config
}

fn lock_path(s: &Scratch) -> std::path::PathBuf {
    s.path("state/inventory.json.lock")
}

fn assert_private_lock(path: &Path) {
    let meta = std::fs::symlink_metadata(path).expect("lock file");
    assert!(meta.is_file(), "{meta:?}");
    assert_eq!(meta.uid(), 0, "the lock belongs to root");
    assert_eq!(meta.mode() & 0o7777, 0o600, "only root can open the lock");
}

#[test]
#[ignore = "needs root and the test user dwtest: run by tests/run.sh"]
fn a_user_holding_an_old_lock_file_cannot_stop_the_scan() {
    let user = attacker();
    let s = Scratch::new();
    let config = config_for_attack(&s);
    // What earlier versions left: a lock file anyone could open.
    std::fs::create_dir_all(s.path("state")).expect("mkdir");
    std::fs::write(lock_path(&s), "").expect("old lock");
    chmod(&lock_path(&s), 0o644);
    let lock = lock_path(&s).display().to_string();
    let mut holder = Group::spawn(
        user,
        "flock",
        &["-s", &lock, "sh", "-c", "echo held; exec sleep 600"],
    );
    holder.wait_for("held");

    let stderr = s.scan(&config);
    assert!(
        stderr.contains("replacing it with a private lock file"),
        "{stderr}"
    );
    assert_private_lock(&lock_path(&s));
    // The test user cannot open the new one at all.
    let denied = Command::new("sh")
        .args(["-c", &format!("exec 3<'{lock}'")])
        .uid(user.0)
        .gid(user.1)
        .status()
        .expect("sh");
    assert!(!denied.success(), "the test user opened the lock");
    s.scan(&config);
}

#[test]
#[ignore = "needs root and the test user dwtest: run by tests/run.sh"]
fn a_lock_file_planted_by_a_user_is_not_used() {
    let user = attacker();
    let s = Scratch::new();
    let config = config_for_attack(&s);
    let state = s.path("state");
    std::fs::create_dir_all(&state).expect("mkdir");
    chmod(&state, 0o1777);
    let lock = lock_path(&s).display().to_string();
    let planted = Command::new("sh")
        .args(["-c", &format!("umask 0; : > '{lock}'")])
        .uid(user.0)
        .gid(user.1)
        .status()
        .expect("sh");
    assert!(planted.success());
    assert_eq!(
        std::fs::metadata(&lock).expect("planted").mode() & 0o777,
        0o666
    );

    let stderr = s.scan(&config);
    assert!(stderr.contains("owned by uid"), "{stderr}");
    assert_private_lock(&lock_path(&s));
}

#[test]
#[ignore = "needs root and the test user dwtest: run by tests/run.sh"]
fn links_planted_in_a_sticky_directory_are_not_followed() {
    let user = attacker();
    let s = Scratch::new();
    let config = config_for_attack(&s);
    // Inventory, lock and event log share one directory like /tmp.
    let shared = s.path("shared");
    std::fs::create_dir_all(&shared).expect("mkdir");
    chmod(&shared, 0o1777);
    edit_config(
        &config,
        &s.inventory_path().display().to_string(),
        &shared.join("inventory.json").display().to_string(),
    );
    edit_config(
        &config,
        &s.events_path().display().to_string(),
        &shared.join("events.jsonl").display().to_string(),
    );
    let outside = s.path("outside.txt");
    std::fs::write(&outside, "precious\n").expect("write");
    chmod(&outside, 0o644);

    // The links the test user plants: the lock, the event log, the inventory,
    // and the temporary names earlier versions used for the next PIDs.
    let mut names = vec![
        "inventory.json.lock".to_string(),
        "events.jsonl".to_string(),
        "inventory.json".to_string(),
    ];
    let last_pid: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1);
    names.extend((last_pid..last_pid + 3000).map(|pid| format!(".inventory.json.tmp.{pid}")));
    for name in &names {
        let link = shared.join(name);
        std::os::unix::fs::symlink(&outside, &link).expect("symlink");
        std::os::unix::fs::lchown(&link, Some(user.0), Some(user.1)).expect("lchown");
    }

    let gpu = s.gpu_process(); // so that the scan has an event to log
    let out = s.run(&config, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&outside).expect("outside"),
        "precious\n",
        "a file outside was changed through a link: {stderr}"
    );
    let outside_meta = std::fs::metadata(&outside).expect("outside");
    assert_eq!(outside_meta.mode() & 0o7777, 0o644);
    // The inventory replaced its link; the lock is root's own; the event log
    // was refused (a warning: the scan still succeeds).
    let inventory = shared.join("inventory.json");
    let meta = std::fs::symlink_metadata(&inventory).expect("inventory");
    assert!(meta.is_file() && meta.uid() == 0, "{meta:?}");
    let text = std::fs::read_to_string(&inventory).expect("inventory");
    assert!(text.contains(&format!("\"{}\"", gpu.pid())), "{text}");
    assert_private_lock(&shared.join("inventory.json.lock"));
    assert!(
        stderr.contains("events.jsonl: it is a symbolic link"),
        "{stderr}"
    );
}

#[test]
fn a_directory_others_can_write_is_refused_and_nothing_is_written() {
    let s = Scratch::new();
    let config = s.config(None, "");
    let state = s.path("state");
    std::fs::create_dir_all(&state).expect("mkdir");
    chmod(&state, 0o777);
    let out = s.run(&config, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("world-writable (mode 0777) without the sticky bit"),
        "{stderr}"
    );
    assert!(common::listing(&state).is_empty());
    assert!(!s.events_path().exists());
}

#[test]
#[ignore = "needs root and the test user dwtest: run by tests/run.sh"]
fn a_configuration_others_can_change_is_refused() {
    let s = Scratch::new();
    let config = s.config(None, "");
    chmod(&config, 0o666);
    for args in [&[][..], &["validate"][..]] {
        let out = s.run(&config, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("mode 0666"), "{stderr}");
        assert!(stderr.contains("chmod go-w"), "{stderr}");
    }
    assert!(!s.inventory_path().exists());
    chmod(&config, 0o644);
    let user = attacker();
    std::os::unix::fs::chown(&config, Some(user.0), None).expect("chown");
    let out = s.run(&config, &["validate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("owned by uid {}", user.0)),
        "{stderr}"
    );
}

/// A process whose command line is `sh -c 'read x' <args>`: it waits on its
/// standard input until killed.
fn process_with_args(args: &[&str]) -> Proc {
    Proc(
        Command::new("sh")
            .args(["-c", "read x", "sh"])
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn"),
    )
}

#[test]
fn a_2mb_command_line_keeps_the_facts_of_its_event() {
    let s = Scratch::new();
    let config = s.config(None, "");
    edit_config(
        &config,
        "[[stages.transient-filter]]\n",
        "[[stages.transient-filter]]\nmin_scans = 1\n",
    );
    // 20 arguments of 100 000 bytes (one argument may hold at most 128 KiB).
    let arg = "A".repeat(100_000);
    let args: Vec<&str> = std::iter::repeat_n(arg.as_str(), 20).collect();
    let p = process_with_args(&args);
    s.set_gpu_apps(&format!("{}, 40960, {UUID}\n", p.pid()));
    s.scan(&config);
    let lines = s.event_lines();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(line.len() < 4095, "{} bytes", line.len());
    }
    let events = s.events();
    let event = events
        .iter()
        .find(|e| e["event_type"] == "detection.host_gpu_process_discovered")
        .expect("discovered");
    let details = &event["details"];
    assert_eq!(details["pid"], p.pid(), "{event}");
    assert_eq!(details["gpu_memory_mb"], 40960, "{event}");
    assert_eq!(details["gpu_uuid"], UUID, "{event}");
    assert_eq!(event["user"], "root");
    let cmdline = details["cmdline"]
        .as_str()
        .expect("cmdline kept, shortened");
    assert!(cmdline.starts_with("sh -c read x sh AAAA"), "{cmdline}");
    assert!(cmdline.ends_with('…'), "{cmdline}");
}

#[test]
fn hostile_text_is_escaped_in_json_and_replaced_in_the_table() {
    let s = Scratch::new();
    let config = s.config(None, "");
    edit_config(
        &config,
        "[[stages.transient-filter]]\n",
        "[[stages.transient-filter]]\nmin_scans = 1\n",
    );
    let hostile = "--name=a\u{2028}b\u{2029}c\u{85}d\u{1b}[2J\u{1b}]0;pwned\u{7}";
    let p = process_with_args(&[hostile]);
    s.set_gpu_apps(&format!("{}, 10, {UUID}\n", p.pid()));
    s.scan(&config);

    let raw_is_safe = |what: &str, text: &str| {
        for bad in ['\u{2028}', '\u{2029}', '\u{85}', '\u{1b}', '\u{7}'] {
            assert!(!text.contains(bad), "{what} holds {bad:?} raw: {text}");
        }
        assert!(
            text.contains("\\u2028") && text.contains("\\u0085"),
            "{what}: {text}"
        );
    };
    let inventory = std::fs::read_to_string(s.inventory_path()).expect("inventory");
    raw_is_safe("inventory", &inventory);
    let events = std::fs::read_to_string(s.events_path()).expect("events");
    raw_is_safe("event log", &events);
    let entry = &s.inventory()["host_processes"][p.pid().to_string()];
    assert_eq!(entry["cmdline"], format!("sh -c read x sh {hostile}"));

    let dry = s.run(&config, &["--dry-run"]);
    assert!(dry.status.success());
    raw_is_safe("stdout json", &String::from_utf8_lossy(&dry.stdout));

    let table_config = s.path("table.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replacen(
        "[[sinks.inventory-file]]",
        "[[sinks.stdout]]\nformat = \"table\"\n\n[[sinks.inventory-file]]",
        1,
    );
    std::fs::write(&table_config, text).expect("write");
    let table = s.run(&table_config, &["--sink", "stdout"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        !table.chars().any(|c| c != '\n' && c.is_control())
            && !table.contains('\u{2028}')
            && !table.contains('\u{2029}'),
        "{table:?}"
    );
    assert!(table.contains("--name=a?b?c?d?[2J?]0;pwned?"), "{table:?}");
}

#[test]
fn nvidia_smi_is_never_taken_from_the_callers_path() {
    let s = Scratch::new();
    let config = s.config(None, "");
    let smi = s.path("nvidia-smi").display().to_string();
    edit_config(&config, &format!("command = \"{smi}\"\n"), "");
    let marker = s.path("ran-from-path");
    let bin = s.path("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let fake = bin.join("nvidia-smi");
    std::fs::write(&fake, format!("#!/bin/sh\ntouch '{}'\n", marker.display())).expect("write");
    chmod(&fake, 0o755);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(common::BIN)
        .arg("--config")
        .arg(&config)
        .env("PATH", path)
        .env_remove("DETECT_WORKLOADS_CONFIG")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !marker.exists(),
        "nvidia-smi was run from the caller's PATH"
    );

    // A relative command is a configuration error.
    edit_config(
        &config,
        "[[collectors.nvidia-smi]]\n",
        "[[collectors.nvidia-smi]]\ncommand = \"bin/nvidia-smi\"\n",
    );
    let out = s.run(&config, &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("relative path"));
}

#[test]
fn endless_nvidia_smi_output_is_cut_off() {
    let s = Scratch::new();
    let config = s.config(None, "");
    let smi = s.path("nvidia-smi");
    std::fs::write(&smi, "#!/bin/sh\nexec yes '1, 2, GPU-x'\n").expect("write");
    chmod(&smi, 0o755);
    let stderr = s.scan(&config);
    let inv = s.inventory();
    let report = &inv["scan"]["collectors"]["nvidia-smi"];
    assert_eq!(report["ok"], false, "{report} {stderr}");
    assert!(
        report.to_string().contains("more than 8 MiB"),
        "{report} {stderr}"
    );
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn a_hostile_container_label_is_escaped_in_json_and_replaced_in_the_table() {
    let host = common::docker_host();
    let s = Scratch::new();
    let config = s.config(Some(&host), "");
    let mut containers = common::Containers::new(&host);
    let name = common::unique("dw-h3-label");
    let user = "ev\u{2028}il\u{1b}[31m\u{85}x";
    let label = format!("ds01.user={user}");
    let id = containers.create(&[
        "--name",
        &name,
        "--label",
        &label,
        &common::test_image(),
        "true",
    ]);
    s.scan(&config);

    let inventory = std::fs::read_to_string(s.inventory_path()).expect("inventory");
    for bad in ['\u{2028}', '\u{1b}', '\u{85}'] {
        assert!(!inventory.contains(bad), "raw {bad:?} in {inventory}");
    }
    assert!(
        inventory.contains("ev\\u2028il\\u001b[31m\\u0085x"),
        "{inventory}"
    );
    let entry = &s.inventory()["containers"][&id];
    assert_eq!(entry["user"], user, "{entry}");

    let text = std::fs::read_to_string(&config).expect("config").replacen(
        "[[sinks.inventory-file]]",
        "[[sinks.stdout]]\nformat = \"table\"\n\n[[sinks.inventory-file]]",
        1,
    );
    let table_config = s.path("table.toml");
    std::fs::write(&table_config, text).expect("write");
    let out = s.run(&table_config, &["--sink", "stdout"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("ev?il?[31m?x"), "{table:?}");
    assert!(
        !table.chars().any(|c| c != '\n' && c.is_control()),
        "{table:?}"
    );
}
