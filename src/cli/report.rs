//! `detect-workloads report`: per user, the GPU-hours held over a period,
//! how many of them idle, and the idle workloads behind them, from the
//! event log (its rotated copies too) and the inventory: the table an
//! administrator sends to the lab every month.
//!
//! A workload counts in the period its usage was last told in: an exited
//! one by its exit event (`detection.container_exited`,
//! `detection.host_gpu_process_exited`, whose `usage` holds its totals), one
//! still listed by the inventory (only when the period runs to now). Its
//! whole total counts there, also the part held before the period began:
//! the log says how much a workload held, not when. `detection.workload_idle`
//! events in the period name the idle workloads and what they held.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::Value;
use tracing::{error, warn};

use detect_workloads_api::config::parse_duration;
use detect_workloads_api::model::{Inventory, Usage};
use detect_workloads_api::timefmt::Timestamp;
use detect_workloads_api::view::{display_width, fit, pad, printable};
use detect_workloads_core::config::Config;

use super::Cli;

/// The arguments of `report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The period's start: a duration before now (`7d`, `30d`, `12h`), a
    /// date (`2026-11-01`, midnight UTC) or an RFC 3339 time
    #[arg(long, default_value = "7d", value_parser = Instant::parse, value_name = "WHEN")]
    pub since: Instant,
    /// The period's end (as --since; default now). A period that ends
    /// before now leaves the inventory out: it tells only what is held now
    #[arg(long, value_parser = Instant::parse, value_name = "WHEN")]
    pub until: Option<Instant>,
    /// table (for people), json (every figure and workload) or csv (one
    /// row per user, for a spreadsheet)
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReportFormat,
}

/// How `report` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
    /// Comma-separated values with a header (RFC 4180).
    Csv,
}

/// A point in time as `--since` and `--until` take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instant {
    /// This long before now.
    Ago(Duration),
    /// This time.
    At(Timestamp),
}

impl Instant {
    fn parse(text: &str) -> Result<Instant, String> {
        let text = text.trim();
        if let Ok(t) = Timestamp::parse(text) {
            return Ok(Instant::At(t));
        }
        if let Ok(t) = Timestamp::parse(&format!("{text}T00:00:00Z")) {
            return Ok(Instant::At(t));
        }
        parse_duration(text).map(Instant::Ago).map_err(|_| {
            format!(
                "{text:?} is neither a duration before now (7d, 12h) nor a date \
                 (2026-11-01) nor an RFC 3339 time (2026-11-01T08:00:00Z)"
            )
        })
    }

    /// Seconds since the epoch, counted back from `now`.
    fn at(self, now: i64) -> i64 {
        match self {
            Instant::At(t) => t.unix_seconds(),
            Instant::Ago(d) => now.saturating_sub(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        }
    }
}

/// What a workload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A container.
    Container,
    /// A host GPU process.
    HostProcess,
}

/// Whether a workload is still there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Gone: its exit event is in the period.
    Exited,
    /// Listed by the inventory now.
    Present,
    /// Told idle in the period, neither its exit nor the inventory in it.
    Unknown,
}

/// One workload of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workload {
    /// Container or host process.
    pub kind: Kind,
    /// The container's id, or the process's PID.
    pub id: String,
    /// The container's name, or the process's command line.
    pub name: String,
    /// Exited or present.
    pub state: State,
    /// GPU-hours held, in all.
    pub gpu_hours_held: f64,
    /// GPU-hours held while idle.
    pub gpu_hours_idle: f64,
    /// GPU memory it held when it was told idle (or now), in MiB.
    pub gpu_memory_mb: Option<u64>,
    /// Since when it is (or was last) idle.
    pub idle_since: Option<String>,
    /// Told idle in the period, or idle now.
    pub told_idle: bool,
}

/// One user's line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserUsage {
    /// The user.
    pub user: String,
    /// GPU-hours held by their workloads.
    pub gpu_hours_held: f64,
    /// Of which idle.
    pub gpu_hours_idle: f64,
    /// How many workloads held a GPU.
    pub workloads: usize,
    /// The idle ones, the most idle GPU-hours first.
    pub idle_workloads: Vec<Workload>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The period's start (RFC 3339).
    pub since: String,
    /// Its end.
    pub until: String,
    /// Whether the workloads the inventory lists now are in it.
    pub includes_inventory: bool,
    /// The users, the most GPU-hours held first.
    pub users: Vec<UserUsage>,
    /// Lines of the event log that could not be read as an event.
    pub unreadable_lines: u64,
}

/// Prints the report; exit 1 when there is no event log to read.
pub fn run(cli: &Cli, args: &ReportArgs) -> ExitCode {
    let config = match super::load(cli, &Default::default()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let now = Timestamp::now().unix_seconds();
    let since = args.since.at(now);
    // Up to now includes this second's events.
    let until = args.until.map_or(now + 1, |u| u.at(now));
    if since >= until {
        error!("the period is empty: --since must be before --until");
        return ExitCode::from(2);
    }
    let Some(log) = config.sinks.iter().find_map(|s| s.plugin.events_file()) else {
        error!("no event-log sink is configured, so there is no history to report on");
        return ExitCode::from(1);
    };
    let mut tally = Tally::new(since, until);
    if let Err(message) = read_history(log, &mut tally) {
        error!("{message}");
        return ExitCode::from(1);
    }
    let inventory = if args.until.is_none() {
        inventory(&config)
    } else {
        None
    };
    let report = tally.finish(inventory.as_ref());
    if report.unreadable_lines > 0 {
        warn!(
            "{} lines of {} are not events and were left out",
            report.unreadable_lines,
            log.display()
        );
    }
    print!(
        "{}",
        match args.format {
            ReportFormat::Table => table(&report),
            ReportFormat::Json => serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
            ReportFormat::Csv => csv(&report),
        }
    );
    ExitCode::SUCCESS
}

/// The inventory, when one is configured and written (else the report is
/// the event log's alone, which it says).
fn inventory(config: &Config) -> Option<Inventory> {
    match super::ps::read(config) {
        Ok(inv) => Some(inv),
        Err(message) => {
            warn!("{message}; the workloads running now are left out");
            None
        }
    }
}

/// The event log and its rotated copies, oldest last: every file beside it
/// whose name is the log's followed by `.N`, `.N.gz` or `-DATE[.gz]`,
/// skipping those last written before the period (they hold only older
/// lines).
fn history_files(log: &Path, since: i64) -> Result<Vec<PathBuf>, String> {
    let dir = log.parent().unwrap_or(Path::new("."));
    let name = log
        .file_name()
        .ok_or_else(|| format!("{} names no file", log.display()))?;
    let name = name.to_string_lossy();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {} for the event log: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        let Some(rest) = file.strip_prefix(name.as_ref()) else {
            continue;
        };
        let rotated = rest.is_empty()
            || rest.strip_prefix(['.', '-']).is_some_and(|r| {
                let r = r.strip_suffix(".gz").unwrap_or(r);
                !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit())
            });
        if !rotated {
            continue;
        }
        let written = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(i64::MAX, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if written >= since {
            files.push(entry.path());
        }
    }
    if !files.iter().any(|f| f == log) && !log.exists() {
        return Err(format!(
            "no event log at {} yet: a scan writes it",
            log.display()
        ));
    }
    files.sort();
    Ok(files)
}

/// Feeds every line of the log and its rotated copies to `tally`.
fn read_history(log: &Path, tally: &mut Tally) -> Result<(), String> {
    for path in history_files(log, tally.since)? {
        let file = File::open(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::MultiGzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => tally.line(&line),
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            }
        }
    }
    Ok(())
}

/// What one event of the period told of a workload.
enum Told {
    /// It exited, with these totals.
    Exit(Usage),
    /// It was told idle, holding this much, idle since then.
    Idle {
        gpu_memory_mb: Option<u64>,
        idle_since: Option<String>,
    },
}

/// One event of the period about a workload.
struct Seen {
    at: i64,
    user: String,
    kind: Kind,
    id: String,
    name: String,
    told: Told,
}

/// The events of the period as the lines come; folded into workloads in
/// time order by [`Tally::finish`] (the files are read in any order).
struct Tally {
    since: i64,
    until: i64,
    /// Event ids already counted: a line appended twice counts once.
    ids: HashSet<String>,
    seen: Vec<Seen>,
    unreadable: u64,
}

/// The workloads told so far, and which of them is still open (not told
/// exited) under each (user, kind, id): a PID used again, or a second
/// exit under one id, is another workload, never added to an earlier one.
#[derive(Default)]
struct Workloads {
    all: Vec<(String, Workload)>,
    open: BTreeMap<(String, Kind, String), usize>,
}

impl Workloads {
    /// The open workload under this key, made if there is none.
    fn open(&mut self, user: &str, kind: Kind, id: &str, name: &str) -> &mut Workload {
        let key = (user.to_string(), kind, id.to_string());
        let index = match self.open.get(&key) {
            Some(&i) => i,
            None => {
                self.all.push((
                    user.to_string(),
                    Workload {
                        kind,
                        id: id.to_string(),
                        name: name.to_string(),
                        state: State::Unknown,
                        gpu_hours_held: 0.0,
                        gpu_hours_idle: 0.0,
                        gpu_memory_mb: None,
                        idle_since: None,
                        told_idle: false,
                    },
                ));
                self.open.insert(key, self.all.len() - 1);
                self.all.len() - 1
            }
        };
        &mut self.all[index].1
    }

    /// Closes the open workload under this key (it exited).
    fn close(&mut self, user: &str, kind: Kind, id: &str) {
        self.open.remove(&(user.to_string(), kind, id.to_string()));
    }
}

impl Tally {
    fn new(since: i64, until: i64) -> Self {
        Self {
            since,
            until,
            ids: HashSet::new(),
            seen: Vec::new(),
            unreadable: 0,
        }
    }

    /// One line of the log (any bytes: an unreadable one is counted).
    fn line(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        let Ok(event) = serde_json::from_str::<Value>(text) else {
            self.unreadable += 1;
            return;
        };
        let (Some(event_type), Some(at)) = (
            event["event_type"].as_str(),
            event["timestamp"]
                .as_str()
                .and_then(|t| Timestamp::parse(t).ok())
                .map(Timestamp::unix_seconds),
        ) else {
            self.unreadable += 1;
            return;
        };
        if at < self.since || at >= self.until {
            return;
        }
        let details = &event["details"];
        let told = match event_type {
            "detection.container_exited" | "detection.host_gpu_process_exited" => {
                Told::Exit(Usage {
                    gpu_seconds_held: details["usage"]["gpu_seconds_held"].as_f64().unwrap_or(0.0),
                    gpu_seconds_idle: details["usage"]["gpu_seconds_idle"].as_f64().unwrap_or(0.0),
                })
            }
            "detection.workload_idle" => Told::Idle {
                gpu_memory_mb: details["gpu_memory_mb"].as_u64(),
                idle_since: details["idle_since"].as_str().map(str::to_string),
            },
            _ => return,
        };
        let Some((kind, id, name)) = workload_of(details) else {
            return;
        };
        if let Some(event_id) = event["event_id"].as_str().filter(|id| !id.is_empty()) {
            if !self.ids.insert(event_id.to_string()) {
                return;
            }
        }
        self.seen.push(Seen {
            at,
            user: event["user"].as_str().unwrap_or_default().to_string(),
            kind,
            id,
            name,
            told,
        });
    }

    /// The report, with the workloads `inventory` lists now.
    fn finish(mut self, inventory: Option<&Inventory>) -> Report {
        let mut workloads = Workloads::default();
        self.seen.sort_by_key(|s| s.at);
        for s in &self.seen {
            let w = workloads.open(&s.user, s.kind, &s.id, &s.name);
            match &s.told {
                Told::Exit(usage) => {
                    w.state = State::Exited;
                    w.gpu_hours_held = hours(usage.gpu_seconds_held);
                    w.gpu_hours_idle = hours(usage.gpu_seconds_idle);
                    workloads.close(&s.user, s.kind, &s.id);
                }
                Told::Idle {
                    gpu_memory_mb,
                    idle_since,
                } => {
                    w.told_idle = true;
                    w.gpu_memory_mb = gpu_memory_mb.or(w.gpu_memory_mb);
                    w.idle_since = idle_since.clone().or(w.idle_since.take());
                }
            }
        }
        if let Some(inv) = inventory {
            for c in inv.containers.values() {
                let w = workloads.open(&c.user, Kind::Container, &c.id, &c.name);
                present(w, &c.usage, c.activity.as_ref(), c.gpu_memory_mb);
            }
            for p in inv.host_processes.values() {
                let pid = p.pid.to_string();
                let w = workloads.open(&p.user, Kind::HostProcess, &pid, &p.cmdline);
                present(w, &p.usage, p.activity.as_ref(), p.gpu_memory_mb);
            }
        }
        let mut users: BTreeMap<String, UserUsage> = BTreeMap::new();
        for (user, w) in workloads.all {
            let u = users.entry(user.clone()).or_insert_with(|| UserUsage {
                user,
                gpu_hours_held: 0.0,
                gpu_hours_idle: 0.0,
                workloads: 0,
                idle_workloads: Vec::new(),
            });
            if w.gpu_hours_held > 0.0 {
                u.workloads += 1;
            }
            u.gpu_hours_held += w.gpu_hours_held;
            u.gpu_hours_idle += w.gpu_hours_idle;
            if w.told_idle || w.gpu_hours_idle > 0.0 {
                u.idle_workloads.push(w);
            }
        }
        let mut users: Vec<UserUsage> = users
            .into_values()
            .filter(|u| u.gpu_hours_held > 0.0 || !u.idle_workloads.is_empty())
            .collect();
        for u in &mut users {
            u.idle_workloads
                .sort_by(|a, b| b.gpu_hours_idle.total_cmp(&a.gpu_hours_idle));
        }
        users.sort_by(|a, b| {
            b.gpu_hours_held
                .total_cmp(&a.gpu_hours_held)
                .then_with(|| a.user.cmp(&b.user))
        });
        Report {
            since: at(self.since),
            until: at(self.until),
            includes_inventory: inventory.is_some(),
            users,
            unreadable_lines: self.unreadable,
        }
    }
}

/// A workload listed now: its totals so far, and whether it is idle.
fn present(
    w: &mut Workload,
    usage: &Usage,
    activity: Option<&detect_workloads_api::model::Activity>,
    gpu_memory_mb: Option<u64>,
) {
    w.state = State::Present;
    w.gpu_hours_held = hours(usage.gpu_seconds_held);
    w.gpu_hours_idle = hours(usage.gpu_seconds_idle);
    if let Some(a) = activity.filter(|a| a.idle) {
        w.told_idle = true;
        w.idle_since = a.idle_since.map(|t| t.to_string()).or(w.idle_since.take());
        w.gpu_memory_mb = gpu_memory_mb.or(w.gpu_memory_mb);
    }
}

/// Which workload an event's details name: a container (id and name) or a
/// host process (PID and command line).
fn workload_of(details: &Value) -> Option<(Kind, String, String)> {
    if let Some(id) = details["container_id"].as_str() {
        let name = details["name"].as_str().unwrap_or_default();
        return Some((Kind::Container, id.to_string(), name.to_string()));
    }
    let pid = details["pid"].as_u64()?;
    let cmdline = match &details["cmdline"] {
        Value::String(s) => s.clone(),
        Value::Array(args) => args
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    Some((Kind::HostProcess, pid.to_string(), cmdline))
}

fn hours(seconds: f64) -> f64 {
    if seconds.is_finite() && seconds > 0.0 {
        seconds / 3600.0
    } else {
        0.0
    }
}

/// Seconds since the epoch as RFC 3339 (the epoch for a time before it).
fn at(secs: i64) -> String {
    Timestamp::from_unix_seconds(secs.max(0)).to_string()
}

/// A figure of GPU-hours as people read it.
fn fixed(hours: f64) -> String {
    format!("{hours:.1}")
}

/// The share of `part` in `whole`, in whole percent.
fn share(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!("{:.0}%", 100.0 * part / whole)
    } else {
        "-".to_string()
    }
}

/// The workload as one cell: name and short id (or PID).
fn workload_cell(w: &Workload) -> String {
    let id = match w.kind {
        Kind::Container => w.id.chars().take(12).collect::<String>(),
        Kind::HostProcess => format!("pid {}", w.id),
    };
    let name = fit(&printable(&w.name), 40);
    if name.is_empty() {
        id
    } else {
        format!("{name} ({id})")
    }
}

/// Lines of cells, each column as wide as its widest cell.
fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| display_width(c))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                line.push_str(&pad(cell, widths[i], false));
                line.push_str("  ");
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The report for people: a line per user, then their idle workloads.
fn table(report: &Report) -> String {
    let mut out = format!(
        "GPU usage from {} to {}{}\n\n",
        report.since,
        report.until,
        if report.includes_inventory {
            " (running workloads: their totals so far)"
        } else {
            ""
        }
    );
    if report.users.is_empty() {
        out.push_str("No workload held a GPU in this period.\n");
        return out;
    }
    let mut rows = vec![[
        "USER",
        "GPU-HOURS",
        "IDLE GPU-HOURS",
        "IDLE",
        "WORKLOADS",
        "IDLE WORKLOADS",
    ]
    .map(String::from)
    .to_vec()];
    for u in &report.users {
        rows.push(vec![
            printable(&u.user),
            fixed(u.gpu_hours_held),
            fixed(u.gpu_hours_idle),
            share(u.gpu_hours_idle, u.gpu_hours_held),
            u.workloads.to_string(),
            u.idle_workloads.len().to_string(),
        ]);
    }
    out.push_str(&aligned(&rows));
    let idle: Vec<(&UserUsage, &Workload)> = report
        .users
        .iter()
        .flat_map(|u| u.idle_workloads.iter().map(move |w| (u, w)))
        .collect();
    if idle.is_empty() {
        return out;
    }
    out.push_str("\nIdle workloads:\n");
    let mut rows = vec![[
        "USER",
        "WORKLOAD",
        "STATE",
        "GPU-HOURS",
        "IDLE GPU-HOURS",
        "GPU MEM",
        "IDLE SINCE",
    ]
    .map(String::from)
    .to_vec()];
    for (u, w) in idle {
        rows.push(vec![
            printable(&u.user),
            workload_cell(w),
            match w.state {
                State::Exited => "exited",
                State::Present => "present",
                State::Unknown => "-",
            }
            .to_string(),
            fixed(w.gpu_hours_held),
            fixed(w.gpu_hours_idle),
            w.gpu_memory_mb
                .map_or_else(|| "-".to_string(), |mb| format!("{mb} MiB")),
            w.idle_since.clone().unwrap_or_else(|| "-".to_string()),
        ]);
    }
    out.push_str(&aligned(&rows));
    out
}

/// One CSV row per user (RFC 4180): the sums, and the idle workloads in one
/// cell. A cell that a spreadsheet would take for a formula (`=`, `+`, `-`,
/// `@`, a tab or a carriage return first) starts with `'`: the names come
/// from the users.
fn csv(report: &Report) -> String {
    let mut out = String::from(
        "user,gpu_hours_held,gpu_hours_idle,workloads,idle_workloads,idle_workload_names\n",
    );
    for u in &report.users {
        let names: Vec<String> = u.idle_workloads.iter().map(workload_cell).collect();
        let cells = [
            u.user.clone(),
            format!("{:.3}", u.gpu_hours_held),
            format!("{:.3}", u.gpu_hours_idle),
            u.workloads.to_string(),
            u.idle_workloads.len().to_string(),
            names.join("; "),
        ];
        let row: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

fn csv_cell(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const T0: i64 = 1_764_547_200; // 2025-12-01T00:00:00Z

    fn line(at: i64, event_type: &str, user: &str, id: &str, details: Value) -> String {
        serde_json::json!({
            "timestamp": super::at(at),
            "event_type": event_type,
            "schema_version": "1",
            "user": user,
            "source": "t",
            "details": details,
            "event_id": id,
        })
        .to_string()
    }

    fn exited(at: i64, user: &str, id: &str, held: f64, idle: f64) -> String {
        line(
            at,
            "detection.container_exited",
            user,
            &format!("e-{id}"),
            serde_json::json!({"container_id": id, "name": format!("job-{id}"), "origin": "docker",
                "usage": {"gpu_seconds_held": held, "gpu_seconds_idle": idle}}),
        )
    }

    fn tally(lines: &[String]) -> Tally {
        let mut t = Tally::new(T0, T0 + 7 * 86_400);
        for l in lines {
            t.line(l.as_bytes());
        }
        t
    }

    #[test]
    fn exit_events_in_the_period_sum_per_user_once_each() {
        let lines = [
            exited(T0 + 10, "alice", "a1", 7200.0, 3600.0),
            exited(T0 + 20, "alice", "a2", 3600.0, 0.0),
            exited(T0 + 30, "bob", "b1", 36_000.0, 0.0),
            // Appended twice (a repaired rotation): counted once.
            exited(T0 + 10, "alice", "a1", 7200.0, 3600.0),
            // Before and after the period.
            exited(T0 - 1, "alice", "old", 99_999.0, 99_999.0),
            exited(T0 + 7 * 86_400, "alice", "late", 99_999.0, 0.0),
        ];
        let report = tally(&lines).finish(None);
        assert_eq!(report.users.len(), 2);
        // The most GPU-hours first.
        assert_eq!(report.users[0].user, "bob");
        assert_eq!(report.users[0].gpu_hours_held, 10.0);
        let alice = &report.users[1];
        assert_eq!(alice.gpu_hours_held, 3.0);
        assert_eq!(alice.gpu_hours_idle, 1.0);
        assert_eq!(alice.workloads, 2);
        assert_eq!(alice.idle_workloads.len(), 1);
        assert_eq!(alice.idle_workloads[0].id, "a1");
        assert_eq!(alice.idle_workloads[0].state, State::Exited);
        assert!(!report.includes_inventory);
    }

    #[test]
    fn idle_events_name_the_workload_and_what_it_held() {
        let lines = [
            line(
                T0 + 5,
                "detection.workload_idle",
                "carol",
                "i1",
                serde_json::json!({"kind": "host_process", "pid": 4242,
                    "cmdline": ["python", "train.py"], "gpu_memory_mb": 40_960,
                    "idle_since": super::at(T0 - 1800)}),
            ),
            line(
                T0 + 900,
                "detection.host_gpu_process_exited",
                "carol",
                "x1",
                serde_json::json!({"pid": 4242, "cmdline": ["python", "train.py"],
                    "usage": {"gpu_seconds_held": 5400.0, "gpu_seconds_idle": 2700.0}}),
            ),
        ];
        let report = tally(&lines).finish(None);
        let w = &report.users[0].idle_workloads[0];
        assert_eq!(w.kind, Kind::HostProcess);
        assert_eq!(w.name, "python train.py");
        assert_eq!(w.gpu_memory_mb, Some(40_960));
        assert_eq!(w.idle_since.as_deref(), Some(super::at(T0 - 1800).as_str()));
        assert_eq!((w.gpu_hours_held, w.gpu_hours_idle), (1.5, 0.75));
        assert!(w.told_idle);
    }

    #[test]
    fn a_pid_used_again_is_another_workload_in_time_order() {
        let exit = |at: i64, id: &str, held: f64| {
            line(
                at,
                "detection.host_gpu_process_exited",
                "frank",
                id,
                serde_json::json!({"pid": 77, "cmdline": "python a.py",
                    "usage": {"gpu_seconds_held": held, "gpu_seconds_idle": 0.0}}),
            )
        };
        let idle = line(
            T0 + 50,
            "detection.workload_idle",
            "frank",
            "i",
            serde_json::json!({"kind": "host_process", "pid": 77, "cmdline": "python a.py",
                "gpu_memory_mb": 512, "idle_since": super::at(T0 + 20)}),
        );
        // Read out of order (as rotated files are): the second process's
        // idle event, then the second exit, then the first exit.
        let lines = [
            idle,
            exit(T0 + 90, "x2", 7200.0),
            exit(T0 + 10, "x1", 3600.0),
        ];
        let mut inv = Inventory::default();
        inv.host_processes.insert(
            77,
            detect_workloads_api::model::ProcessEntry {
                pid: 77,
                user: "frank".into(),
                cmdline: "python b.py".into(),
                usage: Usage {
                    gpu_seconds_held: 1800.0,
                    gpu_seconds_idle: 0.0,
                },
                ..Default::default()
            },
        );
        let report = tally(&lines).finish(Some(&inv));
        let frank = &report.users[0];
        // Three processes under PID 77: 1 + 2 + 0.5 GPU-hours, none lost.
        assert_eq!(frank.gpu_hours_held, 3.5);
        assert_eq!(frank.workloads, 3);
        // The idle one is the second (idle at T0+50, exited at T0+90).
        assert_eq!(frank.idle_workloads.len(), 1);
        let w = &frank.idle_workloads[0];
        assert_eq!((w.state, w.gpu_hours_held), (State::Exited, 2.0));
        assert_eq!(w.gpu_memory_mb, Some(512));
    }

    #[test]
    fn broken_lines_are_counted_not_fatal() {
        let mut t = tally(&[exited(T0 + 1, "dave", "d1", 3600.0, 0.0)]);
        t.line(b"{\"timestamp\": \"never\"}\n");
        t.line(b"\xff\xfe not json\n");
        t.line(b"\n");
        let report = t.finish(None);
        assert_eq!(report.unreadable_lines, 2);
        assert_eq!(report.users[0].gpu_hours_held, 1.0);
    }

    #[test]
    fn the_inventory_adds_what_is_held_now() {
        let mut inv = Inventory::default();
        let c = detect_workloads_api::model::ContainerEntry {
            id: "c0ffee".into(),
            name: "notebook".into(),
            user: "erin".into(),
            gpu_memory_mb: Some(1024),
            usage: Usage {
                gpu_seconds_held: 7200.0,
                gpu_seconds_idle: 1800.0,
            },
            activity: Some(detect_workloads_api::model::Activity {
                idle: true,
                idle_since: Some(Timestamp::from_unix_seconds(T0)),
                ..Default::default()
            }),
            ..Default::default()
        };
        inv.containers.insert(c.id.clone(), c);
        let report = tally(&[]).finish(Some(&inv));
        assert!(report.includes_inventory);
        let erin = &report.users[0];
        assert_eq!((erin.gpu_hours_held, erin.gpu_hours_idle), (2.0, 0.5));
        assert_eq!(erin.idle_workloads[0].state, State::Present);
        assert_eq!(erin.idle_workloads[0].gpu_memory_mb, Some(1024));
        let text = table(&report);
        assert!(text.contains("notebook (c0ffee)"), "{text}");
        assert!(text.contains("1024 MiB"), "{text}");
    }

    #[test]
    fn csv_cells_are_quoted_and_never_formulas() {
        assert_eq!(csv_cell("alice"), "alice");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_cell("-1"), "'-1");
        let report = tally(&[exited(T0 + 1, "=cmd", "z", 3600.0, 3600.0)]).finish(None);
        let text = csv(&report);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("user,gpu_hours_held,gpu_hours_idle,workloads,idle_workloads,idle_workload_names")
        );
        assert_eq!(lines.next(), Some("'=cmd,1.000,1.000,1,1,job-z (z)"));
    }

    #[test]
    fn the_period_takes_durations_dates_and_times() {
        assert_eq!(
            Instant::parse("7d"),
            Ok(Instant::Ago(Duration::from_secs(7 * 86_400)))
        );
        assert_eq!(
            Instant::parse("2025-12-01"),
            Ok(Instant::At(Timestamp::from_unix_seconds(T0)))
        );
        assert_eq!(
            Instant::parse("2025-12-01T01:00:00Z"),
            Ok(Instant::At(Timestamp::from_unix_seconds(T0 + 3600)))
        );
        assert!(Instant::parse("last tuesday").is_err());
        assert_eq!(Instant::Ago(Duration::from_secs(60)).at(T0), T0 - 60);
    }

    #[test]
    fn rotated_copies_are_read_plain_and_compressed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("events.jsonl");
        std::fs::write(&log, exited(T0 + 3, "a", "now", 3600.0, 0.0) + "\n").expect("write");
        std::fs::write(
            dir.path().join("events.jsonl.1"),
            exited(T0 + 2, "a", "one", 3600.0, 0.0) + "\n",
        )
        .expect("write");
        let gz = File::create(dir.path().join("events.jsonl.2.gz")).expect("create");
        let mut enc = flate2::write::GzEncoder::new(gz, flate2::Compression::fast());
        writeln!(enc, "{}", exited(T0 + 1, "a", "two", 3600.0, 0.0)).expect("gz");
        enc.finish().expect("gz");
        // Not the log's: another file, and a half-written temporary copy.
        std::fs::write(
            dir.path().join("events.jsonl.bak"),
            exited(T0 + 4, "a", "bak", 3600.0, 0.0),
        )
        .expect("write");
        std::fs::write(
            dir.path().join("other.jsonl"),
            exited(T0 + 4, "a", "other", 3600.0, 0.0),
        )
        .expect("write");
        let mut t = Tally::new(T0, T0 + 86_400);
        read_history(&log, &mut t).expect("read");
        let report = t.finish(None);
        assert_eq!(report.users[0].gpu_hours_held, 3.0);
        assert_eq!(report.users[0].workloads, 3);
        // No log at all: said.
        let mut t = Tally::new(T0, T0 + 86_400);
        let err = read_history(&dir.path().join("none.jsonl"), &mut t).expect_err("no log");
        assert!(err.contains("no event log"), "{err}");
    }
}
