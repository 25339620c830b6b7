//! Watch mode's subscription to the engine's event stream: one notice per
//! container create, start, die or destroy, replayed from the last notice
//! seen when subscribing again (the core re-subscribes, with backoff, when
//! the stream ends or fails, e.g. while the engine restarts).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptions;
use detect_workloads_api::plugin::{Change, ChangeFeed, CollectError};
use futures_util::stream::{self, StreamExt};

use super::connection::{Calls, Endpoint};

/// The container actions that change the inventory.
const ACTIONS: [&str; 4] = ["create", "start", "die", "destroy"];

/// The engine's `since`: seconds with nanoseconds, as `docker events --since` takes.
fn since_param(change: Change) -> String {
    let secs = change.time_nanos.div_euclid(1_000_000_000);
    let nanos = change.time_nanos.rem_euclid(1_000_000_000);
    format!("{secs}.{nanos:09}")
}

/// The query: container events of the four actions, from `since`.
pub(super) fn options(since: Option<Change>) -> EventsOptions {
    EventsOptions {
        since: since.map(since_param),
        until: None,
        filters: Some(HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "event".to_string(),
                ACTIONS.iter().map(|a| a.to_string()).collect(),
            ),
        ])),
    }
}

/// The notice of one event (its time; now when the engine gave none).
fn notice(event: &EventMessage) -> Change {
    let time_nanos = event
        .time_nano
        .or_else(|| event.time.map(|t| t.saturating_mul(1_000_000_000)))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64)
        });
    Change { time_nanos }
}

/// Subscribes to `endpoint`'s events; `timeout` bounds the wait for the
/// stream's start (not the stream, which lasts as long as the engine does).
pub(super) fn subscribe(
    endpoint: &Endpoint,
    timeout: Duration,
    since: Option<Change>,
) -> ChangeFeed {
    let docker = match endpoint.client(timeout, Arc::new(Calls::default())) {
        Ok(docker) => docker,
        Err(e) => return Box::pin(stream::iter([Err(endpoint.classify(e))])),
    };
    let endpoint = endpoint.clone();
    let events = docker.events(Some(options(since)));
    Box::pin(events.map(move |event| match event {
        Ok(event) => Ok(notice(&event)),
        Err(e) => Err::<Change, CollectError>(endpoint.classify(e)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_seconds_and_nanoseconds() {
        let change = Change {
            time_nanos: 1_700_000_000_000_000_042,
        };
        assert_eq!(since_param(change), "1700000000.000000042");
        assert_eq!(
            options(Some(change)).since.as_deref(),
            Some("1700000000.000000042")
        );
        assert_eq!(options(None).since, None);
    }

    #[test]
    fn only_container_lifecycle_events_are_asked_for() {
        let filters = options(None).filters.expect("filters");
        assert_eq!(filters["type"], vec!["container"]);
        assert_eq!(filters["event"], vec!["create", "start", "die", "destroy"]);
    }

    #[test]
    fn a_notice_carries_the_event_time() {
        let event = EventMessage {
            time: Some(1_700_000_000),
            time_nano: Some(1_700_000_000_123_456_789),
            ..Default::default()
        };
        assert_eq!(notice(&event).time_nanos, 1_700_000_000_123_456_789);
        let seconds_only = EventMessage {
            time: Some(1_700_000_000),
            ..Default::default()
        };
        assert_eq!(notice(&seconds_only).time_nanos, 1_700_000_000_000_000_000);
    }
}
