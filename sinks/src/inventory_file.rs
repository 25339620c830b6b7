//! Sink `inventory-file`: writes the inventory JSON that other tools read, and
//! is the state the next scan reads back (with the scan lock beside it).
//!
//! Writes are atomic and durable: a temporary file in the same directory,
//! fsync, rename over the old file, fsync of the directory; the file is never
//! seen half-written and no temporary file is left behind. A corrupt file is
//! moved aside (`<path>.corrupt-<timestamp>`, with `.N` added when that name
//! is taken) and the scan proceeds as a first scan. Needs: write access to the
//! file's directory (created if missing).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use detect_workloads_core::async_trait;
use detect_workloads_core::config::{ConfigError, PluginConfig};
use detect_workloads_core::model::Inventory;
use detect_workloads_core::plugin::{
    LockGuard, ScanOutput, Sink, SinkError, SinkPlugin, StateError, StateStore,
};
use detect_workloads_core::timefmt::rfc3339;
use serde::Deserialize;
use tracing::warn;

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

fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl InventoryFile {
    /// A sink writing `path` with permission bits `mode`.
    pub fn new(path: PathBuf, mode: u32) -> Self {
        Self { path, mode }
    }

    fn lock_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        self.path.with_file_name(name)
    }

    /// Writes `bytes` to the file atomically and durably.
    pub fn write_atomically(&self, bytes: &[u8]) -> Result<(), String> {
        let dir = parent_of(&self.path);
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(self.path.file_name().unwrap_or_default());
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(self.mode)
                .open(&tmp)?;
            // The umask may have cleared bits the administrator asked for.
            file.set_permissions(std::fs::Permissions::from_mode(self.mode))?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            File::open(dir)?.sync_all()
        })();
        result.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", self.path.display())
        })
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

/// An exclusive `flock` on the lock file, released when dropped (the file closes).
struct HeldLock(#[allow(dead_code)] File);

impl StateStore for InventoryFile {
    fn load(&self) -> Result<Option<Inventory>, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::io(self.path.display().to_string(), e)),
        };
        match serde_json::from_slice::<Inventory>(&bytes) {
            Ok(inventory) => Ok(Some(inventory)),
            Err(e) => {
                self.move_aside(&e.to_string()).map_err(StateError::Other)?;
                Ok(None)
            }
        }
    }

    fn lock(&self, wait: Duration) -> Result<LockGuard, StateError> {
        let path = self.lock_path();
        std::fs::create_dir_all(parent_of(&path)).map_err(|e| {
            StateError::io(
                format!("cannot create the directory of {}", path.display()),
                e,
            )
        })?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|e| StateError::io(format!("cannot open lock file {}", path.display()), e))?;
        let start = Instant::now();
        loop {
            // SAFETY: plain syscall on a descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(Box::new(HeldLock(file)));
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) && err.kind() != ErrorKind::Interrupted
            {
                return Err(StateError::io(
                    format!("cannot lock {}", path.display()),
                    err,
                ));
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

#[async_trait]
impl Sink for InventoryFile {
    async fn deliver(&self, out: &ScanOutput<'_>) -> Result<(), SinkError> {
        // Compact: a third smaller than pretty-printed, and cheaper to write and
        // to read back at the next scan (`jq .` shows it indented).
        let mut json = serde_json::to_vec(out.inventory).map_err(SinkError::Encode)?;
        json.push(b'\n');
        self.write_atomically(&json).map_err(SinkError::new)
    }

    fn required(&self) -> bool {
        true
    }

    fn state_store(&self) -> Option<&dyn StateStore> {
        Some(self)
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Sink>, ConfigError> {
    let parsed: InventoryFileConfig = config.parse()?;
    let mode = parse_mode(&parsed.mode).ok_or_else(|| {
        config.invalid(
            "mode",
            format!("{:?} is not an octal mode such as \"0644\"", parsed.mode),
        )
    })?;
    if parsed.path.as_os_str().is_empty() {
        return Err(config.invalid("path", "must not be empty"));
    }
    Ok(Box::new(InventoryFile::new(parsed.path, mode)))
}

detect_workloads_core::inventory::submit! {
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

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0644"), Some(0o644));
        assert_eq!(parse_mode("600"), Some(0o600));
        assert_eq!(parse_mode("0o640"), Some(0o640));
        assert_eq!(parse_mode("0888"), None);
        assert_eq!(parse_mode("rw-r--r--"), None);
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
}
