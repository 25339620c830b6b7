//! `detect-workloads validate`: load the configuration (every check a scan
//! makes) and say what would run, with the settings that matter.

use std::process::ExitCode;

use detect_workloads_core::config::{human_duration, Config, StageChoice};

use super::Cli;

/// Exit 0 with the description, or 2 with what to change.
pub fn run(cli: &Cli) -> ExitCode {
    let overrides = match super::overrides(&cli.sinks, cli.dry_run, cli.format) {
        Ok(o) => o,
        Err(message) => return super::usage_error(message),
    };
    match super::load(cli, &overrides) {
        Ok(config) => {
            print!("{}", describe(&config));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// What a configuration would run, for `validate`: where it came from, the
/// agent's settings, and each plugin instance with its own description.
pub fn describe(config: &Config) -> String {
    let mut out = format!("configuration OK: {}\n", config.origin);
    out += &format!(
        "agent: scan_timeout {}, lock_timeout {}, source {:?}, interval {}, gpu_interval {} \
         (interval and gpu_interval: watch mode)\n",
        human_duration(config.agent.scan_timeout),
        human_duration(config.agent.lock_timeout),
        config.agent.source,
        human_duration(config.agent.interval),
        human_duration(config.agent.gpu_interval),
    );
    out += "collectors:\n";
    for c in &config.collectors {
        let fallback = c
            .plugin
            .fallback_for()
            .map(|p| format!(", fallback for {p}"))
            .unwrap_or_default();
        out += &format!("  {}: {}{fallback}\n", c.name, c.plugin.describe());
    }
    let stages: Vec<&str> = detect_workloads_core::cycle::stages::order(&config.stages)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    out += &format!("stages (in run order): {}\n", stages.join(", "));
    out += match config.stage_choice {
        StageChoice::Listed => {
            "  (the stages the file lists; redact is in force in every configuration)\n"
        }
        StageChoice::BuiltInDefaults => {
            "  (the file lists no [[stages.*]]: the built-in default stages are in force, \
             with their defaults; list them to choose, an empty [stages] table for none but redact)\n"
        }
    };
    out += "sinks:\n";
    for s in config.delivery_sinks() {
        let text = s.plugin.describe();
        if text.is_empty() {
            out += &format!("  {}\n", s.name);
        } else {
            out += &format!("  {}: {text}\n", s.name);
        }
    }
    out
}
