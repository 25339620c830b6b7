//! The command line (README, "Command line"; docs/cli.md). A binary is
//! `fn main() { cli::main() }` after
//! `use`-ing the plugin crates it wants linked in.
//!
//! One file per subcommand; this one holds the arguments, the logging set-up
//! and the configuration loading they share.

mod assets;
mod logging;
mod plugins;
mod ps;
mod report;
mod scan;
mod top;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing::{debug, error};

use detect_workloads_core::config::{Config, ConfigSource, Overrides};

pub use plugins::plugin_listing;
pub use validate::describe;

/// Live inventory of the containers and GPU processes of a shared GPU server.
/// With no subcommand, performs one scan cycle and exits.
#[derive(Debug, Parser)]
#[command(name = "detect-workloads", version)]
struct Cli {
    /// Configuration file [default: $DETECT_WORKLOADS_CONFIG, else
    /// /etc/ds01/detect-workloads.toml if it exists, else the built-in default]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Deliver to this sink instead of the configured ones (repeatable)
    #[arg(long = "sink", value_name = "NAME")]
    sinks: Vec<String>,
    /// Print the inventory to standard output and change nothing: no file is
    /// written, no event emitted (refused together with --sink NAME other
    /// than stdout)
    #[arg(long)]
    dry_run: bool,
    /// The stdout sink's format for this scan (with --sink stdout or --dry-run)
    #[arg(long, value_enum, value_name = "FORMAT")]
    format: Option<ScanFormat>,
    /// Log more (debug): also the configuration file, the state read and
    /// the files written
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Log only warnings and errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// `--format` of a scan: the stdout sink's format.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScanFormat {
    /// The inventory JSON.
    Json,
    /// The `ps` table, fitted to the terminal.
    Table,
    /// The `ps` table, nothing cut.
    Wide,
}

impl ScanFormat {
    fn name(self) -> &'static str {
        match self {
            ScanFormat::Json => "json",
            ScanFormat::Table => "table",
            ScanFormat::Wide => "wide",
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Parse and check the configuration, list what would run; exit 0 or 2
    Validate,
    /// List every registered collector, stage and sink
    Plugins {
        /// Print the sample configuration of this plugin instead
        #[arg(long, value_name = "NAME")]
        sample: Option<String>,
    },
    /// Show the workloads as a table (from the inventory file, or --scan)
    Ps(ps::PsArgs),
    /// The `ps` table refreshed in the terminal, with one line per GPU; q quits
    Top(top::TopArgs),
    /// Per user, the GPU-hours held and idle over a period, and the idle
    /// workloads behind them (from the event log and the inventory)
    Report(report::ReportArgs),
    /// Run as a service: a full scan at start, every `[agent] interval` and
    /// at each engine event, a GPU poll every `[agent] gpu_interval`
    Watch(WatchArgs),
    /// Print the whole built-in default configuration, every key with its
    /// default (start /etc/ds01/detect-workloads.toml from it)
    Config,
    /// Write the manual pages and shell completions under DIR (the package
    /// build runs it)
    #[command(hide = true)]
    GenerateAssets {
        /// Where to write man/ and completions/
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// The arguments of `watch` (also accepted before it).
#[derive(Debug, clap::Args)]
struct WatchArgs {
    /// Deliver to this sink instead of the configured ones (repeatable)
    #[arg(long = "sink", value_name = "NAME")]
    sinks: Vec<String>,
    /// Print each scan's inventory and change nothing (as a --dry-run scan)
    #[arg(long)]
    dry_run: bool,
}

/// Runs the program with the plugins linked into this binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `top` owns the terminal: only warnings may cross its screen; `ps`
    // prints a table, not the scan's progress (`-v` still shows it).
    let quiet = cli.quiet
        || matches!(cli.command, Some(Command::Top(_)) | Some(Command::Ps(_))) && !cli.verbose;
    if let Err(message) = logging::init(cli.verbose, quiet) {
        eprintln!("detect-workloads: {message}");
        return ExitCode::from(2);
    }
    match &cli.command {
        Some(Command::Plugins { sample: None }) => {
            print!("{}", plugin_listing());
            ExitCode::SUCCESS
        }
        Some(Command::Plugins { sample: Some(name) }) => plugins::print_sample(name),
        Some(Command::Validate) => validate::run(&cli),
        Some(Command::Ps(args)) => ps::run(&cli, args),
        Some(Command::Top(args)) => top::run(&cli, args),
        Some(Command::Report(args)) => report::run(&cli, args),
        // `--dry-run watch` prints every scan and writes nothing, as a
        // `--dry-run` scan does.
        Some(Command::Watch(args)) => match overrides(
            &[&cli.sinks[..], &args.sinks[..]].concat(),
            cli.dry_run || args.dry_run,
            cli.format,
        ) {
            Ok(overrides) => {
                detect_workloads_core::watch::main(detect_workloads_core::watch::Source {
                    config: ConfigSource::choose(cli.config.as_deref()),
                    overrides,
                })
            }
            Err(message) => usage_error(message),
        },
        Some(Command::Config) => {
            print!("{}", detect_workloads_core::config::DEFAULT_CONFIG);
            ExitCode::SUCCESS
        }
        Some(Command::GenerateAssets { dir }) => assets::run(dir),
        None => scan::run(&cli),
    }
}

/// An invalid command line or configuration: said, and exit status 2.
fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    error!("{message}");
    ExitCode::from(2)
}

/// The overrides the scan's flags ask for: `--dry-run` is the stdout sink
/// alone; `--format` sets the stdout sink's format.
fn overrides(
    sinks: &[String],
    dry_run: bool,
    format: Option<ScanFormat>,
) -> Result<Overrides, String> {
    let mut sinks = sinks.to_vec();
    if dry_run {
        if let Some(other) = sinks.iter().find(|s| *s != "stdout") {
            return Err(format!(
                "--dry-run writes nothing and emits nothing, so it cannot deliver to \
                 `{other}`: drop --sink {other}, or drop --dry-run"
            ));
        }
        sinks = vec!["stdout".to_string()];
    }
    let mut sink_settings = std::collections::BTreeMap::new();
    if let Some(format) = format {
        if !sinks.iter().any(|s| s == "stdout") {
            return Err(
                "--format sets the stdout sink's format: add --sink stdout or --dry-run".into(),
            );
        }
        sink_settings.insert(
            "stdout".to_string(),
            [("format".to_string(), format.name().to_string())].into(),
        );
    }
    Ok(Overrides {
        sinks,
        sink_settings,
    })
}

/// The configuration this command runs with (exit 2 when it cannot work).
fn load(cli: &Cli, overrides: &Overrides) -> Result<Config, ExitCode> {
    let source = ConfigSource::choose(cli.config.as_deref());
    let config = Config::load_from(&source, overrides)
        .map_err(|e| usage_error(format!("invalid configuration: {e}")))?;
    debug!("configuration: {}", config.origin);
    Ok(config)
}

/// A runtime for one command's scans.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            error!("cannot start the async runtime: {e}");
            ExitCode::from(1)
        })
}
