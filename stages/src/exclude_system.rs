//! Stage `exclude-system`: drops GPU processes that are part of the system
//! (persistence daemon, DCGM, nvidia-smi itself, X): a process is one when its
//! owner is a system account (uid below `UID_MIN`) AND its name (the basename
//! of `argv[0]` or the kernel's `comm`) is listed. A process of an ordinary
//! user is reported whatever it calls itself. Each exclusion is logged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tracing::{info, warn};

use detect_workloads_api::config::{ConfigError, PluginConfig};
use detect_workloads_api::plugin::{
    Stage, StageContext, StageError, StagePlugin, StageType, Verdict, Workset,
};

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample exclude-system`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[stages.exclude-system]]
process_names = ["nvidia-persistenced", "nv-hostengine", "dcgm", "dcgmi", "nvidia-smi", "Xorg", "X"]
# Only processes of system accounts (uid below uid_min) are excluded: a user's
# process is reported whatever it calls itself. Each exclusion is logged.
# uid_min = 1000                # default: UID_MIN of login_defs, else 1000
login_defs = "/etc/login.defs"
"#;

/// `[[stages.exclude-system]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExcludeSystemConfig {
    /// Process names that are never workloads (when a system account runs them).
    pub process_names: Vec<String>,
    /// Uids below this are system accounts; default: `UID_MIN` of `login_defs`.
    pub uid_min: Option<u32>,
    /// Where `UID_MIN` is read when `uid_min` is not set.
    pub login_defs: PathBuf,
}

/// `UID_MIN` when `login.defs` does not say.
pub const DEFAULT_UID_MIN: u32 = 1000;

impl Default for ExcludeSystemConfig {
    fn default() -> Self {
        Self {
            process_names: [
                "nvidia-persistenced",
                "nv-hostengine",
                "dcgm",
                "dcgmi",
                "nvidia-smi",
                "Xorg",
                "X",
            ]
            .map(String::from)
            .to_vec(),
            uid_min: None,
            login_defs: PathBuf::from("/etc/login.defs"),
        }
    }
}

/// The `exclude-system` stage.
#[derive(Debug)]
pub struct ExcludeSystem {
    names: BTreeSet<String>,
    uid_min: u32,
}

impl ExcludeSystem {
    /// Builds it (reading `login_defs` when `uid_min` is not set).
    pub fn new(config: ExcludeSystemConfig) -> Self {
        let uid_min = config
            .uid_min
            .unwrap_or_else(|| uid_min_from(&config.login_defs));
        Self {
            names: config.process_names.into_iter().collect(),
            uid_min,
        }
    }

    /// Uids below this are system accounts.
    pub fn uid_min(&self) -> u32 {
        self.uid_min
    }

    /// Whether a process of this uid, `comm` and command line is a system one.
    pub fn is_system(&self, uid: u32, comm: &str, cmdline: &str) -> bool {
        uid < self.uid_min && self.matching_name(comm, cmdline).is_some()
    }

    /// The listed name this process goes by (`argv[0]`'s basename or `comm`).
    fn matching_name<'a>(&self, comm: &'a str, cmdline: &'a str) -> Option<&'a str> {
        let argv0 = cmdline.split(' ').next().unwrap_or("");
        let base = argv0.rsplit('/').next().unwrap_or(argv0);
        // The kernel truncates comm to 15 bytes.
        let truncated = |n: &String| n.len() > 15 && comm.len() == 15 && n.starts_with(comm);
        if self.names.contains(base) {
            Some(base)
        } else if self.names.contains(comm) || self.names.iter().any(truncated) {
            Some(comm)
        } else {
            None
        }
    }
}

/// `UID_MIN` from a `login.defs` file; [`DEFAULT_UID_MIN`] when the file is
/// absent, unreadable, or does not set it.
fn uid_min_from(path: &Path) -> u32 {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_uid_min(&text).unwrap_or_else(|| {
            warn!(path = %path.display(), "no valid UID_MIN; uids below {DEFAULT_UID_MIN} are system accounts");
            DEFAULT_UID_MIN
        }),
        Err(e) => {
            info!(path = %path.display(), "cannot read ({e}); uids below {DEFAULT_UID_MIN} are system accounts");
            DEFAULT_UID_MIN
        }
    }
}

/// The value of the last `UID_MIN` line (decimal, `0x` hex or `0` octal, as
/// shadow's `getdef` reads it).
fn parse_uid_min(text: &str) -> Option<u32> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "UID_MIN").then(|| words.next()).flatten()
        })
        .next_back()
        .and_then(|value| {
            let value = value.trim_matches('"');
            if let Some(hex) = value
                .strip_prefix("0x")
                .or_else(|| value.strip_prefix("0X"))
            {
                u32::from_str_radix(hex, 16).ok()
            } else if value.len() > 1 && value.starts_with('0') {
                u32::from_str_radix(&value[1..], 8).ok()
            } else {
                value.parse().ok()
            }
        })
}

impl Stage for ExcludeSystem {
    fn after(&self) -> &'static [StageType] {
        // Its log lines name argv[0]: after secrets are hidden.
        &[StageType("redact")]
    }

    fn run(&self, work: &mut Workset, _ctx: &StageContext<'_>) -> Result<(), StageError> {
        for p in &mut work.processes {
            let f = &p.facts;
            let Some(name) = self.matching_name(&f.comm, &f.cmdline) else {
                continue;
            };
            if f.uid >= self.uid_min {
                continue;
            }
            let argv0 = f
                .argv
                .first()
                .unwrap_or_else(|| f.cmdline.split(' ').next().unwrap_or_default());
            info!(
                pid = f.pid,
                uid = f.uid,
                name,
                exe = f.exe.as_deref().unwrap_or("?"),
                argv0,
                "excluded as a system process"
            );
            p.verdict = Verdict::Drop(format!("system process {name} (uid {})", f.uid));
        }
        Ok(())
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Stage>, ConfigError> {
    Ok(Box::new(ExcludeSystem::new(config.parse()?)))
}

detect_workloads_api::inventory::submit! {
    StagePlugin {
        name: "exclude-system",
        summary: "drops system GPU processes (persistenced, DCGM, nvidia-smi, X): a system owner and a listed name",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(uid_min: Option<u32>, login_defs: &str) -> ExcludeSystem {
        ExcludeSystem::new(ExcludeSystemConfig {
            uid_min,
            login_defs: PathBuf::from(login_defs),
            ..ExcludeSystemConfig::default()
        })
    }

    #[test]
    fn matches_argv0_basename_and_truncated_comm() {
        let s = stage(Some(1000), "");
        assert!(s.is_system(
            0,
            "nvidia-persiste",
            "/usr/bin/nvidia-persistenced --user x"
        ));
        assert!(s.is_system(0, "nvidia-persiste", ""));
        assert!(s.is_system(999, "Xorg", "/usr/lib/xorg/Xorg :0"));
        assert!(!s.is_system(0, "python3", "/opt/venv/bin/python3 train.py"));
        assert!(!s.is_system(0, "python3", "python3 /home/a/X"));
    }

    #[test]
    fn an_ordinary_user_is_never_a_system_process() {
        let s = stage(Some(1000), "");
        for (comm, cmdline) in [
            ("X", "X train.py"),
            ("python3", "Xorg train.py"),
            ("nvidia-smi", "nvidia-smi"),
            ("dcgm", "/home/a/dcgm"),
        ] {
            assert!(s.is_system(0, comm, cmdline), "{cmdline}");
            assert!(!s.is_system(1000, comm, cmdline), "{cmdline}");
            assert!(!s.is_system(4242, comm, cmdline), "{cmdline}");
        }
    }

    #[test]
    fn uid_min_comes_from_login_defs() {
        assert_eq!(parse_uid_min("# UID_MIN 5\nUID_MIN\t\t 2000\n"), Some(2000));
        assert_eq!(parse_uid_min("UID_MIN 1000\nUID_MIN 0x1f4\n"), Some(500));
        assert_eq!(parse_uid_min("UID_MIN 0764\n"), Some(500));
        assert_eq!(parse_uid_min("UID_MAX 60000\n"), None);
        assert_eq!(parse_uid_min("UID_MIN lots\n"), None);
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/login.defs");
        assert_eq!(stage(None, fixture).uid_min(), 500);
        assert_eq!(stage(Some(42), fixture).uid_min(), 42);
        let missing = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/no-such-login.defs"
        );
        assert_eq!(stage(None, missing).uid_min(), DEFAULT_UID_MIN);
    }
}
