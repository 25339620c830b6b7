//! Following a source's change stream (the engine's events): every notice
//! wakes the loop; a lost stream is subscribed to again after a [`Backoff`],
//! replaying from the last notice seen. While the stream is lost, each try
//! is preceded by a full scan: the first records the source's failure (GPU
//! polls replay it, as a oneshot scan would report it), and the first one
//! after the source is back reconciles at once, even when the replay brings
//! no event.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};

use detect_workloads_api::plugin::{Change, Collector};

use super::backoff::Backoff;
use super::Notice;

/// Follows `collector`'s changes until the loop goes away; returns at once
/// when the collector cannot push changes.
pub async fn follow(name: String, collector: Arc<dyn Collector>, tx: UnboundedSender<Notice>) {
    let mut since: Option<Change> = None;
    let mut backoff = Backoff::default();
    let mut lost = false;
    loop {
        let Some(mut feed) = collector.changes(since) else {
            debug!(collector = %name, "no change stream; the timer alone drives full scans");
            return;
        };
        while let Some(item) = feed.next().await {
            match item {
                Ok(change) => {
                    if lost {
                        info!(collector = %name, "event stream back");
                        lost = false;
                    }
                    since = Some(since.map_or(change, |s| s.max(change)));
                    backoff.reset();
                    if tx.send(Notice::Changed).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if !lost {
                        warn!(collector = %name, "event stream lost: {e}");
                    }
                    lost = true;
                    break;
                }
            }
        }
        if !lost {
            warn!(collector = %name, "event stream lost: it ended");
            lost = true;
        }
        let wait = backoff.next_wait();
        debug!(collector = %name, "subscribing again in {}", humantime::format_duration(wait));
        tokio::time::sleep(wait).await;
        // A full scan: the source's state as a oneshot scan would see it.
        if tx.send(Notice::Changed).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use detect_workloads_api::model::FactKind;
    use detect_workloads_api::plugin::{ChangeFeed, CollectContext, CollectError, Collected};
    use futures_util::stream;
    use std::time::Duration;

    /// A source whose stream is always lost at once (an engine away).
    struct Away;

    #[async_trait]
    impl Collector for Away {
        fn provides(&self) -> &'static [FactKind] {
            &[FactKind::Containers]
        }
        async fn collect(&self, _ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
            Err(CollectError::Unavailable("away".into()))
        }
        fn changes(&self, _since: Option<Change>) -> Option<ChangeFeed> {
            Some(Box::pin(stream::iter([Err(CollectError::Unavailable(
                "away".into(),
            ))])))
        }
    }

    #[tokio::test]
    async fn a_lost_stream_asks_for_a_full_scan_before_each_new_try() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(follow("docker".into(), Arc::new(Away), tx));
        for _ in 0..2 {
            let notice = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await;
            assert_eq!(notice.ok().flatten(), Some(Notice::Changed));
        }
        task.abort();
    }
}
