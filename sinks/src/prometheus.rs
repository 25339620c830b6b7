//! Sink `prometheus`: the inventory as Prometheus metrics, for a fleet's
//! Prometheus (with node_exporter, dcgm-exporter and Grafana).
//!
//! Two ways out, both the classic text format (version 0.0.4) written by the
//! `prometheus` crate, which also escapes label values (user and container
//! names are outside data):
//! - `textfile_dir`: `detect_workloads.prom` in node_exporter's textfile
//!   collector directory, written atomically (a temporary file created
//!   exclusively in the same directory, mode 0644, fsync, rename, fsync of the
//!   directory): node_exporter never reads half a file. Works in oneshot mode.
//! - `listen`: `GET /metrics` on that address ([`serve`]), started by watch
//!   mode ([`Sink::service`]) with the scanner's own `process_*` metrics
//!   (the `prometheus` crate's process collector) added at each request; a
//!   oneshot scan serves nothing (it does not live long enough to be scraped).
//!
//! Only gauges and counters, names prefixed `ds01_workload_`, no PIDs or
//! command lines as labels, GPUs labelled `UUID` as dcgm-exporter labels them
//! (see [`render`] for the list).
//!
//! What carries across runs ([`Carried`]): `ds01_workload_events_total` must
//! stay monotonic and the last success time of a collector must survive a
//! cycle in which it fails. A oneshot run has no memory, so the sink reads both
//! back from the previous `detect_workloads.prom` (no state file of its own);
//! a long-lived process keeps them in memory after its first cycle. Deleting
//! the file resets the counters, which Prometheus treats as a counter reset.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use detect_workloads_core::async_trait;
use detect_workloads_core::config::{ConfigError, PluginConfig};
use detect_workloads_core::model::{Event, GpuMismatch, Inventory};
use detect_workloads_core::plugin::{ScanOutput, Sink, SinkError, SinkPlugin, SinkService};
use detect_workloads_core::timefmt::parse_rfc3339;
use prometheus::{Gauge, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// The file written in `textfile_dir` (node_exporter reads `*.prom`).
pub const FILE_NAME: &str = "detect_workloads.prom";

/// The content type of the classic text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The event types of SPEC.md and issue 14: their counters exist (at 0) from
/// the first scan on, so that `increase()` sees the first event too.
pub const KNOWN_EVENT_TYPES: &[&str] = &[
    "detection.container_discovered",
    "detection.container_exited",
    "detection.container_status_changed",
    "detection.host_gpu_process_discovered",
    "detection.host_gpu_process_exited",
    "detection.container_gpu_started",
    "detection.container_gpu_stopped",
    "detection.container_gpu_mismatch",
];

const MIB: f64 = 1024.0 * 1024.0;
const EVENTS_TOTAL: &str = "ds01_workload_events_total";
const LAST_SUCCESS: &str = "ds01_workload_collector_last_success_timestamp_seconds";

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample prometheus`); `config/default.toml` shows it commented out.
pub const SAMPLE: &str = r#"[[sinks.prometheus]]
textfile_dir = "/var/lib/prometheus/node-exporter"   # must exist; gets detect_workloads.prom
# listen = "127.0.0.1:9102"                          # watch mode only: serves /metrics there
"#;

/// `[[sinks.prometheus]]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// node_exporter's textfile collector directory (Debian:
    /// `/var/lib/prometheus/node-exporter`); it must exist.
    pub textfile_dir: Option<PathBuf>,
    /// Where watch mode serves `/metrics`, e.g. `127.0.0.1:9102`.
    pub listen: Option<SocketAddr>,
}

/// What the metrics carry from one run to the next (see the module doc).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Carried {
    /// Running totals of `ds01_workload_events_total`, by event type.
    pub events_total: BTreeMap<String, u64>,
    /// When each collector last succeeded, seconds since the epoch.
    pub last_success: BTreeMap<String, f64>,
}

impl Carried {
    /// Reads the carried values back from an exposition this sink wrote.
    /// Lines it does not recognise are ignored (a hand-edited file costs at
    /// most a counter reset).
    pub fn from_exposition(text: &str) -> Carried {
        let mut carried = Carried::default();
        for (name, labels, value) in text.lines().filter_map(parse_sample) {
            match (name, labels.as_slice()) {
                (EVENTS_TOTAL, [(label, event_type)])
                    if label == "event_type" && value.is_finite() && value >= 0.0 =>
                {
                    carried
                        .events_total
                        .insert(event_type.clone(), value as u64);
                }
                (LAST_SUCCESS, [(label, collector)])
                    if label == "collector" && value.is_finite() =>
                {
                    carried.last_success.insert(collector.clone(), value);
                }
                _ => {}
            }
        }
        carried
    }

    /// Adds this cycle: its events to the totals, and the scan's start as the
    /// last success of every collector that ran and succeeded. A failed or
    /// skipped collector keeps its earlier time; one no longer configured is
    /// forgotten.
    pub fn advance(&mut self, inventory: &Inventory, events: &[Event]) {
        for event in events {
            let name = event.event_type.as_str().to_string();
            *self.events_total.entry(name).or_default() += 1;
        }
        let Some(scan) = &inventory.scan else {
            return;
        };
        self.last_success
            .retain(|name, _| scan.collectors.contains_key(name));
        let Some(started) = parse_rfc3339(&scan.started_at) else {
            return;
        };
        for (name, report) in &scan.collectors {
            if report.ok && report.skipped.is_none() {
                self.last_success.insert(name.clone(), started as f64);
            }
        }
    }
}

/// A sample's labels: (name, unescaped value) in the order written.
type Labels = Vec<(String, String)>;

/// One sample line `name{label="value",...} value`: its name, labels and
/// value. `None` for comments, blank or malformed lines.
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// Parses `a="x",b="y"}` and returns the labels and what follows the `}`.
fn parse_labels(mut text: &str) -> Option<(Labels, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let (name, after_name) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after_name.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name.trim().to_string(), value));
        text = &after_name[end + 1..];
    }
}

/// The metrics of one inventory, in the classic text format.
///
/// Gauges (current state):
/// - `ds01_workload_containers{origin,status,user,has_gpu}`: containers;
/// - `ds01_workload_container_gpu_in_use{container,container_id,user}`: 1
///   when a process in it uses a GPU (containers with GPU access or use only);
/// - `ds01_workload_container_gpu_memory_bytes{container,container_id,user,UUID}`:
///   GPU memory its processes hold on each GPU;
/// - `ds01_workload_gpu_mismatch{container,container_id,user,UUID,reason}`: 1
///   for each GPU a container uses without being granted it (`reason`
///   `not-granted` or `outside-allocation`);
/// - `ds01_workload_host_gpu_processes{user}`: confirmed host GPU processes;
/// - `ds01_workload_host_gpu_memory_bytes{user,UUID}`: memory they hold;
/// - `ds01_workload_host_gpu_process_started_timestamp_seconds{user,UUID}`:
///   when the oldest of them was first seen;
/// - `ds01_workload_user_gpu_memory_bytes{user}`: GPU memory by user
///   (a container's processes count for the container's user);
/// - `ds01_workload_gpu_memory_bytes{UUID}`: attributed GPU memory by GPU;
/// - `ds01_workload_collector_up{collector}`, `..._duration_seconds{collector}`,
///   `..._last_success_timestamp_seconds{collector}` (carried);
/// - `ds01_workload_scan_duration_seconds`, `ds01_workload_scan_timestamp_seconds`.
///
/// Counter: `ds01_workload_events_total{event_type}` (carried).
pub fn render(inventory: &Inventory, carried: &Carried) -> Result<String, prometheus::Error> {
    let registry = Registry::new();
    containers(&registry, inventory)?;
    gpu_memory(&registry, inventory)?;
    host_processes(&registry, inventory)?;
    scan_health(&registry, inventory, carried)?;
    events(&registry, carried)?;
    let mut text = String::new();
    TextEncoder::new().encode_utf8(&registry.gather(), &mut text)?;
    Ok(text)
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<GaugeVec, prometheus::Error> {
    let gauge = GaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(gauge.clone()))?;
    Ok(gauge)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<Gauge, prometheus::Error> {
    let gauge = Gauge::with_opts(Opts::new(name, help))?;
    registry.register(Box::new(gauge.clone()))?;
    Ok(gauge)
}

fn bool_label(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

fn mismatch_reason(m: GpuMismatch) -> &'static str {
    match m {
        GpuMismatch::NotGranted => "not-granted",
        GpuMismatch::OutsideAllocation => "outside-allocation",
    }
}

fn containers(registry: &Registry, inv: &Inventory) -> Result<(), prometheus::Error> {
    let count = gauge_vec(
        registry,
        "ds01_workload_containers",
        "Containers the engine lists, by origin, status, user and GPU access.",
        &["origin", "status", "user", "has_gpu"],
    )?;
    let in_use = gauge_vec(
        registry,
        "ds01_workload_container_gpu_in_use",
        "1 when a process in the container uses a GPU (containers with GPU access or use).",
        &["container", "container_id", "user"],
    )?;
    let mismatch = gauge_vec(
        registry,
        "ds01_workload_gpu_mismatch",
        "1 for each GPU a container uses without being granted it.",
        &["container", "container_id", "user", "UUID", "reason"],
    )?;
    for c in inv.containers.values() {
        count
            .with_label_values(&[&c.origin, &c.status, &c.user, bool_label(c.has_gpu)])
            .inc();
        if c.has_gpu || c.gpu_in_use {
            in_use
                .with_label_values(&[&c.name, &c.id, &c.user])
                .set(f64::from(u8::from(c.gpu_in_use)));
        }
        let Some(m) = c.gpu_mismatch else { continue };
        let none = [String::new()];
        let uuids = if c.gpu_uuids.is_empty() {
            &none[..]
        } else {
            &c.gpu_uuids[..]
        };
        for uuid in uuids {
            mismatch
                .with_label_values(&[&c.name, &c.id, &c.user, uuid, mismatch_reason(m)])
                .set(1.0);
        }
    }
    Ok(())
}

fn bytes(mib: Option<u64>) -> f64 {
    mib.unwrap_or(0) as f64 * MIB
}

fn gpu_memory(registry: &Registry, inv: &Inventory) -> Result<(), prometheus::Error> {
    let by_container = gauge_vec(
        registry,
        "ds01_workload_container_gpu_memory_bytes",
        "GPU memory held by the processes of a container, by GPU.",
        &["container", "container_id", "user", "UUID"],
    )?;
    let by_user = gauge_vec(
        registry,
        "ds01_workload_user_gpu_memory_bytes",
        "GPU memory held by a user's containers and host processes.",
        &["user"],
    )?;
    let by_gpu = gauge_vec(
        registry,
        "ds01_workload_gpu_memory_bytes",
        "GPU memory attributed to containers and host processes, by GPU.",
        &["UUID"],
    )?;
    for c in inv.containers.values() {
        for p in &c.gpu_processes {
            let b = bytes(p.gpu_memory_mb);
            by_container
                .with_label_values(&[&c.name, &c.id, &c.user, &p.gpu_uuid])
                .add(b);
            by_user.with_label_values(&[&c.user]).add(b);
            by_gpu.with_label_values(&[&p.gpu_uuid]).add(b);
        }
    }
    for p in inv.host_processes.values() {
        let b = bytes(p.gpu_memory_mb);
        by_user.with_label_values(&[&p.user]).add(b);
        by_gpu.with_label_values(&[&p.gpu_uuid]).add(b);
    }
    Ok(())
}

fn host_processes(registry: &Registry, inv: &Inventory) -> Result<(), prometheus::Error> {
    let count = gauge_vec(
        registry,
        "ds01_workload_host_gpu_processes",
        "Confirmed GPU processes outside containers, by user.",
        &["user"],
    )?;
    let memory = gauge_vec(
        registry,
        "ds01_workload_host_gpu_memory_bytes",
        "GPU memory held by processes outside containers, by user and GPU.",
        &["user", "UUID"],
    )?;
    let started = gauge_vec(
        registry,
        "ds01_workload_host_gpu_process_started_timestamp_seconds",
        "When the oldest host GPU process of a user on a GPU was first seen.",
        &["user", "UUID"],
    )?;
    let mut oldest: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for p in inv.host_processes.values() {
        count.with_label_values(&[&p.user]).inc();
        memory
            .with_label_values(&[&p.user, &p.gpu_uuid])
            .add(bytes(p.gpu_memory_mb));
        if let Some(t) = parse_rfc3339(&p.detected_at) {
            let entry = oldest.entry((&p.user, &p.gpu_uuid)).or_insert(t);
            *entry = (*entry).min(t);
        }
    }
    for ((user, uuid), t) in oldest {
        started.with_label_values(&[user, uuid]).set(t as f64);
    }
    Ok(())
}

fn scan_health(
    registry: &Registry,
    inv: &Inventory,
    carried: &Carried,
) -> Result<(), prometheus::Error> {
    let up = gauge_vec(
        registry,
        "ds01_workload_collector_up",
        "1 when the collector succeeded (or was not needed) in the last scan.",
        &["collector"],
    )?;
    let duration = gauge_vec(
        registry,
        "ds01_workload_collector_duration_seconds",
        "How long the collector took in the last scan.",
        &["collector"],
    )?;
    let last_success = gauge_vec(
        registry,
        LAST_SUCCESS,
        "When the collector last succeeded (start of that scan).",
        &["collector"],
    )?;
    let scan_duration = gauge(
        registry,
        "ds01_workload_scan_duration_seconds",
        "How long the last scan took.",
    )?;
    let scan_time = gauge(
        registry,
        "ds01_workload_scan_timestamp_seconds",
        "When the last scan started.",
    )?;
    for (name, t) in &carried.last_success {
        last_success.with_label_values(&[name]).set(*t);
    }
    if let Some(t) = parse_rfc3339(&inv.last_scan) {
        scan_time.set(t as f64);
    }
    let Some(scan) = &inv.scan else {
        return Ok(());
    };
    scan_duration.set(scan.duration_ms as f64 / 1000.0);
    for (name, report) in &scan.collectors {
        up.with_label_values(&[name])
            .set(f64::from(u8::from(report.ok)));
        duration
            .with_label_values(&[name])
            .set(report.duration_ms as f64 / 1000.0);
    }
    Ok(())
}

fn events(registry: &Registry, carried: &Carried) -> Result<(), prometheus::Error> {
    let total = IntCounterVec::new(
        Opts::new(EVENTS_TOTAL, "Events emitted, by type."),
        &["event_type"],
    )?;
    registry.register(Box::new(total.clone()))?;
    let types: BTreeSet<&str> = KNOWN_EVENT_TYPES
        .iter()
        .copied()
        .chain(carried.events_total.keys().map(String::as_str))
        .collect();
    for event_type in types {
        let n = carried.events_total.get(event_type).copied().unwrap_or(0);
        total.with_label_values(&[event_type]).inc_by(n);
    }
    Ok(())
}

/// Writes `text` as `dir/detect_workloads.prom`, atomically (see the module doc).
pub fn write_textfile(dir: &Path, text: &str) -> Result<(), String> {
    let target = dir.join(FILE_NAME);
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", target.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".detect_workloads.prom.")
        .tempfile_in(dir)
        .map_err(fail)?;
    let file = tmp.as_file_mut();
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    tmp.persist(&target).map_err(|e| fail(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)
}

/// Serves `GET /metrics` (and `HEAD`) on `listener` with the latest text
/// published on `metrics`, one short-lived connection at a time per task,
/// until the listener fails. A long-lived mode starts it with the receiver
/// of [`PrometheusSink::subscribe`].
pub async fn serve(listener: TcpListener, metrics: watch::Receiver<String>) -> std::io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors and the like: wait, then go on serving.
            Err(e) if e.kind() != ErrorKind::InvalidInput => {
                warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let body = metrics.borrow().clone() + &process_metrics();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &body).await {
                debug!(%peer, "metrics request: {e}");
            }
        });
    }
}

/// The scanner's own `process_*` metrics (CPU seconds, resident memory,
/// open descriptors, start time), read from `/proc/self` now; empty where
/// they cannot be read.
pub fn process_metrics() -> String {
    let registry = Registry::new();
    let collector = prometheus::process_collector::ProcessCollector::for_self();
    if let Err(e) = registry.register(Box::new(collector)) {
        debug!("process metrics: {e}");
        return String::new();
    }
    TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|e| {
            debug!("process metrics: {e}");
            String::new()
        })
}

/// Binds `addr`, trying again for a few seconds while the address is still
/// held (by the listener of the configuration a reload just replaced).
async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr).await {
            Err(e) if e.kind() == ErrorKind::AddrInUse && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// The most a request head may take; metrics requests are small.
const MAX_REQUEST_HEAD: usize = 8192;

async fn answer(mut stream: TcpStream, body: &str) -> std::io::Result<()> {
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(ErrorKind::TimedOut, "request head timed out"))??;
    stream.write_all(&respond(&head, body)).await?;
    stream.shutdown().await
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST_HEAD {
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                "request too large",
            ));
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// The HTTP/1.1 response to a request head.
fn respond(head: &str, body: &str) -> Vec<u8> {
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let method = words.next().unwrap_or_default();
    let path = words.next().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    let (status, content_type, body, with_body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", CONTENT_TYPE, body, true),
        ("HEAD", "/metrics") => ("200 OK", CONTENT_TYPE, body, false),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n", true),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n", true),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

/// The `prometheus` sink.
#[derive(Debug)]
pub struct PrometheusSink {
    textfile_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    /// `None` until the first delivery reads it back from the textfile.
    carried: Mutex<Option<Carried>>,
    feed: watch::Sender<String>,
}

impl PrometheusSink {
    /// A sink writing into `textfile_dir` and/or publishing for `listen`.
    pub fn new(textfile_dir: Option<PathBuf>, listen: Option<SocketAddr>) -> Self {
        Self {
            textfile_dir,
            listen,
            carried: Mutex::new(None),
            feed: watch::channel(String::new()).0,
        }
    }

    /// The address watch mode should serve `/metrics` on, when configured.
    pub fn listen(&self) -> Option<SocketAddr> {
        self.listen
    }

    /// The latest metrics text, updated at every delivery (for [`serve`]).
    pub fn subscribe(&self) -> watch::Receiver<String> {
        self.feed.subscribe()
    }

    fn previous(&self) -> Carried {
        let Some(dir) = &self.textfile_dir else {
            return Carried::default();
        };
        match std::fs::read_to_string(dir.join(FILE_NAME)) {
            Ok(text) => Carried::from_exposition(&text),
            Err(e) if e.kind() == ErrorKind::NotFound => Carried::default(),
            Err(e) => {
                warn!(
                    "cannot read the previous metrics in {}: {e}; counters restart",
                    dir.display()
                );
                Carried::default()
            }
        }
    }

    fn advance(&self, out: &ScanOutput<'_>) -> Result<Carried, SinkError> {
        let mut guard = self
            .carried
            .lock()
            .map_err(|_| SinkError::new("the metrics state was poisoned"))?;
        let carried = guard.get_or_insert_with(|| self.previous());
        carried.advance(out.inventory, out.events);
        Ok(carried.clone())
    }
}

#[async_trait]
impl Sink for PrometheusSink {
    async fn deliver(&self, out: &ScanOutput<'_>) -> Result<(), SinkError> {
        let carried = self.advance(out)?;
        let text = render(out.inventory, &carried)
            .map_err(|e| SinkError::new(format!("cannot render the metrics: {e}")))?;
        if let Some(dir) = &self.textfile_dir {
            write_textfile(dir, &text).map_err(SinkError::new)?;
        }
        self.feed.send_replace(text);
        Ok(())
    }

    fn describe(&self) -> String {
        let textfile = self.textfile_dir.as_ref().map(|d| {
            format!(
                "writes {} atomically (mode 0644)",
                d.join(FILE_NAME).display()
            )
        });
        let listen = self
            .listen
            .map(|a| format!("serves http://{a}/metrics (watch mode only)"));
        [textfile, listen]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn service(&self) -> Option<SinkService> {
        let addr = self.listen?;
        let metrics = self.subscribe();
        Some(Box::pin(async move {
            let listener = bind(addr)
                .await
                .map_err(|e| SinkError::io(format!("cannot listen on {addr}"), e))?;
            info!("serving /metrics on {addr}");
            serve(listener, metrics)
                .await
                .map_err(|e| SinkError::io(format!("listener on {addr}"), e))
        }))
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Sink>, ConfigError> {
    let parsed: PrometheusConfig = config.parse()?;
    match (&parsed.textfile_dir, parsed.listen) {
        (None, None) => Err(config.invalid(
            "textfile_dir",
            "set textfile_dir (node_exporter's textfile directory) or listen (watch mode)",
        )),
        (Some(dir), _) if dir.as_os_str().is_empty() => {
            Err(config.invalid("textfile_dir", "must not be empty"))
        }
        _ => Ok(Box::new(PrometheusSink::new(
            parsed.textfile_dir,
            parsed.listen,
        ))),
    }
}

detect_workloads_core::inventory::submit! {
    SinkPlugin {
        name: "prometheus",
        summary: "writes metrics for node_exporter's textfile collector (watch mode: serves /metrics)",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detect_workloads_core::model::{
        CollectorReport, ContainerEntry, ContainerGpuProcess, EventType, ProcessEntry, ScanReport,
    };

    const GPU0: &str = "GPU-0000";
    const GPU1: &str = "GPU-1111";

    fn container(id: &str, name: &str, user: &str) -> ContainerEntry {
        ContainerEntry {
            id: id.to_string(),
            name: name.to_string(),
            origin: "ds01-managed".to_string(),
            user: user.to_string(),
            status: "running".to_string(),
            ..Default::default()
        }
    }

    fn gpu_process(uuid: &str, mib: Option<u64>) -> ContainerGpuProcess {
        ContainerGpuProcess {
            pid: 4242,
            user: "root".to_string(),
            cmdline: "python train.py --secret".to_string(),
            gpu_uuid: uuid.to_string(),
            gpu_memory_mb: mib,
            ..Default::default()
        }
    }

    fn host_process(pid: u32, user: &str, mib: u64, detected_at: &str) -> ProcessEntry {
        ProcessEntry {
            pid,
            user: user.to_string(),
            cmdline: "./burn".to_string(),
            gpu_memory_mb: Some(mib),
            gpu_uuid: GPU1.to_string(),
            detected_at: detected_at.to_string(),
            ..Default::default()
        }
    }

    fn report(ok: bool, ms: u64) -> CollectorReport {
        CollectorReport {
            ok,
            duration_ms: ms,
            error: (!ok).then(|| "boom".to_string()),
            ..Default::default()
        }
    }

    /// Two containers (one with two processes on two GPUs, one not granted a
    /// GPU it uses), two host processes of one user, two collectors.
    fn small_inventory() -> Inventory {
        let mut a = container("aaaaaaaaaaaa", "train", "alice");
        a.has_gpu = true;
        a.gpu_in_use = true;
        a.gpu_processes = vec![gpu_process(GPU0, Some(1024)), gpu_process(GPU1, None)];
        a.gpu_uuids = vec![GPU0.to_string(), GPU1.to_string()];
        let mut b = container("bbbbbbbbbbbb", "sneaky", "bob");
        b.origin = "raw-docker".to_string();
        b.gpu_in_use = true;
        b.gpu_processes = vec![gpu_process(GPU1, Some(2))];
        b.gpu_uuids = vec![GPU1.to_string()];
        b.gpu_mismatch = Some(GpuMismatch::NotGranted);
        let mut inv = Inventory {
            last_scan: "2026-01-01T00:00:10Z".to_string(),
            ..Default::default()
        };
        inv.containers.insert(a.id.clone(), a);
        inv.containers.insert(b.id.clone(), b);
        inv.host_processes
            .insert(7, host_process(7, "carol", 100, "2026-01-01T00:00:05Z"));
        inv.host_processes
            .insert(8, host_process(8, "carol", 50, "2026-01-01T00:00:01Z"));
        inv.scan = Some(ScanReport {
            started_at: "2026-01-01T00:00:10Z".to_string(),
            duration_ms: 1500,
            collectors: [
                ("docker".to_string(), report(true, 250)),
                ("nvidia-smi".to_string(), report(false, 3000)),
            ]
            .into_iter()
            .collect(),
        });
        inv
    }

    const SMALL: &str = r#"# HELP ds01_workload_collector_duration_seconds How long the collector took in the last scan.
# TYPE ds01_workload_collector_duration_seconds gauge
ds01_workload_collector_duration_seconds{collector="docker"} 0.25
ds01_workload_collector_duration_seconds{collector="nvidia-smi"} 3
# HELP ds01_workload_collector_last_success_timestamp_seconds When the collector last succeeded (start of that scan).
# TYPE ds01_workload_collector_last_success_timestamp_seconds gauge
ds01_workload_collector_last_success_timestamp_seconds{collector="docker"} 1767225610
ds01_workload_collector_last_success_timestamp_seconds{collector="nvidia-smi"} 1000
# HELP ds01_workload_collector_up 1 when the collector succeeded (or was not needed) in the last scan.
# TYPE ds01_workload_collector_up gauge
ds01_workload_collector_up{collector="docker"} 1
ds01_workload_collector_up{collector="nvidia-smi"} 0
# HELP ds01_workload_container_gpu_in_use 1 when a process in the container uses a GPU (containers with GPU access or use).
# TYPE ds01_workload_container_gpu_in_use gauge
ds01_workload_container_gpu_in_use{container="sneaky",container_id="bbbbbbbbbbbb",user="bob"} 1
ds01_workload_container_gpu_in_use{container="train",container_id="aaaaaaaaaaaa",user="alice"} 1
# HELP ds01_workload_container_gpu_memory_bytes GPU memory held by the processes of a container, by GPU.
# TYPE ds01_workload_container_gpu_memory_bytes gauge
ds01_workload_container_gpu_memory_bytes{UUID="GPU-0000",container="train",container_id="aaaaaaaaaaaa",user="alice"} 1073741824
ds01_workload_container_gpu_memory_bytes{UUID="GPU-1111",container="sneaky",container_id="bbbbbbbbbbbb",user="bob"} 2097152
ds01_workload_container_gpu_memory_bytes{UUID="GPU-1111",container="train",container_id="aaaaaaaaaaaa",user="alice"} 0
# HELP ds01_workload_containers Containers the engine lists, by origin, status, user and GPU access.
# TYPE ds01_workload_containers gauge
ds01_workload_containers{has_gpu="false",origin="raw-docker",status="running",user="bob"} 1
ds01_workload_containers{has_gpu="true",origin="ds01-managed",status="running",user="alice"} 1
# HELP ds01_workload_events_total Events emitted, by type.
# TYPE ds01_workload_events_total counter
ds01_workload_events_total{event_type="detection.container_discovered"} 0
ds01_workload_events_total{event_type="detection.container_exited"} 0
ds01_workload_events_total{event_type="detection.container_gpu_mismatch"} 0
ds01_workload_events_total{event_type="detection.container_gpu_started"} 0
ds01_workload_events_total{event_type="detection.container_gpu_stopped"} 0
ds01_workload_events_total{event_type="detection.container_status_changed"} 0
ds01_workload_events_total{event_type="detection.host_gpu_process_discovered"} 0
ds01_workload_events_total{event_type="detection.host_gpu_process_exited"} 0
# HELP ds01_workload_gpu_memory_bytes GPU memory attributed to containers and host processes, by GPU.
# TYPE ds01_workload_gpu_memory_bytes gauge
ds01_workload_gpu_memory_bytes{UUID="GPU-0000"} 1073741824
ds01_workload_gpu_memory_bytes{UUID="GPU-1111"} 159383552
# HELP ds01_workload_gpu_mismatch 1 for each GPU a container uses without being granted it.
# TYPE ds01_workload_gpu_mismatch gauge
ds01_workload_gpu_mismatch{UUID="GPU-1111",container="sneaky",container_id="bbbbbbbbbbbb",reason="not-granted",user="bob"} 1
# HELP ds01_workload_host_gpu_memory_bytes GPU memory held by processes outside containers, by user and GPU.
# TYPE ds01_workload_host_gpu_memory_bytes gauge
ds01_workload_host_gpu_memory_bytes{UUID="GPU-1111",user="carol"} 157286400
# HELP ds01_workload_host_gpu_process_started_timestamp_seconds When the oldest host GPU process of a user on a GPU was first seen.
# TYPE ds01_workload_host_gpu_process_started_timestamp_seconds gauge
ds01_workload_host_gpu_process_started_timestamp_seconds{UUID="GPU-1111",user="carol"} 1767225601
# HELP ds01_workload_host_gpu_processes Confirmed GPU processes outside containers, by user.
# TYPE ds01_workload_host_gpu_processes gauge
ds01_workload_host_gpu_processes{user="carol"} 2
# HELP ds01_workload_scan_duration_seconds How long the last scan took.
# TYPE ds01_workload_scan_duration_seconds gauge
ds01_workload_scan_duration_seconds 1.5
# HELP ds01_workload_scan_timestamp_seconds When the last scan started.
# TYPE ds01_workload_scan_timestamp_seconds gauge
ds01_workload_scan_timestamp_seconds 1767225610
# HELP ds01_workload_user_gpu_memory_bytes GPU memory held by a user's containers and host processes.
# TYPE ds01_workload_user_gpu_memory_bytes gauge
ds01_workload_user_gpu_memory_bytes{user="alice"} 1073741824
ds01_workload_user_gpu_memory_bytes{user="bob"} 2097152
ds01_workload_user_gpu_memory_bytes{user="carol"} 157286400
"#;

    #[test]
    fn render_small_inventory_exactly() {
        let mut carried = Carried::default();
        carried
            .last_success
            .insert("nvidia-smi".to_string(), 1000.0);
        carried.advance(&small_inventory(), &[]);
        let text = render(&small_inventory(), &carried).expect("render");
        assert_eq!(text, SMALL, "got:\n{text}");
    }

    #[test]
    fn hostile_names_are_escaped_and_read_back() {
        let user = "ev\"il\\us\ner} 1\n# HELP x";
        let mut inv = Inventory::default();
        inv.host_processes
            .insert(7, host_process(7, user, 1, "2026-01-01T00:00:05Z"));
        let text = render(&inv, &Carried::default()).expect("render");
        assert!(
            text.contains(
                r#"ds01_workload_host_gpu_processes{user="ev\"il\\us\ner} 1\n# HELP x"} 1"#
            ),
            "{text}"
        );
        assert!(
            !text.contains("4242") && !text.contains("burn"),
            "PID or command line leaked: {text}"
        );
        let sample = text
            .lines()
            .filter_map(parse_sample)
            .find(|(name, _, _)| *name == "ds01_workload_host_gpu_processes")
            .expect("sample parsed");
        assert_eq!(sample.1, vec![("user".to_string(), user.to_string())]);
        assert_eq!(sample.2, 1.0);
    }

    fn event(event_type: EventType) -> Event {
        Event {
            timestamp: String::new(),
            event_type,
            user: String::new(),
            details: serde_json::Value::Null,
        }
    }

    #[test]
    fn carried_values_survive_a_round_trip_through_the_file() {
        let inv = small_inventory();
        let mut carried = Carried::default();
        carried.advance(
            &inv,
            &[
                event(EventType::ContainerDiscovered),
                event(EventType::ContainerDiscovered),
                event(EventType::ContainerExited),
            ],
        );
        let text = render(&inv, &carried).expect("render");
        let mut again = Carried::from_exposition(&text);
        assert_eq!(again.last_success, carried.last_success);
        assert_eq!(render(&inv, &again).expect("render again"), text);
        again.advance(&inv, &[event(EventType::ContainerDiscovered)]);
        assert_eq!(again.events_total["detection.container_discovered"], 3);
        assert_eq!(again.events_total["detection.container_exited"], 1);
    }

    #[test]
    fn last_success_is_kept_through_failures_and_forgotten_with_the_collector() {
        let mut inv = small_inventory();
        let mut carried = Carried::default();
        carried.advance(&inv, &[]);
        assert_eq!(carried.last_success.get("docker"), Some(&1767225610.0));
        assert_eq!(carried.last_success.get("nvidia-smi"), None);
        let scan = inv.scan.as_mut().expect("scan");
        scan.started_at = "2026-01-01T00:01:10Z".to_string();
        scan.collectors
            .insert("docker".to_string(), report(false, 1));
        let mut skipped = report(true, 0);
        skipped.skipped = Some("nvml succeeded".to_string());
        scan.collectors.insert("nvidia-smi".to_string(), skipped);
        carried.advance(&inv, &[]);
        assert_eq!(carried.last_success.get("docker"), Some(&1767225610.0));
        assert_eq!(carried.last_success.get("nvidia-smi"), None);
        inv.scan.as_mut().expect("scan").collectors.remove("docker");
        carried.advance(&inv, &[]);
        assert!(carried.last_success.is_empty(), "{carried:?}");
    }

    #[test]
    fn unparsable_lines_are_ignored() {
        let carried = Carried::from_exposition(
            "ds01_workload_events_total{event_type=\"a\"} 5\n\
             ds01_workload_events_total{event_type=\"b\"} -1\n\
             ds01_workload_events_total{event_type=\"c\" 5\n\
             ds01_workload_events_total{other=\"d\"} 5\n\
             garbage\n# comment\n",
        );
        assert_eq!(
            carried.events_total,
            [("a".to_string(), 5)].into_iter().collect()
        );
    }

    #[test]
    fn textfile_is_replaced_atomically_with_mode_0644() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_textfile(dir.path(), "a 1\n").expect("first");
        write_textfile(dir.path(), "a 2\n").expect("second");
        let path = dir.path().join(FILE_NAME);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "a 2\n");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o7777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)]);
        let missing = write_textfile(&dir.path().join("nope"), "a 1\n");
        assert!(missing.is_err_and(|e| e.contains("nope")));
    }

    #[test]
    fn http_answers() {
        let ok = String::from_utf8(respond(
            "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
            "m 1\n",
        ))
        .expect("utf8");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(CONTENT_TYPE) && ok.contains("Content-Length: 4\r\n"),
            "{ok}"
        );
        assert!(ok.ends_with("\r\n\r\nm 1\n"), "{ok}");
        let head =
            String::from_utf8(respond("HEAD /metrics HTTP/1.1\r\n\r\n", "m 1\n")).expect("utf8");
        assert!(
            head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let missing = String::from_utf8(respond("GET / HTTP/1.1\r\n\r\n", "m 1\n")).expect("utf8");
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post =
            String::from_utf8(respond("POST /metrics HTTP/1.1\r\n\r\n", "m 1\n")).expect("utf8");
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    }

    #[test]
    fn serve_publishes_each_delivery_over_loopback() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let sink = PrometheusSink::new(None, None);
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let server = tokio::spawn(serve(listener, sink.subscribe()));
            let agent = detect_workloads_core::config::AgentConfig::default();
            let inv = small_inventory();
            let events = [event(EventType::ContainerDiscovered)];
            for expected in ["1", "2"] {
                let out = ScanOutput { inventory: &inv, events: &events, agent: &agent };
                sink.deliver(&out).await.expect("deliver");
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                stream
                    .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    .await
                    .expect("send");
                let mut response = String::new();
                stream.read_to_string(&mut response).await.expect("read");
                assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
                let line = format!(
                    "ds01_workload_events_total{{event_type=\"detection.container_discovered\"}} {expected}\n"
                );
                assert!(response.contains(&line), "{response}");
                assert!(response.contains("ds01_workload_user_gpu_memory_bytes{user=\"alice\"} 1073741824\n"));
            }
            server.abort();
        });
    }
}
