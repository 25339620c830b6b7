//! Sink `stdout`: prints the inventory to standard output (JSON, or the
//! table of `detect-workloads ps` for people). `--sink stdout` / `--dry-run`
//! use it: nothing is written to disk and no event is emitted. JSON escapes
//! U+2028, U+2029 and C0/C1 controls; the table (core's `view`) replaces
//! control characters with `?`. Needs nothing.

use detect_workloads_api::timefmt::Timestamp;
use std::io::Write;

use detect_workloads_api::async_trait;
use detect_workloads_api::config::{ConfigError, PluginConfig};
use detect_workloads_api::model::Inventory;
use detect_workloads_api::plugin::{ScanOutput, Sink, SinkError, SinkPlugin};
use std::io::IsTerminal;

use detect_workloads_api::view::{self, Filter, Layout};
use serde::Deserialize;

/// Output format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The inventory JSON, as the inventory file holds it.
    #[default]
    Json,
    /// The `ps -a` table, fitted to the terminal (nothing cut in a pipe).
    Table,
    /// The `ps -a` table, nothing cut.
    Wide,
}

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample stdout`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[sinks.stdout]]
format = "json"                 # or "table" (as `detect-workloads ps -a` prints), "wide" (nothing cut)
"#;

/// `[[sinks.stdout]]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StdoutConfig {
    /// `json`, `table` or `wide`.
    pub format: Format,
}

/// The `stdout` sink.
#[derive(Debug)]
pub struct Stdout {
    config: StdoutConfig,
}

/// The inventory as `detect-workloads ps -a` shows it, laid out as `layout`.
pub fn table(inv: &Inventory, layout: Layout, now: Timestamp) -> String {
    let all = Filter {
        all: true,
        ..Filter::default()
    };
    view::render(inv, &all, layout, now)
}

#[async_trait]
impl Sink for Stdout {
    async fn deliver(&self, out: &ScanOutput<'_>) -> Result<(), SinkError> {
        let text = match self.config.format {
            Format::Json => {
                crate::json::to_string_pretty(out.inventory).map_err(SinkError::Encode)? + "\n"
            }
            Format::Table => table(
                out.inventory,
                Layout::for_output(
                    std::io::stdout().is_terminal(),
                    crossterm::terminal::size().ok().map(|(w, _)| w),
                ),
                Timestamp::now(),
            ),
            Format::Wide => table(out.inventory, Layout::Wide, Timestamp::now()),
        };
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|e| SinkError::io("cannot write to standard output", e))
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Sink>, ConfigError> {
    Ok(Box::new(Stdout {
        config: config.parse()?,
    }))
}

detect_workloads_api::inventory::submit! {
    SinkPlugin {
        name: "stdout",
        summary: "prints the inventory (json, or the ps table); --sink stdout is the dry run",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detect_workloads_api::model::ContainerEntry;

    #[test]
    fn the_table_is_the_ps_view_with_stopped_containers_and_no_control_characters() {
        let mut inv = Inventory::default();
        inv.containers.insert(
            "abc".into(),
            ContainerEntry {
                id: "abc".into(),
                name: "evil\u{1b}[2J\u{7}x".into(),
                user: "alice".into(),
                status: "exited".into(),
                ..Default::default()
            },
        );
        let text = table(&inv, Layout::Wide, Timestamp::UNIX_EPOCH);
        assert_eq!(
            text,
            view::render(
                &inv,
                &Filter {
                    all: true,
                    ..Filter::default()
                },
                Layout::Wide,
                Timestamp::UNIX_EPOCH
            )
        );
        assert!(text.starts_with("ID "), "{text}");
        assert!(text.contains("evil?[2J?x"), "{text:?}");
        assert!(!text.contains('\u{1b}'), "{text:?}");
    }
}
