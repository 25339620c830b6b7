//! The data model: what collectors observe this cycle ([`Observations`]), the
//! inventory that sinks write and the next scan reads back ([`Inventory`]), and
//! the transitions between two inventories ([`Event`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::timefmt::Timestamp;

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
    /// When the engine created it; `None` when it did not say.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_time::optional"
    )]
    pub created_at: Option<Timestamp>,
    /// Its health check's verdict, when it has a health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Facts that need an inspect call; `None` when the inspect failed.
    pub inspect: Option<InspectFacts>,
    /// The user the engine itself runs as, when the engine is one user's own
    /// (a rootless Podman service, found by its socket's owner): every
    /// container it lists is that user's, whatever its labels claim. Set by
    /// the collector, never from anything the engine says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
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
    /// `State.StartedAt`, exactly as the engine wrote it
    /// (`2026-11-26T05:40:02.123456789Z`; Docker cuts trailing zeros of the
    /// fraction, Podman may write a local offset): part of the cached
    /// `inspect` object other tools read, shown verbatim. Absent until the
    /// container has started (the engine says year 1,
    /// `0001-01-01T00:00:00Z`, which the collector leaves out).
    ///
    /// Text, not a [`Timestamp`], on purpose: a whole-second UTC time
    /// cannot give that text back byte for byte (the fraction, its length
    /// and the offset are lost), and the inventory must not change. Restarts
    /// are noticed through the engine's events and the main PID's cgroup,
    /// not through it; its two readers, the `idle` stage's grace period and
    /// the views' `up_s`, read it through [`InspectFacts::started`] where
    /// they use it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub started_at: String,
    /// `HostConfig.CgroupParent` (`--cgroup-parent`), as given.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cgroup_parent: String,
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

impl InspectFacts {
    /// When it started, read from the engine's text (`None` when it has not
    /// or the text is no RFC 3339 time).
    pub fn started(&self) -> Option<Timestamp> {
        Timestamp::parse(&self.started_at).ok()
    }
}

impl ContainerFacts {
    /// Whether the container can reach a GPU, as docs/formats.md defines `has_gpu`.
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

/// The key of a container in the inventory: the first 12 hex digits of its id.
pub fn short_id(id: &str) -> String {
    short_key(id).to_string()
}

/// [`short_id`] without a copy: the first 12 characters of `id` (all of it
/// when shorter).
pub fn short_key(id: &str) -> &str {
    match id.as_bytes().get(..12) {
        // Twelve ASCII bytes are twelve characters (a container id is hex).
        Some(head) if head.is_ascii() => &id[..12],
        Some(_) => id.char_indices().nth(12).map_or(id, |(end, _)| &id[..end]),
        // Fewer than 12 bytes: fewer than 12 characters.
        None => id,
    }
}

impl ContainerFacts {
    /// Its key in the inventory ([`short_id`] of its id).
    pub fn key(&self) -> String {
        short_id(&self.id)
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

/// One physical GPU as NVML describes it this scan (for people's views:
/// `top`'s summary lines). Only what the driver answered is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuDevice {
    /// UUID of the GPU.
    pub uuid: String,
    /// NVML's index (the order of `nvidia-smi`).
    pub index: u32,
    /// Product name, e.g. `NVIDIA H100 80GB HBM3`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Memory in use, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_used_mb: Option<u64>,
    /// Memory installed, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_total_mb: Option<u64>,
    /// Percent of the last sample period in which a kernel ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilization_pct: Option<u32>,
    /// The newest per-process utilisation sample read so far (NVML's CPU
    /// timestamp, microseconds): the next reading asks for the samples
    /// after it, so each covers the time since the previous one.
    #[serde(
        rename = "_samples_until_us",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub samples_until_us: Option<u64>,
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
    /// Command line for people: [`ProcessFacts::argv`] joined with spaces.
    /// A collector that gives `argv` may leave it empty: the `redact` stage
    /// (always in force) sets it from `argv`, secrets hidden.
    pub cmdline: String,
    /// Its arguments, as `/proc/<pid>/cmdline` holds them (each decoded
    /// lossily; the last ends in `…` when the read was cut). Empty when
    /// unknown (a kernel thread, or a collector that only has the line):
    /// then `cmdline` is all there is. Redaction works on this list, so an
    /// argument holding spaces is hidden whole.
    #[serde(default)]
    pub argv: Argv,
    /// Short process name (`/proc/<pid>/comm`).
    pub comm: String,
    /// Start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
    pub start_time: u64,
    /// Whether its cgroup path *looks* like a container's (a runtime's name
    /// and a 64-hex id, or `kubepods`). A claim, not a fact: anyone with a
    /// delegated cgroup can name one so. Only the core's membership rule
    /// (the container's full id in the cgroup the engine runs it in, or its
    /// main process's PID namespace) puts a process in a container.
    pub in_container: bool,
    /// The 64-hex id its cgroup path names, when there is one (a claim, as
    /// `in_container`).
    pub container_id: Option<String>,
    /// The executable (`/proc/<pid>/exe`), when it could be read: what the
    /// process really runs, whatever it calls itself.
    #[serde(default)]
    pub exe: Option<String>,
    /// Its cgroups, one per hierarchy (`/proc/<pid>/cgroup`; one line on
    /// cgroup v2, one per controller set on v1).
    #[serde(default)]
    pub cgroups: Vec<CgroupMembership>,
    /// Its PID namespace (the inode of `/proc/<pid>/ns/pid`) when it is not
    /// the host's: a container's (or a user's own namespace).
    #[serde(default)]
    pub pid_namespace: Option<u64>,
    /// Why some of its `/proc` files could not be read: what is known is
    /// still reported (its owner then comes from the owner of `/proc/<pid>`).
    #[serde(default)]
    pub read_error: Option<String>,
    /// Its activity counters this cycle (GPU processes: their CPU time; a
    /// container's main process: its cgroup's CPU time and its network
    /// namespace's bytes). `None` when not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
}

/// Cumulative counters of a workload at one instant: the engine turns two
/// readings into rates ([`Activity`]). Each says what it counts, so that a
/// rate is only taken between two readings of the same counter (a restarted
/// container has a new cgroup; a reused PID a new start time).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// When they were read: nanoseconds since the Unix epoch.
    pub at_ns: u64,
    /// CPU time used, nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ns: Option<u64>,
    /// What `cpu_ns` counts: `process:<start time>` (the process's own
    /// `utime + stime`) or `cgroup:<path>` (every process of that cgroup).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cpu_of: String,
    /// Bytes received and sent on every interface but `lo` of its network
    /// namespace. `None` in the host's namespace (see `host_network`) or
    /// when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_bytes: Option<u64>,
    /// The network namespace's inode, for `net_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_ns: Option<u64>,
    /// It shares the host's network namespace: its traffic is the host's,
    /// so no rate is taken.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
}

/// What a running workload did since its previous reading (`activity` of a
/// container or host process). Unknown is `None` (`null`), never 0; rates
/// are `None` at a workload's first reading.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    /// Average cores used.
    pub cpu_cores: Option<f64>,
    /// Bytes received and sent per second on its network namespace's
    /// interfaces but `lo` (containers only; `None` for host networking).
    pub net_bytes_per_s: Option<f64>,
    /// The highest SM utilisation of its GPU processes (percent), when it
    /// holds GPU memory and it is known.
    pub gpu_util_percent: Option<f64>,
    /// The interval the rates cover, seconds.
    pub sampled_s: Option<f64>,
    /// Since when each of its known signals has been below its threshold
    /// (`None`, written `null`, while active), as the `idle` stage decides it.
    #[serde(default, deserialize_with = "lenient_time::optional")]
    pub idle_since: Option<Timestamp>,
    /// It has been idle for at least the `idle` stage's `idle_after`: told
    /// in a `detection.workload_idle` event.
    #[serde(default)]
    pub idle: bool,
}

/// GPU time a workload has held so far (GPUs on which it holds memory x
/// seconds), and how much of it while idle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// GPU-seconds held.
    pub gpu_seconds_held: f64,
    /// GPU-seconds held while idle.
    pub gpu_seconds_idle: f64,
}

impl Usage {
    /// Whether nothing was accounted yet.
    pub fn is_zero(&self) -> bool {
        self.gpu_seconds_held == 0.0 && self.gpu_seconds_idle == 0.0
    }
}

/// A process's arguments, kept as `/proc/<pid>/cmdline` does: each followed
/// by a NUL, in one string (one allocation however many there are; a user
/// decides how many). Serialised as a list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Argv(String);

impl Argv {
    /// From the arguments (a NUL inside one, which `/proc` cannot hold,
    /// would split it).
    pub fn new<'a>(args: impl IntoIterator<Item = &'a str>) -> Argv {
        let mut text = String::new();
        for arg in args {
            text.push_str(arg);
            text.push('\0');
        }
        Argv(text)
    }

    /// From `/proc/<pid>/cmdline` decoded as text: NUL-terminated arguments
    /// (a missing last NUL is added).
    pub fn from_nul_terminated(mut text: String) -> Argv {
        if !text.is_empty() && !text.ends_with('\0') {
            text.push('\0');
        }
        Argv(text)
    }

    /// The arguments.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0
            .strip_suffix('\0')
            .map(|body| body.split('\0'))
            .into_iter()
            .flatten()
    }

    /// The program (`argv[0]`).
    pub fn first(&self) -> Option<&str> {
        self.iter().next()
    }

    /// Whether it holds no argument.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The arguments joined with spaces, as people read a command line.
    pub fn joined(&self) -> String {
        self.0
            .strip_suffix('\0')
            .unwrap_or_default()
            .replace('\0', " ")
    }
}

impl Serialize for Argv {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Argv, D::Error> {
        let args = Vec::<String>::deserialize(d)?;
        Ok(Argv::new(args.iter().map(String::as_str)))
    }
}

/// One line of `/proc/<pid>/cgroup`: the hierarchy (`12:pids`, `0:` on
/// cgroup v2) and the path in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupMembership {
    /// Hierarchy id and controllers, as the file says them (`12:pids`,
    /// `1:name=systemd`, `0:`).
    pub hierarchy: String,
    /// The path within that hierarchy (`/docker/<id>`).
    pub path: String,
}

/// The runtimes whose names mark a container's cgroup segment.
pub const RUNTIME_MARKERS: [&str; 5] = ["docker", "containerd", "crio", "libpod", "kubepods"];

/// The 64-hex container id one cgroup path segment names: the whole segment
/// when it is 64 hex digits (the cgroupfs driver's `/docker/<id>`), else a
/// 64-hex id inside a segment naming a runtime (`docker-<id>.scope`,
/// `libpod-<id>`, `cri-containerd-<id>.scope`).
pub fn cgroup_segment_id(segment: &str) -> Option<&str> {
    let id = hex_id(segment)?;
    (id.len() == segment.len() || RUNTIME_MARKERS.iter().any(|m| segment.contains(m))).then_some(id)
}

/// The 64-hex id inside one path segment, bounded by non-hex characters.
fn hex_id(segment: &str) -> Option<&str> {
    let bytes = segment.as_bytes();
    (0..(bytes.len() + 1).saturating_sub(64)).find_map(|i| {
        let window = segment.get(i..i + 64)?;
        let hex = window
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let before = i.checked_sub(1).and_then(|j| bytes.get(j));
        let bounded = bytes.get(i + 64).is_none_or(|b| !b.is_ascii_hexdigit())
            && before.is_none_or(|b| !b.is_ascii_hexdigit());
        (hex && bounded).then_some(window)
    })
}

impl CgroupMembership {
    /// Whether a segment of this path names the container `id` (full id).
    pub fn names(&self, id: &str) -> bool {
        self.path
            .split('/')
            .any(|segment| cgroup_segment_id(segment) == Some(id))
    }

    /// Whether this path is `other`'s path or lies under it, in the same
    /// hierarchy.
    pub fn within(&self, other: &CgroupMembership) -> bool {
        self.hierarchy == other.hierarchy
            && (self.path == other.path
                || self
                    .path
                    .strip_prefix(other.path.trim_end_matches('/'))
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

impl ProcessFacts {
    /// The cgroup path worth recording for people: the first one naming a
    /// container-looking segment, else the unified (v2) one unless it is the
    /// root, else systemd's, else the first.
    pub fn cgroup_path(&self) -> Option<&str> {
        let looks = self.cgroups.iter().find(|c| {
            c.path.split('/').any(|s| cgroup_segment_id(s).is_some()) || c.path.contains("kubepods")
        });
        let unified = self
            .cgroups
            .iter()
            .find(|c| c.hierarchy == "0:" && c.path != "/");
        let systemd = self
            .cgroups
            .iter()
            .find(|c| c.hierarchy.ends_with(":name=systemd"));
        looks
            .or(unified)
            .or(systemd)
            .or(self.cgroups.first())
            .map(|c| c.path.as_str())
    }
}

/// Which kind of fact a collector provides or needs (in the scan report:
/// `containers`, `gpu-processes`, `processes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
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
    /// The GPUs, from a collector that can describe them (NVML).
    pub gpus: Vec<GpuDevice>,
    /// Containers created and removed since the previous scan (from the
    /// engine's events): never listed, still reported.
    pub short_lived: Vec<ShortLivedContainer>,
}

/// A container created and removed between two scans.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShortLivedContainer {
    /// Full container id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Image as the engine's event names it.
    pub image: String,
    /// When the engine created it.
    pub created_at: Timestamp,
    /// When the engine removed it.
    pub removed_at: Timestamp,
    /// Its labels, as the engine's create event carries them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How it was started and whose it was: set by the core, which runs the
    /// stages on it as on a listed container (empty until then).
    #[serde(default)]
    pub origin: String,
    /// Its user (see `origin`).
    #[serde(default)]
    pub user: String,
}

impl Observations {
    /// Adds another collector's observations.
    pub fn merge(&mut self, other: Observations) {
        self.containers.extend(other.containers);
        self.gpu_processes.extend(other.gpu_processes);
        self.processes.extend(other.processes);
        self.gpus.extend(other.gpus);
        self.short_lived.extend(other.short_lived);
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
            gpus: if kinds.contains(&FactKind::GpuProcesses) {
                self.gpus.clone()
            } else {
                Vec::new()
            },
            processes: if kinds.contains(&FactKind::Processes) {
                self.processes.clone()
            } else {
                BTreeMap::new()
            },
            short_lived: Vec::new(),
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
    /// When the scan that wrote it started; `None` only in an inventory no
    /// scan wrote ([`Inventory::default`], written `""` as it always was).
    #[serde(default, with = "lenient_time::or_empty")]
    pub last_scan: Option<Timestamp>,
    /// Every container, keyed by the first 12 hex digits of its id.
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerEntry>,
    /// Confirmed host GPU processes, keyed by PID (written as a string).
    #[serde(default, serialize_with = "pid_map::serialize")]
    pub host_processes: BTreeMap<u32, ProcessEntry>,
    /// Host GPU processes not yet confirmed by the transient filter.
    #[serde(
        default,
        rename = "_pending_processes",
        serialize_with = "pid_map::serialize"
    )]
    pub pending_processes: BTreeMap<u32, ProcessEntry>,
    /// How the last cycle went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanReport>,
    /// The GPUs as NVML described them in the last cycle, keyed by UUID
    /// (empty when NVML was not available).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gpus: BTreeMap<String, GpuDevice>,
    /// Confirmed GPU processes whose cgroup names a container the engine
    /// does not list, keyed by PID (same shape as `host_processes`).
    #[serde(default, serialize_with = "pid_map::serialize")]
    pub unattributed_processes: BTreeMap<u32, ProcessEntry>,
    /// GPU processes inside containers not yet confirmed by the transient
    /// filter (attributed once confirmed).
    #[serde(
        default,
        rename = "_pending_container_processes",
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "pid_map::serialize"
    )]
    pub pending_container_processes: BTreeMap<u32, ProcessEntry>,
    /// Continuous GPU use by one user on one GPU carried by processes that
    /// each live shorter than a scan (a job sliced into short-lived PIDs):
    /// confirmed once such use is seen in two consecutive scans, with at
    /// least one of its processes gone before it could be confirmed. Sorted
    /// by user, then GPU.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_gpu_use: Vec<UserGpuUse>,
    /// Such use seen once so far (not yet confirmed).
    #[serde(
        default,
        rename = "_pending_user_gpu_use",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub pending_user_gpu_use: Vec<UserGpuUse>,
    /// Containers told exited in the last seconds, by short id, with the
    /// start of the scan that told it: the engine's events are asked from a
    /// second before the previous scan, in whole seconds, so one removed
    /// then may be seen again among those created and removed since; it is
    /// not told again as short-lived.
    #[serde(
        default,
        rename = "_told_gone",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "lenient_time::map"
    )]
    pub told_gone: BTreeMap<String, Timestamp>,
    /// The events this state owes to the event log (none once delivered).
    #[serde(default, rename = "_outbox", skip_serializing_if = "Option::is_none")]
    pub outbox: Option<Outbox>,
    /// The activity counters of the last reading of each running workload
    /// (`container:<short id>`, `process:<pid>`): the next reading's rates
    /// are taken against them, whether it comes from the same process or
    /// the next oneshot run.
    #[serde(
        default,
        rename = "_activity_counters",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub activity_counters: BTreeMap<String, Counters>,
}

impl Inventory {
    /// The PID of every GPU process it holds: confirmed and pending host
    /// processes, those in a look-alike container cgroup, and those in
    /// containers (attributed or pending); a PID may come more than once.
    pub fn gpu_process_pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.host_processes
            .keys()
            .chain(self.pending_processes.keys())
            .chain(self.unattributed_processes.keys())
            .chain(self.pending_container_processes.keys())
            .copied()
            .chain(
                self.containers
                    .values()
                    .flat_map(|c| c.gpu_processes.iter().map(|p| p.pid)),
            )
    }
}

/// GPU memory one user's unconfirmed (pending) host processes hold on one
/// GPU; see [`Inventory::user_gpu_use`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserGpuUse {
    /// Owner of the processes.
    pub user: String,
    /// UUID of the GPU.
    pub gpu_uuid: String,
    /// The memory they hold now, MiB (`null` when the driver does not say).
    pub gpu_memory_mb: Option<u64>,
    /// The PIDs holding it now (pending host processes).
    pub pids: Vec<u32>,
    /// How many distinct processes have carried this use so far.
    pub processes_seen: u64,
    /// When this use was first seen.
    #[serde(deserialize_with = "lenient_time::required")]
    pub detected_at: Timestamp,
    /// Consecutive scans in which it was seen.
    pub seen_scans: u32,
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
    /// Where `user` came from (`unknown` in inventories written before it existed).
    #[serde(default)]
    pub user_source: UserSource,
    /// Whether it can reach a GPU.
    pub has_gpu: bool,
    /// GPU slots or UUIDs allocated to it.
    #[serde(default)]
    pub gpu_devices: Vec<String>,
    /// Whether its GPU grant is real: `label-only` when labels allocate it
    /// GPUs (`gpu_devices`) but the engine gives it no GPU access
    /// (`has_gpu` false). Absent otherwise. Set by the `gpu-devices` stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_access: Option<GpuAccess>,
    /// Engine state.
    pub status: String,
    /// Image (first tag, else 12 hex digits of the image id).
    pub image: String,
    /// Its labels (omitted when it has none): data, shown and matched by
    /// `ps --filter label=...`, never used as anything else.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// When the engine created it (omitted when it did not say).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_time::optional"
    )]
    pub created_at: Option<Timestamp>,
    /// Its health check's verdict (omitted when it has no health check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// When it was first seen.
    #[serde(deserialize_with = "lenient_time::required")]
    pub detected_at: Timestamp,
    /// Which collector instance reported it (`docker`, `docker.2`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub collector: String,
    /// Cached inspect facts (see [`InspectFacts`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspect: Option<InspectFacts>,
    /// The GPU processes running inside it (confirmed by the transient filter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_processes: Vec<ContainerGpuProcess>,
    /// The GPU memory its processes hold, MiB (their sum; absent when none
    /// is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_mb: Option<u64>,
    /// The GPUs its processes use (distinct UUIDs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_uuids: Vec<String>,
    /// Whether any process in it uses a GPU now. `has_gpu` says whether it
    /// was granted access; this says whether it uses it.
    #[serde(default)]
    pub gpu_in_use: bool,
    /// Why its GPU use does not match what it was granted, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_mismatch: Option<GpuMismatch>,
    /// What it did since the previous reading (running containers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
    /// The GPU time it has held (omitted until it holds some).
    #[serde(default, skip_serializing_if = "Usage::is_zero")]
    pub usage: Usage,
}

/// A GPU process inside a container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerGpuProcess {
    /// Host PID.
    pub pid: u32,
    /// Owner on the host (its uid through NSS).
    pub user: String,
    /// Command line (redacted as host processes' are).
    pub cmdline: String,
    /// UUID of the physical GPU.
    pub gpu_uuid: String,
    /// UUID of the MIG device, when the GPU is in MIG mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_uuid: Option<String>,
    /// Used GPU memory in MiB (`null` when the driver does not say).
    pub gpu_memory_mb: Option<u64>,
    /// SM utilisation percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_util: Option<u32>,
    /// Start time in clock ticks since boot: with the PID, the process's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
}

/// A container's health check verdict, as the engine lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Not yet decided.
    Starting,
    /// Passing.
    Healthy,
    /// Failing.
    Unhealthy,
}

impl Health {
    /// From the list's status text (`Up 5 minutes (healthy)`).
    pub fn from_status(status: &str) -> Option<Health> {
        if status.contains("(healthy)") {
            Some(Health::Healthy)
        } else if status.contains("(unhealthy)") {
            Some(Health::Unhealthy)
        } else if status.contains("(health: starting)") {
            Some(Health::Starting)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// A container's GPU grant, when it needs explaining.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuAccess {
    /// GPUs named by its labels, but no GPU device or request in the engine:
    /// the allocation is on paper only.
    LabelOnly,
}

/// How a container's GPU use differs from what it was granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuMismatch {
    /// It uses a GPU but has no GPU access configured (`has_gpu` false).
    NotGranted,
    /// It uses a GPU outside its `gpu_devices`.
    OutsideAllocation,
}

/// Where a container's user came from. Written as `label:<label name>`,
/// `path-label:<label name>`, `cgroup-parent`, `process-owner`,
/// `config-user`, `engine-owner` or `unknown`;
/// any other text reads back as `unknown`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum UserSource {
    /// A user label (the label's name).
    Label(String),
    /// A label holding a path under a home directory (the label's name).
    PathLabel(String),
    /// Its cgroup parent, through `cgroup_parent_pattern`.
    CgroupParent,
    /// The owner of the container's main process.
    ProcessOwner,
    /// `Config.User` of a container that is not running.
    ConfigUser,
    /// The owner of the engine that lists it (a user's rootless engine):
    /// [`ContainerFacts::owner`].
    EngineOwner,
    /// Nothing said.
    #[default]
    Unknown,
}

impl std::fmt::Display for UserSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserSource::Label(name) => write!(f, "label:{name}"),
            UserSource::PathLabel(name) => write!(f, "path-label:{name}"),
            UserSource::CgroupParent => f.write_str("cgroup-parent"),
            UserSource::ProcessOwner => f.write_str("process-owner"),
            UserSource::ConfigUser => f.write_str("config-user"),
            UserSource::EngineOwner => f.write_str("engine-owner"),
            UserSource::Unknown => f.write_str("unknown"),
        }
    }
}

impl From<UserSource> for String {
    fn from(source: UserSource) -> String {
        source.to_string()
    }
}

impl From<String> for UserSource {
    fn from(text: String) -> UserSource {
        if let Some(name) = text.strip_prefix("label:") {
            return UserSource::Label(name.to_string());
        }
        if let Some(name) = text.strip_prefix("path-label:") {
            return UserSource::PathLabel(name.to_string());
        }
        match text.as_str() {
            "cgroup-parent" => UserSource::CgroupParent,
            "process-owner" => UserSource::ProcessOwner,
            "config-user" => UserSource::ConfigUser,
            "engine-owner" => UserSource::EngineOwner,
            _ => UserSource::Unknown,
        }
    }
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
    #[serde(deserialize_with = "lenient_time::required")]
    pub detected_at: Timestamp,
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
    /// Its cgroup path (see [`ProcessFacts::cgroup_path`]): where a process
    /// that is not in a container the engine listed runs, whatever its
    /// cgroup's name claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Why some of its `/proc` files could not be read (it is reported with
    /// what is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_error: Option<String>,
    /// What it did since the previous reading (confirmed host processes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
    /// The GPU time it has held (omitted until it holds some).
    #[serde(default, skip_serializing_if = "Usage::is_zero")]
    pub usage: Usage,
}

impl ProcessEntry {
    /// The GPUs it uses: `gpu_uuids` when it uses more than one, else `gpu_uuid`.
    pub fn gpus(&self) -> Vec<&str> {
        if self.gpu_uuids.is_empty() {
            vec![self.gpu_uuid.as_str()]
        } else {
            self.gpu_uuids.iter().map(String::as_str).collect()
        }
    }

    /// Whether this entry is the process `pid` started at `start_time`: the
    /// same PID and the same start time. An entry or observation without a
    /// start time (written by an older scanner) matches any start time.
    pub fn is_process(&self, pid: u32, start_time: Option<u64>) -> bool {
        self.pid == pid
            && match (self.start_time, start_time) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// Process maps keyed by PID in memory, by the PID's decimal text in files:
/// written in the order of that text, as when the keys were strings, so
/// that the files do not change.
pub mod pid_map {
    use std::collections::BTreeMap;

    use serde::ser::{SerializeMap, Serializer};

    /// The entries in the order of their keys as text (`"10"` before `"9"`).
    pub fn in_text_order<V>(map: &BTreeMap<u32, V>) -> Vec<(u32, &V)> {
        let mut entries: Vec<(String, u32, &V)> =
            map.iter().map(|(k, v)| (k.to_string(), *k, v)).collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.into_iter().map(|(_, k, v)| (k, v)).collect()
    }

    /// Writes the map with string keys, in text order.
    pub fn serialize<S: Serializer, V: serde::Serialize>(
        map: &BTreeMap<u32, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut out = s.serialize_map(Some(map.len()))?;
        for (k, v) in in_text_order(map) {
            out.serialize_entry(&k.to_string(), v)?;
        }
        out.end()
    }
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

/// How a time that is not RFC 3339 text is read back from a state file (an
/// older scanner's, or one edited by hand; the old model carried such text
/// verbatim). One such value must not make the whole previous state
/// unreadable, so none of these fails:
///
/// - an optional time (`created_at`, `idle_since`, `last_scan`) is absent:
///   the empty text, `null`, or anything else that does not parse is `None`
///   (for `last_scan`: as if no scan had written the state);
/// - a required time (`detected_at`, the scan report's `started_at`, an
///   event's `timestamp`, a `_told_gone` value) is the moment it was read, which
///   is the start of the scan reading it to the second or so: the workload
///   is kept, as first seen by this scan, rather than dropped or dated to
///   the epoch (which would make it decades old in every age and
///   GPU-hours figure). A warning says which text was replaced.
///
/// A missing required field is still an error, as it always was.
mod lenient_time {
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::timefmt::Timestamp;

    /// What a state holds where a time belongs: its text (borrowed from the
    /// JSON where it has no escapes), or something else, by its kind.
    enum Held<'de> {
        Text(Cow<'de, str>),
        Other(&'static str),
    }

    impl<'de> Deserialize<'de> for Held<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(HeldVisitor)
        }
    }

    struct HeldVisitor;

    impl<'de> Visitor<'de> for HeldVisitor {
        type Value = Held<'de>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 timestamp")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Held<'de>, E> {
            Ok(Held::Text(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Held<'de>, E> {
            Ok(Held::Text(Cow::Owned(v.to_string())))
        }
        fn visit_unit<E>(self) -> Result<Held<'de>, E> {
            Ok(Held::Other("null"))
        }
        fn visit_none<E>(self) -> Result<Held<'de>, E> {
            Ok(Held::Other("null"))
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Held<'de>, D::Error> {
            Held::deserialize(d)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Held<'de>, E> {
            Ok(Held::Other("a boolean"))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Held<'de>, E> {
            Ok(Held::Other("a number"))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Held<'de>, E> {
            Ok(Held::Other("a number"))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Held<'de>, E> {
            Ok(Held::Other("a number"))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Held<'de>, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Held::Other("a list"))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Held<'de>, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Held::Other("an object"))
        }
    }

    /// The time held, if it is RFC 3339 text.
    fn read(held: &Held<'_>) -> Option<Timestamp> {
        match held {
            Held::Text(text) => Timestamp::parse(text).ok(),
            Held::Other(_) => None,
        }
    }

    /// The time held, else now (with a warning).
    fn read_or_now(held: &Held<'_>) -> Timestamp {
        read(held).unwrap_or_else(|| {
            let text: String = match held {
                Held::Text(text) => format!("{:?}", text.chars().take(64).collect::<String>()),
                Held::Other(kind) => kind.to_string(),
            };
            tracing::warn!(value = %text, "unreadable timestamp in the state: read as now");
            Timestamp::now()
        })
    }

    /// An optional time: `None` unless it parses.
    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        Ok(read(&Held::deserialize(d)?))
    }

    /// A required time: now unless it parses.
    pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        Ok(read_or_now(&Held::deserialize(d)?))
    }

    /// Times by key, each a required one.
    pub fn map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Timestamp>, D::Error> {
        let values = BTreeMap::<String, Held<'de>>::deserialize(d)?;
        Ok(values
            .into_iter()
            .map(|(k, v)| {
                let t = read_or_now(&v);
                (k, t)
            })
            .collect())
    }

    /// `Inventory::last_scan`: `""` for `None`, as the text field was
    /// written when empty; read as an optional time.
    pub mod or_empty {
        use super::*;

        pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => t.serialize(s),
                None => s.serialize_str(""),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
            optional(d)
        }
    }
}

/// How one scan cycle went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScanReport {
    /// When the cycle started.
    #[serde(deserialize_with = "lenient_time::required")]
    pub started_at: Timestamp,
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
    /// It failed because its source is not on this machine (no socket, no
    /// library, no command): not installed, rather than broken.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unavailable: bool,
    /// Collector-specific counters (for example Docker API calls).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, u64>,
    /// What it provides (so that a reader of the inventory can tell "no
    /// container source answered" from "no containers").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provides: Vec<FactKind>,
}

/// A transition between two inventories.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Event time (the scan's start).
    #[serde(deserialize_with = "lenient_time::required")]
    pub timestamp: Timestamp,
    /// Its type.
    pub event_type: EventType,
    /// The user it concerns (omitted when empty).
    #[serde(default)]
    pub user: String,
    /// The event's fields.
    pub details: serde_json::Value,
    /// Identifies this transition: a UUID, the same each time it is offered
    /// again (see [`Outbox`]); empty until the cycle names it.
    #[serde(default)]
    pub event_id: String,
}

/// The events a state owes to the event log: written in the same file (and
/// the same atomic rename) as the inventory they lead to, before any of them
/// is appended. Once every event sink has taken them the state store records
/// the outbox's `id` as delivered ([`crate::plugin::StateStore::delivered`]);
/// an outbox found undelivered at the next start is offered again, and each
/// event sink appends only the events its log does not already hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outbox {
    /// A UUID naming this outbox (one per state written with events).
    pub id: String,
    /// The events, oldest first.
    pub events: Vec<Event>,
}

/// The type of an [`Event`], written as its `detection.*` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    /// A container appeared.
    #[serde(rename = "detection.container_discovered")]
    ContainerDiscovered,
    /// A container's engine state changed.
    #[serde(rename = "detection.container_status_changed")]
    ContainerStatusChanged,
    /// A container is gone.
    #[serde(rename = "detection.container_exited")]
    ContainerExited,
    /// A host GPU process was confirmed.
    #[serde(rename = "detection.host_gpu_process_discovered")]
    HostGpuProcessDiscovered,
    /// A confirmed host GPU process is gone.
    #[serde(rename = "detection.host_gpu_process_exited")]
    HostGpuProcessExited,
    /// The first GPU process in a container was confirmed.
    #[serde(rename = "detection.container_gpu_started")]
    ContainerGpuStarted,
    /// The last GPU process in a container is gone.
    #[serde(rename = "detection.container_gpu_stopped")]
    ContainerGpuStopped,
    /// A container's GPU use stopped matching what it was granted.
    #[serde(rename = "detection.container_gpu_mismatch")]
    ContainerGpuMismatch,
    /// A user's GPU use through short-lived processes was confirmed.
    #[serde(rename = "detection.user_gpu_use_started")]
    UserGpuUseStarted,
    /// A user's confirmed GPU use through short-lived processes ended.
    #[serde(rename = "detection.user_gpu_use_stopped")]
    UserGpuUseStopped,
    /// A workload has been idle for the `idle` stage's `idle_after`.
    #[serde(rename = "detection.workload_idle")]
    WorkloadIdle,
    /// A workload told idle is active again.
    #[serde(rename = "detection.workload_active")]
    WorkloadActive,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 12] = [
        EventType::ContainerDiscovered,
        EventType::ContainerStatusChanged,
        EventType::ContainerExited,
        EventType::HostGpuProcessDiscovered,
        EventType::HostGpuProcessExited,
        EventType::ContainerGpuStarted,
        EventType::ContainerGpuStopped,
        EventType::ContainerGpuMismatch,
        EventType::UserGpuUseStarted,
        EventType::UserGpuUseStopped,
        EventType::WorkloadIdle,
        EventType::WorkloadActive,
    ];

    /// Its `detection.*` name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ContainerDiscovered => "detection.container_discovered",
            EventType::ContainerStatusChanged => "detection.container_status_changed",
            EventType::ContainerExited => "detection.container_exited",
            EventType::HostGpuProcessDiscovered => "detection.host_gpu_process_discovered",
            EventType::HostGpuProcessExited => "detection.host_gpu_process_exited",
            EventType::ContainerGpuStarted => "detection.container_gpu_started",
            EventType::ContainerGpuStopped => "detection.container_gpu_stopped",
            EventType::ContainerGpuMismatch => "detection.container_gpu_mismatch",
            EventType::UserGpuUseStarted => "detection.user_gpu_use_started",
            EventType::UserGpuUseStopped => "detection.user_gpu_use_stopped",
            EventType::WorkloadIdle => "detection.workload_idle",
            EventType::WorkloadActive => "detection.workload_active",
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_sources_round_trip_as_text() {
        for (source, text) in [
            (UserSource::Label("ds01.user".into()), "label:ds01.user"),
            (
                UserSource::PathLabel("devcontainer.local_folder".into()),
                "path-label:devcontainer.local_folder",
            ),
            (UserSource::CgroupParent, "cgroup-parent"),
            (UserSource::ProcessOwner, "process-owner"),
            (UserSource::ConfigUser, "config-user"),
            (UserSource::Unknown, "unknown"),
        ] {
            assert_eq!(serde_json::to_value(&source).ok(), Some(text.into()));
            assert_eq!(
                serde_json::from_value::<UserSource>(text.into()).ok(),
                Some(source)
            );
        }
        assert_eq!(
            serde_json::from_value::<UserSource>("from-mars".into()).ok(),
            Some(UserSource::Unknown)
        );
    }

    #[test]
    fn containers_always_say_where_their_user_came_from() {
        let entry = ContainerEntry::default();
        let json = serde_json::to_value(&entry).unwrap_or_default();
        assert_eq!(json["user_source"], "unknown");
        // An inventory written before the field existed still reads.
        let mut old = json;
        if let Some(o) = old.as_object_mut() {
            o.remove("user_source");
        }
        let back: Result<ContainerEntry, _> = serde_json::from_value(old);
        assert_eq!(back.ok().map(|e| e.user_source), Some(UserSource::Unknown));
    }

    #[test]
    fn event_types_are_written_as_their_names() {
        for t in EventType::ALL {
            let json = serde_json::to_string(&t).expect("encode");
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<EventType>(&json).ok(), Some(t));
        }
    }

    #[test]
    fn pid_keys_are_written_as_strings_in_text_order() {
        let mut inv = Inventory::default();
        for pid in [9, 10, 100] {
            let entry = ProcessEntry {
                pid,
                ..Default::default()
            };
            inv.host_processes.insert(pid, entry);
        }
        let json = serde_json::to_value(&inv).expect("encode");
        let keys: Vec<&String> = json["host_processes"]
            .as_object()
            .expect("object")
            .keys()
            .collect();
        assert_eq!(keys, ["10", "100", "9"]);
        let text = serde_json::to_string(&inv).expect("encode");
        assert!(
            text.contains(r#""host_processes":{"10":{"pid":10,"#),
            "{text}"
        );
        let back: Inventory = serde_json::from_str(&text).expect("decode");
        assert_eq!(back, inv);
    }

    #[test]
    fn a_process_is_its_pid_and_start_time() {
        let e = ProcessEntry {
            pid: 7,
            start_time: Some(100),
            ..Default::default()
        };
        assert!(e.is_process(7, Some(100)));
        assert!(!e.is_process(7, Some(101)), "PID reused by a new process");
        assert!(!e.is_process(8, Some(100)));
        assert!(e.is_process(7, None), "no start time recorded: any");
        let old = ProcessEntry {
            start_time: None,
            ..e
        };
        assert!(old.is_process(7, Some(5)));
    }

    #[test]
    fn the_container_key_is_the_short_id() {
        assert_eq!(short_id(&"ab".repeat(32)), "abababababab");
        assert_eq!(short_id("abc"), "abc");
        // Characters, not bytes, as `chars().take(12)` counts them.
        for id in [
            "",
            "é",
            "0123456789aé",
            "0123456789abé",
            "éééééééééééééé",
            "日本語の名前だけのとても長いもの",
        ] {
            let chars: String = id.chars().take(12).collect();
            assert_eq!(short_id(id), chars, "{id}");
            assert_eq!(short_key(id), chars, "{id}");
        }
    }

    /// An inventory with every timestamp the model holds, in the text the
    /// scanner has always written: read and written back, it is the same
    /// bytes.
    const FULL_INVENTORY: &str = concat!(
        r#"{"last_scan":"2026-11-26T06:11:49Z","containers":{"#,
        r#""0123456789ab":{"id":"0123456789ab","name":"alice-jupyter","origin":"ds01-managed","user":"alice","user_source":"label:ds01.user","has_gpu":true,"gpu_devices":["0:1"],"status":"running","image":"ds01/pytorch:latest","created_at":"2026-11-24T06:40:00Z","detected_at":"2026-11-26T05:40:00Z","collector":"docker","inspect":{"runtime":"nvidia","main_pid":4242,"started_at":"2026-11-26T05:40:02.123456789Z"},"gpu_in_use":false,"activity":{"cpu_cores":0.01,"net_bytes_per_s":0.0,"gpu_util_percent":null,"sampled_s":30.0,"idle_since":"2026-11-26T04:35:00Z","idle":true}},"#,
        r#""ba9876543210":{"id":"ba9876543210","name":"bob-old","origin":"docker-run","user":"bob","user_source":"unknown","has_gpu":false,"gpu_devices":[],"status":"exited","image":"busybox","detected_at":"2026-11-25T00:00:00Z","gpu_in_use":false,"activity":{"cpu_cores":null,"net_bytes_per_s":null,"gpu_util_percent":null,"sampled_s":null,"idle_since":null,"idle":false}}},"#,
        r#""host_processes":{"447":{"pid":447,"user":"alice","cmdline":"python3 train.py","gpu_memory_mb":40960,"gpu_uuid":"GPU-56c0b0b8","detected_at":"2026-11-26T06:39:00Z","start_time":1234,"seen_scans":3}},"#,
        r#""_pending_processes":{"448":{"pid":448,"user":"bob","cmdline":"python3 x.py","gpu_memory_mb":null,"gpu_uuid":"GPU-56c0b0b8","detected_at":"2026-11-26T06:11:49Z","seen_scans":1}},"#,
        r#""scan":{"started_at":"2026-11-26T06:11:49Z","duration_ms":14,"collectors":{"docker":{"ok":true,"duration_ms":3}}},"#,
        r#""unattributed_processes":{},"#,
        r#""user_gpu_use":[{"user":"carol","gpu_uuid":"GPU-56c0b0b8","gpu_memory_mb":512,"pids":[900],"processes_seen":4,"detected_at":"2026-11-26T06:10:49Z","seen_scans":2}],"#,
        r#""_told_gone":{"cafecafecafe":"2026-11-26T06:11:48Z"},"#,
        r#""_outbox":{"id":"6f1c","events":[{"timestamp":"2026-11-26T06:11:49Z","event_type":"detection.container_exited","user":"bob","details":{"container_id":"cafecafecafe","name":"blink","origin":"compose","short_lived":true,"created_at":"2026-11-26T06:11:40Z","removed_at":"2026-11-26T06:11:45Z"},"event_id":"a1"}]}}"#,
    );

    #[test]
    fn an_inventory_is_written_back_byte_for_byte() {
        let inv: Inventory = serde_json::from_str(FULL_INVENTORY).expect("decode");
        let c = &inv.containers["0123456789ab"];
        assert_eq!(c.created_at.map(|t| t.unix_seconds()), Some(1_795_502_400));
        assert_eq!(
            inv.containers["ba9876543210"].created_at, None,
            "absent is None"
        );
        let text = serde_json::to_string(&inv).expect("encode");
        assert_eq!(text, FULL_INVENTORY);
        let pretty = serde_json::to_string_pretty(&inv).expect("encode");
        let back: Inventory = serde_json::from_str(&pretty).expect("decode");
        assert_eq!(back, inv);
        // No scan wrote it: `last_scan` is the empty text, as it was.
        let empty = serde_json::to_string(&Inventory::default()).expect("encode");
        assert!(empty.starts_with(r#"{"last_scan":"","#), "{empty}");
        let back: Inventory = serde_json::from_str(&empty).expect("decode");
        assert_eq!(back.last_scan, None);
    }

    #[test]
    fn an_event_line_is_written_back_byte_for_byte() {
        let line = r#"{"timestamp":"2026-11-26T06:11:49Z","event_type":"detection.workload_active","user":"alice","details":{"kind":"container","container_id":"0123456789ab","name":"alice-jupyter","gpu_memory_mb":null,"gpu_uuids":[],"idle_since":"2026-11-26T04:35:00Z","idle_for_s":6409},"event_id":"9b2e"}"#;
        let event: Event = serde_json::from_str(line).expect("decode");
        assert_eq!(event.timestamp.unix_seconds(), 1_795_673_509);
        assert_eq!(serde_json::to_string(&event).expect("encode"), line);
    }

    #[test]
    fn a_time_that_does_not_parse_leaves_the_rest_of_the_state_readable() {
        let bad = FULL_INVENTORY
            // Optional: absent.
            .replace("2026-11-24T06:40:00Z", "last Tuesday")
            .replace(
                r#""idle_since":"2026-11-26T04:35:00Z""#,
                r#""idle_since":"soon""#,
            )
            // Required: the moment it was read.
            .replace("2026-11-26T05:40:00Z", "")
            .replace("2026-11-26T06:39:00Z", "06:39")
            .replace("2026-11-26T06:10:49Z", "?")
            .replace("2026-11-26T06:11:48Z", "x")
            .replace(
                r#""started_at":"2026-11-26T06:11:49Z""#,
                r#""started_at":null"#,
            )
            .replace(
                r#""timestamp":"2026-11-26T06:11:49Z""#,
                r#""timestamp":1795673509"#,
            )
            .replacen("2026-11-26T06:11:49Z", "2026-11-26 06:11:49", 1);
        let before = crate::timefmt::Timestamp::now();
        let inv: Inventory = serde_json::from_str(&bad).expect("still readable");
        let after = crate::timefmt::Timestamp::now();
        let read_now = |t: Timestamp| before <= t && t <= after;
        assert_eq!(inv.last_scan, None, "as if no scan had written it");
        let c = &inv.containers["0123456789ab"];
        assert_eq!(c.created_at, None);
        assert_eq!(c.activity.as_ref().and_then(|a| a.idle_since), None);
        assert!(read_now(c.detected_at), "{}", c.detected_at);
        assert!(read_now(inv.host_processes[&447].detected_at));
        assert!(read_now(inv.user_gpu_use[0].detected_at));
        assert!(read_now(inv.told_gone["cafecafecafe"]));
        assert!(inv.scan.as_ref().is_some_and(|s| read_now(s.started_at)));
        let events = inv.outbox.as_ref().map(|o| &o.events[..]).unwrap_or(&[]);
        assert!(read_now(events[0].timestamp));
        // The rest is as written.
        assert_eq!(c.name, "alice-jupyter");
        assert_eq!(inv.containers.len(), 2);
        assert_eq!(
            inv.pending_processes[&448].detected_at.to_string(),
            "2026-11-26T06:11:49Z"
        );
        // A missing required time is still an error, as it was.
        let missing = FULL_INVENTORY.replace(r#""detected_at":"2026-11-25T00:00:00Z","#, "");
        assert!(serde_json::from_str::<Inventory>(&missing).is_err());
    }

    #[test]
    fn container_facts_without_a_creation_time_leave_it_out() {
        let facts = ContainerFacts::default();
        let json = serde_json::to_value(&facts).expect("encode");
        assert!(json.get("created_at").is_none(), "{json}");
        let empty: ContainerFacts =
            serde_json::from_str(r#"{"id":"a","name":"n","labels":{},"state":"running","image":"i","created_at":"","inspect":null}"#)
                .expect("decode");
        assert_eq!(empty.created_at, None);
    }

    #[test]
    fn the_engines_start_time_is_kept_as_the_engine_wrote_it() {
        for text in [
            "2026-11-26T05:40:02.123456789Z",
            "2026-11-26T05:40:02.1234Z",
            "2026-11-26T05:40:02Z",
            "2026-11-26T06:40:02.5+01:00",
            "0001-01-01T00:00:00Z",
        ] {
            let inspect = InspectFacts {
                started_at: text.to_string(),
                ..InspectFacts::default()
            };
            let json = serde_json::to_string(&inspect).expect("encode");
            assert_eq!(json, format!(r#"{{"started_at":"{text}"}}"#));
            let back: InspectFacts = serde_json::from_str(&json).expect("decode");
            assert_eq!(back.started_at, text);
            // Its readers get the instant, to the second.
            assert!(Timestamp::parse(text).is_ok(), "{text}");
        }
        // Why it is not a Timestamp: whole UTC seconds lose the fraction
        // and the offset, so the text would change.
        for text in [
            "2026-11-26T05:40:02.123456789Z",
            "2026-11-26T05:40:02.1234Z",
        ] {
            let t = Timestamp::parse(text).expect("parse");
            assert_eq!(t.to_string(), "2026-11-26T05:40:02Z");
        }
        let t = Timestamp::parse("2026-11-26T06:40:02.5+01:00").expect("parse");
        assert_eq!(t.to_string(), "2026-11-26T05:40:02Z");
    }
}
