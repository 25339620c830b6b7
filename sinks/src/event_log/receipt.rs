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

/// `<name>.1` beside `log`: where copytruncate leaves its copy.
fn copy_of(log: &Path) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(".1");
    log.with_file_name(name)
}

impl Receipt {
    /// The receipt of the last delivery to `log`, if there is a readable one.
    pub fn load(log: &Path) -> Option<Receipt> {
        match read_own_file(&path_of(log), (KEPT as u64) * 2 + 4096) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
            Ok(None) => None,
            Err(e) => {
                warn!("{e}");
                None
            }
        }
    }

    /// Whether `file` (open on the log) is the file of the last delivery,
    /// now shorter than where its lines ended: emptied in place since.
    pub fn was_cut(&self, file: &File) -> bool {
        file.metadata().is_ok_and(|meta| {
            (meta.dev(), meta.ino()) == (self.dev, self.ino) && meta.len() < self.end
        })
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
