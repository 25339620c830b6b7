//! What standard output is: a terminal (fit the table to its width, colour
//! unless `NO_COLOR`) or a pipe or file (nothing cut, no escape sequences,
//! as `docker ps` does).

use std::io::IsTerminal;

use detect_workloads_api::view::Layout;

/// The table layout for standard output: fitted to the terminal's width
/// (its size, else `$COLUMNS`, else 80), or wide when not a terminal.
pub fn stdout_layout() -> Layout {
    Layout::for_output(
        std::io::stdout().is_terminal(),
        crossterm::terminal::size().ok().map(|(w, _)| w),
    )
}

/// Whether to colour standard output.
pub fn stdout_colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

/// `ps` text with the header line bold and failed collectors red.
pub fn paint(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let (body, end) = line.strip_suffix('\n').map_or((line, ""), |b| (b, "\n"));
        if i == 0 {
            out += &format!("{BOLD}{body}{RESET}{end}");
        } else {
            out += &paint_failures(body);
            out += end;
        }
    }
    out
}

/// In the footer (`scan ...; docker FAILED: why, procfs ok`), each failed
/// collector's part in red.
fn paint_failures(line: &str) -> String {
    let Some((head, health)) = line.split_once("; ").filter(|_| line.contains(" FAILED")) else {
        return line.to_string();
    };
    let parts: Vec<String> = health
        .split(", ")
        .map(|part| {
            if part.contains(" FAILED") {
                format!("{RED}{part}{RESET}")
            } else {
                part.to_string()
            }
        })
        .collect();
    format!("{head}; {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_bold_and_failures_red() {
        let text =
            "KIND  NAME\nrow\n\nscan 1s ago, took 3 ms; docker FAILED: unavailable: x, procfs ok\n";
        assert_eq!(
            paint(text),
            "\x1b[1mKIND  NAME\x1b[0m\nrow\n\nscan 1s ago, took 3 ms; \x1b[31mdocker FAILED: unavailable: x\x1b[0m, procfs ok\n"
        );
    }
}
