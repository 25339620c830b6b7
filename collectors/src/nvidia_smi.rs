//! Collector `nvidia-smi`: the GPU processes as `nvidia-smi
//! --query-compute-apps=pid,used_memory,gpu_uuid --format=csv,noheader,nounits`
//! lists them. The fallback for `nvml` (`fallback_for = "nvml"`).
//!
//! Needs: the `nvidia-smi` command. It runs in its own process group, which is
//! killed whole when it runs over its timeout or the scan abandons it, so a hung
//! `nvidia-smi` leaves nothing behind.

use std::process::Stdio;
use std::time::Duration;

use detect_workloads_core::async_trait;
use detect_workloads_core::config::{duration, ConfigError, PluginConfig};
use detect_workloads_core::model::{FactKind, GpuProcess, Observations};
use detect_workloads_core::plugin::{
    CollectContext, CollectError, Collected, Collector, CollectorPlugin,
};
use nix::sys::signal::Signal;
use serde::Deserialize;

/// `[[collectors.nvidia-smi]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NvidiaSmiConfig {
    /// The command (a name looked up on `PATH`, or a path).
    pub command: String,
    /// Time allowed for one run.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Run only in a cycle where this collector type failed.
    pub fallback_for: Option<String>,
}

impl Default for NvidiaSmiConfig {
    fn default() -> Self {
        Self {
            command: "nvidia-smi".to_string(),
            timeout: Duration::from_secs(5),
            fallback_for: None,
        }
    }
}

/// The query it runs.
pub const QUERY_ARGS: [&str; 2] = [
    "--query-compute-apps=pid,used_memory,gpu_uuid",
    "--format=csv,noheader,nounits",
];

/// The `nvidia-smi` collector.
#[derive(Debug)]
pub struct NvidiaSmi {
    config: NvidiaSmiConfig,
}

/// Parses the CSV of [`QUERY_ARGS`]: `pid, used_memory_mib, gpu_uuid` per line.
/// Empty output is no processes; `[N/A]`-style memory is unknown; anything
/// else that is not three fields with a numeric PID is an error.
pub fn parse_compute_apps(text: &str) -> Result<Vec<GpuProcess>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with("No running") {
            // Older drivers print this instead of nothing.
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [pid, memory, uuid] = fields.as_slice() else {
            return Err(format!(
                "line {}: expected 3 fields, got {:?}",
                n + 1,
                clip(line)
            ));
        };
        let pid: u32 = pid
            .parse()
            .map_err(|_| format!("line {}: bad pid {:?}", n + 1, clip(pid)))?;
        let used_memory_mib = match memory.parse::<u64>() {
            Ok(mib) => Some(mib),
            Err(_) if memory.starts_with('[') || memory.eq_ignore_ascii_case("N/A") => None,
            Err(_) => return Err(format!("line {}: bad memory {:?}", n + 1, clip(memory))),
        };
        if uuid.is_empty() {
            return Err(format!("line {}: empty GPU UUID", n + 1));
        }
        out.push(GpuProcess {
            pid,
            used_memory_mib,
            gpu_uuid: uuid.to_string(),
            ..Default::default()
        });
    }
    Ok(out)
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Kills a process group when dropped: the run finished, failed, or was abandoned.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // ESRCH (the group is already gone) is fine.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

#[async_trait]
impl Collector for NvidiaSmi {
    fn provides(&self) -> &'static [FactKind] {
        &[FactKind::GpuProcesses]
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    fn fallback_for(&self) -> Option<&str> {
        self.config.fallback_for.as_deref()
    }

    async fn collect(&self, _ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        let mut command = tokio::process::Command::new(&self.config.command);
        command
            .args(QUERY_ARGS)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn().map_err(|e| {
            let what = format!("cannot run {:?}: {e}", self.config.command);
            if e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::PermissionDenied
            {
                CollectError::Unavailable(what)
            } else {
                CollectError::Failed(what)
            }
        })?;
        let _group = GroupGuard(child.id().and_then(|id| i32::try_from(id).ok()));
        let output = child.wait_with_output().await.map_err(|e| {
            CollectError::Failed(format!("waiting for {:?}: {e}", self.config.command))
        })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stdout = String::from_utf8_lossy(&output.stdout);
            let said = if stderr.trim().is_empty() {
                stdout
            } else {
                stderr
            };
            return Err(CollectError::Failed(format!(
                "{} exited with {}: {}",
                self.config.command,
                output.status,
                clip(said.trim())
            )));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let gpu_processes = parse_compute_apps(&text).map_err(|e| {
            CollectError::Failed(format!(
                "unreadable output from {}: {e}",
                self.config.command
            ))
        })?;
        Ok(Collected {
            observations: Observations {
                gpu_processes,
                ..Default::default()
            },
            ..Default::default()
        })
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Collector>, ConfigError> {
    let parsed: NvidiaSmiConfig = config.parse()?;
    if parsed.command.trim().is_empty() {
        return Err(config.invalid("command", "must not be empty"));
    }
    Ok(Box::new(NvidiaSmi { config: parsed }))
}

detect_workloads_core::inventory::submit! {
    CollectorPlugin {
        name: "nvidia-smi",
        summary: "GPU processes from `nvidia-smi --query-compute-apps` (fallback for nvml)",
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/gpu/h100-driver-580"
    );

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{name}")).expect("fixture present")
    }

    #[test]
    fn parses_the_real_h100_capture() {
        let apps = parse_compute_apps(&fixture("query-compute-apps.csv")).expect("parses");
        assert_eq!(
            apps,
            vec![
                GpuProcess {
                    pid: 441,
                    used_memory_mib: Some(1542),
                    gpu_uuid: "GPU-56c0b0b8-eb5c-605d-11d6-1bac317b478c".into(),
                    ..Default::default()
                },
                GpuProcess {
                    pid: 447,
                    used_memory_mib: Some(1030),
                    gpu_uuid: "GPU-56c0b0b8-eb5c-605d-11d6-1bac317b478c".into(),
                    ..Default::default()
                },
            ]
        );
        assert!(parse_compute_apps(&fixture("query-compute-apps-empty.csv"))
            .expect("empty is fine")
            .is_empty());
    }

    #[test]
    fn unknown_memory_is_kept_as_unknown() {
        let apps =
            parse_compute_apps("12, [N/A], GPU-a\n13, [Not Supported], GPU-b\n").expect("parses");
        assert_eq!(apps.len(), 2);
        assert!(apps.iter().all(|a| a.used_memory_mib.is_none()));
    }

    #[test]
    fn malformed_output_is_an_error() {
        // The header variant has units and five fields: not what was asked for.
        assert!(parse_compute_apps(&fixture("query-compute-apps-header.csv")).is_err());
        assert!(parse_compute_apps(&fixture("nvidia-smi.txt")).is_err());
        for bad in [
            "abc, 1, GPU-x",
            "1, 2",
            "1, lots, GPU-x",
            "1, 2, ",
            "-1, 2, GPU-x",
            "\u{0}\u{1}",
        ] {
            assert!(parse_compute_apps(bad).is_err(), "{bad:?}");
        }
    }
}
