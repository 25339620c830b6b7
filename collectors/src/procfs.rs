//! Collector `procfs`: the one place that reads `/proc`, through the `procfs`
//! crate. It attributes the GPU processes the other collectors found and the
//! main process of every running container: real uid and its user name (NSS,
//! once per uid per scan), command line, start time, and whether the process's
//! cgroup is a container's (docker, containerd, libpod, kubepods; cgroup v1 and
//! v2). Reads only those PIDs, each file once. A PID that is gone is skipped
//! quietly. A container's main process that is not also a GPU process is read
//! for what the stages use of it (owner and cgroup: two files, not four), since
//! these reads wait for the container list and grow with the running containers.
//!
//! Every read and NSS lookup runs on tokio's blocking pool, so that the
//! collector's timeout can abandon a read that never returns (a `cmdline`
//! whose process is stuck in the kernel, a directory service that does not
//! answer): the collector is then recorded as timed out and its facts are
//! carried over.
//!
//! Needs: read access to `/proc/<pid>/{stat,status,cmdline,cgroup}` (root to see
//! other users' command lines under `hidepid`). `root` can point elsewhere for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use detect_workloads_core::async_trait;
use detect_workloads_core::config::{ConfigError, PluginConfig};
use detect_workloads_core::model::{FactKind, Observations, ProcessFacts};
use detect_workloads_core::plugin::{
    CollectContext, CollectError, Collected, Collector, CollectorPlugin,
};
use detect_workloads_core::users::UserNames;
use procfs::process::Process;
use procfs::{ProcError, ProcResult};
use serde::Deserialize;
use tracing::debug;

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample procfs`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[collectors.procfs]]
root = "/proc"
"#;

/// `[[collectors.procfs]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcfsConfig {
    /// Where `/proc` is.
    pub root: PathBuf,
}

impl Default for ProcfsConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/proc"),
        }
    }
}

/// The `procfs` collector.
#[derive(Debug)]
pub struct Procfs {
    config: ProcfsConfig,
}

/// `/proc/<pid>/cmdline`: NUL separators become spaces, bytes are decoded as
/// UTF-8 with replacement, the trailing NUL is dropped.
pub fn cmdline_text(bytes: &[u8]) -> String {
    let trimmed = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    String::from_utf8_lossy(trimmed).replace('\0', " ")
}

/// What a process's cgroups say about containment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupInfo {
    /// The process runs in a container's cgroup.
    pub in_container: bool,
    /// The 64-hex container id in the path, when there is one.
    pub container_id: Option<String>,
}

const RUNTIME_MARKERS: [&str; 5] = ["docker", "containerd", "crio", "libpod", "kubepods"];

/// The cgroup paths of a process (one per v1 hierarchy, one for v2). A path is
/// a container's when one of its segments is a container's: a runtime's
/// name with a 64-hex id (`docker-<id>.scope` of the systemd driver,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`), or
/// the bare id the cgroupfs driver uses (`/docker/<id>`, and under any
/// `--cgroup-parent`: `/ds01-students-alice.slice/<id>`); or when it lies
/// under `kubepods` (a pod, id unknown). In a nested path (a container in a
/// container) the outermost id is taken: the one the host's engine knows.
pub fn cgroup_info<'a>(paths: impl IntoIterator<Item = &'a str>) -> CgroupInfo {
    let mut pod = false;
    for path in paths {
        if let Some(id) = path.split('/').find_map(container_segment) {
            return CgroupInfo {
                in_container: true,
                container_id: Some(id),
            };
        }
        pod |= path.contains("kubepods");
    }
    CgroupInfo {
        in_container: pod,
        container_id: None,
    }
}

/// The container id a cgroup path segment names: the whole segment when it
/// is 64 hex digits, else a 64-hex id inside a segment naming a runtime.
fn container_segment(segment: &str) -> Option<String> {
    let id = hex_id(segment)?;
    (id.len() == segment.len() || RUNTIME_MARKERS.iter().any(|m| segment.contains(m))).then_some(id)
}

/// The 64-hex id inside one path segment (`docker-<id>.scope`, `<id>`).
fn hex_id(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    (0..(bytes.len() + 1).saturating_sub(64)).find_map(|i| {
        let window = segment.get(i..i + 64)?;
        let hex = window
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let before = i.checked_sub(1).and_then(|j| bytes.get(j));
        let bounded = bytes.get(i + 64).is_none_or(|b| !b.is_ascii_hexdigit())
            && before.is_none_or(|b| !b.is_ascii_hexdigit());
        (hex && bounded).then(|| window.to_string())
    })
}

/// The raw command line of a process (bytes, so that invalid UTF-8 is kept
/// as replacement characters rather than failing the read).
fn read_cmdline(process: &Process) -> ProcResult<Vec<u8>> {
    let mut bytes = Vec::new();
    process
        .open_relative("cmdline")?
        .read_to_end(&mut bytes)
        .map_err(ProcError::from)?;
    Ok(bytes)
}

/// The facts of one process (user name not yet resolved). The command line and
/// the cgroups are optional (a kernel thread has no command line; its name
/// stands in); `stat` and `status` are not.
fn try_read_process(root: &Path, pid: u32) -> ProcResult<ProcessFacts> {
    let process = Process::new_with_root(root.join(pid.to_string()))?;
    let stat = process.stat()?;
    let uid = process.status()?.ruid;
    let cmdline = read_cmdline(&process).map_or_else(|_| String::new(), |b| cmdline_text(&b));
    let cgroup = process
        .cgroups()
        .map(|groups| cgroup_info(groups.0.iter().map(|g| g.pathname.as_str())))
        .unwrap_or_default();
    Ok(ProcessFacts {
        pid,
        uid,
        user: String::new(),
        cmdline: if cmdline.is_empty() {
            format!("[{}]", stat.comm)
        } else {
            cmdline
        },
        comm: stat.comm,
        start_time: stat.starttime,
        in_container: cgroup.in_container,
        container_id: cgroup.container_id,
        exe: process.exe().ok().map(|p| p.to_string_lossy().into_owned()),
    })
}

/// The owner (real uid, from `status`) and the cgroup of a container's main
/// process: what `resolve-user` uses of it (the owner, and whether the cached
/// main PID is still in its container). Its command line, name and start time
/// stay empty: nothing reads them for a process that holds no GPU.
fn try_read_owner(root: &Path, pid: u32) -> ProcResult<ProcessFacts> {
    let process = Process::new_with_root(root.join(pid.to_string()))?;
    let cgroup = process
        .cgroups()
        .map(|groups| cgroup_info(groups.0.iter().map(|g| g.pathname.as_str())))
        .unwrap_or_default();
    Ok(ProcessFacts {
        pid,
        uid: process.status()?.ruid,
        user: String::new(),
        cmdline: String::new(),
        comm: String::new(),
        start_time: 0,
        in_container: cgroup.in_container,
        container_id: cgroup.container_id,
        exe: None,
    })
}

/// How much of a process to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Everything ([`ProcessFacts`] in full): a GPU process.
    Full,
    /// Owner and cgroup only: a container's main process holding no GPU.
    Owner,
}

/// The facts of one process (user name not yet resolved); `None` when it is
/// gone or its files are unreadable or malformed.
pub fn read_process(root: &Path, pid: u32) -> Option<ProcessFacts> {
    read_at_depth(root, pid, Depth::Full)
}

/// [`read_process`] at this depth.
pub fn read_at_depth(root: &Path, pid: u32, depth: Depth) -> Option<ProcessFacts> {
    let read = match depth {
        Depth::Full => try_read_process(root, pid),
        Depth::Owner => try_read_owner(root, pid),
    };
    match read {
        Ok(facts) => Some(facts),
        Err(ProcError::NotFound(_)) => {
            debug!(pid, "gone from /proc; skipped");
            None
        }
        Err(e) => {
            debug!(pid, "cannot read: {e}; skipped");
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

/// Reads every PID under `root` and names its owner: blocking work, for the
/// blocking pool.
fn read_all(
    root: &Path,
    pids: &[(u32, Depth)],
    users: &UserNames,
) -> Result<BTreeMap<u32, ProcessFacts>, CollectError> {
    if let Err(e) = std::fs::read_dir(root) {
        return Err(CollectError::Unavailable(format!(
            "cannot read {}: {e}",
            root.display()
        )));
    }
    let mut processes = BTreeMap::new();
    for &(pid, depth) in pids {
        if let Some(mut facts) = read_at_depth(root, pid, depth) {
            facts.user = users.name(facts.uid);
            processes.insert(pid, facts);
        }
    }
    Ok(processes)
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

    async fn collect(&self, ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        let root = self.config.root.clone();
        let pids = pids_to_read(ctx.observed);
        let users = ctx.users.clone();
        // On the blocking pool: a timeout abandons the task (its thread ends
        // when the read returns, or with the process).
        let processes = tokio::task::spawn_blocking(move || read_all(&root, &pids, &users))
            .await
            .map_err(|e| CollectError::Unavailable(format!("reading /proc failed: {e}")))??;
        Ok(Collected {
            observations: Observations {
                processes,
                ..Default::default()
            },
            ..Default::default()
        })
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Collector>, ConfigError> {
    Ok(Box::new(Procfs {
        config: config.parse()?,
    }))
}

detect_workloads_core::inventory::submit! {
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
    use detect_workloads_core::model::Inventory;
    use detect_workloads_core::model::{ContainerFacts, GpuProcess, InspectFacts};
    use detect_workloads_core::plugin::Previous;

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
                facts.cmdline.as_str(),
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
        // Gone, or garbled: skipped.
        assert!(read_process(dir.path(), 448).is_none());
        std::fs::write(dir.path().join("9/stat"), "9 (x) S 1 2").expect("w");
        assert!(read_process(dir.path(), 9).is_none());
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
            },
        };
        let previous = Previous::known(Inventory::default());
        let users = UserNames::new();
        let ctx = CollectContext {
            previous: &previous,
            observed: &observed,
            users: &users,
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
        assert_eq!(processes[&447].cmdline, "python3");
    }

    #[test]
    fn a_missing_root_is_unavailable() {
        let users = UserNames::new();
        let missing = Path::new("/nonexistent-proc-root-for-test");
        assert!(matches!(
            read_all(missing, &[(1, Depth::Full)], &users),
            Err(CollectError::Unavailable(_))
        ));
    }
}
