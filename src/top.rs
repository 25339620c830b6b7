//! `detect-workloads top`: the `ps` view refreshed in the terminal, with one
//! summary line per GPU above it, until `q` (or Esc, or Ctrl-C) is pressed.
//!
//! Drawn with plain redraws through `crossterm` (alternate screen, raw mode
//! for single key presses); the terminal is restored however the loop ends.

use std::io::{self, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossterm::cursor::{Hide, MoveTo, Show};
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::terminal::{self, Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{execute, queue};

use detect_workloads_api::model::Inventory;
use detect_workloads_api::view::{self, Filter, Layout};

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
    loop {
        let (width, height) = terminal::size()?;
        let text = match snapshot() {
            Ok(inv) => screen(&inv, &options.filter, width.into(), now()),
            Err(e) => format!("cannot read the inventory: {}\n", view::printable(&e)),
        };
        draw(&text, width.into(), height.into())?;
        if quit_requested(options.interval)? {
            return Ok(());
        }
    }
}

/// What one refresh shows, before it is cut to the terminal's height.
pub fn screen(inv: &Inventory, filter: &Filter, width: usize, now: i64) -> String {
    let rows = view::rows(inv, filter, now);
    let gpus = view::gpu_lines(inv);
    let gpus = if gpus.is_empty() {
        "no GPU details (they come from NVML)\n".to_string()
    } else {
        gpus
    };
    let failed = view::all_failed(inv, detect_workloads_api::model::FactKind::Containers);
    let blind = if failed.is_empty() {
        String::new()
    } else {
        format!(
            "NO CONTAINER SOURCE ANSWERED ({}): containers as last reported, if any\n",
            failed.join(", ")
        )
    };
    format!(
        "detect-workloads top: {} workloads  (q to quit)\n{blind}{gpus}\n{}\n{}",
        rows.len(),
        view::table(
            &rows,
            Layout::Fitted { width },
            view::all_failed(inv, detect_workloads_api::model::FactKind::GpuProcesses).is_empty()
        ),
        view::footer(inv, now, Layout::Fitted { width })
    )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Writes the screen line by line (raw mode: no implicit carriage return),
/// clearing what the previous refresh left.
fn draw(text: &str, width: usize, height: usize) -> io::Result<()> {
    let mut out = io::stdout().lock();
    let mut row = 0u16;
    for line in text.lines().take(height) {
        let line: String = line.chars().take(width).collect();
        queue!(out, MoveTo(0, row), Clear(ClearType::UntilNewLine))?;
        out.write_all(line.as_bytes())?;
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
        let text = screen(&inv, &Filter::default(), 80, 0);
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
        let text = screen(&Inventory::default(), &Filter::default(), 80, 0);
        assert!(text.contains("no GPU details (they come from NVML)"));
    }
}
