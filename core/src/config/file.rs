//! Reading a configuration file that can be trusted: it names commands and
//! libraries that run with the scan's privileges, so when the scan runs as
//! root the file must be owned by root and writable by no one else. The
//! built-in default configuration is exempt.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use detect_workloads_api::config::{untrusted_because, ConfigError};

/// Reads `path` after checking, on the opened file, who may change it.
pub fn read_trusted(path: &Path) -> Result<String, ConfigError> {
    let error = |message: String| ConfigError {
        file: path.display().to_string(),
        line: None,
        message,
    };
    let mut file = std::fs::File::open(path).map_err(|e| error(format!("cannot read: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| error(format!("cannot read: {e}")))?;
    // Its owner and mode do not matter then: it is not a file at all.
    if !meta.is_file() {
        return Err(error(format!(
            "is not a file but {}: give the configuration file's path \
             (for example /etc/ds01/detect-workloads.toml)",
            if meta.is_dir() {
                "a directory"
            } else {
                "a device, socket or pipe"
            }
        )));
    }
    let euid = nix::unistd::geteuid().as_raw();
    untrusted_because(meta.uid(), meta.mode(), euid).map_or(Ok(()), |why| {
        Err(error(format!(
            "refusing a configuration file that {why}: it names commands and libraries \
             that run as root; fix it with `chown root:root {p} && chmod go-w {p}`",
            p = path.display()
        )))
    })?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| error(format!("cannot read: {e}")))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_no_configuration_and_gets_no_chmod_advice() {
        let err = read_trusted(Path::new("/")).expect_err("a directory");
        assert!(err.message.contains("not a file but a directory"), "{err}");
        assert!(!err.message.contains("chmod"), "{err}");
    }

    #[test]
    fn root_trusts_only_files_only_root_can_change() {
        assert_eq!(untrusted_because(0, 0o100644, 0), None);
        assert_eq!(untrusted_because(0, 0o100600, 0), None);
        let world = untrusted_because(0, 0o100666, 0).expect("world-writable");
        assert!(world.contains("mode 0666"), "{world}");
        assert!(
            untrusted_because(0, 0o100664, 0).is_some(),
            "group-writable"
        );
        let owner = untrusted_because(4242, 0o100644, 0).expect("another owner");
        assert!(owner.contains("uid 4242"), "{owner}");
        assert_eq!(untrusted_because(4242, 0o100666, 4242), None, "not root");
        assert_eq!(untrusted_because(1000, 0o100666, 1000), None, "not root");
        let writable = untrusted_because(0, 0o100664, 0).expect("group-writable");
        assert!(writable.contains("0664"), "{writable}");
    }
}
