//! The command line of SPEC.md. A binary is `fn main() { cli::main() }` after
//! `use`-ing the plugin crates it wants linked in.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::error;

use crate::config::{choose_config, Config};
use crate::cycle::run_cycle;
use crate::plugin::PluginKind;

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
    /// Print the inventory and change nothing: exactly `--sink stdout`
    #[arg(long)]
    dry_run: bool,
    /// Log more (debug)
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Log only warnings and errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Option<Command>,
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
    /// Run as a service: a full scan at start, every `[agent] interval` and
    /// at each engine event, a GPU poll every `[agent] gpu_interval`
    Watch,
}

fn init_logging(verbose: bool, quiet: bool) {
    let level = if verbose {
        "debug"
    } else if quiet {
        "warn"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DETECT_WORKLOADS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .try_init();
}

/// Runs the program with the plugins linked into this binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    match cli.command {
        Some(Command::Plugins { sample: None }) => {
            print!("{}", plugin_listing());
            ExitCode::SUCCESS
        }
        Some(Command::Plugins { sample: Some(name) }) => print_sample(&name),
        Some(Command::Validate) => validate(&cli),
        Some(Command::Watch) => crate::watch::main(crate::watch::Source {
            path: choose_config(cli.config.as_deref()),
            sinks: cli.sinks.clone(),
        }),
        None => scan(&cli),
    }
}

fn load(cli: &Cli) -> Result<Config, ExitCode> {
    let mut sinks = cli.sinks.clone();
    if cli.dry_run && !sinks.iter().any(|s| s == "stdout") {
        sinks.push("stdout".to_string());
    }
    let path = choose_config(cli.config.as_deref());
    Config::load(path.as_deref(), &sinks).map_err(|e| {
        error!("invalid configuration: {e}");
        ExitCode::from(2)
    })
}

fn scan(cli: &Cli) -> ExitCode {
    let config = match load(cli) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = run_cycle(&config, &runtime);
    // A collector abandoned on a blocking thread (a hung library call) must not
    // keep the process alive.
    runtime.shutdown_background();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            error!("scan failed: {e}");
            ExitCode::from(1)
        }
    }
}

fn validate(cli: &Cli) -> ExitCode {
    let config = match load(cli) {
        Ok(config) => config,
        Err(code) => return code,
    };
    print!("{}", describe(&config));
    ExitCode::SUCCESS
}

/// What a configuration would run, for `validate`.
pub fn describe(config: &Config) -> String {
    let names = |list: Vec<&str>| {
        if list.is_empty() {
            "(none)".to_string()
        } else {
            list.join(", ")
        }
    };
    let mut out = format!("configuration OK: {}\n", config.origin);
    out += &format!(
        "agent: scan_timeout {}, source {:?}\n",
        humantime::format_duration(config.agent.scan_timeout),
        config.agent.source
    );
    let collectors: Vec<String> = config
        .collectors
        .iter()
        .map(|c| match c.plugin.fallback_for() {
            Some(p) => format!(
                "{} (timeout {}, fallback for {p})",
                c.name,
                humantime::format_duration(c.plugin.timeout())
            ),
            None => format!(
                "{} (timeout {})",
                c.name,
                humantime::format_duration(c.plugin.timeout())
            ),
        })
        .collect();
    out += &format!(
        "collectors: {}\n",
        names(collectors.iter().map(String::as_str).collect())
    );
    out += &format!(
        "stages (in run order): {}\n",
        names(
            crate::cycle::stages::order(&config.stages)
                .iter()
                .map(|s| s.name.as_str())
                .collect()
        )
    );
    out += &format!(
        "sinks: {}\n",
        names(
            config
                .delivery_sinks()
                .iter()
                .map(|s| s.name.as_str())
                .collect()
        )
    );
    out
}

/// The text of `detect-workloads plugins`.
pub fn plugin_listing() -> String {
    let mut out = String::new();
    for kind in [PluginKind::Collector, PluginKind::Stage, PluginKind::Sink] {
        out += &format!("{}:\n", kind.section());
        for (name, summary) in kind.registered() {
            out += &format!("  {name:<18} {summary}\n");
        }
    }
    out
}

/// `detect-workloads plugins --sample NAME`: the plugin's sample configuration.
fn print_sample(name: &str) -> ExitCode {
    match crate::plugin::sample_of(name) {
        Some((_, sample)) => {
            print!("{sample}");
            ExitCode::SUCCESS
        }
        None => {
            let known: Vec<&str> = PluginKind::ALL
                .iter()
                .flat_map(|k| k.listed())
                .map(|l| l.name)
                .collect();
            error!("no plugin `{name}`; known: {}", known.join(", "));
            ExitCode::from(2)
        }
    }
}
