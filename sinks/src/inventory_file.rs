//! Sink `inventory-file`: writes the inventory JSON that other tools read, and
//! is the state the next scan reads back (with the scan lock beside it).
//!
//! Writes are atomic and durable: a temporary file in the same directory,
//! fsync, rename over the old file, fsync of the directory; the file is never
//! seen half-written and no temporary file is left behind. A corrupt file is
//! moved aside (`<path>.corrupt-<timestamp>`, with `.N` added when that name
//! is taken) and the scan proceeds as a first scan. Beside it, `<path>.lock`
//! (the scan lock) and `<path>.delivered`: the id of the last outbox every
//! event sink took (the events a state owes, see docs/formats.md). Needs:
//! write access to the file's directory (created if missing).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use detect_workloads_api::async_trait;
use detect_workloads_api::config::{ConfigError, PluginConfig};
use detect_workloads_api::model::Inventory;
use detect_workloads_api::plugin::{
    LockGuard, ScanOutput, Sink, SinkError, SinkPlugin, StateError, StateStore,
};
use detect_workloads_api::timefmt::rfc3339;
use serde::Deserialize;
use tracing::warn;

use crate::fsafe::{
    check_own_file, ensure_safe_dir, is_symlink, open_nofollow, read_own_file, write_atomic,
    write_atomic_unsynced,
};

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample inventory-file`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[sinks.inventory-file]]
path = "/var/lib/ds01/workload-inventory.json"   # also the state read back at the next scan
mode = "0644"
"#;

/// `[[sinks.inventory-file]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InventoryFileConfig {
    /// The inventory file.
    pub path: PathBuf,
    /// Its permission bits, in octal.
    pub mode: String,
}

impl Default for InventoryFileConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/ds01/workload-inventory.json"),
            mode: "0644".to_string(),
        }
    }
}

/// The `inventory-file` sink.
#[derive(Debug)]
pub struct InventoryFile {
    path: PathBuf,
    mode: u32,
}

impl InventoryFile {
    /// A sink writing `path` with permission bits `mode`.
    pub fn new(path: PathBuf, mode: u32) -> Self {
        Self { path, mode }
    }

    fn lock_path(&self) -> PathBuf {
        self.beside(".lock")
    }

    /// `<path><suffix>`, in the same directory.
    fn beside(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        self.path.with_file_name(name)
    }

    /// Writes `bytes` to the file atomically and durably
    /// ([`crate::fsafe::write_atomic`]).
    pub fn write_atomically(&self, bytes: &[u8]) -> Result<(), String> {
        write_atomic(&self.path, bytes, self.mode)
    }

    /// Removes the temporary files a scan killed while writing left behind
    /// (`.<name>.tmp.*` and `.<name>.delivered.tmp.*`, this user's regular
    /// files only). Called under the scan lock, so no scan is writing one.
    fn remove_stale_temporaries(&self) {
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let prefixes = [format!(".{name}.tmp."), format!(".{name}.delivered.tmp.")];
        let Ok(entries) = std::fs::read_dir(crate::fsafe::parent_of(&self.path)) else {
            return;
        };
        let me = nix::unistd::geteuid().as_raw();
        for entry in entries.flatten() {
            let file = entry.file_name();
            let file = file.to_string_lossy();
            if !prefixes.iter().any(|p| file.starts_with(p.as_str())) {
                continue;
            }
            let ours = entry
                .metadata()
                .is_ok_and(|m| m.file_type().is_file() && m.uid() == me);
            if ours && std::fs::remove_file(entry.path()).is_ok() {
                tracing::info!(file = %entry.path().display(), "removed a temporary file an interrupted scan left");
            }
        }
    }

    fn move_aside(&self, why: &str) -> Result<(), String> {
        let stamp = rfc3339(SystemTime::now()).replace(':', "");
        // Never over an earlier copy (two corrupt files within one second);
        // the scan lock is held, so nothing else takes the name meanwhile.
        let aside = (0u32..)
            .map(|n| {
                let mut name = self.path.file_name().unwrap_or_default().to_os_string();
                name.push(format!(".corrupt-{stamp}"));
                if n > 0 {
                    name.push(format!(".{n}"));
                }
                self.path.with_file_name(name)
            })
            .find(|p| std::fs::symlink_metadata(p).is_err())
            .ok_or_else(|| {
                format!(
                    "{} is corrupt ({why}) and no name is left to move it to",
                    self.path.display()
                )
            })?;
        std::fs::rename(&self.path, &aside).map_err(|e| {
            format!(
                "{} is corrupt ({why}) and cannot be moved aside: {e}",
                self.path.display()
            )
        })?;
        warn!(
            "{} is corrupt ({why}); moved to {} and scanning as a first scan",
            self.path.display(),
            aside.display()
        );
        Ok(())
    }
}

/// The inventory in `bytes`, with the errors of `serde_json::from_slice`,
/// the text checked to be UTF-8 once rather than string by string.
fn decode(bytes: &[u8]) -> Result<Inventory, serde_json::Error> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// An exclusive `flock` on the lock file, released when dropped (the file closes).
struct HeldLock(#[allow(dead_code)] File);

impl StateStore for InventoryFile {
    fn peek(&self) -> Result<Option<Inventory>, StateError> {
        tracing::debug!(path = %self.path.display(), "reading the inventory");
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::io(self.path.display().to_string(), e)),
        };
        decode(&bytes).map(Some).map_err(|e| {
            StateError::Other(format!("{}: not an inventory: {e}", self.path.display()))
        })
    }

    fn load(&self) -> Result<Option<Inventory>, StateError> {
        tracing::debug!(path = %self.path.display(), "reading the previous state");
        self.remove_stale_temporaries();
        let read = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)
            .and_then(|mut f| {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut bytes).map(|_| bytes)
            });
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                self.move_aside("a symbolic link, not the inventory")
                    .map_err(StateError::Other)?;
                return Ok(None);
            }
            Err(e) => return Err(StateError::io(self.path.display().to_string(), e)),
        };
        match decode(&bytes) {
            Ok(inventory) => Ok(Some(inventory)),
            Err(e) => {
                self.move_aside(&e.to_string()).map_err(StateError::Other)?;
                Ok(None)
            }
        }
    }

    fn delivered(&self) -> Option<String> {
        let path = self.beside(".delivered");
        match read_own_file(&path, 128) {
            Ok(bytes) => bytes.map(|b| String::from_utf8_lossy(&b).trim().to_string()),
            Err(e) => {
                warn!("{e}; offering the last events again");
                None
            }
        }
    }

    fn set_delivered(&self, id: &str) -> Result<(), StateError> {
        // Unsynced: lost in a power cut, the outbox is only offered again
        // (and its events skipped where the log holds them).
        write_atomic_unsynced(
            &self.beside(".delivered"),
            format!("{id}\n").as_bytes(),
            0o600,
        )
        .map_err(StateError::Other)
    }

    fn lock(&self, wait: Duration) -> Result<LockGuard, StateError> {
        let path = self.lock_path();
        // Checked through the inventory's own path: the directory is the
        // same, and the inventory is what the user configured.
        ensure_safe_dir(&self.path).map_err(StateError::Other)?;
        let start = Instant::now();
        let mut file = open_private_lock(&path).map_err(StateError::Other)?;
        loop {
            match file.try_lock() {
                Ok(()) if still_at(&file, &path) => return Ok(Box::new(HeldLock(file))),
                // Replaced by another scan meanwhile: lock the file there now.
                Ok(()) => file = open_private_lock(&path).map_err(StateError::Other)?,
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => {
                    return Err(StateError::io(format!("cannot lock {}", path.display()), e))
                }
            }
            if start.elapsed() >= wait {
                return Err(StateError::Busy(format!(
                    "another scan holds {} (waited {}); giving up, nothing was changed",
                    path.display(),
                    humantime::format_duration(wait)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Opens the lock file, which only this user may open: created `0600`,
/// never through a link. A link there, or a file with another owner, another
/// type or a looser mode (someone else may hold it open), is removed and the
/// lock file created anew.
fn open_private_lock(path: &Path) -> Result<File, String> {
    for _ in 0..3 {
        let opened = open_nofollow(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600),
            path,
        );
        let file = match opened {
            Ok(file) => file,
            // Never followed; removing a link touches only the link.
            Err(why) if is_symlink(path) => {
                warn!("{why}; replacing it with a private lock file");
                std::fs::remove_file(path)
                    .map_err(|e| format!("{why}, and it cannot be removed: {e}"))?;
                continue;
            }
            Err(why) => return Err(why),
        };
        match check_private(&file, path) {
            Ok(()) => return Ok(file),
            Err(why) => {
                warn!("{why}; replacing it with a private lock file");
                if still_at(&file, path) {
                    std::fs::remove_file(path)
                        .map_err(|e| format!("{why}, and it cannot be removed: {e}"))?;
                }
            }
        }
    }
    Err(format!(
        "cannot create a private lock file {}: it keeps being replaced",
        path.display()
    ))
}

fn check_private(file: &File, path: &Path) -> Result<(), String> {
    let meta = check_own_file(file, path)?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "lock file {} has mode {:04o}, so other users can open and hold it",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Whether `path` still names the file `file` has open.
fn still_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

#[async_trait]
impl Sink for InventoryFile {
    fn describe(&self) -> String {
        format!(
            "writes {} (mode {:04o}), the state read back at the next scan",
            self.path.display(),
            self.mode
        )
    }

    async fn deliver(&self, out: &ScanOutput<'_>) -> Result<(), SinkError> {
        // Compact: a third smaller than pretty-printed, and cheaper to write and
        // to read back at the next scan (`jq .` shows it indented).
        let mut json = crate::json::to_string(out.inventory).map_err(SinkError::Encode)?;
        json.push('\n');
        self.write_atomically(json.as_bytes())
            .map_err(SinkError::new)?;
        tracing::debug!(path = %self.path.display(), "inventory written");
        Ok(())
    }

    fn required(&self) -> bool {
        true
    }

    fn state_store(&self) -> Option<&dyn StateStore> {
        Some(self)
    }
}

/// Why a relative path is refused: it would be resolved against the working
/// directory of each run (`/` under systemd), not the configuration's.
/// `example` is an absolute path to suggest.
pub(crate) fn relative(path: &std::path::Path, example: &str) -> String {
    format!(
        "{:?} is relative: it would be written under the working directory of each run \
         (/ under systemd); give an absolute path such as {example}",
        path.display().to_string(),
    )
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Sink>, ConfigError> {
    let parsed: InventoryFileConfig = config.parse()?;
    let mode =
        crate::fsafe::parse_file_mode(&parsed.mode).map_err(|e| config.invalid("mode", e))?;
    if parsed.path.as_os_str().is_empty() {
        return Err(config.invalid("path", "must not be empty"));
    }
    if parsed.path.is_relative() {
        return Err(config.invalid(
            "path",
            relative(&parsed.path, "/var/lib/ds01/workload-inventory.json"),
        ));
    }
    Ok(Box::new(InventoryFile::new(parsed.path, mode)))
}

detect_workloads_api::inventory::submit! {
    SinkPlugin {
        name: "inventory-file",
        summary: "writes the inventory JSON atomically; also the state read at the next scan",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt;

    fn parse_mode(text: &str) -> Option<u32> {
        crate::fsafe::parse_file_mode(text).ok()
    }

    #[test]
    fn the_state_decodes_as_from_slice_does() {
        let slice =
            |bytes: &[u8]| serde_json::from_slice::<Inventory>(bytes).map_err(|e| e.to_string());
        for bytes in [
            r#"{"last_scan":"2026-11-26T06:11:49Z","containers":{"abc":{"id":"abc","name":"caf\u00e9 \"x\"","origin":"o","user":"u","has_gpu":false,"status":"running","image":"i","detected_at":"2026-11-26T05:40:02Z","labels":{"k":"日"}}}}"#.as_bytes(),
            b"{\"last_scan\":\"\xff\"}",
            b"{\"last_scan\":\"\xe6\x97\"}",
            b"{\"last_scan\":1}",
            b"{\"containers\":{\"a\":{}}}",
            b"[]",
            b"",
            b"{} x",
        ] {
            assert_eq!(decode(bytes).map_err(|e| e.to_string()), slice(bytes));
        }
        // A time that is not one ("d") is read as now (crate::model): the
        // rest of the state still reads.
        let text = r#"{"containers":{"abc":{"id":"abc","name":"caf\u00e9","origin":"o","user":"u","has_gpu":false,"status":"s","image":"日","detected_at":"d"}}}"#;
        let inventory = decode(text.as_bytes()).expect("an inventory");
        assert_eq!(inventory.containers["abc"].name, "café");
        assert_eq!(inventory.containers["abc"].image, "日");
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0644"), Some(0o644));
        assert_eq!(parse_mode("600"), Some(0o600));
        assert_eq!(parse_mode("0o640"), Some(0o640));
        assert_eq!(parse_mode("0888"), None);
        assert_eq!(parse_mode("rw-r--r--"), None);
        // Writable by the group or everyone: anyone could forge the state.
        assert_eq!(parse_mode("0666"), None);
        assert_eq!(parse_mode("0664"), None);
        assert_eq!(parse_mode("0602"), None);
    }

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/inv.json");
        let sink = InventoryFile::new(path.clone(), 0o640);
        sink.write_atomically(b"{}\n").expect("write");
        sink.write_atomically(b"{\"containers\":{}}\n")
            .expect("overwrite");
        let meta = std::fs::metadata(&path).expect("exists");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("inv.json")]);
    }

    #[test]
    fn corrupt_state_is_moved_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("inv.json");
        std::fs::write(&path, "{ not json").expect("write");
        let sink = InventoryFile::new(path.clone(), 0o644);
        assert_eq!(sink.load().map_err(|e| e.to_string()), Ok(None));
        assert!(!path.exists());
        let moved: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            moved.iter().any(|n| n.starts_with("inv.json.corrupt-")),
            "{moved:?}"
        );
    }

    #[test]
    fn second_lock_waits_then_gives_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = InventoryFile::new(dir.path().join("inv.json"), 0o644);
        let held = sink.lock(Duration::from_millis(10)).expect("first lock");
        let err = match sink.lock(Duration::from_millis(120)) {
            Ok(_) => panic!("a second lock must not be granted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("another scan"), "{err}");
        drop(held);
        assert!(sink.lock(Duration::from_millis(10)).is_ok());
    }

    #[test]
    fn a_lock_file_others_can_open_is_replaced_even_while_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = InventoryFile::new(dir.path().join("inv.json"), 0o644);
        let path = sink.lock_path();
        std::fs::write(&path, "").expect("plant");
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).expect("chmod");
        // Someone opened it while it was readable, and holds it.
        let theirs = File::open(&path).expect("open");
        theirs.lock_shared().expect("their lock");
        let held = sink.lock(Duration::from_millis(200)).expect("not blocked");
        let meta = std::fs::symlink_metadata(&path).expect("lock file");
        assert_eq!(meta.mode() & 0o7777, 0o600);
        drop(held);
    }

    #[test]
    fn links_at_the_lock_and_inventory_paths_are_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "keep").expect("write");
        let sink = InventoryFile::new(dir.path().join("inv.json"), 0o644);
        std::os::unix::fs::symlink(&outside, sink.lock_path()).expect("symlink");
        let held = sink.lock(Duration::from_millis(10)).expect("link replaced");
        let meta = std::fs::symlink_metadata(sink.lock_path()).expect("lock");
        assert!(meta.is_file() && meta.mode() & 0o7777 == 0o600, "{meta:?}");
        drop(held);
        std::os::unix::fs::symlink(&outside, &sink.path).expect("symlink");
        assert!(
            matches!(sink.load(), Ok(None)),
            "a link is not read as the state"
        );
        sink.write_atomically(b"{}\n").expect("write");
        assert_eq!(std::fs::read_to_string(&outside).expect("read"), "keep");
        assert!(!std::fs::symlink_metadata(&sink.path)
            .expect("written")
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o777)).expect("chmod");
        let sink = InventoryFile::new(dir.path().join("inv.json"), 0o644);
        let err = sink.write_atomically(b"{}\n").expect_err("refused");
        assert!(err.contains("world-writable"), "{err}");
        assert!(sink.lock(Duration::from_millis(10)).is_err());
        assert!(listing_is_empty(dir.path()));
    }

    fn listing_is_empty(dir: &Path) -> bool {
        std::fs::read_dir(dir).expect("ls").next().is_none()
    }
}
