//! `detect-workloads top`: the `ps` view refreshed in the terminal, with one
//! summary line per GPU above it, until `q` (or Esc, or Ctrl-C) is pressed.
//!
//! Drawn with plain redraws through `crossterm` (alternate screen, raw mode
//! for single key presses); the terminal is restored however the loop ends.
//! Lines are cut to the terminal's width in terminal columns (a CJK
//! character or an emoji takes two), and coloured from the data as `ps`
//! colours them, unless `NO_COLOR` is set.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use detect_workloads_api::timefmt::Timestamp;

use crossterm::cursor::{Hide, MoveTo, Show};
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::terminal::{self, Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{execute, queue};

use detect_workloads_api::model::{FactKind, Inventory};
use detect_workloads_api::view::{self, Filter, Layout, Line, Style, Styled};

/// How `top` refreshes.
#[derive(Clone, Debug)]
pub struct TopOptions {
    /// Which workloads to show.
    pub filter: Filter,
    /// Time between two refreshes.
    pub interval: Duration,
}

/// Runs until the user quits. `snapshot` is asked for the inventory at every
/// refresh (read from the file, or scanned).
pub fn run<F>(mut snapshot: F, options: &TopOptions) -> io::Result<()>
where
    F: FnMut() -> Result<Inventory, String>,
{
    let _terminal = Terminal::enter()?;
    let colour = std::env::var_os("NO_COLOR").is_none();
    loop {
        let (width, height) = terminal::size()?;
        let text = match snapshot() {
            Ok(inv) => screen(&inv, &options.filter, width.into(), Timestamp::now()),
            Err(e) => {
                let mut text = Styled::default();
                text.push(Line::new(
                    format!("cannot read the inventory: {}", view::printable(&e)),
                    Style::Failed,
                ));
                text
            }
        };
        draw(&text, width.into(), height.into(), colour)?;
        if quit_requested(options.interval)? {
            return Ok(());
        }
    }
}

/// What one refresh shows, before it is cut to the terminal's height: a
/// title, one line per GPU, the `ps` table (with its CPU, GPU% and IDLE
/// columns) and its footer.
pub fn screen(inv: &Inventory, filter: &Filter, width: usize, now: Timestamp) -> Styled {
    let layout = Layout::Fitted { width };
    let rows = view::rows(inv, filter, now);
    let mut out = Styled::default();
    let idle = if filter.idle_only { "idle " } else { "" };
    out.push(Line::plain(format!(
        "detect-workloads top: {} {idle}workloads  (q to quit)",
        rows.len()
    )));
    let failed = view::all_failed(inv, FactKind::Containers);
    if !failed.is_empty() {
        out.push(Line::new(
            format!(
                "NO CONTAINER SOURCE ANSWERED ({}): containers as last reported, if any",
                failed.join(", ")
            ),
            Style::Failed,
        ));
    }
    let gpus = view::gpu_lines(inv);
    if gpus.lines.is_empty() {
        out.push(Line::plain("no GPU details (they come from NVML)"));
    } else {
        out.append(gpus);
    }
    out.push(Line::default());
    let gpu_known = view::all_failed(inv, FactKind::GpuProcesses).is_empty();
    out.append(view::table(&rows, layout, gpu_known, filter.order()));
    out.push(Line::default());
    out.push(view::footer(inv, now, layout));
    out
}

/// The text of one screen line: cut to `width` terminal columns, in
/// colour when `colour`.
fn screen_line(line: &Line, width: usize, colour: bool) -> String {
    let line = line.clone().fit(width);
    if colour {
        crate::term::paint_line(&line)
    } else {
        line.text()
    }
}

/// Writes the screen line by line (raw mode: no implicit carriage return),
/// clearing what the previous refresh left.
fn draw(text: &Styled, width: usize, height: usize, colour: bool) -> io::Result<()> {
    let mut out = io::stdout().lock();
    let mut row = 0u16;
    for line in text.lines.iter().take(height) {
        queue!(out, MoveTo(0, row), Clear(ClearType::UntilNewLine))?;
        out.write_all(screen_line(line, width, colour).as_bytes())?;
        row += 1;
    }
    queue!(out, MoveTo(0, row), Clear(ClearType::FromCursorDown))?;
    out.flush()
}

/// Waits up to `wait` for a key; true when it asks to quit.
fn quit_requested(wait: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if !event::poll(left)? {
            return Ok(false);
        }
        if let Event::Key(key) = event::read()? {
            let ctrl_c =
                key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
            let quit = matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c;
            if key.kind == KeyEventKind::Press && quit {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The terminal in full-screen mode; put back as it was when dropped.
struct Terminal;

impl Terminal {
    fn enter() -> io::Result<Self> {
        terminal::enable_raw_mode()?;
        let terminal = Terminal;
        execute!(io::stdout(), EnterAlternateScreen, Hide)?;
        Ok(terminal)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // Nothing more can be done if the terminal refuses; the shell's
        // `reset` is the user's way out.
        let _ = execute!(io::stdout(), Show, LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detect_workloads_api::model::GpuDevice;

    #[test]
    fn the_screen_has_a_title_gpu_lines_the_table_and_the_footer() {
        let mut inv = Inventory::default();
        let gpu = GpuDevice {
            uuid: "GPU-56c0b0b8-eb5c".to_string(),
            name: "NVIDIA H100 80GB HBM3".to_string(),
            memory_used_mb: Some(2587),
            memory_total_mb: Some(81_559),
            utilization_pct: Some(3),
            ..GpuDevice::default()
        };
        inv.gpus.insert(gpu.uuid.clone(), gpu);
        let text = screen(&inv, &Filter::default(), 80, Timestamp::UNIX_EPOCH).plain();
        assert_eq!(
            text,
            "detect-workloads top: 0 workloads  (q to quit)\n\
             GPU 0  GPU-56c0b0b8  NVIDIA H100 80GB HBM3  mem 2.5 GiB / 79.6 GiB  util 3%\n\
             \n\
             no workloads match\n\
             \n\
             no scan recorded yet\n"
        );
    }

    #[test]
    fn without_nvml_the_screen_says_where_gpu_details_come_from() {
        let text = screen(
            &Inventory::default(),
            &Filter::default(),
            80,
            Timestamp::UNIX_EPOCH,
        )
        .plain();
        assert!(text.contains("no GPU details (they come from NVML)"));
    }

    #[test]
    fn screen_lines_are_cut_by_terminal_columns_and_coloured_from_the_data() {
        let line = Line(vec![
            view::Span {
                text: "名前".to_string(),
                style: Style::Plain,
            },
            view::Span {
                text: "🚀idle".to_string(),
                style: Style::Idle,
            },
        ]);
        // 5 columns: 名前 takes 4, the cut mark 1; no character split.
        assert_eq!(screen_line(&line, 5, false), "名前…");
        assert_eq!(screen_line(&line, 7, false), "名前🚀…");
        assert_eq!(screen_line(&line, 20, true), "名前\x1b[33m🚀idle\x1b[0m");
    }

    #[test]
    fn the_screen_has_the_activity_columns_and_idle_rows_in_their_style() {
        let mut inv = Inventory::default();
        let container = detect_workloads_api::model::ContainerEntry {
            id: "0000000idle1".to_string(),
            name: "idle1".to_string(),
            user: "alice".to_string(),
            status: "running".to_string(),
            activity: Some(detect_workloads_api::model::Activity {
                cpu_cores: Some(0.01),
                idle_since: Some(Timestamp::UNIX_EPOCH),
                idle: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        inv.containers.insert(container.id.clone(), container);
        let filter = Filter {
            idle_only: true,
            ..Filter::default()
        };
        let text = screen(&inv, &filter, 120, Timestamp::from_unix_seconds(7500));
        let plain = text.plain();
        assert!(
            plain.starts_with("detect-workloads top: 1 idle workloads"),
            "{plain}"
        );
        let header = text
            .lines
            .iter()
            .find(|l| l.text().starts_with("ID "))
            .unwrap_or_else(|| panic!("{plain}"));
        assert!(header.text().contains("GPU%   CPU   IDLE"), "{plain}");
        let row = text
            .lines
            .iter()
            .find(|l| l.text().contains("idle1"))
            .unwrap_or_else(|| panic!("{plain}"));
        assert!(row.text().contains("0.01  2h05m"), "{plain}");
        assert!(row.0.iter().all(|s| s.style == Style::Idle), "{row:?}");
    }
}
