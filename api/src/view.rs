//! The people's view of an inventory: one table of containers and host GPU
//! processes, as `detect-workloads ps`, `top` and the stdout sink's `table`
//! format print it. Pure functions over an [`Inventory`]: no I/O here.
//!
//! Rows are sorted by user, each user followed by a total line (with
//! `--idle`: the largest waste first, GPU memory held x time idle), and a
//! footer says how old the scan is and how each collector did. Every value
//! that comes from outside (names, labels, command lines) has its control
//! characters replaced, so the table is safe to print on a terminal.
//!
//! The table and footer come as [`Styled`] lines: each piece carries the
//! [`Style`] that what it shows calls for (a failed collector, an idle
//! workload, an unknown GPU activity), so that a terminal can colour them
//! without reading the text back. Widths are terminal columns
//! (`unicode-width`): a CJK character or an emoji takes two, in padding and
//! in cutting alike.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::timefmt::Timestamp;
use serde::Serialize;

use crate::model::{
    Activity, CollectorReport, ContainerEntry, FactKind, GpuAccess, GpuDevice, InspectFacts,
    Inventory, ProcessEntry, UserGpuUse,
};

/// Which workloads to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Stopped and created containers too (`-a`).
    pub all: bool,
    /// Only this user's workloads.
    pub user: Option<String>,
    /// Only workloads with GPU access or use.
    pub gpu_only: bool,
    /// `--filter KEY=VALUE` conditions: a row must match one value of each
    /// key given (as `docker ps --filter` combines them).
    pub conditions: Vec<Condition>,
    /// Only idle workloads (`activity.idle`), the largest waste first
    /// (`--idle`, [`Order::ByWaste`]).
    pub idle_only: bool,
}

/// How the rows are ordered, and so how the table totals them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// By user, then kind, then name; a total line after each user's rows.
    #[default]
    ByUser,
    /// The largest waste first: GPU memory held x seconds idle, then the
    /// longest idle, then user, kind and name; one total line at the end.
    ByWaste,
}

/// One `--filter KEY=VALUE` of `ps` and `top`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// `user=NAME`: exactly this owner.
    User(String),
    /// `origin=ORIGIN` (`host` for host processes).
    Origin(String),
    /// `status=STATE`: the engine's state (`running`, `exited`, `created`,
    /// ...), or `pending`, `short-lived` for processes. Shows stopped
    /// containers without `-a`, as `docker ps` does.
    Status(String),
    /// `label=KEY` or `label=KEY=VALUE` (containers only).
    Label(String, Option<String>),
    /// `name=TEXT`: part of the name (of a process: its program or PID).
    Name(String),
    /// `id=PREFIX`: a container id (or a PID) starting so.
    Id(String),
    /// `gpu=yes|no`, or `gpu=GPU`: uses or was given this GPU (a slot such
    /// as `0:1`, or the start of a UUID).
    Gpu(GpuCondition),
}

/// What `gpu=` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuCondition {
    /// Has GPU access or uses a GPU (`yes`) or neither (`no`).
    Any(bool),
    /// This GPU, by slot or the start of its UUID.
    This(String),
}

impl Condition {
    /// The keys `--filter` takes.
    pub const KEYS: [&'static str; 7] = ["user", "origin", "status", "label", "name", "id", "gpu"];

    /// Parses `KEY=VALUE`.
    pub fn parse(text: &str) -> Result<Condition, String> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| format!("--filter {text:?}: write KEY=VALUE"))?;
        let value = value.to_string();
        Ok(match key {
            "user" => Condition::User(value),
            "origin" => Condition::Origin(value),
            "status" => Condition::Status(value),
            "name" => Condition::Name(value),
            "id" => Condition::Id(value),
            "label" => match value.split_once('=') {
                Some((k, v)) => Condition::Label(k.to_string(), Some(v.to_string())),
                None => Condition::Label(value, None),
            },
            "gpu" => Condition::Gpu(match value.as_str() {
                "yes" | "true" | "1" => GpuCondition::Any(true),
                "no" | "false" | "0" => GpuCondition::Any(false),
                _ => GpuCondition::This(value),
            }),
            _ => {
                return Err(format!(
                    "--filter {text:?}: unknown key {key:?}; the keys are {}",
                    Condition::KEYS.join(", ")
                ))
            }
        })
    }

    fn key(&self) -> &'static str {
        match self {
            Condition::User(_) => "user",
            Condition::Origin(_) => "origin",
            Condition::Status(_) => "status",
            Condition::Label(..) => "label",
            Condition::Name(_) => "name",
            Condition::Id(_) => "id",
            Condition::Gpu(_) => "gpu",
        }
    }

    fn matches(&self, r: &Row) -> bool {
        match self {
            Condition::User(u) => &r.user == u,
            Condition::Origin(o) => &r.origin == o,
            Condition::Status(s) => &r.status == s,
            Condition::Label(k, v) => r
                .labels
                .get(k)
                .is_some_and(|have| v.as_ref().is_none_or(|want| have == want)),
            Condition::Name(n) => r.name.contains(n.as_str()),
            Condition::Id(prefix) => !r.id.is_empty() && r.id.starts_with(prefix.as_str()),
            Condition::Gpu(GpuCondition::Any(yes)) => r.gpu == *yes,
            Condition::Gpu(GpuCondition::This(gpu)) => r
                .gpus
                .iter()
                .chain(&r.gpu_uuids)
                .any(|g| g.starts_with(gpu.as_str())),
        }
    }
}

impl Filter {
    /// Whether `row` passes every key's conditions (one of each key's).
    fn keeps(&self, r: &Row) -> bool {
        let mut keys: Vec<&str> = self.conditions.iter().map(Condition::key).collect();
        keys.dedup();
        keys.iter().all(|key| {
            self.conditions
                .iter()
                .filter(|c| c.key() == *key)
                .any(|c| c.matches(r))
        })
    }

    /// How the rows are ordered: by waste with `--idle`, else by user.
    pub fn order(&self) -> Order {
        if self.idle_only {
            Order::ByWaste
        } else {
            Order::ByUser
        }
    }

    /// Whether stopped containers are shown: `-a`, or a status asked for.
    fn shows_stopped(&self) -> bool {
        self.all
            || self
                .conditions
                .iter()
                .any(|c| matches!(c, Condition::Status(_)))
    }
}

/// How to lay the table out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Fitted to `width` columns: long names and commands are cut with `…`,
    /// and ORIGIN is left out when even then the line is too long.
    Fitted {
        /// The terminal's width.
        width: usize,
    },
    /// Nothing cut.
    Wide,
}

impl Layout {
    /// The layout for an output that is a terminal of `terminal_width`
    /// columns (when known, else `$COLUMNS`, else 80) or, when
    /// `is_terminal` is false, a pipe or file: nothing cut, as `docker ps`.
    pub fn for_output(is_terminal: bool, terminal_width: Option<u16>) -> Layout {
        if !is_terminal {
            return Layout::Wide;
        }
        let width = terminal_width
            .map(usize::from)
            .filter(|w| *w > 0)
            .or_else(|| std::env::var("COLUMNS").ok()?.parse().ok())
            .unwrap_or(80);
        Layout::Fitted { width }
    }
}

/// What a row shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A container.
    Container,
    /// A host GPU process (confirmed or pending).
    Process,
    /// A user's GPU use by short-lived processes (`user_gpu_use`).
    #[serde(rename = "gpu-use")]
    GpuUse,
}

/// One workload, as the table shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// Container or process.
    pub kind: Kind,
    /// A container's id (12 hex digits), a process's PID; empty for a
    /// user's GPU use by short-lived processes.
    pub id: String,
    /// Container name, or the PID (the PIDs of now for a GPU use).
    pub name: String,
    /// Owner.
    pub user: String,
    /// How a container was started (`host` for a process).
    pub origin: String,
    /// Engine state, or `running`/`pending` for a process.
    pub status: String,
    /// A container's health check (`starting`, `healthy`, `unhealthy`),
    /// when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// GPUs: a container's devices, a process's GPU UUID (shortened).
    pub gpus: Vec<String>,
    /// Whether its GPU grant is labels only, with no device access.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub gpus_label_only: bool,
    /// GPU memory in MiB, when known.
    pub gpu_memory_mb: Option<u64>,
    /// Image of a container, command line of a process.
    pub what: String,
    /// Seconds since it was first seen.
    pub age_s: Option<i64>,
    /// Seconds since the engine created the container (a process: since it
    /// was first seen).
    pub created_s: Option<i64>,
    /// Seconds since a running container started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up_s: Option<i64>,
    /// Average cores used over the last reading (`activity.cpu_cores`);
    /// `None` when unknown (not running, a first reading, a pending process).
    pub cpu_cores: Option<f64>,
    /// GPU utilisation of its processes, percent
    /// (`activity.gpu_util_percent`); `None` when unknown, or when it holds
    /// no GPU memory.
    pub gpu_util_percent: Option<f64>,
    /// Seconds since it has been below every idle threshold
    /// (`activity.idle_since`); `None` while active or when unknown.
    pub idle_s: Option<i64>,
    /// Idle for at least the `idle` stage's `idle_after` (`activity.idle`).
    pub idle: bool,
    /// Whether it has GPU access or uses a GPU.
    #[serde(skip)]
    pub gpu: bool,
    /// Whether it holds GPU memory (a GPU process, a container whose
    /// processes use a GPU): then an unknown GPU activity matters.
    #[serde(skip)]
    gpu_held: bool,
    /// Full GPU UUIDs, for `gpu=` filters.
    #[serde(skip)]
    gpu_uuids: Vec<String>,
    /// A container's labels, for `label=` filters.
    #[serde(skip)]
    labels: BTreeMap<String, String>,
}

/// Container states `ps` shows without `-a` (as `docker ps` does).
const UP: [&str; 3] = ["running", "paused", "restarting"];

/// The rows to show, sorted by user then kind then name; `now` is seconds
/// since the epoch.
pub fn rows(inv: &Inventory, filter: &Filter, now: Timestamp) -> Vec<Row> {
    let containers = inv
        .containers
        .values()
        .filter(|c| filter.shows_stopped() || UP.contains(&c.status.as_str()))
        .map(|c| container_row(c, now));
    let processes = inv
        .host_processes
        .values()
        .map(|p| process_row(p, "running", now))
        .chain(
            inv.pending_processes
                .values()
                .map(|p| process_row(p, "pending", now)),
        );
    let sliced = inv.user_gpu_use.iter().map(|u| use_row(u, now));
    let mut rows: Vec<Row> = containers
        .chain(processes)
        .chain(sliced)
        .filter(|r| filter.user.as_ref().is_none_or(|u| &r.user == u))
        .filter(|r| !filter.gpu_only || r.gpu)
        .filter(|r| filter.keeps(r))
        .filter(|r| !filter.idle_only || r.idle)
        .collect();
    match filter.order() {
        Order::ByUser => {
            rows.sort_by(|a, b| (&a.user, a.kind, &a.name).cmp(&(&b.user, b.kind, &b.name)));
        }
        Order::ByWaste => rows.sort_by(|a, b| {
            let key = |r: &Row| (Reverse(r.waste()), Reverse(r.idle_s.unwrap_or(0)));
            key(a)
                .cmp(&key(b))
                .then_with(|| (&a.user, a.kind, &a.name).cmp(&(&b.user, b.kind, &b.name)))
        }),
    }
    rows
}

impl Row {
    /// What its idleness wastes: MiB of GPU memory held x seconds idle (0
    /// when it holds none, or is not idle).
    pub fn waste(&self) -> u128 {
        let idle = u128::try_from(self.idle_s.unwrap_or(0)).unwrap_or(0);
        u128::from(self.gpu_memory_mb.unwrap_or(0)) * idle
    }

    /// How the whole row looks, from what it is: an idle workload, a
    /// failing container (unhealthy, restarting, dead), or plain.
    pub fn style(&self) -> Style {
        if self.idle {
            Style::Idle
        } else if self.health.as_deref() == Some("unhealthy")
            || matches!(self.status.as_str(), "restarting" | "dead")
        {
            Style::Failed
        } else {
            Style::Plain
        }
    }
}

/// The activity columns of a row: (cpu_cores, gpu_util_percent, idle_s,
/// idle) from `activity`, when it has one.
fn activity_of(
    activity: Option<&Activity>,
    now: Timestamp,
) -> (Option<f64>, Option<f64>, Option<i64>, bool) {
    let Some(a) = activity else {
        return (None, None, None, false);
    };
    let finite = |v: Option<f64>| v.filter(|v| v.is_finite() && *v >= 0.0);
    (
        finite(a.cpu_cores),
        finite(a.gpu_util_percent),
        a.idle_since.map(|t| age(t, now)),
        a.idle,
    )
}

/// A user's GPU use by short-lived processes: its PIDs of now as the name.
fn use_row(u: &UserGpuUse, now: Timestamp) -> Row {
    let pids: Vec<String> = u.pids.iter().map(u32::to_string).collect();
    let age_s = Some(age(u.detected_at, now));
    Row {
        kind: Kind::GpuUse,
        id: String::new(),
        name: pids.join(","),
        user: u.user.clone(),
        origin: "host".to_string(),
        status: "short-lived".to_string(),
        health: None,
        gpus: vec![short_uuid(&u.gpu_uuid)],
        gpus_label_only: false,
        gpu_memory_mb: u.gpu_memory_mb,
        what: format!(
            "GPU use by short-lived processes ({} so far)",
            u.processes_seen
        ),
        age_s,
        created_s: age_s,
        up_s: None,
        cpu_cores: None,
        gpu_util_percent: None,
        idle_s: None,
        idle: false,
        gpu: true,
        gpu_held: true,
        gpu_uuids: vec![u.gpu_uuid.clone()],
        labels: BTreeMap::new(),
    }
}

fn container_row(c: &ContainerEntry, now: Timestamp) -> Row {
    let (cpu_cores, gpu_util_percent, idle_s, idle) = activity_of(c.activity.as_ref(), now);
    Row {
        kind: Kind::Container,
        id: c.id.clone(),
        name: c.name.clone(),
        user: c.user.clone(),
        origin: c.origin.clone(),
        status: c.status.clone(),
        health: c.health.map(|h| h.to_string()),
        // What it was granted, else the GPUs its processes use, else what
        // the engine gives it.
        gpus: if !c.gpu_devices.is_empty() {
            c.gpu_devices.clone()
        } else if !c.gpu_uuids.is_empty() {
            c.gpu_uuids.iter().map(|u| short_uuid(u)).collect()
        } else {
            engine_gpus(c)
        },
        gpus_label_only: c.gpu_access == Some(GpuAccess::LabelOnly),
        gpu_memory_mb: c.gpu_memory_mb,
        what: c.image.clone(),
        age_s: Some(age(c.detected_at, now)),
        created_s: c.created_at.map(|t| age(t, now)),
        up_s: c
            .inspect
            .as_ref()
            .filter(|_| c.status == "running" || c.status == "paused")
            .and_then(InspectFacts::started)
            .map(|t| age(t, now)),
        cpu_cores,
        gpu_util_percent,
        idle_s,
        idle,
        gpu: c.has_gpu || !c.gpu_devices.is_empty() || c.gpu_in_use,
        gpu_held: c.gpu_in_use || c.gpu_memory_mb.is_some_and(|m| m > 0),
        gpu_uuids: c.gpu_uuids.clone(),
        labels: c.labels.clone(),
    }
}

/// The GPUs the engine gives a container that names none in its labels:
/// `all` (`--gpus all`, the nvidia runtime), the device ids asked for, a
/// count, or the indexes of `/dev/nvidiaN` devices.
fn engine_gpus(c: &ContainerEntry) -> Vec<String> {
    let Some(inspect) = c.inspect.as_ref().filter(|_| c.has_gpu) else {
        return Vec::new();
    };
    let mut gpus = Vec::new();
    for r in &inspect.device_requests {
        if r.count == -1 {
            return vec!["all".to_string()];
        }
        if !r.device_ids.is_empty() {
            gpus.extend(r.device_ids.iter().cloned());
        } else if r.count > 0 {
            gpus.push(format!("any {}", r.count));
        }
    }
    gpus.extend(
        inspect
            .devices
            .iter()
            .filter_map(|d| d.strip_prefix("/dev/nvidia"))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_string),
    );
    if gpus.is_empty() {
        // The nvidia runtime without a request: what NVIDIA_VISIBLE_DEVICES
        // says, which only the container's environment knows.
        gpus.push("runtime".to_string());
    }
    gpus
}

fn process_row(p: &ProcessEntry, status: &str, now: Timestamp) -> Row {
    let uuids = if p.gpu_uuids.is_empty() {
        std::slice::from_ref(&p.gpu_uuid)
    } else {
        &p.gpu_uuids[..]
    };
    let age_s = Some(age(p.detected_at, now));
    let (cpu_cores, gpu_util_percent, idle_s, idle) = activity_of(p.activity.as_ref(), now);
    Row {
        kind: Kind::Process,
        id: p.pid.to_string(),
        name: p.pid.to_string(),
        user: p.user.clone(),
        origin: "host".to_string(),
        status: status.to_string(),
        health: None,
        gpus: uuids.iter().map(|u| short_uuid(u)).collect(),
        gpus_label_only: false,
        gpu_memory_mb: p.gpu_memory_mb,
        what: p.cmdline.clone(),
        age_s,
        created_s: age_s,
        up_s: None,
        cpu_cores,
        gpu_util_percent,
        idle_s,
        idle,
        gpu: true,
        gpu_held: true,
        gpu_uuids: uuids.to_vec(),
        labels: BTreeMap::new(),
    }
}

/// Seconds from `since` to `now` (0 when `since` is later).
fn age(since: Timestamp, now: Timestamp) -> i64 {
    now.seconds_since(since).max(0)
}

/// `GPU-56c0b0b8-eb5c-...` -> `GPU-56c0b0b8`: enough to tell GPUs apart.
fn short_uuid(uuid: &str) -> String {
    uuid.char_indices()
        .filter(|&(_, c)| c == '-')
        .nth(1)
        .map_or_else(|| uuid.to_string(), |(i, _)| uuid[..i].to_string())
}

/// `95s` -> `1m`, as `docker ps` shows ages: the largest whole unit.
pub fn human_age(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// How long, in two units: `45s`, `12m05s`, `2h05m`, `3d04h` (the IDLE
/// column).
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Cores used, as precise as it matters: `0.03`, `3.2`, `112` (the CPU
/// column).
pub fn human_cores(cores: f64) -> String {
    if cores < 0.995 {
        format!("{cores:.2}")
    } else if cores < 99.95 {
        format!("{cores:.1}")
    } else {
        format!("{cores:.0}")
    }
}

/// MiB as people read it: `812 MiB`, `39.1 GiB`.
pub fn human_mib(mib: u64) -> String {
    if mib < 1024 {
        format!("{mib} MiB")
    } else {
        format!("{:.1} GiB", mib as f64 / 1024.0)
    }
}

/// Control characters (C0, DEL, C1, the line/paragraph separators and the
/// bidirectional controls) replaced by `?`, so that text from labels and
/// command lines cannot move the cursor, change colours, split lines or
/// reorder what is shown (`U+202E nimda U+202C` showing as "admin").
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if unsafe_to_show(c) { '?' } else { c })
        .collect()
}

/// Whether a character may change how a terminal shows what follows it.
pub fn unsafe_to_show(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}'
            // Embeddings, overrides, isolates and their ends.
            | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            // Marks that set a direction.
            | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
}

/// The columns a terminal gives `text` (a CJK character or an emoji takes
/// two).
pub fn display_width(text: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(text)
}

/// The columns a terminal gives one character (0 for a control character,
/// which [`printable`] has replaced anyway).
fn char_width(c: char) -> usize {
    unicode_width::UnicodeWidthChar::width(c).unwrap_or(0)
}

/// Cuts `text` to `width` terminal columns, ending in `…` when cut (a wide
/// character that would cross the edge goes whole).
pub fn fit(text: &str, width: usize) -> String {
    if display_width(text) <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut kept = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = char_width(c);
        if used + w + 1 > width {
            break;
        }
        used += w;
        kept.push(c);
    }
    format!("{kept}…")
}

/// `text` padded with spaces to `width` terminal columns (before it when
/// `right`: right-aligned).
pub fn pad(text: &str, width: usize, right: bool) -> String {
    let fill = " ".repeat(width.saturating_sub(display_width(text)));
    if right {
        format!("{fill}{text}")
    } else {
        format!("{text}{fill}")
    }
}

/// How a piece of the output should look on a terminal, chosen from what it
/// shows (never from its text). Plain text ignores it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Style {
    /// Nothing special.
    #[default]
    Plain,
    /// The table's header.
    Header,
    /// Something failing: a collector that failed, an unhealthy, restarting
    /// or dead container, a scan that saw no container source.
    Failed,
    /// An idle workload (`activity.idle`).
    Idle,
    /// A value unknown where it matters: the GPU activity of a workload that
    /// holds GPU memory (`?`).
    Unknown,
}

/// A run of text in one style.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// The text (printable, no new line).
    pub text: String,
    /// How it looks.
    pub style: Style,
}

/// One line of output, as spans.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Line(pub Vec<Span>);

impl Line {
    /// A line of one style.
    pub fn new(text: impl Into<String>, style: Style) -> Line {
        let mut line = Line::default();
        line.push(text, style);
        line
    }

    /// A plain line.
    pub fn plain(text: impl Into<String>) -> Line {
        Line::new(text, Style::Plain)
    }

    /// Adds `text` in `style` at the end.
    pub fn push(&mut self, text: impl Into<String>, style: Style) {
        let text = text.into();
        match self.0.last_mut() {
            Some(last) if last.style == style => last.text.push_str(&text),
            _ if text.is_empty() => {}
            _ => self.0.push(Span { text, style }),
        }
    }

    /// The text, without styles.
    pub fn text(&self) -> String {
        self.0.iter().map(|s| s.text.as_str()).collect()
    }

    /// The terminal columns it takes.
    pub fn width(&self) -> usize {
        self.0.iter().map(|s| display_width(&s.text)).sum()
    }

    /// Cut to `width` terminal columns, ending in `…` (in the style of the
    /// span it cuts) when cut.
    pub fn fit(self, width: usize) -> Line {
        if self.width() <= width {
            return self;
        }
        let mut out = Line::default();
        let mut used = 0;
        for span in self.0 {
            let mut kept = String::new();
            for c in span.text.chars() {
                let w = char_width(c);
                if used + w + 1 > width {
                    if width > 0 {
                        kept.push('…');
                    }
                    out.push(kept, span.style);
                    return out;
                }
                used += w;
                kept.push(c);
            }
            out.push(kept, span.style);
        }
        out
    }

    /// Without the spaces it ends in.
    fn trim_end(mut self) -> Line {
        while let Some(last) = self.0.last_mut() {
            let kept = last.text.trim_end().len();
            last.text.truncate(kept);
            if !last.text.is_empty() {
                break;
            }
            self.0.pop();
        }
        self
    }
}

/// Lines of output with their styles: [`Styled::plain`] for a pipe, or
/// coloured by the terminal's front end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Styled {
    /// The lines, without their new lines.
    pub lines: Vec<Line>,
}

impl Styled {
    /// Plain text, each line of it a plain line.
    pub fn plain_lines(text: &str) -> Styled {
        Styled {
            lines: text.lines().map(Line::plain).collect(),
        }
    }

    /// Adds a line.
    pub fn push(&mut self, line: Line) {
        self.lines.push(line);
    }

    /// Adds the lines of `other`.
    pub fn append(&mut self, other: Styled) {
        self.lines.extend(other.lines);
    }

    /// The text without styles, each line ending in a new line.
    pub fn plain(&self) -> String {
        self.lines.iter().map(|l| l.text() + "\n").collect()
    }
}

/// A column of the table, as `--format` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    /// Container id or PID.
    Id,
    /// Container name or PID.
    Name,
    /// Owner.
    User,
    /// How it was started.
    Origin,
    /// `Up 5m (healthy)`, `Exited`, ...
    Status,
    /// GPUs given or used.
    Gpus,
    /// GPU memory held.
    GpuMem,
    /// GPU utilisation: `37%`, `?` (holds GPU memory, activity unknown),
    /// `-` (none held, or unknown).
    GpuUtil,
    /// Cores used: `0.03`, `3.2`; `-` unknown.
    Cpu,
    /// For how long it has been idle: `2h05m`; `-` while active.
    Idle,
    /// Image or command line.
    Image,
    /// Age as the engine says (a process: since first seen).
    Created,
    /// `container`, `process` or `gpu-use`.
    Kind,
}

impl Column {
    /// The table's columns, in order.
    pub const TABLE: [Column; 12] = [
        Column::Id,
        Column::Name,
        Column::User,
        Column::Origin,
        Column::Status,
        Column::Gpus,
        Column::GpuMem,
        Column::GpuUtil,
        Column::Cpu,
        Column::Idle,
        Column::Image,
        Column::Created,
    ];

    /// Every column, with the names `--format` takes for it (lower case,
    /// `_` and `.` ignored: `gpu_mem`, `{{.GPUMem}}`).
    pub const NAMES: [(Column, &'static [&'static str]); 13] = [
        (Column::Id, &["id"]),
        (Column::Name, &["name", "names", "pid"]),
        (Column::User, &["user"]),
        (Column::Origin, &["origin"]),
        (Column::Status, &["status", "state"]),
        (Column::Gpus, &["gpus", "gpu"]),
        (Column::GpuMem, &["gpumem", "gpumemory"]),
        (Column::GpuUtil, &["gpuutil", "gpu%", "gpuutilpercent"]),
        (Column::Cpu, &["cpu", "cpucores"]),
        (Column::Idle, &["idle", "idles", "idlefor"]),
        (Column::Image, &["image", "command", "what"]),
        (Column::Created, &["created", "createdat", "age"]),
        (Column::Kind, &["kind"]),
    ];

    /// The column called `name` (case, `_`, `-` and a leading `.` ignored).
    pub fn named(name: &str) -> Option<Column> {
        let key: String = name
            .trim()
            .trim_start_matches('.')
            .chars()
            .filter(|c| !matches!(c, '_' | '-'))
            .flat_map(char::to_lowercase)
            .collect();
        Column::NAMES
            .iter()
            .find(|(_, names)| names.contains(&key.as_str()))
            .map(|(c, _)| *c)
    }

    fn header(self) -> &'static str {
        match self {
            Column::Id => "ID",
            Column::Name => "NAME",
            Column::User => "USER",
            Column::Origin => "ORIGIN",
            Column::Status => "STATUS",
            Column::Gpus => "GPUS",
            Column::GpuMem => "GPU MEM",
            Column::GpuUtil => "GPU%",
            Column::Cpu => "CPU",
            Column::Idle => "IDLE",
            Column::Image => "IMAGE/CMD",
            Column::Created => "CREATED",
            Column::Kind => "KIND",
        }
    }

    /// What this row shows in this column (printable).
    pub fn cell(self, r: &Row) -> String {
        match self {
            Column::Id => none_as_dash(printable(&r.id)),
            Column::Name => printable(&r.name),
            Column::User => printable(&r.user),
            Column::Origin => printable(&r.origin),
            Column::Status => status_cell(r),
            Column::Gpus => {
                let gpus = none_as_dash(printable(&r.gpus.join(",")));
                if r.gpus_label_only {
                    format!("{gpus} (labels only)")
                } else {
                    gpus
                }
            }
            Column::GpuMem => r.gpu_memory_mb.map_or_else(|| "-".to_string(), human_mib),
            Column::GpuUtil => match (r.gpu_util_percent, r.gpu_held) {
                (Some(p), _) => format!("{p:.0}%"),
                (None, true) => "?".to_string(),
                (None, false) => "-".to_string(),
            },
            Column::Cpu => r.cpu_cores.map_or_else(|| "-".to_string(), human_cores),
            Column::Idle => r.idle_s.map_or_else(|| "-".to_string(), human_duration),
            Column::Image => printable(&r.what),
            Column::Created => r
                .created_s
                .map_or_else(|| "-".to_string(), |s| format!("{} ago", human_age(s))),
            Column::Kind => match r.kind {
                Kind::Container => "container".to_string(),
                Kind::Process => "process".to_string(),
                Kind::GpuUse => "gpu-use".to_string(),
            },
        }
    }

    /// How this row's cell looks: [`Style::Unknown`] for the `?` of a GPU
    /// activity unknown while it holds GPU memory, else the row's style.
    pub fn style(self, r: &Row) -> Style {
        match self {
            Column::GpuUtil if r.gpu_util_percent.is_none() && r.gpu_held => Style::Unknown,
            _ => r.style(),
        }
    }

    /// Whether its cells are numbers, aligned right.
    fn right_aligned(self) -> bool {
        matches!(
            self,
            Column::GpuMem | Column::GpuUtil | Column::Cpu | Column::Idle
        )
    }
}

fn none_as_dash(text: String) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text
    }
}

/// `Up 5m (healthy)`, `Exited`, `Created`, as `docker ps` words them; a
/// process's `running`/`pending`.
fn status_cell(r: &Row) -> String {
    if r.kind != Kind::Container {
        return printable(&r.status);
    }
    let mut text = match (r.status.as_str(), r.up_s) {
        ("running", Some(up)) => format!("Up {}", human_age(up)),
        ("paused", Some(up)) => format!("Up {} (Paused)", human_age(up)),
        ("running", None) => "Up".to_string(),
        (state, _) => {
            let mut chars = state.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_uppercase().chain(chars).collect::<String>()
            })
        }
    };
    if let Some(health) = &r.health {
        text = format!("{text} ({health})");
    }
    printable(&text)
}

/// The widths of `columns`: each as wide as its widest cell (in terminal
/// columns); when fitted, IMAGE/CMD, NAME, GPUS, ORIGIN, USER and STATUS give
/// up space until the line fits; when that is not enough ORIGIN is left out
/// (width 0), then ID (NAME still tells a workload), and the rest give up
/// more, NAME last. The activity columns (GPU%, CPU, IDLE) and CREATED are
/// never cut.
fn widths(columns: &[Column], table: &[Vec<String>], layout: Layout) -> Vec<usize> {
    let mut natural: Vec<usize> = columns.iter().map(|c| display_width(c.header())).collect();
    for row in table {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = natural.get_mut(i) {
                *w = (*w).max(display_width(cell));
            }
        }
    }
    let Layout::Fitted { width } = layout else {
        return natural;
    };
    let total = |w: &[usize]| {
        let shown = w.iter().filter(|x| **x > 0).count();
        w.iter().sum::<usize>() + 2 * shown.saturating_sub(1)
    };
    let at = |c: Column| columns.iter().position(|x| *x == c);
    let shrink = |w: &mut Vec<usize>, steps: &[(Column, usize)]| {
        for &(column, floor) in steps {
            let over = total(w).saturating_sub(width);
            if let Some(i) = at(column).filter(|&i| w[i] > 0) {
                let floor = floor.max(display_width(column.header()));
                w[i] -= over.min(w[i].saturating_sub(floor));
            }
        }
    };
    let first = [
        (Column::Image, 16),
        (Column::Name, 12),
        (Column::Gpus, 8),
        (Column::Origin, 8),
        (Column::User, 8),
        (Column::Status, 12),
        (Column::Name, 8),
        (Column::Image, 10),
    ];
    // NAME last: at 80 columns it keeps 8.
    let more = [
        (Column::Image, 6),
        (Column::Gpus, 5),
        (Column::Status, 8),
        (Column::User, 6),
        (Column::Name, 6),
    ];
    let mut w = natural.clone();
    for left_out in [&[][..], &[Column::Origin], &[Column::Origin, Column::Id]] {
        w = natural.clone();
        for column in left_out {
            if let Some(i) = at(*column) {
                w[i] = 0;
            }
        }
        shrink(&mut w, &first);
        if total(&w) <= width {
            return w;
        }
    }
    shrink(&mut w, &more);
    w
}

/// One line of the table: each cell cut and padded to its column's width
/// (a column of width 0 left out), in `style` unless the cell has its own;
/// fitted to `fitted` columns when given.
fn table_line(
    columns: &[Column],
    cells: &[(String, Style)],
    w: &[usize],
    style: Style,
    fitted: Option<usize>,
) -> Line {
    let mut line = Line::default();
    let mut first = true;
    for ((column, (cell, cell_style)), &width) in columns.iter().zip(cells).zip(w) {
        if width == 0 {
            continue;
        }
        if !first {
            line.push("  ", style);
        }
        first = false;
        line.push(
            pad(&fit(cell, width), width, column.right_aligned()),
            *cell_style,
        );
    }
    let line = line.trim_end();
    match fitted {
        Some(width) => line.fit(width),
        None => line,
    }
}

/// The cells of `rows` in `columns`, each with its style.
fn cells(rows: &[Row], columns: &[Column]) -> Vec<Vec<(String, Style)>> {
    rows.iter()
        .map(|r| columns.iter().map(|c| (c.cell(r), c.style(r))).collect())
        .collect()
}

fn headers(columns: &[Column]) -> Vec<(String, Style)> {
    columns
        .iter()
        .map(|c| (c.header().to_string(), Style::Header))
        .collect()
}

/// Per user: workloads, GPU memory they are known to hold.
fn totals(rows: &[Row]) -> BTreeMap<&str, (usize, u64)> {
    let mut by_user: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for r in rows {
        let t = by_user.entry(r.user.as_str()).or_default();
        t.0 += 1;
        t.1 += r.gpu_memory_mb.unwrap_or(0);
    }
    by_user
}

/// What the last scan could not see: the collector instances that provide
/// `kind` when every one of them failed (empty when one answered, or none
/// provides it, or the inventory predates the report's `provides`).
pub fn all_failed(inv: &Inventory, kind: FactKind) -> Vec<&str> {
    let Some(scan) = &inv.scan else {
        return Vec::new();
    };
    let sources: Vec<(&str, &CollectorReport)> = scan
        .collectors
        .iter()
        .filter(|(_, r)| r.provides.contains(&kind))
        .map(|(n, r)| (n.as_str(), r))
        .collect();
    if sources.iter().all(|(_, r)| !r.ok) {
        sources.into_iter().map(|(n, _)| n).collect()
    } else {
        Vec::new()
    }
}

/// The table: header, rows, and total lines, or a one-line note when
/// nothing matches. In [`Order::ByUser`] a total line follows each user's
/// rows; in [`Order::ByWaste`] (`--idle`) one total line ends the table.
/// `gpu_known`: whether any GPU source answered (else the totals say the
/// GPU memory is unknown, not 0).
pub fn table(rows: &[Row], layout: Layout, gpu_known: bool, order: Order) -> Styled {
    let mut out = Styled::default();
    if rows.is_empty() {
        out.push(Line::plain("no workloads match"));
        return out;
    }
    let fitted = match layout {
        Layout::Fitted { width } => Some(width),
        Layout::Wide => None,
    };
    let columns = Column::TABLE;
    let table = cells(rows, &columns);
    let plain: Vec<Vec<String>> = table
        .iter()
        .map(|row| row.iter().map(|(text, _)| text.clone()).collect())
        .collect();
    let w = widths(&columns, &plain, layout);
    out.push(table_line(
        &columns,
        &headers(&columns),
        &w,
        Style::Header,
        fitted,
    ));
    let memory = |mib: u64| {
        if gpu_known {
            format!("{} GPU memory", human_mib(mib))
        } else {
            "GPU memory unknown".to_string()
        }
    };
    let plural = |count: usize| if count == 1 { "" } else { "s" };
    let total_line = |text: String| match fitted {
        Some(width) => Line::plain(fit(&text, width)),
        None => Line::plain(text),
    };
    let totals = totals(rows);
    for (i, (row, cells)) in rows.iter().zip(&table).enumerate() {
        out.push(table_line(&columns, cells, &w, row.style(), fitted));
        let last_of_user = rows.get(i + 1).is_none_or(|next| next.user != row.user);
        if order == Order::ByUser && last_of_user {
            let (count, mib) = totals.get(row.user.as_str()).copied().unwrap_or_default();
            out.push(total_line(format!(
                "  total {}: {count} workload{}, {}",
                printable(&row.user),
                plural(count),
                memory(mib),
            )));
        }
    }
    if order == Order::ByWaste {
        let mib: u64 = rows.iter().filter_map(|r| r.gpu_memory_mb).sum();
        out.push(total_line(format!(
            "  total: {} idle workload{}, {} held idle",
            rows.len(),
            plural(rows.len()),
            memory(mib),
        )));
    }
    out
}

/// The rows in `columns` only, as `--format name,user,gpu_mem` prints
/// them: a header, then aligned cells, nothing cut.
pub fn columns_table(rows: &[Row], columns: &[Column]) -> String {
    let table = cells(rows, columns);
    let plain: Vec<Vec<String>> = table
        .iter()
        .map(|row| row.iter().map(|(text, _)| text.clone()).collect())
        .collect();
    let w = widths(columns, &plain, Layout::Wide);
    let mut out = Styled::default();
    out.push(table_line(
        columns,
        &headers(columns),
        &w,
        Style::Header,
        None,
    ));
    for cells in &table {
        out.push(table_line(columns, cells, &w, Style::Plain, None));
    }
    out.plain()
}

/// The footer: how old the scan is, how long it took, and each collector's
/// health (`ok`, `skipped`, `unavailable`, or `FAILED: why`, the last
/// [`Style::Failed`]). Fitted to a terminal, the reasons are shortened
/// (down to none) until it fits.
pub fn footer(inv: &Inventory, now: Timestamp, layout: Layout) -> Line {
    let Some(scan) = &inv.scan else {
        return Line::plain("no scan recorded yet");
    };
    let when = human_age(age(scan.started_at, now));
    let head = format!("scan {when} ago, took {} ms; ", scan.duration_ms);
    // (name's part without its reason, the reason of a failure)
    let parts: Vec<(String, Option<String>)> = scan
        .collectors
        .iter()
        .map(|(name, r)| match (&r.error, &r.skipped) {
            // Not on this machine: the reason is in the log and the
            // inventory (`validate` says what it looks for).
            (Some(_), _) if r.unavailable => (format!("{name} unavailable"), None),
            (Some(e), _) => (format!("{name} FAILED"), Some(printable(e))),
            (None, Some(_)) => (format!("{name} skipped"), None),
            (None, None) => (format!("{name} ok"), None),
        })
        .collect();
    let line = |budget: Option<usize>| {
        let mut line = Line::plain(head.clone());
        for (i, (part, why)) in parts.iter().enumerate() {
            if i > 0 {
                line.push(", ", Style::Plain);
            }
            let style = if why.is_some() {
                Style::Failed
            } else {
                Style::Plain
            };
            let text = match (why, budget) {
                (Some(why), None) => format!("{part}: {why}"),
                (Some(why), Some(b)) if b >= 8 => format!("{part}: {}", fit(why, b)),
                _ => part.clone(),
            };
            line.push(text, style);
        }
        line
    };
    let full = line(None);
    let Layout::Fitted { width } = layout else {
        return full;
    };
    if full.width() <= width {
        return full;
    }
    let failures = parts.iter().filter(|(_, why)| why.is_some()).count().max(1);
    let bare = line(Some(0)).width();
    let budget = width.saturating_sub(bare) / failures;
    // ": " before each reason.
    line(Some(budget.saturating_sub(2))).fit(width)
}

/// One summary line per GPU, as `top` shows them above the table: index,
/// name, memory used of total, utilisation (`-` where NVML did not say).
pub fn gpu_lines(inv: &Inventory) -> Styled {
    let mut gpus: Vec<&GpuDevice> = inv.gpus.values().collect();
    gpus.sort_by_key(|g| g.index);
    let mut out = Styled::default();
    for g in gpus {
        let memory = match (g.memory_used_mb, g.memory_total_mb) {
            (Some(used), Some(total)) => format!("{} / {}", human_mib(used), human_mib(total)),
            _ => "-".to_string(),
        };
        let util = g
            .utilization_pct
            .map_or_else(|| "-".to_string(), |u| format!("{u}%"));
        out.push(Line::plain(format!(
            "GPU {}  {}  {}  mem {memory}  util {util}",
            g.index,
            short_uuid(&g.uuid),
            printable(&g.name),
        )));
    }
    out
}

/// Table and footer, as `ps` prints them, with their styles.
pub fn render_styled(inv: &Inventory, filter: &Filter, layout: Layout, now: Timestamp) -> Styled {
    let rows = rows(inv, filter, now);
    let gpu_known = all_failed(inv, FactKind::GpuProcesses).is_empty();
    let mut out = table(&rows, layout, gpu_known, filter.order());
    out.push(Line::default());
    out.push(footer(inv, now, layout));
    out
}

/// Table and footer, as `ps` prints them in a pipe.
pub fn render(inv: &Inventory, filter: &Filter, layout: Layout, now: Timestamp) -> String {
    render_styled(inv, filter, layout, now).plain()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CollectorReport, ScanReport};

    const NOW: Timestamp = Timestamp::from_unix_seconds(1_795_675_200); // 2026-11-26T06:40:00Z

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    fn inventory() -> Inventory {
        let mut inv = Inventory::default();
        let c = |name: &str, user: &str, status: &str, gpu: bool| ContainerEntry {
            id: format!("{name:0>12}"),
            name: name.to_string(),
            origin: "ds01-managed".to_string(),
            user: user.to_string(),
            has_gpu: gpu,
            gpu_devices: if gpu { vec!["0:1".to_string()] } else { vec![] },
            status: status.to_string(),
            image: "ds01/pytorch:latest".to_string(),
            created_at: Some(at("2026-11-24T06:40:00Z")),
            detected_at: at("2026-11-26T05:40:00Z"),
            inspect: Some(crate::model::InspectFacts {
                started_at: "2026-11-26T06:10:00.123Z".to_string(),
                ..Default::default()
            }),
            ..ContainerEntry::default()
        };
        let mut jupyter = c("alice-jupyter", "alice", "running", true);
        jupyter.activity = Some(Activity {
            cpu_cores: Some(3.2),
            sampled_s: Some(30.0),
            ..Activity::default()
        });
        // Idle for 2h05m.
        let mut web = c("bob-web", "bob", "running", false);
        web.activity = Some(Activity {
            cpu_cores: Some(0.01),
            net_bytes_per_s: Some(0.0),
            sampled_s: Some(30.0),
            idle_since: Some(at("2026-11-26T04:35:00Z")),
            idle: true,
            ..Activity::default()
        });
        for e in [jupyter, c("bob-old", "bob", "exited", false), web] {
            inv.containers.insert(e.id.clone(), e);
        }
        let p = ProcessEntry {
            pid: 447,
            user: "alice".to_string(),
            cmdline: "python3 train.py --epochs 10".to_string(),
            gpu_memory_mb: Some(40_960),
            gpu_uuid: "GPU-56c0b0b8-eb5c-605d-11d6-1bac317b478c".to_string(),
            detected_at: at("2026-11-26T06:39:00Z"),
            // Busy on a shared GPU: its GPU activity is unknown.
            activity: Some(Activity {
                cpu_cores: Some(0.98),
                sampled_s: Some(30.0),
                ..Activity::default()
            }),
            ..ProcessEntry::default()
        };
        inv.host_processes.insert(447, p);
        inv.scan = Some(ScanReport {
            started_at: at("2026-11-26T06:39:48Z"),
            duration_ms: 14,
            collectors: [
                ("docker", None),
                ("nvml", Some("unavailable: no libnvidia-ml")),
            ]
            .into_iter()
            .map(|(n, e)| {
                let report = CollectorReport {
                    ok: e.is_none(),
                    error: e.map(str::to_string),
                    ..CollectorReport::default()
                };
                (n.to_string(), report)
            })
            .collect(),
        });
        inv
    }

    #[test]
    fn the_table_groups_by_user_with_totals_and_a_footer() {
        let text = render(&inventory(), &Filter::default(), Layout::Wide, NOW);
        let expected = "\
ID             NAME           USER   ORIGIN        STATUS   GPUS           GPU MEM  GPU%   CPU   IDLE  IMAGE/CMD                     CREATED
alice-jupyter  alice-jupyter  alice  ds01-managed  Up 30m   0:1                  -     -   3.2      -  ds01/pytorch:latest           2d ago
447            447            alice  host          running  GPU-56c0b0b8  40.0 GiB     ?  0.98      -  python3 train.py --epochs 10  1m ago
  total alice: 2 workloads, 40.0 GiB GPU memory
00000bob-web   bob-web        bob    ds01-managed  Up 30m   -                    -     -  0.01  2h05m  ds01/pytorch:latest           2d ago
  total bob: 1 workload, 0 MiB GPU memory

scan 12s ago, took 14 ms; docker ok, nvml FAILED: unavailable: no libnvidia-ml
";
        assert_eq!(text, expected);
    }

    #[test]
    fn filters_all_user_and_gpu() {
        let inv = inventory();
        let names = |f: Filter| -> Vec<String> {
            rows(&inv, &f, NOW).into_iter().map(|r| r.name).collect()
        };
        assert_eq!(
            names(Filter::default()),
            ["alice-jupyter", "447", "bob-web"]
        );
        let all = Filter {
            all: true,
            ..Filter::default()
        };
        assert_eq!(names(all), ["alice-jupyter", "447", "bob-old", "bob-web"]);
        let bob = Filter {
            all: true,
            user: Some("bob".to_string()),
            ..Filter::default()
        };
        assert_eq!(names(bob), ["bob-old", "bob-web"]);
        let gpu = Filter {
            gpu_only: true,
            ..Filter::default()
        };
        assert_eq!(names(gpu.clone()), ["alice-jupyter", "447"]);
        // A container using a GPU it was not granted is a GPU workload too,
        // showing the GPU its processes use.
        let mut inv = inv.clone();
        if let Some(c) = inv.containers.get_mut("00000bob-web") {
            c.gpu_in_use = true;
            c.gpu_uuids = vec!["GPU-56c0b0b8-eb5c-605d".to_string()];
            c.gpu_memory_mb = Some(2048);
        }
        let rows = rows(&inv, &gpu, NOW);
        let bob = rows.iter().find(|r| r.name == "bob-web").expect("bob-web");
        assert_eq!(bob.gpus, ["GPU-56c0b0b8"]);
        assert_eq!(bob.gpu_memory_mb, Some(2048));
    }

    #[test]
    fn a_fitted_table_cuts_commands_and_names_to_the_width() {
        let mut inv = inventory();
        if let Some(p) = inv.host_processes.get_mut(&447) {
            p.cmdline = format!("python3 {}", "x".repeat(200));
        }
        for width in [80, 100, 110] {
            let text = table(
                &rows(&inv, &Filter::default(), NOW),
                Layout::Fitted { width },
                true,
                Order::ByUser,
            )
            .plain();
            for line in text.lines() {
                assert!(
                    display_width(line) <= width,
                    "too wide for {width}: {line:?}"
                );
            }
        }
        let text = table(
            &rows(&inv, &Filter::default(), NOW),
            Layout::Fitted { width: 100 },
            true,
            Order::ByUser,
        )
        .plain();
        assert!(text.contains("python3 x"), "{text}");
        assert!(text.contains('…'));
    }

    #[test]
    fn filters_combine_like_docker_ps() {
        let mut inv = inventory();
        if let Some(c) = inv.containers.get_mut("00000bob-old") {
            c.labels
                .insert("com.docker.compose.project".into(), "web".into());
        }
        let names = |conditions: &[&str]| -> Vec<String> {
            let f = Filter {
                conditions: conditions
                    .iter()
                    .map(|c| Condition::parse(c).expect("parses"))
                    .collect(),
                ..Filter::default()
            };
            rows(&inv, &f, NOW).into_iter().map(|r| r.name).collect()
        };
        // A status shows stopped containers without -a.
        assert_eq!(names(&["status=exited"]), ["bob-old"]);
        assert_eq!(
            names(&["label=com.docker.compose.project"]),
            Vec::<String>::new(),
            "not running"
        );
        assert_eq!(
            names(&["label=com.docker.compose.project=web", "status=exited"]),
            ["bob-old"]
        );
        assert_eq!(
            names(&["label=com.docker.compose.project=db", "status=exited"]),
            Vec::<String>::new()
        );
        // One value of each key: two users are either.
        assert_eq!(
            names(&["user=alice", "user=bob"]),
            ["alice-jupyter", "447", "bob-web"]
        );
        assert_eq!(names(&["user=alice", "origin=host"]), ["447"]);
        assert_eq!(names(&["name=jup"]), ["alice-jupyter"]);
        assert_eq!(names(&["id=0000"]), ["bob-web"]);
        assert_eq!(names(&["gpu=no"]), ["bob-web"]);
        assert_eq!(names(&["gpu=GPU-56c0"]), ["447"]);
        assert_eq!(names(&["gpu=0:1"]), ["alice-jupyter"]);
        assert!(Condition::parse("colour=red").is_err_and(|e| e.contains("the keys are")));
        assert!(Condition::parse("user").is_err());
    }

    #[test]
    fn the_gpus_column_says_all_and_labels_only() {
        let mut inv = inventory();
        if let Some(c) = inv.containers.get_mut("00000bob-web") {
            c.has_gpu = true;
            c.inspect = Some(crate::model::InspectFacts {
                device_requests: vec![crate::model::DeviceRequest {
                    count: -1,
                    capabilities: vec![vec!["gpu".into()]],
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        if let Some(c) = inv.containers.get_mut("alice-jupyter") {
            c.has_gpu = false;
            c.gpu_access = Some(GpuAccess::LabelOnly);
        }
        let text = render(&inv, &Filter::default(), Layout::Wide, NOW);
        let line = |name: &str| {
            text.lines()
                .find(|l| l.contains(name))
                .unwrap_or_else(|| panic!("{text}"))
                .to_string()
        };
        assert!(line("bob-web").contains("  all  "), "{text}");
        assert!(
            line("alice-jupyter").contains("0:1 (labels only)"),
            "{text}"
        );
    }

    #[test]
    fn unknown_gpu_memory_is_not_zero_and_unavailable_sources_are_one_word() {
        let mut inv = inventory();
        if let Some(scan) = inv.scan.as_mut() {
            for (name, r) in scan.collectors.iter_mut() {
                r.provides = vec![if name == "docker" {
                    FactKind::Containers
                } else {
                    FactKind::GpuProcesses
                }];
                if name == "nvml" {
                    r.unavailable = true;
                }
            }
        }
        let text = render(&inv, &Filter::default(), Layout::Wide, NOW);
        assert!(
            text.contains("total bob: 1 workload, GPU memory unknown"),
            "{text}"
        );
        assert!(text.ends_with("docker ok, nvml unavailable\n"), "{text}");
        assert_eq!(all_failed(&inv, FactKind::GpuProcesses), ["nvml"]);
        assert!(all_failed(&inv, FactKind::Containers).is_empty());
    }

    #[test]
    fn wide_characters_take_two_columns() {
        assert_eq!(display_width("名前"), 4);
        assert_eq!(fit("名前名前", 5), "名前…");
        assert_eq!(pad("名", 4, false), "名  ");
    }

    #[test]
    fn control_characters_from_outside_never_reach_the_terminal() {
        let mut inv = inventory();
        if let Some(c) = inv.containers.get_mut("alice-jupyter") {
            c.name = "evil\u{1b}[2J\u{2028}name\u{9b}".to_string();
        }
        let text = render(&inv, &Filter::default(), Layout::Wide, NOW);
        assert!(text.contains("evil?[2J?name?"));
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'));
    }

    #[test]
    fn one_summary_line_per_gpu_in_index_order() {
        let mut inv = Inventory::default();
        let gpu = |uuid: &str, index, used, util| GpuDevice {
            uuid: uuid.to_string(),
            index,
            name: "NVIDIA H100 80GB HBM3".to_string(),
            memory_used_mb: used,
            memory_total_mb: used.map(|_| 81_559),
            utilization_pct: util,
            samples_until_us: None,
        };
        for g in [
            gpu("GPU-bbbbbbbb-1", 1, None, None),
            gpu("GPU-56c0b0b8-eb5c", 0, Some(2587), Some(37)),
        ] {
            inv.gpus.insert(g.uuid.clone(), g);
        }
        assert_eq!(
            gpu_lines(&inv).plain(),
            "GPU 0  GPU-56c0b0b8  NVIDIA H100 80GB HBM3  mem 2.5 GiB / 79.6 GiB  util 37%\n\
             GPU 1  GPU-bbbbbbbb  NVIDIA H100 80GB HBM3  mem -  util -\n"
        );
    }

    #[test]
    fn nothing_to_show_is_one_line_not_an_empty_header() {
        let inv = Inventory::default();
        assert_eq!(
            render(&inv, &Filter::default(), Layout::Wide, NOW),
            "no workloads match\n\nno scan recorded yet\n"
        );
    }

    #[test]
    fn ages_and_sizes_read_like_docker_ps() {
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(95), "1m");
        assert_eq!(human_age(7200), "2h");
        assert_eq!(human_age(200_000), "2d");
        assert_eq!(human_mib(812), "812 MiB");
        assert_eq!(human_mib(40_000), "39.1 GiB");
        assert_eq!(short_uuid("GPU-56c0b0b8-eb5c-605d"), "GPU-56c0b0b8");
        assert_eq!(short_uuid("weird"), "weird");
    }

    #[test]
    fn durations_cores_and_unknowns_read_as_an_admin_expects() {
        assert_eq!(human_duration(-5), "0s");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(725), "12m05s");
        assert_eq!(human_duration(7500), "2h05m");
        assert_eq!(human_duration(3 * 86_400 + 4 * 3600 + 59), "3d04h");
        assert_eq!(human_cores(0.0), "0.00");
        assert_eq!(human_cores(0.03), "0.03");
        assert_eq!(human_cores(0.999), "1.0");
        assert_eq!(human_cores(3.21), "3.2");
        assert_eq!(human_cores(112.4), "112");
        let mut inv = inventory();
        // Unknown is not 0: a NaN from a broken reading is unknown too.
        if let Some(a) = inv
            .containers
            .get_mut("alice-jupyter")
            .and_then(|c| c.activity.as_mut())
        {
            a.cpu_cores = Some(f64::NAN);
            a.gpu_util_percent = Some(37.4);
        }
        let rows = rows(&inv, &Filter::default(), NOW);
        let row = |name: &str| rows.iter().find(|r| r.name == name).expect("row");
        let cells = |name: &str| -> Vec<String> {
            [Column::GpuUtil, Column::Cpu, Column::Idle]
                .iter()
                .map(|c| c.cell(row(name)))
                .collect()
        };
        assert_eq!(cells("alice-jupyter"), ["37%", "-", "-"]);
        // Holds 40 GiB, GPU activity unknown: `?`, styled unknown.
        assert_eq!(cells("447"), ["?", "0.98", "-"]);
        assert_eq!(Column::GpuUtil.style(row("447")), Style::Unknown);
        assert_eq!(Column::Cpu.style(row("447")), Style::Plain);
        // Holds none: nothing to know.
        assert_eq!(cells("bob-web"), ["-", "0.01", "2h05m"]);
        assert_eq!(row("bob-web").idle_s, Some(7500));
        // JSON: the values, unknown as null.
        let json = serde_json::to_value(&rows).expect("JSON");
        assert!(json[0]["cpu_cores"].is_null(), "{json}");
        assert_eq!(json[0]["gpu_util_percent"], 37.4);
        assert!(json[1]["gpu_util_percent"].is_null(), "{json}");
        assert_eq!(json[2]["idle_s"], 7500);
        assert_eq!(json[2]["idle"], true);
        assert_eq!(json[1]["idle"], false);
        assert!(json[1]["idle_s"].is_null(), "{json}");
        assert!(json[0].get("gpu_held").is_none(), "{json}");
    }

    #[test]
    fn idle_lists_only_idle_workloads_the_largest_waste_first() {
        let mut inv = inventory();
        let idle = |since: &str| Activity {
            cpu_cores: Some(0.0),
            gpu_util_percent: Some(0.0),
            idle_since: Some(at(since)),
            idle: true,
            ..Activity::default()
        };
        // 40 GiB for 10 minutes (24.6 M MiB-seconds) wastes more than 1 GiB
        // for 5 hours (18.4 M), which wastes more than no GPU for 2 hours.
        if let Some(p) = inv.host_processes.get_mut(&447) {
            p.activity = Some(idle("2026-11-26T06:30:00Z"));
        }
        let mut small = inv.containers["alice-jupyter"].clone();
        small.id = "000000small1".to_string();
        small.name = "small".to_string();
        small.user = "carol".to_string();
        small.gpu_in_use = true;
        small.gpu_memory_mb = Some(1024);
        small.activity = Some(idle("2026-11-26T01:40:00Z"));
        inv.containers.insert(small.id.clone(), small);
        let filter = Filter {
            idle_only: true,
            ..Filter::default()
        };
        let listed = rows(&inv, &filter, NOW);
        let names: Vec<&str> = listed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["447", "small", "bob-web"]);
        assert_eq!(listed[0].waste(), 40_960 * 600);
        assert_eq!(listed[1].waste(), 1024 * 18_000);
        assert_eq!(listed[2].waste(), 0);
        assert!(listed.iter().all(|r| r.style() == Style::Idle));
        // The table keeps that order: no per-user totals, one at the end.
        let text = render(&inv, &filter, Layout::Wide, NOW);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("447 "), "{text}");
        assert!(lines[2].starts_with("000000small1 "), "{text}");
        assert!(lines[3].starts_with("00000bob-web "), "{text}");
        assert_eq!(
            lines[4], "  total: 3 idle workloads, 41.0 GiB GPU memory held idle",
            "{text}"
        );
        assert!(!text.contains("total bob"), "{text}");
        // Nothing idle: the one-line note.
        let none = Inventory::default();
        assert!(render(&none, &filter, Layout::Wide, NOW).starts_with("no workloads match\n"));
    }

    /// The display column at which `marker` starts in `line`.
    fn column_of(line: &str, marker: &str) -> usize {
        let at = line
            .find(marker)
            .unwrap_or_else(|| panic!("no {marker:?} in {line:?}"));
        display_width(&line[..at])
    }

    /// Where the USER column starts (its cells and header after two spaces).
    fn user_column(line: &str, user: &str) -> usize {
        column_of(line, &format!("  {user}  ")) + 2
    }

    #[test]
    fn cjk_and_emoji_names_line_up_whole_and_cut() {
        let mut inv = inventory();
        if let Some(c) = inv.containers.get_mut("alice-jupyter") {
            c.name = "名前テスト".to_string();
        }
        if let Some(c) = inv.containers.get_mut("00000bob-web") {
            c.name = "🚀rocket🚀".to_string();
        }
        let text = render(&inv, &Filter::default(), Layout::Wide, NOW);
        let rows: Vec<&str> = text.lines().filter(|l| l.ends_with(" ago")).collect();
        assert_eq!(rows.len(), 3, "{text}");
        let header = text.lines().next().expect("header");
        for (line, user) in rows.iter().zip(["alice", "alice", "bob"]) {
            assert_eq!(
                user_column(line, user),
                user_column(header, "USER"),
                "{text}"
            );
        }
        let want = column_of(header, "IMAGE/CMD");
        for (line, image) in rows.iter().zip(["ds01/", "python3", "ds01/"]) {
            assert_eq!(column_of(line, image), want, "{text}");
        }
        // Cut to the terminal: long wide names end in `…`, every line fits
        // and the columns still line up (the cut never splits a character
        // or leaves the column short).
        if let Some(c) = inv.containers.get_mut("alice-jupyter") {
            c.name = "長い名前".repeat(6);
        }
        if let Some(c) = inv.containers.get_mut("00000bob-web") {
            c.name = "🚀".repeat(20);
        }
        for width in [80, 81, 97, 120] {
            let text = render(&inv, &Filter::default(), Layout::Fitted { width }, NOW);
            for line in text.lines() {
                assert!(display_width(line) <= width, "{width}: {line:?}");
            }
            let header = text.lines().next().expect("header");
            let want = user_column(header, "USER");
            let rows: Vec<&str> = text.lines().filter(|l| l.ends_with(" ago")).collect();
            assert_eq!(rows.len(), 3, "{width}:\n{text}");
            for (line, user) in rows.iter().zip(["alice", "alice", "bob"]) {
                assert_eq!(user_column(line, user), want, "{width}:\n{text}");
            }
            assert!(text.contains('…'), "{width}:\n{text}");
        }
        // A line cut by styles keeps its widths too.
        let line = Line(vec![
            Span {
                text: "ab".into(),
                style: Style::Header,
            },
            Span {
                text: "名前名前".into(),
                style: Style::Idle,
            },
        ]);
        let cut = line.fit(7);
        assert_eq!(cut.text(), "ab名前…");
        assert_eq!(cut.width(), 7);
        assert_eq!(cut.0[1].style, Style::Idle);
        assert_eq!(Line::plain("🚀🚀🚀").fit(4).text(), "🚀…");
        assert_eq!(Line::plain("abc").fit(0).text(), "");
    }

    #[test]
    fn styles_come_from_the_data_not_the_text() {
        let mut inv = inventory();
        // Names that look like what is coloured are not coloured for it.
        if let Some(c) = inv.containers.get_mut("alice-jupyter") {
            c.name = "docker FAILED: x".to_string();
            c.health = Some(crate::model::Health::Unhealthy);
        }
        if let Some(p) = inv.host_processes.get_mut(&447) {
            p.cmdline = "echo nvml FAILED".to_string();
        }
        let styled = render_styled(&inv, &Filter::default(), Layout::Wide, NOW);
        let line = |text: &str| {
            styled
                .lines
                .iter()
                .find(|l| l.text().contains(text))
                .unwrap_or_else(|| panic!("{text}: {styled:?}"))
        };
        let styles = |l: &Line| -> Vec<Style> { l.0.iter().map(|s| s.style).collect() };
        assert_eq!(styles(&styled.lines[0]), [Style::Header]);
        // Unhealthy: the whole row failed, for what it is.
        assert_eq!(styles(line("docker FAILED: x")), [Style::Failed]);
        // A process whose command says FAILED is plain but its unknown GPU%.
        let process = line("echo nvml FAILED");
        assert_eq!(
            styles(process),
            [Style::Plain, Style::Unknown, Style::Plain]
        );
        assert_eq!(process.0[1].text.trim(), "?");
        // Idle: the whole row.
        assert_eq!(styles(line("bob-web")), [Style::Idle]);
        // Totals plain; the footer's failed collector, and only it, failed.
        assert_eq!(styles(line("total bob")), [Style::Plain]);
        let footer = styled.lines.last().expect("footer");
        assert_eq!(styles(footer), [Style::Plain, Style::Failed]);
        assert_eq!(
            footer.0[1].text,
            "nvml FAILED: unavailable: no libnvidia-ml"
        );
        // The plain text is the same whatever the styles.
        assert_eq!(
            styled.plain(),
            render(&inv, &Filter::default(), Layout::Wide, NOW)
        );
    }
}
