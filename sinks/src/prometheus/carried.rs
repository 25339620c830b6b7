//! What the metrics carry from one run to the next: the running totals of
//! `ds01_workload_events_total` and of the GPU-seconds of each user
//! (`ds01_workload_user_gpu_seconds_{held,idle}_total`), which must stay
//! monotonic, and the last success time of each collector (which must
//! survive a cycle in which it fails).
//!
//! The GPU-seconds are accumulated, not recomputed: each delivery adds, per
//! user, what each running workload's `usage` grew by since the previous
//! delivery (`workload_usage` remembers it, for the running workloads that
//! hold or held a GPU). So a workload that exits keeps its seconds in its
//! user's total; one whose usage goes back (a state started afresh, a PID
//! reused) adds nothing and counts on from its new value; one that changes
//! user adds its growth to its new user. The totals of a user are kept while
//! the state is (a user with none of them running keeps a flat counter).
//!
//! A long-lived process keeps them in memory. A oneshot run has no memory, so
//! with a `textfile_dir` they are kept in a small JSON state beside the
//! textfile, [`STATE_FILE`] (mode 0600, written atomically with the same
//! directory checks as every file sink; node_exporter reads only `*.prom`).
//! Our own exposition is never parsed back. A missing or unreadable state is
//! a counter reset, which Prometheus's `rate()` and `increase()` handle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use detect_workloads_api::model::{Event, Inventory, Usage};
use serde::{Deserialize, Serialize};

use crate::fsafe::{read_own_file, write_atomic};

/// The state file's name in `textfile_dir`.
pub const STATE_FILE: &str = ".detect_workloads.state.json";

/// The largest state file read back (a few numbers per collector, event
/// type, user and GPU workload).
const MAX_STATE_BYTES: u64 = 1 << 20;

/// The carried values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Carried {
    /// Running totals of `ds01_workload_events_total`, by event type.
    pub events_total: BTreeMap<String, u64>,
    /// When each collector last succeeded, seconds since the epoch.
    pub last_success: BTreeMap<String, f64>,
    /// Running totals of the GPU-seconds held and held idle by each user's
    /// workloads, exited ones included.
    pub gpu_seconds: BTreeMap<String, Usage>,
    /// The `usage` of each running workload that holds or held a GPU, as
    /// the previous delivery saw it ([`workload_key`]): what its growth is
    /// measured from.
    pub workload_usage: BTreeMap<String, Usage>,
}

/// The key of a workload in [`Carried::workload_usage`]: `container:<short
/// id>`, or `process:<pid>:<start time>` (a reused PID is another process;
/// the start time is empty when unknown).
pub fn workload_key(kind: WorkloadKind, id: &str, start_time: Option<u64>) -> String {
    match kind {
        WorkloadKind::Container => format!("container:{id}"),
        WorkloadKind::HostProcess => {
            let start = start_time.map(|t| t.to_string()).unwrap_or_default();
            format!("process:{id}:{start}")
        }
    }
}

/// What a workload is, for [`workload_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// A container.
    Container,
    /// A confirmed host GPU process.
    HostProcess,
}

/// How much `now` grew over `before`: nothing when it went back (or is not
/// a number).
fn growth(now: f64, before: f64) -> f64 {
    let d = now - before;
    if d.is_finite() && d > 0.0 {
        d
    } else {
        0.0
    }
}

impl Carried {
    /// Adds this cycle: its events to the totals, its workloads' GPU-seconds
    /// to their users' totals (see the module), and the scan's start as the
    /// last success of every collector that ran and succeeded. A failed or
    /// skipped collector keeps its earlier time; one no longer configured is
    /// forgotten.
    pub fn advance(&mut self, inventory: &Inventory, events: &[Event]) {
        for event in events {
            let name = event.event_type.as_str().to_string();
            *self.events_total.entry(name).or_default() += 1;
        }
        self.add_usage(inventory);
        let Some(scan) = &inventory.scan else {
            return;
        };
        self.last_success
            .retain(|name, _| scan.collectors.contains_key(name));
        let started = scan.started_at.unix_seconds();
        for (name, report) in &scan.collectors {
            if report.ok && report.skipped.is_none() {
                self.last_success.insert(name.clone(), started as f64);
            }
        }
    }
}

impl Carried {
    /// Adds to each user's GPU-seconds what the usage of their running
    /// workloads grew by since the previous delivery, and remembers that
    /// usage for the next. A user gets a total (at 0) as soon as one of
    /// their workloads holds GPU memory, so that `increase()` sees its first
    /// seconds too. Workloads gone from the inventory are forgotten: their
    /// seconds stay in the totals.
    fn add_usage(&mut self, inventory: &Inventory) {
        let containers = inventory.containers.values().map(|c| {
            (
                workload_key(WorkloadKind::Container, &c.id, None),
                &c.user,
                &c.usage,
                !c.gpu_processes.is_empty(),
            )
        });
        let processes = inventory.host_processes.values().map(|p| {
            (
                workload_key(WorkloadKind::HostProcess, &p.pid.to_string(), p.start_time),
                &p.user,
                &p.usage,
                true,
            )
        });
        let mut seen = BTreeMap::new();
        for (key, user, usage, holds_gpu) in containers.chain(processes) {
            if !holds_gpu && usage.is_zero() {
                continue;
            }
            let before = self.workload_usage.get(&key).cloned().unwrap_or_default();
            let total = self.gpu_seconds.entry(user.clone()).or_default();
            total.gpu_seconds_held += growth(usage.gpu_seconds_held, before.gpu_seconds_held);
            total.gpu_seconds_idle += growth(usage.gpu_seconds_idle, before.gpu_seconds_idle);
            seen.insert(key, usage.clone());
        }
        self.workload_usage = seen;
    }
}

/// Where the carried values of a `textfile_dir` live.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join(STATE_FILE),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the carried values: the default when there is no file yet, an
    /// error (the caller logs it and restarts the counters) when it cannot be
    /// read, is not this process's user's, or is not a state.
    pub fn load(&self) -> Result<Carried, String> {
        let Some(bytes) = read_own_file(&self.path, MAX_STATE_BYTES)? else {
            return Ok(Carried::default());
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not a metrics state: {e}", self.path.display()))
    }

    /// Replaces the file with `carried`.
    pub fn store(&self, carried: &Carried) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(carried)
            .map_err(|e| format!("cannot encode the metrics state: {e}"))?;
        write_atomic(&self.path, &bytes, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detect_workloads_api::model::{CollectorReport, EventType, ScanReport};
    use detect_workloads_api::timefmt::Timestamp;
    use std::os::unix::fs::PermissionsExt;

    fn report(ok: bool) -> CollectorReport {
        CollectorReport {
            ok,
            ..Default::default()
        }
    }

    fn inventory(started_at: &str, collectors: &[(&str, CollectorReport)]) -> Inventory {
        Inventory {
            scan: Some(ScanReport {
                started_at: started_at.parse().expect("time"),
                duration_ms: 1,
                collectors: collectors
                    .iter()
                    .map(|(n, r)| (n.to_string(), r.clone()))
                    .collect(),
            }),
            ..Default::default()
        }
    }

    fn event(event_type: EventType) -> Event {
        Event {
            timestamp: Timestamp::UNIX_EPOCH,
            event_type,
            user: String::new(),
            details: serde_json::Value::Null,
            event_id: String::new(),
        }
    }

    #[test]
    fn totals_and_times_survive_a_round_trip_through_the_state_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateFile::in_dir(dir.path());
        assert_eq!(state.load().expect("missing"), Carried::default());
        let inv = inventory("2026-01-01T00:00:10Z", &[("docker", report(true))]);
        let mut carried = Carried::default();
        carried.advance(
            &inv,
            &[
                event(EventType::ContainerDiscovered),
                event(EventType::ContainerDiscovered),
            ],
        );
        state.store(&carried).expect("store");
        let mode = std::fs::metadata(state.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600);
        let mut again = state.load().expect("load");
        assert_eq!(again, carried);
        again.advance(&inv, &[event(EventType::ContainerDiscovered)]);
        assert_eq!(again.events_total["detection.container_discovered"], 3);
        assert_eq!(again.last_success["docker"], 1767225610.0);
    }

    #[test]
    fn a_state_that_is_not_ours_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateFile::in_dir(dir.path());
        std::fs::write(state.path(), "ds01_workload_events_total 5\n").expect("write");
        let err = state.load().expect_err("garbage");
        assert!(err.contains("not a metrics state"), "{err}");
        std::fs::remove_file(state.path()).expect("rm");
        std::os::unix::fs::symlink("/etc/passwd", state.path()).expect("symlink");
        let err = state.load().expect_err("link");
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn last_success_is_kept_through_failures_and_forgotten_with_the_collector() {
        let mut carried = Carried::default();
        let ok = [("docker", report(true)), ("nvidia-smi", report(false))];
        carried.advance(&inventory("2026-01-01T00:00:10Z", &ok), &[]);
        assert_eq!(carried.last_success.get("docker"), Some(&1767225610.0));
        assert_eq!(carried.last_success.get("nvidia-smi"), None);
        let mut skipped = report(true);
        skipped.skipped = Some("nvml succeeded".to_string());
        let failed = [("docker", report(false)), ("nvidia-smi", skipped)];
        carried.advance(&inventory("2026-01-01T00:01:10Z", &failed), &[]);
        assert_eq!(carried.last_success.get("docker"), Some(&1767225610.0));
        assert_eq!(carried.last_success.get("nvidia-smi"), None);
        carried.advance(&inventory("2026-01-01T00:02:10Z", &[]), &[]);
        assert!(carried.last_success.is_empty(), "{carried:?}");
    }
}
