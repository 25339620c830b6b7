//! One scan cycle: load the previous state, run the collectors (concurrently,
//! each as soon as what it needs is collected, each under its own timeout),
//! run the stages in dependency order, assemble the inventory (carrying over
//! what failed collectors own), diff it against the previous one, and hand
//! both to the sinks (the state first, the events only once it is written).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tracing::{debug, error, info, warn};

use crate::config::{Config, Instance};
use crate::diff::transitions;
use crate::model::{
    CollectorReport, ContainerEntry, Event, FactKind, Inventory, Observations, ProcessEntry,
    ScanReport,
};
use crate::plugin::{
    CollectContext, CollectError, Collected, Collector, ContainerDraft, Previous, ProcessDraft,
    ScanOutput, Stage, StageContext, StateStore, Verdict, Workset,
};
use crate::timefmt::rfc3339;
use crate::users::UserNames;

/// Why a cycle could not complete (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// Another scan holds the lock.
    #[error("{0}")]
    Locked(String),
    /// The previous state could not be read.
    #[error("cannot read the previous inventory: {0}")]
    State(String),
    /// A required sink (the inventory file) failed.
    #[error("{0}")]
    Sink(String),
}

/// The result of a completed cycle.
#[derive(Debug)]
pub struct ScanResult {
    /// The new inventory.
    pub inventory: Inventory,
    /// The transitions emitted.
    pub events: Vec<Event>,
    /// Sinks that failed without failing the run.
    pub sink_warnings: Vec<String>,
}

struct CollectorRun {
    reports: BTreeMap<String, CollectorReport>,
    observed: Observations,
    /// Instance names of container providers that failed this cycle.
    failed_container_sources: BTreeSet<String>,
    /// Whether the GPU process list is trustworthy this cycle.
    gpu_known: bool,
}

/// Runs one cycle with this configuration on `runtime`. The previous state
/// is read on its own thread while the collectors start, so that a large
/// inventory is parsed while the engine is still answering.
pub fn run_cycle(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
) -> Result<ScanResult, ScanError> {
    let started = SystemTime::now();
    let clock = Instant::now();
    let sinks = config.delivery_sinks();
    let store: Option<&dyn StateStore> = config
        .sinks
        .iter()
        .chain(sinks.iter())
        .find_map(|s| s.plugin.state_store());
    let writes = sinks
        .iter()
        .any(|s| s.plugin.state_store().is_some() || s.plugin.emits_events());

    // Held until the end of the cycle; the state is read only under it.
    let _lock = match (store, writes) {
        (Some(store), true) => Some(
            store
                .lock(config.agent.lock_timeout)
                .map_err(ScanError::Locked)?,
        ),
        _ => None,
    };
    std::thread::scope(|scope| {
        let previous = match store {
            Some(store) => start_loading(scope, store, clock),
            None => Previous::known(Inventory::default()),
        };
        runtime.block_on(cycle(config, &previous, started, clock))
    })
}

/// Reads the previous state on a thread of `scope`; where no thread can be
/// had, reads it now.
fn start_loading<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    store: &'scope dyn StateStore,
    clock: Instant,
) -> Previous {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let load = move || {
        let result = store.load();
        debug!(elapsed_ms = ms(clock), "previous state loaded");
        // The cycle may have ended (a panic); nobody is left to tell.
        let _ = tx.send(result);
    };
    match std::thread::Builder::new()
        .name("state-load".to_string())
        .spawn_scoped(scope, load)
    {
        Ok(_) => Previous::arriving(rx),
        Err(e) => {
            debug!("no thread to read the state on ({e}); reading it first");
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = tx.send(store.load());
            Previous::arriving(rx)
        }
    }
}

async fn cycle(
    config: &Config,
    previous: &Previous,
    started: SystemTime,
    clock: Instant,
) -> Result<ScanResult, ScanError> {
    let now = rfc3339(started);
    let sinks = config.delivery_sinks();
    let users = UserNames::new();
    let budget = config.agent.scan_timeout;
    let deadline = clock
        .checked_add(budget.saturating_sub((budget / 5).min(Duration::from_secs(2))))
        // A scan_timeout too long to add to the clock is no deadline at all.
        .unwrap_or_else(|| clock + Duration::from_secs(100 * 365 * 24 * 3600));
    let mut run = run_collectors(&config.collectors, previous, &users, deadline).await;
    let previous = previous.result().await.map_err(ScanError::State)?;

    debug!(elapsed_ms = ms(clock), "collectors done");
    let mut work = build_workset(&mut run.observed, previous, &now);
    let ctx = StageContext {
        previous,
        observations: &run.observed,
        users: &users,
    };
    for stage in order_stages(&config.stages) {
        if let Err(e) = stage.plugin.run(&mut work, &ctx) {
            warn!(stage = %stage.name, "stage failed, its work is skipped this cycle: {e}");
        }
    }

    debug!(elapsed_ms = ms(clock), "stages done");
    let mut inventory = assemble(previous, work, &run, &config.collectors);
    inventory.last_scan = now.clone();
    inventory.scan = Some(ScanReport {
        started_at: now.clone(),
        duration_ms: clock.elapsed().as_millis() as u64,
        collectors: run.reports,
    });
    let events = transitions(previous, &inventory, &now);

    let mut sink_warnings = Vec::new();
    let out = ScanOutput {
        inventory: &inventory,
        events: &events,
        agent: &config.agent,
    };
    // The state first: events describe the step from the previous state to
    // this one, so they go out only once that step is committed. If the state
    // cannot be written, the next scan computes the same transitions again
    // from the unchanged previous state: nothing is lost, nothing doubled.
    let (state_sinks, other_sinks): (Vec<_>, Vec<_>) =
        sinks.iter().partition(|s| s.plugin.state_store().is_some());
    let mut fatal = None;
    for sink in state_sinks.into_iter().chain(other_sinks) {
        if fatal.is_some() && sink.plugin.emits_events() {
            warn!(sink = %sink.name, "not delivered: the state was not written; the next scan reports these transitions");
            continue;
        }
        if let Err(e) = sink.plugin.deliver(&out).await {
            if sink.plugin.required() {
                error!(sink = %sink.name, "{e}");
                fatal.get_or_insert(format!("sink {}: {e}", sink.name));
            } else {
                warn!(sink = %sink.name, "{e}");
                sink_warnings.push(format!("sink {}: {e}", sink.name));
            }
        }
    }
    if let Some(message) = fatal {
        return Err(ScanError::Sink(message));
    }
    debug!(elapsed_ms = ms(clock), "sinks done");
    let with_gpu = inventory.containers.values().filter(|c| c.has_gpu).count();
    info!(
        "Scan complete: {} containers ({} with GPU), {} host GPU processes ({} pending)",
        inventory.containers.len(),
        with_gpu,
        inventory.host_processes.len(),
        inventory.pending_processes.len()
    );
    Ok(ScanResult {
        inventory,
        events,
        sink_warnings,
    })
}

/// Runs the collectors concurrently: each starts as soon as every collector
/// that provides what it needs (and the one it is a fallback for) has
/// finished, and sees only the facts it needs.
async fn run_collectors(
    collectors: &[Instance<dyn Collector>],
    previous: &Previous,
    users: &UserNames,
    deadline: Instant,
) -> CollectorRun {
    let mut observed = Observations::default();
    let mut reports: BTreeMap<String, CollectorReport> = BTreeMap::new();
    let mut outcome: BTreeMap<&str, bool> = BTreeMap::new();
    let mut started = vec![false; collectors.len()];
    let mut running = FuturesUnordered::new();

    // Whether collector `i` must wait for collector `j`.
    let depends = |i: usize, j: usize| {
        let (c, o) = (&collectors[i], &collectors[j]);
        i != j
            && o.kind != c.kind
            && (o
                .plugin
                .provides()
                .iter()
                .any(|k| c.plugin.needs().contains(k))
                || c.plugin.fallback_for() == Some(o.kind))
    };

    loop {
        let finished = |j: usize, outcome: &BTreeMap<&str, bool>| {
            outcome.contains_key(collectors[j].name.as_str())
        };
        let mut ready: Vec<usize> = (0..collectors.len())
            .filter(|&i| !started[i])
            .filter(|&i| (0..collectors.len()).all(|j| !depends(i, j) || finished(j, &outcome)))
            .collect();
        if ready.is_empty() && running.is_empty() {
            match started.iter().position(|s| !s) {
                // A dependency cycle: break it at the first collector left.
                Some(first) => ready.push(first),
                None => break,
            }
        }
        for i in ready {
            started[i] = true;
            let c = &collectors[i];
            if let Some(primary) = c.plugin.fallback_for() {
                let primaries: Vec<bool> = collectors
                    .iter()
                    .filter(|o| o.kind == primary)
                    .map(|o| outcome.get(o.name.as_str()).copied().unwrap_or(false))
                    .collect();
                if !primaries.is_empty() && primaries.iter().all(|ok| *ok) {
                    debug!(collector = %c.name, "skipped: {primary} succeeded");
                    outcome.insert(&c.name, true);
                    reports.insert(
                        c.name.clone(),
                        CollectorReport {
                            ok: true,
                            skipped: Some(format!("{primary} succeeded")),
                            ..Default::default()
                        },
                    );
                    continue;
                }
            }
            let view = observed.only(c.plugin.needs());
            running.push(async move {
                let ctx = CollectContext {
                    previous,
                    observed: &view,
                    users,
                };
                (i, run_one(c, &ctx, deadline).await)
            });
        }
        // A skipped fallback may have unblocked others: look again first.
        if running.is_empty() {
            continue;
        }
        let Some((i, (result, elapsed))) = running.next().await else {
            continue;
        };
        let c = &collectors[i];
        let duration_ms = elapsed.as_millis() as u64;
        let report = match result {
            Ok(Collected {
                mut observations,
                stats,
            }) => {
                for container in &mut observations.containers {
                    container.collector = c.name.clone();
                }
                debug!(collector = %c.name, duration_ms, "collected");
                observed.merge(observations);
                CollectorReport {
                    ok: true,
                    duration_ms,
                    stats,
                    ..Default::default()
                }
            }
            Err(e) => {
                warn!(collector = %c.name, "collector failed, keeping what it reported last: {e}");
                CollectorReport {
                    ok: false,
                    duration_ms,
                    error: Some(e.to_string()),
                    ..Default::default()
                }
            }
        };
        outcome.insert(&c.name, report.ok);
        reports.insert(c.name.clone(), report);
    }

    let failed =
        |c: &Instance<dyn Collector>| !outcome.get(c.name.as_str()).copied().unwrap_or(false);
    let provides = |c: &Instance<dyn Collector>, k: FactKind| c.plugin.provides().contains(&k);
    let failed_container_sources = collectors
        .iter()
        .filter(|c| provides(c, FactKind::Containers) && failed(c))
        .map(|c| c.name.clone())
        .collect();
    // A failed GPU source is covered when a fallback for it succeeded.
    let covered = |c: &Instance<dyn Collector>| {
        collectors.iter().any(|o| {
            o.plugin.fallback_for() == Some(c.kind)
                && reports
                    .get(&o.name)
                    .is_some_and(|r| r.ok && r.skipped.is_none())
        })
    };
    let gpu_known = collectors
        .iter()
        .filter(|c| provides(c, FactKind::GpuProcesses))
        .all(|c| !failed(c) || covered(c))
        && !collectors
            .iter()
            .any(|c| provides(c, FactKind::Processes) && failed(c));
    CollectorRun {
        reports,
        observed,
        failed_container_sources,
        gpu_known,
    }
}

/// Milliseconds since `start`, for the phase timings logged at debug level.
fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

async fn run_one(
    c: &Instance<dyn Collector>,
    ctx: &CollectContext<'_>,
    deadline: Instant,
) -> (Result<Collected, CollectError>, Duration) {
    let start = Instant::now();
    let limit = c
        .plugin
        .timeout()
        .min(deadline.saturating_duration_since(start));
    let result = match tokio::time::timeout(limit, c.plugin.collect(ctx)).await {
        Ok(result) => result,
        Err(_) => Err(CollectError::TimedOut(limit)),
    };
    (result, start.elapsed())
}

/// The stages in an order where each runs after those it names in `after`
/// (file order otherwise).
pub(crate) fn order_stages(stages: &[Instance<dyn Stage>]) -> Vec<&Instance<dyn Stage>> {
    let mut left: Vec<&Instance<dyn Stage>> = stages.iter().collect();
    let mut ordered = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let pos = left
            .iter()
            .position(|s| {
                !s.plugin
                    .after()
                    .iter()
                    .any(|dep| left.iter().any(|o| o.kind == *dep))
            })
            .unwrap_or(0);
        ordered.push(left.remove(pos));
    }
    ordered
}

/// The container id key: the first 12 hex digits.
pub fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

/// The drafts the stages work on. The containers' facts move into their
/// drafts (they are large: labels, inspect facts); the rest stays observed.
fn build_workset(observed: &mut Observations, previous: &Inventory, now: &str) -> Workset {
    let containers = std::mem::take(&mut observed.containers)
        .into_iter()
        .map(|facts| {
            let id = short_id(&facts.id);
            let detected_at = previous
                .containers
                .get(&id)
                .map(|e| e.detected_at.clone())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| now.to_string());
            ContainerDraft {
                entry: ContainerEntry {
                    id,
                    name: facts.name.clone(),
                    origin: String::new(),
                    user: String::new(),
                    user_source: Default::default(),
                    has_gpu: facts.has_gpu(),
                    gpu_devices: Vec::new(),
                    status: facts.state.clone(),
                    image: facts.image.clone(),
                    detected_at,
                    // Moved in from the facts when the inventory is assembled.
                    collector: String::new(),
                    inspect: None,
                    ..ContainerEntry::default()
                },
                facts,
            }
        })
        .collect();

    let mut by_pid: BTreeMap<u32, Vec<&crate::model::GpuProcess>> = BTreeMap::new();
    for g in &observed.gpu_processes {
        by_pid.entry(g.pid).or_default().push(g);
    }
    let mut processes = Vec::new();
    for (pid, gpus) in by_pid {
        let Some(facts) = observed.processes.get(&pid) else {
            debug!(
                pid,
                "GPU process gone from /proc before it could be read; skipped"
            );
            continue;
        };
        if facts.in_container {
            debug!(pid, container = ?facts.container_id, "GPU process inside a container; not a host process");
            continue;
        }
        let key = pid.to_string();
        let same = |e: &&ProcessEntry| e.start_time.is_none_or(|t| t == facts.start_time);
        let confirmed = previous.host_processes.get(&key).filter(same);
        let seen_before = confirmed.or_else(|| previous.pending_processes.get(&key).filter(same));
        let first = gpus[0];
        let known: Vec<u64> = gpus.iter().filter_map(|g| g.used_memory_mib).collect();
        let mut uuids: Vec<String> = Vec::new();
        for g in &gpus {
            if !uuids.contains(&g.gpu_uuid) {
                uuids.push(g.gpu_uuid.clone());
            }
        }
        let entry = ProcessEntry {
            pid,
            user: facts.user.clone(),
            cmdline: facts.cmdline.clone(),
            gpu_memory_mb: (!known.is_empty()).then(|| known.iter().sum()),
            gpu_uuid: first.gpu_uuid.clone(),
            detected_at: seen_before
                .map(|e| e.detected_at.clone())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| now.to_string()),
            gpu_uuids: if uuids.len() > 1 { uuids } else { Vec::new() },
            mig_uuid: first.mig_uuid.clone(),
            gpu_instance_id: first.gpu_instance_id,
            compute_instance_id: first.compute_instance_id,
            sm_util: gpus.iter().filter_map(|g| g.sm_util).max(),
            start_time: Some(facts.start_time),
            seen_scans: seen_before.map_or(0, |e| e.seen_scans).saturating_add(1),
        };
        processes.push(ProcessDraft {
            facts: facts.clone(),
            entry,
            confirmed_before: confirmed.is_some(),
            verdict: Verdict::Report,
        });
    }
    Workset {
        containers,
        processes,
    }
}

/// The new inventory: this cycle's entries, plus, for each collector that
/// failed, the entries it owned in the previous inventory, unchanged.
fn assemble(
    previous: &Inventory,
    work: Workset,
    run: &CollectorRun,
    collectors: &[Instance<dyn Collector>],
) -> Inventory {
    let mut inventory = Inventory::default();
    for draft in work.containers {
        let entry = ContainerEntry {
            collector: draft.facts.collector,
            inspect: draft.facts.inspect,
            ..draft.entry
        };
        inventory.containers.insert(entry.id.clone(), entry);
    }
    if !run.failed_container_sources.is_empty() {
        // Entries from before the source was recorded belong to the first one.
        let first_source = collectors
            .iter()
            .find(|c| c.plugin.provides().contains(&FactKind::Containers))
            .map(|c| c.name.as_str())
            .unwrap_or_default();
        for (id, entry) in &previous.containers {
            let source = if entry.collector.is_empty() {
                first_source
            } else {
                entry.collector.as_str()
            };
            if run.failed_container_sources.contains(source) {
                inventory
                    .containers
                    .entry(id.clone())
                    .or_insert_with(|| entry.clone());
            }
        }
    }
    if run.gpu_known {
        for draft in work.processes {
            let key = draft.entry.pid.to_string();
            match draft.verdict {
                Verdict::Report => {
                    inventory.host_processes.insert(key, draft.entry);
                }
                Verdict::Pending => {
                    inventory.pending_processes.insert(key, draft.entry);
                }
                Verdict::Drop(reason) => debug!(pid = draft.entry.pid, "not reported: {reason}"),
            }
        }
    } else {
        inventory.host_processes = previous.host_processes.clone();
        inventory.pending_processes = previous.pending_processes.clone();
    }
    inventory
}
