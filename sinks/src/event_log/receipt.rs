//! What the last delivery appended, kept beside the log as
//! `.<name>.receipt` (mode 0600): the file's device and inode, the offset
//! where our last line ended, and those lines. `copytruncate` rotation
//! (logrotate copies the log, then empties it in place) loses every line
//! appended between its copy and its truncation; the next delivery sees the
//! same file shorter than that offset, looks for those lines' ids in the log
//! and in the copy (`<name>.1`), and appends those in neither. Without a copy
//! to look in (the log emptied by hand) nothing is appended again: a warning
//! says how many lines may be gone.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::fsafe::{open_nofollow, read_own_file, write_atomic_unsynced};

/// At most this many bytes of lines are kept (a larger delivery keeps its
/// last lines only: what copytruncate can cut is the end).
const KEPT: usize = 1 << 20;

/// See the module's documentation.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Receipt {
    dev: u64,
    ino: u64,
    end: u64,
    lines: Vec<String>,
}

/// `.<name>.receipt` beside `log`.
pub fn path_of(log: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(log.file_name().unwrap_or_default());
    name.push(".receipt");
    log.with_file_name(name)
}

/// Whether `file` is the file `(dev, ino)`, now shorter than `end`.
fn cut(file: &File, (dev, ino, end): (u64, u64, u64)) -> bool {
    file.metadata()
        .is_ok_and(|meta| (meta.dev(), meta.ino()) == (dev, ino) && meta.len() < end)
}

/// `<name>.1` beside `log`: where copytruncate leaves its copy.
fn copy_of(log: &Path) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(".1");
    log.with_file_name(name)
}

/// `dev`, `ino` and `end` from the start of a receipt as [`Receipt::save`]
/// writes it (`{"dev":N,"ino":N,"end":N,"lines":[`, field order kept by
/// serde); None for any other text. Enough to tell that the log was not
/// cut without reading the lines (up to a megabyte of escaped JSON).
fn head(bytes: &[u8]) -> Option<(u64, u64, u64)> {
    let rest = bytes.strip_prefix(br#"{"dev":"#)?;
    let (dev, rest) = number_then(rest, br#","ino":"#)?;
    let (ino, rest) = number_then(rest, br#","end":"#)?;
    let (end, _) = number_then(rest, br#","lines":["#)?;
    Some((dev, ino, end))
}

/// The decimal number `bytes` start with, and what follows `then` after it.
fn number_then<'a>(bytes: &'a [u8], then: &[u8]) -> Option<(u64, &'a [u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    let n = std::str::from_utf8(&bytes[..digits]).ok()?.parse().ok()?;
    Some((n, bytes[digits..].strip_prefix(then)?))
}

impl Receipt {
    /// The receipt of the last delivery to `log`, if there is a readable one.
    pub fn load(log: &Path) -> Option<Receipt> {
        let bytes = Self::read(log)?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The receipt of the last delivery to `log` when there is a readable
    /// one and `file` (open on the log) was cut since ([`Receipt::was_cut`]):
    /// [`Receipt::load`] filtered by it, but decoded only when its start
    /// (`head`) does not already tell that the log was not cut.
    pub fn load_if_cut(log: &Path, file: &File) -> Option<Receipt> {
        let bytes = Self::read(log)?;
        // Not cut by what it starts with: whatever follows, no receipt
        // would say it was (a valid one holds these very fields once).
        if head(&bytes).is_some_and(|h| !cut(file, h)) {
            return None;
        }
        let receipt: Receipt = serde_json::from_slice(&bytes).ok()?;
        receipt.was_cut(file).then_some(receipt)
    }

    fn read(log: &Path) -> Option<Vec<u8>> {
        match read_own_file(&path_of(log), (KEPT as u64) * 2 + 4096) {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!("{e}");
                None
            }
        }
    }

    /// Whether `file` (open on the log) is the file of the last delivery,
    /// now shorter than where its lines ended: emptied in place since.
    pub fn was_cut(&self, file: &File) -> bool {
        cut(file, (self.dev, self.ino, self.end))
    }

    /// The lines of the last delivery that neither the log (`in_file`: the
    /// ids it holds) nor copytruncate's copy beside it holds.
    pub fn cut_lines(&self, log: &Path, in_file: &HashSet<String>) -> Vec<Vec<u8>> {
        let copy = open_nofollow(std::fs::OpenOptions::new().read(true), &copy_of(log))
            .ok()
            .and_then(|f| super::ids_in_tail(&f, super::TAIL).ok());
        let Some(in_copy) = copy else {
            warn!(
                path = %log.display(),
                lines = self.lines.len(),
                "the event log was emptied in place with no copy beside it ({}.1): the last lines appended may be gone",
                log.display()
            );
            return Vec::new();
        };
        let cut: Vec<Vec<u8>> = self
            .lines
            .iter()
            .filter(|line| {
                let id = super::event_id_of(line.as_bytes());
                !id.is_empty() && !in_file.contains(&id) && !in_copy.contains(&id)
            })
            .map(|line| line.clone().into_bytes())
            .collect();
        if !cut.is_empty() {
            info!(
                path = %log.display(),
                lines = cut.len(),
                "copytruncate cut lines appended between its copy and its truncation; appending them again"
            );
        }
        cut
    }

    /// Records what a delivery appended to `file` (ending at `end`).
    pub fn save(log: &Path, file: &File, end: u64, lines: &[Vec<u8>]) -> Result<(), String> {
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot stat {}: {e}", log.display()))?;
        let mut kept = Vec::new();
        let mut size = 0;
        for line in lines.iter().rev() {
            size += line.len();
            if size > KEPT {
                break;
            }
            kept.push(String::from_utf8_lossy(line).into_owned());
        }
        kept.reverse();
        let receipt = Receipt {
            dev: meta.dev(),
            ino: meta.ino(),
            end,
            lines: kept,
        };
        let bytes = serde_json::to_vec(&receipt).map_err(|e| e.to_string())?;
        write_atomic_unsynced(&path_of(log), &bytes, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_is_decoded_whole_only_when_the_log_was_cut() {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("events.jsonl");
        std::fs::write(&log, "0123456789\n").expect("log");
        let file = File::open(&log).expect("open");
        let meta = file.metadata().expect("stat");
        let write = |text: String| {
            write_atomic_unsynced(&path_of(&log), text.as_bytes(), 0o600).expect("receipt")
        };
        let (dev, ino) = (meta.dev(), meta.ino());
        for (text, cut) in [
            (
                format!(r#"{{"dev":{dev},"ino":{ino},"end":11,"lines":["a"]}}"#),
                false,
            ),
            (
                format!(r#"{{"dev":{dev},"ino":{ino},"end":12,"lines":["a"]}}"#),
                true,
            ),
            (
                format!(
                    r#"{{"dev":{dev},"ino":{},"end":12,"lines":["a"]}}"#,
                    ino + 1
                ),
                false,
            ),
            (
                format!(r#"{{"dev":{dev},"ino":{ino},"end":12,"lines":[1]}}"#),
                false,
            ),
            (format!(r#"{{"dev":{dev},"ino":{ino},"end":12}}"#), false),
            (
                format!(r#"{{"lines":["a","b"],"end":99,"ino":{ino},"dev":{dev}}}"#),
                true,
            ),
            ("not json".to_string(), false),
            // Not as `save` writes it: decoded whole.
            (
                format!(r#"{{ "dev": {dev}, "ino": {ino}, "end": 12, "lines": ["a"] }}"#),
                true,
            ),
            (
                format!(r#"{{"dev":{dev},"ino":{ino},"end":1.2e1,"lines":["a"]}}"#),
                false,
            ),
            (
                format!(r#"{{"dev":0{dev},"ino":{ino},"end":12,"lines":["a"]}}"#),
                false,
            ),
            (
                format!(r#"{{"dev":{dev},"ino":{ino},"end":99999999999999999999,"lines":[]}}"#),
                false,
            ),
            // As `save` writes it, but broken after the start.
            (
                format!(r#"{{"dev":{dev},"ino":{ino},"end":12,"lines":["a",]}}"#),
                false,
            ),
            (
                format!(r#"{{"dev":{dev},"ino":{ino},"end":11,"lines":["a"],"end":12}}"#),
                false,
            ),
            (
                format!(r#"{{"dev":{dev},"ino":{ino},"end":12,"lines":["a"],"end":11}}"#),
                false,
            ),
        ] {
            write(text.clone());
            let whole = Receipt::load(&log).filter(|r| r.was_cut(&file));
            let lazy = Receipt::load_if_cut(&log, &file);
            assert_eq!(whole.is_some(), cut, "{text}");
            assert_eq!(
                lazy.map(|r| (r.end, r.lines)),
                whole.map(|r| (r.end, r.lines)),
                "{text}"
            );
        }
        // What `save` writes starts as `head` reads it.
        Receipt::save(&log, &file, 7, &[b"{\"a\":\"\\\"\"}\n".to_vec()]).expect("save");
        let saved = std::fs::read(path_of(&log)).expect("read");
        assert_eq!(head(&saved), Some((dev, ino, 7)));
        assert_eq!(head(br#"{ "dev":1,"ino":2,"end":3,"lines":[]}"#), None);
    }
}
