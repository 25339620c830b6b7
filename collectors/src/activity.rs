//! Activity readers: how busy a running workload is, as cumulative counters
//! read from `/proc` and the cgroup filesystem, and the rates between two
//! readings. Issue 21: CPU cores used, network bytes per second and GPU
//! utilisation of every running workload, to tell which ones hold GPUs
//! idle. This module holds the low-level readers only (no collector is
//! registered here); each takes its roots as arguments (`/proc` and
//! `/sys/fs/cgroup` on a real host, a temporary directory in tests).
//!
//! - [`cgroup_cpu`]: the CPU time charged to a process's cgroup, from
//!   cgroup v1 `cpuacct.usage` or cgroup v2 `cpu.stat` (`usage_usec`), with
//!   the cgroup it belongs to ([`CpuReading`]).
//! - [`process_cpu_ns`]: `utime + stime` of one process, with its start
//!   time so that a reused PID is noticed ([`ProcessCpu`]).
//! - [`net_bytes`]: bytes received and sent on every interface but `lo` in
//!   the process's network namespace, or [`Net::Host`] when that is the
//!   host's own (a host-network container's traffic is the host's, so it has
//!   none of its own to report); [`host_net_namespace`] finds the host's.
//!
//! The readings are plain serde structures, meant to be kept between scans
//! (a oneshot run stores them in the inventory's private part); their field
//! names are short and stable. The engine rates two readings of the same
//! counter (same cgroup, same process start, same namespace) against each
//! other.
//!
//! Every reader returns `Ok(None)` when the process is gone (`ENOENT`,
//! `ESRCH`), and an [`ActivityError`] when a file is there but cannot be
//! read or is not what the kernel writes. Outside data is treated as
//! hostile: the cgroup path in `/proc/<pid>/cgroup` can be chosen by a user
//! with a delegated cgroup, so a path that is not absolute, holds a `..` or
//! `.` component, a NUL or bytes that are not UTF-8 is refused, duplicated
//! hierarchies or controllers (a name holding a newline that forges a
//! line) make the file garbled, and a file opened under the cgroup root is
//! checked to lie under it once opened. Every file is read as at most
//! [`FILE_READ_CAP`] bytes ([`NET_DEV_READ_CAP`] for `net/dev`); more is an
//! error, never a truncated value.
//!
//! Needs: read access to `/proc/<pid>/{cgroup,stat,net/dev,ns/net}`
//! (`ns/net` of another user's process needs root) and to the cgroup
//! filesystem. The cgroup paths are those of the reader's cgroup namespace:
//! run it in the host's (a path of a process outside the reader's cgroup
//! namespace starts with `/..` and is refused).

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};

use procfs::net::InterfaceDeviceStatus;
use procfs::process::{Process, Stat};
use procfs::{FromBufRead, FromRead, ProcError, ProcessCGroups};
use serde::{Deserialize, Serialize};
use tracing::debug;

/// At most this much of `/proc/<pid>/cgroup`, `/proc/<pid>/stat`,
/// `cpuacct.usage` or `cpu.stat` is read; a longer file is
/// [`ActivityError::TooLarge`].
pub const FILE_READ_CAP: usize = 64 * 1024;

/// At most this much of `/proc/<pid>/net/dev` is read (some 7000
/// interfaces); a longer file is [`ActivityError::TooLarge`].
pub const NET_DEV_READ_CAP: usize = 1024 * 1024;

/// The longest cgroup path accepted (`PATH_MAX`).
pub const CGROUP_PATH_CAP: usize = 4096;

/// Why an activity counter could not be read, when the process is there.
#[derive(Debug)]
pub enum ActivityError {
    /// A cgroup path that is not a plain absolute path under the cgroup
    /// root, or a file under it that resolves outside it.
    UnsafeCgroupPath {
        /// The path (lossily decoded, at most 200 characters).
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A file that is there but cannot be read (permission denied, an I/O
    /// error, a cgroup file missing while its process is still there).
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file whose content is not what the kernel writes.
    Garbled {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A file longer than its read cap.
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap, in bytes.
        cap: usize,
    },
    /// Neither a cgroup v1 `cpuacct` hierarchy nor cgroup v2 holds the
    /// process under this cgroup root.
    NoCpuAccounting {
        /// The process.
        pid: u32,
    },
}

impl fmt::Display for ActivityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsafeCgroupPath { path, why } => {
                write!(f, "cgroup path {path:?} refused: {why}")
            }
            Self::Read { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Self::Garbled { path, why } => write!(f, "{}: {why}", path.display()),
            Self::TooLarge { path, cap } => {
                write!(f, "{}: longer than {cap} bytes", path.display())
            }
            Self::NoCpuAccounting { pid } => write!(
                f,
                "process {pid}: no cgroup v1 cpuacct hierarchy or cgroup v2 holds it"
            ),
        }
    }
}

impl std::error::Error for ActivityError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// How a read ended, inside this module: the process is gone (the public
/// readers answer `Ok(None)`), or an error.
#[derive(Debug)]
enum Fail {
    Gone,
    Error(ActivityError),
}

impl From<ActivityError> for Fail {
    fn from(e: ActivityError) -> Self {
        Self::Error(e)
    }
}

/// `Ok(None)` for a process that is gone.
fn finish<T>(result: Result<T, Fail>) -> Result<Option<T>, ActivityError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(Fail::Gone) => Ok(None),
        Err(Fail::Error(e)) => Err(e),
    }
}

fn is_esrch(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::ESRCH)
}

/// An I/O error on a file of `/proc/<pid>`: `ENOENT` and `ESRCH` mean the
/// process is gone.
fn io_fail(path: &Path, e: std::io::Error) -> Fail {
    if e.kind() == std::io::ErrorKind::NotFound || is_esrch(&e) {
        Fail::Gone
    } else {
        Fail::Error(ActivityError::Read {
            path: path.to_path_buf(),
            source: e,
        })
    }
}

/// An error of the `procfs` crate on a file of `/proc/<pid>`.
fn proc_fail(path: &Path, e: ProcError) -> Fail {
    match e {
        ProcError::NotFound(_) => Fail::Gone,
        ProcError::PermissionDenied(_) => Fail::Error(ActivityError::Read {
            path: path.to_path_buf(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        }),
        ProcError::Io(e, _) => io_fail(path, e),
        other => Fail::Error(ActivityError::Garbled {
            path: path.to_path_buf(),
            why: other.to_string(),
        }),
    }
}

fn garbled(path: &Path, why: impl Into<String>) -> Fail {
    Fail::Error(ActivityError::Garbled {
        path: path.to_path_buf(),
        why: why.into(),
    })
}

/// All of an open file, failing when it holds more than `cap` bytes.
fn read_capped(file: File, path: &Path, cap: usize) -> Result<Vec<u8>, Fail> {
    let mut bytes = Vec::new();
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| io_fail(path, e))?;
    if bytes.len() > cap {
        return Err(ActivityError::TooLarge {
            path: path.to_path_buf(),
            cap,
        }
        .into());
    }
    Ok(bytes)
}

/// `/proc/<pid>`, opened (gone: [`Fail::Gone`]).
fn open_process(proc_root: &Path, pid: u32) -> Result<(Process, PathBuf), Fail> {
    let dir = proc_root.join(pid.to_string());
    let process = Process::new_with_root(dir.clone()).map_err(|e| proc_fail(&dir, e))?;
    Ok((process, dir))
}

/// A file of `/proc/<pid>`, at most `cap` bytes of it.
fn read_process_file(
    process: &Process,
    dir: &Path,
    name: &str,
    cap: usize,
) -> Result<(Vec<u8>, PathBuf), Fail> {
    let path = dir.join(name);
    let file = process
        .open_relative(name)
        .map_err(|e| proc_fail(&path, e))?;
    Ok((read_capped(file, &path, cap)?, path))
}

// ---------------------------------------------------------------------------
// Cgroup CPU time

/// Which cgroup hierarchy a [`CpuReading`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// A cgroup v1 `cpuacct` hierarchy: `cpuacct.usage`.
    V1,
    /// The cgroup v2 hierarchy: `usage_usec` of `cpu.stat`.
    V2,
}

/// The CPU time charged to a cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuReading {
    /// The cgroup's path in its hierarchy (`/docker/<id>`,
    /// `/system.slice/docker-<id>.scope`), as `/proc/<pid>/cgroup` gives it.
    pub cgroup: String,
    /// The hierarchy the path and the counter belong to.
    pub version: CgroupVersion,
    /// CPU time used by every process the cgroup held, in nanoseconds
    /// since the cgroup was made.
    pub usage_ns: u64,
}

/// One line of `/proc/<pid>/cgroup`, checked.
#[derive(Debug)]
struct Membership {
    hierarchy: u32,
    controllers: Vec<String>,
    path: String,
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

fn unsafe_path(path: &str, why: &'static str) -> Fail {
    Fail::Error(ActivityError::UnsafeCgroupPath {
        path: clip(path),
        why,
    })
}

/// A cgroup path as a relative path under its hierarchy's mount: absolute,
/// at most [`CGROUP_PATH_CAP`] bytes, no NUL, no byte that was not UTF-8,
/// no `.` or `..` component.
fn cgroup_relative(path: &str) -> Result<PathBuf, Fail> {
    if path.len() > CGROUP_PATH_CAP {
        return Err(unsafe_path(path, "longer than PATH_MAX"));
    }
    if !path.starts_with('/') {
        return Err(unsafe_path(path, "not absolute"));
    }
    if path.contains('\0') {
        return Err(unsafe_path(path, "holds a NUL"));
    }
    if path.contains('\u{fffd}') {
        return Err(unsafe_path(path, "not UTF-8"));
    }
    let mut relative = PathBuf::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(unsafe_path(path, "holds a `.` or `..` component"));
        }
        relative.push(part);
    }
    // What the loop built has only plain names; say so to the next reader.
    debug_assert!(relative
        .components()
        .all(|c| matches!(c, Component::Normal(_))));
    Ok(relative)
}

/// `/proc/<pid>/cgroup`: every line parsed by `procfs`, then checked as
/// the kernel writes them: one line per hierarchy, each controller in one
/// hierarchy, hierarchy 0 with no controller. A cgroup name holding a
/// newline forges a line, and duplicates one of these.
fn read_memberships(proc_root: &Path, pid: u32) -> Result<Vec<Membership>, Fail> {
    let (process, dir) = open_process(proc_root, pid)?;
    let (bytes, path) = read_process_file(&process, &dir, "cgroup", FILE_READ_CAP)?;
    // Lossily: a path with bytes that are not UTF-8 is refused when it is
    // the one to read (U+FFFD), not the whole file.
    let text = String::from_utf8_lossy(&bytes);
    let groups = ProcessCGroups::from_buf_read(text.as_bytes()).map_err(|e| proc_fail(&path, e))?;
    let mut out: Vec<Membership> = Vec::new();
    for group in groups {
        if out.iter().any(|m| m.hierarchy == group.hierarchy) {
            return Err(garbled(
                &path,
                format!("hierarchy {} listed twice", group.hierarchy),
            ));
        }
        if let Some(c) = group
            .controllers
            .iter()
            .find(|c| out.iter().any(|m| m.controllers.contains(c)))
        {
            return Err(garbled(&path, format!("controller {c:?} listed twice")));
        }
        if group.hierarchy == 0 && !group.controllers.is_empty() {
            return Err(garbled(&path, "hierarchy 0 with controllers"));
        }
        out.push(Membership {
            hierarchy: group.hierarchy,
            controllers: group.controllers,
            path: group.pathname,
        });
    }
    Ok(out)
}

/// A directory under `root`, resolved (a v1 mount may be a symbolic link
/// within the root: `cpuacct -> cpu,cpuacct`), and checked to stay in it.
fn mount_within(root_real: &Path, name: &str) -> Option<PathBuf> {
    let real = std::fs::canonicalize(root_real.join(name)).ok()?;
    real.starts_with(root_real).then_some(real)
}

/// Where the cgroup v2 hierarchy is mounted under `root`: the root itself
/// (a v2-only host), or `unified` (a hybrid host); a cgroup2 mount is told
/// by its `cgroup.controllers`, which no v1 hierarchy or tmpfs has.
fn v2_mount(root_real: &Path) -> Option<(PathBuf, bool)> {
    if root_real.join("cgroup.controllers").is_file() {
        return Some((root_real.to_path_buf(), true));
    }
    let unified = mount_within(root_real, "unified")?;
    unified
        .join("cgroup.controllers")
        .is_file()
        .then_some((unified, false))
}

/// Where the v1 hierarchy holding `controllers` (one of them `cpuacct`) is
/// mounted under `root`: a directory named after its controllers
/// (`cpu,cpuacct`, or `cpuacct` alone), whose top holds `cpuacct.usage`.
fn v1_cpuacct_mount(root_real: &Path, controllers: &[String]) -> Option<PathBuf> {
    let joined = controllers.join(",");
    let found = [joined.as_str(), "cpuacct"]
        .into_iter()
        .filter(|name| {
            !name.is_empty()
                && *name != "."
                && *name != ".."
                && !name.contains('/')
                && !name.contains('\0')
        })
        .filter_map(|name| mount_within(root_real, name))
        .find(|dir| dir.join("cpuacct.usage").is_file());
    found
}

/// Opens `name` in the cgroup `relative` under `mount` and checks that what
/// was opened lies under `mount` (no symbolic link led out of it).
fn open_beneath(mount: &Path, relative: &Path, name: &str) -> Result<(File, PathBuf), Fail> {
    let path = mount.join(relative).join(name);
    let file = File::open(&path).map_err(|e| io_fail(&path, e))?;
    let opened = format!("/proc/self/fd/{}", file.as_raw_fd());
    let real = std::fs::read_link(&opened).map_err(|e| {
        Fail::Error(ActivityError::Read {
            path: PathBuf::from(opened),
            source: e,
        })
    })?;
    if !real.starts_with(mount) {
        return Err(unsafe_path(
            &path.to_string_lossy(),
            "resolves outside the cgroup root",
        ));
    }
    Ok((file, path))
}

/// A cgroup's counter file; missing while its process is still there is an
/// error, missing with its process gone is [`Fail::Gone`].
fn read_cgroup_file(
    proc_root: &Path,
    pid: u32,
    mount: &Path,
    relative: &Path,
    name: &str,
) -> Result<(Vec<u8>, PathBuf), Fail> {
    let opened = open_beneath(mount, relative, name).and_then(|(file, path)| {
        let bytes = read_capped(file, &path, FILE_READ_CAP)?;
        Ok((bytes, path))
    });
    match opened {
        Err(Fail::Gone) => {
            let path = mount.join(relative).join(name);
            if proc_root.join(pid.to_string()).exists() {
                Err(Fail::Error(ActivityError::Read {
                    path,
                    source: std::io::ErrorKind::NotFound.into(),
                }))
            } else {
                debug!(pid, path = %path.display(), "cgroup gone with its process");
                Err(Fail::Gone)
            }
        }
        other => other,
    }
}

/// `cpuacct.usage`: one decimal number of nanoseconds.
fn parse_cpuacct_usage(bytes: &[u8], path: &Path) -> Result<u64, Fail> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .ok_or_else(|| garbled(path, "not a number of nanoseconds"))
}

/// `cpu.stat` (v2): `usage_usec`, in nanoseconds.
fn parse_cpu_stat(bytes: &[u8], path: &Path) -> Result<u64, Fail> {
    let text = std::str::from_utf8(bytes).map_err(|_| garbled(path, "not UTF-8"))?;
    let usec = text
        .lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .ok_or_else(|| garbled(path, "no usage_usec"))?;
    usec.trim()
        .parse::<u64>()
        .ok()
        .and_then(|us| us.checked_mul(1000))
        .ok_or_else(|| garbled(path, "usage_usec is not a number of microseconds"))
}

/// Where the cgroup hierarchies are mounted under a root, found once and
/// kept for a scan: every container's reading asks the same mounts, and
/// finding them is most of a reading's system calls.
pub struct CgroupMounts {
    root: PathBuf,
    /// The root, resolved (or the OS error that stopped it).
    real: Result<PathBuf, Option<i32>>,
    /// The cgroup v2 mount, and whether it is the root itself.
    v2: Option<(PathBuf, bool)>,
    /// v1 hierarchies by their controllers (`cpu,cpuacct`), as found.
    v1: std::sync::Mutex<Vec<(String, Option<PathBuf>)>>,
}

impl CgroupMounts {
    /// The mounts under `cgroup_root` (normally `/sys/fs/cgroup`).
    pub fn new(cgroup_root: &Path) -> Self {
        let real = std::fs::canonicalize(cgroup_root).map_err(|e| e.raw_os_error());
        let v2 = real.as_ref().ok().and_then(|r| v2_mount(r));
        CgroupMounts {
            root: cgroup_root.to_path_buf(),
            real,
            v2,
            v1: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn real(&self) -> Result<&Path, Fail> {
        self.real.as_deref().map_err(|code| {
            Fail::Error(ActivityError::Read {
                path: self.root.clone(),
                source: code.map_or_else(
                    || std::io::ErrorKind::Other.into(),
                    std::io::Error::from_raw_os_error,
                ),
            })
        })
    }

    /// The v1 hierarchy holding `controllers`, found once per set.
    fn v1_for(&self, root_real: &Path, controllers: &[String]) -> Option<PathBuf> {
        let key = controllers.join(",");
        let mut known = self
            .v1
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, mount)) = known.iter().find(|(k, _)| *k == key) {
            return mount.clone();
        }
        let mount = v1_cpuacct_mount(root_real, controllers);
        known.push((key, mount.clone()));
        mount
    }

    /// The CPU time charged to the cgroup of process `pid`: see
    /// [`cgroup_cpu`].
    pub fn cpu(&self, proc_root: &Path, pid: u32) -> Result<Option<CpuReading>, ActivityError> {
        finish(try_cgroup_cpu(proc_root, self, pid))
    }
}

fn try_cgroup_cpu(proc_root: &Path, mounts: &CgroupMounts, pid: u32) -> Result<CpuReading, Fail> {
    let memberships = read_memberships(proc_root, pid)?;
    let root_real = mounts.real()?;
    let v2 = mounts.v2.clone();
    // On a v2-only host no v1 cpuacct hierarchy lies under the root: a
    // `cpuacct` line there is not to be looked for in it.
    let v1 = match v2 {
        Some((_, true)) => None,
        _ => memberships
            .iter()
            .find(|m| m.hierarchy != 0 && m.controllers.iter().any(|c| c == "cpuacct"))
            .and_then(|m| Some((m, mounts.v1_for(root_real, &m.controllers)?))),
    };
    let v2 = v2.and_then(|(mount, _)| {
        memberships
            .iter()
            .find(|m| m.hierarchy == 0)
            .map(|m| (m, mount))
    });
    // v1 cpuacct first: on a hybrid host that is where a container's
    // processes are charged (cgroup v2 may hold them all in the engine's
    // service). Its root, though, is the whole host: when the process is
    // not in a v1 cpuacct cgroup of its own but is in a v2 one, v2.
    let (membership, mount, version) = match (v1, v2) {
        (Some((a, _)), Some((b, mount))) if a.path == "/" && b.path != "/" => {
            (b, mount, CgroupVersion::V2)
        }
        (Some((a, mount)), _) => (a, mount, CgroupVersion::V1),
        (None, Some((b, mount))) => (b, mount, CgroupVersion::V2),
        (None, None) => return Err(ActivityError::NoCpuAccounting { pid }.into()),
    };
    let relative = cgroup_relative(&membership.path)?;
    let usage_ns = match version {
        CgroupVersion::V1 => {
            let (bytes, path) =
                read_cgroup_file(proc_root, pid, &mount, &relative, "cpuacct.usage")?;
            parse_cpuacct_usage(&bytes, &path)?
        }
        CgroupVersion::V2 => {
            let (bytes, path) = read_cgroup_file(proc_root, pid, &mount, &relative, "cpu.stat")?;
            parse_cpu_stat(&bytes, &path)?
        }
    };
    Ok(CpuReading {
        cgroup: membership.path.clone(),
        version,
        usage_ns,
    })
}

/// The CPU time charged to the cgroup of process `pid`, and that cgroup.
/// `proc_root` is normally `/proc`, `cgroup_root` `/sys/fs/cgroup`.
///
/// The cgroup is the process's in a cgroup v1 hierarchy holding `cpuacct`
/// (mounted at `<cgroup_root>/cpu,cpuacct` or `<cgroup_root>/cpuacct`;
/// `cpuacct.usage`), else its cgroup v2 one (`0::<path>`, the hierarchy
/// mounted at `<cgroup_root>` or, on a hybrid host, `<cgroup_root>/unified`;
/// `usage_usec` of `cpu.stat`). When its v1 cpuacct cgroup is the root (the
/// whole host) and its v2 one is not, the v2 one is read.
///
/// `Ok(None)` when the process is gone; see [`ActivityError`] for the rest.
pub fn cgroup_cpu(
    proc_root: &Path,
    cgroup_root: &Path,
    pid: u32,
) -> Result<Option<CpuReading>, ActivityError> {
    CgroupMounts::new(cgroup_root).cpu(proc_root, pid)
}

// ---------------------------------------------------------------------------
// Process CPU time

/// The CPU time one process used (its threads included; its waited-for
/// children not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessCpu {
    /// When the process started, in clock ticks since boot (`starttime` of
    /// `/proc/<pid>/stat`): another value is another process under a reused
    /// PID.
    pub start: u64,
    /// `utime + stime`, in nanoseconds.
    pub cpu_ns: u64,
}

/// Clock ticks as nanoseconds.
fn ticks_to_ns(ticks: u64, per_second: u64) -> Option<u64> {
    if per_second == 0 {
        return None;
    }
    let ns = u128::from(ticks) * 1_000_000_000 / u128::from(per_second);
    u64::try_from(ns).ok()
}

fn try_process_cpu(proc_root: &Path, pid: u32) -> Result<ProcessCpu, Fail> {
    let (process, dir) = open_process(proc_root, pid)?;
    let (bytes, path) = read_process_file(&process, &dir, "stat", FILE_READ_CAP)?;
    // A process name is not always UTF-8.
    let text = String::from_utf8_lossy(&bytes);
    let stat = Stat::from_read(text.as_bytes()).map_err(|e| proc_fail(&path, e))?;
    let ticks = stat
        .utime
        .checked_add(stat.stime)
        .ok_or_else(|| garbled(&path, "utime + stime overflows"))?;
    let cpu_ns = ticks_to_ns(ticks, procfs::ticks_per_second()).ok_or_else(|| {
        garbled(
            &path,
            "CPU time out of range (or no clock ticks per second)",
        )
    })?;
    Ok(ProcessCpu {
        start: stat.starttime,
        cpu_ns,
    })
}

/// `utime + stime` of process `pid` in nanoseconds (clock ticks ×
/// 10⁹ / [`procfs::ticks_per_second`]), with its start time.
/// `proc_root` is normally `/proc`. `Ok(None)` when the process is gone.
pub fn process_cpu_ns(proc_root: &Path, pid: u32) -> Result<Option<ProcessCpu>, ActivityError> {
    finish(try_process_cpu(proc_root, pid))
}

// ---------------------------------------------------------------------------
// Network bytes

/// The traffic of a process's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "net", rename_all = "lowercase")]
pub enum Net {
    /// The host's own namespace: its traffic is the host's, and says
    /// nothing of this workload (report none).
    Host,
    /// A namespace of its own.
    Own {
        /// The namespace (its inode): another value is another namespace,
        /// whose counters started again.
        ns: u64,
        /// Bytes received and sent on every interface but `lo`, since the
        /// interfaces were made.
        bytes: u64,
    },
}

impl Net {
    /// The byte counter, for a namespace of its own.
    pub fn bytes(&self) -> Option<u64> {
        match self {
            Self::Host => None,
            Self::Own { bytes, .. } => Some(*bytes),
        }
    }
}

/// Where the host's network namespace was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsSource {
    /// `<proc_root>/1/ns/net`: init's.
    Init,
    /// `<proc_root>/self/ns/net`: this process's own, when init's cannot be
    /// read (right when this process runs in the host's network namespace,
    /// as a systemd service does; wrong in a container of its own).
    Myself,
}

/// The host's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostNet {
    /// Its inode, as [`Net::Own::ns`] gives one.
    pub ns: u64,
    /// Where it was read from.
    pub from: NsSource,
}

/// The inode in a namespace link's target (`net:[4026531840]`).
fn parse_net_link(target: &Path) -> Option<u64> {
    target
        .to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn read_net_link(link: &Path) -> Result<u64, Fail> {
    let target = std::fs::read_link(link).map_err(|e| io_fail(link, e))?;
    parse_net_link(&target).ok_or_else(|| {
        garbled(
            link,
            format!(
                "not a network namespace: {:?}",
                clip(&target.to_string_lossy())
            ),
        )
    })
}

/// The host's network namespace: init's (`<proc_root>/1/ns/net`), else this
/// process's own (`<proc_root>/self/ns/net`: reading init's needs more than
/// root in some sandboxes); `None` when neither can be read.
pub fn host_net_namespace(proc_root: &Path) -> Option<HostNet> {
    match read_net_link(&proc_root.join("1/ns/net")) {
        Ok(ns) => {
            return Some(HostNet {
                ns,
                from: NsSource::Init,
            })
        }
        Err(Fail::Gone) => debug!("no network namespace of init; this process's own stands in"),
        Err(Fail::Error(e)) => debug!("{e}; this process's own network namespace stands in"),
    }
    match read_net_link(&proc_root.join("self/ns/net")) {
        Ok(ns) => Some(HostNet {
            ns,
            from: NsSource::Myself,
        }),
        Err(Fail::Gone) => {
            debug!("no network namespace of this process either");
            None
        }
        Err(Fail::Error(e)) => {
            debug!("{e}");
            None
        }
    }
}

fn try_net_bytes(proc_root: &Path, pid: u32, host_ns: u64) -> Result<Net, Fail> {
    let (process, dir) = open_process(proc_root, pid)?;
    let ns = read_net_link(&dir.join("ns/net"))?;
    if ns == host_ns {
        return Ok(Net::Host);
    }
    let (bytes, path) = read_process_file(&process, &dir, "net/dev", NET_DEV_READ_CAP)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| garbled(&path, "not UTF-8"))?;
    let InterfaceDeviceStatus(interfaces) =
        InterfaceDeviceStatus::from_buf_read(text.as_bytes()).map_err(|e| proc_fail(&path, e))?;
    let mut total: u64 = 0;
    for (name, dev) in &interfaces {
        if name == "lo" {
            continue;
        }
        total = total
            .checked_add(dev.recv_bytes)
            .and_then(|t| t.checked_add(dev.sent_bytes))
            .ok_or_else(|| garbled(&path, "byte counters overflow"))?;
    }
    Ok(Net::Own { ns, bytes: total })
}

/// The traffic of the network namespace of process `pid`: [`Net::Host`]
/// when it is `host_ns` (see [`host_net_namespace`]), else the bytes
/// received and sent on its interfaces but `lo` (`/proc/<pid>/net/dev`).
/// `proc_root` is normally `/proc`. `Ok(None)` when the process is gone.
pub fn net_bytes(proc_root: &Path, pid: u32, host_ns: u64) -> Result<Option<Net>, ActivityError> {
    finish(try_net_bytes(proc_root, pid, host_ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const PID: u32 = 4242;

    /// A fake host: `proc/` and `cgroup/` in a temporary directory.
    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }

        fn proc_root(&self) -> PathBuf {
            self.dir.path().join("proc")
        }

        fn cgroup_root(&self) -> PathBuf {
            self.dir.path().join("cgroup")
        }

        /// Writes `bytes` at `relative` under the fake host, making its
        /// directories.
        fn write(&self, relative: &str, bytes: impl AsRef<[u8]>) {
            let path = self.dir.path().join(relative);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, bytes).expect("write");
        }

        fn mkdir(&self, relative: &str) {
            std::fs::create_dir_all(self.dir.path().join(relative)).expect("mkdir");
        }

        fn symlink(&self, relative: &str, target: &str) {
            let path = self.dir.path().join(relative);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            symlink(target, path).expect("symlink");
        }

        fn cgroup_file(&self, pid: u32, text: impl AsRef<[u8]>) {
            self.write(&format!("proc/{pid}/cgroup"), text);
        }

        fn cpu(&self, pid: u32) -> Result<Option<CpuReading>, ActivityError> {
            cgroup_cpu(&self.proc_root(), &self.cgroup_root(), pid)
        }

        /// An Ubuntu 20.04-style hybrid host: v1 `cpu,cpuacct` (with the
        /// `cpu` and `cpuacct` links to it), v2 at `unified`.
        fn hybrid_cpu_cpuacct(&self) {
            self.write("cgroup/cpu,cpuacct/cpuacct.usage", "999999999999\n");
            self.symlink("cgroup/cpu", "cpu,cpuacct");
            self.symlink("cgroup/cpuacct", "cpu,cpuacct");
            self.write("cgroup/memory/memory.usage_in_bytes", "1\n");
            self.write("cgroup/unified/cgroup.controllers", "");
            self.write("cgroup/unified/cpu.stat", "usage_usec 7\n");
        }

        /// A v2-only host.
        fn v2_only(&self) {
            self.write("cgroup/cgroup.controllers", "cpuset cpu io memory pids\n");
            self.write("cgroup/cpu.stat", "usage_usec 1\n");
        }
    }

    fn v2_stat(usage_usec: u64) -> String {
        format!(
            "usage_usec {usage_usec}\nuser_usec 1\nsystem_usec 2\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n"
        )
    }

    #[test]
    fn v1_cpu_cpuacct_on_a_hybrid_host() {
        let fake = Fake::new();
        fake.hybrid_cpu_cpuacct();
        fake.write(
            &format!("cgroup/cpu,cpuacct/docker/{ID}/cpuacct.usage"),
            "123456789012\n",
        );
        fake.write(
            "cgroup/unified/system.slice/containerd.service/cpu.stat",
            v2_stat(5),
        );
        fake.cgroup_file(
            PID,
            format!(
                "12:pids:/docker/{ID}\n5:cpu,cpuacct:/docker/{ID}\n4:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/system.slice/containerd.service\n"
            ),
        );
        assert_eq!(
            fake.cpu(PID).expect("reads"),
            Some(CpuReading {
                cgroup: format!("/docker/{ID}"),
                version: CgroupVersion::V1,
                usage_ns: 123_456_789_012,
            })
        );
    }

    #[test]
    fn mounts_found_once_serve_every_container_of_a_scan() {
        let fake = Fake::new();
        fake.hybrid_cpu_cpuacct();
        let mounts = CgroupMounts::new(&fake.cgroup_root());
        for (pid, n) in [(PID, 1u64), (PID + 1, 2)] {
            let id = format!("{ID:.63}{n}");
            fake.write(
                &format!("cgroup/cpu,cpuacct/docker/{id}/cpuacct.usage"),
                format!("{n}\n"),
            );
            fake.cgroup_file(pid, format!("5:cpu,cpuacct:/docker/{id}\n0::/\n"));
            let read = mounts.cpu(&fake.proc_root(), pid).expect("reads");
            assert_eq!(
                read,
                fake.cpu(pid).expect("reads"),
                "as a reading of its own"
            );
            assert_eq!(read.map(|r| r.usage_ns), Some(n));
        }
        // One hierarchy looked for, once.
        assert_eq!(mounts.v1.lock().expect("lock").len(), 1);
        // A root that cannot be resolved fails each reading, saying which.
        let none = CgroupMounts::new(&fake.dir.path().join("nowhere"));
        let err = none.cpu(&fake.proc_root(), PID).expect_err("no root");
        assert!(err.to_string().contains("nowhere"), "{err}");
    }

    #[test]
    fn v1_separate_cpuacct_mount_as_on_this_host() {
        // `/sys/fs/cgroup/{cpu,cpuacct}` as two mounts, v2 at `unified`.
        let fake = Fake::new();
        fake.write("cgroup/cpu/cpu.shares", "1024\n");
        fake.write("cgroup/cpuacct/cpuacct.usage", "13879107166109\n");
        fake.write(
            &format!("cgroup/cpuacct/ds01-students-alice.slice/{ID}/cpuacct.usage"),
            "42\n",
        );
        fake.write("cgroup/unified/cgroup.controllers", "");
        fake.cgroup_file(
            PID,
            format!(
                "9:name=systemd:/ds01-students-alice.slice/{ID}\n2:cpuacct:/ds01-students-alice.slice/{ID}\n1:cpu:/ds01-students-alice.slice/{ID}\n0::/\n"
            ),
        );
        let reading = fake.cpu(PID).expect("reads").expect("there");
        assert_eq!(
            (reading.version, reading.usage_ns, reading.cgroup.as_str()),
            (
                CgroupVersion::V1,
                42,
                format!("/ds01-students-alice.slice/{ID}").as_str()
            )
        );
        // The root of the hierarchy, read as the kernel writes it.
        fake.cgroup_file(PID + 1, "2:cpuacct:/\n1:cpu:/\n0::/\n");
        assert_eq!(
            fake.cpu(PID + 1).expect("reads").map(|r| r.usage_ns),
            Some(13_879_107_166_109)
        );
    }

    #[test]
    fn v2_only_host() {
        let fake = Fake::new();
        fake.v2_only();
        let scope = format!("/system.slice/docker-{ID}.scope");
        fake.write(&format!("cgroup{scope}/cpu.stat"), v2_stat(12_345));
        // A `cpuacct` directory on a v2-only host is a v2 cgroup of that
        // name, not a v1 hierarchy: never looked in.
        fake.write("cgroup/cpuacct/cpuacct.usage", "1\n");
        fake.cgroup_file(PID, format!("0::{scope}\n"));
        assert_eq!(
            fake.cpu(PID).expect("reads"),
            Some(CpuReading {
                cgroup: scope.clone(),
                version: CgroupVersion::V2,
                usage_ns: 12_345_000,
            })
        );
        // A named v1 hierarchy beside it (name=systemd for old containers)
        // changes nothing; nor does a cpuacct line, which cannot be true.
        fake.cgroup_file(
            PID,
            format!("3:cpuacct:/x\n1:name=systemd:/docker/{ID}\n0::{scope}\n"),
        );
        assert_eq!(
            fake.cpu(PID).expect("reads").map(|r| r.version),
            Some(CgroupVersion::V2)
        );
    }

    #[test]
    fn hybrid_host_with_v2_only_for_this_process() {
        let fake = Fake::new();
        fake.hybrid_cpu_cpuacct();
        let scope = format!("/system.slice/docker-{ID}.scope");
        fake.write(&format!("cgroup/unified{scope}/cpu.stat"), v2_stat(3));
        // Not in a v1 cpuacct cgroup of its own (the root is the whole
        // host), in a v2 one: v2.
        fake.cgroup_file(PID, format!("5:cpu,cpuacct:/\n0::{scope}\n"));
        assert_eq!(
            fake.cpu(PID).expect("reads"),
            Some(CpuReading {
                cgroup: scope,
                version: CgroupVersion::V2,
                usage_ns: 3000,
            })
        );
        // In neither: the v1 root.
        fake.cgroup_file(PID, "5:cpu,cpuacct:/\n0::/\n");
        assert_eq!(
            fake.cpu(PID)
                .expect("reads")
                .map(|r| (r.version, r.usage_ns)),
            Some((CgroupVersion::V1, 999_999_999_999))
        );
        // No cpuacct line at all (a kernel without it): v2.
        fake.cgroup_file(PID, "4:memory:/x\n0::/\n");
        assert_eq!(
            fake.cpu(PID)
                .expect("reads")
                .map(|r| (r.version, r.usage_ns)),
            Some((CgroupVersion::V2, 7000))
        );
    }

    #[test]
    fn no_cpu_accounting_under_the_root() {
        let fake = Fake::new();
        fake.mkdir("cgroup");
        fake.cgroup_file(PID, "2:cpuacct:/\n0::/\n");
        assert!(matches!(
            fake.cpu(PID),
            Err(ActivityError::NoCpuAccounting { pid: PID })
        ));
        // A missing cgroup root is an error, not a vanished process.
        let missing = cgroup_cpu(&fake.proc_root(), &fake.dir.path().join("nowhere"), PID);
        assert!(
            matches!(missing, Err(ActivityError::Read { .. })),
            "{missing:?}"
        );
    }

    #[test]
    fn a_process_that_is_gone_is_none() {
        let fake = Fake::new();
        fake.v2_only();
        fake.mkdir("proc");
        assert_eq!(fake.cpu(PID).expect("gone is fine"), None);
        assert_eq!(process_cpu_ns(&fake.proc_root(), PID).expect("gone"), None);
        assert_eq!(net_bytes(&fake.proc_root(), PID, 1).expect("gone"), None);
        // Its directory there, its files gone (a zombie's, a race).
        fake.mkdir(&format!("proc/{PID}"));
        assert_eq!(fake.cpu(PID).expect("gone is fine"), None);
        assert_eq!(process_cpu_ns(&fake.proc_root(), PID).expect("gone"), None);
        assert_eq!(net_bytes(&fake.proc_root(), PID, 1).expect("gone"), None);
    }

    #[test]
    fn a_missing_cgroup_file_of_a_live_process_is_an_error() {
        let fake = Fake::new();
        fake.v2_only();
        fake.cgroup_file(PID, "0::/system.slice/gone.scope\n");
        match fake.cpu(PID) {
            Err(ActivityError::Read { path, source }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
                assert!(
                    path.ends_with("system.slice/gone.scope/cpu.stat"),
                    "{path:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_cgroup_paths_are_refused() {
        let fake = Fake::new();
        fake.v2_only();
        // What `..` would reach, were it followed.
        fake.write("cgroup/system.slice/cpu.stat", v2_stat(1));
        fake.write("outside/cpu.stat", v2_stat(1));
        for (path, why) in [
            ("/user.slice/../system.slice", "`..`"),
            ("/../outside", "`..`"),
            ("/./system.slice", "`.`"),
            ("system.slice", "not absolute"),
            ("", "not absolute"),
            ("/system.slice\0/x", "NUL"),
        ] {
            fake.cgroup_file(PID, format!("0::{path}\n"));
            match fake.cpu(PID) {
                Err(ActivityError::UnsafeCgroupPath { why: said, .. }) => {
                    assert!(said.contains(why.trim_matches('`')), "{path:?}: {said}");
                }
                other => panic!("{path:?}: {other:?}"),
            }
        }
        // A path longer than PATH_MAX.
        fake.cgroup_file(PID, format!("0::/{}\n", "a/".repeat(CGROUP_PATH_CAP)));
        assert!(matches!(
            fake.cpu(PID),
            Err(ActivityError::UnsafeCgroupPath { .. })
        ));
    }

    #[test]
    fn bytes_that_are_not_utf8() {
        let fake = Fake::new();
        fake.v2_only();
        // In the path to read: refused (it could not be found again).
        fake.cgroup_file(PID, b"0::/user.slice/\xff\xfe\n".as_slice());
        assert!(matches!(
            fake.cpu(PID),
            Err(ActivityError::UnsafeCgroupPath {
                why: "not UTF-8",
                ..
            })
        ));
        // In another hierarchy's line: no matter.
        fake.write("cgroup/ok.slice/cpu.stat", v2_stat(9));
        fake.cgroup_file(PID, b"1:name=systemd:/\xff\n0::/ok.slice\n".as_slice());
        assert_eq!(
            fake.cpu(PID).expect("reads").map(|r| r.usage_ns),
            Some(9000)
        );
        // In the counter: garbled.
        fake.write("cgroup/ok.slice/cpu.stat", b"usage_usec \xff9\n".as_slice());
        assert!(matches!(fake.cpu(PID), Err(ActivityError::Garbled { .. })));
        let v1 = Fake::new();
        v1.hybrid_cpu_cpuacct();
        v1.write("cgroup/cpu,cpuacct/x/cpuacct.usage", b"12\xff\n".as_slice());
        v1.cgroup_file(PID, "5:cpu,cpuacct:/x\n0::/\n");
        assert!(matches!(v1.cpu(PID), Err(ActivityError::Garbled { .. })));
    }

    #[test]
    fn garbled_cgroup_files() {
        let fake = Fake::new();
        fake.hybrid_cpu_cpuacct();
        fake.write("cgroup/cpu,cpuacct/x/cpuacct.usage", "1\n");
        for file in [
            // A v2 cgroup named `a\n5:cpu,cpuacct:` with a child `x`: a
            // forged cpuacct line (a name can hold a newline).
            "5:cpu,cpuacct:/\n0::/user.slice/a\n5:cpu,cpuacct:/x\n",
            // The same with a hierarchy number of its own.
            "5:cpu,cpuacct:/\n0::/user.slice/a\n7:cpuacct:/x\n",
            "0::/a\n0::/x\n",
            "0:cpuacct:/x\n",
            "not a cgroup line\n",
            "5:cpu,cpuacct\n",
        ] {
            fake.cgroup_file(PID, file);
            let read = fake.cpu(PID);
            assert!(
                matches!(read, Err(ActivityError::Garbled { .. })),
                "{file:?}: {read:?}"
            );
        }
        for (stat, why) in [
            ("user_usec 1\n", "no usage_usec"),
            ("usage_usec lots\n", "not a number"),
            ("usage_usec 18446744073709551615\n", "not a number"),
        ] {
            let v2 = Fake::new();
            v2.v2_only();
            v2.write("cgroup/x/cpu.stat", stat);
            v2.cgroup_file(PID, "0::/x\n");
            match v2.cpu(PID) {
                Err(ActivityError::Garbled { why: said, .. }) => {
                    assert!(said.contains(why), "{stat:?}: {said}")
                }
                other => panic!("{stat:?}: {other:?}"),
            }
        }
        fake.write("cgroup/cpu,cpuacct/x/cpuacct.usage", "-1\n");
        fake.cgroup_file(PID, "5:cpu,cpuacct:/x\n0::/\n");
        assert!(matches!(fake.cpu(PID), Err(ActivityError::Garbled { .. })));
    }

    #[test]
    fn huge_files_are_refused_not_read_whole() {
        let fake = Fake::new();
        fake.v2_only();
        let huge = vec![b' '; FILE_READ_CAP * 4];
        // /proc/<pid>/cgroup.
        let mut cgroup = b"0::/x".to_vec();
        cgroup.extend_from_slice(&huge);
        fake.cgroup_file(PID, &cgroup);
        assert!(matches!(
            fake.cpu(PID),
            Err(ActivityError::TooLarge {
                cap: FILE_READ_CAP,
                ..
            })
        ));
        // The counter file.
        let mut stat = b"usage_usec 5\n".to_vec();
        stat.extend_from_slice(&huge);
        fake.write("cgroup/x/cpu.stat", &stat);
        fake.cgroup_file(PID, "0::/x\n");
        assert!(matches!(fake.cpu(PID), Err(ActivityError::TooLarge { .. })));
        // Exactly at the cap: read.
        stat.truncate(FILE_READ_CAP);
        fake.write("cgroup/x/cpu.stat", &stat);
        assert_eq!(
            fake.cpu(PID).expect("reads").map(|r| r.usage_ns),
            Some(5000)
        );
    }

    #[test]
    fn links_out_of_the_cgroup_root_are_not_followed() {
        let fake = Fake::new();
        fake.v2_only();
        fake.write("outside/cpu.stat", v2_stat(77));
        let outside = fake.dir.path().join("outside");
        fake.symlink("cgroup/escape", outside.to_str().expect("utf-8 temp dir"));
        fake.cgroup_file(PID, "0::/escape\n");
        match fake.cpu(PID) {
            Err(ActivityError::UnsafeCgroupPath { why, .. }) => {
                assert_eq!(why, "resolves outside the cgroup root")
            }
            other => panic!("{other:?}"),
        }
        // A v1 mount that is a link out of the root is no mount.
        let v1 = Fake::new();
        v1.write("elsewhere/cpuacct.usage", "5\n");
        v1.symlink(
            "cgroup/cpuacct",
            v1.dir.path().join("elsewhere").to_str().expect("utf-8"),
        );
        v1.cgroup_file(PID, "2:cpuacct:/\n0::/\n");
        assert!(matches!(
            v1.cpu(PID),
            Err(ActivityError::NoCpuAccounting { .. })
        ));
    }

    /// A `/proc/<pid>/stat` with these times (clock ticks).
    fn stat_line(pid: u32, comm: &[u8], utime: u64, stime: u64, start: u64) -> Vec<u8> {
        let mut line = format!("{pid} (").into_bytes();
        line.extend_from_slice(comm);
        line.extend_from_slice(
            format!(
                ") S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 {utime} {stime} 0 0 20 0 1 0 {start} 1000000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
            )
            .as_bytes(),
        );
        line
    }

    #[test]
    fn process_cpu_from_a_crafted_stat() {
        let fake = Fake::new();
        let tps = procfs::ticks_per_second();
        fake.write(
            &format!("proc/{PID}/stat"),
            stat_line(PID, b"python3", 300, 200, 555),
        );
        assert_eq!(
            process_cpu_ns(&fake.proc_root(), PID).expect("reads"),
            Some(ProcessCpu {
                start: 555,
                cpu_ns: 500 * 1_000_000_000 / tps,
            })
        );
        // A name that is not UTF-8 (and holds a `) `): still read.
        fake.write(
            &format!("proc/{PID}/stat"),
            stat_line(PID, b"\xff) S x", tps, 0, 9),
        );
        assert_eq!(
            process_cpu_ns(&fake.proc_root(), PID).expect("reads"),
            Some(ProcessCpu {
                start: 9,
                cpu_ns: 1_000_000_000,
            })
        );
        // Garbled, and too long.
        fake.write(&format!("proc/{PID}/stat"), "4242 (x) S 1 2");
        assert!(matches!(
            process_cpu_ns(&fake.proc_root(), PID),
            Err(ActivityError::Garbled { .. })
        ));
        let mut long = stat_line(PID, b"x", 1, 1, 1);
        long.extend(std::iter::repeat_n(b'0', FILE_READ_CAP));
        fake.write(&format!("proc/{PID}/stat"), long);
        assert!(matches!(
            process_cpu_ns(&fake.proc_root(), PID),
            Err(ActivityError::TooLarge { .. })
        ));
    }

    #[test]
    fn ticks_convert_without_overflow() {
        assert_eq!(ticks_to_ns(250, 100), Some(2_500_000_000));
        assert_eq!(ticks_to_ns(1, 3), Some(333_333_333));
        // 2^64 ticks at 100 a second is more nanoseconds than u64 holds.
        assert_eq!(ticks_to_ns(u64::MAX, 100), None);
        assert_eq!(
            ticks_to_ns(u64::MAX / 1_000_000_000, 1_000_000_000),
            Some(u64::MAX / 1_000_000_000)
        );
        assert_eq!(ticks_to_ns(5, 0), None);
    }

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 5710501   38228    0    0    0     0          0         0  5710501   38228    0    0    0     0       0          0
  eth0: 257705113    9710    0    0    0     0          0         0   560711    5655    0    0    0     0       0          0
  eth1:    1000      10    0    0    0     0          0         0      24       1    0    0    0     0       0          0
";

    #[test]
    fn net_bytes_of_a_namespace_of_its_own() {
        let fake = Fake::new();
        fake.symlink(&format!("proc/{PID}/ns/net"), "net:[4026532999]");
        fake.write(&format!("proc/{PID}/net/dev"), NET_DEV);
        assert_eq!(
            net_bytes(&fake.proc_root(), PID, 4026531833).expect("reads"),
            Some(Net::Own {
                ns: 4026532999,
                bytes: 257_705_113 + 560_711 + 1000 + 24,
            })
        );
        // The host's namespace: nothing of its own, net/dev not read.
        std::fs::remove_file(fake.proc_root().join(format!("{PID}/net/dev"))).expect("rm");
        assert_eq!(
            net_bytes(&fake.proc_root(), PID, 4026532999).expect("reads"),
            Some(Net::Host)
        );
        // Only lo: nothing sent.
        fake.write(
            &format!("proc/{PID}/net/dev"),
            NET_DEV.lines().take(3).collect::<Vec<_>>().join("\n"),
        );
        assert_eq!(
            net_bytes(&fake.proc_root(), PID, 1).expect("reads"),
            Some(Net::Own {
                ns: 4026532999,
                bytes: 0
            })
        );
    }

    #[test]
    fn garbled_network_files() {
        let fake = Fake::new();
        let link = format!("proc/{PID}/ns/net");
        fake.symlink(&link, "mnt:[4026531840]");
        fake.write(&format!("proc/{PID}/net/dev"), NET_DEV);
        assert!(matches!(
            net_bytes(&fake.proc_root(), PID, 1),
            Err(ActivityError::Garbled { .. })
        ));
        std::fs::remove_file(fake.dir.path().join(&link)).expect("rm");
        fake.symlink(&link, "net:[4026532999]");
        for dev in [
            format!("{NET_DEV}  eth2: 12 lots\n"),
            format!("{NET_DEV}  eth2: \u{ff}\n"),
            NET_DEV.replace("257705113", "18446744073709551615"),
        ] {
            fake.write(&format!("proc/{PID}/net/dev"), &dev);
            let read = net_bytes(&fake.proc_root(), PID, 1);
            assert!(
                matches!(read, Err(ActivityError::Garbled { .. })),
                "{dev:?}: {read:?}"
            );
        }
        let mut huge = NET_DEV.to_string();
        while huge.len() <= NET_DEV_READ_CAP {
            huge.push_str("  eth9:    1000      10    0    0    0     0          0         0      24       1    0    0    0     0       0          0\n");
        }
        fake.write(&format!("proc/{PID}/net/dev"), huge);
        assert!(matches!(
            net_bytes(&fake.proc_root(), PID, 1),
            Err(ActivityError::TooLarge {
                cap: NET_DEV_READ_CAP,
                ..
            })
        ));
    }

    #[test]
    fn the_host_namespace_from_init_else_myself() {
        let fake = Fake::new();
        fake.mkdir("proc");
        assert_eq!(host_net_namespace(&fake.proc_root()), None);
        fake.symlink("proc/self/ns/net", "net:[20]");
        assert_eq!(
            host_net_namespace(&fake.proc_root()),
            Some(HostNet {
                ns: 20,
                from: NsSource::Myself
            })
        );
        fake.symlink("proc/1/ns/net", "net:[10]");
        assert_eq!(
            host_net_namespace(&fake.proc_root()),
            Some(HostNet {
                ns: 10,
                from: NsSource::Init
            })
        );
    }

    #[test]
    fn a_host_network_has_no_bytes_of_its_own() {
        let own = Net::Own { ns: 1, bytes: 3 };
        assert_eq!((own.bytes(), Net::Host.bytes()), (Some(3), None));
    }

    #[test]
    fn readings_serialise_with_short_stable_names() {
        let cpu = CpuReading {
            cgroup: format!("/docker/{ID}"),
            version: CgroupVersion::V2,
            usage_ns: 5,
        };
        let json = serde_json::to_string(&cpu).expect("json");
        assert_eq!(
            json,
            format!(r#"{{"cgroup":"/docker/{ID}","version":"v2","usage_ns":5}}"#)
        );
        assert_eq!(
            serde_json::from_str::<CpuReading>(&json).expect("back"),
            cpu
        );
        let p = ProcessCpu {
            start: 9,
            cpu_ns: 10,
        };
        assert_eq!(
            serde_json::to_string(&p).expect("json"),
            r#"{"start":9,"cpu_ns":10}"#
        );
        for (net, text) in [
            (Net::Host, r#"{"net":"host"}"#),
            (
                Net::Own { ns: 4, bytes: 8 },
                r#"{"net":"own","ns":4,"bytes":8}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&net).expect("json"), text);
            assert_eq!(serde_json::from_str::<Net>(text).expect("back"), net);
        }
    }

    // --- The real /proc and cgroup filesystem of this test process -------------

    fn me() -> u32 {
        std::process::id()
    }

    /// Burns CPU on this thread for at least `ms` milliseconds of wall time.
    fn burn(ms: u64) {
        let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
        let mut x: u64 = 1;
        while std::time::Instant::now() < until {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
        }
        std::hint::black_box(x);
    }

    /// Burns CPU until `read` grows past `before` (50 ms at first, then up
    /// to 5 s more on a busy machine), and returns what it read.
    fn burn_until_grown(before: u64, read: impl Fn() -> u64) -> u64 {
        burn(50);
        for _ in 0..100 {
            let now = read();
            if now > before {
                return now;
            }
            burn(50);
        }
        read()
    }

    #[test]
    fn the_real_cpu_time_of_this_process_grows() {
        let proc_root = Path::new("/proc");
        let read = || {
            process_cpu_ns(proc_root, me())
                .expect("reads")
                .expect("alive")
        };
        let before = read();
        let after = burn_until_grown(before.cpu_ns, || read().cpu_ns);
        assert!(after > before.cpu_ns, "{after} after {}", before.cpu_ns);
        assert_eq!(read().start, before.start, "the same process");
        // The same as `/proc/self/stat` read by hand, between two readings.
        let low = own_cpu_ns_by_hand();
        let read_now = read().cpu_ns;
        let high = own_cpu_ns_by_hand();
        assert!(
            (low..=high).contains(&read_now),
            "{low} <= {read_now} <= {high}"
        );
    }

    /// `utime + stime` of `/proc/self/stat` in nanoseconds, parsed here
    /// without `procfs`.
    fn own_cpu_ns_by_hand() -> u64 {
        let text = std::fs::read_to_string("/proc/self/stat").expect("stat");
        let (_, rest) = text.rsplit_once(") ").expect("comm");
        // After the name: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        ticks * 1_000_000_000 / procfs::ticks_per_second()
    }

    #[test]
    fn the_real_cgroup_of_this_process_is_found_and_read() {
        let proc_root = Path::new("/proc");
        let cgroup_root = Path::new("/sys/fs/cgroup");
        let read = || {
            cgroup_cpu(proc_root, cgroup_root, me())
                .expect("this host's cgroup is readable")
                .expect("alive")
        };
        let before = read();
        assert!(before.usage_ns > 0, "{before:?}");
        // The path is one of those /proc/self/cgroup lists, for its hierarchy.
        let listed = std::fs::read_to_string("/proc/self/cgroup").expect("read");
        let in_hierarchy = |line: &str| match before.version {
            CgroupVersion::V1 => line
                .split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == "cpuacct")),
            CgroupVersion::V2 => line.starts_with("0::"),
        };
        assert!(
            listed.lines().any(|line| in_hierarchy(line)
                && line.splitn(3, ':').nth(2) == Some(before.cgroup.as_str())),
            "{before:?} not in {listed}"
        );
        // It counts this process's CPU time.
        let after = burn_until_grown(before.usage_ns, || read().usage_ns);
        assert!(after > before.usage_ns, "{after} after {before:?}");
        let again = read();
        assert_eq!(
            (again.cgroup, again.version),
            (before.cgroup, before.version)
        );
    }

    /// Bytes on every interface but lo, as `/proc/self/net/dev` has them,
    /// parsed here without `procfs`.
    fn own_bytes_by_hand() -> u64 {
        let text = std::fs::read_to_string("/proc/self/net/dev").expect("net/dev");
        text.lines()
            .skip(2)
            .filter_map(|line| line.split_once(':'))
            .filter(|(name, _)| name.trim() != "lo")
            .map(|(_, rest)| {
                let fields: Vec<u64> = rest
                    .split_whitespace()
                    .map(|f| f.parse().expect("number"))
                    .collect();
                fields[0] + fields[8]
            })
            .sum()
    }

    #[test]
    fn the_real_network_namespace_of_this_process() {
        let proc_root = Path::new("/proc");
        let own = parse_net_link(&std::fs::read_link("/proc/self/ns/net").expect("own ns"))
            .expect("net:[…]");
        let host = host_net_namespace(proc_root).expect("some host namespace");
        match std::fs::read_link("/proc/1/ns/net") {
            Ok(init) => {
                assert_eq!(host.from, NsSource::Init);
                assert_eq!(Some(host.ns), parse_net_link(&init));
            }
            // Some sandboxes deny init's links even to root: ours stands in.
            Err(_) => assert_eq!(
                host,
                HostNet {
                    ns: own,
                    from: NsSource::Myself
                }
            ),
        }
        let net = net_bytes(proc_root, me(), host.ns)
            .expect("reads")
            .expect("alive");
        if own == host.ns {
            assert_eq!(net, Net::Host);
        } else {
            assert!(matches!(net, Net::Own { ns, .. } if ns == own), "{net:?}");
        }
        // As a namespace of its own (any other host namespace): what
        // net/dev says, between two readings by hand.
        let low = own_bytes_by_hand();
        let read = net_bytes(proc_root, me(), own.wrapping_add(1))
            .expect("reads")
            .expect("alive");
        let high = own_bytes_by_hand();
        match read {
            Net::Own { ns, bytes } => {
                assert_eq!(ns, own);
                assert!((low..=high).contains(&bytes), "{low} <= {bytes} <= {high}");
            }
            Net::Host => panic!("not the host's"),
        }
    }
}
