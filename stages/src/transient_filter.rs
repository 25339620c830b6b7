//! Stage `transient-filter`: a GPU process (on the host or in a container) is
//! reported only after it was
//! seen in `min_scans` consecutive scans (the core counts them in
//! `seen_scans`, keyed by PID and start time); until then it waits in
//! `_pending_processes` (`_pending_container_processes`) and no event is
//! emitted for it.

use serde::Deserialize;

use detect_workloads_api::config::{ConfigError, PluginConfig};
use detect_workloads_api::plugin::{
    Stage, StageContext, StageError, StagePlugin, StageType, Verdict, Workset,
};

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample transient-filter`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[stages.transient-filter]]
min_scans = 2                   # a host GPU process is reported after this many consecutive scans
"#;

/// `[[stages.transient-filter]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransientFilterConfig {
    /// Consecutive scans before a process is reported.
    pub min_scans: u32,
}

impl Default for TransientFilterConfig {
    fn default() -> Self {
        Self { min_scans: 2 }
    }
}

/// The `transient-filter` stage.
#[derive(Debug)]
pub struct TransientFilter {
    config: TransientFilterConfig,
}

impl Stage for TransientFilter {
    fn after(&self) -> &'static [StageType] {
        &[StageType("exclude-system")]
    }

    fn run(&self, work: &mut Workset, _ctx: &StageContext<'_>) -> Result<(), StageError> {
        for p in work.all_processes_mut() {
            if p.verdict == Verdict::Report
                && !p.confirmed_before
                && p.entry.seen_scans < self.config.min_scans
            {
                p.verdict = Verdict::Pending;
            }
        }
        Ok(())
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Stage>, ConfigError> {
    let parsed: TransientFilterConfig = config.parse()?;
    if parsed.min_scans == 0 {
        return Err(config.invalid("min_scans", "must be at least 1"));
    }
    Ok(Box::new(TransientFilter { config: parsed }))
}

detect_workloads_api::inventory::submit! {
    StagePlugin {
        name: "transient-filter",
        summary: "reports a host GPU process only after min_scans consecutive sightings",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::with_context;
    use detect_workloads_api::model::{ProcessEntry, ProcessFacts};
    use detect_workloads_api::plugin::ProcessDraft;

    #[test]
    fn pending_until_min_scans_unless_confirmed_before() {
        let stage = TransientFilter {
            config: TransientFilterConfig { min_scans: 3 },
        };
        let draft = |seen, confirmed_before, verdict| ProcessDraft {
            facts: ProcessFacts::default(),
            entry: ProcessEntry {
                seen_scans: seen,
                ..Default::default()
            },
            confirmed_before,
            verdict,
        };
        let mut work = Workset {
            containers: vec![],
            processes: vec![
                draft(1, false, Verdict::Report),
                draft(3, false, Verdict::Report),
                draft(1, true, Verdict::Report),
                draft(1, false, Verdict::Drop("x".into())),
            ],
            container_processes: vec![],
        };
        with_context(|ctx| stage.run(&mut work, ctx)).expect("never fails");
        let verdicts: Vec<_> = work.processes.iter().map(|p| p.verdict.clone()).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Pending,
                Verdict::Report,
                Verdict::Report,
                Verdict::Drop("x".into())
            ]
        );
    }
}
