//! The people's view of an inventory: one table of containers and host GPU
//! processes, as `detect-workloads ps`, `top` and the stdout sink's `table`
//! format print it. Pure functions over an [`Inventory`]: no I/O here.
//!
//! Rows are sorted by user, each user followed by a total line, and a footer
//! says how old the scan is and how each collector did. Every value that comes
//! from outside (names, labels, command lines) has its control characters
//! replaced, so the table is safe to print on a terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::model::{ContainerEntry, GpuDevice, Inventory, ProcessEntry, UserGpuUse};

/// Which workloads to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Stopped and created containers too (`-a`).
    pub all: bool,
    /// Only this user's workloads.
    pub user: Option<String>,
    /// Only workloads with GPU access or use.
    pub gpu_only: bool,
}

/// How to lay the table out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Fitted to `width` columns: long names and commands are cut with `…`.
    Fitted {
        /// The terminal's width.
        width: usize,
    },
    /// Nothing cut.
    Wide,
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
    /// Container name, or the PID.
    pub name: String,
    /// Owner.
    pub user: String,
    /// How a container was started (`host` for a process).
    pub origin: String,
    /// Engine state, or `running`/`pending` for a process.
    pub status: String,
    /// GPUs: a container's devices, a process's GPU UUID (shortened).
    pub gpus: Vec<String>,
    /// GPU memory in MiB, when known.
    pub gpu_memory_mb: Option<u64>,
    /// Image of a container, command line of a process.
    pub what: String,
    /// Seconds since it was first seen.
    pub age_s: Option<i64>,
    /// Whether it has GPU access or uses a GPU.
    #[serde(skip)]
    pub gpu: bool,
}

/// Container states `ps` shows without `-a` (as `docker ps` does).
const UP: [&str; 3] = ["running", "paused", "restarting"];

/// The rows to show, sorted by user then kind then name; `now` is seconds
/// since the epoch.
pub fn rows(inv: &Inventory, filter: &Filter, now: i64) -> Vec<Row> {
    let containers = inv
        .containers
        .values()
        .filter(|c| filter.all || UP.contains(&c.status.as_str()))
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
        .collect();
    rows.sort_by(|a, b| (&a.user, a.kind, &a.name).cmp(&(&b.user, b.kind, &b.name)));
    rows
}

/// A user's GPU use by short-lived processes: its PIDs of now as the name.
fn use_row(u: &UserGpuUse, now: i64) -> Row {
    let pids: Vec<String> = u.pids.iter().map(u32::to_string).collect();
    Row {
        kind: Kind::GpuUse,
        name: pids.join(","),
        user: u.user.clone(),
        origin: "host".to_string(),
        status: "short-lived".to_string(),
        gpus: vec![short_uuid(&u.gpu_uuid)],
        gpu_memory_mb: u.gpu_memory_mb,
        what: format!(
            "GPU use by short-lived processes ({} so far)",
            u.processes_seen
        ),
        age_s: age(&u.detected_at, now),
        gpu: true,
    }
}

fn container_row(c: &ContainerEntry, now: i64) -> Row {
    Row {
        kind: Kind::Container,
        name: c.name.clone(),
        user: c.user.clone(),
        origin: c.origin.clone(),
        status: c.status.clone(),
        // What it was granted, else the GPUs its processes use.
        gpus: if c.gpu_devices.is_empty() {
            c.gpu_uuids.iter().map(|u| short_uuid(u)).collect()
        } else {
            c.gpu_devices.clone()
        },
        gpu_memory_mb: c.gpu_memory_mb,
        what: c.image.clone(),
        age_s: age(&c.detected_at, now),
        gpu: c.has_gpu || !c.gpu_devices.is_empty() || c.gpu_in_use,
    }
}

fn process_row(p: &ProcessEntry, status: &str, now: i64) -> Row {
    let uuids = if p.gpu_uuids.is_empty() {
        std::slice::from_ref(&p.gpu_uuid)
    } else {
        &p.gpu_uuids[..]
    };
    Row {
        kind: Kind::Process,
        name: p.pid.to_string(),
        user: p.user.clone(),
        origin: "host".to_string(),
        status: status.to_string(),
        gpus: uuids.iter().map(|u| short_uuid(u)).collect(),
        gpu_memory_mb: p.gpu_memory_mb,
        what: p.cmdline.clone(),
        age_s: age(&p.detected_at, now),
        gpu: true,
    }
}

fn age(since: &str, now: i64) -> Option<i64> {
    crate::timefmt::parse_rfc3339(since).map(|t| (now - t).max(0))
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

/// Cuts `text` to `width` characters, ending in `…` when cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{kept}…")
}

const HEADERS: [&str; 9] = [
    "KIND",
    "NAME/PID",
    "USER",
    "ORIGIN",
    "STATUS",
    "GPUS",
    "GPU MEM",
    "IMAGE/COMMAND",
    "AGE",
];

fn cells(r: &Row) -> [String; 9] {
    [
        match r.kind {
            Kind::Container => "container".to_string(),
            Kind::Process => "process".to_string(),
            Kind::GpuUse => "gpu-use".to_string(),
        },
        printable(&r.name),
        printable(&r.user),
        printable(&r.origin),
        printable(&r.status),
        if r.gpus.is_empty() {
            "-".to_string()
        } else {
            printable(&r.gpus.join(","))
        },
        r.gpu_memory_mb.map_or_else(|| "-".to_string(), human_mib),
        printable(&r.what),
        r.age_s.map_or_else(|| "-".to_string(), human_age),
    ]
}

/// The widths of the columns: each as wide as its widest cell; when fitted,
/// NAME and IMAGE/COMMAND give up space until the line fits.
fn widths(table: &[[String; 9]], layout: Layout) -> [usize; 9] {
    let mut w = HEADERS.map(|h| h.chars().count());
    for row in table {
        for (i, cell) in row.iter().enumerate() {
            w[i] = w[i].max(cell.chars().count());
        }
    }
    if let Layout::Fitted { width } = layout {
        let total = |w: &[usize; 9]| w.iter().sum::<usize>() + 2 * (w.len() - 1);
        let mut over = total(&w).saturating_sub(width);
        for (col, floor) in [(7, 16), (1, 12), (7, 8)] {
            let give = over.min(w[col].saturating_sub(floor));
            w[col] -= give;
            over -= give;
        }
    }
    w
}

fn write_line(out: &mut String, cells: &[String; 9], w: &[usize; 9]) {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        let cell = fit(cell, w[i]);
        if i == 6 {
            let _ = write!(line, "{cell:>width$}  ", width = w[i]);
        } else if i == cells.len() - 1 {
            line.push_str(&cell);
        } else {
            let _ = write!(line, "{cell:<width$}  ", width = w[i]);
        }
    }
    out.push_str(line.trim_end());
    out.push('\n');
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

/// The table: header, rows grouped by user with a total line after each
/// user's rows, or a one-line note when nothing matches.
pub fn table(rows: &[Row], layout: Layout) -> String {
    if rows.is_empty() {
        return "no workloads match\n".to_string();
    }
    let table: Vec<[String; 9]> = rows.iter().map(cells).collect();
    let w = widths(&table, layout);
    let mut out = String::new();
    write_line(&mut out, &HEADERS.map(str::to_string), &w);
    let totals = totals(rows);
    for (i, (row, cells)) in rows.iter().zip(&table).enumerate() {
        write_line(&mut out, cells, &w);
        let last_of_user = rows.get(i + 1).is_none_or(|next| next.user != row.user);
        if last_of_user {
            let (count, mib) = totals.get(row.user.as_str()).copied().unwrap_or_default();
            let _ = writeln!(
                out,
                "  total {}: {count} workload{}, {} GPU memory",
                printable(&row.user),
                if count == 1 { "" } else { "s" },
                human_mib(mib)
            );
        }
    }
    out
}

/// The footer: how old the scan is, how long it took, and each collector's
/// health (`ok`, `skipped`, or `FAILED: why`).
pub fn footer(inv: &Inventory, now: i64) -> String {
    let Some(scan) = &inv.scan else {
        return "no scan recorded yet\n".to_string();
    };
    let when = age(&scan.started_at, now).map_or_else(|| "?".to_string(), human_age);
    let health: Vec<String> = scan
        .collectors
        .iter()
        .map(|(name, r)| match (&r.error, &r.skipped) {
            (Some(e), _) => format!("{name} FAILED: {}", printable(e)),
            (None, Some(_)) => format!("{name} skipped"),
            (None, None) => format!("{name} ok"),
        })
        .collect();
    format!(
        "scan {when} ago, took {} ms; {}\n",
        scan.duration_ms,
        health.join(", ")
    )
}

/// One summary line per GPU, as `top` shows them above the table: index,
/// name, memory used of total, utilisation (`-` where NVML did not say).
pub fn gpu_lines(inv: &Inventory) -> String {
    let mut gpus: Vec<&GpuDevice> = inv.gpus.values().collect();
    gpus.sort_by_key(|g| g.index);
    let mut out = String::new();
    for g in gpus {
        let memory = match (g.memory_used_mb, g.memory_total_mb) {
            (Some(used), Some(total)) => format!("{} / {}", human_mib(used), human_mib(total)),
            _ => "-".to_string(),
        };
        let util = g
            .utilization_pct
            .map_or_else(|| "-".to_string(), |u| format!("{u}%"));
        let _ = writeln!(
            out,
            "GPU {}  {}  {}  mem {memory}  util {util}",
            g.index,
            short_uuid(&g.uuid),
            printable(&g.name),
        );
    }
    out
}

/// Table and footer, as `ps` prints them.
pub fn render(inv: &Inventory, filter: &Filter, layout: Layout, now: i64) -> String {
    let rows = rows(inv, filter, now);
    format!("{}\n{}", table(&rows, layout), footer(inv, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CollectorReport, ScanReport};

    const NOW: i64 = 1_795_675_200; // 2026-11-26T06:40:00Z

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
            detected_at: "2026-11-26T05:40:00Z".to_string(),
            ..ContainerEntry::default()
        };
        for e in [
            c("alice-jupyter", "alice", "running", true),
            c("bob-old", "bob", "exited", false),
            c("bob-web", "bob", "running", false),
        ] {
            inv.containers.insert(e.id.clone(), e);
        }
        let p = ProcessEntry {
            pid: 447,
            user: "alice".to_string(),
            cmdline: "python3 train.py --epochs 10".to_string(),
            gpu_memory_mb: Some(40_960),
            gpu_uuid: "GPU-56c0b0b8-eb5c-605d-11d6-1bac317b478c".to_string(),
            detected_at: "2026-11-26T06:39:00Z".to_string(),
            ..ProcessEntry::default()
        };
        inv.host_processes.insert(447, p);
        inv.scan = Some(ScanReport {
            started_at: "2026-11-26T06:39:48Z".to_string(),
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
KIND       NAME/PID       USER   ORIGIN        STATUS   GPUS           GPU MEM  IMAGE/COMMAND                 AGE
container  alice-jupyter  alice  ds01-managed  running  0:1                  -  ds01/pytorch:latest           1h
process    447            alice  host          running  GPU-56c0b0b8  40.0 GiB  python3 train.py --epochs 10  1m
  total alice: 2 workloads, 40.0 GiB GPU memory
container  bob-web        bob    ds01-managed  running  -                    -  ds01/pytorch:latest           1h
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
        let text = table(
            &rows(&inv, &Filter::default(), NOW),
            Layout::Fitted { width: 100 },
        );
        for line in text.lines() {
            assert!(line.chars().count() <= 100, "too wide: {line:?}");
        }
        assert!(text.contains("python3 xxx"));
        assert!(text.contains('…'));
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
        };
        for g in [
            gpu("GPU-bbbbbbbb-1", 1, None, None),
            gpu("GPU-56c0b0b8-eb5c", 0, Some(2587), Some(37)),
        ] {
            inv.gpus.insert(g.uuid.clone(), g);
        }
        assert_eq!(
            gpu_lines(&inv),
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
}
