//! The fleet, proven against a real Prometheus (Debian's `prometheus`, on
//! loopback): three watch instances, each a "node" with its own GPU processes
//! (scripted nvidia-smi, real processes of root and of the test user) and the
//! private engine, scraped over TLS with basic authentication, the project's
//! rule file loaded. Everything is checked through Prometheus's HTTP API.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Prometheus's scrape and evaluation interval here, seconds.
const SCRAPE_S: u64 = 1;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    l.local_addr().expect("addr").port()
}

fn prometheus_bin() -> String {
    match std::env::var("DW_TEST_PROMETHEUS")
        .ok()
        .filter(|p| !p.is_empty())
    {
        Some(p) => p,
        None => {
            panic!("no prometheus (DW_TEST_PROMETHEUS): tests/run.sh installs Debian's prometheus")
        }
    }
}

/// A child killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One node: a scratch directory, its watch process, its GPU processes.
struct Node {
    s: Scratch,
    config: PathBuf,
    port: u16,
    watch: Option<Killed>,
    _procs: Vec<Proc>,
}

impl Node {
    fn start(&mut self) {
        let log = self.s.path("watch.log");
        self.watch = Some(Killed(spawn_logged(&self.config, &["watch"], &log)));
    }

    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// `sleep 600` as the test user (setpriv execs: the PID is the sleep's).
fn test_user_sleeper() -> Proc {
    let (_, uid) = test_user();
    Proc(
        Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", "--", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("setpriv (util-linux)"),
    )
}

/// Prometheus's HTTP API: GET `path` with `query` (url-encoded by curl);
/// `None` while it does not answer with JSON.
fn try_api(port: u16, path: &str, query: Option<&str>) -> Option<Value> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-G"])
        .arg(format!("http://127.0.0.1:{port}{path}"));
    if let Some(q) = query {
        cmd.arg("--data-urlencode").arg(format!("query={q}"));
    }
    let out = cmd.output().expect("curl");
    serde_json::from_slice(&out.stdout).ok()
}

/// [`try_api`], which must answer.
fn api(port: u16, path: &str, query: Option<&str>) -> Value {
    try_api(port, path, query).unwrap_or_else(|| panic!("{path} {query:?}: no JSON answer"))
}

/// The result vector of an instant query (which must succeed).
fn query(port: u16, q: &str) -> Vec<Value> {
    let v = api(port, "/api/v1/query", Some(q));
    assert_eq!(v["status"], "success", "{q}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn targets(port: u16) -> Vec<Value> {
    api(port, "/api/v1/targets", None)["data"]["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn wait(what: &str, bound: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < bound, "not within {bound:?}: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The HTTP status `url` answers with the fleet's credentials (the
/// self-signed certificate not checked), `000` when nothing answers.
fn metrics_status(url: &str, password: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
        ])
        .arg(format!("prometheus:{password}"))
        .arg(url)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Adds a target's (health, last scrape) to `scrapes` when it is a scrape
/// not noted yet.
fn note_scrape(scrapes: &mut Vec<(String, String)>, now: (String, String)) {
    if scrapes.last().is_none_or(|(_, at)| *at != now.1) {
        scrapes.push(now);
    }
}

/// GPU memory by user in an inventory, bytes, as the sink counts it.
fn user_memory(inv: &Value, into: &mut BTreeMap<String, f64>) {
    let mib = |v: &Value| v["gpu_memory_mb"].as_f64().unwrap_or(0.0) * 1024.0 * 1024.0;
    for c in inv["containers"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
    {
        for p in c["gpu_processes"].as_array().into_iter().flatten() {
            *into
                .entry(c["user"].as_str().unwrap_or_default().to_string())
                .or_default() += mib(p);
        }
    }
    for p in inv["host_processes"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
    {
        *into
            .entry(p["user"].as_str().unwrap_or_default().to_string())
            .or_default() += mib(p);
    }
    for u in inv["user_gpu_use"].as_array().into_iter().flatten() {
        *into
            .entry(u["user"].as_str().unwrap_or_default().to_string())
            .or_default() += mib(u);
    }
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[test]
#[ignore = "needs the private Docker engine, Debian's prometheus, openssl and the test user: run by tests/run.sh"]
fn a_real_prometheus_scrapes_three_nodes_over_tls_with_basic_auth() {
    let prometheus = prometheus_bin();
    let host = docker_host();
    let (test_user_name, _) = test_user();
    let pki = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (pki.path().join("cert.pem"), pki.path().join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args([
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let password = "fleet-secret-7";
    let hash = bcrypt::hash(password, 4).expect("bcrypt");
    let web = pki.path().join("web.yml");
    write_private(
        &web,
        &format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  prometheus: '{hash}'\n",
            cert.display(),
            key.display()
        ),
    );

    // A container on the (shared) engine, so that the container series and
    // the rules over them have something to show.
    let mut containers = Containers::new(&host);
    containers.create(&[
        "--label",
        "ds01.user=alice",
        "--name",
        &unique("dw-fleet"),
        &test_image(),
        "true",
    ]);

    // Three nodes, each with a root and a test-user GPU process.
    let mut nodes: Vec<Node> = (0..3u64)
        .map(|k| {
            let s = Scratch::new();
            let port = free_port();
            let extra = format!(
                "\n[[sinks.prometheus]]\nlisten = \"127.0.0.1:{port}\"\nweb_config = \"{}\"\n",
                web.display()
            );
            let config = s.config(Some(&host), &extra);
            edit_config(
                &config,
                "source = \"detect-workloads-test\"\n",
                "source = \"detect-workloads-test\"\ninterval = \"2s\"\ngpu_interval = \"1s\"\n",
            );
            let root = sleeper();
            let user = test_user_sleeper();
            s.set_gpu_apps(&format!(
                "{}, {}, {UUID}\n{}, {}, {UUID}\n",
                root.pid(),
                100 * (k + 1),
                user.pid(),
                1000 * (k + 1)
            ));
            let mut node = Node {
                s,
                config,
                port,
                watch: None,
                _procs: vec![root, user],
            };
            node.start();
            node
        })
        .collect();

    // Prometheus, scraping them every second with the rules loaded.
    let prom_dir = tempfile::tempdir().expect("tempdir");
    let prom_port = free_port();
    let targets_yaml: Vec<String> = nodes.iter().map(|n| format!("'{}'", n.target())).collect();
    let prom_config = prom_dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: {SCRAPE_S}s\n  evaluation_interval: {SCRAPE_S}s\n\
             rule_files:\n  - {REPO}/config/prometheus/detect-workloads.rules.yml\n\
             scrape_configs:\n  - job_name: detect-workloads\n    scheme: https\n\
             \x20   tls_config:\n      ca_file: {}\n\
             \x20   basic_auth:\n      username: prometheus\n      password: {password}\n\
             \x20   static_configs:\n      - targets: [{}]\n",
            cert.display(),
            targets_yaml.join(", ")
        ),
    )
    .expect("write");
    let prom_log = std::fs::File::create(prom_dir.path().join("prometheus.log")).expect("log");
    let _prom = Killed(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(prom_log)
            .spawn()
            .expect("prometheus"),
    );
    let prom_stderr =
        || std::fs::read_to_string(prom_dir.path().join("prometheus.log")).unwrap_or_default();

    // Every target up.
    let bound = Duration::from_secs(60);
    wait("every target up", bound, || {
        let t = try_api(prom_port, "/api/v1/targets", None)
            .and_then(|v| v["data"]["activeTargets"].as_array().cloned())
            .unwrap_or_default();
        t.len() == 3 && t.iter().all(|t| t["health"] == "up")
    });

    // Plain HTTP to a TLS listener gets no metrics.
    let plain = metrics_status(&format!("http://{}/metrics", nodes[0].target()), password);
    assert_ne!(plain, "200", "plain HTTP was served");

    // Per-user GPU memory across the fleet equals the three inventories
    // (once every node has confirmed its processes).
    let expected = |nodes: &[Node]| {
        let mut m = BTreeMap::new();
        for n in nodes {
            if let Ok(text) = std::fs::read_to_string(n.s.inventory_path()) {
                if let Ok(inv) = serde_json::from_str::<Value>(&text) {
                    user_memory(&inv, &mut m);
                }
            }
        }
        m
    };
    let mib = 1024.0 * 1024.0;
    wait("the fleet's per-user GPU memory", bound, || {
        let e = expected(&nodes);
        e.get("root") == Some(&(600.0 * mib))
            && e.get(&test_user_name) == Some(&(6000.0 * mib))
            && {
                let got: BTreeMap<String, f64> =
                    query(prom_port, "user:ds01_workload_gpu_memory_bytes:sum")
                        .iter()
                        .map(|r| {
                            (
                                r["metric"]["user"].as_str().unwrap_or_default().to_string(),
                                r["value"][1]
                                    .as_str()
                                    .and_then(|v| v.parse().ok())
                                    .unwrap_or(-1.0),
                            )
                        })
                        .collect();
                got == e
            }
    });

    // Each recording rule yields series.
    let rules = std::fs::read_to_string(format!(
        "{REPO}/config/prometheus/detect-workloads.rules.yml"
    ))
    .expect("rules");
    let records: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .collect();
    assert!(records.len() >= 5, "{records:?}");
    for r in &records {
        wait(&format!("series of {r}"), bound, || {
            !query(prom_port, r).is_empty()
        });
    }

    // Every query of the Grafana dashboard evaluates without error.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{REPO}/config/grafana/detect-workloads.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    assert!(exprs.len() >= 5, "{exprs:?}");
    for e in &exprs {
        let q = e.replace("$instance", ".*");
        let v = api(prom_port, "/api/v1/query", Some(&q));
        assert_eq!(v["status"], "success", "dashboard query {e}: {v}");
    }

    // A node whose collector fails makes the failure alert pending.
    nodes[1].s.set_smi_mode("fail");
    let failing = nodes[1].target();
    wait(
        "DetectWorkloadsCollectorDown pending for node 1",
        bound,
        || {
            api(prom_port, "/api/v1/alerts", None)["data"]["alerts"]
                .as_array()
                .is_some_and(|a| {
                    a.iter().any(|a| {
                        a["labels"]["alertname"] == "DetectWorkloadsCollectorDown"
                            && a["labels"]["instance"] == failing.as_str()
                            && a["labels"]["collector"] == "nvidia-smi"
                            && a["state"] == "pending"
                    })
                })
        },
    );
    nodes[1].s.set_smi_mode("");

    // A node killed and restarted is up again within two scrapes.
    let victim = nodes[2].target();
    let health = |t: &str| {
        targets(prom_port)
            .into_iter()
            .find(|x| x["labels"]["instance"] == t)
            .map(|x| {
                (
                    x["health"].as_str().unwrap_or_default().to_string(),
                    x["lastScrape"].as_str().unwrap_or_default().to_string(),
                )
            })
            .unwrap_or_default()
    };
    nodes[2].watch = None; // SIGKILL
    wait("the killed node down", bound, || {
        health(&victim).0 == "down"
    });
    nodes[2].start();
    wait("the restarted node serving /metrics", bound, || {
        metrics_status(&format!("https://{victim}/metrics"), password) == "200"
    });
    let mut scrapes = Vec::new();
    wait("two scrapes after the restart", bound, || {
        note_scrape(&mut scrapes, health(&victim));
        scrapes.len() >= 3
    });
    // The first sample may predate the restart; of the next two, one is up.
    assert!(
        scrapes[1..3].iter().any(|(h, _)| h == "up"),
        "not up within two scrapes of the restart: {scrapes:?}"
    );

    // 500 idle connections from the test user to node 0: its scrapes still
    // succeed and its scans keep their interval.
    let port0 = nodes[0].port;
    let holder = format!(
        "import socket, time\nsocks = []\nfor i in range(500):\n    s = socket.socket()\n    s.connect(('127.0.0.1', {port0}))\n    socks.append(s)\nprint('held', flush=True)\ntime.sleep(120)\n"
    );
    let script = nodes[0].s.path("hold.py");
    std::fs::write(&script, holder).expect("write");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            nodes[0].s.dir.path(),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let (_, uid) = test_user();
    let mut hold = Killed(
        Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            // The system's Python: a user's own (pyenv) is not the test user's.
            .args(["--clear-groups", "--", "/usr/bin/python3"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("setpriv"),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hold.0.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert_eq!(line, "held\n", "the holder connected 500 times");
    let scan_at = |n: &Node| {
        std::fs::read_to_string(n.s.inventory_path())
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["scan"]["started_at"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let target0 = nodes[0].target();
    let mut seen = Vec::new();
    let mut scans = vec![scan_at(&nodes[0])];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        note_scrape(&mut seen, health(&target0));
        let now = scan_at(&nodes[0]);
        if scans.last() != Some(&now) {
            scans.push(now);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(seen.len() >= 4, "scrapes went on: {seen:?}");
    assert!(
        seen[1..].iter().all(|(h, _)| h == "up"),
        "scrapes of the held node: {seen:?}"
    );
    // interval 2 s, GPU polls every 1 s: eight seconds hold at least three.
    assert!(scans.len() >= 4, "scans went on: {scans:?}");
    drop(hold);
    assert!(
        prom_stderr().contains("Server is ready"),
        "{}",
        prom_stderr()
    );
}
