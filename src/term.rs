//! What standard output is: a terminal (fit the table to its width, colour
//! unless `NO_COLOR`) or a pipe or file (nothing cut, no escape sequences,
//! as `docker ps` does).

use std::io::IsTerminal;

use detect_workloads_api::view::{Layout, Line, Style, Styled};

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
const YELLOW: &str = "\x1b[33m";
const MAGENTA: &str = "\x1b[35m";
const RESET: &str = "\x1b[0m";

/// The escape sequence that starts `style` (none for plain text).
fn sgr(style: Style) -> Option<&'static str> {
    match style {
        Style::Plain => None,
        Style::Header => Some(BOLD),
        Style::Failed => Some(RED),
        Style::Idle => Some(YELLOW),
        Style::Unknown => Some(MAGENTA),
    }
}

/// One line in colour, each span as its style says (the header bold, a
/// failure red, an idle workload yellow, an unknown GPU activity magenta),
/// without its new line. The styles come from the data ([`Style`]);
/// the text is never read back.
pub fn paint_line(line: &Line) -> String {
    let mut out = String::new();
    for span in &line.0 {
        match sgr(span.style) {
            Some(code) if !span.text.is_empty() => {
                out += code;
                out += &span.text;
                out += RESET;
            }
            _ => out += &span.text,
        }
    }
    out
}

/// `ps` output in colour, a new line after each line.
pub fn paint(text: &Styled) -> String {
    text.lines.iter().map(|l| paint_line(l) + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use detect_workloads_api::view::Span;

    #[test]
    fn each_span_is_coloured_as_its_style_says() {
        let span = |text: &str, style| Span {
            text: text.to_string(),
            style,
        };
        let text = Styled {
            lines: vec![
                Line::new("KIND  NAME", Style::Header),
                Line(vec![span("row ", Style::Plain), span("?", Style::Unknown)]),
                Line::new("idle row", Style::Idle),
                Line::default(),
                Line(vec![
                    span("scan 1s ago, took 3 ms; ", Style::Plain),
                    span("docker FAILED: unavailable: x", Style::Failed),
                    span(", procfs ok", Style::Plain),
                ]),
            ],
        };
        assert_eq!(
            paint(&text),
            "\x1b[1mKIND  NAME\x1b[0m\nrow \x1b[35m?\x1b[0m\n\x1b[33midle row\x1b[0m\n\n\
             scan 1s ago, took 3 ms; \x1b[31mdocker FAILED: unavailable: x\x1b[0m, procfs ok\n"
        );
        // A plain line that says FAILED stays plain: nothing is re-read.
        assert_eq!(paint(&Styled::plain_lines("x FAILED: y")), "x FAILED: y\n");
    }
}
