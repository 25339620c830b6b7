//! Rendering: the metrics of one inventory in the classic text format
//! (version 0.0.4), written by the `prometheus` crate, which also escapes
//! label values (user and container names are outside data). Pure: no I/O
//! but reading `/proc/self` for [`process_metrics`].
//!
//! Only gauges and counters, names prefixed `ds01_workload_` (and the
//! exporter-style `detect_workloads_build_info`), no PIDs or command lines as
//! labels, GPUs labelled `UUID` as dcgm-exporter labels them (see [`render`]
//! for the list; docs/prometheus.md documents each with its labels).

use std::collections::{BTreeMap, BTreeSet};

use detect_workloads_api::model::{Activity, CollectorReport, GpuMismatch, Inventory};
use detect_workloads_api::timefmt::Timestamp;
use prometheus::{CounterVec, Gauge, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};
use tracing::debug;

use super::carried::Carried;

/// The content type of the classic text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The event types of docs/formats.md: their counters exist (at 0) from
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
    "detection.user_gpu_use_started",
    "detection.user_gpu_use_stopped",
    "detection.workload_idle",
    "detection.workload_active",
];

/// The program's version, as `detect_workloads_build_info{version}` says it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

const MIB: f64 = 1024.0 * 1024.0;
const EVENTS_TOTAL: &str = "ds01_workload_events_total";
const LAST_SUCCESS: &str = "ds01_workload_collector_last_success_timestamp_seconds";

/// How a collector did in the last scan, as `ds01_workload_collector_state`
/// says it: exactly one state is 1 per collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectorState {
    /// It collected.
    Ok,
    /// A fallback that did not need to run.
    Skipped,
    /// Its source is not on this machine (no library, socket or command):
    /// not installed, not broken. No alert fires on it.
    Unavailable,
    /// It failed or timed out: the failure alert fires on it.
    Failed,
}

impl CollectorState {
    /// Every state, in the order they are exported.
    pub const ALL: [CollectorState; 4] = [
        CollectorState::Ok,
        CollectorState::Skipped,
        CollectorState::Unavailable,
        CollectorState::Failed,
    ];

    /// The state of a collector's report.
    pub fn of(report: &CollectorReport) -> Self {
        match (report.ok, report.skipped.is_some(), report.unavailable) {
            (true, true, _) => CollectorState::Skipped,
            (true, false, _) => CollectorState::Ok,
            (false, _, true) => CollectorState::Unavailable,
            (false, _, false) => CollectorState::Failed,
        }
    }

    /// Its `state` label.
    pub fn label(self) -> &'static str {
        match self {
            CollectorState::Ok => "ok",
            CollectorState::Skipped => "skipped",
            CollectorState::Unavailable => "unavailable",
            CollectorState::Failed => "failed",
        }
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
/// - `ds01_workload_short_lived_gpu_use{user,UUID}`: 1 while a user's GPU
///   use by short-lived processes is confirmed (`user_gpu_use`; its memory
///   counts in the host and user memory gauges);
/// - `ds01_workload_container_gpu_utilization_ratio{container,container_id,user}`,
///   `ds01_workload_container_cpu_cores{...}`, `ds01_workload_container_idle_seconds{...}`:
///   a running container's `activity` (see `container_activity`);
/// - `ds01_workload_host_gpu_process_utilization_ratio{user,UUID}`,
///   `..._cpu_cores{user,UUID}`, `..._idle_seconds{user,UUID}`: the same for
///   the host GPU processes of a user on a GPU (see `host_activity`);
/// - `ds01_workload_user_gpu_memory_bytes{user}`: GPU memory by user
///   (a container's processes count for the container's user);
/// - `ds01_workload_gpu_memory_bytes{UUID}`: attributed GPU memory by GPU;
/// - `ds01_workload_collector_up{collector}`, `..._duration_seconds{collector}`,
///   `..._last_success_timestamp_seconds{collector}` (carried);
/// - `ds01_workload_collector_state{collector,state}`: 1 for the state of
///   each collector in the last scan (`ok`, `skipped`, `unavailable`,
///   `failed`; see [`CollectorState`]), 0 for the others;
/// - `detect_workloads_build_info{version}`: 1;
/// - `ds01_workload_scan_duration_seconds`, `ds01_workload_scan_timestamp_seconds`.
///
/// Counters (carried, [`Carried`]): `ds01_workload_events_total{event_type}`,
/// `ds01_workload_user_gpu_seconds_held_total{user}` and
/// `ds01_workload_user_gpu_seconds_idle_total{user}`.
pub fn render(inventory: &Inventory, carried: &Carried) -> Result<String, prometheus::Error> {
    let registry = Registry::new();
    containers(&registry, inventory)?;
    gpu_memory(&registry, inventory)?;
    host_processes(&registry, inventory)?;
    container_activity(&registry, inventory)?;
    host_activity(&registry, inventory)?;
    scan_health(&registry, inventory, carried)?;
    events(&registry, carried)?;
    gpu_seconds(&registry, carried)?;
    build_info(&registry)?;
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
    for u in &inv.user_gpu_use {
        let b = bytes(u.gpu_memory_mb);
        by_user.with_label_values(&[&u.user]).add(b);
        by_gpu.with_label_values(&[&u.gpu_uuid]).add(b);
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
        let t = p.detected_at.unix_seconds();
        let entry = oldest.entry((&p.user, &p.gpu_uuid)).or_insert(t);
        *entry = (*entry).min(t);
    }
    for ((user, uuid), t) in oldest {
        started.with_label_values(&[user, uuid]).set(t as f64);
    }
    let sliced = gauge_vec(
        registry,
        "ds01_workload_short_lived_gpu_use",
        "1 while a user's short-lived host processes hold GPU memory on a GPU scan after scan.",
        &["user", "UUID"],
    )?;
    for u in &inv.user_gpu_use {
        sliced.with_label_values(&[&u.user, &u.gpu_uuid]).set(1.0);
        memory
            .with_label_values(&[&u.user, &u.gpu_uuid])
            .add(bytes(u.gpu_memory_mb));
    }
    Ok(())
}

/// A number fit for a sample: finite, else none.
fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite())
}

/// GPU utilisation as a ratio (0..1) from a percentage.
fn ratio(percent: Option<f64>) -> Option<f64> {
    finite(percent).map(|p| (p / 100.0).clamp(0.0, 1.0))
}

/// How long a workload has been idle at `now` (the scan's start): 0 while
/// active (no `idle_since`), none when `now` is not known.
fn idle_seconds(activity: &Activity, now: Option<Timestamp>) -> Option<f64> {
    match activity.idle_since {
        None => Some(0.0),
        Some(since) => Some(now?.seconds_since(since).max(0) as f64),
    }
}

/// The activity of each running container (one with `activity`), labelled
/// as its other series: GPU utilisation as a ratio (no series while it
/// holds no GPU memory or its utilisation is unknown, never 0 for unknown),
/// CPU cores (none at its first reading), and for how long it has been idle
/// (0 while active).
fn container_activity(registry: &Registry, inv: &Inventory) -> Result<(), prometheus::Error> {
    let labels = &["container", "container_id", "user"];
    let util = gauge_vec(
        registry,
        "ds01_workload_container_gpu_utilization_ratio",
        "GPU utilisation (0-1) of a running container holding GPU memory, when known.",
        labels,
    )?;
    let cores = gauge_vec(
        registry,
        "ds01_workload_container_cpu_cores",
        "Average CPU cores a running container used since the previous scan.",
        labels,
    )?;
    let idle = gauge_vec(
        registry,
        "ds01_workload_container_idle_seconds",
        "For how long a running container has been idle at the scan's start (0 while active).",
        labels,
    )?;
    let now = inv.last_scan;
    for c in inv.containers.values() {
        let Some(a) = &c.activity else { continue };
        let values = [&c.name, &c.id, &c.user];
        if let Some(r) = ratio(a.gpu_util_percent) {
            util.with_label_values(&values).set(r);
        }
        if let Some(n) = finite(a.cpu_cores) {
            cores.with_label_values(&values).set(n);
        }
        if let Some(s) = idle_seconds(a, now) {
            idle.with_label_values(&values).set(s);
        }
    }
    Ok(())
}

/// What the host GPU processes of one user on one GPU did, together.
#[derive(Default)]
struct HostGroup {
    /// The highest utilisation, while every one is known.
    util: Option<Option<f64>>,
    /// The sum of their cores, while every one is known.
    cores: Option<Option<f64>>,
    /// The shortest idle time of those with a known one.
    idle: Option<f64>,
}

/// Folds one more known-or-unknown value into "every one known" `acc`.
fn every(
    acc: Option<Option<f64>>,
    v: Option<f64>,
    fold: fn(f64, f64) -> f64,
) -> Option<Option<f64>> {
    Some(match (acc, v) {
        (None, v) => v,
        (Some(Some(a)), Some(v)) => Some(fold(a, v)),
        (Some(_), _) => None,
    })
}

/// The activity of the host GPU processes of each user on each GPU, labelled
/// as their memory (no PIDs as labels): the highest GPU utilisation as a
/// ratio and the sum of their CPU cores, each only when every one of them
/// is known; for how long they have been idle, the shortest (0 while one of
/// them is active). A process without `activity` is left out.
fn host_activity(registry: &Registry, inv: &Inventory) -> Result<(), prometheus::Error> {
    let labels = &["user", "UUID"];
    let util = gauge_vec(
        registry,
        "ds01_workload_host_gpu_process_utilization_ratio",
        "Highest GPU utilisation (0-1) of a user's host GPU processes on a GPU, when each is known.",
        labels,
    )?;
    let cores = gauge_vec(
        registry,
        "ds01_workload_host_gpu_process_cpu_cores",
        "CPU cores a user's host GPU processes on a GPU used since the previous scan, when each is known.",
        labels,
    )?;
    let idle = gauge_vec(
        registry,
        "ds01_workload_host_gpu_process_idle_seconds",
        "For how long all of a user's host GPU processes on a GPU have been idle at the scan's start (0 while one is active).",
        labels,
    )?;
    let now = inv.last_scan;
    let mut groups: BTreeMap<(&str, &str), HostGroup> = BTreeMap::new();
    for p in inv.host_processes.values() {
        let Some(a) = &p.activity else { continue };
        let g = groups.entry((&p.user, &p.gpu_uuid)).or_default();
        g.util = every(g.util, ratio(a.gpu_util_percent), f64::max);
        g.cores = every(g.cores, finite(a.cpu_cores), |x, y| x + y);
        if let Some(s) = idle_seconds(a, now) {
            g.idle = Some(g.idle.map_or(s, |i| i.min(s)));
        }
    }
    for ((user, uuid), g) in groups {
        let values = [user, uuid];
        if let Some(Some(r)) = g.util {
            util.with_label_values(&values).set(r);
        }
        if let Some(Some(n)) = g.cores {
            cores.with_label_values(&values).set(n);
        }
        if let Some(s) = g.idle {
            idle.with_label_values(&values).set(s);
        }
    }
    Ok(())
}

/// Each user's GPU-seconds held and held idle, exited workloads included
/// (carried: see [`Carried`]).
fn gpu_seconds(registry: &Registry, carried: &Carried) -> Result<(), prometheus::Error> {
    let held = CounterVec::new(
        Opts::new(
            "ds01_workload_user_gpu_seconds_held_total",
            "GPU-seconds held by a user's workloads (GPUs on which they hold memory x seconds), exited ones included.",
        ),
        &["user"],
    )?;
    registry.register(Box::new(held.clone()))?;
    let idle = CounterVec::new(
        Opts::new(
            "ds01_workload_user_gpu_seconds_idle_total",
            "GPU-seconds held by a user's workloads while idle, exited ones included.",
        ),
        &["user"],
    )?;
    registry.register(Box::new(idle.clone()))?;
    for (user, usage) in &carried.gpu_seconds {
        held.with_label_values(&[user])
            .inc_by(finite(Some(usage.gpu_seconds_held)).unwrap_or(0.0).max(0.0));
        idle.with_label_values(&[user])
            .inc_by(finite(Some(usage.gpu_seconds_idle)).unwrap_or(0.0).max(0.0));
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
    let state = gauge_vec(
        registry,
        "ds01_workload_collector_state",
        "1 for how the collector did in the last scan: ok, skipped (a fallback not needed), \
         unavailable (its source is not on this machine) or failed.",
        &["collector", "state"],
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
    if let Some(t) = inv.last_scan {
        scan_time.set(t.unix_seconds() as f64);
    }
    let Some(scan) = &inv.scan else {
        return Ok(());
    };
    scan_duration.set(scan.duration_ms as f64 / 1000.0);
    for (name, report) in &scan.collectors {
        let now = CollectorState::of(report);
        for s in CollectorState::ALL {
            state
                .with_label_values(&[name, s.label()])
                .set(f64::from(u8::from(s == now)));
        }
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

fn build_info(registry: &Registry) -> Result<(), prometheus::Error> {
    let info = gauge_vec(
        registry,
        "detect_workloads_build_info",
        "1, labelled with the version of detect-workloads that wrote these metrics.",
        &["version"],
    )?;
    info.with_label_values(&[VERSION]).set(1.0);
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use detect_workloads_api::model::{
        ContainerEntry, ContainerGpuProcess, ProcessEntry, ScanReport, Usage,
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
            detected_at: detected_at.parse().expect("time"),
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
            last_scan: "2026-01-01T00:00:10Z".parse().ok(),
            ..Default::default()
        };
        inv.containers.insert(a.id.clone(), a);
        inv.containers.insert(b.id.clone(), b);
        inv.host_processes
            .insert(7, host_process(7, "carol", 100, "2026-01-01T00:00:05Z"));
        inv.host_processes
            .insert(8, host_process(8, "carol", 50, "2026-01-01T00:00:01Z"));
        inv.scan = Some(ScanReport {
            started_at: "2026-01-01T00:00:10Z".parse().expect("time"),
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

    const SMALL: &str = r#"# HELP detect_workloads_build_info 1, labelled with the version of detect-workloads that wrote these metrics.
# TYPE detect_workloads_build_info gauge
detect_workloads_build_info{version="0.1.0"} 1
# HELP ds01_workload_collector_duration_seconds How long the collector took in the last scan.
# TYPE ds01_workload_collector_duration_seconds gauge
ds01_workload_collector_duration_seconds{collector="docker"} 0.25
ds01_workload_collector_duration_seconds{collector="nvidia-smi"} 3
# HELP ds01_workload_collector_last_success_timestamp_seconds When the collector last succeeded (start of that scan).
# TYPE ds01_workload_collector_last_success_timestamp_seconds gauge
ds01_workload_collector_last_success_timestamp_seconds{collector="docker"} 1767225610
ds01_workload_collector_last_success_timestamp_seconds{collector="nvidia-smi"} 1000
# HELP ds01_workload_collector_state 1 for how the collector did in the last scan: ok, skipped (a fallback not needed), unavailable (its source is not on this machine) or failed.
# TYPE ds01_workload_collector_state gauge
ds01_workload_collector_state{collector="docker",state="failed"} 0
ds01_workload_collector_state{collector="docker",state="ok"} 1
ds01_workload_collector_state{collector="docker",state="skipped"} 0
ds01_workload_collector_state{collector="docker",state="unavailable"} 0
ds01_workload_collector_state{collector="nvidia-smi",state="failed"} 1
ds01_workload_collector_state{collector="nvidia-smi",state="ok"} 0
ds01_workload_collector_state{collector="nvidia-smi",state="skipped"} 0
ds01_workload_collector_state{collector="nvidia-smi",state="unavailable"} 0
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
ds01_workload_events_total{event_type="detection.user_gpu_use_started"} 0
ds01_workload_events_total{event_type="detection.user_gpu_use_stopped"} 0
ds01_workload_events_total{event_type="detection.workload_active"} 0
ds01_workload_events_total{event_type="detection.workload_idle"} 0
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
# HELP ds01_workload_user_gpu_seconds_held_total GPU-seconds held by a user's workloads (GPUs on which they hold memory x seconds), exited ones included.
# TYPE ds01_workload_user_gpu_seconds_held_total counter
ds01_workload_user_gpu_seconds_held_total{user="alice"} 0
ds01_workload_user_gpu_seconds_held_total{user="bob"} 0
ds01_workload_user_gpu_seconds_held_total{user="carol"} 0
# HELP ds01_workload_user_gpu_seconds_idle_total GPU-seconds held by a user's workloads while idle, exited ones included.
# TYPE ds01_workload_user_gpu_seconds_idle_total counter
ds01_workload_user_gpu_seconds_idle_total{user="alice"} 0
ds01_workload_user_gpu_seconds_idle_total{user="bob"} 0
ds01_workload_user_gpu_seconds_idle_total{user="carol"} 0
"#;

    #[test]
    fn render_small_inventory_exactly() {
        let mut carried = Carried::default();
        carried
            .last_success
            .insert("nvidia-smi".to_string(), 1000.0);
        carried.advance(&small_inventory(), &[]);
        let text = render(&small_inventory(), &carried).expect("render");
        assert_eq!(
            text,
            SMALL.replace("\"0.1.0\"", &format!("\"{VERSION}\"")),
            "got:\n{text}"
        );
    }

    #[test]
    fn hostile_names_are_escaped() {
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
    }

    /// The value of the sample line starting with `series` (name and labels).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Whether any sample line of `name` is in `text`.
    fn has_series(text: &str, name: &str) -> bool {
        text.lines()
            .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
    }

    fn activity(util: Option<f64>, cores: Option<f64>, idle_since: Option<&str>) -> Activity {
        Activity {
            cpu_cores: cores,
            net_bytes_per_s: None,
            gpu_util_percent: util,
            sampled_s: Some(30.0),
            idle_since: idle_since.map(|t| t.parse().expect("time")),
            idle: false,
        }
    }

    fn usage(held: f64, idle: f64) -> Usage {
        Usage {
            gpu_seconds_held: held,
            gpu_seconds_idle: idle,
        }
    }

    /// `small_inventory` with activity: `train` (alice) busy on the GPU, `sneaky`
    /// (bob) with its GPU utilisation unknown, carol's two host processes on
    /// GPU1 (the scan starts at 00:00:10).
    fn active_inventory() -> Inventory {
        let mut inv = small_inventory();
        let train = inv.containers.get_mut("aaaaaaaaaaaa").expect("train");
        train.activity = Some(activity(Some(87.5), Some(1.5), None));
        let sneaky = inv.containers.get_mut("bbbbbbbbbbbb").expect("sneaky");
        sneaky.activity = Some(activity(None, Some(0.25), None));
        for p in inv.host_processes.values_mut() {
            p.activity = Some(activity(Some(3.0), Some(0.5), None));
        }
        inv
    }

    const TRAIN: &str = r#"{container="train",container_id="aaaaaaaaaaaa",user="alice"}"#;
    const SNEAKY: &str = r#"{container="sneaky",container_id="bbbbbbbbbbbb",user="bob"}"#;
    const CAROL: &str = r#"{UUID="GPU-1111",user="carol"}"#;

    #[test]
    fn unknown_gpu_utilisation_has_no_series_never_zero() {
        let mut inv = active_inventory();
        let text = render(&inv, &Carried::default()).expect("render");
        let util = "ds01_workload_container_gpu_utilization_ratio";
        assert_eq!(
            sample(&text, &format!("{util}{TRAIN}")),
            Some(0.875),
            "{text}"
        );
        assert!(!text.contains(&format!("{util}{SNEAKY}")), "{text}");
        assert_eq!(
            sample(&text, &format!("ds01_workload_container_cpu_cores{SNEAKY}")),
            Some(0.25),
            "{text}"
        );
        let host_util = "ds01_workload_host_gpu_process_utilization_ratio";
        assert_eq!(sample(&text, &format!("{host_util}{CAROL}")), Some(0.03));
        assert_eq!(
            sample(
                &text,
                &format!("ds01_workload_host_gpu_process_cpu_cores{CAROL}")
            ),
            Some(1.0),
            "the sum of both processes' cores: {text}"
        );
        // One of carol's processes unknown: the group is unknown, not the
        // other one's value; likewise its cores at a first reading.
        let p = inv.host_processes.get_mut(&8).expect("8");
        p.activity = Some(activity(None, None, None));
        let text = render(&inv, &Carried::default()).expect("render");
        assert!(!has_series(&text, host_util), "{text}");
        assert!(
            !has_series(&text, "ds01_workload_host_gpu_process_cpu_cores"),
            "{text}"
        );
        // No activity at all (a container not running, an older state):
        // none of the activity series.
        for c in inv.containers.values_mut() {
            c.activity = None;
        }
        for p in inv.host_processes.values_mut() {
            p.activity = None;
        }
        let text = render(&inv, &Carried::default()).expect("render");
        for name in [
            util,
            "ds01_workload_container_cpu_cores",
            "ds01_workload_container_idle_seconds",
            host_util,
            "ds01_workload_host_gpu_process_cpu_cores",
            "ds01_workload_host_gpu_process_idle_seconds",
        ] {
            assert!(!has_series(&text, name), "{name} in {text}");
        }
        assert!(!text.contains("NaN"), "{text}");
    }

    #[test]
    fn idle_seconds_are_zero_while_active_and_count_from_idle_since() {
        let mut inv = active_inventory();
        let text = render(&inv, &Carried::default()).expect("render");
        let idle = "ds01_workload_container_idle_seconds";
        let host_idle = "ds01_workload_host_gpu_process_idle_seconds";
        assert_eq!(
            sample(&text, &format!("{idle}{TRAIN}")),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, &format!("{idle}{SNEAKY}")),
            Some(0.0),
            "{text}"
        );
        assert_eq!(sample(&text, &format!("{host_idle}{CAROL}")), Some(0.0));

        // The scan starts at 00:00:10: idle for 70 s and 10 s.
        let sneaky = inv.containers.get_mut("bbbbbbbbbbbb").expect("sneaky");
        sneaky.activity = Some(activity(Some(0.0), Some(0.0), Some("2025-12-31T23:59:00Z")));
        let p = inv.host_processes.get_mut(&7).expect("7");
        p.activity = Some(activity(Some(0.0), Some(0.0), Some("2025-12-31T23:59:00Z")));
        let text = render(&inv, &Carried::default()).expect("render");
        assert_eq!(
            sample(&text, &format!("{idle}{SNEAKY}")),
            Some(70.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, &format!("{idle}{TRAIN}")),
            Some(0.0),
            "{text}"
        );
        // Carol's other process is active: her processes on GPU1 are not idle.
        assert_eq!(
            sample(&text, &format!("{host_idle}{CAROL}")),
            Some(0.0),
            "{text}"
        );
        let p = inv.host_processes.get_mut(&8).expect("8");
        p.activity = Some(activity(Some(0.0), Some(0.0), Some("2026-01-01T00:00:00Z")));
        let text = render(&inv, &Carried::default()).expect("render");
        assert_eq!(
            sample(&text, &format!("{host_idle}{CAROL}")),
            Some(10.0),
            "the shorter idle of the two: {text}"
        );
        // An idle_since after the scan's start (clocks): 0, never negative.
        let sneaky = inv.containers.get_mut("bbbbbbbbbbbb").expect("sneaky");
        sneaky.activity = Some(activity(Some(0.0), Some(0.0), Some("2026-01-01T00:01:00Z")));
        let text = render(&inv, &Carried::default()).expect("render");
        assert_eq!(
            sample(&text, &format!("{idle}{SNEAKY}")),
            Some(0.0),
            "{text}"
        );
    }

    #[test]
    fn hostile_names_are_escaped_in_the_activity_and_usage_series() {
        let user = "ev\"il\\us\ner} 1\n# HELP x";
        let escaped = r#"ev\"il\\us\ner} 1\n# HELP x"#;
        let mut inv = Inventory {
            last_scan: "2026-01-01T00:00:10Z".parse().ok(),
            ..Default::default()
        };
        let mut c = container("cccccccccccc", "na\"me\n", user);
        c.gpu_processes = vec![gpu_process(GPU0, Some(1))];
        c.gpu_uuids = vec![GPU0.to_string()];
        c.activity = Some(activity(
            Some(50.0),
            Some(1.0),
            Some("2026-01-01T00:00:00Z"),
        ));
        c.usage = usage(30.0, 30.0);
        inv.containers.insert(c.id.clone(), c);
        let mut p = host_process(7, user, 1, "2026-01-01T00:00:05Z");
        p.activity = Some(activity(Some(50.0), Some(1.0), None));
        inv.host_processes.insert(7, p);
        let mut carried = Carried::default();
        carried.advance(&inv, &[]);
        let text = render(&inv, &carried).expect("render");
        let labels =
            format!(r#"{{container="na\"me\n",container_id="cccccccccccc",user="{escaped}"}}"#);
        for (series, value) in [
            (
                format!("ds01_workload_container_gpu_utilization_ratio{labels}"),
                0.5,
            ),
            (format!("ds01_workload_container_cpu_cores{labels}"), 1.0),
            (
                format!("ds01_workload_container_idle_seconds{labels}"),
                10.0,
            ),
            (
                format!(
                    r#"ds01_workload_host_gpu_process_utilization_ratio{{UUID="GPU-1111",user="{escaped}"}}"#
                ),
                0.5,
            ),
            (
                format!(
                    r#"ds01_workload_host_gpu_process_idle_seconds{{UUID="GPU-1111",user="{escaped}"}}"#
                ),
                0.0,
            ),
            (
                format!(r#"ds01_workload_user_gpu_seconds_held_total{{user="{escaped}"}}"#),
                30.0,
            ),
            (
                format!(r#"ds01_workload_user_gpu_seconds_idle_total{{user="{escaped}"}}"#),
                30.0,
            ),
        ] {
            assert_eq!(sample(&text, &series), Some(value), "{series} in\n{text}");
        }
        // Nothing the user wrote starts a line of its own.
        assert!(
            text.lines()
                .all(|l| !l.starts_with("# HELP x") && !l.starts_with("er}")),
            "{text}"
        );
    }

    /// The held and idle totals of `user` in an exposition.
    fn totals(text: &str, user: &str) -> (Option<f64>, Option<f64>) {
        (
            sample(
                text,
                &format!("ds01_workload_user_gpu_seconds_held_total{{user=\"{user}\"}}"),
            ),
            sample(
                text,
                &format!("ds01_workload_user_gpu_seconds_idle_total{{user=\"{user}\"}}"),
            ),
        )
    }

    /// One oneshot run: the carried values read back as from the state file,
    /// advanced by `inv`, rendered, and written back.
    fn oneshot(stored: &[u8], inv: &Inventory) -> (Vec<u8>, String) {
        let mut carried: Carried = serde_json::from_slice(stored).expect("state");
        carried.advance(inv, &[]);
        let text = render(inv, &carried).expect("render");
        (serde_json::to_vec(&carried).expect("encode"), text)
    }

    #[test]
    fn gpu_seconds_never_go_down_when_workloads_exit() {
        let mut inv = small_inventory();
        let train = inv.containers.get_mut("aaaaaaaaaaaa").expect("train");
        train.usage = usage(100.0, 40.0);
        let p = inv.host_processes.get_mut(&7).expect("7");
        p.user = "alice".to_string();
        p.start_time = Some(555);
        p.usage = usage(50.0, 0.0);
        // Watch mode: one Carried, in memory.
        let mut live = Carried::default();
        live.advance(&inv, &[]);
        let first = render(&inv, &live).expect("render");
        assert_eq!(
            totals(&first, "alice"),
            (Some(150.0), Some(40.0)),
            "{first}"
        );
        // Bob's container holds a GPU but has no usage yet: his counters
        // exist, at 0, so that increase() sees his first seconds.
        assert_eq!(totals(&first, "bob"), (Some(0.0), Some(0.0)), "{first}");

        // `train` exits; alice's host process holds its GPU 30 s longer.
        let mut later = inv.clone();
        later.containers.remove("aaaaaaaaaaaa");
        let p = later.host_processes.get_mut(&7).expect("7");
        p.usage = usage(80.0, 0.0);
        live.advance(&later, &[]);
        let second = render(&later, &live).expect("render");
        assert_eq!(
            totals(&second, "alice"),
            (Some(180.0), Some(40.0)),
            "{second}"
        );

        // Oneshot mode: a new process each run, the same values through the
        // state file.
        let (state, text) = oneshot(b"{}", &inv);
        assert_eq!(totals(&text, "alice"), (Some(150.0), Some(40.0)), "{text}");
        let (state, text) = oneshot(&state, &later);
        assert_eq!(totals(&text, "alice"), (Some(180.0), Some(40.0)), "{text}");

        // The process exits too, and its PID is reused by another of alice's
        // with less usage so far: nothing is taken away, its growth adds.
        let mut reused = later.clone();
        let p = reused.host_processes.get_mut(&7).expect("7");
        p.start_time = Some(999);
        p.usage = usage(10.0, 10.0);
        let (state, text) = oneshot(&state, &reused);
        assert_eq!(totals(&text, "alice"), (Some(190.0), Some(50.0)), "{text}");
        // The inventory's state started afresh (usage back to 0, same
        // process): flat, then counting on.
        let p = reused.host_processes.get_mut(&7).expect("7");
        p.usage = Usage::default();
        let (state, text) = oneshot(&state, &reused);
        assert_eq!(totals(&text, "alice"), (Some(190.0), Some(50.0)), "{text}");
        let p = reused.host_processes.get_mut(&7).expect("7");
        p.usage = usage(5.0, 0.0);
        let (state, text) = oneshot(&state, &reused);
        assert_eq!(totals(&text, "alice"), (Some(195.0), Some(50.0)), "{text}");
        // Nothing runs any more: the totals stay.
        reused.host_processes.clear();
        reused.containers.clear();
        let (_, text) = oneshot(&state, &reused);
        assert_eq!(totals(&text, "alice"), (Some(195.0), Some(50.0)), "{text}");
        assert_eq!(totals(&text, "bob"), (Some(0.0), Some(0.0)), "{text}");
    }

    #[test]
    fn a_workload_that_changes_user_keeps_what_it_gave_the_first() {
        let mut inv = small_inventory();
        let train = inv.containers.get_mut("aaaaaaaaaaaa").expect("train");
        train.usage = usage(100.0, 0.0);
        let mut carried = Carried::default();
        carried.advance(&inv, &[]);
        let train = inv.containers.get_mut("aaaaaaaaaaaa").expect("train");
        train.user = "dave".to_string();
        train.usage = usage(130.0, 0.0);
        carried.advance(&inv, &[]);
        let text = render(&inv, &carried).expect("render");
        assert_eq!(totals(&text, "alice").0, Some(100.0), "{text}");
        assert_eq!(totals(&text, "dave").0, Some(30.0), "{text}");
    }

    #[test]
    fn collector_states_tell_unavailable_from_failed() {
        let mut inv = small_inventory();
        let scan = inv.scan.as_mut().expect("scan");
        let mut missing = report(false, 0);
        missing.unavailable = true;
        scan.collectors.insert("nvml".to_string(), missing);
        let mut skipped = report(true, 0);
        skipped.skipped = Some("nvml succeeded".to_string());
        scan.collectors.insert("nvidia-smi.2".to_string(), skipped);
        let text = render(&inv, &Carried::default()).expect("render");
        for (collector, state) in [
            ("docker", "ok"),
            ("nvidia-smi", "failed"),
            ("nvml", "unavailable"),
            ("nvidia-smi.2", "skipped"),
        ] {
            for s in CollectorState::ALL {
                let value = u8::from(s.label() == state);
                let line = format!(
                    "ds01_workload_collector_state{{collector=\"{collector}\",state=\"{}\"}} {value}\n",
                    s.label()
                );
                assert!(text.contains(&line), "{line} missing from\n{text}");
            }
        }
    }
}
