//! Exactly-once events: the transactional outbox.
//!
//! A cycle's events are written into the state it leads to
//! ([`detect_workloads_api::model::Outbox`], the inventory's `_outbox`), in the same atomic
//! rename, before any of them is appended. Then the event sinks append them,
//! and once every one of them has, the state store records the outbox's id as
//! delivered. A cycle that finds the previous state's outbox not recorded as
//! delivered (the scanner was killed between the two, or an event sink
//! failed) offers its events again ([`detect_workloads_api::plugin::ScanOutput::owed`]);
//! each event sink appends only those whose `event_id` its log does not
//! already hold. So whatever stops the scanner, and when:
//!
//! - killed before the state is renamed into place: the previous state
//!   stands, and the next cycle computes the same transitions again (with the
//!   same ids, [`name`]); nothing of them was written;
//! - killed after: the state owes them; the next cycle appends those missing.
//!
//! The outbox is bounded ([`MAX_OWED`]): while the event log cannot be
//! written for a long time the oldest owed events are dropped, with an error.

use tracing::{error, warn};

use detect_workloads_api::model::{Event, Inventory, Outbox};
use detect_workloads_api::plugin::StateStore;
use detect_workloads_api::timefmt::Timestamp;

/// At most this many events are owed; beyond, the oldest are dropped (an
/// event log unwritable for that long has lost its readers anyway).
pub const MAX_OWED: usize = 20_000;

/// The namespace of event ids (UUID version 5 over the transition's
/// identity).
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6473_3031_2d65_7665_6e74_2d69_6473_0001);

/// The fields of `details` that say which thing a transition is about.
const IDENTITY: [&str; 6] = [
    "container_id",
    "pid",
    "start_time",
    "gpu_uuid",
    "reason",
    "new_status",
];

/// Names each event: a UUID derived from the host (`source`), the state the
/// transition starts from (`previous_scan`, its `last_scan`), the event's type
/// and what it is about. Computed again from the same previous state (a cycle
/// whose state could not be written, retried) a transition gets the same id;
/// from the next state, a new one. A first scan (no previous state) uses its
/// own start `now`.
pub fn name(events: &mut [Event], source: &str, previous_scan: Option<Timestamp>, now: Timestamp) {
    // As text, as the key always held it.
    let from = previous_scan.unwrap_or(now).to_string();
    let from = from.as_str();
    let mut seen = std::collections::BTreeMap::<Vec<u8>, u32>::new();
    for event in events {
        let mut key = Vec::new();
        for part in [source, from, event.event_type.as_str(), &event.user] {
            key.extend_from_slice(part.as_bytes());
            key.push(0);
        }
        for field in IDENTITY {
            if let Some(value) = event.details.get(field) {
                key.extend_from_slice(field.as_bytes());
                key.push(b'=');
                key.extend_from_slice(value.to_string().as_bytes());
                key.push(0);
            }
        }
        // Two transitions alike in all of that (never expected) still differ.
        let n = seen.entry(key.clone()).or_default();
        key.extend_from_slice(n.to_string().as_bytes());
        *n += 1;
        event.event_id = uuid::Uuid::new_v5(&NAMESPACE, &key).to_string();
    }
}

/// The events `previous` owes: its outbox's, unless the store records that
/// outbox as delivered.
pub fn owed(store: &dyn StateStore, previous: &Inventory) -> Vec<Event> {
    let Some(outbox) = &previous.outbox else {
        return Vec::new();
    };
    match store.delivered() {
        Some(id) if id == outbox.id => Vec::new(),
        _ => outbox.events.clone(),
    }
}

/// The outbox the new state carries: what is still owed, then this cycle's
/// events; none when both are empty.
pub fn seal(owed: &[Event], events: &[Event]) -> Option<Outbox> {
    if owed.is_empty() && events.is_empty() {
        return None;
    }
    let mut all: Vec<Event> = owed.iter().chain(events).cloned().collect();
    if all.len() > MAX_OWED {
        let dropped = all.len() - MAX_OWED;
        error!(
            dropped,
            "the event log has not taken events for too long: the oldest {dropped} owed events are dropped"
        );
        all.drain(..dropped);
    }
    Some(Outbox {
        id: uuid::Uuid::new_v4().to_string(),
        events: all,
    })
}

/// Records `outbox` as delivered; a failure only means it is offered again
/// (and skipped by the sinks that hold it).
pub fn mark_delivered(store: &dyn StateStore, outbox: &Outbox) {
    if let Err(e) = store.set_delivered(&outbox.id) {
        warn!("cannot record the events as delivered ({e}); the next scan checks the event log for them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }
    use detect_workloads_api::model::EventType;

    fn event(kind: EventType, id: &str) -> Event {
        Event {
            timestamp: ts("2026-12-03T10:00:00Z"),
            event_type: kind,
            user: "alice".into(),
            details: serde_json::json!({"container_id": id, "name": "x"}),
            event_id: String::new(),
        }
    }

    #[test]
    fn ids_are_stable_for_the_same_transition_and_differ_otherwise() {
        let make = || {
            vec![
                event(EventType::ContainerDiscovered, "aaaaaaaaaaaa"),
                event(EventType::ContainerExited, "aaaaaaaaaaaa"),
                event(EventType::ContainerDiscovered, "bbbbbbbbbbbb"),
                event(EventType::ContainerDiscovered, "bbbbbbbbbbbb"),
            ]
        };
        let mut a = make();
        name(
            &mut a,
            "host",
            Some(ts("2026-12-03T09:59:00Z")),
            ts("2026-12-03T10:00:00Z"),
        );
        let mut b = make();
        // Retried later from the same previous state: same ids.
        name(
            &mut b,
            "host",
            Some(ts("2026-12-03T09:59:00Z")),
            ts("2026-12-03T10:00:07Z"),
        );
        assert_eq!(a, b);
        let ids: std::collections::BTreeSet<_> = a.iter().map(|e| e.event_id.clone()).collect();
        assert_eq!(ids.len(), 4, "{a:?}");
        let mut c = make();
        name(
            &mut c,
            "host",
            Some(ts("2026-12-03T10:00:00Z")),
            ts("2026-12-03T10:01:00Z"),
        );
        assert!(a.iter().zip(&c).all(|(x, y)| x.event_id != y.event_id));
        let mut d = make();
        name(
            &mut d,
            "other-host",
            Some(ts("2026-12-03T09:59:00Z")),
            ts("2026-12-03T10:00:00Z"),
        );
        assert_ne!(a[0].event_id, d[0].event_id);
        assert!(uuid::Uuid::parse_str(&a[0].event_id).is_ok());
    }

    struct Store(Option<String>);
    impl StateStore for Store {
        fn load(&self) -> Result<Option<Inventory>, detect_workloads_api::plugin::StateError> {
            Ok(None)
        }
        fn lock(
            &self,
            _: std::time::Duration,
        ) -> Result<detect_workloads_api::plugin::LockGuard, detect_workloads_api::plugin::StateError>
        {
            Err(detect_workloads_api::plugin::StateError::Other("no".into()))
        }
        fn delivered(&self) -> Option<String> {
            self.0.clone()
        }
        fn set_delivered(&self, _: &str) -> Result<(), detect_workloads_api::plugin::StateError> {
            Ok(())
        }
    }

    #[test]
    fn an_outbox_is_owed_until_recorded_as_delivered() {
        let events = vec![event(EventType::ContainerDiscovered, "aaaaaaaaaaaa")];
        let outbox = seal(&[], &events).expect("an outbox");
        let previous = Inventory {
            outbox: Some(outbox.clone()),
            ..Inventory::default()
        };
        assert_eq!(owed(&Store(None), &previous), events);
        assert_eq!(owed(&Store(Some("other".into())), &previous), events);
        assert!(owed(&Store(Some(outbox.id.clone())), &previous).is_empty());
        assert!(owed(&Store(None), &Inventory::default()).is_empty());
        assert!(seal(&[], &[]).is_none());
        let again = seal(&events, &events).expect("an outbox");
        assert_eq!(again.events.len(), 2);
        assert_ne!(again.id, outbox.id);
    }

    #[test]
    fn the_outbox_is_bounded_keeping_the_newest() {
        let many: Vec<Event> = (0..MAX_OWED + 5)
            .map(|i| event(EventType::ContainerDiscovered, &format!("{i:012}")))
            .collect();
        let outbox = seal(&many[..10], &many[10..]).expect("an outbox");
        assert_eq!(outbox.events.len(), MAX_OWED);
        assert_eq!(outbox.events[0], many[5]);
    }
}
