//! The data model: what collectors observe this cycle ([`Observations`]), the
//! inventory that sinks write and the next scan reads back ([`Inventory`]), and
//! the transitions between two inventories ([`Event`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Facts about one container, as the engine reports them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerFacts {
    /// Full container id (64 hex digits).
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Container labels.
    pub labels: BTreeMap<String, String>,
    /// Engine state: `running`, `exited`, `created`, `paused`, `restarting`, `dead`.
    pub state: String,
    /// First tag of the image, else the first 12 hex digits of the image id.
    pub image: String,
    /// Facts that need an inspect call; `None` when the inspect failed.
    pub inspect: Option<InspectFacts>,
    /// The collector instance that reported it (set by the core).
    #[serde(skip)]
    pub collector: String,
}

/// Facts about a container that only an inspect call gives. They are cached in
/// the inventory (field `inspect` of each container, empty values left out)
/// and refreshed only when the container is new or changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InspectFacts {
    /// `HostConfig.Runtime`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub runtime: String,
    /// `HostConfig.DeviceRequests` (`null` is an empty list).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_requests: Vec<DeviceRequest>,
    /// Host paths of `HostConfig.Devices` (`null` is an empty list).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// `State.Pid`: the main process on the host, 0 when not running.
    #[serde(skip_serializing_if = "is_zero")]
    pub main_pid: u32,
    /// `Config.User`: the user the container was started as (may be empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub config_user: String,
    /// `State.StartedAt`, used to notice restarts.
    pub started_at: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One entry of `HostConfig.DeviceRequests`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceRequest {
    /// `Driver` (often empty or `nvidia`).
    pub driver: String,
    /// `Count` (-1 means all).
    pub count: i64,
    /// `DeviceIDs`.
    pub device_ids: Vec<String>,
    /// `Capabilities`: a list of alternatives, each a list of capabilities.
    pub capabilities: Vec<Vec<String>>,
}

impl ContainerFacts {
    /// Whether the container can reach a GPU, as SPEC.md defines `has_gpu`.
    pub fn has_gpu(&self) -> bool {
        let Some(inspect) = &self.inspect else {
            return false;
        };
        inspect.runtime == "nvidia"
            || inspect.device_requests.iter().any(|r| {
                r.capabilities
                    .iter()
                    .flatten()
                    .any(|c| c == "gpu" || c == "nvidia")
                    || r.device_ids.iter().any(|d| d.starts_with("nvidia.com/gpu"))
            })
            || inspect.devices.iter().any(|d| d.contains("nvidia"))
    }
}

/// One process found using a GPU by a GPU collector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuProcess {
    /// Host PID.
    pub pid: u32,
    /// Used GPU memory in MiB; `None` when the driver does not say.
    pub used_memory_mib: Option<u64>,
    /// UUID of the physical GPU.
    pub gpu_uuid: String,
    /// UUID of the MIG device, when the GPU is in MIG mode.
    pub mig_uuid: Option<String>,
    /// MIG GPU instance id.
    pub gpu_instance_id: Option<u32>,
    /// MIG compute instance id.
    pub compute_instance_id: Option<u32>,
    /// SM utilisation percent from process samples, when known.
    pub sm_util: Option<u32>,
}

/// What `/proc` says about one process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessFacts {
    /// PID.
    pub pid: u32,
    /// Real uid.
    pub uid: u32,
    /// User name for `uid` (through NSS), or the uid as text when it has none.
    pub user: String,
    /// Command line, NUL separators turned into spaces.
    pub cmdline: String,
    /// Short process name (`/proc/<pid>/comm`).
    pub comm: String,
    /// Start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
    pub start_time: u64,
    /// Whether its cgroup is a container's (docker, containerd, libpod, kubepods).
    pub in_container: bool,
    /// The 64-hex container id found in the cgroup path, when there is one.
    pub container_id: Option<String>,
}

/// Which kind of fact a collector provides or needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FactKind {
    /// The containers the engine knows.
    Containers,
    /// The processes holding GPU memory.
    GpuProcesses,
    /// Per-process facts from `/proc`.
    Processes,
}

/// Everything the collectors observed in one cycle.
#[derive(Clone, Debug, Default)]
pub struct Observations {
    /// Containers from every container collector that succeeded.
    pub containers: Vec<ContainerFacts>,
    /// GPU processes from every GPU collector that succeeded.
    pub gpu_processes: Vec<GpuProcess>,
    /// `/proc` facts keyed by PID.
    pub processes: BTreeMap<u32, ProcessFacts>,
}

impl Observations {
    /// Adds another collector's observations.
    pub fn merge(&mut self, other: Observations) {
        self.containers.extend(other.containers);
        self.gpu_processes.extend(other.gpu_processes);
        self.processes.extend(other.processes);
    }

    /// A copy holding only the facts of these kinds (what a collector that
    /// needs them may see).
    pub fn only(&self, kinds: &[FactKind]) -> Observations {
        Observations {
            containers: if kinds.contains(&FactKind::Containers) {
                self.containers.clone()
            } else {
                Vec::new()
            },
            gpu_processes: if kinds.contains(&FactKind::GpuProcesses) {
                self.gpu_processes.clone()
            } else {
                Vec::new()
            },
            processes: if kinds.contains(&FactKind::Processes) {
                self.processes.clone()
            } else {
                BTreeMap::new()
            },
        }
    }

    /// The PIDs whose `/proc` facts the stages need: every GPU process, once.
    pub fn gpu_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.gpu_processes.iter().map(|p| p.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

/// The inventory: the file other tools read and the state the next scan reads back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// When the scan that wrote it started.
    #[serde(default)]
    pub last_scan: String,
    /// Every container, keyed by the first 12 hex digits of its id.
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerEntry>,
    /// Confirmed host GPU processes, keyed by PID.
    #[serde(default)]
    pub host_processes: BTreeMap<String, ProcessEntry>,
    /// Host GPU processes not yet confirmed by the transient filter.
    #[serde(default, rename = "_pending_processes")]
    pub pending_processes: BTreeMap<String, ProcessEntry>,
    /// How the last cycle went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanReport>,
}

/// One container in the inventory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerEntry {
    /// First 12 hex digits of the container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// How it was started (see the `classify` stage).
    pub origin: String,
    /// Owner.
    pub user: String,
    /// Whether it can reach a GPU.
    pub has_gpu: bool,
    /// GPU slots or UUIDs allocated to it.
    #[serde(default)]
    pub gpu_devices: Vec<String>,
    /// Engine state.
    pub status: String,
    /// Image (first tag, else 12 hex digits of the image id).
    pub image: String,
    /// When it was first seen.
    pub detected_at: String,
    /// Which collector instance reported it (`docker`, `docker.2`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub collector: String,
    /// Cached inspect facts (see [`InspectFacts`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspect: Option<InspectFacts>,
}

/// One host GPU process in the inventory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessEntry {
    /// PID (the Python scanner wrote it as a string; both are read).
    #[serde(deserialize_with = "pid_from_number_or_string")]
    pub pid: u32,
    /// Owner.
    pub user: String,
    /// Command line.
    pub cmdline: String,
    /// Used GPU memory in MiB (`null` when unknown).
    pub gpu_memory_mb: Option<u64>,
    /// UUID of the physical GPU.
    pub gpu_uuid: String,
    /// When it was first seen.
    pub detected_at: String,
    /// Every GPU it uses, when more than one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_uuids: Vec<String>,
    /// UUID of the MIG device it runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_uuid: Option<String>,
    /// MIG GPU instance id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_instance_id: Option<u32>,
    /// MIG compute instance id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_instance_id: Option<u32>,
    /// SM utilisation percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_util: Option<u32>,
    /// Start time in clock ticks since boot: with the PID, the process's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    /// Consecutive scans in which it was seen.
    #[serde(default)]
    pub seen_scans: u32,
}

fn pid_from_number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Pid {
        Number(u32),
        Text(String),
    }
    match Pid::deserialize(d)? {
        Pid::Number(n) => Ok(n),
        Pid::Text(s) => s.trim().parse().map_err(serde::de::Error::custom),
    }
}

/// How one scan cycle went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScanReport {
    /// When the cycle started.
    pub started_at: String,
    /// How long it took.
    pub duration_ms: u64,
    /// One entry per configured collector, keyed by its instance name.
    pub collectors: BTreeMap<String, CollectorReport>,
}

/// How one collector did in the last cycle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CollectorReport {
    /// Whether it succeeded.
    pub ok: bool,
    /// How long it took.
    pub duration_ms: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it did not run (a fallback whose primary succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Collector-specific counters (for example Docker API calls).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, u64>,
}

/// A transition between two inventories.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Event time (the scan's start).
    pub timestamp: String,
    /// One of the `detection.*` types.
    pub event_type: String,
    /// The user it concerns (omitted when empty).
    pub user: String,
    /// The event's fields.
    pub details: serde_json::Value,
}
