//! What the log says about each collector, from this cycle's outcome and the
//! previous inventory's `scan.collectors` record: a source missing on this
//! machine (no Docker socket, no NVML library) is news once, at INFO, when it
//! goes and when it comes back; a real failure is a WARN every time.

use tracing::{info, warn};

use detect_workloads_api::model::{CollectorReport, Inventory};
use detect_workloads_api::plugin::CollectError;

use super::schedule::{Outcome, Ran};

/// What one collector's line in the log is, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// It became unavailable (INFO).
    Unavailable(String),
    /// It is available again (INFO).
    Back,
    /// It failed; `kept` when it had reported before, so its last report stands (WARN).
    Failed {
        /// Why.
        error: String,
        /// Whether what it reported last is kept.
        kept: bool,
    },
}

const UNAVAILABLE: &str = "unavailable: ";

/// The note for one outcome, given the collector's previous report.
pub fn note(outcome: &Outcome, before: Option<&CollectorReport>) -> Option<Note> {
    let was_unavailable = before
        .and_then(|r| r.error.as_deref())
        .is_some_and(|e| e.starts_with(UNAVAILABLE));
    match outcome {
        Outcome::Failed {
            error: CollectError::Unavailable(why),
            ..
        } => (!was_unavailable).then(|| Note::Unavailable(why.clone())),
        Outcome::Failed { error, .. } => Some(Note::Failed {
            error: error.to_string(),
            kept: before.is_some_and(|r| r.ok && r.skipped.is_none()),
        }),
        Outcome::Collected { .. } if was_unavailable => Some(Note::Back),
        _ => None,
    }
}

/// Logs what changed for each collector since `previous`.
pub fn log(ran: &[Ran<'_>], previous: &Inventory) {
    for r in ran {
        let name = &r.instance.name;
        let before = previous.scan.as_ref().and_then(|s| s.collectors.get(name));
        match note(&r.outcome, before) {
            Some(Note::Unavailable(why)) => {
                info!(collector = %name, "not available on this machine: {why} (said once; scans go on without it)")
            }
            Some(Note::Back) => info!(collector = %name, "available again"),
            Some(Note::Failed { error, kept: true }) => {
                warn!(collector = %name, "collector failed, keeping what it reported last: {error}")
            }
            Some(Note::Failed { error, kept: false }) => {
                warn!(collector = %name, "collector failed: {error}")
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn failed(error: CollectError) -> Outcome {
        Outcome::Failed {
            duration: Duration::ZERO,
            error,
        }
    }

    fn report(ok: bool, error: Option<&str>) -> CollectorReport {
        CollectorReport {
            ok,
            error: error.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn unavailable_is_said_once_and_its_return_once() {
        let gone = failed(CollectError::Unavailable("no socket".into()));
        assert_eq!(
            note(&gone, None),
            Some(Note::Unavailable("no socket".into()))
        );
        let before = report(false, Some("unavailable: no socket"));
        assert_eq!(note(&gone, Some(&before)), None);
        let back = Outcome::Collected {
            duration: Duration::ZERO,
            stats: Default::default(),
        };
        assert_eq!(note(&back, Some(&before)), Some(Note::Back));
        assert_eq!(note(&back, Some(&report(true, None))), None);
    }

    #[test]
    fn a_failure_keeps_the_last_report_only_when_there_was_one() {
        let bad = failed(CollectError::Failed("garbage".into()));
        let first = note(&bad, None);
        assert_eq!(
            first,
            Some(Note::Failed {
                error: "garbage".into(),
                kept: false
            })
        );
        let after_success = note(&bad, Some(&report(true, None)));
        assert_eq!(
            after_success,
            Some(Note::Failed {
                error: "garbage".into(),
                kept: true
            })
        );
    }
}
