//! Careful file access for sinks that run as root in directories other users
//! may reach: a target directory must not let anyone else replace its entries,
//! and no symbolic link is followed at the final component. Not a plugin.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The parent directory of `path` (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates the directory of `file` if missing, then checks that only its
/// owner can change its entries: owned by root or by this process's user, and
/// not group- or world-writable unless sticky (like `/tmp`, where links
/// planted by others are defeated by [`open_nofollow`] and exclusive
/// creation). Errors name `file`.
pub fn ensure_safe_dir(file: &Path) -> Result<(), String> {
    let dir = parent_of(file);
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
    std::fs::create_dir_all(dir).map_err(|e| {
        fail(&format!(
            "cannot create its directory {}: {e}",
            dir.display()
        ))
    })?;
    let meta = std::fs::metadata(dir).map_err(|e| fail(&format!("{}: {e}", dir.display())))?;
    check_dir(
        dir,
        meta.uid(),
        meta.mode(),
        nix::unistd::geteuid().as_raw(),
    )
    .map_err(|e| fail(&e))
}

fn check_dir(dir: &Path, owner: u32, mode: u32, euid: u32) -> Result<(), String> {
    if owner != 0 && owner != euid {
        return Err(format!(
            "refusing to write in {}: it is owned by uid {owner}, who could replace files in it; \
             use a directory owned by root",
            dir.display()
        ));
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "refusing to write in {}: it is group- or world-writable (mode {:04o}) without the \
             sticky bit, so others could replace files in it; run `chmod go-w` (or `chmod +t`) on it",
            dir.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Opens `path` with `options`, never through a symbolic link at its last
/// component (`O_NOFOLLOW`); the error says so when one is there.
pub fn open_nofollow(options: &mut OpenOptions, path: &Path) -> Result<File, String> {
    options
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            // ELOOP, or EACCES where the kernel protects links in sticky
            // directories.
            if e.raw_os_error() == Some(libc::ELOOP) || is_symlink(path) {
                format!("refusing {}: it is a symbolic link", path.display())
            } else if e.kind() == ErrorKind::AlreadyExists {
                format!("{} appeared meanwhile: {e}", path.display())
            } else {
                format!("cannot open {}: {e}", path.display())
            }
        })
}

/// Writes `bytes` as `path` atomically and durably, for every sink that
/// replaces a whole file: the directory checked by [`ensure_safe_dir`]
/// (created if missing), a temporary file created exclusively beside it
/// (`O_EXCL`, random name `.<name>.tmp.*`) with permission bits `mode` (set
/// again after creation, whatever the umask), fsync, rename over `path` (a
/// link there is replaced, not followed), fsync of the directory. Readers
/// never see half a file; on error no temporary file is left behind.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    replace(path, bytes, mode, true)
}

/// [`write_atomic`] without the two fsyncs, for a small file whose loss in
/// a power cut costs nothing but a check (the outbox's delivered mark, the
/// event log's receipt): readers still see the old file or the new one,
/// whole, or after a crash possibly an empty one.
pub fn write_atomic_unsynced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    replace(path, bytes, mode, false)
}

fn replace(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> Result<(), String> {
    let dir = parent_of(path);
    ensure_safe_dir(path)?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".tmp.");
    let fail = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(|e| fail(&e))?;
    (|| {
        tmp.as_file()
            .set_permissions(Permissions::from_mode(mode))?;
        tmp.write_all(bytes)?;
        if durable {
            tmp.as_file().sync_all()?;
        }
        Ok::<(), std::io::Error>(())
    })()
    .map_err(|e| fail(&e))?;
    // On error the temporary file is removed when dropped.
    tmp.persist(path).map_err(|e| fail(&e.error))?;
    if !durable {
        return Ok(());
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail(&e))
}

/// Reads a small file this process wrote itself (`limit` bytes at most),
/// never through a symbolic link and only when this process's user owns it:
/// `Ok(None)` when it is missing.
pub fn read_own_file(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, String> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(format!(
                "refusing {}: it is a symbolic link",
                path.display()
            ))
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    check_own_file(&file, path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{} is larger than {limit} bytes", path.display()));
    }
    Ok(Some(bytes))
}

/// Reads a file that configures what root runs, like the main configuration
/// file: when this process runs as root, the file must be owned by root and
/// writable by no one else (checked on the opened file). `what` names it in
/// the error.
pub fn read_trusted(path: &Path, what: &str) -> Result<String, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{what} {}: {e}", path.display());
    let mut file = File::open(path).map_err(|e| fail(&format!("cannot read: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| fail(&format!("cannot read: {e}")))?;
    let euid = nix::unistd::geteuid().as_raw();
    if let Some(why) =
        detect_workloads_api::config::untrusted_because(meta.uid(), meta.mode(), euid)
    {
        return Err(fail(&format!(
            "refusing it: it {why}; fix it with `chown root:root {p} && chmod go-w {p}`",
            p = path.display()
        )));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| fail(&format!("cannot read: {e}")))?;
    Ok(text)
}

/// Whether `path` itself is a symbolic link.
pub fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Checks that an opened file is a regular file owned by this process's user.
pub fn check_own_file(file: &File, path: &Path) -> Result<std::fs::Metadata, String> {
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.is_file() {
        return Err(format!("refusing {}: not a regular file", path.display()));
    }
    if meta.uid() != euid {
        return Err(format!(
            "refusing {}: it is owned by uid {}, not by uid {euid} that runs the scan; \
             remove it",
            path.display(),
            meta.uid()
        ));
    }
    Ok(meta)
}

/// A file mode from the configuration (`"0644"`, `"640"`, `"0o640"`), for a
/// file the scan writes as root and others read: one that lets the group or
/// everyone write is refused, since whoever can write the inventory can forge
/// the state the next scan starts from (and the events it then emits), and
/// whoever can write the event log can forge the lab's reports.
pub fn parse_file_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{text:?} is not an octal mode such as \"0644\""))?;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{text:?} lets {} write the file: use a mode such as \"0644\" or \"0640\"",
            if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            }
        ));
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_others_can_change_are_refused() {
        let d = Path::new("/x");
        assert!(check_dir(d, 0, 0o40755, 0).is_ok());
        assert!(check_dir(d, 0, 0o41777, 0).is_ok(), "sticky like /tmp");
        assert!(check_dir(d, 1000, 0o40755, 1000).is_ok(), "own directory");
        let world = check_dir(d, 0, 0o40777, 0).expect_err("world-writable");
        assert!(world.contains("world-writable (mode 0777)"), "{world}");
        assert!(check_dir(d, 0, 0o40775, 0).is_err(), "group-writable");
        let other = check_dir(d, 4242, 0o40755, 0).expect_err("another owner");
        assert!(other.contains("owned by uid 4242"), "{other}");
    }

    #[test]
    fn atomic_write_replaces_with_the_mode_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        write_atomic(&path, b"one", 0o600).expect("first");
        write_atomic(&path, b"two", 0o644).expect("second");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let mode = std::fs::metadata(&path).expect("meta").mode();
        assert_eq!(mode & 0o7777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o777)).expect("chmod");
        let refused = write_atomic(&path, b"three", 0o644).expect_err("world-writable dir");
        assert!(refused.contains("world-writable"), "{refused}");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
    }

    #[test]
    fn links_are_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").expect("write");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = open_nofollow(OpenOptions::new().append(true), &link).expect_err("link");
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep");
    }
}
