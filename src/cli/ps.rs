//! `detect-workloads ps`: the workloads as a table, like `docker ps`, from
//! the inventory file the configured `inventory-file` sink writes, or from a
//! scan made now that writes nothing (`--scan`).

use detect_workloads_api::timefmt::Timestamp;
use std::process::ExitCode;

use clap::Args;
use tracing::error;

use detect_workloads_api::model::{FactKind, Inventory};
use detect_workloads_api::view::{self, Column, Condition, Filter, Layout};
use detect_workloads_core::config::Config;

use super::Cli;

/// The arguments of `ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Scan now (writing nothing) instead of reading the inventory file
    #[arg(long)]
    pub scan: bool,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Only the ids: container ids and PIDs, one per line
    #[arg(short, long)]
    pub quiet: bool,
    /// Cut nothing (as --format wide)
    #[arg(long)]
    pub no_trunc: bool,
    /// table (fitted to the terminal), wide (nothing cut), json (the rows),
    /// a list of columns (`name,user,gpu_mem`) or a template
    /// (`{{.Name}} {{.User}}`); columns: id, name, user, origin, status,
    /// gpus, gpu_mem, gpu_util, cpu, idle, image, created, kind
    #[arg(long, default_value = "table", value_parser = PsFormat::parse)]
    pub format: PsFormat,
}

/// How `ps` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PsFormat {
    /// Columns fitted to the terminal (nothing cut when not a terminal).
    Table,
    /// Nothing cut.
    Wide,
    /// The rows as a JSON array.
    Json,
    /// These columns, a header, nothing cut.
    Columns(Vec<Column>),
    /// One line per row: the text with each `{{.Column}}` replaced.
    Template(Vec<Piece>),
}

/// A part of a `--format` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text as written (`\t` and `\n` as escapes).
    Text(String),
    /// A column's cell.
    Column(Column),
}

impl PsFormat {
    fn parse(text: &str) -> Result<PsFormat, String> {
        let known = || {
            Column::NAMES
                .iter()
                .map(|(_, names)| names[0])
                .collect::<Vec<_>>()
                .join(", ")
        };
        match text {
            "table" => return Ok(PsFormat::Table),
            "wide" => return Ok(PsFormat::Wide),
            "json" => return Ok(PsFormat::Json),
            _ => {}
        }
        if !text.contains("{{") {
            return text
                .split(',')
                .map(|name| {
                    Column::named(name)
                        .ok_or_else(|| format!("no column {name:?}; the columns are {}", known()))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(PsFormat::Columns);
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            let close = rest[open..]
                .find("}}")
                .ok_or_else(|| format!("{text:?}: a `{{{{` without its `}}}}`"))?;
            pieces.push(Piece::Text(unescape(&rest[..open])));
            let name = &rest[open + 2..open + close];
            let column = Column::named(name).ok_or_else(|| {
                let name = name.trim().trim_start_matches('.');
                format!("no column {name:?}; the columns are {}", known())
            })?;
            pieces.push(Piece::Column(column));
            rest = &rest[open + close + 2..];
        }
        pieces.push(Piece::Text(unescape(rest)));
        Ok(PsFormat::Template(pieces))
    }
}

/// `\t` and `\n` as a tab and a new line (as `docker ps --format` takes them).
fn unescape(text: &str) -> String {
    text.replace("\\t", "\t").replace("\\n", "\n")
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
    /// Only workloads matching KEY=VALUE (repeatable; one value of each key
    /// must match): user, origin, status, label (KEY or KEY=VALUE), name
    /// (part of it), id (its start), gpu (yes, no, a slot or a UUID's start)
    #[arg(short, long = "filter", value_name = "KEY=VALUE", value_parser = Condition::parse)]
    pub filters: Vec<Condition>,
    /// Only idle workloads (idle for the idle stage's idle_after), the
    /// largest waste first: GPU memory held x time idle
    #[arg(long)]
    pub idle: bool,
}

impl SelectArgs {
    /// The workloads these flags select.
    pub fn filter(&self) -> Filter {
        Filter {
            all: self.all,
            user: self.user.clone(),
            gpu_only: self.gpu,
            conditions: self.filters.clone(),
            idle_only: self.idle,
        }
    }
}

/// Prints the table; exit 1 when there is no inventory to show, or when
/// no container source answered (the table then shows what they reported
/// last, or nothing: not "no containers").
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
    print!("{}", render(&inventory, args, Timestamp::now()));
    match blind_spot(&inventory) {
        Some(message) => {
            error!("{message}");
            ExitCode::from(1)
        }
        None => ExitCode::SUCCESS,
    }
}

/// What `ps` and `top` must say when no container source answered.
pub fn blind_spot(inv: &Inventory) -> Option<String> {
    let failed = view::all_failed(inv, FactKind::Containers);
    (!failed.is_empty()).then(|| {
        let why: Vec<String> = failed
            .iter()
            .map(|name| {
                let error = inv
                    .scan
                    .as_ref()
                    .and_then(|s| s.collectors.get(*name))
                    .and_then(|r| r.error.clone())
                    .unwrap_or_default();
                format!("{name}: {}", view::printable(&error))
            })
            .collect();
        format!(
            "no container source answered the last scan ({}): the containers shown are \
             what they reported before, if anything, not what runs now",
            why.join("; ")
        )
    })
}

/// What `ps` prints for this inventory.
fn render(inv: &Inventory, args: &PsArgs, now: Timestamp) -> String {
    let filter = args.select.filter();
    let rows = || view::rows(inv, &filter, now);
    if args.quiet {
        return rows()
            .iter()
            .filter(|r| !r.id.is_empty())
            .map(|r| format!("{}\n", view::printable(&r.id)))
            .collect();
    }
    let layout = match &args.format {
        PsFormat::Json => return serde_json::to_string_pretty(&rows()).unwrap_or_default() + "\n",
        PsFormat::Columns(columns) => return view::columns_table(&rows(), columns),
        PsFormat::Template(pieces) => {
            return rows()
                .iter()
                .map(|r| {
                    let mut line: String = pieces
                        .iter()
                        .map(|p| match p {
                            Piece::Text(text) => text.clone(),
                            Piece::Column(c) => c.cell(r),
                        })
                        .collect();
                    line.push('\n');
                    line
                })
                .collect();
        }
        PsFormat::Wide => Layout::Wide,
        PsFormat::Table if args.no_trunc => Layout::Wide,
        PsFormat::Table => crate::term::stdout_layout(),
    };
    let styled = view::render_styled(inv, &filter, layout, now);
    if crate::term::stdout_colour() {
        crate::term::paint(&styled)
    } else {
        styled.plain()
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
