//! Collector `procfs`: attributes the GPU processes the other collectors found
//! from `/proc`: real uid and its user
//! name (NSS, once per uid per scan), command line, start time, and whether the
//! process's cgroup is a container's (docker, containerd, libpod, kubepods;
//! cgroup v1 and v2). Reads only those PIDs, each file once, while the
//! container engine is still answering (it does not wait for it). A PID that is gone
//! is skipped quietly.
//!
//! Needs: read access to `/proc/<pid>/{stat,status,cmdline,cgroup}` (root to see
//! other users' command lines under `hidepid`). `root` can point elsewhere for tests.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use detect_workloads_core::async_trait;
use detect_workloads_core::config::{ConfigError, PluginConfig};
use detect_workloads_core::model::{FactKind, Observations, ProcessFacts};
use detect_workloads_core::plugin::{
    CollectContext, CollectError, Collected, Collector, CollectorPlugin,
};
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

/// `/proc/<pid>/stat`: the command name (field 2) and the start time in clock
/// ticks since boot (field 22). The name may hold spaces and parentheses, so
/// the fields after it are found from the last `)`.
pub fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    // After ") ": field 3 (state) is index 0, so field 22 is index 19.
    let start = text
        .get(close + 1..)?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    Some((comm, start))
}

/// `/proc/<pid>/status`: the real uid (first number of the `Uid:` line), by
/// the model's rule ([`ProcessFacts::uid_from_status`]).
pub fn parse_status_uid(text: &str) -> Option<u32> {
    ProcessFacts::uid_from_status(text)
}

/// `/proc/<pid>/cmdline`: NUL separators become spaces, bytes are decoded as
/// UTF-8 with replacement, the trailing NUL is dropped.
pub fn cmdline_text(bytes: &[u8]) -> String {
    let trimmed = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    String::from_utf8_lossy(trimmed).replace('\0', " ")
}

/// What a cgroup file says about containment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupInfo {
    /// The process runs in a container's cgroup.
    pub in_container: bool,
    /// The 64-hex container id in the path, when there is one.
    pub container_id: Option<String>,
}

const RUNTIME_MARKERS: [&str; 4] = ["docker", "containerd", "libpod", "kubepods"];

/// `/proc/<pid>/cgroup` (v1: many `id:controllers:path` lines; v2: `0::path`).
/// A path is a container's when it names a container runtime and carries a
/// 64-hex id (`/docker/<id>`, `/system.slice/docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `libpod-<id>.scope`), or lies under `kubepods`.
pub fn parse_cgroup(text: &str) -> CgroupInfo {
    for line in text.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        if !RUNTIME_MARKERS.iter().any(|m| path.contains(m)) {
            continue;
        }
        let id = path.split('/').rev().find_map(hex_id);
        if id.is_some() || path.contains("kubepods") {
            return CgroupInfo {
                in_container: true,
                container_id: id,
            };
        }
    }
    CgroupInfo::default()
}

/// The 64-hex id inside one path segment (`docker-<id>.scope`, `<id>`).
fn hex_id(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    (0..bytes.len().saturating_sub(63)).find_map(|i| {
        let window = segment.get(i..i + 64)?;
        let hex = window
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let bounded = bytes.get(i + 64).is_none_or(|b| !b.is_ascii_hexdigit());
        (hex && bounded).then(|| window.to_string())
    })
}

/// Reads one file of a process; `Ok(None)` when the process is gone.
fn read_proc_file(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, std::io::Error> {
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => Ok(Some(bytes)),
        // ESRCH shows up when the process exits while being read.
        Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The raw facts of one process (user name not yet resolved); `None` when it is
/// gone or its files are unreadable or malformed.
pub fn read_process(root: &Path, pid: u32) -> Option<(ProcessFacts, CgroupInfo)> {
    let dir = root.join(pid.to_string());
    let read = |name: &str| match read_proc_file(&dir, name) {
        Ok(Some(bytes)) => Some(bytes),
        Ok(None) => None,
        Err(e) => {
            debug!(pid, file = name, "cannot read: {e}");
            None
        }
    };
    let stat = read("stat")?;
    let (comm, start_time) = parse_stat(&String::from_utf8_lossy(&stat))?;
    let uid = parse_status_uid(&String::from_utf8_lossy(&read("status")?))?;
    let cmdline_bytes = read("cmdline").unwrap_or_default();
    let cgroup = read("cgroup")
        .map(|b| parse_cgroup(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();
    let mut cmdline = cmdline_text(&cmdline_bytes);
    if cmdline.is_empty() {
        cmdline = format!("[{comm}]");
    }
    Some((
        ProcessFacts {
            pid,
            uid,
            user: String::new(),
            cmdline,
            comm,
            start_time,
            in_container: cgroup.in_container,
            container_id: cgroup.container_id.clone(),
        },
        cgroup,
    ))
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
        &[FactKind::GpuProcesses]
    }

    async fn collect(&self, ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        let root = &self.config.root;
        if let Err(e) = std::fs::read_dir(root) {
            return Err(CollectError::Unavailable(format!(
                "cannot read {}: {e}",
                root.display()
            )));
        }
        let mut processes = BTreeMap::new();
        for pid in ctx.observed.gpu_pids() {
            match read_process(root, pid) {
                Some((mut facts, _)) => {
                    facts.user = ctx.users.name(facts.uid);
                    processes.insert(pid, facts);
                }
                None => debug!(pid, "gone from /proc; skipped"),
            }
        }
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
        summary: "owner, command line, start time and container cgroup of each GPU process",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn stat_with_odd_names() {
        let tail = "S 1 1 1 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(
            parse_stat(&format!("447 (python3) {tail}")),
            Some(("python3".into(), 987654))
        );
        assert_eq!(
            parse_stat(&format!("9 (a) b (c)) {tail}")),
            Some(("a) b (c)".into(), 987654))
        );
        assert_eq!(parse_stat("447 (python3) S 1 2"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn status_uid_is_the_real_one() {
        let status = "Name:\tpython3\nUid:\t1001\t0\t0\t0\nGid:\t1001\t1001\t1001\t1001\n";
        assert_eq!(parse_status_uid(status), Some(1001));
        assert_eq!(parse_status_uid("Name: x\n"), None);
        assert_eq!(parse_status_uid("Uid:\tabc\n"), None);
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

    #[test]
    fn cgroup_layouts() {
        let v2_host = "0::/user.slice/user-1001.slice/session-3.scope\n";
        assert_eq!(parse_cgroup(v2_host), CgroupInfo::default());
        let v2_docker_systemd = format!("0::/system.slice/docker-{ID}.scope\n");
        let v2_docker_cgroupfs = format!("0::/docker/{ID}\n");
        let v1 = format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n0::/\n");
        let cri =
            format!("0::/kubepods.slice/kubepods-besteffort.slice/cri-containerd-{ID}.scope\n");
        let podman = format!("0::/machine.slice/libpod-{ID}.scope/container\n");
        for text in [v2_docker_systemd, v2_docker_cgroupfs, v1, cri, podman] {
            let info = parse_cgroup(&text);
            assert!(info.in_container, "{text}");
            assert_eq!(info.container_id.as_deref(), Some(ID), "{text}");
        }
        // The daemons themselves are not containers.
        assert!(!parse_cgroup("0::/system.slice/docker.service\n").in_container);
        assert!(!parse_cgroup("0::/system.slice/containerd.service\n").in_container);
        assert!(parse_cgroup("0::/kubepods/burstable/podabc\n").in_container);
        assert_eq!(parse_cgroup("garbage"), CgroupInfo::default());
    }

    #[test]
    fn crafted_tree_skips_vanished_pids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("447");
        std::fs::create_dir(&p).expect("mkdir");
        std::fs::write(
            p.join("stat"),
            "447 (python3) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 555 0 0",
        )
        .expect("w");
        std::fs::write(p.join("status"), "Uid:\t0\t0\t0\t0\n").expect("w");
        std::fs::write(p.join("cmdline"), b"python3\0-c\0x\0").expect("w");
        std::fs::write(p.join("cgroup"), "0::/\n").expect("w");
        let (facts, _) = read_process(dir.path(), 447).expect("read");
        assert_eq!(
            (facts.uid, facts.start_time, facts.cmdline.as_str()),
            (0, 555, "python3 -c x")
        );
        assert!(read_process(dir.path(), 448).is_none());
    }
}
