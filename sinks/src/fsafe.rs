//! Careful file access for sinks that run as root in directories other users
//! may reach: a target directory must not let anyone else replace its entries,
//! and no symbolic link is followed at the final component. Not a plugin.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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
