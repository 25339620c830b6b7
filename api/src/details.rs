//! The `details` of each event type (docs/formats.md, "The event log"), as
//! typed values: the engine builds one of these per transition and
//! serialises it into [`Event::details`](crate::model::Event::details), so
//! that a field cannot be misspelt or left out, and the order of the fields
//! in the line is the order written here. Optional fields that are absent
//! are left out of the line (`skip_serializing_if`); fields that are `null`
//! when unknown (`gpu_memory_mb`, `idle_since`) are written as `null`.

use serde::Serialize;

use crate::model::{GpuMismatch, Usage};
use crate::timefmt::Timestamp;

/// `detection.container_discovered`.
#[derive(Debug, Serialize)]
pub struct ContainerDiscovered<'a> {
    /// Short id.
    pub container_id: &'a str,
    /// Name.
    pub name: &'a str,
    /// How it was started.
    pub origin: &'a str,
    /// GPU access configured.
    pub has_gpu: bool,
    /// Image.
    pub image: &'a str,
    /// Created and removed between two scans (always `true` when set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short_lived: Option<bool>,
    /// The engine's creation time, for a short-lived one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
}

/// `detection.container_status_changed`.
#[derive(Debug, Serialize)]
pub struct ContainerStatusChanged<'a> {
    /// Short id.
    pub container_id: &'a str,
    /// Name.
    pub name: &'a str,
    /// The previous status.
    pub old_status: &'a str,
    /// The status now.
    pub new_status: &'a str,
}

/// `detection.container_exited`.
#[derive(Debug, Serialize)]
pub struct ContainerExited<'a> {
    /// Short id.
    pub container_id: &'a str,
    /// Name.
    pub name: &'a str,
    /// How it was started.
    pub origin: &'a str,
    /// The GPU time it held, when it held some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<&'a Usage>,
    /// Created and removed between two scans (always `true` when set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short_lived: Option<bool>,
    /// The engine's creation time, for a short-lived one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// The engine's removal time, for a short-lived one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<Timestamp>,
}

/// `detection.container_gpu_started`, `detection.container_gpu_stopped` and
/// `detection.container_gpu_mismatch` (which adds the last three fields).
#[derive(Debug, Serialize)]
pub struct ContainerGpu<'a> {
    /// Short id.
    pub container_id: &'a str,
    /// Name.
    pub name: &'a str,
    /// Its user.
    pub user: &'a str,
    /// GPU memory its processes hold, MiB (`null` when unknown).
    pub gpu_memory_mb: Option<u64>,
    /// The GPUs they use.
    pub gpu_uuids: &'a [String],
    /// How its use differs from its grant (mismatch events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<GpuMismatch>,
    /// GPU access configured (mismatch events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_gpu: Option<bool>,
    /// The devices granted (mismatch events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_devices: Option<&'a [String]>,
}

/// `detection.host_gpu_process_discovered`.
#[derive(Debug, Serialize)]
pub struct HostGpuProcessDiscovered<'a> {
    /// PID.
    pub pid: u32,
    /// Command line.
    pub cmdline: &'a str,
    /// GPU memory, MiB (`null` when unknown).
    pub gpu_memory_mb: Option<u64>,
    /// Its GPU.
    pub gpu_uuid: &'a str,
    /// The cgroup it runs in, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<&'a str>,
    /// Why some of its `/proc` files could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_error: Option<&'a str>,
}

/// `detection.host_gpu_process_exited`.
#[derive(Debug, Serialize)]
pub struct HostGpuProcessExited<'a> {
    /// PID.
    pub pid: u32,
    /// Command line.
    pub cmdline: &'a str,
    /// The GPU time it held, when it held some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<&'a Usage>,
}

/// `detection.user_gpu_use_started` (with `pids`) and
/// `detection.user_gpu_use_stopped`.
#[derive(Debug, Serialize)]
pub struct UserGpuUse<'a> {
    /// The GPU.
    pub gpu_uuid: &'a str,
    /// GPU memory held, MiB (`null` when unknown).
    pub gpu_memory_mb: Option<u64>,
    /// The PIDs seen (started only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<&'a [u32]>,
    /// How many processes were seen.
    pub processes_seen: u64,
    /// When the use was first seen.
    pub detected_at: Timestamp,
}

/// What a workload event is about.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadKind {
    /// A container.
    Container,
    /// A host GPU process.
    HostProcess,
}

/// The signals read when a workload was told idle.
#[derive(Debug, Serialize)]
pub struct Signals {
    /// Cores used.
    pub cpu_cores: Option<f64>,
    /// Network bytes per second.
    pub net_bytes_per_s: Option<f64>,
    /// GPU utilisation, percent.
    pub gpu_util_percent: Option<f64>,
    /// The interval they cover, seconds.
    pub sampled_s: Option<f64>,
}

/// `detection.workload_idle` (with `signals`) and
/// `detection.workload_active` (with `idle_for_s`).
#[derive(Debug, Serialize)]
pub struct Workload<'a> {
    /// Container or host process.
    pub kind: WorkloadKind,
    /// A container's short id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<&'a str>,
    /// A container's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// A host process's PID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// A host process's command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<&'a str>,
    /// GPU memory held, MiB (`null` when unknown).
    pub gpu_memory_mb: Option<u64>,
    /// The GPUs it uses.
    pub gpu_uuids: Vec<&'a str>,
    /// Since when it is (or was) idle (`null` when unknown).
    pub idle_since: Option<Timestamp>,
    /// The signals read (idle only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signals: Option<Signals>,
    /// How long it was idle, seconds (active only; `null` when unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_for_s: Option<Option<i64>>,
}

/// The JSON of a details value (`null` if it cannot be written, which no
/// value of this module's types can cause).
pub fn to_json<T: Serialize>(details: &T) -> serde_json::Value {
    serde_json::to_value(details).unwrap_or(serde_json::Value::Null)
}
