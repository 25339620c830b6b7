//! Delivery: the state first, then the rest. Events describe the step from
//! the previous state to this one, so they go out only once that step is
//! committed; if the state cannot be written, the next scan computes the
//! same transitions again from the unchanged previous state: nothing is
//! lost, nothing doubled. Whether every event sink took the events decides
//! whether the state's outbox is recorded as delivered ([`super::outbox`]).

use tracing::{debug, error, warn};

use crate::config::Instance;
use detect_workloads_api::plugin::{ScanOutput, Sink};

use super::ScanError;

/// Delivers `out` to every sink; the first failure of a required sink is
/// the cycle's error (the other sinks still run, except those emitting
/// events). `Ok(true)` when every sink emitting events delivered.
pub async fn to_sinks(
    sinks: &[Instance<dyn Sink>],
    out: &ScanOutput<'_>,
) -> Result<bool, ScanError> {
    let (state, others): (Vec<_>, Vec<_>) =
        sinks.iter().partition(|s| s.plugin.state_store().is_some());
    let mut fatal = None;
    let mut events_delivered = true;
    for sink in state.into_iter().chain(others) {
        if fatal.is_some() && sink.plugin.emits_events() {
            warn!(sink = %sink.name, "not delivered: the state was not written; the next scan reports these transitions");
            continue;
        }
        let start = std::time::Instant::now();
        let result = sink.plugin.deliver(out).await;
        debug!(sink = %sink.name, duration_ms = detect_workloads_api::timefmt::round_ms(start.elapsed()), "delivered");
        let Err(e) = result else {
            continue;
        };
        if sink.plugin.emits_events() {
            events_delivered = false;
        }
        if !sink.plugin.required() {
            warn!(sink = %sink.name, "{e}");
        } else if fatal.is_none() {
            error!(sink = %sink.name, "{e}");
            fatal = Some(ScanError::Sink {
                sink: sink.name.clone(),
                source: e,
            });
        } else {
            error!(sink = %sink.name, "{e}");
        }
    }
    fatal.map_or(Ok(events_delivered), Err)
}
