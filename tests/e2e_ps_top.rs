//! `detect-workloads ps` and `top` as an administrator sees them: the table
//! from the inventory file (exact snapshots), from a scan that writes
//! nothing (private engine, scripted nvidia-smi), and `top` in a real
//! pseudo-terminal (tmux), quit with `q`.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use common::{Scratch, BIN, UUID};
use detect_workloads_api::model::{
    Activity, CollectorReport, ContainerEntry, GpuDevice, Inventory, ProcessEntry, ScanReport,
};
use detect_workloads_api::timefmt::Timestamp;

fn ago(secs: u64) -> Timestamp {
    Timestamp::from_system_time(SystemTime::now() - Duration::from_secs(secs))
}

/// What the engine measured of a running workload; `idle_for`: seconds
/// since it has been idle (and long enough for `activity.idle`).
fn activity(cpu: f64, gpu: Option<f64>, idle_for: Option<u64>) -> Option<Activity> {
    Some(Activity {
        cpu_cores: Some(cpu),
        gpu_util_percent: gpu,
        sampled_s: Some(30.0),
        idle_since: idle_for.map(ago),
        idle: idle_for.is_some(),
        ..Activity::default()
    })
}

/// An inventory with two users' workloads, a stopped container, a host GPU
/// process, one GPU, and a failed collector; ages far from a unit's edge.
/// train-alice is busy with 20 GiB and an unknown GPU activity; bob's
/// notebook (no GPU) has been idle for 2h05m, his GPU process (812 MiB, 0%)
/// for 1h05m.
fn inventory() -> Inventory {
    let mut inv = Inventory::default();
    let day = 86_400;
    let container = |name: &str, user: &str, status: &str, gpus: &[&str]| ContainerEntry {
        id: format!("{name:0>12}"),
        name: name.to_string(),
        origin: "ds01-managed".to_string(),
        user: user.to_string(),
        has_gpu: !gpus.is_empty(),
        gpu_devices: gpus.iter().map(|g| g.to_string()).collect(),
        status: status.to_string(),
        image: "pytorch/pytorch:2.4".to_string(),
        created_at: Some(ago(5 * day + 3600)),
        detected_at: ago(3 * day + 3600),
        inspect: Some(detect_workloads_api::model::InspectFacts {
            started_at: ago(3 * day + 3600).to_string(),
            ..Default::default()
        }),
        gpu_memory_mb: (!gpus.is_empty()).then_some(20_480),
        ..Default::default()
    };
    let mut train = container("train-alice", "alice", "running", &["0:0"]);
    train.activity = activity(3.2, None, None);
    let mut notebook = container("notebook-bob", "bob", "running", &[]);
    notebook.activity = activity(0.01, None, Some(2 * 3600 + 300));
    for c in [train, notebook, container("old-bob", "bob", "exited", &[])] {
        inv.containers.insert(c.id.clone(), c);
    }
    inv.host_processes.insert(
        4242,
        ProcessEntry {
            pid: 4242,
            user: "bob".to_string(),
            cmdline: "python train.py --epochs 10".to_string(),
            gpu_memory_mb: Some(812),
            gpu_uuid: UUID.to_string(),
            detected_at: ago(2 * 3600 + 1800),
            activity: activity(0.0, Some(0.0), Some(3600 + 300)),
            ..Default::default()
        },
    );
    inv.gpus.insert(
        UUID.to_string(),
        GpuDevice {
            uuid: UUID.to_string(),
            index: 0,
            name: "NVIDIA H100 80GB HBM3".to_string(),
            memory_used_mb: Some(21_292),
            memory_total_mb: Some(81_559),
            utilization_pct: Some(37),
            samples_until_us: None,
        },
    );
    let report = |error: Option<&str>| CollectorReport {
        ok: error.is_none(),
        duration_ms: 3,
        error: error.map(str::to_string),
        ..Default::default()
    };
    inv.scan = Some(ScanReport {
        started_at: ago(2 * day + 1800),
        duration_ms: 41,
        collectors: [
            ("docker".to_string(), report(None)),
            (
                "nvml".to_string(),
                report(Some("unavailable: no libnvidia-ml.so.1")),
            ),
            ("procfs".to_string(), report(None)),
        ]
        .into(),
    });
    inv.last_scan = inv.scan.as_ref().map(|s| s.started_at);
    inv
}

/// A scratch directory whose inventory file holds [`inventory`].
fn with_inventory() -> (Scratch, std::path::PathBuf) {
    let s = Scratch::new();
    let config = s.config(None, "");
    std::fs::create_dir_all(s.inventory_path().parent().expect("dir")).expect("mkdir");
    let json = serde_json::to_string(&inventory()).expect("JSON");
    std::fs::write(s.inventory_path(), json).expect("write inventory");
    (s, config)
}

fn text(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const FOOTER: &str =
    "scan 2d ago, took 41 ms; docker ok, nvml FAILED: unavailable: no libnvidia-ml.so.1, procfs ok\n";

#[test]
fn ps_shows_the_inventory_file_as_docker_ps_does() {
    let (s, config) = with_inventory();
    let before = std::fs::read(s.inventory_path()).expect("inventory");
    // Piped: nothing cut, no escape sequences.
    let out = text(&s.run(&config, &["ps"]));
    let expected = format!(
        "ID            NAME          USER   ORIGIN        STATUS   GPUS           GPU MEM  GPU%   CPU   IDLE  IMAGE/CMD                    CREATED\n\
         0train-alice  train-alice   alice  ds01-managed  Up 3d    0:0           20.0 GiB     ?   3.2      -  pytorch/pytorch:2.4          5d ago\n\
         \x20 total alice: 1 workload, 20.0 GiB GPU memory\n\
         notebook-bob  notebook-bob  bob    ds01-managed  Up 3d    -                    -     -  0.01  2h05m  pytorch/pytorch:2.4          5d ago\n\
         4242          4242          bob    host          running  GPU-56c0b0b8   812 MiB    0%  0.00  1h05m  python train.py --epochs 10  2h ago\n\
         \x20 total bob: 2 workloads, 812 MiB GPU memory\n\
         \n{FOOTER}"
    );
    assert_eq!(out, expected);
    assert!(!out.contains('\u{1b}'));
    // -a adds the stopped container; --user and --gpu select.
    let all = text(&s.run(&config, &["ps", "-a"]));
    assert!(
        all.contains("\n00000old-bob  old-bob       bob    ds01-managed  Exited "),
        "{all}"
    );
    assert!(all.contains("total bob: 3 workloads"), "{all}");
    let alice = text(&s.run(&config, &["ps", "--user", "alice"]));
    assert!(
        alice.contains("train-alice") && !alice.contains("bob"),
        "{alice}"
    );
    let gpu = text(&s.run(&config, &["ps", "--gpu"]));
    assert!(gpu.contains("train-alice") && gpu.contains("4242"), "{gpu}");
    assert!(!gpu.contains("notebook-bob"), "{gpu}");
    // JSON: the rows.
    let json: serde_json::Value =
        serde_json::from_str(&text(&s.run(&config, &["ps", "--format", "json"]))).expect("JSON");
    assert_eq!(json.as_array().map(Vec::len), Some(3), "{json}");
    assert_eq!(json[0]["name"], "train-alice");
    assert_eq!(json[0]["id"], "0train-alice");
    assert_eq!(json[0]["status"], "running");
    assert!(json[0]["created_s"].as_i64() > Some(5 * 86_400), "{json}");
    assert_eq!(json[2]["kind"], "process");
    assert_eq!(json[2]["id"], "4242");
    // The activity fields, unknown as null.
    assert_eq!(json[0]["cpu_cores"], 3.2);
    assert!(json[0]["gpu_util_percent"].is_null(), "{json}");
    assert!(json[0]["idle_s"].is_null(), "{json}");
    assert_eq!(json[0]["idle"], false);
    assert_eq!(json[2]["gpu_util_percent"], 0.0);
    assert!(
        json[2]["idle_s"].as_i64().is_some_and(|s| s >= 3900),
        "{json}"
    );
    assert_eq!(json[2]["idle"], true);
    // --idle: only the idle ones, the largest waste first in every format
    // (812 MiB for 1h05m before no GPU for 2h05m).
    let idle = text(&s.run(&config, &["ps", "--idle", "-q"]));
    assert_eq!(idle, "4242\nnotebook-bob\n");
    let idle_json: serde_json::Value = serde_json::from_str(&text(
        &s.run(&config, &["ps", "--idle", "--format", "json"]),
    ))
    .expect("JSON");
    let names: Vec<&str> = idle_json
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["4242", "notebook-bob"], "{idle_json}");
    let idle_table = text(&s.run(&config, &["ps", "--idle"]));
    let lines: Vec<&str> = idle_table.lines().collect();
    assert!(
        lines[1].starts_with("4242 ") && lines[1].contains(" 1h05m "),
        "{idle_table}"
    );
    assert!(lines[2].starts_with("notebook-bob "), "{idle_table}");
    assert_eq!(
        lines[3], "  total: 2 idle workloads, 812 MiB GPU memory held idle",
        "{idle_table}"
    );
    assert!(!idle_table.contains("train-alice"), "{idle_table}");
    let idle_columns = text(&s.run(
        &config,
        &["ps", "--idle", "--format", "name,gpu_util,cpu,idle"],
    ));
    assert_eq!(
        idle_columns,
        "NAME          GPU%   CPU   IDLE\n\
         4242            0%  0.00  1h05m\n\
         notebook-bob     -  0.01  2h05m\n"
    );
    // docker ps habits: ids only, filters, templates, columns, no-trunc.
    let ids = text(&s.run(&config, &["ps", "-q"]));
    assert_eq!(ids, "0train-alice\nnotebook-bob\n4242\n");
    let exited = text(&s.run(&config, &["ps", "-q", "--filter", "status=exited"]));
    assert_eq!(
        exited, "00000old-bob\n",
        "a status shows stopped ones without -a"
    );
    let two = text(&s.run(
        &config,
        &["ps", "-q", "-f", "user=bob", "-f", "origin=host"],
    ));
    assert_eq!(two, "4242\n");
    let template = text(&s.run(
        &config,
        &[
            "ps",
            "--format",
            "{{.Name}}\t{{.User}} {{.GPUMem}} {{.GPU_Util}} {{.CPU}} {{.Idle}}",
        ],
    ));
    assert_eq!(
        template,
        "train-alice\talice 20.0 GiB ? 3.2 -\n\
         notebook-bob\tbob - - 0.01 2h05m\n\
         4242\tbob 812 MiB 0% 0.00 1h05m\n"
    );
    let columns = text(&s.run(&config, &["ps", "--format", "name,user,gpu_mem"]));
    assert_eq!(
        columns,
        "NAME          USER    GPU MEM\n\
         train-alice   alice  20.0 GiB\n\
         notebook-bob  bob           -\n\
         4242          bob     812 MiB\n"
    );
    let no_trunc = text(&s.run(&config, &["ps", "--no-trunc"]));
    assert_eq!(no_trunc, out, "piped, the table is already whole");
    for bad in [
        &["ps", "--format", "{{.Colour}}"][..],
        &["ps", "--format", "name,colour"],
        &["ps", "--filter", "colour=red"],
    ] {
        let out = s.run(&config, bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.to_lowercase().contains("colour"), "{bad:?}: {err}");
    }
    // Reading changed nothing.
    assert_eq!(
        std::fs::read(s.inventory_path()).expect("inventory"),
        before
    );
}

#[test]
fn ps_without_an_inventory_says_what_to_do() {
    let s = Scratch::new();
    let config = s.config(None, "");
    let out = s.run(&config, &["ps"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.ends_with(
            "ERROR no inventory yet (inventory-file has not written one): run a scan first, or use --scan\n"
        ),
        "{err}"
    );
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn ps_scan_and_the_stdout_table_write_nothing() {
    let s = Scratch::new();
    let host = Some(common::docker_host());
    let config = s.config(host.as_deref(), "");
    let name = format!("dw-p2a-ps-{}", std::process::id());
    if let Some(host) = &host {
        common::docker(
            host,
            &[
                "run",
                "-d",
                "--name",
                &name,
                "--label",
                "ds01.user=alice",
                &common::test_image(),
                "sleep",
                "300",
            ],
        );
    }
    let _gpu_process = s.gpu_process();
    let out = text(&s.run(&config, &["ps", "--scan", "-a"]));
    let out2 = text(&s.run(&config, &["--sink", "stdout", "--format", "table"]));
    if let Some(host) = &host {
        common::docker(host, &["rm", "-f", &name]);
    }
    for table in [&out, &out2] {
        assert!(table.starts_with("ID "), "{table}");
        assert!(table.contains("nvidia-smi ok, procfs ok"), "{table}");
        if host.is_some() {
            assert!(
                table
                    .lines()
                    .any(|l| l.contains(&name) && l.contains(" alice ")),
                "{table}"
            );
        }
    }
    assert!(
        !s.inventory_path().exists(),
        "ps --scan wrote the inventory"
    );
    assert!(!s.events_path().exists(), "ps --scan wrote events");
}

/// The rows of `ps --format json` with these extra arguments.
fn ps_json(s: &Scratch, config: &std::path::Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut full = vec!["ps", "--format", "json"];
    full.extend_from_slice(args);
    let out = text(&s.run(config, &full));
    match serde_json::from_str(&out) {
        Ok(serde_json::Value::Array(rows)) => rows,
        _ => panic!("not a JSON array: {out}"),
    }
}

/// A sleeping container and a busy one on the private engine, scanned with
/// a short `idle_after` until the sleeper is idle: `ps --idle` lists it and
/// not the busy one (in JSON, ids and the table), and `ps --format json`
/// has the activity fields of both.
#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn ps_idle_lists_the_sleeping_container_and_not_the_busy_one() {
    let host = common::docker_host();
    let image = common::test_image();
    let s = Scratch::new();
    // Only this test's containers: the engine may run others'.
    let mark = common::unique("dw-ps-idle");
    let label = format!("dw-ps-idle={mark}");
    let only_ours = format!("label={label}");
    let mut c = common::Containers::new(&host);
    let run = |c: &mut common::Containers, name: &str, command: &[&str]| {
        let name = format!("{mark}-{name}");
        let mut args = vec![
            "--network",
            "none",
            "--label",
            &label,
            "--name",
            &name,
            &image,
        ];
        args.extend_from_slice(command);
        (c.run(&args), name)
    };
    let (asleep, asleep_name) = run(&mut c, "asleep", &["sleep", "600"]);
    let (busy, busy_name) = run(&mut c, "busy", &["sh", "-c", "while :; do :; done"]);
    let config = s.config(
        Some(&host),
        "[[stages.idle]]\ngrace = \"1s\"\nidle_after = \"2s\"\ncpu_cores_below = 0.05\n",
    );
    // Scan until the sleeper is idle (two readings to rate, then
    // idle_after), a loaded machine given two minutes.
    let start = Instant::now();
    let rows = loop {
        s.scan(&config);
        let rows = ps_json(&s, &config, &["-f", &only_ours]);
        let idle = |id: &str| rows.iter().any(|r| r["id"] == id && r["idle"] == true);
        if idle(&asleep) {
            break rows;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the sleeper never became idle: {rows:#?}"
        );
        common::seconds_pass(1);
    };
    let row = |id: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {rows:#?}"))
    };
    // Both have the activity fields: the sleeper idle for a while, the busy
    // one using a core and never idle.
    let z = row(&asleep);
    assert!(z["cpu_cores"].as_f64().is_some_and(|c| c < 0.05), "{z}");
    assert!(z["idle_s"].as_i64().is_some_and(|s| s >= 2), "{z}");
    assert!(z["gpu_util_percent"].is_null(), "no GPU held: {z}");
    let b = row(&busy);
    assert!(b["cpu_cores"].as_f64().is_some_and(|c| c > 0.05), "{b}");
    assert_eq!(b["idle"], false, "{b}");
    assert!(b["idle_s"].is_null(), "{b}");
    for field in ["cpu_cores", "gpu_util_percent", "idle_s", "idle"] {
        assert!(b.get(field).is_some(), "{field} missing: {b}");
    }
    // --idle: only the sleeper, in every format.
    let idle = ps_json(&s, &config, &["--idle", "-f", &only_ours]);
    let ids: Vec<&str> = idle.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, [asleep.as_str()], "{idle:#?}");
    let quiet = text(&s.run(&config, &["ps", "--idle", "-q", "-f", &only_ours]));
    assert_eq!(quiet, format!("{asleep}\n"));
    let table = text(&s.run(&config, &["ps", "--idle", "-f", &only_ours]));
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains(&asleep_name), "{table}");
    assert!(!table.contains(&busy_name), "{table}");
    // Its IDLE cell says for how long (seconds here), not `-`.
    let columns = text(&s.run(
        &config,
        &["ps", "--idle", "--format", "name,idle", "-f", &only_ours],
    ));
    let idle_for = columns
        .lines()
        .find_map(|l| l.strip_prefix(asleep_name.as_str()))
        .map(str::trim)
        .unwrap_or_else(|| panic!("{asleep_name} not in:\n{columns}"));
    assert!(
        idle_for.ends_with('s') && idle_for.starts_with(|c: char| c.is_ascii_digit()),
        "{columns}"
    );
    assert!(
        table.contains("total: 1 idle workload, 0 MiB GPU memory held idle"),
        "{table}"
    );
    // Without the label filter too, the busy one is never listed as idle.
    let everyone = text(&s.run(&config, &["ps", "--idle", "-q"]));
    assert!(everyone.lines().any(|l| l == asleep), "{everyone}");
    assert!(!everyone.lines().any(|l| l == busy), "{everyone}");
}

/// A tmux server of this test's own, on a socket in the scratch directory.
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux (tests/run.sh installs it)")
    }

    /// A detached session `top` running `command` in a `width` x 30 terminal.
    fn start(&self, width: &str, command: &str) {
        let out = self.cmd(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            width,
            "-y",
            "30",
            command,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    /// Waits (at most a minute: a loaded machine) until `done` holds.
    fn wait_for(&self, what: &str, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "gave up waiting for {what}; screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
#[ignore = "needs tmux: run by tests/run.sh"]
fn top_draws_the_gpus_and_workloads_in_a_terminal_and_quits_on_q() {
    let (s, config) = with_inventory();
    let tmux = Tmux {
        socket: s.path("tmux.sock"),
    };
    let status = s.path("top.status");
    let command = format!(
        "{BIN} --config {} top; echo $? > {}; sleep 60",
        config.display(),
        status.display()
    );
    tmux.start("150", &command);
    tmux.wait_for("the first screen", || {
        tmux.screen().contains("detect-workloads top:")
    });
    let screen = tmux.screen();
    let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
    assert_eq!(
        lines[0], "detect-workloads top: 3 workloads  (q to quit)",
        "{screen}"
    );
    assert_eq!(
        lines[1], "GPU 0  GPU-56c0b0b8  NVIDIA H100 80GB HBM3  mem 20.8 GiB / 79.6 GiB  util 37%",
        "{screen}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("0train-alice  train-alice ") && l.ends_with(" 5d ago")),
        "{screen}"
    );
    assert!(screen.contains(FOOTER.trim_end()), "{screen}");
    tmux.cmd(&["send-keys", "-t", "top", "q"]);
    tmux.wait_for("top to exit", || status.exists());
    tmux.wait_for("its status", || {
        std::fs::read_to_string(&status).is_ok_and(|t| t.ends_with('\n'))
    });
    assert_eq!(std::fs::read_to_string(&status).expect("status"), "0\n");
}

/// The inventory explains itself: a container allocated GPUs by its labels
/// only is flagged `label-only`; one never started has no `started_at`; the
/// event log exists (empty) after a first scan with no transition.
#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn the_output_explains_itself() {
    let s = Scratch::new();
    let config = s.config(None, "");
    s.scan(&config);
    assert_eq!(
        std::fs::read_to_string(s.events_path()).expect("event log created"),
        ""
    );
    let host = common::docker_host();
    let config = s.config(Some(&host), "");
    let name = format!("dw-p2a-label-{}", std::process::id());
    let image = common::test_image();
    common::docker(
        &host,
        &[
            "create",
            "--name",
            &name,
            "--label",
            "ds01.gpu.slots=0:0,0:1",
            &image,
            "sleep",
            "300",
        ],
    );
    let out = s.run(&config, &["--sink", "stdout"]);
    common::docker(&host, &["rm", "-f", &name]);
    let inv: serde_json::Value = serde_json::from_str(&text(&out)).expect("JSON");
    let entry = inv["containers"]
        .as_object()
        .and_then(|m| m.values().find(|c| c["name"] == name.as_str()))
        .unwrap_or_else(|| panic!("{name} not in {inv}"));
    assert_eq!(entry["status"], "created");
    assert_eq!(entry["has_gpu"], false);
    assert_eq!(entry["gpu_devices"], serde_json::json!(["0:0", "0:1"]));
    assert_eq!(entry["gpu_access"], "label-only");
    assert!(entry["inspect"].is_object(), "{entry}");
    assert!(entry["inspect"].get("started_at").is_none(), "{entry}");
}

#[test]
#[ignore = "needs tmux: run by tests/run.sh"]
fn at_80_columns_ps_and_top_fit_and_keep_created() {
    let (s, config) = with_inventory();
    for (what, args, marker) in [
        ("ps -a", "ps -a", "scan 2d ago"),
        ("top", "top", "detect-workloads top:"),
    ] {
        let tmux = Tmux {
            socket: s.path(&format!("tmux-{}.sock", args.len())),
        };
        let command = format!("{BIN} --config {} {args}; sleep 60", config.display());
        tmux.start("80", &command);
        tmux.wait_for(what, || tmux.screen().contains(marker));
        // Joined: a line the terminal wrapped is one line again.
        let joined = tmux.cmd(&["capture-pane", "-p", "-J", "-t", "top"]);
        let screen = String::from_utf8_lossy(&joined.stdout).into_owned();
        for line in screen.lines() {
            assert!(
                line.trim_end().chars().count() <= 80,
                "{what}: {line:?}\n{screen}"
            );
        }
        let row = screen
            .lines()
            .find(|l| l.contains("train-a"))
            .unwrap_or_else(|| panic!("{what}: {screen}"));
        assert!(
            row.trim_end().ends_with("5d ago"),
            "{what} keeps CREATED: {row:?}"
        );
        if what == "ps -a" {
            assert!(screen.contains("old-bob"), "{screen}");
        }
    }
}
