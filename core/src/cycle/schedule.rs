//! Scheduling, and nothing else: runs the collectors concurrently, each as
//! soon as every collector that provides what it needs (and the one it is a
//! fallback for) has finished, each under its own timeout and the cycle's
//! deadline, and returns one [`Outcome`] per collector instance.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{abortable, AbortHandle};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tracing::{debug, warn};

use crate::config::Instance;
use detect_workloads_api::model::{ContainerFacts, FactKind, Observations};
use detect_workloads_api::plugin::{
    CollectContext, CollectError, Collected, Collector, HeadStart, Previous,
};
use detect_workloads_api::users::UserNames;

/// How one collector instance did this cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It answered; its observations are merged into the cycle's.
    Collected {
        /// How long it took.
        duration: Duration,
        /// Its counters.
        stats: BTreeMap<String, u64>,
    },
    /// It could not look (or ran over its time).
    Failed {
        /// How long it took.
        duration: Duration,
        /// Why.
        error: CollectError,
    },
    /// A fallback not run: every instance of its primary collected.
    SkippedAsFallback {
        /// The collector type it stands in for.
        primary: String,
    },
}

impl Outcome {
    /// Whether it failed (a skipped fallback did not).
    pub fn failed(&self) -> bool {
        matches!(self, Outcome::Failed { .. })
    }
}

/// A collector instance with its outcome.
pub struct Ran<'c> {
    /// The instance.
    pub instance: &'c Instance<dyn Collector>,
    /// How it did.
    pub outcome: Outcome,
}

/// What the collectors produced: one [`Ran`] per instance, in configuration
/// order, and everything they observed.
pub struct Collection<'c> {
    /// The outcomes.
    pub ran: Vec<Ran<'c>>,
    /// The merged observations of every collector that collected.
    pub observed: Observations,
}

/// Whether `c` must wait for `o`: `o` provides what `c` needs, or `c` is a
/// fallback for `o`'s type.
fn waits_for(c: &Instance<dyn Collector>, o: &Instance<dyn Collector>) -> bool {
    o.kind != c.kind
        && (o
            .plugin
            .provides()
            .iter()
            .any(|k| c.plugin.needs().contains(k))
            || c.plugin.fallback_for() == Some(o.kind))
}

/// Where a collector's head start is.
enum HeadStartSlot {
    /// Still running (`abort` stops it).
    Running(AbortHandle),
    /// Done (or none to run), with what it prepared until the collector
    /// takes it.
    Done(Option<HeadStart>),
    /// Stopped: the collector started without it.
    Abandoned,
}

impl HeadStartSlot {
    /// What the collector starting now gets: what its head start prepared,
    /// or nothing, a head start still running being stopped (the collector
    /// does not wait for it: its timeout counts from now, as it would
    /// without one).
    fn take(&mut self) -> Option<HeadStart> {
        match std::mem::replace(self, HeadStartSlot::Abandoned) {
            HeadStartSlot::Done(prepared) => prepared,
            HeadStartSlot::Running(abort) => {
                abort.abort();
                None
            }
            HeadStartSlot::Abandoned => None,
        }
    }
}

/// The bookkeeping of one run: who started, who finished and how.
struct Board<'c> {
    collectors: &'c [Instance<dyn Collector>],
    started: Vec<bool>,
    head_starts: Vec<HeadStartSlot>,
    outcomes: Vec<Option<Outcome>>,
}

impl<'c> Board<'c> {
    /// The collectors not started whose dependencies have all finished;
    /// when none is and nothing runs, the first one left (breaking a cycle
    /// of dependencies).
    fn ready(&self, nothing_running: bool) -> Vec<usize> {
        let n = self.collectors.len();
        let ready: Vec<usize> = (0..n)
            .filter(|&i| !self.started[i])
            .filter(|&i| {
                (0..n).all(|j| {
                    i == j
                        || !waits_for(&self.collectors[i], &self.collectors[j])
                        || self.outcomes[j].is_some()
                })
            })
            .collect();
        if ready.is_empty() && nothing_running {
            return self.started.iter().position(|s| !s).into_iter().collect();
        }
        ready
    }

    /// The type whose success makes `i` (a fallback) unnecessary, if it is
    /// one and every instance of that type collected.
    fn skip_reason(&self, i: usize) -> Option<String> {
        let primary = self.collectors[i].plugin.fallback_for()?;
        let mut primaries = self
            .collectors
            .iter()
            .zip(&self.outcomes)
            .filter(|(o, _)| o.kind == primary)
            .peekable();
        primaries.peek()?;
        primaries
            .all(|(_, outcome)| outcome.as_ref().is_some_and(|o| !o.failed()))
            .then(|| primary.to_string())
    }

    fn done(&self) -> bool {
        self.started.iter().all(|s| *s)
    }

    fn into_ran(self) -> Vec<Ran<'c>> {
        self.collectors
            .iter()
            .zip(self.outcomes)
            .filter_map(|(instance, outcome)| {
                Some(Ran {
                    instance,
                    outcome: outcome?,
                })
            })
            .collect()
    }
}

/// What finished: a collector's head start, or the collector.
enum Finished {
    HeadStart(usize, Option<HeadStart>),
    Collected(usize, Result<Collected, CollectError>, Duration),
}

/// Runs the collectors; see the module's documentation. A collector that
/// needs others' facts has its [`Collector::head_start`] run from the
/// start; once those others are done it starts, with what its head start
/// prepared if that is done, else without it (the head start is stopped).
/// Its timeout counts from then, as without a head start: one that hangs
/// (a `/proc` read stuck in the kernel, a state that is slow to read) costs
/// the collector nothing.
pub async fn run_collectors<'c>(
    collectors: &'c [Instance<dyn Collector>],
    previous: &Previous,
    users: &UserNames,
    deadline: Instant,
) -> Collection<'c> {
    let nothing = Observations::default();
    let mut running = FuturesUnordered::new();
    let mut head_starts = Vec::with_capacity(collectors.len());
    for (i, c) in collectors.iter().enumerate() {
        if c.plugin.needs().is_empty() {
            head_starts.push(HeadStartSlot::Done(None));
            continue;
        }
        let nothing = &nothing;
        let (head_start, abort) = abortable(async move {
            let ctx = CollectContext {
                previous,
                observed: nothing,
                users,
                head_start: None,
            };
            run_head_start(c, &ctx, deadline).await
        });
        head_starts.push(HeadStartSlot::Running(abort));
        running
            .push(async move { Finished::HeadStart(i, head_start.await.unwrap_or(None)) }.boxed());
    }
    let mut board = Board {
        collectors,
        started: vec![false; collectors.len()],
        head_starts,
        outcomes: vec![None; collectors.len()],
    };
    // Shared with the views of the collectors running: copied only when
    // one settles while another still looks at it.
    let mut observed = Arc::new(Observations::default());
    // Collectors running (head starts aside: a dependency cycle is broken
    // as soon as no collector runs).
    let mut collecting = 0usize;
    loop {
        for i in board.ready(collecting == 0) {
            board.started[i] = true;
            let c = &collectors[i];
            if let Some(primary) = board.skip_reason(i) {
                debug!(collector = %c.name, "skipped: {primary} succeeded");
                board.head_starts[i].take();
                board.outcomes[i] = Some(Outcome::SkippedAsFallback { primary });
                continue;
            }
            let view = view(&observed, c.plugin.needs());
            let head_start = board.head_starts[i].take();
            collecting += 1;
            running.push(
                async move {
                    let ctx = CollectContext {
                        previous,
                        observed: &view,
                        users,
                        head_start: head_start.as_ref(),
                    };
                    let (result, duration) = run_one(c, &ctx, deadline).await;
                    Finished::Collected(i, result, duration)
                }
                .boxed(),
            );
        }
        if running.is_empty() {
            // A skipped fallback may have unblocked others: look again.
            if board.done() {
                break;
            }
            continue;
        }
        match running.next().await {
            Some(Finished::HeadStart(i, prepared)) => {
                // Unless the collector already started without it.
                if matches!(board.head_starts[i], HeadStartSlot::Running(_)) {
                    board.head_starts[i] = HeadStartSlot::Done(prepared);
                }
            }
            Some(Finished::Collected(i, result, duration)) => {
                collecting -= 1;
                let observed = Arc::make_mut(&mut observed);
                board.outcomes[i] = Some(settle(collectors, i, result, duration, observed));
            }
            None => {}
        }
    }
    Collection {
        ran: board.into_ran(),
        // Every view is gone with its collector.
        observed: Arc::try_unwrap(observed).unwrap_or_else(|shared| (*shared).clone()),
    }
}

/// Runs a collector's head start under its own timeout and the cycle's
/// deadline; one that runs over prepared nothing.
async fn run_head_start(
    c: &Instance<dyn Collector>,
    ctx: &CollectContext<'_>,
    deadline: Instant,
) -> Option<HeadStart> {
    let start = Instant::now();
    let limit = c
        .plugin
        .timeout()
        .min(deadline.saturating_duration_since(start));
    let prepared = tokio::time::timeout(limit, c.plugin.head_start(ctx))
        .await
        .unwrap_or_else(|_| {
            debug!(collector = %c.name, "head start ran over; it collects without");
            None
        });
    debug!(
        collector = %c.name,
        duration_ms = detect_workloads_api::timefmt::round_ms(start.elapsed()),
        prepared = prepared.is_some(),
        "head start done"
    );
    prepared
}

/// What a collector that needs these kinds of facts sees of them:
/// [`Observations::only`], which is everything observed so far when
/// nothing else is (then shared, not copied).
fn view(observed: &Arc<Observations>, needs: &[FactKind]) -> Arc<Observations> {
    // Nothing of a kind it does not need is there to hide.
    let empty_unless_needed = |kind: FactKind, empty: bool| empty || needs.contains(&kind);
    let all_seen = observed.short_lived.is_empty()
        && empty_unless_needed(FactKind::Containers, observed.containers.is_empty())
        && empty_unless_needed(
            FactKind::GpuProcesses,
            observed.gpu_processes.is_empty() && observed.gpus.is_empty(),
        )
        && empty_unless_needed(FactKind::Processes, observed.processes.is_empty());
    if all_seen {
        Arc::clone(observed)
    } else {
        Arc::new(observed.only(needs))
    }
}

/// The outcome of collector `i` that ran; what it observed joins `observed`.
fn settle(
    collectors: &[Instance<dyn Collector>],
    i: usize,
    result: Result<Collected, CollectError>,
    duration: Duration,
    observed: &mut Observations,
) -> Outcome {
    let c = &collectors[i];
    match result {
        Ok(Collected {
            mut observations,
            stats,
        }) => {
            for container in &mut observations.containers {
                container.collector = c.name.clone();
            }
            debug!(collector = %c.name, duration_ms = detect_workloads_api::timefmt::round_ms(duration), "collected");
            let containers = std::mem::take(&mut observations.containers);
            admit(collectors, observed, containers);
            observed.merge(observations);
            Outcome::Collected { duration, stats }
        }
        Err(error) => {
            // Logged by `health`, which knows whether this is news.
            debug!(collector = %c.name, "collector failed: {error}");
            Outcome::Failed { duration, error }
        }
    }
}

/// Adds `incoming` to the containers observed, one per inventory key (the
/// short id): where two collector instances report the same key, the one
/// configured first keeps it. An engine a user runs (rootless Podman) answers
/// whatever its owner wants, another user's container id included; it must
/// not replace or hide what the system's engine reports.
fn admit(
    collectors: &[Instance<dyn Collector>],
    observed: &mut Observations,
    incoming: Vec<ContainerFacts>,
) {
    let rank = |name: &str| collectors.iter().position(|c| c.name == name);
    let mut at: HashMap<String, usize> = observed
        .containers
        .iter()
        .enumerate()
        .map(|(n, c)| (c.key(), n))
        .collect();
    for container in incoming {
        let key = container.key();
        let Some(&n) = at.get(&key) else {
            at.insert(key, observed.containers.len());
            observed.containers.push(container);
            continue;
        };
        let kept = &mut observed.containers[n];
        let (winner, loser) = if rank(&container.collector) < rank(&kept.collector) {
            (
                container.collector.clone(),
                std::mem::replace(kept, container),
            )
        } else {
            (kept.collector.clone(), container)
        };
        warn!(
            container = %key,
            kept_from = %winner,
            dropped_from = %loser.collector,
            dropped_name = ?loser.name,
            "two collectors report the same container id: the one configured first is kept"
        );
    }
}

/// Runs one collector under its own timeout and the cycle's deadline.
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

#[cfg(test)]
mod tests {
    use super::*;
    use detect_workloads_api::model::{GpuProcess, ProcessFacts, ShortLivedContainer};

    #[test]
    fn a_view_is_what_only_gives_shared_or_not() {
        let kinds = [
            FactKind::Containers,
            FactKind::GpuProcesses,
            FactKind::Processes,
        ];
        let container = ContainerFacts {
            id: "a".repeat(64),
            ..Default::default()
        };
        let gpu = GpuProcess {
            pid: 7,
            ..Default::default()
        };
        let process = ProcessFacts {
            pid: 7,
            ..Default::default()
        };
        let short = ShortLivedContainer {
            id: "b".repeat(64),
            ..Default::default()
        };
        for bits in 0..16u8 {
            let observed = Arc::new(Observations {
                containers: if bits & 1 != 0 {
                    vec![container.clone()]
                } else {
                    Vec::new()
                },
                gpu_processes: if bits & 2 != 0 {
                    vec![gpu.clone()]
                } else {
                    Vec::new()
                },
                processes: if bits & 4 != 0 {
                    BTreeMap::from([(7, process.clone())])
                } else {
                    BTreeMap::new()
                },
                short_lived: if bits & 8 != 0 {
                    vec![short.clone()]
                } else {
                    Vec::new()
                },
                ..Default::default()
            });
            for needed in 0..8u8 {
                let needs: Vec<FactKind> = kinds
                    .iter()
                    .enumerate()
                    .filter(|(n, _)| needed & (1 << n) != 0)
                    .map(|(_, k)| *k)
                    .collect();
                let seen = view(&observed, &needs);
                assert_eq!(
                    format!("{:?}", *seen),
                    format!("{:?}", observed.only(&needs)),
                    "observed {bits:04b}, needs {needs:?}"
                );
            }
        }
        // Nothing hidden: shared.
        let all = Arc::new(Observations {
            containers: vec![container],
            ..Default::default()
        });
        assert!(Arc::ptr_eq(&view(&all, &[FactKind::Containers]), &all));
    }
}
