//! Watch mode in-process: 10 000 cycles (full scans and GPU polls) with
//! churning fake containers and GPU processes, through the real stages and
//! an in-memory state; nothing may grow with dead entries.

use detect_workloads_stages as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::schedule::{Job, Why};
use super::service::{Outcome, Service};
use crate::config::{Config, Instance};
use detect_workloads_api::model::{
    ContainerFacts, FactKind, GpuProcess, Inventory, Observations, ProcessFacts,
};
use detect_workloads_api::plugin::{
    CollectContext, CollectError, Collected, Collector, LockGuard, ScanOutput, Sink, SinkError,
    StateError, StateStore,
};

/// Live entries at any time; each cycle replaces one of each.
const LIVE: u64 = 8;

/// Containers and GPU processes that churn: at tick `n` the live ones are
/// `n..n+LIVE` (ids and PIDs never reused).
struct Churn {
    tick: Arc<AtomicU64>,
    kind: &'static [FactKind],
}

const CONTAINERS: &[FactKind] = &[FactKind::Containers];
const GPU_AND_PROCS: &[FactKind] = &[FactKind::GpuProcesses, FactKind::Processes];

#[async_trait]
impl Collector for Churn {
    fn provides(&self) -> &'static [FactKind] {
        self.kind
    }
    async fn collect(&self, _ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        let n = self.tick.load(Ordering::SeqCst);
        let mut observations = Observations::default();
        for i in n..n + LIVE {
            if self.kind == CONTAINERS {
                observations.containers.push(ContainerFacts {
                    id: format!("{i:064x}"),
                    name: format!("c{i}"),
                    state: "running".into(),
                    image: "img".into(),
                    ..Default::default()
                });
            } else {
                let pid = 100_000 + i as u32;
                observations.gpu_processes.push(GpuProcess {
                    pid,
                    used_memory_mib: Some(100),
                    gpu_uuid: "GPU-1".into(),
                    ..Default::default()
                });
                observations.processes.insert(
                    pid,
                    ProcessFacts {
                        pid,
                        uid: 1000,
                        user: "alice".into(),
                        cmdline: format!("python3 train.py --run {i}"),
                        comm: "python3".into(),
                        start_time: i,
                        ..Default::default()
                    },
                );
            }
        }
        Ok(Collected {
            observations,
            ..Default::default()
        })
    }
}

/// The state in memory; counts the events it was given.
#[derive(Default)]
struct MemoryState {
    inventory: Mutex<Option<Inventory>>,
    events: AtomicU64,
    delivered: Mutex<Option<String>>,
}

#[async_trait]
impl Sink for MemoryState {
    async fn deliver(&self, out: &ScanOutput<'_>) -> Result<(), SinkError> {
        self.events
            .fetch_add(out.events.len() as u64, Ordering::SeqCst);
        let mut state = self
            .inventory
            .lock()
            .map_err(|_| SinkError::new("poisoned"))?;
        *state = Some(out.inventory.clone());
        Ok(())
    }
    fn required(&self) -> bool {
        true
    }
    fn emits_events(&self) -> bool {
        true
    }
    fn state_store(&self) -> Option<&dyn StateStore> {
        Some(self)
    }
}

impl StateStore for MemoryState {
    fn load(&self) -> Result<Option<Inventory>, StateError> {
        self.inventory
            .lock()
            .map(|i| i.clone())
            .map_err(|_| StateError::Other("poisoned".into()))
    }
    fn lock(&self, _wait: Duration) -> Result<LockGuard, StateError> {
        Ok(Box::new(()))
    }
    fn delivered(&self) -> Option<String> {
        self.delivered.lock().ok().and_then(|d| d.clone())
    }
    fn set_delivered(&self, id: &str) -> Result<(), StateError> {
        if let Ok(mut d) = self.delivered.lock() {
            *d = Some(id.to_string());
        }
        Ok(())
    }
}

fn instance<T: ?Sized>(name: &str, plugin: Arc<T>) -> Instance<T> {
    Instance {
        name: name.to_string(),
        kind: "fake",
        plugin,
    }
}

fn churning_config(tick: &Arc<AtomicU64>, state: &Arc<MemoryState>) -> Config {
    let stages = "[[stages.classify]]\n[[stages.resolve-user]]\n[[stages.gpu-devices]]\n\
                  [[stages.exclude-system]]\n[[stages.transient-filter]]\n";
    let mut config = Config::parse("test", stages, &[]).expect("stages config");
    let churn = |kind| {
        Arc::new(Churn {
            tick: Arc::clone(tick),
            kind,
        })
    };
    config.collectors = vec![
        instance::<dyn Collector>("docker", churn(CONTAINERS)),
        instance::<dyn Collector>("gpu", churn(GPU_AND_PROCS)),
    ];
    config.sinks = vec![instance::<dyn Sink>(
        "state",
        state.clone() as Arc<dyn Sink>,
    )];
    config
}

/// (containers, host processes, pending processes, recorded containers).
fn sizes(state: &MemoryState, service: &Service) -> (usize, usize, usize, usize) {
    let inv = state.load().ok().flatten().unwrap_or_default();
    (
        inv.containers.len(),
        inv.host_processes.len(),
        inv.pending_processes.len(),
        service.replays().iter().map(|r| r.recorded()).sum(),
    )
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn ten_thousand_churning_cycles_leave_no_dead_entries_behind() {
    let tick = Arc::new(AtomicU64::new(0));
    let state = Arc::new(MemoryState::default());
    let service = Service::new(churning_config(&tick, &state));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let run = |n: u64| {
        for i in 0..n {
            tick.fetch_add(1, Ordering::SeqCst);
            // One full scan in four, as the timer and events would interleave them.
            let job = if i % 4 == 0 {
                Job::Full(Why::Timer)
            } else {
                Job::Gpu
            };
            assert!(
                !matches!(service.run(job, &runtime), Outcome::Failed),
                "cycle {i} failed"
            );
        }
    };
    run(100);
    let (baseline, rss_100) = (sizes(&state, &service), rss_kib());
    assert!(baseline.0 > 0 && baseline.1 > 0, "{baseline:?}");
    run(9_900);
    let (after, rss_10k) = (sizes(&state, &service), rss_kib());
    // The figures tests/bench/watch.sh and docs/watch.md quote (--nocapture).
    eprintln!(
        "VmRSS after 100 cycles: {rss_100} kB, after 10 000: {rss_10k} kB; map sizes {baseline:?} -> {after:?}"
    );
    assert_eq!(after, baseline, "map sizes back at the baseline");
    assert!(
        state.events.load(Ordering::SeqCst) > 10_000,
        "the churn was seen (discoveries and exits)"
    );
    // VmRSS is the whole test process's, other tests running beside this
    // one: a figure to read (tests/bench/watch.sh runs it alone), not a
    // bound to assert. The map sizes above are this test's bound.
    runtime.shutdown_background();
}

#[test]
fn a_gpu_poll_replays_the_last_containers_and_their_failure() {
    let tick = Arc::new(AtomicU64::new(0));
    let state = Arc::new(MemoryState::default());
    let service = Service::new(churning_config(&tick, &state));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let full = service
        .run(Job::Full(Why::Start), &runtime)
        .ran()
        .expect("full");
    tick.fetch_add(3, Ordering::SeqCst);
    let poll = service.run(Job::Gpu, &runtime).ran().expect("poll");
    // The containers are the full scan's (the engine was not asked again)...
    assert_eq!(
        full.inventory.containers.keys().collect::<Vec<_>>(),
        poll.inventory.containers.keys().collect::<Vec<_>>()
    );
    // ...while the GPU processes moved on.
    assert_ne!(
        full.inventory.pending_processes.keys().collect::<Vec<_>>(),
        poll.inventory.pending_processes.keys().collect::<Vec<_>>()
    );
}

#[test]
fn a_gpu_poll_with_nothing_new_and_nothing_pending_is_skipped() {
    let tick = Arc::new(AtomicU64::new(0));
    let state = Arc::new(MemoryState::default());
    let service = Service::new(churning_config(&tick, &state));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ran = |job| service.run(job, &runtime).ran().is_some();
    assert!(ran(Job::Full(Why::Start)));
    // The processes become confirmed over the polls; once nothing is pending
    // and the GPU lists the same, the poll runs no cycle.
    let mut skipped = false;
    for _ in 0..5 {
        skipped |= matches!(service.run(Job::Gpu, &runtime), Outcome::Unchanged);
    }
    assert!(skipped, "a still fleet's GPU poll was skipped");
    let written = state.load().ok().flatten().expect("written");
    assert!(written.pending_processes.is_empty(), "nothing pending");
    // A change in what the GPU lists brings the cycle back, and so does a full scan.
    tick.fetch_add(1, Ordering::SeqCst);
    assert!(ran(Job::Gpu), "the GPU's change ran a cycle");
    assert!(ran(Job::Full(Why::Timer)));
}
