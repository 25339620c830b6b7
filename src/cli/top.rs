//! `detect-workloads top`: the `ps` view refreshed in the terminal
//! ([`crate::top`]), from the inventory file or a scan writing nothing.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tracing::error;

use crate::top::TopOptions;
use detect_workloads_api::model::Inventory;

use super::Cli;

/// The arguments of `top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Scan at each refresh (writing nothing) instead of reading the inventory file
    #[arg(long)]
    pub scan: bool,
    #[command(flatten)]
    pub select: super::ps::SelectArgs,
    /// Time between two refreshes
    #[arg(long, default_value = "1s", value_parser = interval)]
    pub interval: Duration,
}

fn interval(text: &str) -> Result<Duration, String> {
    detect_workloads_core::config::parse_duration(text)
}

/// Runs until `q`.
pub fn run(cli: &Cli, args: &TopArgs) -> ExitCode {
    if !std::io::stdout().is_terminal() {
        return super::usage_error("top draws on a terminal; use `detect-workloads ps` in a pipe");
    }
    let config = match super::load(cli, &Default::default()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let options = TopOptions {
        filter: args.select.filter(),
        interval: args.interval,
    };
    // What the last refresh could not see, said once the screen is left.
    let mut blind = None;
    let mut seen = |inv: Result<Inventory, String>| {
        if let Ok(inv) = &inv {
            blind = super::ps::blind_spot(inv);
        }
        inv
    };
    let result = if args.scan {
        let config = super::scan::without_sinks(config);
        crate::top::run(
            || {
                seen(
                    super::scan::once(&config)
                        .map(|r| r.inventory)
                        .map_err(|_| "the scan failed (see the log)".to_string()),
                )
            },
            &options,
        )
    } else {
        crate::top::run(|| seen(super::ps::read(&config)), &options)
    };
    match (result, blind) {
        (Err(e), _) => {
            error!("terminal: {e}");
            ExitCode::from(1)
        }
        (Ok(()), Some(message)) => {
            error!("{message}");
            ExitCode::from(1)
        }
        (Ok(()), None) => ExitCode::SUCCESS,
    }
}
