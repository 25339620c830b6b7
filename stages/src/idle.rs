//! Stage `idle`: decides which running workloads (containers and confirmed
//! host GPU processes) are idle, from the `activity` the engine measured.
//!
//! A workload is idle when each of its known signals is below its threshold:
//! CPU cores, network bytes per second (containers in a network namespace of
//! their own) and, when it holds GPU memory, GPU utilisation. One that holds
//! GPU memory with an unknown GPU signal is never idle (shown as GPU activity
//! unknown), unless every GPU it is on is itself below `gpu_util_below` (then
//! no one on it computes). A workload with no known signal yet (its first
//! reading) keeps what was decided before. A new workload is not judged
//! before `grace` has passed since it started.
//!
//! `activity.idle_since` is the start of the first idle interval of the
//! current idle spell (the previous reading); one active reading clears it.
//! `activity.idle` becomes true once the spell has lasted `idle_after`: the
//! engine then tells `detection.workload_idle`, once, and
//! `detection.workload_active` when the workload is active again. Both live
//! in the state, so restarts and watch mode's GPU polls do not tell them
//! again. Idle GPU time is added to `usage.gpu_seconds_idle`.

use std::time::Duration;

use serde::Deserialize;

use detect_workloads_api::config::{duration, ConfigError, PluginConfig};
use detect_workloads_api::model::{Activity, GpuDevice, InspectFacts, Inventory, Usage};
use detect_workloads_api::plugin::{Stage, StageContext, StageError, StagePlugin, Workset};
use detect_workloads_api::timefmt::Timestamp;

/// The stage's type name.
pub const NAME: &str = "idle";

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample idle`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[stages.idle]]
gpu_util_below = 5              # percent: GPU utilisation of its processes (or of a GPU it is alone on)
cpu_cores_below = 0.05          # average cores used
net_bytes_per_s_below = 10240   # bytes received and sent per second (containers with a network of their own)
idle_after = "30m"              # idle this long: detection.workload_idle (once)
grace = "10m"                   # a workload is not judged until it has run this long
"#;

/// `[[stages.idle]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdleConfig {
    /// GPU utilisation (percent) below which a GPU signal is idle.
    pub gpu_util_below: f64,
    /// Cores below which the CPU signal is idle.
    pub cpu_cores_below: f64,
    /// Bytes per second below which the network signal is idle.
    pub net_bytes_per_s_below: f64,
    /// How long a workload must be idle to be reported idle.
    #[serde(deserialize_with = "duration")]
    pub idle_after: Duration,
    /// How long a new workload runs before it is judged.
    #[serde(deserialize_with = "duration")]
    pub grace: Duration,
}

impl Default for IdleConfig {
    fn default() -> Self {
        Self {
            gpu_util_below: 5.0,
            cpu_cores_below: 0.05,
            net_bytes_per_s_below: 10240.0,
            idle_after: Duration::from_secs(30 * 60),
            grace: Duration::from_secs(10 * 60),
        }
    }
}

/// The `idle` stage.
#[derive(Debug)]
pub struct Idle {
    config: IdleConfig,
}

/// What one reading says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// No signal known: nothing to decide.
    Unknown,
    /// A known signal at or above its threshold, or GPU memory held with an
    /// unknown GPU signal.
    Active,
    /// Every known signal below its threshold.
    Idle,
}

/// One workload, as the stage judges it.
struct Workload<'a> {
    activity: &'a mut Activity,
    usage: &'a mut Usage,
    /// When it started, if known.
    started: Option<Timestamp>,
    /// The GPUs on which it holds memory (empty: none).
    gpus: Vec<String>,
}

impl Idle {
    /// The GPU signal: its own, else that of GPUs all below the threshold.
    fn gpu_signal(
        &self,
        activity: &Activity,
        gpus: &[String],
        devices: &std::collections::BTreeMap<String, GpuDevice>,
    ) -> Option<f64> {
        if let Some(u) = activity.gpu_util_percent {
            return Some(u);
        }
        let mut highest: Option<f64> = None;
        for uuid in gpus {
            let util = f64::from(devices.get(uuid)?.utilization_pct?);
            if util >= self.config.gpu_util_below {
                return None;
            }
            highest = Some(highest.map_or(util, |h: f64| h.max(util)));
        }
        highest
    }

    fn reading(&self, activity: &Activity, gpu: Option<f64>, holds_gpu: bool) -> Reading {
        let below = |value: Option<f64>, threshold: f64| value.map(|v| v < threshold);
        let signals = [
            below(activity.cpu_cores, self.config.cpu_cores_below),
            below(activity.net_bytes_per_s, self.config.net_bytes_per_s_below),
            if holds_gpu {
                Some(gpu.is_some_and(|g| g < self.config.gpu_util_below))
            } else {
                None
            },
        ];
        // GPU memory held with the GPU signal unknown: active, whatever
        // else is known (the rates may not be known yet).
        if holds_gpu && gpu.is_none() {
            return Reading::Active;
        }
        if signals.contains(&Some(false)) {
            Reading::Active
        } else if signals.iter().any(Option::is_some) {
            Reading::Idle
        } else {
            Reading::Unknown
        }
    }

    fn judge(
        &self,
        w: Workload<'_>,
        now: Timestamp,
        devices: &std::collections::BTreeMap<String, GpuDevice>,
    ) {
        let grace = i64::try_from(self.config.grace.as_secs()).unwrap_or(i64::MAX);
        if w.started.is_some_and(|s| now.seconds_since(s) < grace) {
            w.activity.idle_since = None;
            w.activity.idle = false;
            return;
        }
        let gpu = self.gpu_signal(w.activity, &w.gpus, devices);
        match self.reading(w.activity, gpu, !w.gpus.is_empty()) {
            Reading::Unknown => {}
            Reading::Active => {
                w.activity.idle_since = None;
                w.activity.idle = false;
            }
            Reading::Idle => {
                let sampled = w.activity.sampled_s.unwrap_or(0.0);
                let since = w
                    .activity
                    .idle_since
                    .unwrap_or_else(|| now.plus_seconds(-(sampled.round() as i64)));
                w.activity.idle_since = Some(since);
                let after = i64::try_from(self.config.idle_after.as_secs()).unwrap_or(i64::MAX);
                w.activity.idle = w.activity.idle || now.seconds_since(since) >= after;
                w.usage.gpu_seconds_idle += w.gpus.len() as f64 * sampled;
            }
        }
    }
}

impl Stage for Idle {
    fn run(&self, _work: &mut Workset, _ctx: &StageContext<'_>) -> Result<(), StageError> {
        Ok(())
    }

    fn review(&self, inventory: &mut Inventory, _ctx: &StageContext<'_>) -> Result<(), StageError> {
        let now = inventory
            .last_scan
            .ok_or_else(|| StageError::new("the scan has no start time"))?;
        let devices = std::mem::take(&mut inventory.gpus);
        for c in inventory.containers.values_mut() {
            let Some(activity) = c.activity.as_mut() else {
                continue;
            };
            // The engine's own text (see `InspectFacts::started_at`), read
            // here, its one use in the stage.
            let started = c
                .inspect
                .as_ref()
                .and_then(InspectFacts::started)
                .or(Some(c.detected_at));
            let gpus = if c.gpu_processes.is_empty() {
                Vec::new()
            } else {
                c.gpu_uuids.clone()
            };
            let w = Workload {
                activity,
                usage: &mut c.usage,
                started,
                gpus,
            };
            self.judge(w, now, &devices);
        }
        for p in inventory.host_processes.values_mut() {
            let gpus = p.gpus().into_iter().map(str::to_string).collect();
            let Some(activity) = p.activity.as_mut() else {
                continue;
            };
            let w = Workload {
                activity,
                usage: &mut p.usage,
                started: Some(p.detected_at),
                gpus,
            };
            self.judge(w, now, &devices);
        }
        inventory.gpus = devices;
        Ok(())
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Stage>, ConfigError> {
    let parsed: IdleConfig = config.parse()?;
    for (key, value) in [
        ("gpu_util_below", parsed.gpu_util_below),
        ("cpu_cores_below", parsed.cpu_cores_below),
        ("net_bytes_per_s_below", parsed.net_bytes_per_s_below),
    ] {
        if !value.is_finite() || value < 0.0 {
            return Err(config.invalid(key, "must be a number of at least 0"));
        }
    }
    Ok(Box::new(Idle { config: parsed }))
}

detect_workloads_api::inventory::submit! {
    StagePlugin {
        name: NAME,
        summary: "decides which running workloads are idle (CPU, network and GPU activity below thresholds) and since when",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detect_workloads_api::model::{ContainerEntry, ContainerGpuProcess, InspectFacts};

    const T0: i64 = 1_800_000_000;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix_seconds(secs)
    }

    fn stage() -> Idle {
        Idle {
            config: IdleConfig::default(),
        }
    }

    fn container(cpu: Option<f64>, gpu: Option<f64>, holds: bool) -> ContainerEntry {
        ContainerEntry {
            status: "running".into(),
            detected_at: at(T0 - 3600),
            inspect: Some(InspectFacts {
                started_at: at(T0 - 3600).to_string(),
                ..Default::default()
            }),
            gpu_processes: if holds {
                vec![ContainerGpuProcess {
                    gpu_uuid: "GPU-1".into(),
                    ..Default::default()
                }]
            } else {
                Vec::new()
            },
            gpu_uuids: if holds {
                vec!["GPU-1".into()]
            } else {
                Vec::new()
            },
            activity: Some(Activity {
                cpu_cores: cpu,
                net_bytes_per_s: Some(0.0),
                gpu_util_percent: gpu,
                sampled_s: Some(60.0),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn review_at(inventory: &mut Inventory, now: i64) {
        inventory.last_scan = Some(at(now));
        let previous = Inventory::default();
        let observations = Default::default();
        let users = detect_workloads_api::users::UserNames::new();
        let ctx = StageContext {
            previous: &previous,
            observations: &observations,
            users: &users,
        };
        stage().review(inventory, &ctx).expect("reviews");
    }

    fn activity(inventory: &Inventory, id: &str) -> Activity {
        inventory.containers[id].activity.clone().expect("activity")
    }

    #[test]
    fn idle_since_starts_at_the_first_idle_interval_and_idle_comes_after_idle_after() {
        let mut inv = Inventory::default();
        inv.containers
            .insert("a".into(), container(Some(0.01), Some(0.0), true));
        review_at(&mut inv, T0);
        let a = activity(&inv, "a");
        assert_eq!(a.idle_since, Some(at(T0 - 60)));
        assert!(!a.idle);
        assert_eq!(inv.containers["a"].usage.gpu_seconds_idle, 60.0);
        // 30 minutes later, still idle: reported idle, idle_since kept.
        review_at(&mut inv, T0 + 29 * 60);
        assert!(
            activity(&inv, "a").idle,
            "idle since {:?}",
            activity(&inv, "a").idle_since
        );
        assert_eq!(activity(&inv, "a").idle_since, Some(at(T0 - 60)));
        // One active reading resets it.
        if let Some(a) = inv
            .containers
            .get_mut("a")
            .and_then(|c| c.activity.as_mut())
        {
            a.gpu_util_percent = Some(80.0);
        }
        review_at(&mut inv, T0 + 30 * 60);
        let a = activity(&inv, "a");
        assert_eq!((a.idle_since, a.idle), (None, false));
    }

    #[test]
    fn any_busy_signal_or_an_unknown_gpu_signal_is_active_and_no_signal_decides_nothing() {
        let mut inv = Inventory::default();
        inv.containers
            .insert("cpu".into(), container(Some(0.9), Some(0.0), true));
        inv.containers
            .insert("gpu-unknown".into(), container(Some(0.0), None, true));
        inv.containers
            .insert("no-gpu".into(), container(Some(0.0), None, false));
        let mut first = container(None, None, false);
        if let Some(a) = first.activity.as_mut() {
            a.net_bytes_per_s = None;
            a.sampled_s = None;
            a.idle_since = Some(at(T0 - 7200));
            a.idle = true;
        }
        inv.containers.insert("first".into(), first);
        review_at(&mut inv, T0);
        assert_eq!(activity(&inv, "cpu").idle_since, None);
        assert_eq!(activity(&inv, "gpu-unknown").idle_since, None);
        assert!(
            activity(&inv, "no-gpu").idle_since.is_some(),
            "CPU and network idle"
        );
        let first = activity(&inv, "first");
        assert_eq!(
            (first.idle_since, first.idle),
            (Some(at(T0 - 7200)), true),
            "kept"
        );
    }

    #[test]
    fn a_shared_gpu_below_the_threshold_counts_as_idle_and_a_new_workload_waits() {
        let mut inv = Inventory::default();
        inv.containers
            .insert("shared".into(), container(Some(0.0), None, true));
        inv.gpus.insert(
            "GPU-1".into(),
            GpuDevice {
                uuid: "GPU-1".into(),
                utilization_pct: Some(2),
                ..Default::default()
            },
        );
        let mut young = container(Some(0.0), Some(0.0), true);
        young.inspect = Some(InspectFacts {
            started_at: at(T0 - 60).to_string(),
            ..Default::default()
        });
        inv.containers.insert("young".into(), young);
        review_at(&mut inv, T0);
        assert!(activity(&inv, "shared").idle_since.is_some());
        assert_eq!(activity(&inv, "young").idle_since, None, "in its grace");
        if let Some(g) = inv.gpus.get_mut("GPU-1") {
            g.utilization_pct = Some(50);
        }
        review_at(&mut inv, T0 + 60);
        assert_eq!(
            activity(&inv, "shared").idle_since,
            None,
            "someone computes"
        );
    }
}
