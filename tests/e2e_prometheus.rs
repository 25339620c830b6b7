//! The `prometheus` sink against the real tools of the Prometheus stack:
//! `promtool` (Debian's `prometheus`) checks the textfile the binary writes and
//! runs the rules' unit tests; a real `prometheus-node-exporter` serves the
//! textfile over loopback; the Grafana dashboard only asks for metrics the
//! sink emits. `tests/run.sh` installs both tools and exports their paths
//! (`DW_TEST_PROMTOOL`, `DW_TEST_NODE_EXPORTER`); under CI a missing tool is a
//! failure, elsewhere the test is skipped.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Proc, Scratch};
use detect_workloads_api::model::{
    Activity, CollectorReport, ContainerEntry, ContainerGpuProcess, GpuMismatch, Inventory,
    ProcessEntry, ScanReport, Usage, UserGpuUse,
};
use detect_workloads_sinks::prometheus::carried::STATE_FILE;
use detect_workloads_sinks::prometheus::{render, Carried, FILE_NAME};

/// The tool from `env` (set by tests/run.sh), else `name` on PATH. Tests
/// that use it are `#[ignore]`d (see `common::docker_host`): when they run,
/// a missing tool is a failure.
fn tool(env: &str, name: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .filter(|p| !p.as_os_str().is_empty())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        });
    match path {
        Some(p) if p.is_file() => p,
        _ => panic!("{name} not found (set {env} or run tests/run.sh, which installs it)"),
    }
}

fn promtool() -> PathBuf {
    tool("DW_TEST_PROMTOOL", "promtool")
}

/// Runs promtool; panics with its output unless it succeeds.
fn promtool_ok(promtool: &Path, dir: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("feed promtool");
    drop(input);
    let out = child.wait_with_output().expect("promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn prometheus_config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus")
}

/// A scratch whose config adds `[[sinks.prometheus]]` writing into `textfile/`.
fn scratch_with_sink() -> (Scratch, PathBuf, PathBuf) {
    let s = Scratch::new();
    let dir = s.path("textfile");
    std::fs::create_dir(&dir).expect("textfile dir");
    let config = s.config(
        None,
        &format!(
            "\n[[sinks.prometheus]]\ntextfile_dir = \"{}\"\n",
            dir.display()
        ),
    );
    (s, config, dir)
}

/// The value of the sample line starting with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Every sample line of an exposition: series (name and labels) -> value.
fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(series, value)| Some((series.to_string(), value.parse().ok()?)))
        .collect()
}

fn read_metrics(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(FILE_NAME)).expect("metrics file written")
}

#[test]
#[ignore = "needs promtool and node_exporter: run by tests/run.sh"]
fn textfile_passes_promtool_and_counters_stay_monotonic() {
    let promtool = promtool();
    let (s, config, dir) = scratch_with_sink();
    let gpu = s.gpu_process();
    // Alone on its GPU: the device's utilisation is the process's.
    s.set_gpu_utilization(&format!("{}, 40\n", common::UUID));
    s.scan(&config);
    s.scan(&config); // confirms the host GPU process (its first reading)
    s.scan(&config); // its rates, and the GPU time it held since
    let text = read_metrics(&dir);
    let mode = std::fs::metadata(dir.join(FILE_NAME))
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o644);
    // The textfile and the counters carried to the next oneshot run (JSON,
    // only this process's user can read it), nothing else.
    assert_eq!(
        common::listing(&dir),
        BTreeSet::from([FILE_NAME.to_string(), STATE_FILE.to_string()])
    );
    let state_mode = std::fs::metadata(dir.join(STATE_FILE))
        .expect("state metadata")
        .permissions()
        .mode();
    assert_eq!(state_mode & 0o7777, 0o600);
    promtool_ok(&promtool, &dir, &["check", "metrics"], Some(&text));

    assert!(
        text.lines()
            .any(|l| l.starts_with("ds01_workload_host_gpu_processes{user=") && l.ends_with(" 1")),
        "{text}"
    );
    // Its activity, by user and GPU; its user's GPU-seconds.
    let inv = s.inventory();
    let user = inv["host_processes"][gpu.pid().to_string()]["user"]
        .as_str()
        .expect("the process's user")
        .to_string();
    let by_gpu = format!("{{UUID=\"{}\",user=\"{user}\"}}", common::UUID);
    let util = format!("ds01_workload_host_gpu_process_utilization_ratio{by_gpu}");
    assert_eq!(sample(&text, &util), Some(0.4), "{text}");
    let cores = format!("ds01_workload_host_gpu_process_cpu_cores{by_gpu}");
    assert!(sample(&text, &cores).is_some_and(|c| c >= 0.0), "{text}");
    // Not judged within the idle stage's grace: active.
    let idle = format!("ds01_workload_host_gpu_process_idle_seconds{by_gpu}");
    assert_eq!(sample(&text, &idle), Some(0.0), "{text}");
    let held_series = format!("ds01_workload_user_gpu_seconds_held_total{{user=\"{user}\"}}");
    let idle_series = format!("ds01_workload_user_gpu_seconds_idle_total{{user=\"{user}\"}}");
    let held = sample(&text, &held_series).expect("held counter");
    assert!(held > 0.0, "one GPU held between two readings: {text}");
    assert_eq!(sample(&text, &idle_series), Some(0.0), "{text}");
    for name in [
        "ds01_workload_user_gpu_seconds_held_total",
        "ds01_workload_user_gpu_seconds_idle_total",
    ] {
        assert!(text.contains(&format!("# TYPE {name} counter")), "{text}");
    }
    let discovered =
        "ds01_workload_events_total{event_type=\"detection.host_gpu_process_discovered\"}";
    let exited = "ds01_workload_events_total{event_type=\"detection.host_gpu_process_exited\"}";
    assert_eq!(sample(&text, discovered), Some(1.0), "{text}");
    assert_eq!(sample(&text, exited), Some(0.0), "{text}");
    // No label carries a PID (per-process series would grow without bound).
    let pid = gpu.pid().to_string();
    assert!(
        !text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('{').and_then(|(_, rest)| rest.split_once('}')))
            .any(|(labels, _)| labels
                .split(',')
                .any(|kv| kv.ends_with(&format!("=\"{pid}\"")))),
        "a PID leaked into a label: {text}"
    );

    // The process ends: the exit is counted and the discovery is not forgotten
    // by a new oneshot process.
    drop(gpu);
    s.set_gpu_apps("");
    s.scan(&config);
    let text = read_metrics(&dir);
    assert_eq!(sample(&text, discovered), Some(1.0), "{text}");
    assert_eq!(sample(&text, exited), Some(1.0), "{text}");
    assert!(
        !text.contains("ds01_workload_host_gpu_processes{"),
        "{text}"
    );
    // Its activity goes with it; its GPU-seconds stay with its user.
    assert!(!text.contains(&util) && !text.contains(&idle), "{text}");
    assert_eq!(sample(&text, &held_series), Some(held), "{text}");
    assert_eq!(sample(&text, &idle_series), Some(0.0), "{text}");
    promtool_ok(&promtool, &dir, &["check", "metrics"], Some(&text));
}

#[test]
fn last_success_survives_a_failing_collector() {
    let (s, config, dir) = scratch_with_sink();
    s.scan(&config);
    let series = "ds01_workload_collector_last_success_timestamp_seconds{collector=\"nvidia-smi\"}";
    let before = read_metrics(&dir);
    let first = sample(&before, series).expect("last success after a good scan");
    assert_eq!(
        sample(
            &before,
            "ds01_workload_collector_up{collector=\"nvidia-smi\"}"
        ),
        Some(1.0)
    );
    // The next scan starts at least a second later, so a fresh time would differ.
    common::seconds_pass(2);
    s.set_smi_mode("fail");
    s.run(&config, &[]);
    let after = read_metrics(&dir);
    assert_eq!(
        sample(
            &after,
            "ds01_workload_collector_up{collector=\"nvidia-smi\"}"
        ),
        Some(0.0),
        "{after}"
    );
    assert_eq!(sample(&after, series), Some(first), "{after}");
    assert!(
        sample(&after, "ds01_workload_scan_timestamp_seconds").expect("scan time") > first,
        "{after}"
    );
}

#[test]
fn listen_without_textfile_dir_is_for_watch_mode() {
    // Accepted (watch mode serves it; a oneshot scan has nothing to serve).
    let s = Scratch::new();
    let config = s.config(
        None,
        "\n[[sinks.prometheus]]\nlisten = \"127.0.0.1:9102\"\n",
    );
    let out = s.run(&config, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let config = s.config(None, "\n[[sinks.prometheus]]\n");
    let out = s.run(&config, &[]);
    assert_eq!(out.status.code(), Some(2));
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A plain HTTP/1.0 GET over loopback; `None` while nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[test]
#[ignore = "needs promtool and node_exporter: run by tests/run.sh"]
fn node_exporter_serves_the_textfile() {
    let exporter = tool("DW_TEST_NODE_EXPORTER", "prometheus-node-exporter");
    let (s, config, dir) = scratch_with_sink();
    let _gpu = s.gpu_process();
    s.scan(&config);
    s.scan(&config);
    let port = free_port();
    let _exporter = Proc(
        Command::new(exporter)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--collector.disable-defaults")
            .arg("--collector.textfile")
            .arg(format!("--collector.textfile.directory={}", dir.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node_exporter"),
    );
    // It answers once it has bound the port (a generous bound, not a timing).
    let response = (0..300)
        .find_map(|_| {
            let r = http_get(port, "/metrics");
            if r.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            r
        })
        .expect("node_exporter answered within 30 s");
    assert!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"));
    // Every sample of the file, with its value (Go may write it differently:
    // 1.767225610e+09).
    let served = samples(&response);
    let file = samples(&read_metrics(&dir));
    assert!(file.len() > 10, "{file:?}");
    for (series, value) in &file {
        assert_eq!(
            served.get(series),
            Some(value),
            "{series} not served:\n{response}"
        );
    }
    assert!(
        response.contains("node_textfile_scrape_error 0"),
        "{response}"
    );
}

#[test]
#[ignore = "needs promtool and node_exporter: run by tests/run.sh"]
fn rules_pass_promtool_check_and_test() {
    let promtool = promtool();
    let dir = prometheus_config_dir();
    let checked = promtool_ok(
        &promtool,
        &dir,
        &["check", "rules", "detect-workloads.rules.yml"],
        None,
    );
    assert!(checked.contains("SUCCESS: 14 rules found"), "{checked}");
    promtool_ok(
        &promtool,
        &dir,
        &["test", "rules", "detect-workloads.rules.test.yml"],
        None,
    );
    promtool_ok(&promtool, &dir, &["check", "config", "scrape.yml"], None);
}

#[test]
fn every_rule_has_its_own_test() {
    let dir = prometheus_config_dir();
    let rules = std::fs::read_to_string(dir.join("detect-workloads.rules.yml")).expect("rules");
    let tests =
        std::fs::read_to_string(dir.join("detect-workloads.rules.test.yml")).expect("tests");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 6, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - exp_labels:"
            )),
            "no firing test for {alert}"
        );
    }
    let records: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .collect();
    assert_eq!(records.len(), 8, "{records:?}");
    for record in records {
        assert!(
            tests.contains(&format!("- expr: {record}"))
                && tests.contains(&format!("- labels: '{record}{{")),
            "no test of the values of {record}"
        );
    }
}

/// An inventory in which every metric has a series.
fn full_inventory() -> Inventory {
    let mut c = ContainerEntry {
        id: "aaaaaaaaaaaa".into(),
        name: "train".into(),
        origin: "raw-docker".into(),
        user: "unknown".into(),
        status: "running".into(),
        gpu_in_use: true,
        gpu_uuids: vec!["GPU-0".into()],
        gpu_mismatch: Some(GpuMismatch::NotGranted),
        ..Default::default()
    };
    c.gpu_processes.push(ContainerGpuProcess {
        gpu_uuid: "GPU-0".into(),
        gpu_memory_mb: Some(1),
        ..Default::default()
    });
    let activity = Activity {
        cpu_cores: Some(0.5),
        net_bytes_per_s: Some(0.0),
        gpu_util_percent: Some(1.0),
        sampled_s: Some(30.0),
        idle_since: "2025-12-31T23:00:00Z".parse().ok(),
        idle: true,
    };
    c.activity = Some(activity.clone());
    c.usage = Usage {
        gpu_seconds_held: 7200.0,
        gpu_seconds_idle: 3600.0,
    };
    let mut inv = Inventory {
        last_scan: "2026-01-01T00:00:00Z".parse().ok(),
        ..Default::default()
    };
    inv.containers.insert(c.id.clone(), c);
    inv.host_processes.insert(
        1,
        ProcessEntry {
            user: "carol".into(),
            gpu_uuid: "GPU-0".into(),
            detected_at: "2026-01-01T00:00:00Z".parse().expect("time"),
            activity: Some(activity),
            ..Default::default()
        },
    );
    inv.user_gpu_use.push(UserGpuUse {
        user: "carol".into(),
        gpu_uuid: "GPU-0".into(),
        gpu_memory_mb: Some(512),
        pids: vec![4711],
        processes_seen: 3,
        detected_at: "2026-01-01T00:00:00Z".parse().expect("time"),
        seen_scans: 2,
    });
    inv.scan = Some(ScanReport {
        started_at: "2026-01-01T00:00:00Z".parse().expect("time"),
        collectors: [(
            "docker".to_string(),
            CollectorReport {
                ok: true,
                ..Default::default()
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    });
    inv
}

/// Every `ds01_workload_*` name in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ds01_workload_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // `ds01_workload_*` in a comment names the prefix, not a metric;
        // `level:ds01_workload_...:op` is a recording rule's name.
        let recorded = rest[..at].ends_with(':');
        if !tail[..end].ends_with('_') && !recorded {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Every string under a key `key` anywhere in a JSON value.
fn strings_under(value: &serde_json::Value, key: &str, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v {
                    serde_json::Value::String(s) if k == key => out.push(s.clone()),
                    _ => strings_under(v, key, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings_under(v, key, out)),
        _ => {}
    }
}

#[test]
fn dashboard_and_rules_use_only_emitted_metrics() {
    let mut carried = Carried::default();
    carried.advance(&full_inventory(), &[]);
    let emitted: BTreeSet<String> = render(&full_inventory(), &carried)
        .expect("render")
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    assert!(emitted.len() >= 15, "{emitted:?}");
    // The table of metrics of docs/prometheus.md names every one of them in
    // its first column.
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/prometheus.md"))
            .expect("docs/prometheus.md");
    let table: BTreeSet<String> = doc
        .split("| metric | type | labels |")
        .nth(1)
        .expect("the metrics table of docs/prometheus.md")
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let undocumented: Vec<_> = emitted
        .iter()
        .filter(|m| !m.starts_with("process_") && !table.contains(*m))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/prometheus.md's metrics table: {undocumented:?}"
    );

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana/detect-workloads.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut exprs = Vec::new();
    for panel in panels {
        let mut own = Vec::new();
        strings_under(&panel["targets"], "expr", &mut own);
        assert!(!own.is_empty(), "panel without a query: {}", panel["title"]);
        exprs.extend(own);
    }
    strings_under(&dashboard["templating"], "query", &mut exprs);
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    let unknown: Vec<_> = used.difference(&emitted).collect();
    assert!(unknown.is_empty(), "the dashboard asks for {unknown:?}");
    assert!(panels.iter().any(|p| p["type"] == "timeseries"
        && p["targets"][0]["expr"]
            .as_str()
            .is_some_and(|e| e.contains("by (user)") && e.contains("gpu_memory_bytes"))));
    assert!(panels.iter().any(|p| p["type"] == "table"));
    let idle = idle_memory_panel(&dashboard);
    assert!(
        idle.contains("by (user)")
            && idle.contains("ds01_workload_container_idle_seconds")
            && idle.contains("ds01_workload_host_gpu_process_idle_seconds"),
        "{idle}"
    );

    let rules = std::fs::read_to_string(prometheus_config_dir().join("detect-workloads.rules.yml"))
        .expect("rules");
    let unknown: Vec<_> = metric_names(&rules)
        .into_iter()
        .filter(|m| !emitted.contains(m))
        .collect();
    assert!(unknown.is_empty(), "the rules ask for {unknown:?}");
}

/// The query of the dashboard's "Idle GPU memory by user" panel.
fn idle_memory_panel(dashboard: &serde_json::Value) -> String {
    let panels = dashboard["panels"].as_array().expect("panels");
    let panel = panels
        .iter()
        .find(|p| p["title"] == "Idle GPU memory by user")
        .expect("an idle GPU memory panel");
    assert_eq!(panel["type"], "timeseries");
    panel["targets"][0]["expr"]
        .as_str()
        .expect("its query")
        .to_string()
}

/// The idle GPU memory panel's query, evaluated by promtool over series of
/// idle and active containers and host processes: only the memory of idle
/// ones counts, summed by user.
#[test]
#[ignore = "needs promtool: run by tests/run.sh"]
fn idle_memory_panel_sums_the_memory_of_idle_workloads_by_user() {
    let promtool = promtool();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana/detect-workloads.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let expr = idle_memory_panel(&dashboard).replace("$instance", ".*");
    let scratch = Scratch::new();
    let dir = scratch.path("promtool");
    std::fs::create_dir(&dir).expect("dir");
    std::fs::write(dir.join("none.rules.yml"), "groups: []\n").expect("rules");
    let series = [
        // alice: an idle container on two GPUs, an active one.
        r#"ds01_workload_container_idle_seconds{instance="gpu1",container="nb",container_id="a1",user="alice"}"#,
        "600x3",
        r#"ds01_workload_container_gpu_memory_bytes{instance="gpu1",container="nb",container_id="a1",user="alice",UUID="GPU-0"}"#,
        "100x3",
        r#"ds01_workload_container_gpu_memory_bytes{instance="gpu1",container="nb",container_id="a1",user="alice",UUID="GPU-1"}"#,
        "20x3",
        r#"ds01_workload_container_idle_seconds{instance="gpu1",container="train",container_id="a2",user="alice"}"#,
        "0x3",
        r#"ds01_workload_container_gpu_memory_bytes{instance="gpu1",container="train",container_id="a2",user="alice",UUID="GPU-0"}"#,
        "5000x3",
        // The same container id on another server, active.
        r#"ds01_workload_container_idle_seconds{instance="gpu2",container="nb",container_id="a1",user="alice"}"#,
        "0x3",
        r#"ds01_workload_container_gpu_memory_bytes{instance="gpu2",container="nb",container_id="a1",user="alice",UUID="GPU-0"}"#,
        "7000x3",
        // carol: idle host processes on GPU-2, active ones on GPU-3.
        r#"ds01_workload_host_gpu_process_idle_seconds{instance="gpu1",user="carol",UUID="GPU-2"}"#,
        "60x3",
        r#"ds01_workload_host_gpu_memory_bytes{instance="gpu1",user="carol",UUID="GPU-2"}"#,
        "300x3",
        r#"ds01_workload_host_gpu_process_idle_seconds{instance="gpu1",user="carol",UUID="GPU-3"}"#,
        "0x3",
        r#"ds01_workload_host_gpu_memory_bytes{instance="gpu1",user="carol",UUID="GPU-3"}"#,
        "900x3",
        // bob: active only, so no series.
        r#"ds01_workload_host_gpu_process_idle_seconds{instance="gpu1",user="bob",UUID="GPU-2"}"#,
        "0x3",
        r#"ds01_workload_host_gpu_memory_bytes{instance="gpu1",user="bob",UUID="GPU-2"}"#,
        "40x3",
    ];
    let mut test = String::from(
        "rule_files:\n  - none.rules.yml\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
    );
    for pair in series.chunks(2) {
        test.push_str(&format!(
            "      - series: '{}'\n        values: '{}'\n",
            pair[0], pair[1]
        ));
    }
    let quoted = serde_json::to_string(&expr).expect("quote");
    test.push_str(&format!(
        "    promql_expr_test:\n      - expr: {quoted}\n        eval_time: 2m\n        exp_samples:\n\
         \x20         - labels: '{{user=\"alice\"}}'\n            value: 120\n\
         \x20         - labels: '{{user=\"carol\"}}'\n            value: 300\n"
    ));
    std::fs::write(dir.join("panel.test.yml"), &test).expect("test file");
    promtool_ok(&promtool, &dir, &["test", "rules", "panel.test.yml"], None);
}
