//! Which results of a cycle can be trusted. Failure is not absence: what a
//! failed source reported last is kept, and the GPU processes are replaced
//! only when the GPU view is complete.

use std::collections::{BTreeMap, BTreeSet};

use detect_workloads_api::model::{CollectorReport, FactKind};
use detect_workloads_api::plugin::CollectError;

use super::schedule::{Outcome, Ran};

/// What the outcomes of the collectors allow the cycle to believe.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trust {
    /// Instance names of the container sources that failed.
    pub failed_container_sources: BTreeSet<String>,
    /// The first configured container source: the owner of entries written
    /// before the source was recorded.
    pub first_container_source: String,
    /// Whether this cycle's host GPU processes are the whole truth.
    pub gpu_view_complete: bool,
}

impl Trust {
    /// The trust rules over these outcomes.
    pub fn of(ran: &[Ran<'_>]) -> Trust {
        Trust {
            failed_container_sources: failed_container_sources(ran),
            first_container_source: ran
                .iter()
                .find(|r| provides(r, FactKind::Containers))
                .map(|r| r.instance.name.clone())
                .unwrap_or_default(),
            gpu_view_complete: gpu_view_complete(ran),
        }
    }
}

fn provides(r: &Ran<'_>, kind: FactKind) -> bool {
    r.instance.plugin.provides().contains(&kind)
}

/// The container sources that failed this cycle.
pub fn failed_container_sources(ran: &[Ran<'_>]) -> BTreeSet<String> {
    ran.iter()
        .filter(|r| provides(r, FactKind::Containers) && r.outcome.failed())
        .map(|r| r.instance.name.clone())
        .collect()
}

/// Whether the GPU view is complete: every GPU source collected, or is
/// covered, and no `/proc` source failed (a GPU process not read from
/// `/proc` is not seen). A failed GPU source is covered by a fallback for it
/// that ran and collected (not skipped); one that is *unavailable* (no
/// library, no command, no driver: it has nothing to tell on this machine)
/// is covered by any other GPU source that collected, with or without
/// `fallback_for`, since both ask the same driver. A source that answered
/// wrongly or timed out is covered by its fallback only: what it would have
/// listed may be on devices the others do not see.
pub fn gpu_view_complete(ran: &[Ran<'_>]) -> bool {
    let collected = |o: &Ran<'_>| matches!(o.outcome, Outcome::Collected { .. });
    let covered = |r: &Ran<'_>| {
        let unavailable = matches!(
            r.outcome,
            Outcome::Failed {
                error: CollectError::Unavailable(_),
                ..
            }
        );
        ran.iter().any(|o| {
            !std::ptr::eq(o, r)
                && collected(o)
                && (o.instance.plugin.fallback_for() == Some(r.instance.kind)
                    || (unavailable && provides(o, FactKind::GpuProcesses)))
        })
    };
    ran.iter()
        .filter(|r| provides(r, FactKind::GpuProcesses))
        .all(|r| !r.outcome.failed() || covered(r))
        && !ran
            .iter()
            .any(|r| provides(r, FactKind::Processes) && r.outcome.failed())
}

/// The `scan.collectors` record: one report per instance.
pub fn reports(ran: &[Ran<'_>]) -> BTreeMap<String, CollectorReport> {
    ran.iter()
        .map(|r| {
            let report = CollectorReport {
                provides: r.instance.plugin.provides().to_vec(),
                ..report(&r.outcome)
            };
            (r.instance.name.clone(), report)
        })
        .collect()
}

fn report(outcome: &Outcome) -> CollectorReport {
    match outcome {
        Outcome::Collected { duration, stats } => CollectorReport {
            ok: true,
            duration_ms: duration.as_millis() as u64,
            stats: stats.clone(),
            ..Default::default()
        },
        Outcome::Failed { duration, error } => CollectorReport {
            ok: false,
            duration_ms: duration.as_millis() as u64,
            error: Some(error.to_string()),
            unavailable: matches!(error, CollectError::Unavailable(_)),
            ..Default::default()
        },
        Outcome::SkippedAsFallback { primary } => CollectorReport {
            ok: true,
            skipped: Some(format!("{primary} succeeded")),
            ..Default::default()
        },
    }
}
