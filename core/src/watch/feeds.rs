//! Following a source's change stream (the engine's events): every notice
//! wakes the loop; a lost stream is subscribed to again after a [`Backoff`],
//! replaying from the last notice seen.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};

use crate::plugin::{Change, Collector};

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
        let wait = backoff.next_wait();
        debug!(collector = %name, "subscribing again in {}", humantime::format_duration(wait));
        tokio::time::sleep(wait).await;
    }
}
