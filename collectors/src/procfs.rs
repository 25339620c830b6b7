//! Collector `procfs`: the one place that reads `/proc`, through the `procfs`
//! crate. It attributes the GPU processes the other collectors found and the
//! main process of every running container: real uid and its user name (NSS,
//! once per uid per scan), command line, start time, cgroups and PID
//! namespace (cgroup v1 and v2). Reads only those PIDs (and, ahead, those
//! the previous scan read: see below), each file once. A
//! container's main process that is not also a GPU process is read for what
//! the core and the stages use of it (owner, cgroups, PID namespace), since
//! these reads wait for the container list and grow with the running
//! containers.
//!
//! Its head start ([`Collector::head_start`]) reads, while the engine still
//! lists the containers, the processes the previous inventory names (its GPU
//! processes in full, its running containers' main processes for their
//! owner); `collect` takes from that read each process it is asked for
//! again at the same depth and in the same role, and reads the others: in a
//! steady scan, nothing waits for the list. A read ahead still running when
//! the list is in is stopped, and `collect` reads everything itself (a
//! process stuck in the kernel or a slow state costs nothing more). It also
//! narrows the time between the GPU listing and the `/proc` read of the
//! PIDs it names: both start with the cycle, where a read after the list
//! left the whole list between them (a PID reused meanwhile is another
//! process's).
//!
//! Every file is read as bytes, at most 64 KiB of it ([`CMDLINE_READ_CAP`],
//! [`FILE_READ_CAP`]), and decoded lossily (a process name or a cgroup path
//! is not always UTF-8: invalid bytes become U+FFFD). A PID that is gone is
//! skipped quietly; a process whose files cannot all be read is still
//! reported with what is known (its owner from the owner of `/proc/<pid>`),
//! with `read_error`, logged at WARN and counted (stat `read_errors`).
//!
//! Whether a cgroup path *looks* like a container's is recorded as a claim
//! (`in_container`, `container_id`); the core decides membership.
//!
//! Every read and NSS lookup runs on tokio's blocking pool, so that the
//! collector's timeout can abandon a read that never returns (a `cmdline`
//! whose process is stuck in the kernel, a directory service that does not
//! answer): the collector is then recorded as timed out and its facts are
//! carried over.
//!
//! Needs: read access to `/proc/<pid>/{stat,status,cmdline,cgroup,ns/pid}`
//! (root to see other users' command lines under `hidepid` and their
//! namespaces). `root` can point elsewhere for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use detect_workloads_api::async_trait;
use detect_workloads_api::config::{ConfigError, PluginConfig};
use detect_workloads_api::model::Inventory;
use detect_workloads_api::model::{
    cgroup_segment_id, Argv, CgroupMembership, Counters, FactKind, Observations, ProcessFacts,
};
use detect_workloads_api::plugin::{
    CollectContext, CollectError, Collected, Collector, CollectorPlugin, HeadStart,
};
use detect_workloads_api::users::UserNames;
use procfs::process::{Process, Stat, Status};
use procfs::ProcessCGroups;
use procfs::{FromBufRead, FromRead, ProcError, ProcResult};
use serde::Deserialize;
use tracing::{debug, warn};

use crate::activity::{self, Net};

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample procfs`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[collectors.procfs]]
root = "/proc"
cgroup_root = "/sys/fs/cgroup"  # containers' CPU time is read from their cgroups here
"#;

/// `[[collectors.procfs]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcfsConfig {
    /// Where `/proc` is.
    pub root: PathBuf,
    /// Where the cgroup hierarchies are mounted.
    pub cgroup_root: PathBuf,
}

impl Default for ProcfsConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/proc"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// The `procfs` collector.
#[derive(Debug)]
pub struct Procfs {
    config: ProcfsConfig,
}

/// At most this much of a command line is read (before redaction and the
/// stored cap): the cost of a process does not grow with what its owner
/// put in its `argv`.
pub const CMDLINE_READ_CAP: usize = 64 * 1024;

/// At most this much of `stat`, `status` or `cgroup` is read (a cgroup
/// path is the one of these a user can make long, through delegation).
pub const FILE_READ_CAP: usize = 64 * 1024;

/// `/proc/<pid>/cmdline`: NUL separators become spaces, bytes are decoded as
/// UTF-8 with replacement, the trailing NUL is dropped.
pub fn cmdline_text(bytes: &[u8]) -> String {
    cmdline_args(bytes).joined()
}

/// `/proc/<pid>/cmdline` as its arguments (bytes decoded as UTF-8 with
/// replacement), kept as the kernel does: one string, a NUL after each.
pub fn cmdline_args(bytes: &[u8]) -> Argv {
    Argv::from_nul_terminated(String::from_utf8_lossy(bytes).into_owned())
}

/// What a process's cgroup paths claim about containment (see
/// [`ProcessFacts::in_container`]: a claim, which the core checks).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupInfo {
    /// A path looks like a container's.
    pub in_container: bool,
    /// The 64-hex container id in the path, when there is one.
    pub container_id: Option<String>,
}

/// The cgroup paths of a process (one per v1 hierarchy, one for v2). A path
/// looks like a container's when one of its segments names one (a runtime's
/// name with a 64-hex id: `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`; or the bare id the cgroupfs
/// driver uses: `/docker/<id>`, `/ds01-students-alice.slice/<id>`), or when
/// it lies under `kubepods` (a pod, id unknown). In a nested path (a
/// container in a container) the outermost id is taken: the one the host's
/// engine knows.
pub fn cgroup_info<'a>(paths: impl IntoIterator<Item = &'a str>) -> CgroupInfo {
    let mut pod = false;
    for path in paths {
        if let Some(id) = path.split('/').find_map(cgroup_segment_id) {
            return CgroupInfo {
                in_container: true,
                container_id: Some(id.to_string()),
            };
        }
        pod |= path.contains("kubepods");
    }
    CgroupInfo {
        in_container: pod,
        container_id: None,
    }
}

/// Up to `cap` bytes of a file under the process's directory, and whether
/// there was more.
fn read_capped(process: &Process, name: &str, cap: usize) -> ProcResult<(Vec<u8>, bool)> {
    let file = process.open_relative(name)?;
    let mut bytes = Vec::new();
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(ProcError::from)?;
    let more = bytes.len() > cap;
    bytes.truncate(cap);
    Ok((bytes, more))
}

/// A file read as bytes and decoded lossily (a name is not always UTF-8).
fn read_lossy(process: &Process, name: &str) -> ProcResult<String> {
    let (bytes, _) = read_capped(process, name, FILE_READ_CAP)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The arguments, at most [`CMDLINE_READ_CAP`] bytes of them (the last
/// ending in `…` when there was more).
fn read_argv(process: &Process) -> ProcResult<Argv> {
    let (mut bytes, more) = read_capped(process, "cmdline", CMDLINE_READ_CAP)?;
    if more {
        // The last argument, cut: it ends in `…`.
        if bytes.last() == Some(&0) {
            bytes.pop();
        }
        bytes.extend_from_slice("…".as_bytes());
    }
    Ok(cmdline_args(&bytes))
}

fn read_stat(process: &Process) -> ProcResult<Stat> {
    Stat::from_read(read_lossy(process, "stat")?.as_bytes())
}

fn read_status(process: &Process) -> ProcResult<Status> {
    Status::from_buf_read(read_lossy(process, "status")?.as_bytes())
}

fn read_cgroups(process: &Process) -> ProcResult<Vec<CgroupMembership>> {
    let groups = ProcessCGroups::from_buf_read(read_lossy(process, "cgroup")?.as_bytes())?;
    Ok(groups
        .into_iter()
        .map(|g| CgroupMembership {
            hierarchy: format!("{}:{}", g.hierarchy, g.controllers.join(",")),
            path: g.pathname,
        })
        .collect())
}

/// The inode of a PID namespace link (`pid:[4026531836]`).
fn namespace_inode(link: &Path) -> Option<u64> {
    let target = std::fs::read_link(link).ok()?;
    let text = target.to_str()?;
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// The host's PID namespace: init's, else this process's own.
pub fn host_pid_namespace(root: &Path) -> Option<u64> {
    namespace_inode(&root.join("1/ns/pid"))
        .or_else(|| namespace_inode(Path::new("/proc/self/ns/pid")))
}

/// What every read needs to know of the whole host.
#[derive(Debug, Clone, Copy, Default)]
pub struct Host {
    /// The host's PID namespace (see [`host_pid_namespace`]).
    pub pid_namespace: Option<u64>,
}

/// Why a process's files could not be read, when they are there.
#[derive(Debug, Default)]
struct Problems(Vec<String>);

impl Problems {
    fn note<T>(&mut self, what: &str, result: ProcResult<T>) -> Result<Option<T>, ProcError> {
        match result {
            Ok(value) => Ok(Some(value)),
            // Gone meanwhile: the whole process is.
            Err(ProcError::NotFound(p)) => Err(ProcError::NotFound(p)),
            Err(e) => {
                self.0.push(format!("{what}: {e}"));
                Ok(None)
            }
        }
    }

    fn text(self) -> Option<String> {
        (!self.0.is_empty()).then(|| self.0.join("; "))
    }
}

/// The owner of `/proc/<pid>` (the process's effective uid as the kernel
/// shows it): the owner when `status` cannot be read.
fn directory_owner(root: &Path, pid: u32) -> ProcResult<u32> {
    std::fs::metadata(root.join(pid.to_string()))
        .map(|m| m.uid())
        .map_err(ProcError::from)
}

/// The facts of one process (user name not yet resolved), at this depth.
/// A process whose files cannot all be read is still reported with what is
/// known (`read_error` says what was not); only a process that is gone
/// yields `Err(NotFound)`.
fn try_read(root: &Path, pid: u32, depth: Depth, host: Host) -> ProcResult<ProcessFacts> {
    let process = Process::new_with_root(root.join(pid.to_string()))?;
    let mut problems = Problems::default();
    let uid = match problems.note("status", read_status(&process))? {
        Some(status) => status.ruid,
        None => directory_owner(root, pid)?,
    };
    let cgroups = problems
        .note("cgroup", read_cgroups(&process))?
        .unwrap_or_default();
    let claim = cgroup_info(cgroups.iter().map(|g| g.path.as_str()));
    let pid_namespace = namespace_inode(&root.join(pid.to_string()).join("ns/pid")).filter(|ns| {
        // Not the host's: unknown host, or another namespace.
        host.pid_namespace != Some(*ns)
    });
    let mut facts = ProcessFacts {
        pid,
        uid,
        in_container: claim.in_container,
        container_id: claim.container_id,
        cgroups,
        pid_namespace,
        ..Default::default()
    };
    if depth == Depth::Full {
        if let Some(stat) = problems.note("stat", read_stat(&process))? {
            facts.comm = stat.comm;
            facts.start_time = stat.starttime;
        }
        // A kernel thread has no command line; its name stands in.
        // The line people read is made from it by the `redact` stage
        // (always in force): one copy of up to 64 KiB per process, not two.
        facts.argv = read_argv(&process).unwrap_or_default();
        if facts.argv.is_empty() {
            facts.cmdline = format!("[{}]", facts.comm);
        }
        facts.exe = process.exe().ok().map(|p| p.to_string_lossy().into_owned());
    }
    facts.read_error = problems.text();
    Ok(facts)
}

/// How much of a process to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Everything ([`ProcessFacts`] in full): a GPU process.
    Full,
    /// Owner, cgroups and PID namespace only: a container's main process
    /// holding no GPU.
    Owner,
}

/// The facts of one process (user name not yet resolved); `None` when it is
/// gone.
pub fn read_process(root: &Path, pid: u32) -> Option<ProcessFacts> {
    read_at_depth(root, pid, Depth::Full, Host::default())
}

/// [`read_process`] at this depth.
pub fn read_at_depth(root: &Path, pid: u32, depth: Depth, host: Host) -> Option<ProcessFacts> {
    match try_read(root, pid, depth, host) {
        Ok(facts) => {
            if let Some(why) = &facts.read_error {
                warn!(
                    pid,
                    uid = facts.uid,
                    "some of its /proc files cannot be read ({why}); reported with what is known"
                );
            }
            Some(facts)
        }
        Err(e) => {
            debug!(pid, "gone from /proc ({e}); skipped");
            None
        }
    }
}

/// The PIDs to read, each once and at the depth it needs: every GPU process in
/// full, then the main process of every running container that is not one.
pub fn pids_to_read(observed: &Observations) -> Vec<(u32, Depth)> {
    let gpu: BTreeSet<u32> = observed.gpu_pids().into_iter().collect();
    let mains: BTreeSet<u32> = observed
        .containers
        .iter()
        .filter_map(|c| c.inspect.as_ref())
        .map(|i| i.main_pid)
        .filter(|pid| *pid > 0 && !gpu.contains(pid))
        .collect();
    let full = gpu.into_iter().map(|pid| (pid, Depth::Full));
    full.chain(mains.into_iter().map(|pid| (pid, Depth::Owner)))
        .collect()
}

/// The main process of every running container.
pub fn main_pids(observed: &Observations) -> BTreeSet<u32> {
    observed
        .containers
        .iter()
        .filter_map(|c| c.inspect.as_ref())
        .map(|i| i.main_pid)
        .filter(|pid| *pid > 0)
        .collect()
}

/// One process as read: its facts (user named) and the activity counters
/// that could not be read.
#[derive(Debug, Clone)]
struct ProcessRead {
    /// How deep it was read.
    depth: Depth,
    /// Whether it was read as a container's main process (its cgroup's
    /// counters) rather than a process of its own.
    main: bool,
    facts: ProcessFacts,
    activity_errors: u64,
}

/// What one read of `/proc` found.
#[derive(Debug, Default)]
struct Found {
    processes: BTreeMap<u32, ProcessFacts>,
    /// Processes reported with a `read_error`.
    read_errors: u64,
    /// Activity counters that could not be read.
    activity_errors: u64,
    /// Processes read ahead (the head start) and used.
    read_ahead: u64,
}

impl Found {
    fn add(&mut self, pid: u32, read: ProcessRead) {
        self.read_errors += u64::from(read.facts.read_error.is_some());
        self.activity_errors += read.activity_errors;
        self.processes.insert(pid, read.facts);
    }
}

/// What the head start read: the processes the previous inventory says the
/// cycle will ask about, at the depth and in the role it says, by PID.
#[derive(Debug, Default)]
struct ReadAhead(BTreeMap<u32, ProcessRead>);

/// The PIDs the previous inventory says this cycle will read, as
/// [`pids_to_read`] and [`main_pids`] will find them in its observations
/// when nothing changed: its GPU processes in full, then the main process
/// of every running container that is not one.
fn pids_ahead(previous: &Inventory) -> (Vec<(u32, Depth)>, BTreeSet<u32>) {
    let gpu: BTreeSet<u32> = previous.gpu_process_pids().collect();
    let mains: BTreeSet<u32> = previous
        .containers
        .values()
        .filter_map(|c| c.inspect.as_ref())
        .map(|i| i.main_pid)
        .filter(|pid| *pid > 0)
        .collect();
    let full = gpu.iter().map(|&pid| (pid, Depth::Full));
    let owner = mains.iter().filter(|pid| !gpu.contains(pid));
    let pids = full.chain(owner.map(|&pid| (pid, Depth::Owner))).collect();
    (pids, mains)
}

/// Nanoseconds since the Unix epoch, now.
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Where the activity counters are read.
struct Roots<'a> {
    proc: &'a Path,
    cgroup: activity::CgroupMounts,
    /// The host's network namespace (traffic in it is the host's).
    host_net: Option<u64>,
}

/// The counters of a container's main process: its cgroup's CPU time (every
/// process of the container) and its network namespace's bytes. What cannot
/// be read stays `None`; the number of such reads is added to `errors`.
fn container_counters(roots: &Roots<'_>, pid: u32, errors: &mut u64) -> Counters {
    let mut counters = Counters {
        at_ns: now_ns(),
        ..Counters::default()
    };
    match roots.cgroup.cpu(roots.proc, pid) {
        Ok(Some(cpu)) => {
            counters.cpu_ns = Some(cpu.usage_ns);
            counters.cpu_of = format!("cgroup:{}", cpu.cgroup);
        }
        Ok(None) => {}
        Err(e) => {
            *errors += 1;
            debug!(pid, "cgroup CPU time not read: {e}");
        }
    }
    if let Some(host) = roots.host_net {
        match activity::net_bytes(roots.proc, pid, host) {
            Ok(Some(Net::Host)) => counters.host_network = true,
            Ok(Some(Net::Own { ns, bytes })) => {
                counters.net_bytes = Some(bytes);
                counters.net_ns = Some(ns);
            }
            Ok(None) => {}
            Err(e) => {
                *errors += 1;
                debug!(pid, "network bytes not read: {e}");
            }
        }
    }
    counters
}

/// The counters of a host GPU process: its own `utime + stime`.
fn process_counters(roots: &Roots<'_>, pid: u32, errors: &mut u64) -> Counters {
    let mut counters = Counters {
        at_ns: now_ns(),
        ..Counters::default()
    };
    match activity::process_cpu_ns(roots.proc, pid) {
        Ok(Some(cpu)) => {
            counters.cpu_ns = Some(cpu.cpu_ns);
            counters.cpu_of = format!("process:{}", cpu.start);
        }
        Ok(None) => {}
        Err(e) => {
            *errors += 1;
            debug!(pid, "CPU time not read: {e}");
        }
    }
    counters
}

/// What reading a process needs: where `/proc` and the cgroups are, and
/// the host's namespaces.
struct Reader<'a> {
    host: Host,
    roots: Roots<'a>,
    users: &'a UserNames,
}

impl<'a> Reader<'a> {
    /// `Unavailable` when `/proc` cannot be listed at all.
    fn open(config: &'a ProcfsConfig, users: &'a UserNames) -> Result<Self, CollectError> {
        let root = config.root.as_path();
        if let Err(e) = std::fs::read_dir(root) {
            return Err(CollectError::Unavailable(format!(
                "cannot read {}: {e}",
                root.display()
            )));
        }
        Ok(Reader {
            host: Host {
                pid_namespace: host_pid_namespace(root),
            },
            roots: Roots {
                proc: root,
                cgroup: activity::CgroupMounts::new(&config.cgroup_root),
                host_net: activity::host_net_namespace(root).map(|h| h.ns),
            },
            users,
        })
    }

    /// One process, its owner named, with its activity counters: a
    /// container's main process (`main`) its cgroup's, any other its own.
    /// `None` when it is gone.
    fn read(&self, pid: u32, depth: Depth, main: bool) -> Option<ProcessRead> {
        let mut facts = read_at_depth(self.roots.proc, pid, depth, self.host)?;
        let mut activity_errors = 0;
        facts.user = self.users.name(facts.uid);
        facts.counters = Some(if main {
            container_counters(&self.roots, pid, &mut activity_errors)
        } else {
            process_counters(&self.roots, pid, &mut activity_errors)
        });
        Some(ProcessRead {
            depth,
            main,
            facts,
            activity_errors,
        })
    }
}

/// Takes from what the head start read (`ahead`) each process asked for
/// that it read at the same depth and in the same role (a container's main
/// process or not, `mains`); returns them and the PIDs left to read.
fn take_ahead(
    pids: &[(u32, Depth)],
    mains: &BTreeSet<u32>,
    mut ahead: ReadAhead,
) -> (Found, Vec<(u32, Depth)>) {
    let mut found = Found::default();
    let mut left = Vec::new();
    for &(pid, depth) in pids {
        let main = mains.contains(&pid);
        match ahead
            .0
            .remove(&pid)
            .filter(|r| r.depth == depth && r.main == main)
        {
            Some(read) => {
                found.read_ahead += 1;
                found.add(pid, read);
            }
            None => left.push((pid, depth)),
        }
    }
    (found, left)
}

/// Reads these PIDs under `root` and names their owners, with the activity
/// counters of container main processes (`mains`) and GPU processes, into
/// `found`. Blocking work, for the blocking pool.
fn read_rest(
    config: &ProcfsConfig,
    pids: &[(u32, Depth)],
    mains: &BTreeSet<u32>,
    users: &UserNames,
    mut found: Found,
) -> Result<Found, CollectError> {
    let reader = Reader::open(config, users)?;
    for &(pid, depth) in pids {
        if let Some(read) = reader.read(pid, depth, mains.contains(&pid)) {
            found.add(pid, read);
        }
    }
    Ok(found)
}

/// The head start: the processes [`pids_ahead`] names, read while the
/// engine still lists its containers; nothing when `/proc` cannot be
/// listed. Blocking work, for the blocking pool.
fn read_ahead(
    config: &ProcfsConfig,
    pids: &[(u32, Depth)],
    mains: &BTreeSet<u32>,
    users: &UserNames,
    stop: &AtomicBool,
) -> ReadAhead {
    let Ok(reader) = Reader::open(config, users) else {
        return ReadAhead::default();
    };
    ReadAhead(
        pids.iter()
            // Stopped (the collector started without it): no more reads.
            .take_while(|_| !stop.load(Ordering::Relaxed))
            .filter_map(|&(pid, depth)| Some((pid, reader.read(pid, depth, mains.contains(&pid))?)))
            .collect(),
    )
}

/// Sets its flag when dropped: the head start's future, stopped or done,
/// tells its reading thread to stop.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[async_trait]
impl Collector for Procfs {
    fn describe(&self) -> String {
        format!("reads {}", self.config.root.display())
    }

    fn provides(&self) -> &'static [FactKind] {
        &[FactKind::Processes]
    }

    fn needs(&self) -> &'static [FactKind] {
        &[FactKind::Containers, FactKind::GpuProcesses]
    }

    /// Reads the processes the previous scan read (its GPU processes, its
    /// running containers' main processes) while the engine lists the
    /// containers: in a steady scan nothing is left to read once it has.
    async fn head_start(&self, ctx: &CollectContext<'_>) -> Option<HeadStart> {
        let (pids, mains) = pids_ahead(ctx.previous.result().await.ok()?);
        if pids.is_empty() {
            return None;
        }
        let config = self.config.clone();
        let users = ctx.users.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let _stop = StopOnDrop(Arc::clone(&stop));
        let ahead =
            tokio::task::spawn_blocking(move || read_ahead(&config, &pids, &mains, &users, &stop))
                .await
                .ok()?;
        Some(HeadStart::new(Mutex::new(Some(ahead))))
    }

    async fn collect(&self, ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        let config = self.config.clone();
        let pids = pids_to_read(ctx.observed);
        let mains = main_pids(ctx.observed);
        let users = ctx.users.clone();
        let ahead = ctx
            .head_start
            .and_then(|h| h.get::<Mutex<Option<ReadAhead>>>())
            .and_then(|m| m.lock().ok()?.take())
            .unwrap_or_default();
        let (found, left) = take_ahead(&pids, &mains, ahead);
        let read = if left.is_empty() && found.read_ahead > 0 {
            // All read this cycle, by a head start that found `/proc` there.
            found
        } else {
            // On the blocking pool: a timeout abandons the task (its thread
            // ends when the read returns, or with the process).
            tokio::task::spawn_blocking(move || read_rest(&config, &left, &mains, &users, found))
                .await
                .map_err(|e| CollectError::Unavailable(format!("reading /proc failed: {e}")))??
        };
        debug!(
            processes = read.processes.len(),
            read_ahead = read.read_ahead,
            "processes read"
        );
        let mut stats = BTreeMap::new();
        if read.read_errors > 0 {
            stats.insert("read_errors".to_string(), read.read_errors);
        }
        if read.activity_errors > 0 {
            stats.insert("activity_errors".to_string(), read.activity_errors);
        }
        Ok(Collected {
            observations: Observations {
                processes: read.processes,
                ..Default::default()
            },
            stats,
        })
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Collector>, ConfigError> {
    Ok(Box::new(Procfs {
        config: config.parse()?,
    }))
}

detect_workloads_api::inventory::submit! {
    CollectorPlugin {
        name: "procfs",
        summary: "owner, command line, start time and cgroup of GPU processes; owner and cgroup of container main processes",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detect_workloads_api::model::Inventory;
    use detect_workloads_api::model::{ContainerFacts, GpuProcess, InspectFacts};
    use detect_workloads_api::plugin::Previous;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/proc/447");

    /// A crafted `/proc/<pid>` from the fixture, with these stat, uid, command
    /// line and cgroup.
    fn craft(root: &Path, pid: u32, uid: u32, cmdline: &[u8], cgroup: &str) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).expect("mkdir");
        let read =
            |name: &str| std::fs::read_to_string(Path::new(FIXTURE).join(name)).expect("fixture");
        let stat = read("stat").replacen("447", &pid.to_string(), 1);
        let status = read("status").replace("4242", &uid.to_string());
        std::fs::write(dir.join("stat"), stat).expect("w");
        std::fs::write(dir.join("status"), status).expect("w");
        std::fs::write(dir.join("cmdline"), cmdline).expect("w");
        std::fs::write(dir.join("cgroup"), cgroup).expect("w");
    }

    #[test]
    fn cmdline_nul_and_invalid_utf8() {
        assert_eq!(
            cmdline_text(b"python3\0train.py\0--epochs\x0010\0"),
            "python3 train.py --epochs 10"
        );
        assert_eq!(cmdline_text(b"a b\0\xff\xfe\0"), "a b \u{fffd}\u{fffd}");
        assert_eq!(cmdline_text(b""), "");
    }

    /// Real-looking `/proc/<pid>/cgroup` files of each layout, through
    /// [`cgroup_info`] as the collector calls it.
    fn id_of(file: &str) -> CgroupInfo {
        cgroup_info(file.lines().filter_map(|l| l.splitn(3, ':').nth(2)))
    }

    #[test]
    fn cgroup_layouts() {
        let other = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
        let samples = [
            // cgroup v2, systemd driver.
            format!("0::/system.slice/docker-{ID}.scope\n"),
            // cgroup v2, cgroupfs driver.
            format!("0::/docker/{ID}\n"),
            // The lab's per-user parent, systemd driver (slices nest by name).
            format!("0::/ds01.slice/ds01-students.slice/ds01-students-alice.slice/docker-{ID}.scope\n"),
            // The same parent with the cgroupfs driver: the bare id, no runtime name.
            format!("0::/ds01-students-alice.slice/{ID}\n"),
            // containerd under Kubernetes (CRI), systemd driver.
            format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1f5e_2a.slice/cri-containerd-{ID}.scope\n"),
            // CRI-O.
            format!("0::/kubepods.slice/kubepods-burstable.slice/crio-{ID}.scope\n"),
            // podman, with its inner `container` cgroup.
            format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
            // podman, cgroupfs driver.
            format!("0::/libpod_parent/libpod-{ID}\n"),
            // cgroup v1: one line per hierarchy (the real layout of the test engine).
            format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n"),
            format!("9:name=systemd:/ds01-students-alice.slice/{ID}\n8:pids:/ds01-students-alice.slice/{ID}\n0::/ds01-students-alice.slice/{ID}\n"),
            // v1 with only some hierarchies in the container.
            format!("4:memory:/user.slice\n3:cpu:/docker/{ID}\n0::/\n"),
            // Nested (docker in docker): the outermost id, the host engine's.
            format!("0::/docker/{ID}/docker/{other}\n"),
            format!("0::/system.slice/docker-{ID}.scope/docker/{other}\n"),
        ];
        for file in &samples {
            let info = id_of(file);
            assert!(info.in_container, "{file}");
            assert_eq!(info.container_id.as_deref(), Some(ID), "{file}");
        }
        // Host processes, the daemons themselves, and ids that are not ids.
        for file in [
            "0::/user.slice/user-1001.slice/session-3.scope\n",
            "0::/system.slice/docker.service\n",
            "0::/system.slice/containerd.service\n",
            "12:pids:/\n0::/init.scope\n",
            "0::/docker/abc\n",
            &format!("0::/user.slice/x{ID}\n"),
            &format!("0::/user.slice/{ID}0\n"),
            "",
        ] {
            assert_eq!(id_of(file), CgroupInfo::default(), "{file}");
        }
        // A pod without a container id: in a container, which one unknown.
        let pod = id_of("0::/kubepods/burstable/podabc\n");
        assert_eq!((pod.in_container, pod.container_id), (true, None));
    }

    #[test]
    fn crafted_tree_through_procfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cgroup = format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n0::/\n");
        craft(dir.path(), 447, 1001, b"python3\0-c\0x\0", &cgroup);
        craft(dir.path(), 9, 0, b"", "0::/\n");
        let facts = read_process(dir.path(), 447).expect("read");
        assert_eq!(
            (
                facts.uid,
                facts.start_time,
                facts.argv.joined().as_str(),
                facts.comm.as_str()
            ),
            (1001, 555, "python3 -c x", "python3")
        );
        assert_eq!(
            (facts.in_container, facts.container_id.as_deref()),
            (true, Some(ID))
        );
        // A kernel thread: no command line, its name in brackets.
        let kthread = read_process(dir.path(), 9).expect("read");
        assert_eq!(
            (kthread.cmdline.as_str(), kthread.in_container),
            ("[python3]", false)
        );
        // Gone: skipped.
        assert!(read_process(dir.path(), 448).is_none());
        // Garbled: reported with what is known, and why the rest is not.
        std::fs::write(dir.path().join("9/stat"), "9 (x) S 1 2").expect("w");
        let garbled = read_process(dir.path(), 9).expect("still reported");
        assert_eq!(garbled.uid, 0);
        assert!(garbled
            .read_error
            .as_deref()
            .is_some_and(|e| e.starts_with("stat: ")));
        // A name that is not UTF-8, in stat and status: decoded lossily.
        let status = std::fs::read(dir.path().join("447/status")).expect("r");
        let mut renamed = b"Name:\t\xffx\n".to_vec();
        renamed.extend(status.split(|b| *b == b'\n').skip(1).flat_map(|l| {
            let mut l = l.to_vec();
            l.push(b'\n');
            l
        }));
        std::fs::write(dir.path().join("447/status"), renamed).expect("w");
        std::fs::write(dir.path().join("447/stat"), b"447 (\xffx) S 1 447 447 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 555 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n").expect("w");
        let lossy = read_process(dir.path(), 447).expect("read");
        assert_eq!(
            (lossy.uid, lossy.comm.as_str(), lossy.read_error),
            (1001, "\u{fffd}x", None)
        );
    }

    #[test]
    fn a_command_line_is_read_up_to_its_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let long = vec![b'a'; CMDLINE_READ_CAP * 3];
        craft(dir.path(), 447, 1001, &long, "0::/\n");
        let facts = read_process(dir.path(), 447).expect("read");
        let line = facts.argv.joined();
        assert_eq!(line.len(), CMDLINE_READ_CAP + '…'.len_utf8());
        assert!(line.ends_with('…'));
        assert_eq!(facts.argv.iter().count(), 1);
    }

    #[test]
    fn reads_gpu_processes_and_container_main_processes() {
        let running = |id: &str, main_pid: u32| ContainerFacts {
            id: id.to_string(),
            inspect: Some(InspectFacts {
                main_pid,
                ..Default::default()
            }),
            ..Default::default()
        };
        let observed = Observations {
            containers: vec![running(ID, 600), running("b", 0), running("c", 447)],
            gpu_processes: vec![
                GpuProcess {
                    pid: 447,
                    ..Default::default()
                },
                GpuProcess {
                    pid: 500,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        // 447 is a GPU process and a main process: read once, in full.
        assert_eq!(
            pids_to_read(&observed),
            vec![(447, Depth::Full), (500, Depth::Full), (600, Depth::Owner)]
        );

        let dir = tempfile::tempdir().expect("tempdir");
        craft(dir.path(), 447, 0, b"python3\0", "0::/\n");
        craft(dir.path(), 600, 0, b"bash\0", &format!("0::/docker/{ID}\n"));
        // A main process holding no GPU is read for its owner and cgroup only.
        for file in ["stat", "cmdline"] {
            std::fs::remove_file(dir.path().join("600").join(file)).expect("rm");
        }
        let collector = Procfs {
            config: ProcfsConfig {
                root: dir.path().to_path_buf(),
                ..ProcfsConfig::default()
            },
        };
        let previous = Previous::known(Inventory::default());
        let users = UserNames::new();
        let ctx = CollectContext {
            previous: &previous,
            observed: &observed,
            users: &users,
            head_start: None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let collected = runtime.block_on(collector.collect(&ctx)).expect("collect");
        let processes = collected.observations.processes;
        // 500 is gone: skipped quietly.
        assert_eq!(
            processes.keys().copied().collect::<Vec<_>>(),
            vec![447, 600]
        );
        assert_eq!(processes[&600].container_id.as_deref(), Some(ID));
        assert_eq!(processes[&600].user, "root");
        assert_eq!(processes[&600].cmdline, "");
        assert_eq!(processes[&447].argv.joined(), "python3");
        assert_eq!(processes[&447].argv.first(), Some("python3"));
    }

    /// The head start reads what the previous inventory names; collect
    /// takes from it what it is asked at the same depth and in the same
    /// role, and reads the rest.
    #[test]
    fn what_the_head_start_read_is_taken_and_the_rest_is_read() {
        use detect_workloads_api::model::{ContainerEntry, ProcessEntry};
        let dir = tempfile::tempdir().expect("tempdir");
        craft(dir.path(), 447, 0, b"python3\0old\0", "0::/\n");
        craft(dir.path(), 500, 0, b"python3\0new\0", "0::/\n");
        craft(dir.path(), 600, 0, b"bash\0", &format!("0::/docker/{ID}\n"));
        craft(dir.path(), 700, 0, b"sleep\0", "0::/\n");
        let previous = Inventory {
            host_processes: BTreeMap::from([
                (447, ProcessEntry::default()),
                (700, ProcessEntry::default()),
            ]),
            containers: BTreeMap::from([(
                "0123456789ab".to_string(),
                ContainerEntry {
                    inspect: Some(InspectFacts {
                        main_pid: 600,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        assert_eq!(
            pids_ahead(&previous),
            (
                vec![(447, Depth::Full), (700, Depth::Full), (600, Depth::Owner)],
                BTreeSet::from([600])
            )
        );
        let collector = Procfs {
            config: ProcfsConfig {
                root: dir.path().to_path_buf(),
                ..ProcfsConfig::default()
            },
        };
        let previous = Previous::known(previous);
        let users = UserNames::new();
        let nothing = Observations::default();
        let ctx = CollectContext {
            previous: &previous,
            observed: &nothing,
            users: &users,
            head_start: None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let ahead = runtime
            .block_on(collector.head_start(&ctx))
            .expect("read ahead");
        // Changed since: what was read ahead stands (it is not read again).
        std::fs::write(dir.path().join("447/cmdline"), b"python3\0changed\0").expect("w");
        // This cycle: 447 and the new 500 hold GPUs, 600 too now (read in
        // full, not as the owner-only read ahead), 700 is gone from the GPU.
        let observed = Observations {
            containers: vec![ContainerFacts {
                id: ID.to_string(),
                inspect: Some(InspectFacts {
                    main_pid: 600,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            gpu_processes: [447, 500, 600]
                .map(|pid| GpuProcess {
                    pid,
                    ..Default::default()
                })
                .to_vec(),
            ..Default::default()
        };
        let ctx = CollectContext {
            observed: &observed,
            head_start: Some(&ahead),
            ..ctx
        };
        let processes = runtime
            .block_on(collector.collect(&ctx))
            .expect("collect")
            .observations
            .processes;
        let argv = |pid: u32| processes[&pid].argv.joined();
        assert_eq!(
            processes.keys().copied().collect::<Vec<_>>(),
            [447, 500, 600]
        );
        assert_eq!(argv(447), "python3 old", "taken from the head start");
        assert_eq!(argv(500), "python3 new");
        assert_eq!(argv(600), "bash", "read again, in full");
        assert!(processes[&600].counters.is_some());
        // Without a head start, everything is read now.
        let ctx = CollectContext {
            head_start: None,
            ..ctx
        };
        let fresh = runtime
            .block_on(collector.collect(&ctx))
            .expect("collect")
            .observations
            .processes;
        assert_eq!(fresh[&447].argv.joined(), "python3 changed");
    }

    #[test]
    fn a_read_ahead_told_to_stop_reads_nothing_more() {
        let dir = tempfile::tempdir().expect("tempdir");
        craft(dir.path(), 447, 0, b"python3\0", "0::/\n");
        let config = ProcfsConfig {
            root: dir.path().to_path_buf(),
            ..ProcfsConfig::default()
        };
        let users = UserNames::new();
        let pids = [(447, Depth::Full)];
        let read = |stop: bool| {
            read_ahead(
                &config,
                &pids,
                &BTreeSet::new(),
                &users,
                &AtomicBool::new(stop),
            )
            .0
            .len()
        };
        assert_eq!((read(false), read(true)), (1, 0));
        // The head start's future sets the flag when it is dropped.
        let flag = Arc::new(AtomicBool::new(false));
        drop(StopOnDrop(Arc::clone(&flag)));
        assert!(flag.load(Ordering::Relaxed));
    }

    #[test]
    fn a_missing_root_is_unavailable() {
        let users = UserNames::new();
        let missing = ProcfsConfig {
            root: PathBuf::from("/nonexistent-proc-root-for-test"),
            ..ProcfsConfig::default()
        };
        assert!(matches!(
            read_rest(
                &missing,
                &[(1, Depth::Full)],
                &BTreeSet::new(),
                &users,
                Found::default()
            ),
            Err(CollectError::Unavailable(_))
        ));
    }
}
