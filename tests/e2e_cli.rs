//! The command line and configuration contract of README "Command line" (docs/cli.md) and "Configuration", through the binary.

mod common;

use std::process::{Command, Output};

use common::{Scratch, BIN};
use detect_workloads_api::plugin::{find_collector, find_sink, find_stage};
use detect_workloads_collectors as _;
use detect_workloads_sinks as _;
use detect_workloads_stages as _;

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
        // One scan with nothing available: exit 0, failures recorded, and a
        // source missing on this machine is news (INFO), not a warning. The
        // built-in default (equal to this file, checked above) with its state
        // and log paths in the scratch directory: the machine's /var/lib/ds01
        // and /var/log/ds01, which an installed scanner may have filled, are
        // neither read nor written.
        let default = detect_workloads_core::config::DEFAULT_CONFIG
            .replace("/var/lib/ds01", &s.path("lib").to_string_lossy())
            .replace("/var/log/ds01", &s.path("log").to_string_lossy());
        assert_ne!(default, detect_workloads_core::config::DEFAULT_CONFIG);
        let default_file = s.path("default.toml");
        std::fs::write(&default_file, default).expect("write the default's copy");
        let default_file = default_file.to_string_lossy().into_owned();
        let out = run(&["--config", &default_file, "--sink", "stdout"], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let inv: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        assert_eq!(inv["scan"]["collectors"]["docker"]["ok"], false);
        let err = stderr(&out);
        assert!(
            err.lines().any(|l| l.contains(" INFO ")
                && l.contains("collector=docker")
                && l.contains("not available on this machine: ")),
            "{err}"
        );
        assert!(!err.contains("keeping what it reported last"), "{err}");
        assert!(err.contains("Scan complete: "));
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

/// Writes `text` as a configuration in `s` and runs `validate` and a scan
/// with it: both must exit 2 with this exact message (after the file name
/// and line).
fn refused(s: &Scratch, text: &str, expected: &str) {
    let path = s.path("refused.toml");
    std::fs::write(&path, text).expect("write");
    let file = path.to_string_lossy().into_owned();
    for args in [vec!["validate", "--config", &file], vec!["--config", &file]] {
        let out = run(&args, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
        let wanted = format!("ERROR invalid configuration: {file}{expected}\n");
        assert!(err.ends_with(&wanted), "{text:?}:\n{err}\nwanted: {wanted}");
    }
}

#[test]
fn validate_refuses_what_cannot_work_saying_what_to_change() {
    let s = Scratch::new();
    refused(
        &s,
        "",
        ": no collector is configured, so a scan would find nothing: add at least one, \
         such as [[collectors.procfs]] (`detect-workloads plugins` lists them)",
    );
    refused(
        &s,
        "[[collectors.procfs]]\n",
        ": no sink is configured, so a scan would keep nothing: add at least one, \
         such as [[sinks.inventory-file]], or name one with --sink",
    );
    refused(
        &s,
        "[[collectors.procfs]]\n[[collectors.nvidia-smi]]\nfallback_for = \"nvlm\"\n[[sinks.stdout]]\n",
        ":3: [collectors.nvidia-smi] key `fallback_for`: `nvlm` is not a configured collector \
         (configured: procfs, nvidia-smi); name one of them, or remove the key",
    );
    let hint = "a duration is a positive number with a unit, such as \"10s\" or \"250ms\"";
    for (table, key) in [
        ("[[collectors.docker]]", "timeout"),
        ("[[collectors.nvml]]", "timeout"),
        ("[[collectors.nvidia-smi]]", "timeout"),
        ("[agent]", "lock_timeout"),
        ("[agent]", "scan_timeout"),
    ] {
        let label = table.trim_matches(|c| c == '[' || c == ']');
        for value in ["0s", "-5s"] {
            refused(
                &s,
                &format!("{table}\n{key} = \"{value}\"\n"),
                &format!(":2: [{label}] key `{key}`: invalid duration \"{value}\": {hint}"),
            );
        }
    }
}

#[test]
fn config_errors_are_in_the_users_words() {
    let s = Scratch::new();
    refused(
        &s,
        "[[collectors.docker]]\ntimeout = 10\n",
        ":2: [collectors.docker] key `timeout`: expected a duration such as \"10s\" \
         (in quotes, with a unit), found 10",
    );
    refused(
        &s,
        "[[collectors.docker]]\nmax_concurrent_inspects = \"many\"\n",
        ":2: [collectors.docker] key `max_concurrent_inspects`: invalid type: string \"many\", \
         expected a whole number",
    );
    refused(
        &s,
        "[[agent]]\nscan_timeout = \"5s\"\n",
        ":1: [agent] is a single table; write [agent], not [[agent]]",
    );
    // A file named by the variable says so.
    let missing = s.path("missing.toml");
    let out = run(
        &["validate"],
        &[("DETECT_WORKLOADS_CONFIG", &missing.to_string_lossy())],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).ends_with(&format!(
            "ERROR invalid configuration: {} (from $DETECT_WORKLOADS_CONFIG): cannot read: \
             No such file or directory (os error 2)\n",
            missing.display()
        )),
        "{}",
        stderr(&out)
    );
    // A directory that cannot be made is named through the configured
    // inventory path, not the lock file beside it.
    let config = s.config(None, "");
    let text = std::fs::read_to_string(&config).expect("config");
    let inv = s.inventory_path().display().to_string();
    std::fs::write(s.path("a-file"), "").expect("write");
    let gone = s.path("a-file/inventory.json").display().to_string();
    std::fs::write(&config, text.replace(&inv, &gone)).expect("write");
    let out = s.run(&config, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&gone), "{err}");
    assert!(!err.contains("inventory.json.lock"), "{err}");
}

#[test]
fn validate_says_where_the_configuration_came_from_and_each_plugins_settings() {
    let s = Scratch::new();
    let config = s.config(
        Some("unix:///run/p2a-test.sock"),
        "[[sinks.stdout]]\nformat = \"table\"\n",
    );
    let file = config.to_string_lossy().into_owned();
    let out = run(&["validate", "--config", &file], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let expected = format!(
        "configuration OK: {file} (named with --config)\n\
         agent: scan_timeout 25s, lock_timeout 10s, source \"detect-workloads-test\", interval 30s, gpu_interval 2s (interval and gpu_interval: watch mode)\n\
         collectors:\n\
         \x20 docker: endpoint unix:///run/p2a-test.sock, timeout 20s, max_concurrent_inspects 16\n\
         \x20 nvidia-smi: command {smi}, timeout 3s\n\
         \x20 procfs: reads /proc\n\
         stages (in run order): redact, classify, resolve-user, gpu-devices, exclude-system, transient-filter\n\
         \x20 (the stages the file lists; redact is in force in every configuration)\n\
         sinks:\n\
         \x20 inventory-file: writes {inv} (mode 0640), the state read back at the next scan\n\
         \x20 event-log: appends to {events}\n\
         \x20 stdout\n",
        inv = s.inventory_path().display(),
        events = s.events_path().display(),
        smi = s.path("nvidia-smi").display(),
    );
    assert_eq!(text, expected);
    let out = run(&["validate"], &[("DETECT_WORKLOADS_CONFIG", &file)]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with(&format!(
            "configuration OK: {file} (named by $DETECT_WORKLOADS_CONFIG)\n"
        )),
        "{text}"
    );
}

#[test]
fn dry_run_never_writes_whatever_sinks_are_named() {
    let s = Scratch::new();
    let config = s.config(None, "");
    let out = s.run(&config, &["--dry-run", "--sink", "inventory-file"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).ends_with(
            "ERROR --dry-run writes nothing and emits nothing, so it cannot deliver to \
             `inventory-file`: drop --sink inventory-file, or drop --dry-run\n"
        ),
        "{}",
        stderr(&out)
    );
    let out = s.run(&config, &["--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON on stdout");
    let out = s.run(&config, &["--dry-run", "--format", "table"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table.starts_with("no workloads match\n\nscan ")
            && table.contains(" ago, took ")
            && table.ends_with(" ms; nvidia-smi ok, procfs ok\n"),
        "not the ps view: {table}"
    );
    assert!(
        !s.inventory_path().exists(),
        "the dry run wrote the inventory"
    );
    assert!(!s.events_path().exists(), "the dry run wrote the event log");
    // --format names the stdout sink's format, so it needs that sink.
    let out = s.run(&config, &["--format", "table"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn logs_help_timestamps_rounded_durations_verbose_paths_and_a_checked_filter() {
    let s = Scratch::new();
    let config = s.config(None, "");
    let out = s.run(&config, &["-v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let first = err.lines().next().unwrap_or_default();
    // 2026-11-26T12:47:11.587039Z DEBUG ...
    assert_eq!(
        first.as_bytes().get(4),
        Some(&b'-'),
        "no timestamp: {first}"
    );
    assert_eq!(
        first.as_bytes().get(10),
        Some(&b'T'),
        "no timestamp: {first}"
    );
    assert!(
        err.contains(&format!(
            "configuration: {} (named with --config)",
            config.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "reading the previous state path={}",
            s.inventory_path().display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "inventory written path={}",
            s.inventory_path().display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "events appended path={}",
            s.events_path().display()
        )),
        "{err}"
    );
    for field in err.split("elapsed_ms=").skip(1) {
        let number = field.split_whitespace().next().unwrap_or_default();
        let decimals = number.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 1, "not rounded to 0.1 ms: {number}");
    }
    // Under journald, no timestamp (journald stamps each line itself).
    let out = Command::new(BIN)
        .args(["--config", &config.to_string_lossy()])
        .env("JOURNAL_STREAM", "8:1234")
        .output()
        .expect("run");
    let err = stderr(&out);
    assert!(err.trim_start().starts_with("INFO "), "{err}");
    // A filter that does not parse is an error.
    let out = run(&["validate"], &[("DETECT_WORKLOADS_LOG", "info,x=loud")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .starts_with("detect-workloads: invalid $DETECT_WORKLOADS_LOG \"info,x=loud\": "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unavailable_collector_is_said_once_then_its_return() {
    let s = Scratch::new();
    let config = s.config(Some("unix:///nonexistent/p2a.sock"), "");
    let said = |err: &str| {
        err.lines()
            .filter(|l| l.contains("collector=docker"))
            .map(|l| {
                l.split_once('Z')
                    .map_or(l, |(_, rest)| rest)
                    .trim()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    let first = said(&s.scan(&config));
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0].starts_with("INFO not available on this machine: ")
            && first[0].ends_with("(said once; scans go on without it) collector=docker"),
        "{first:?}"
    );
    assert_eq!(said(&s.scan(&config)), Vec::<String>::new());
    // A real failure after success stays a warning, and keeps the last report.
    s.set_smi_mode("fail");
    let smi_lines = |err: &str| {
        err.lines()
            .filter(|l| l.contains("collector=nvidia-smi"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let err = s.scan(&config);
    let lines = smi_lines(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(" WARN ") && lines[0].contains("keeping what it reported last"),
        "{err}"
    );
}

#[test]
fn default_toml_lists_every_key_with_its_default() {
    let text = detect_workloads_core::config::DEFAULT_CONFIG;
    for key in [
        "scan_timeout = \"25s\"",
        "lock_timeout = \"10s\"",
        "max_concurrent_inspects = 16",
        "interval = \"30s\"",
        "gpu_interval = \"2s\"",
        "library = \"libnvidia-ml.so.1\"",
        "timeout = \"5s\"",
        "secret_words = ",
    ] {
        assert!(text.contains(key), "config/default.toml lacks {key}");
    }
    let nvml = text
        .split("[[collectors.nvml]]")
        .nth(1)
        .and_then(|t| t.split("\n\n").next())
        .unwrap_or_default();
    assert!(nvml.contains("timeout = \"5s\""), "nvml's timeout: {nvml}");
}

/// The long and short flags a line or a help text names (`--scan`, `-a`).
fn flags_in(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || "[]|,=<>".contains(c))
        .filter(|w| {
            (w.starts_with("--")
                && w.len() > 2
                && w[2..].chars().all(|c| c.is_ascii_lowercase() || c == '-'))
                || (w.len() == 2 && w.starts_with('-') && w.as_bytes()[1].is_ascii_alphabetic())
        })
        .map(|w| w.trim_end_matches("...").to_string())
        .collect()
}

/// The options of `--help` (the lines under "Options:").
fn help_flags(args: &[&str]) -> std::collections::BTreeSet<String> {
    let mut full = args.to_vec();
    full.push("--help");
    let out = run(&full, &[]);
    assert!(out.status.success(), "{full:?}");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let options = help
        .split("Options:")
        .nth(1)
        .unwrap_or_else(|| panic!("{help}"));
    options
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .flat_map(|l| flags_in(l.split("  ").find(|p| !p.trim().is_empty()).unwrap_or("")))
        .filter(|f| f != "--help" && f != "-h" && f != "--version" && f != "-V")
        .collect()
}

#[test]
fn the_readme_synopsis_is_the_command_line() {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).expect("README");
    let section = readme
        .split("## Command line")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .expect("the synopsis block");
    let lines: Vec<&str> = section
        .lines()
        .filter(|l| l.starts_with("detect-workloads"))
        .collect();
    // Every subcommand `--help` lists has a line, and no line names another.
    let out = run(&["--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let commands: Vec<String> = help
        .split("Commands:")
        .nth(1)
        .and_then(|s| s.split("Options:").next())
        .expect("commands")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect();
    let mut documented: Vec<String> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|w| !w.starts_with('[') && !w.starts_with('-'))
        .map(str::to_string)
        .collect();
    documented.sort();
    let mut commands_sorted = commands.clone();
    commands_sorted.sort();
    assert_eq!(
        documented, commands_sorted,
        "README synopsis vs --help commands"
    );
    // Each line names exactly the flags its command takes (the ones every
    // command shares, --config, -v and -q, may be left to the first line).
    let top = help_flags(&[]);
    let shared: std::collections::BTreeSet<String> = commands
        .iter()
        .map(|c| help_flags(&[c]))
        .fold(top.clone(), |acc, f| {
            acc.intersection(&f).cloned().collect()
        });
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        let command = words
            .get(1)
            .filter(|w| !w.starts_with('[') && !w.starts_with('-'));
        let synopsis = line.split('#').next().unwrap_or(line);
        let named = flags_in(synopsis);
        let takes = match command {
            Some(c) => help_flags(&[c]),
            None => top.clone(),
        };
        let missing: Vec<_> = takes
            .difference(&named)
            .filter(|f| command.is_none() || !shared.contains(*f))
            .collect();
        let unknown: Vec<_> = named.difference(&takes).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "README synopsis {line:?}: missing {missing:?}, not taken {unknown:?}"
        );
    }
}

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_`
/// dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn the_readme_and_docs_links_resolve() {
    let root = std::path::Path::new(ROOT);
    let mut files = vec![root.join("README.md"), root.join("SECURITY.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut broken = Vec::new();
    let mut links = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("markdown file");
        let dir = file.parent().expect("a folder");
        for part in text.split("](").skip(1) {
            let Some(target) = part.split(')').next() else {
                continue;
            };
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            links += 1;
            let (path, fragment) = target.split_once('#').unwrap_or((target, ""));
            let linked = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            if !linked.exists() {
                broken.push(format!("{}: {target}", file.display()));
                continue;
            }
            if !fragment.is_empty() {
                let headings: Vec<String> = std::fs::read_to_string(&linked)
                    .expect("linked markdown")
                    .lines()
                    .filter(|l| l.starts_with('#'))
                    .map(|l| anchor(l.trim_start_matches('#')))
                    .collect();
                if !headings.iter().any(|h| h == fragment) {
                    broken.push(format!("{}: {target} (no such heading)", file.display()));
                }
            }
        }
    }
    assert!(links >= 20, "only {links} relative links found");
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}
