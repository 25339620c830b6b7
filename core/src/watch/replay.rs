//! A container collector in watch mode: on a full scan it asks the engine
//! and records what it said; on a GPU poll it answers with that record
//! instead (the containers of the last full scan, or its failure: while the
//! engine is away a GPU poll fails the source too, so entries are carried
//! over exactly as in a oneshot scan, and nothing exits falsely).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use detect_workloads_api::model::{FactKind, Observations};
use detect_workloads_api::plugin::{
    Change, ChangeFeed, CollectContext, CollectError, Collected, Collector, HeadStart,
};

/// What the last full scan's collection gave.
type Record = Result<Observations, CollectError>;

/// Wraps a container collector; see the module's documentation.
pub struct Replaying {
    inner: Arc<dyn Collector>,
    replay: AtomicBool,
    last: Mutex<Option<Record>>,
}

impl Replaying {
    /// Wraps `inner`; it asks the engine until [`Replaying::set_replay`] says otherwise.
    pub fn new(inner: Arc<dyn Collector>) -> Self {
        Replaying {
            inner,
            replay: AtomicBool::new(false),
            last: Mutex::new(None),
        }
    }

    /// Whether the next collections replay the record (GPU poll) or ask (full scan).
    pub fn set_replay(&self, replay: bool) {
        self.replay.store(replay, Ordering::SeqCst);
    }

    /// How many containers the record holds (for the memory checks).
    pub fn recorded(&self) -> usize {
        self.last
            .lock()
            .ok()
            .and_then(|l| {
                l.as_ref()
                    .map(|r| r.as_ref().map_or(0, |o| o.containers.len()))
            })
            .unwrap_or(0)
    }

    fn record(&self, record: Record) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(record);
        }
    }

    fn replayed(&self) -> Result<Collected, CollectError> {
        let last = self
            .last
            .lock()
            .map_err(|_| CollectError::Failed("the recorded containers were poisoned".into()))?;
        match last.as_ref() {
            // Those the full scan saw come and go were told by it.
            Some(Ok(observations)) => Ok(Collected {
                observations: Observations {
                    short_lived: Vec::new(),
                    ..observations.clone()
                },
                stats: BTreeMap::from([("replayed".to_string(), 1)]),
            }),
            Some(Err(e)) => Err(e.clone()),
            None => Err(CollectError::Unavailable("no full scan yet".into())),
        }
    }
}

#[async_trait]
impl Collector for Replaying {
    fn provides(&self) -> &'static [FactKind] {
        self.inner.provides()
    }

    fn needs(&self) -> &'static [FactKind] {
        self.inner.needs()
    }

    fn timeout(&self) -> Duration {
        self.inner.timeout()
    }

    fn fallback_for(&self) -> Option<&str> {
        self.inner.fallback_for()
    }

    async fn head_start(&self, ctx: &CollectContext<'_>) -> Option<HeadStart> {
        self.inner.head_start(ctx).await
    }

    async fn collect(&self, ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        if self.replay.load(Ordering::SeqCst) {
            return self.replayed();
        }
        // A collection cut off by its timeout leaves this failure behind.
        self.record(Err(CollectError::Failed(
            "the last full scan did not finish asking".into(),
        )));
        let result = self.inner.collect(ctx).await;
        self.record(match &result {
            Ok(collected) => Ok(collected.observations.clone()),
            Err(e) => Err(e.clone()),
        });
        result
    }

    fn changes(&self, since: Option<Change>) -> Option<ChangeFeed> {
        self.inner.changes(since)
    }
}

/// Whether a collector observes containers (and is replayed on GPU polls).
pub fn observes_containers(c: &dyn Collector) -> bool {
    c.provides().contains(&FactKind::Containers)
}
