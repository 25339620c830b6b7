//! `detect-workloads` with no subcommand: one scan cycle.

use std::process::ExitCode;

use tracing::error;

use detect_workloads_core::config::Config;
use detect_workloads_core::cycle::{run_cycle, ScanResult};

use super::Cli;

/// One cycle with the configured sinks (or `--sink`, `--dry-run`).
pub fn run(cli: &Cli) -> ExitCode {
    let overrides = match super::overrides(&cli.sinks, cli.dry_run, cli.format) {
        Ok(o) => o,
        Err(message) => return super::usage_error(message),
    };
    let config = match super::load(cli, &overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match once(&config) {
        Ok(result) => {
            // The process ends now: freeing the inventory entry by entry
            // would cost more than writing it did.
            std::mem::forget(result);
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Runs one cycle (exit 1 when it fails, said on stderr).
pub fn once(config: &Config) -> Result<ScanResult, ExitCode> {
    let runtime = super::runtime()?;
    let result = run_cycle(config, &runtime);
    // A collector abandoned on a blocking thread (a hung library call) must not
    // keep the process alive.
    runtime.shutdown_background();
    result.map_err(|e| {
        error!("scan failed: {e}");
        ExitCode::from(1)
    })
}

/// The configuration for a scan that writes nothing (`ps --scan`, `top
/// --scan`): no sink receives it, so no lock is taken; the state is still
/// read, for what carries over from scan to scan.
pub fn without_sinks(mut config: Config) -> Config {
    config.sink_override = Some(Vec::new());
    config
}
