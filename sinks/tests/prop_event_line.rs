//! Property tests of the event log's lines: whatever the strings in an event
//! (huge command lines, control characters, non-ASCII, a huge user or
//! source), a line is valid JSON, one line, and under 4096 bytes; what does
//! not fit is shortened free text first (the facts kept), and only then
//! `{"truncated":true}`.

use detect_workloads_api::model::{Event, EventType};
use detect_workloads_api::timefmt::Timestamp;
use detect_workloads_sinks::event_log::{event_line, MAX_LINE};
use proptest::prelude::*;
use serde_json::{json, Value};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings of every kind the event fields may hold.
fn any_text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(any::<char>(), 0..64).prop_map(|c| c.into_iter().collect::<String>()),
        1 => Just(String::new()),
        1 => "[\\x00-\\x1f\\x7f\\u{85}\\u{2028}\\u{2029}\"\\\\]{0,64}",
        1 => (any::<char>(), 0..max).prop_map(|(c, n)| c.to_string().repeat(n)),
        1 => (prop::collection::vec(any::<char>(), 1..8), 0..max / 4)
            .prop_map(|(c, n)| c.into_iter().collect::<String>().repeat(n)),
    ]
}

/// Event types are a closed set now (`EventType`): every one of them.
fn event_type() -> impl Strategy<Value = EventType> {
    prop::sample::select(EventType::ALL.to_vec())
}

fn details() -> impl Strategy<Value = Value> {
    (
        any::<u32>(),
        any_text(20_000),
        prop::option::of(any::<u64>()),
        any_text(200),
    )
        .prop_map(|(pid, cmdline, memory, uuid)| {
            json!({"pid": pid, "cmdline": cmdline, "gpu_memory_mb": memory, "gpu_uuid": uuid})
        })
}

/// The fields an over-long line may shorten.
const FREE_TEXT: [&str; 3] = ["cmdline", "name", "image"];

fn check(event: &Event, source: &str) -> Result<(), TestCaseError> {
    let line = event_line(event, source).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(line.len() < MAX_LINE, "{} bytes", line.len());
    prop_assert_eq!(line.last(), Some(&b'\n'));
    prop_assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    prop_assert!(!line.contains(&b'\r'));
    let value: Value =
        serde_json::from_slice(&line).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&value["schema_version"], "1");
    prop_assert!(value["details"].is_object());
    prop_assert_eq!(value.get("user").is_some(), !event.user.is_empty());
    if value["details"]["truncated"] == true {
        prop_assert!(value["details"]["original_size"].as_u64().unwrap_or(0) >= MAX_LINE as u64);
    } else {
        // The facts are kept whole; free text is whole or a prefix ending in `…`.
        let (kept, original) = (&value["details"], &event.details);
        for (key, was) in original.as_object().into_iter().flatten() {
            let now = &kept[key];
            match (
                FREE_TEXT.contains(&key.as_str()),
                was.as_str(),
                now.as_str(),
            ) {
                (true, Some(was), Some(now)) if now != was => {
                    let prefix = now.strip_suffix('…');
                    prop_assert!(prefix.is_some_and(|p| was.starts_with(p)), "{key}: {now:?}");
                }
                _ => prop_assert_eq!(now, was, "{}", key),
            }
        }
        prop_assert_eq!(&value["event_type"], event.event_type.as_str());
        let timestamp = event.timestamp.to_string();
        prop_assert_eq!(&value["timestamp"], timestamp.as_str());
        prop_assert_eq!(&value["source"], source);
        if !event.user.is_empty() {
            prop_assert_eq!(&value["user"], event.user.as_str());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lines_are_json_one_line_and_short(
        timestamp in prop_oneof![
            4 => Just(Timestamp::from_unix_seconds(1_795_673_539)),
            1 => any::<i64>().prop_map(Timestamp::from_unix_seconds),
        ],
        event_type in event_type(),
        user in any_text(20_000),
        source in any_text(20_000),
        details in details(),
    ) {
        let event = Event { timestamp, event_type, user, details, event_id: "6a1f0b8e-3c2d-5e4f-8a9b-0c1d2e3f4a5b".into() };
        check(&event, &source)?;
    }

    #[test]
    fn a_20kb_command_line_is_shortened_and_the_facts_kept(
        unit in prop::collection::vec(any::<char>(), 1..4),
        user in any_text(64),
    ) {
        let unit: String = unit.into_iter().collect();
        let mut cmdline = String::new();
        while cmdline.len() < 20 * 1024 {
            cmdline.push_str(&unit);
        }
        let event = Event {
            timestamp: Timestamp::from_unix_seconds(1_795_673_539),
            event_type: EventType::HostGpuProcessDiscovered,
            user,
            details: json!({"pid": 447, "cmdline": cmdline, "gpu_memory_mb": 1030, "gpu_uuid": "GPU-x"}),
            event_id: String::new(),
        };
        check(&event, "detect-workloads")?;
        let line = event_line(&event, "detect-workloads").map_err(|e| TestCaseError::fail(e.to_string()))?;
        let value: Value = serde_json::from_slice(&line).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let details = &value["details"];
        prop_assert!(details.get("truncated").is_none(), "{details}");
        prop_assert_eq!(&details["pid"], 447);
        prop_assert_eq!(&details["gpu_memory_mb"], 1030);
        prop_assert_eq!(&details["gpu_uuid"], "GPU-x");
        let shortened = details["cmdline"].as_str().unwrap_or_default();
        prop_assert!(shortened.ends_with('…') && shortened.len() < cmdline.len());
        prop_assert_eq!(&value["event_type"], "detection.host_gpu_process_discovered");
    }
}
