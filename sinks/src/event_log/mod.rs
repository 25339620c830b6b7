//! Sink `event-log`: appends each transition to a JSON-lines file in the lab's
//! event envelope (schema "1"). Each line is one `write` on a file opened with
//! `O_APPEND` and is kept under 4096 bytes, so lines from concurrent writers
//! never interleave; a line that would be longer has its free-text fields
//! (command line, name, image) shortened first, and only if that is not enough
//! its `details` replaced by `{"truncated":true,"original_size":N}`. JSON
//! escapes U+2028, U+2029 and C0/C1 controls. If the file does not end in
//! a newline (another writer crashed mid-line), the first line starts with
//! one. Each line ends with the event's `event_id`; events an earlier cycle
//! owes ([`ScanOutput::owed`]) are appended only if none of the complete
//! lines in the last [`TAIL`] bytes carries their id; lines a `copytruncate`
//! rotation cut are appended again ([`receipt`]). The file is opened with
//! `O_NOFOLLOW`, must belong to the user running the scan, and its directory
//! must not be writable by others (unless sticky). A log that cannot be
//! written is a warning: the scan still succeeds (its events stay owed).
//! Needs: write access to the file and to its directory, for the receipt
//! (the directory is created if missing).

use std::collections::HashSet;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{Seek, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use detect_workloads_api::async_trait;
use detect_workloads_api::config::{ConfigError, PluginConfig};
use detect_workloads_api::model::Event;
use detect_workloads_api::plugin::{ScanOutput, Sink, SinkError, SinkPlugin};
use detect_workloads_api::timefmt::Timestamp;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::fsafe::{check_own_file, ensure_safe_dir, open_nofollow};

pub mod receipt;
use receipt::Receipt;

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample event-log`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[sinks.event-log]]
path = "/var/log/ds01/events.jsonl"
mode = "0644"                   # when it creates the file; never writable by group or others
"#;

/// `[[sinks.event-log]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventLogConfig {
    /// The JSON-lines file.
    pub path: PathBuf,
    /// Its permission bits when created, in octal; group- or world-writable
    /// modes are refused.
    pub mode: String,
}

impl Default for EventLogConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/log/ds01/events.jsonl"),
            mode: "0644".to_string(),
        }
    }
}

/// Lines are kept strictly under this many bytes (newline included), so
/// that one starting with a newline is still one `write` of at most 4096.
pub const MAX_LINE: usize = 4096;

/// How much of the log's end is searched for the ids of owed events: they
/// were appended (if at all) by the cycle before, moments ago.
pub const TAIL: u64 = 4 << 20;

#[derive(Serialize)]
struct Envelope<'a> {
    timestamp: Timestamp,
    event_type: &'a str,
    schema_version: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    user: &'a str,
    source: &'a str,
    details: &'a serde_json::Value,
    #[serde(skip_serializing_if = "str::is_empty")]
    event_id: &'a str,
}

/// Free-text fields of `details`, shortened first when a line is too long.
const FREE_TEXT: [&str; 3] = ["cmdline", "name", "image"];

/// One event as its log line (with the newline), kept under [`MAX_LINE`]:
/// first the free-text fields are shortened (ending in `…`), keeping pid,
/// user, memory, GPU and ids; only if that is not enough is `details`
/// replaced by `{"truncated":true,"original_size":N}`.
pub fn event_line(event: &Event, source: &str) -> Result<Vec<u8>, serde_json::Error> {
    let encode = |details: &serde_json::Value| -> Result<Vec<u8>, serde_json::Error> {
        let mut line = crate::json::to_string(&Envelope {
            timestamp: event.timestamp,
            event_type: event.event_type.as_str(),
            schema_version: "1",
            user: &event.user,
            source,
            details,
            event_id: &event.event_id,
        })?;
        line.push('\n');
        Ok(line.into_bytes())
    };
    let line = encode(&event.details)?;
    if line.len() < MAX_LINE {
        return Ok(line);
    }
    // 64 characters are at most 384 bytes once escaped, so three such
    // fields leave room for the facts.
    for keep in [1024, 256, 64] {
        let shortened = encode(&shorten_free_text(&event.details, keep))?;
        if shortened.len() < MAX_LINE {
            return Ok(shortened);
        }
    }
    let truncated = encode(&serde_json::json!({"truncated": true, "original_size": line.len()}))?;
    if truncated.len() < MAX_LINE {
        return Ok(truncated);
    }
    // Even the envelope is too long (a huge user name or source): cut its
    // strings, then cut them more. 128 characters of anything are at most 768
    // bytes once escaped, so four of them always fit.
    let details = serde_json::json!({"truncated": true, "original_size": line.len()});
    let mut short = String::new();
    for keep in [256, 128] {
        short = crate::json::to_string(&Envelope {
            // Twenty characters: nothing to cut.
            timestamp: event.timestamp,
            event_type: &cut(event.event_type.as_str(), keep),
            schema_version: "1",
            user: &cut(&event.user, keep),
            source: &cut(source, keep),
            details: &details,
            event_id: &cut(&event.event_id, 64),
        })?;
        short.push('\n');
        if short.len() < MAX_LINE {
            break;
        }
    }
    Ok(short.into_bytes())
}

/// `details` with each [`FREE_TEXT`] string longer than `keep` characters cut
/// to `keep` and ended with `…`.
fn shorten_free_text(details: &serde_json::Value, keep: usize) -> serde_json::Value {
    let mut details = details.clone();
    if let Some(map) = details.as_object_mut() {
        for key in FREE_TEXT {
            if let Some(serde_json::Value::String(text)) = map.get_mut(key) {
                if text.chars().nth(keep).is_some() {
                    *text = format!("{}…", cut(text, keep));
                }
            }
        }
    }
    details
}

fn cut(s: &str, keep: usize) -> String {
    s.chars().take(keep).collect()
}

/// Whether `file` is empty or ends in a newline.
fn ends_in_newline(file: &File) -> std::io::Result<bool> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(true);
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    Ok(last[0] == b'\n')
}

/// The `event_id`s of the complete, valid lines in the last `tail` bytes of
/// `file` (a line cut by the start of that window, or left half-written by
/// a crashed writer, does not count).
pub fn ids_in_tail(file: &File, tail: u64) -> std::io::Result<HashSet<String>> {
    let len = file.metadata()?.len();
    let start = len.saturating_sub(tail);
    let mut bytes = vec![0u8; (len - start) as usize];
    file.read_exact_at(&mut bytes, start)?;
    let mut lines = bytes.split(|&b| b == b'\n');
    if start > 0 {
        lines.next();
    }
    Ok(lines.map(event_id_of).filter(|id| !id.is_empty()).collect())
}

/// The `event_id` of one line (a leading newline allowed); empty if it has
/// none or is not a complete JSON line.
pub fn event_id_of(line: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Id {
        #[serde(default)]
        event_id: String,
    }
    let line = line.strip_prefix(b"\n").unwrap_or(line);
    serde_json::from_slice::<Id>(line)
        .map(|i| i.event_id)
        .unwrap_or_default()
}

/// The `event-log` sink.
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    mode: u32,
}

impl EventLog {
    /// Opens the log for appending: in a directory only its owner can change,
    /// never through a link, and only a file of this user; write bits for
    /// others are removed.
    fn open(&self) -> Result<File, String> {
        ensure_safe_dir(&self.path)?;
        let file = open_nofollow(
            OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(self.mode),
            &self.path,
        )?;
        let mode = check_own_file(&file, &self.path)?.mode() & 0o7777;
        if mode & 0o022 != 0 {
            warn!(
                "{} was writable by others (mode {mode:04o}); removing that",
                self.path.display()
            );
            file.set_permissions(Permissions::from_mode(mode & !0o022))
                .map_err(|e| format!("cannot chmod {}: {e}", self.path.display()))?;
        }
        Ok(file)
    }
}

#[async_trait]
impl Sink for EventLog {
    fn describe(&self) -> String {
        format!("appends to {}", self.path.display())
    }

    fn events_file(&self) -> Option<&std::path::Path> {
        Some(&self.path)
    }

    async fn deliver(&self, out: &ScanOutput<'_>) -> Result<(), SinkError> {
        // Opened (so created, empty) even with no event: a `tail -F` started
        // before the first transition finds the file.
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            SinkError::new(format!(
                "cannot {what} event log {}: {e}",
                self.path.display()
            ))
        };
        let mut file = self
            .open()
            .map_err(|e| SinkError::new(format!("event log: {e}")))?;
        let receipt = Receipt::load_if_cut(&self.path, &file);
        let cut = receipt.is_some();
        let held = if out.owed.is_empty() && !cut {
            HashSet::new()
        } else {
            ids_in_tail(&file, TAIL).map_err(|e| fail("read", &e))?
        };
        let mut lines = match (&receipt, cut) {
            (Some(receipt), true) => receipt.cut_lines(&self.path, &held),
            _ => Vec::new(),
        };
        let again: HashSet<String> = lines.iter().map(|l| event_id_of(l)).collect();
        let owed: Vec<&Event> = out
            .owed
            .iter()
            .filter(|e| !held.contains(e.event_id.as_str()) && !again.contains(&e.event_id))
            .collect();
        if !out.owed.is_empty() {
            tracing::info!(
                owed = out.owed.len(),
                appending = owed.len(),
                "appending the events an earlier scan owed that the log lacks"
            );
        }
        for event in owed.into_iter().chain(out.events) {
            lines.push(event_line(event, &out.agent.source).map_err(|e| fail("encode for", &e))?);
        }
        for (n, line) in lines.iter().enumerate() {
            let mut bytes = std::borrow::Cow::from(line.as_slice());
            if n == 0 && !ends_in_newline(&file).map_err(|e| fail("read", &e))? {
                let mut with = Vec::with_capacity(line.len() + 1);
                with.push(b'\n');
                with.extend_from_slice(line);
                bytes = with.into();
            }
            // One write per line: with O_APPEND the kernel places it whole.
            let written = file.write(&bytes).map_err(|e| fail("append to", &e))?;
            if written != bytes.len() {
                return Err(fail(
                    "append to",
                    &format!("short write ({written} of {} bytes)", bytes.len()),
                ));
            }
        }
        if !lines.is_empty() || cut {
            // Where our last line ends (O_APPEND left the offset there).
            let end = file
                .stream_position()
                .map_err(|e| fail("read the offset of", &e))?;
            if let Err(e) = Receipt::save(&self.path, &file, end, &lines) {
                warn!(
                    "{e}: a copytruncate rotation now could cut the lines just appended unnoticed"
                );
            }
        }
        tracing::debug!(path = %self.path.display(), events = out.events.len(), "events appended");
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
    if parsed.path.is_relative() {
        return Err(config.invalid(
            "path",
            crate::inventory_file::relative(&parsed.path, "/var/log/ds01/events.jsonl"),
        ));
    }
    let mode =
        crate::fsafe::parse_file_mode(&parsed.mode).map_err(|e| config.invalid("mode", e))?;
    Ok(Box::new(EventLog {
        path: parsed.path,
        mode,
    }))
}

detect_workloads_api::inventory::submit! {
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
    use detect_workloads_api::model::EventType;

    fn event(user: &str, cmdline: &str) -> Event {
        Event {
            timestamp: "2026-11-26T06:12:19Z".parse().expect("time"),
            event_type: EventType::HostGpuProcessDiscovered,
            user: user.into(),
            details: serde_json::json!({"pid": 447, "cmdline": cmdline}),
            event_id: String::new(),
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
    fn a_huge_command_line_is_shortened_and_the_facts_kept() {
        let huge = "python3 train.py ".repeat(120_000); // 2 MB
        let mut e = event("alice", &huge);
        e.details["gpu_memory_mb"] = 40_960.into();
        e.details["gpu_uuid"] = "GPU-56c0b0b8-eb5c-605d-11d6-1bac317b478c".into();
        let line = event_line(&e, "detect-workloads").expect("encodes");
        assert!(line.len() < MAX_LINE, "{}", line.len());
        let value: serde_json::Value = serde_json::from_slice(&line).expect("valid json");
        let details = &value["details"];
        assert_eq!(details["pid"], 447);
        assert_eq!(details["gpu_memory_mb"], 40_960);
        assert_eq!(
            details["gpu_uuid"],
            "GPU-56c0b0b8-eb5c-605d-11d6-1bac317b478c"
        );
        assert_eq!(value["user"], "alice");
        let cmdline = details["cmdline"].as_str().expect("cmdline kept");
        assert!(cmdline.starts_with("python3 train.py python3"), "{cmdline}");
        assert!(cmdline.ends_with('…'));
        assert!(details.get("truncated").is_none());
    }

    #[test]
    fn escaped_text_is_counted_when_shortening() {
        // Each U+2028 becomes six bytes once escaped.
        let mut e = event("bob", &"\u{2028}".repeat(3000));
        e.details["name"] = "\u{85}".repeat(3000).into();
        e.details["image"] = "\u{1b}".repeat(3000).into();
        let line = event_line(&e, "detect-workloads").expect("encodes");
        assert!(line.len() < MAX_LINE, "{}", line.len());
        let value: serde_json::Value = serde_json::from_slice(&line).expect("valid json");
        assert_eq!(value["details"]["pid"], 447);
    }

    #[test]
    fn long_lines_are_truncated_below_the_limit() {
        let mut e = event("alice", "x");
        e.details["other"] = "y".repeat(20_000).into();
        let line = event_line(&e, "detect-workloads").expect("encodes");
        assert!(line.len() < MAX_LINE);
        let value: serde_json::Value = serde_json::from_slice(&line).expect("valid json");
        assert_eq!(value["details"]["truncated"], true);
        assert!(value["details"]["original_size"].as_u64().expect("size") > 20_000);
        let absurd =
            event_line(&event(&"u".repeat(10_000), "x"), &"s".repeat(10_000)).expect("encodes");
        assert!(absurd.len() < MAX_LINE);
    }

    #[test]
    fn a_link_or_a_foreign_log_is_not_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "keep").expect("write");
        let path = dir.path().join("events.jsonl");
        std::os::unix::fs::symlink(&outside, &path).expect("symlink");
        let log = EventLog { path, mode: 0o644 };
        let err = log.open().expect_err("a link is refused");
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&outside).expect("read"), "keep");
    }

    #[test]
    fn others_write_bits_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "").expect("write");
        std::fs::set_permissions(&path, Permissions::from_mode(0o666)).expect("chmod");
        EventLog {
            path: path.clone(),
            mode: 0o644,
        }
        .open()
        .expect("opens");
        let mode = std::fs::metadata(&path).expect("meta").mode() & 0o7777;
        assert_eq!(mode, 0o644);
    }
}
