//! Sink `event-log`: appends each transition to a JSON-lines file in the lab's
//! event envelope (schema "1"). Each line is one `write` on a file opened with
//! `O_APPEND` and is kept under 4096 bytes, so lines from concurrent writers
//! never interleave; a line that would be longer has its `details` replaced by
//! `{"truncated":true,"original_size":N}`. A log that cannot be written is a
//! warning: the scan still succeeds. Needs: write access to the file (its
//! directory is created if missing).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use detect_workloads_core::async_trait;
use detect_workloads_core::config::{ConfigError, PluginConfig};
use detect_workloads_core::model::Event;
use detect_workloads_core::plugin::{ScanOutput, Sink, SinkError, SinkPlugin};
use serde::{Deserialize, Serialize};

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample event-log`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[sinks.event-log]]
path = "/var/log/ds01/events.jsonl"
"#;

/// `[[sinks.event-log]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventLogConfig {
    /// The JSON-lines file.
    pub path: PathBuf,
}

impl Default for EventLogConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/log/ds01/events.jsonl"),
        }
    }
}

/// Lines are kept strictly under this many bytes (newline included).
pub const MAX_LINE: usize = 4096;

#[derive(Serialize)]
struct Envelope<'a> {
    timestamp: &'a str,
    event_type: &'a str,
    schema_version: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    user: &'a str,
    source: &'a str,
    details: &'a serde_json::Value,
}

/// One event as its log line (with the newline), truncated to fit [`MAX_LINE`].
pub fn event_line(event: &Event, source: &str) -> Result<Vec<u8>, serde_json::Error> {
    let encode = |details: &serde_json::Value| -> Result<Vec<u8>, serde_json::Error> {
        let mut line = serde_json::to_vec(&Envelope {
            timestamp: &event.timestamp,
            event_type: event.event_type.as_str(),
            schema_version: "1",
            user: &event.user,
            source,
            details,
        })?;
        line.push(b'\n');
        Ok(line)
    };
    let line = encode(&event.details)?;
    if line.len() < MAX_LINE {
        return Ok(line);
    }
    let truncated = encode(&serde_json::json!({"truncated": true, "original_size": line.len()}))?;
    if truncated.len() < MAX_LINE {
        return Ok(truncated);
    }
    // Even the envelope is too long (a huge user name or source): cut its
    // strings, then cut them more. 128 characters of anything are at most 768
    // bytes once escaped, so four of them always fit.
    let details = serde_json::json!({"truncated": true, "original_size": line.len()});
    let mut short = Vec::new();
    for keep in [256, 128] {
        let cut = |s: &str| -> String { s.chars().take(keep).collect() };
        short = serde_json::to_vec(&Envelope {
            timestamp: &cut(&event.timestamp),
            event_type: &cut(event.event_type.as_str()),
            schema_version: "1",
            user: &cut(&event.user),
            source: &cut(source),
            details: &details,
        })?;
        short.push(b'\n');
        if short.len() < MAX_LINE {
            break;
        }
    }
    Ok(short)
}

/// The `event-log` sink.
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
}

#[async_trait]
impl Sink for EventLog {
    async fn deliver(&self, out: &ScanOutput<'_>) -> Result<(), SinkError> {
        if out.events.is_empty() {
            return Ok(());
        }
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            SinkError::new(format!(
                "cannot {what} event log {}: {e}",
                self.path.display()
            ))
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail("create the directory of", &e))?;
        }
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&self.path)
            .map_err(|e| fail("open", &e))?;
        for event in out.events {
            let line = event_line(event, &out.agent.source).map_err(|e| fail("encode for", &e))?;
            // One write per line: with O_APPEND the kernel places it whole.
            let written = file.write(&line).map_err(|e| fail("append to", &e))?;
            if written != line.len() {
                return Err(fail(
                    "append to",
                    &format!("short write ({written} of {} bytes)", line.len()),
                ));
            }
        }
        Ok(())
    }

    fn emits_events(&self) -> bool {
        true
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Sink>, ConfigError> {
    let parsed: EventLogConfig = config.parse()?;
    if parsed.path.as_os_str().is_empty() {
        return Err(config.invalid("path", "must not be empty"));
    }
    Ok(Box::new(EventLog { path: parsed.path }))
}

detect_workloads_core::inventory::submit! {
    SinkPlugin {
        name: "event-log",
        summary: "appends each transition as one JSON line (lab event schema 1)",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detect_workloads_core::model::EventType;

    fn event(user: &str, cmdline: &str) -> Event {
        Event {
            timestamp: "2026-11-26T06:12:19Z".into(),
            event_type: EventType::HostGpuProcessDiscovered,
            user: user.into(),
            details: serde_json::json!({"pid": 447, "cmdline": cmdline}),
        }
    }

    #[test]
    fn envelope_is_compact_and_ordered() {
        let line =
            event_line(&event("alice", "python3 train.py"), "detect-workloads").expect("encodes");
        assert_eq!(
            String::from_utf8(line).expect("utf8"),
            "{\"timestamp\":\"2026-11-26T06:12:19Z\",\"event_type\":\"detection.host_gpu_process_discovered\",\"schema_version\":\"1\",\"user\":\"alice\",\"source\":\"detect-workloads\",\"details\":{\"pid\":447,\"cmdline\":\"python3 train.py\"}}\n"
        );
        let anonymous = event_line(&event("", "x"), "s").expect("encodes");
        assert!(!String::from_utf8_lossy(&anonymous).contains("\"user\""));
    }

    #[test]
    fn long_lines_are_truncated_below_the_limit() {
        let huge = "x".repeat(20_000);
        let line = event_line(&event("alice", &huge), "detect-workloads").expect("encodes");
        assert!(line.len() < MAX_LINE);
        let value: serde_json::Value = serde_json::from_slice(&line).expect("valid json");
        assert_eq!(value["details"]["truncated"], true);
        assert!(value["details"]["original_size"].as_u64().expect("size") > 20_000);
        let absurd =
            event_line(&event(&"u".repeat(10_000), "x"), &"s".repeat(10_000)).expect("encodes");
        assert!(absurd.len() < MAX_LINE);
    }
}
