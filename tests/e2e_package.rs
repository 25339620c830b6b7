//! The Debian package installs like any other (issue 23, point 13): what it
//! ships (man pages and completions generated from the command line, the
//! logrotate file, `Recommends`), its maintainer scripts run for real with
//! systemd's tools recorded, the completions loaded by bash, the man pages
//! rendered by man, and the shipped logrotate file rotating a real event log
//! while scans go on.
//!
//! `tests/run.sh` builds the package (`cargo deb`) after the other tests and
//! then runs these with `DW_TEST_DEB` naming it. What touches `/run` or
//! `/var/log` happens in a private mount namespace (`unshare --mount`) over
//! empty tmpfs mounts: the machine's own are never seen or changed.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Scratch, BIN};

/// The package built by tests/run.sh.
fn deb() -> PathBuf {
    match std::env::var("DW_TEST_DEB") {
        Ok(path) if !path.is_empty() => PathBuf::from(path),
        _ => panic!("no package (DW_TEST_DEB): run tests/run.sh, which builds it with cargo deb"),
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The package unpacked (files and DEBIAN/) into a scratch directory.
fn unpacked() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("dw-e2e-deb-")
        .tempdir()
        .expect("tempdir");
    let root = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("-R").arg(deb()).arg(&root));
    dir
}

/// The visible subcommands, as `--help` lists them.
fn subcommands() -> Vec<String> {
    let out = run(Command::new(BIN).arg("--help"));
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    help.split("Commands:\n")
        .nth(1)
        .expect("a Commands section")
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "needs the package tests/run.sh builds (DW_TEST_DEB)"]
fn deb_package_ships_pages_completions_logrotate_and_recommends() {
    let dir = unpacked();
    let root = dir.path().join("root");
    let control = std::fs::read_to_string(root.join("DEBIAN/control")).expect("control");
    assert!(
        control
            .lines()
            .any(|l| l == "Recommends: docker.io | docker-ce, prometheus-node-exporter"),
        "{control}"
    );
    let subs = subcommands();
    assert!(subs.contains(&"config".to_string()), "{subs:?}");
    let man = root.join("usr/share/man/man1");
    let mut pages = vec!["detect-workloads.1.gz".to_string()];
    pages.extend(subs.iter().map(|s| format!("detect-workloads-{s}.1.gz")));
    for page in &pages {
        let path = man.join(page);
        assert!(path.is_file(), "no {}", path.display());
        // man renders it without a warning.
        let out = run(Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&path)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.trim().is_empty(), "{page}: {stderr}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("detect-workloads"), "{page}: {text}");
    }
    // The main page names every subcommand, and the exit statuses.
    let main = run(Command::new("man")
        .arg("-l")
        .arg(man.join("detect-workloads.1.gz")));
    let main = String::from_utf8_lossy(&main.stdout);
    for s in &subs {
        assert!(main.contains(s.as_str()), "{s} not in the main page");
    }
    assert!(main.contains("EXIT STATUS"), "{main}");
    for path in [
        "usr/share/bash-completion/completions/detect-workloads",
        "usr/share/zsh/vendor-completions/_detect-workloads",
        "usr/share/fish/vendor_completions.d/detect-workloads.fish",
        "etc/logrotate.d/detect-workloads",
        "usr/share/lintian/overrides/detect-workloads",
    ] {
        let meta = std::fs::metadata(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(meta.mode() & 0o777, 0o644, "{path}");
    }
    let conffiles = std::fs::read_to_string(root.join("DEBIAN/conffiles")).expect("conffiles");
    assert!(
        conffiles
            .lines()
            .any(|l| l == "/etc/logrotate.d/detect-workloads"),
        "{conffiles}"
    );
    // bash loads the completion, and it completes the subcommands and flags.
    let script = format!(
        r#"source '{}' && fn=$(complete -p detect-workloads | sed 's/.*-F \([^ ]*\).*/\1/') &&
COMP_WORDS=(detect-workloads p) COMP_CWORD=1 && "$fn" detect-workloads p detect-workloads && echo "${{COMPREPLY[*]}}" &&
COMP_WORDS=(detect-workloads ps --f) COMP_CWORD=2 && "$fn" detect-workloads --f ps && echo "${{COMPREPLY[*]}}""#,
        root.join("usr/share/bash-completion/completions/detect-workloads")
            .display()
    );
    let out = run(Command::new("bash").arg("-c").arg(script));
    let words = String::from_utf8_lossy(&out.stdout);
    let mut lines = words.lines();
    let first = lines.next().unwrap_or_default();
    assert!(
        first.split(' ').any(|w| w == "ps") && first.split(' ').any(|w| w == "plugins"),
        "{words}"
    );
    let flags = lines.next().unwrap_or_default();
    assert!(flags.split(' ').any(|w| w == "--format"), "{words}");
}

/// A directory of stand-ins for systemd's tools that record each call.
fn recording_tools(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let log = dir.join("calls");
    for tool in ["systemctl", "deb-systemd-invoke", "deb-systemd-helper"] {
        let path = bin.join(tool);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{tool} $*\" >> '{}'\n# was-enabled: nothing was\n[ \"$1\" = --quiet ] && exit 1\nexit 0\n",
                log.display()
            ),
        )
        .expect("write tool");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    log
}

/// Runs one maintainer script with these arguments, in a private mount
/// namespace where systemd looks booted (`/run/systemd/system` on a tmpfs
/// over `/run`), with the recording tools first on PATH; returns the calls.
fn maintainer_script(
    root: &Path,
    tools: &Path,
    log: &Path,
    script: &str,
    args: &str,
) -> Vec<String> {
    let _ = std::fs::remove_file(log);
    let path = root.join("DEBIAN").join(script);
    let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(meta.mode() & 0o111 != 0, "{script} is not executable");
    let inner = format!(
        "mount -t tmpfs -o mode=0755 dw-test-run /run && mkdir -p /run/systemd/system && PATH='{}':/usr/sbin:/usr/bin:/sbin:/bin '{}' {args}",
        tools.join("bin").display(),
        path.display()
    );
    run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(inner));
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

const UNITS: &str =
    "detect-workloads.service detect-workloads.timer detect-workloads-watch.service";

#[test]
#[ignore = "needs root (unshare --mount) and the package tests/run.sh builds (DW_TEST_DEB)"]
fn deb_package_maintainer_scripts_reload_systemd_and_stop_the_units_on_removal() {
    let dir = unpacked();
    let root = dir.path().join("root");
    let tools = dir.path().join("tools");
    let log = recording_tools(&tools);
    let has = |calls: &[String], want: &str| calls.iter().any(|c| c == want);

    // First install: systemd reloaded, nothing enabled, nothing started.
    let calls = maintainer_script(&root, &tools, &log, "postinst", "configure");
    assert!(has(&calls, "systemctl --system daemon-reload"), "{calls:?}");
    assert!(
        !calls
            .iter()
            .any(|c| c.contains(" start ") || c.contains("try-restart")),
        "{calls:?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("deb-systemd-helper enable")),
        "{calls:?}"
    );
    // An upgrade: what was running gets the new binary.
    let calls = maintainer_script(&root, &tools, &log, "postinst", "configure 0.0.9-1");
    assert!(has(&calls, "systemctl --system daemon-reload"), "{calls:?}");
    assert!(
        has(
            &calls,
            "deb-systemd-invoke try-restart detect-workloads-watch.service detect-workloads.timer"
        ),
        "{calls:?}"
    );
    // Removal stops every unit; an upgrade's prerm stops nothing.
    let calls = maintainer_script(&root, &tools, &log, "prerm", "remove");
    assert!(
        has(
            &calls,
            "deb-systemd-invoke stop detect-workloads.timer detect-workloads-watch.service detect-workloads.service"
        ),
        "{calls:?}"
    );
    let calls = maintainer_script(&root, &tools, &log, "prerm", "upgrade 0.1.1-1");
    assert!(calls.is_empty(), "{calls:?}");
    // After removal systemd forgets the units; purge drops their state.
    let calls = maintainer_script(&root, &tools, &log, "postrm", "remove");
    assert!(has(&calls, "systemctl --system daemon-reload"), "{calls:?}");
    assert!(
        has(&calls, &format!("deb-systemd-helper mask {UNITS}")),
        "{calls:?}"
    );
    let calls = maintainer_script(&root, &tools, &log, "postrm", "purge");
    assert!(
        has(&calls, &format!("deb-systemd-helper purge {UNITS}")),
        "{calls:?}"
    );
}

#[test]
#[ignore = "needs root (unshare --mount), logrotate and the package tests/run.sh builds (DW_TEST_DEB)"]
fn deb_package_logrotate_rotates_the_event_log_without_losing_a_line() {
    let dir = unpacked();
    let shipped = dir.path().join("root/etc/logrotate.d/detect-workloads");
    let s = Scratch::new();
    // The event log where the package's logrotate file expects it, on a
    // tmpfs over /var/log in the namespace.
    let config = s.config(None, "");
    common::edit_config(
        &config,
        &format!("path = \"{}\"", s.events_path().display()),
        "path = \"/var/log/ds01/events.jsonl\"",
    );
    let out = s.path("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let first = s.gpu_process();
    let second = common::sleeper();
    let scan = format!("'{BIN}' --config '{}' -q", config.display());
    let script = format!(
        r#"set -e
mount -t tmpfs -o mode=0755 dw-test-log /var/log
mkdir -m 0755 /var/log/ds01
{scan}; {scan}
logrotate -f -s '{out}/state' '{shipped}'
ls /var/log/ds01 > '{out}/after-rotate'
echo '{second}, 10, {uuid}' >> '{apps}'
{scan}; {scan}
cp /var/log/ds01/events.jsonl.1 '{out}/rotated'
cp /var/log/ds01/events.jsonl '{out}/current'
stat -c '%a %U' /var/log/ds01/events.jsonl > '{out}/mode'
"#,
        out = out.display(),
        shipped = shipped.display(),
        second = second.pid(),
        uuid = common::UUID,
        apps = s.path("apps.csv").display(),
    );
    run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(script));
    let read = |name: &str| std::fs::read_to_string(out.join(name)).expect(name);
    let listing = read("after-rotate");
    assert_eq!(
        listing.lines().collect::<Vec<_>>(),
        ["events.jsonl", "events.jsonl.1"],
        "create: a new empty log beside the rotated one"
    );
    let discovered = |text: &str, pid: u32| {
        text.lines()
            .filter(|l| l.contains("host_gpu_process_discovered"))
            .filter(|l| l.contains(&format!("\"pid\":{pid},")))
            .count()
    };
    let rotated = read("rotated");
    let current = read("current");
    assert_eq!(discovered(&rotated, first.pid()), 1, "{rotated}");
    assert_eq!(discovered(&current, first.pid()), 0, "{current}");
    assert_eq!(discovered(&current, second.pid()), 1, "{current}");
    assert_eq!(read("mode").trim(), "644 root");
}
