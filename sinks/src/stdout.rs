//! Sink `stdout`: prints the inventory to standard output (JSON, or a table for
//! people). `--sink stdout` / `--dry-run` use it: nothing is written to disk and
//! no event is emitted. JSON escapes U+2028, U+2029 and C0/C1 controls; the
//! table replaces control characters with `?`. Needs nothing.

use std::fmt::Write as _;
use std::io::Write;

use detect_workloads_core::async_trait;
use detect_workloads_core::config::{ConfigError, PluginConfig};
use detect_workloads_core::model::Inventory;
use detect_workloads_core::plugin::{ScanOutput, Sink, SinkError, SinkPlugin};
use serde::Deserialize;

/// Output format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The inventory JSON, as the inventory file holds it.
    #[default]
    Json,
    /// One line per workload.
    Table,
}

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample stdout`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[sinks.stdout]]
format = "json"                 # or "table"
"#;

/// `[[sinks.stdout]]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StdoutConfig {
    /// `json` or `table`.
    pub format: Format,
}

/// The `stdout` sink.
#[derive(Debug)]
pub struct Stdout {
    config: StdoutConfig,
}

/// `text` fit for a terminal: control characters (C0, DEL, C1), line and
/// paragraph separators and bidirectional overrides each become `?`, so a
/// label or command line cannot move the cursor, recolour or hide text.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// The inventory as a table (text from outside made [`printable`]).
pub fn table(inv: &Inventory) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12}  {:<24}  {:<12}  {:<12}  {:<10}  {:<5}  GPUS",
        "CONTAINER", "NAME", "ORIGIN", "USER", "STATUS", "GPU"
    );
    for c in inv.containers.values() {
        let _ = writeln!(
            out,
            "{:<12}  {:<24}  {:<12}  {:<12}  {:<10}  {:<5}  {}",
            printable(&c.id),
            printable(&c.name),
            printable(&c.origin),
            printable(&c.user),
            printable(&c.status),
            if c.has_gpu { "yes" } else { "no" },
            printable(&c.gpu_devices.join(","))
        );
    }
    let _ = writeln!(
        out,
        "\n{:<8}  {:<12}  {:>8}  {:<40}  CMDLINE",
        "PID", "USER", "MIB", "GPU"
    );
    for (pending, p) in inv
        .host_processes
        .values()
        .map(|p| (false, p))
        .chain(inv.pending_processes.values().map(|p| (true, p)))
    {
        let memory = p
            .gpu_memory_mb
            .map_or_else(|| "?".to_string(), |m| m.to_string());
        let cmdline = printable(&p.cmdline.chars().take(60).collect::<String>());
        let _ = writeln!(
            out,
            "{:<8}  {:<12}  {:>8}  {:<40}  {}{}",
            p.pid,
            printable(&p.user),
            memory,
            printable(&p.gpu_uuid),
            cmdline,
            if pending { "  (pending)" } else { "" }
        );
    }
    out
}

#[async_trait]
impl Sink for Stdout {
    async fn deliver(&self, out: &ScanOutput<'_>) -> Result<(), SinkError> {
        let text = match self.config.format {
            Format::Json => {
                crate::json::to_string_pretty(out.inventory).map_err(SinkError::Encode)? + "\n"
            }
            Format::Table => table(out.inventory),
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

detect_workloads_core::inventory::submit! {
    SinkPlugin {
        name: "stdout",
        summary: "prints the inventory (json or table); --sink stdout is the dry run",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detect_workloads_core::model::ContainerEntry;

    #[test]
    fn the_table_prints_no_control_characters() {
        let mut inv = Inventory::default();
        inv.containers.insert(
            "abc".into(),
            ContainerEntry {
                id: "abc".into(),
                name: "evil\u{1b}[2J\u{1b}]0;owned\u{7}\u{2028}\u{9b}31m\u{202e}x".into(),
                user: "alice".into(),
                ..Default::default()
            },
        );
        let text = table(&inv);
        assert!(
            !text
                .chars()
                .any(|c| c != '\n' && printable(&c.to_string()) != c.to_string()),
            "{text:?}"
        );
        assert!(text.contains("evil?[2J?]0;owned???31m?x"), "{text:?}");
    }
}
