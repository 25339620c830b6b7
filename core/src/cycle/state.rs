//! The scan lock and the previous state: the lock is taken first (when this
//! cycle writes anything), then the state is read under it on a thread of its
//! own, so that a slow or stuck read cannot hold the scan past its deadline.

use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use crate::config::{Config, Instance};
use detect_workloads_api::model::Inventory;
use detect_workloads_api::plugin::{LoadResult, LockGuard, Previous, Sink, StateError, StateStore};

use super::ScanError;

/// The sink instance that keeps the state (the inventory file), if any: a
/// configured one, else one named with `--sink`.
fn state_sink(config: &Config) -> Option<&Instance<dyn Sink>> {
    config
        .sinks
        .iter()
        .chain(config.delivery_sinks())
        .find(|s| s.plugin.state_store().is_some())
}

/// The state store this cycle writes, if any (none on a dry run or with a
/// `--sink` that is not the inventory file).
pub fn written_store(config: &Config) -> Option<&dyn StateStore> {
    config
        .delivery_sinks()
        .iter()
        .find_map(|s| s.plugin.state_store())
}

/// Takes the scan lock when this cycle writes the state or events.
pub fn lock(config: &Config) -> Result<Option<LockGuard>, ScanError> {
    let writes = config
        .delivery_sinks()
        .iter()
        .any(|s| s.plugin.state_store().is_some() || s.plugin.emits_events());
    match state_sink(config).and_then(|s| s.plugin.state_store()) {
        Some(store) if writes => store
            .lock(config.agent.lock_timeout)
            .map(Some)
            .map_err(ScanError::Locked),
        _ => Ok(None),
    }
}

/// Starts reading the previous state on a detached thread; waiting for it
/// gives up at `deadline` ([`StateError::TimedOut`]), leaving the thread
/// behind. Where no thread can be had, reads it now.
pub fn start_loading(config: &Config, deadline: Instant) -> Previous {
    let Some(sink) = state_sink(config) else {
        return Previous::known(Inventory::default());
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let load = |sink: &Arc<dyn Sink>| -> LoadResult {
        match sink.state_store() {
            Some(store) => store.load(),
            None => Err(StateError::ReaderStopped),
        }
    };
    let plugin = Arc::clone(&sink.plugin);
    let reader = move || {
        let started = Instant::now();
        let result = load(&plugin);
        debug!(
            elapsed_ms = detect_workloads_api::timefmt::round_ms(started.elapsed()),
            "previous state loaded"
        );
        // The cycle may have given up on it; nobody is left to tell.
        let _ = tx.send(result);
    };
    if let Err(e) = std::thread::Builder::new()
        .name("state-load".to_string())
        .spawn(reader)
    {
        debug!("no thread to read the state on ({e}); reading it first");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(load(&sink.plugin));
        return Previous::arriving(rx, None);
    }
    Previous::arriving(rx, Some(deadline))
}
