//! Collector `device-files`: the processes that hold an NVIDIA GPU device node
//! open, found by reading every process's open file descriptors
//! (`<root>/<pid>/fd/*`), the way `fuser -v /dev/nvidia*` does. A plugin written
//! outside the core, as an example of the extension story (see `docs/plugins.md`).
//!
//! **What it observes.** A process with `<dev_dir>/nvidiaN` open uses GPU N. It
//! is reported as one [`GpuProcess`] per GPU node it holds, with
//! `used_memory_mib: None` (the file table says nothing about memory) and
//! `gpu_uuid` set to the device node path, for example `"/dev/nvidia0"`: this
//! collector cannot know the NVML UUID, and the path names the GPU as
//! unambiguously on one host. When the process holds exactly one GPU node and
//! also MIG capability nodes (`<dev_dir>/nvidia-caps/nvidia-capM`, which name the
//! GPU instance and compute instance it may use), their paths, comma-separated,
//! go in `mig_uuid`. The nodes every CUDA process opens whatever GPU it uses
//! (`nvidiactl`, `nvidia-uvm`, `nvidia-uvm-tools`, `nvidia-modeset`) name no GPU
//! and are ignored, and so is a process that holds only capability nodes (the
//! MIG `config` and `monitor` capabilities are held by admin tools, not GPU
//! users).
//!
//! It sees processes NVML cannot list: those that opened a GPU but have not yet
//! created a context or allocated memory, and those whose PID NVML cannot map
//! (another PID namespace). It sees every process of the host PID namespace,
//! containers' included; the `procfs` collector and the core tell them apart.
//!
//! **What it needs.** Read access to every process's `fd` directory and links:
//! root (or `CAP_SYS_PTRACE` + `CAP_DAC_READ_SEARCH`). Without it, other users'
//! processes are skipped quietly and counted as `unreadable` in the scan stats.
//! A process that exits while being read is skipped quietly. The work runs on a
//! blocking thread; when the core abandons it (timeout), the scan stops at the
//! next process.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use detect_workloads_api::config::{duration, ConfigError, PluginConfig};
use detect_workloads_api::model::{FactKind, GpuProcess, Observations};
use detect_workloads_api::plugin::{
    CollectContext, CollectError, Collected, Collector, CollectorPlugin,
};
use procfs::process::FDTarget;
use procfs::ProcError;
use serde::{Deserialize, Deserializer};
use tracing::debug;

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample device-files`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[collectors.device-files]]
root = "/proc"
dev_dir = "/dev"                # matches <dev_dir>/nvidiaN and <dev_dir>/nvidia-caps/*
timeout = "5s"
only_unlisted = true            # only processes no other GPU collector listed
"#;

/// `[[collectors.device-files]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceFilesConfig {
    /// Where the process tree is mounted (`/proc`; tests point it elsewhere).
    pub root: PathBuf,
    /// The directory holding the NVIDIA device nodes, as the fd links name it:
    /// `<dev_dir>/nvidiaN` and `<dev_dir>/nvidia-caps/*` are matched. Absolute.
    #[serde(deserialize_with = "absolute_dir")]
    pub dev_dir: PathBuf,
    /// How long one scan of every fd table may take.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Report only processes that no other GPU collector (`nvml`,
    /// `nvidia-smi`) listed this cycle, so that their GPU UUID and memory
    /// stand alone. It then runs after them.
    pub only_unlisted: bool,
}

impl Default for DeviceFilesConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/proc"),
            dev_dir: PathBuf::from("/dev"),
            timeout: Duration::from_secs(5),
            only_unlisted: true,
        }
    }
}

/// Deserializes `dev_dir`, an absolute path. Checked here rather than after
/// parsing so that the error names the value's line.
fn absolute_dir<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let path = PathBuf::deserialize(d)?;
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(serde::de::Error::custom(format!(
            "key `dev_dir`: {:?} must be an absolute path (fd links name absolute paths)",
            path.display()
        )))
    }
}

/// The `device-files` collector.
#[derive(Debug, Clone)]
pub struct DeviceFiles {
    config: DeviceFilesConfig,
}

impl DeviceFiles {
    /// A collector with this configuration.
    pub fn new(config: DeviceFilesConfig) -> Self {
        Self { config }
    }
}

/// What one pass over the fd tables found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FdScan {
    /// One entry per (process, GPU node held), by PID then GPU number.
    pub gpu_processes: Vec<GpuProcess>,
    /// Process directories read.
    pub processes: u64,
    /// File descriptors looked at.
    pub fds: u64,
    /// Processes whose fd table could not be read (permission).
    pub unreadable: u64,
}

/// An NVIDIA device node that a link target names.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    /// `<dev_dir>/nvidiaN`: GPU N.
    Gpu(u32),
    /// `<dev_dir>/nvidia-caps/<name>`: a MIG capability.
    Capability,
}

/// Which NVIDIA node `target` is, if it is one that identifies a GPU user.
fn node_of(target: &Path, dev_dir: &Path) -> Option<Node> {
    let rest = target.strip_prefix(dev_dir).ok()?.to_str()?;
    if let Some(n) = rest.strip_prefix("nvidia") {
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            return n.parse().ok().map(Node::Gpu);
        }
    }
    match rest.strip_prefix("nvidia-caps/") {
        Some(name) if !name.is_empty() && !name.contains('/') => Some(Node::Capability),
        _ => None,
    }
}

/// Sorts `nvidia-cap9` before `nvidia-cap10`.
fn natural(path: &str) -> (usize, &str) {
    (path.len(), path)
}

/// Reads every process's fd table under `root`, through the `procfs` crate.
/// Processes that vanish or cannot be read are skipped; only an unreadable
/// `root` is an error. Stops early (with an error) once `cancelled` is set.
pub fn scan_fd_tables(
    root: &Path,
    dev_dir: &Path,
    cancelled: &AtomicBool,
) -> Result<FdScan, CollectError> {
    let processes = procfs::process::all_processes_with_root(root)
        .map_err(|e| CollectError::Unavailable(format!("cannot list {}: {e}", root.display())))?;
    let mut scan = FdScan::default();
    for process in processes {
        if cancelled.load(Ordering::Relaxed) {
            return Err(CollectError::Failed("abandoned".to_string()));
        }
        // Gone meanwhile (or a `-N` entry, which names no process): skipped.
        let Ok(process) = process else { continue };
        let Ok(pid) = u32::try_from(process.pid()) else {
            continue;
        };
        let fds = match process.fd() {
            Ok(fds) => fds,
            Err(ProcError::PermissionDenied(_)) => {
                scan.unreadable += 1;
                continue; // not ours to read
            }
            Err(_) => continue, // gone meanwhile, or a kernel thread's
        };
        scan.processes += 1;
        let mut gpus = BTreeMap::new();
        let mut caps = BTreeSet::new();
        // Descriptors closed meanwhile are left out by the iterator.
        for fd in fds.flatten() {
            scan.fds += 1;
            let FDTarget::Path(target) = fd.target else {
                continue; // sockets, pipes, anonymous inodes
            };
            match node_of(&target, dev_dir) {
                Some(Node::Gpu(n)) => {
                    gpus.insert(n, target.to_string_lossy().into_owned());
                }
                Some(Node::Capability) => {
                    caps.insert(target.to_string_lossy().into_owned());
                }
                None => {}
            }
        }
        scan.gpu_processes.extend(gpu_processes(pid, gpus, caps));
    }
    scan.gpu_processes.sort_by_key(|g| g.pid);
    Ok(scan)
}

/// One [`GpuProcess`] per GPU node a process holds; its MIG capabilities go
/// with it when it holds exactly one GPU.
fn gpu_processes(
    pid: u32,
    gpus: BTreeMap<u32, String>,
    caps: BTreeSet<String>,
) -> impl Iterator<Item = GpuProcess> {
    let mut caps: Vec<String> = caps.into_iter().collect();
    caps.sort_by(|a, b| natural(a).cmp(&natural(b)));
    let mig = (gpus.len() == 1 && !caps.is_empty()).then(|| caps.join(","));
    gpus.into_values().map(move |node| GpuProcess {
        pid,
        used_memory_mib: None,
        gpu_uuid: node,
        mig_uuid: mig.clone(),
        ..GpuProcess::default()
    })
}

/// Sets the flag when dropped: the collect future was dropped (timed out), so
/// the blocking scan should stop.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[detect_workloads_api::async_trait]
impl Collector for DeviceFiles {
    fn provides(&self) -> &'static [FactKind] {
        &[FactKind::GpuProcesses]
    }

    /// With `only_unlisted`, it needs the other GPU collectors' lists, so the
    /// core runs it after them.
    fn needs(&self) -> &'static [FactKind] {
        if self.config.only_unlisted {
            &[FactKind::GpuProcesses]
        } else {
            &[]
        }
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    async fn collect(&self, ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        // Dropped with this future, on a timeout too: the blocking scan then stops.
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let flag = Arc::clone(&cancel.0);
        let (root, dev_dir) = (self.config.root.clone(), self.config.dev_dir.clone());
        let mut scan = tokio::task::spawn_blocking(move || scan_fd_tables(&root, &dev_dir, &flag))
            .await
            .map_err(|e| CollectError::Failed(format!("the fd scan did not finish: {e}")))??;
        let mut listed_elsewhere = 0;
        if self.config.only_unlisted {
            let listed: BTreeSet<u32> = ctx.observed.gpu_processes.iter().map(|g| g.pid).collect();
            let before: BTreeSet<u32> = scan.gpu_processes.iter().map(|g| g.pid).collect();
            scan.gpu_processes.retain(|g| !listed.contains(&g.pid));
            listed_elsewhere = before.intersection(&listed).count() as u64;
        }
        let pids: BTreeSet<u32> = scan.gpu_processes.iter().map(|g| g.pid).collect();
        debug!(
            processes = scan.processes,
            fds = scan.fds,
            unreadable = scan.unreadable,
            gpu_processes = pids.len(),
            listed_elsewhere,
            "fd tables read"
        );
        let stats = BTreeMap::from([
            ("processes".to_string(), scan.processes),
            ("fds".to_string(), scan.fds),
            ("unreadable".to_string(), scan.unreadable),
            ("gpu_processes".to_string(), pids.len() as u64),
            ("listed_elsewhere".to_string(), listed_elsewhere),
        ]);
        Ok(Collected {
            observations: Observations {
                gpu_processes: scan.gpu_processes,
                ..Observations::default()
            },
            stats,
        })
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Collector>, ConfigError> {
    let parsed: DeviceFilesConfig = config.parse()?;
    if parsed.timeout.is_zero() {
        return Err(config.invalid("timeout", "must be more than 0s"));
    }
    Ok(Box::new(DeviceFiles::new(parsed)))
}

detect_workloads_api::inventory::submit! {
    CollectorPlugin {
        name: "device-files",
        summary: "processes holding /dev/nvidiaN open (reads every /proc/<pid>/fd)",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    use detect_workloads_api::model::Inventory;
    use detect_workloads_api::plugin::Previous;
    use detect_workloads_api::users::UserNames;
    use detect_workloads_core::config::Config;
    use detect_workloads_stages as _;

    /// A crafted proc tree: `links` are (pid, fd, target).
    fn proc_tree(links: &[(&str, u32, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (pid, fd, target) in links {
            let fd_dir = dir.path().join(pid).join("fd");
            std::fs::create_dir_all(&fd_dir).expect("mkdir");
            symlink(target, fd_dir.join(fd.to_string())).expect("symlink");
        }
        dir
    }

    fn scan(root: &Path, dev_dir: &str) -> Result<FdScan, CollectError> {
        scan_fd_tables(root, Path::new(dev_dir), &AtomicBool::new(false))
    }

    fn found(scan: &FdScan) -> Vec<(u32, &str, Option<&str>)> {
        scan.gpu_processes
            .iter()
            .map(|g| (g.pid, g.gpu_uuid.as_str(), g.mig_uuid.as_deref()))
            .collect()
    }

    #[test]
    fn node_paths() {
        let dev = Path::new("/dev");
        let node = |p: &str| node_of(Path::new(p), dev);
        assert_eq!(node("/dev/nvidia0"), Some(Node::Gpu(0)));
        assert_eq!(node("/dev/nvidia12"), Some(Node::Gpu(12)));
        assert_eq!(
            node("/dev/nvidia-caps/nvidia-cap21"),
            Some(Node::Capability)
        );
        for other in [
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools",
            "/dev/nvidia-modeset",
            "/dev/nvidia",
            "/dev/nvidia0 (deleted)",
            "/dev/nvidia-caps",
            "/dev/nvidia-caps/",
            "/devices/nvidia0",
            "/dev/dri/card0",
            "/tmp/dev/nvidia0",
            "socket:[4242]",
            "pipe:[17]",
            "anon_inode:[eventfd]",
        ] {
            assert_eq!(node(other), None, "{other}");
        }
        let custom = Path::new("/tmp/fake-dev/");
        assert_eq!(
            node_of(Path::new("/tmp/fake-dev/nvidia3"), custom),
            Some(Node::Gpu(3))
        );
        assert_eq!(node_of(Path::new("/dev/nvidia3"), custom), None);
    }

    #[test]
    fn finds_gpu_users_and_ignores_the_rest() {
        let tree = proc_tree(&[
            // A CUDA process on GPU 0: ctl and uvm too, which are not GPUs.
            ("100", 0, "/dev/pts/0"),
            ("100", 3, "/dev/nvidiactl"),
            ("100", 4, "/dev/nvidia-uvm"),
            ("100", 5, "/dev/nvidia0"),
            ("100", 6, "/dev/nvidia0"),
            // Only the shared nodes: not a GPU user.
            ("101", 3, "/dev/nvidiactl"),
            ("101", 4, "/dev/nvidia-uvm"),
            ("101", 5, "/dev/nvidia-modeset"),
            // Two GPUs, reported in GPU order.
            ("102", 7, "/dev/nvidia10"),
            ("102", 8, "/dev/nvidia2"),
            // A MIG user: the GPU plus its instance capabilities.
            ("103", 3, "/dev/nvidia1"),
            ("103", 4, "/dev/nvidia-caps/nvidia-cap12"),
            ("103", 5, "/dev/nvidia-caps/nvidia-cap9"),
            // Capabilities only (an admin tool): not a GPU user.
            ("104", 3, "/dev/nvidia-caps/nvidia-cap1"),
            // Sockets, pipes, a node that was deleted.
            ("105", 0, "socket:[1234]"),
            ("105", 1, "pipe:[99]"),
            ("105", 2, "/dev/nvidia3 (deleted)"),
        ]);
        // A process that vanished (no fd directory), a kernel thread (empty
        // table), and non-PID entries are skipped quietly.
        std::fs::create_dir(tree.path().join("106")).expect("mkdir");
        std::fs::create_dir_all(tree.path().join("107/fd")).expect("mkdir");
        std::fs::write(tree.path().join("meminfo"), "MemTotal: 1 kB\n").expect("write");
        symlink("100", tree.path().join("self")).expect("symlink");
        std::fs::create_dir_all(tree.path().join("-5/fd")).expect("mkdir");
        symlink("/dev/nvidia0", tree.path().join("-5/fd/3")).expect("symlink");

        let scan = scan(tree.path(), "/dev").expect("scan");
        assert_eq!(
            found(&scan),
            vec![
                (100, "/dev/nvidia0", None),
                (102, "/dev/nvidia2", None),
                (102, "/dev/nvidia10", None),
                (
                    103,
                    "/dev/nvidia1",
                    Some("/dev/nvidia-caps/nvidia-cap9,/dev/nvidia-caps/nvidia-cap12")
                ),
            ]
        );
        assert!(scan
            .gpu_processes
            .iter()
            .all(|g| g.used_memory_mib.is_none()));
        assert_eq!(scan.processes, 7); // 100..105 and 107
        assert_eq!(scan.fds, 17);
        assert_eq!(scan.unreadable, 0);
    }

    #[test]
    fn missing_root_is_unavailable_and_empty_root_is_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("no-such-proc");
        assert!(matches!(
            scan(&missing, "/dev"),
            Err(CollectError::Unavailable(_))
        ));
        let empty = scan(dir.path(), "/dev").expect("an empty tree is no error");
        assert_eq!(empty, FdScan::default());
    }

    #[test]
    fn stops_when_abandoned() {
        let tree = proc_tree(&[("100", 3, "/dev/nvidia0")]);
        let result = scan_fd_tables(tree.path(), Path::new("/dev"), &AtomicBool::new(true));
        assert!(result.is_err());
    }

    #[test]
    fn sees_a_real_process_holding_a_node() {
        // A regular file stands for the device node: only the link target counts.
        let dev = tempfile::tempdir().expect("tempdir");
        let node = dev.path().join("nvidia7");
        std::fs::write(&node, b"").expect("write");
        let held = std::fs::File::open(&node).expect("open");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(held)
            .spawn()
            .expect("spawn sleep");
        // Link targets are canonical paths.
        let dev_dir = dev.path().canonicalize().expect("canonicalize");
        let node = dev_dir.join("nvidia7");
        let result = scan_fd_tables(Path::new("/proc"), &dev_dir, &AtomicBool::new(false));
        let _ = child.kill();
        let _ = child.wait();
        let scan = result.expect("scan /proc");
        let expected = node.to_string_lossy();
        assert!(
            scan.gpu_processes
                .iter()
                .any(|g| g.pid == child.id() && g.gpu_uuid == expected),
            "{:?}",
            scan.gpu_processes
        );
        assert!(scan.processes > 1 && scan.fds > 1);
    }

    fn parse(text: &str) -> Result<Config, detect_workloads_api::config::ConfigError> {
        Config::parse("test.toml", text, &[])
    }

    #[test]
    fn config_defaults_and_errors() {
        let Ok(config) = parse("[[collectors.device-files]]\n") else {
            panic!("the default config is valid");
        };
        assert_eq!(config.collectors[0].name, "device-files");
        assert_eq!(
            config.collectors[0].plugin.timeout(),
            Duration::from_secs(5)
        );
        let defaults = DeviceFilesConfig::default();
        assert_eq!(defaults.root, Path::new("/proc"));
        assert_eq!(defaults.dev_dir, Path::new("/dev"));
        assert!(defaults.only_unlisted);
        let Ok(every) = parse("[[collectors.device-files]]\nonly_unlisted = false\n") else {
            panic!("only_unlisted = false is valid");
        };
        assert!(every.collectors[0].plugin.needs().is_empty());

        let error = |text: &str| match parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        };
        let e = error("[[collectors.device-files]]\nroot = \"/proc\"\nbogus = 1\n");
        assert!(e.starts_with("test.toml:3:") && e.contains("bogus"), "{e}");
        let e = error("[[collectors.device-files]]\n\ndev_dir = \"dev\"\n");
        assert!(
            e.starts_with("test.toml:3:") && e.contains("dev_dir"),
            "{e}"
        );
        let e = error("[[collectors.device-files]]\ntimeout = \"soon\"\n");
        assert!(e.starts_with("test.toml:2:") && e.contains("soon"), "{e}");
        let e = error("[[collectors.device-files]]\ntimeout = \"0s\"\n");
        assert!(
            e.contains("key `timeout`: invalid duration \"0s\": a duration is a positive number"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn collect_reports_gpu_processes_and_stats() {
        let tree = proc_tree(&[
            ("200", 3, "/dev/nvidia0"),
            ("200", 4, "/dev/nvidiactl"),
            ("201", 3, "/dev/null"),
        ]);
        let collector = DeviceFiles::new(DeviceFilesConfig {
            root: tree.path().to_path_buf(),
            ..DeviceFilesConfig::default()
        });
        assert_eq!(collector.provides(), &[FactKind::GpuProcesses]);
        let (previous, observed, users) = (
            Previous::known(Inventory::default()),
            Observations::default(),
            UserNames::new(),
        );
        let ctx = CollectContext {
            previous: &previous,
            observed: &observed,
            users: &users,
            head_start: None,
        };
        let collected = collector.collect(&ctx).await.expect("collect");
        assert_eq!(collected.observations.gpu_processes.len(), 1);
        assert_eq!(collected.observations.gpu_processes[0].pid, 200);
        assert!(collected.observations.processes.is_empty());
        assert_eq!(collected.stats.get("processes"), Some(&2));
        assert_eq!(collected.stats.get("fds"), Some(&3));
        assert_eq!(collected.stats.get("gpu_processes"), Some(&1));
        assert_eq!(collector.needs(), &[FactKind::GpuProcesses]);

        // A process NVML listed this cycle is left to NVML...
        let nvml_saw = Observations {
            gpu_processes: vec![GpuProcess {
                pid: 200,
                used_memory_mib: Some(1030),
                gpu_uuid: "GPU-56c0b0b8".to_string(),
                ..GpuProcess::default()
            }],
            ..Observations::default()
        };
        let after_nvml = CollectContext {
            observed: &nvml_saw,
            ..ctx
        };
        let collected = collector.collect(&after_nvml).await.expect("collect");
        assert!(collected.observations.gpu_processes.is_empty());
        assert_eq!(collected.stats.get("listed_elsewhere"), Some(&1));
        // ... unless asked to report every holder.
        let every = DeviceFiles::new(DeviceFilesConfig {
            root: tree.path().to_path_buf(),
            only_unlisted: false,
            ..DeviceFilesConfig::default()
        });
        assert!(every.needs().is_empty());
        let collected = every.collect(&after_nvml).await.expect("collect");
        assert_eq!(collected.observations.gpu_processes.len(), 1);

        let gone = DeviceFiles::new(DeviceFilesConfig {
            root: tree.path().join("absent"),
            ..DeviceFilesConfig::default()
        });
        assert!(matches!(
            gone.collect(&ctx).await,
            Err(CollectError::Unavailable(_))
        ));
    }
}
