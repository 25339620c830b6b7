//! One scan cycle, phase by phase. Read it top to bottom:
//!
//! 1. [`state`]: take the scan lock; start reading the previous inventory on
//!    a thread of its own (abandoned at the deadline).
//! 2. [`schedule`]: run the collectors, each once what it needs is known;
//!    one [`schedule::Outcome`] per collector instance.
//! 3. [`trust`]: from those outcomes, which container sources failed and
//!    whether the GPU view is complete (failure is not absence).
//! 4. [`workset`]: turn the observations into drafts (process identity,
//!    fields carried over from the previous inventory).
//! 5. [`stages`]: run the stages on the drafts, in dependency order.
//! 6. [`assemble`]: the new inventory, carrying over what failed sources
//!    owned, with GPU processes in containers [`attribute`]d to them; then
//!    each running workload's [`activity`], and the stages' `review` of the
//!    whole (the `idle` stage).
//! 7. [`crate::diff`]: the events from the previous inventory to the new one.
//! 8. [`outbox`]: name the events, and record them in the new state with
//!    those an earlier cycle still owes.
//! 9. [`deliver`]: hand both to the sinks, the state first; then record the
//!    outbox as delivered.

pub mod activity;
pub mod assemble;
pub mod attribute;
pub mod deliver;
pub mod health;
pub mod membership;
pub mod outbox;
pub mod schedule;
pub mod sliced;
pub mod stages;
pub mod state;
pub mod trust;
pub mod workset;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use crate::config::Config;
use crate::diff::transitions;
use detect_workloads_api::model::{Event, Inventory, ScanReport};
use detect_workloads_api::plugin::{Previous, ScanOutput, SinkError, StageContext, StateError};
use detect_workloads_api::timefmt::{round_ms, Timestamp};
use detect_workloads_api::users::UserNames;

/// Why a cycle could not complete (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The scan lock could not be taken (another scan holds it).
    #[error("{0}")]
    Locked(#[source] StateError),
    /// The previous state could not be read.
    #[error("cannot read the previous inventory: {0}")]
    State(#[source] Arc<StateError>),
    /// A required sink (the inventory file) failed.
    #[error("sink {sink}: {source}")]
    Sink {
        /// The sink instance.
        sink: String,
        /// Why.
        #[source]
        source: SinkError,
    },
}

/// The result of a completed cycle.
#[derive(Debug)]
pub struct ScanResult {
    /// The new inventory.
    pub inventory: Inventory,
    /// The transitions emitted.
    pub events: Vec<Event>,
}

/// When the cycle started, and when its collectors must be done.
pub struct Clock {
    /// The start, as written in the inventory and the events.
    pub now: Timestamp,
    /// The start, for durations.
    pub start: Instant,
    /// When the collectors (and the state read) are given up:
    /// `scan_timeout` less the [`reserve`] kept for stages and sinks.
    pub deadline: Instant,
}

/// The part of `scan_timeout` kept for the stages and the sinks to write
/// once the collectors are given up: a fifth of it, at most 2 s (stages take
/// milliseconds; the sinks write two files). The collectors get the rest, so
/// that the inventory is still written within `scan_timeout`.
pub fn reserve(scan_timeout: Duration) -> Duration {
    (scan_timeout / 5).min(Duration::from_secs(2))
}

impl Clock {
    /// Starts the clock of a cycle that must end within `scan_timeout`.
    pub fn start(scan_timeout: Duration) -> Clock {
        let start = Instant::now();
        let deadline = start
            .checked_add(scan_timeout.saturating_sub(reserve(scan_timeout)))
            // A scan_timeout too long to add to the clock is no deadline at all.
            .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 24 * 3600));
        Clock {
            now: Timestamp::now(),
            start,
            deadline,
        }
    }

    /// Milliseconds since the start, for the phase timings logged at debug level.
    fn ms(&self) -> f64 {
        round_ms(self.start.elapsed())
    }
}

/// Runs one cycle with this configuration on `runtime`. The previous state
/// is read on its own thread while the collectors start, so that a large
/// inventory is parsed while the engine is still answering.
pub fn run_cycle(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
) -> Result<ScanResult, ScanError> {
    let clock = Clock::start(config.agent.scan_timeout);
    // Held until the end of the cycle; the state is read only under it.
    let _lock = state::lock(config)?;
    let previous = state::start_loading(config, clock.deadline);
    let result = runtime.block_on(cycle(config, &previous, &clock));
    // Freeing a large previous inventory is no part of the scan: on a
    // thread of its own (here, if none can be started).
    let _ = std::thread::Builder::new()
        .name("state-free".into())
        .spawn(move || drop(previous));
    result
}

async fn cycle(
    config: &Config,
    previous: &Previous,
    clock: &Clock,
) -> Result<ScanResult, ScanError> {
    let users = UserNames::new();
    let collectors = schedule::run_collectors(&config.collectors, previous, &users, clock.deadline);
    let stages_told = async {
        if let Ok(previous) = previous.result().await {
            stages::head_start(&config.stages, previous);
        }
    };
    let (collection, ()) = futures_util::future::join(collectors, stages_told).await;
    let previous = previous.result().await.map_err(ScanError::State)?;
    debug!(elapsed_ms = clock.ms(), "collectors done");
    health::log(&collection.ran, previous);

    let trust = trust::Trust::of(&collection.ran);
    let mut observed = collection.observed;
    let mut work = workset::build(&mut observed, previous, clock.now);
    debug!(elapsed_ms = clock.ms(), "drafts built");
    let ctx = StageContext {
        previous,
        observations: &observed,
        users: &users,
    };
    stages::run(&config.stages, &mut work, &ctx);
    // Those that came and went between two scans pass the same stages: a
    // system container is left out, the others classified and attributed.
    let mut fleeting = workset::short_lived(&observed, previous, clock.now);
    stages::run(&config.stages, &mut fleeting, &ctx);
    let short_lived = workset::classified_short_lived(&observed.short_lived, fleeting);
    debug!(elapsed_ms = clock.ms(), "stages done");

    let mut inventory = assemble::inventory(previous, work, &observed.gpus, &trust, clock.now);
    inventory.last_scan = Some(clock.now);
    activity::measure(previous, &mut inventory, &observed.processes);
    stages::review(&config.stages, &mut inventory, &ctx);
    debug!(elapsed_ms = clock.ms(), "inventory assembled");
    inventory.scan = Some(ScanReport {
        started_at: clock.now,
        duration_ms: clock.start.elapsed().as_millis() as u64,
        collectors: trust::reports(&collection.ran),
    });
    let mut events = transitions(previous, &inventory, &short_lived, clock.now);
    inventory.told_gone = crate::diff::told_gone(previous, &events, clock.now);
    outbox::name(
        &mut events,
        &config.agent.source,
        previous.last_scan,
        clock.now,
    );
    // Only a cycle that writes the state keeps an outbox in it.
    let store = state::written_store(config);
    let owed = store.map_or_else(Vec::new, |s| outbox::owed(s, previous));
    if store.is_some() {
        inventory.outbox = outbox::seal(&owed, &events);
    }
    debug!(elapsed_ms = clock.ms(), "events named");
    let out = ScanOutput {
        inventory: &inventory,
        events: &events,
        owed: &owed,
        agent: &config.agent,
    };
    let delivered = deliver::to_sinks(config.delivery_sinks(), &out).await?;
    if let (Some(store), Some(sealed), true) = (store, &inventory.outbox, delivered) {
        outbox::mark_delivered(store, sealed);
    }
    debug!(elapsed_ms = clock.ms(), "sinks done");
    log_summary(&inventory, &collection.ran, &trust);
    Ok(ScanResult { inventory, events })
}

/// The scan's one INFO line. What no source could see is said as not seen,
/// never as zero: with every container source failed the containers are
/// those kept from the last scan; with the GPU view incomplete the GPU
/// processes are.
fn log_summary(inventory: &Inventory, ran: &[schedule::Ran<'_>], trust: &trust::Trust) {
    let with_gpu = inventory.containers.values().filter(|c| c.has_gpu).count();
    // Host processes whose cgroup looks like a container's no engine runs
    // them in: counted among the host processes, and named here too.
    let look_alike = inventory.unattributed_processes.len();
    let look_alike = if look_alike > 0 {
        format!(", {look_alike} of them in a look-alike container cgroup")
    } else {
        String::new()
    };
    let sliced = if inventory.user_gpu_use.is_empty() {
        String::new()
    } else {
        format!(
            ", {} GPU uses by short-lived processes",
            inventory.user_gpu_use.len()
        )
    };
    let container_sources = ran
        .iter()
        .filter(|r| {
            r.instance
                .plugin
                .provides()
                .contains(&detect_workloads_api::model::FactKind::Containers)
        })
        .count();
    let containers = if container_sources > 0
        && trust.failed_container_sources.len() == container_sources
    {
        // Not installed is not broken: each source says which it was.
        let why: Vec<String> = trust
            .failed_container_sources
            .iter()
            .map(|name| {
                let absent = ran.iter().any(|r| {
                    &r.instance.name == name
                        && matches!(
                            &r.outcome,
                            schedule::Outcome::Failed {
                                error: detect_workloads_api::plugin::CollectError::Unavailable(_),
                                ..
                            }
                        )
                });
                if absent {
                    format!("{name} unavailable")
                } else {
                    format!("{name} failed")
                }
            })
            .collect();
        format!(
            "containers not seen ({}; {} kept from the last scan)",
            why.join(", "),
            inventory.containers.len()
        )
    } else {
        format!(
            "{} containers ({} with GPU)",
            inventory.containers.len(),
            with_gpu
        )
    };
    let gpu_sources = ran.iter().any(|r| {
        r.instance
            .plugin
            .provides()
            .contains(&detect_workloads_api::model::FactKind::GpuProcesses)
    });
    let processes = if gpu_sources && !trust.gpu_view_complete {
        format!(
            "host GPU processes not seen (no complete GPU view; {} kept from the last scan)",
            inventory.host_processes.len()
        )
    } else {
        format!(
            "{} host GPU processes ({} pending)",
            inventory.host_processes.len(),
            inventory.pending_processes.len()
        )
    };
    info!("Scan complete: {containers}, {processes}{look_alike}{sliced}");
}
