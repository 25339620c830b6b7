//! Stage `exclude-system`: drops GPU processes that are part of the system
//! (persistence daemon, DCGM, nvidia-smi itself, X), matched by process name:
//! the basename of `argv[0]` or the kernel's `comm`.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::config::{ConfigError, PluginConfig};
use crate::plugin::{Stage, StageContext, StageError, StagePlugin, Verdict, Workset};

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample exclude-system`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[stages.exclude-system]]
process_names = ["nvidia-persistenced", "nv-hostengine", "dcgm", "dcgmi", "nvidia-smi", "Xorg", "X"]
"#;

/// `[[stages.exclude-system]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExcludeSystemConfig {
    /// Process names that are never workloads.
    pub process_names: Vec<String>,
}

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
        }
    }
}

/// The `exclude-system` stage.
#[derive(Debug)]
pub struct ExcludeSystem {
    names: BTreeSet<String>,
}

impl ExcludeSystem {
    /// Builds it.
    pub fn new(config: ExcludeSystemConfig) -> Self {
        Self {
            names: config.process_names.into_iter().collect(),
        }
    }

    /// Whether a process with this `comm` and command line is a system one.
    pub fn is_system(&self, comm: &str, cmdline: &str) -> bool {
        let argv0 = cmdline.split(' ').next().unwrap_or("");
        let base = argv0.rsplit('/').next().unwrap_or(argv0);
        // The kernel truncates comm to 15 bytes.
        self.names.contains(base)
            || self.names.contains(comm)
            || self
                .names
                .iter()
                .any(|n| n.len() > 15 && comm.len() == 15 && n.starts_with(comm))
    }
}

impl Stage for ExcludeSystem {
    fn run(&self, work: &mut Workset, _ctx: &StageContext<'_>) -> Result<(), StageError> {
        for p in &mut work.processes {
            if self.is_system(&p.facts.comm, &p.facts.cmdline) {
                p.verdict = Verdict::Drop(format!("system process {}", p.facts.comm));
            }
        }
        Ok(())
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Stage>, ConfigError> {
    Ok(Box::new(ExcludeSystem::new(config.parse()?)))
}

inventory::submit! {
    StagePlugin {
        name: "exclude-system",
        summary: "drops system GPU processes (persistenced, DCGM, nvidia-smi, X) by name",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_argv0_basename_and_truncated_comm() {
        let s = ExcludeSystem::new(ExcludeSystemConfig::default());
        assert!(s.is_system("nvidia-persiste", "/usr/bin/nvidia-persistenced --user x"));
        assert!(s.is_system("nvidia-persiste", ""));
        assert!(s.is_system("Xorg", "/usr/lib/xorg/Xorg :0"));
        assert!(!s.is_system("python3", "/opt/venv/bin/python3 train.py"));
        assert!(!s.is_system("python3", "python3 /home/a/X"));
    }
}
