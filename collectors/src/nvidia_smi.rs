//! Collector `nvidia-smi`: the GPU processes as `nvidia-smi
//! --query-compute-apps=pid,used_memory,gpu_uuid --format=csv,noheader,nounits`
//! lists them. The fallback for `nvml` (`fallback_for = "nvml"`).
//!
//! Needs: the `nvidia-smi` command, at an absolute path or found in the fixed
//! system path [`SYSTEM_PATH`] (never the caller's `PATH`). It runs in its own
//! process group, which is killed whole when it runs over its timeout, writes
//! more than [`OUTPUT_CAP`], or the scan abandons it, so a hung `nvidia-smi`
//! leaves nothing behind.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};

use detect_workloads_api::async_trait;
use detect_workloads_api::config::{duration, ConfigError, PluginConfig};
use detect_workloads_api::model::{FactKind, GpuDevice, GpuProcess, Observations};
use detect_workloads_api::plugin::{
    CollectContext, CollectError, Collected, Collector, CollectorPlugin,
};
use serde::Deserialize;
use tracing::debug;

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample nvidia-smi`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[collectors.nvidia-smi]]
command = "nvidia-smi"            # absolute, or found in /usr/bin:/bin:/usr/sbin:/sbin (never $PATH)
timeout = "5s"
fallback_for = "nvml"           # runs only when the nvml collector failed this cycle
"#;

/// `[[collectors.nvidia-smi]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NvidiaSmiConfig {
    /// The command: an absolute path, or a bare name looked up in
    /// [`SYSTEM_PATH`] (the caller's `PATH` is never used).
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

/// The query of each GPU's utilisation (issue 21), parsed by
/// [`parse_gpu_utilization`]; the collector does not run it yet.
pub const UTILIZATION_QUERY_ARGS: [&str; 2] = [
    "--query-gpu=uuid,utilization.gpu",
    "--format=csv,noheader,nounits",
];

/// Where a bare command name is looked up: fixed, never the caller's `PATH`.
pub const SYSTEM_PATH: &str = "/usr/bin:/bin:/usr/sbin:/sbin";

/// The most output (on standard output or standard error) read from one run;
/// more is a failure and the command is killed.
pub const OUTPUT_CAP: u64 = 8 * 1024 * 1024;

/// The program `command` names: itself when it is a path, else the first
/// executable file of that name in [`SYSTEM_PATH`].
pub fn resolve(command: &str) -> Option<PathBuf> {
    if command.contains('/') {
        return Some(PathBuf::from(command));
    }
    SYSTEM_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(command))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Reads all of `stream`, failing when it holds more than `cap` bytes.
async fn read_capped<R: AsyncRead + Unpin>(stream: Option<R>, cap: u64) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    if let Some(stream) = stream {
        stream
            .take(cap + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| format!("reading its output: {e}"))?;
    }
    if bytes.len() as u64 > cap {
        return Err(format!("it wrote more than {} MiB", cap / (1024 * 1024)));
    }
    Ok(bytes)
}

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

/// Parses the CSV of [`UTILIZATION_QUERY_ARGS`]: `gpu_uuid, percent` per
/// line, as the percent of time a kernel ran on each GPU over the driver's
/// last sample period. A percent that is not a whole number from 0 to 100
/// (`[N/A]`, as a MIG-enabled GPU says; `[Not Supported]`; anything else) is
/// unknown. Empty output is no GPU; a line that is not two fields with a
/// UUID, or a UUID listed twice, is an error.
pub fn parse_gpu_utilization(text: &str) -> Result<BTreeMap<String, Option<u8>>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [uuid, percent] = fields.as_slice() else {
            return Err(format!(
                "line {}: expected 2 fields, got {:?}",
                n + 1,
                clip(line)
            ));
        };
        if uuid.is_empty() {
            return Err(format!("line {}: empty GPU UUID", n + 1));
        }
        let percent = percent.parse::<u8>().ok().filter(|p| *p <= 100);
        if out.insert(uuid.to_string(), percent).is_some() {
            return Err(format!("line {}: GPU {:?} listed twice", n + 1, clip(uuid)));
        }
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
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

/// Runs `program` with `args` in a process group of its own (killed with
/// it when the collector is abandoned) and returns its standard output.
async fn run_query(program: &Path, args: &[&str]) -> Result<String, CollectError> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| {
        let what = format!("cannot run {}: {e}", program.display());
        if e.kind() == std::io::ErrorKind::NotFound
            || e.kind() == std::io::ErrorKind::PermissionDenied
        {
            CollectError::Unavailable(what)
        } else {
            CollectError::Failed(what)
        }
    })?;
    let _group = GroupGuard(child.id().and_then(|id| i32::try_from(id).ok()));
    let (stdout, stderr) = tokio::try_join!(
        read_capped(child.stdout.take(), OUTPUT_CAP),
        read_capped(child.stderr.take(), OUTPUT_CAP),
    )
    .map_err(|e| CollectError::Failed(format!("{}: {e}", program.display())))?;
    let status = child
        .wait()
        .await
        .map_err(|e| CollectError::Failed(format!("waiting for {}: {e}", program.display())))?;
    let output = std::process::Output {
        status,
        stdout,
        stderr,
    };
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
            program.display(),
            output.status,
            clip(said.trim())
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[async_trait]
impl Collector for NvidiaSmi {
    fn provides(&self) -> &'static [FactKind] {
        &[FactKind::GpuProcesses]
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    fn describe(&self) -> String {
        format!(
            "command {}, timeout {}",
            self.config.command,
            detect_workloads_api::config::human_duration(self.config.timeout)
        )
    }

    fn fallback_for(&self) -> Option<&str> {
        self.config.fallback_for.as_deref()
    }

    async fn collect(&self, _ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        let name = &self.config.command;
        let program = resolve(name).ok_or_else(|| {
            CollectError::Unavailable(format!("{name:?} not found in {SYSTEM_PATH}"))
        })?;
        let text = run_query(&program, &QUERY_ARGS).await?;
        // The GPUs' utilisation, for workloads alone on a GPU (no per-process
        // samples here): a second query, whose failure costs only that.
        let gpus = match run_query(&program, &UTILIZATION_QUERY_ARGS).await {
            Ok(out) => match parse_gpu_utilization(&out) {
                Ok(util) => util
                    .into_iter()
                    .map(|(uuid, pct)| GpuDevice {
                        uuid,
                        utilization_pct: pct.map(u32::from),
                        ..GpuDevice::default()
                    })
                    .collect(),
                Err(e) => {
                    debug!("GPU utilisation unreadable: {e}");
                    Vec::new()
                }
            },
            Err(e) => {
                debug!("GPU utilisation not read: {e}");
                Vec::new()
            }
        };
        let gpu_processes = parse_compute_apps(&text).map_err(|e| {
            CollectError::Failed(format!("unreadable output from {}: {e}", program.display()))
        })?;
        Ok(Collected {
            observations: Observations {
                gpu_processes,
                gpus,
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
    if parsed.command.contains('/') && !Path::new(&parsed.command).is_absolute() {
        return Err(config.invalid(
            "command",
            format!(
                "{:?} is a relative path; give an absolute path, or a bare name found in {SYSTEM_PATH}",
                parsed.command
            ),
        ));
    }
    Ok(Box::new(NvidiaSmi { config: parsed }))
}

detect_workloads_api::inventory::submit! {
    CollectorPlugin {
        name: "nvidia-smi",
        summary: "GPU processes from `nvidia-smi --query-compute-apps` (fallback for nvml)",
        sample: SAMPLE,
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

    #[test]
    fn parses_gpu_utilization() {
        // The capture's GPU as its `nvidia-smi -q -x` has it (gpu_util 0 %),
        // a busy one, and one of each unknown percent.
        let text = format!(
            "{}, 0\nGPU-b, 100\nGPU-c, 37\nGPU-mig, [N/A]\nGPU-old, [Not Supported]\n",
            capture_uuid()
        );
        let parsed = parse_gpu_utilization(&text).expect("parses");
        let expected: BTreeMap<String, Option<u8>> = [
            (capture_uuid(), Some(0)),
            ("GPU-b".to_string(), Some(100)),
            ("GPU-c".to_string(), Some(37)),
            ("GPU-mig".to_string(), None),
            ("GPU-old".to_string(), None),
        ]
        .into_iter()
        .collect();
        assert_eq!(parsed, expected);
        assert!(fixture("nvidia-smi-q.xml").contains("<gpu_util>0 %</gpu_util>"));
        assert!(fixture("nvidia-smi-q.xml").contains(&capture_uuid()));
        // Not a whole percent from 0 to 100: unknown.
        for bad in [
            "101", "255", "256", "-1", "12.5", "50 %", "lots", "", "\u{0}",
        ] {
            let parsed = parse_gpu_utilization(&format!("GPU-x, {bad}\n")).expect("parses");
            assert_eq!(parsed.get("GPU-x"), Some(&None), "{bad:?}");
        }
        // No GPU; blank lines and CRLF.
        assert!(parse_gpu_utilization("").expect("empty").is_empty());
        assert_eq!(
            parse_gpu_utilization("\r\nGPU-x, 5\r\n\n").expect("parses"),
            [("GPU-x".to_string(), Some(5))].into_iter().collect()
        );
    }

    #[test]
    fn malformed_gpu_utilization_is_an_error() {
        for bad in [
            // What the scripted nvidia-smi of the end-to-end tests prints
            // in its `garbage` mode.
            "garbage \u{1}\u{2} not csv\n",
            "No devices were found\n",
            "GPU-x\n",
            "GPU-x, 5, 6\n",
            ", 5\n",
            "GPU-x, 5\nGPU-x, 6\n",
        ] {
            assert!(parse_gpu_utilization(bad).is_err(), "{bad:?}");
        }
        // The compute-apps output is not this query's.
        assert!(parse_gpu_utilization(&fixture("query-compute-apps.csv")).is_err());
    }

    fn capture_uuid() -> String {
        "GPU-56c0b0b8-eb5c-605d-11d6-1bac317b478c".to_string()
    }

    #[test]
    fn bare_names_are_found_only_in_the_system_path() {
        let found = resolve("sh").expect("sh is in /usr/bin or /bin");
        assert!(found.is_absolute());
        assert!(SYSTEM_PATH
            .split(':')
            .any(|d| found.parent() == Some(Path::new(d))));
        assert_eq!(
            resolve("/opt/x/nvidia-smi"),
            Some(PathBuf::from("/opt/x/nvidia-smi"))
        );
        assert_eq!(resolve("dw-no-such-command-anywhere"), None);
    }

    #[tokio::test]
    async fn output_over_the_cap_is_a_failure() {
        let (tx, rx) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            let mut tx = tx;
            let chunk = vec![b'x'; 4096];
            for _ in 0..20 {
                if tokio::io::AsyncWriteExt::write_all(&mut tx, &chunk)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let err = read_capped(Some(rx), 40_000)
            .await
            .expect_err("over the cap");
        assert!(err.contains("more than"), "{err}");
        let _ = writer.await;
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        tokio::io::AsyncWriteExt::write_all(&mut tx, b"1, 2, GPU-x\n")
            .await
            .expect("write");
        drop(tx);
        assert_eq!(
            read_capped(Some(rx), 40_000).await.expect("fits"),
            b"1, 2, GPU-x\n"
        );
    }
}
