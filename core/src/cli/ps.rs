//! `detect-workloads ps`: the workloads as a table, like `docker ps`, from
//! the inventory file the configured `inventory-file` sink writes, or from a
//! scan made now that writes nothing (`--scan`).

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use tracing::error;

use crate::config::Config;
use crate::model::Inventory;
use crate::view::{self, Filter, Layout};

use super::Cli;

/// The arguments of `ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Scan now (writing nothing) instead of reading the inventory file
    #[arg(long)]
    pub scan: bool,
    #[command(flatten)]
    pub select: SelectArgs,
    /// table: fitted to the terminal; wide: nothing cut; json: the rows
    #[arg(long, value_enum, default_value = "table")]
    pub format: PsFormat,
}

/// How `ps` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PsFormat {
    /// Columns fitted to the terminal (nothing cut when not a terminal).
    Table,
    /// Nothing cut.
    Wide,
    /// The rows as a JSON array.
    Json,
}

/// Which workloads `ps` and `top` show.
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Show stopped and created containers too
    #[arg(short, long)]
    pub all: bool,
    /// Only this user's workloads
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Only workloads with GPU access or use
    #[arg(long)]
    pub gpu: bool,
}

impl SelectArgs {
    /// The workloads these flags select.
    pub fn filter(&self) -> Filter {
        Filter {
            all: self.all,
            user: self.user.clone(),
            gpu_only: self.gpu,
        }
    }
}

/// Prints the table (exit 1 when there is no inventory to show).
pub fn run(cli: &Cli, args: &PsArgs) -> ExitCode {
    let config = match super::load(cli, &Default::default()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let inventory = if args.scan {
        match super::scan::once(&super::scan::without_sinks(config)) {
            Ok(result) => result.inventory,
            Err(code) => return code,
        }
    } else {
        match read(&config) {
            Ok(inv) => inv,
            Err(message) => {
                error!("{message}");
                return ExitCode::from(1);
            }
        }
    };
    print!("{}", render(&inventory, args, now()));
    ExitCode::SUCCESS
}

/// What `ps` prints for this inventory.
fn render(inv: &Inventory, args: &PsArgs, now: i64) -> String {
    let filter = args.select.filter();
    let layout = match args.format {
        PsFormat::Json => {
            let rows = view::rows(inv, &filter, now);
            return serde_json::to_string_pretty(&rows).unwrap_or_default() + "\n";
        }
        PsFormat::Wide => Layout::Wide,
        PsFormat::Table => super::term::stdout_layout(),
    };
    let text = view::render(inv, &filter, layout, now);
    if super::term::stdout_colour() {
        super::term::paint(&text)
    } else {
        text
    }
}

/// The inventory the configured `inventory-file` sink wrote, read without
/// changing anything.
pub fn read(config: &Config) -> Result<Inventory, String> {
    let store = config
        .sinks
        .iter()
        .find_map(|s| s.plugin.state_store().map(|store| (s, store)));
    let Some((sink, store)) = store else {
        return Err(
            "no inventory-file sink is configured, so there is no inventory to read: \
             use --scan to scan now"
                .to_string(),
        );
    };
    match store.peek() {
        Ok(Some(inv)) => Ok(inv),
        Ok(None) => Err(format!(
            "no inventory yet ({} has not written one): run a scan first, or use --scan",
            sink.name
        )),
        Err(e) => Err(format!("cannot read the inventory: {e}")),
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
