//! The checks that a whole configuration can work, run for every command
//! that loads one (`validate` and the scans alike): each refusal says what
//! to change, on the line it is about where there is one.

use toml::de::DeTable;
use toml::Spanned;

use super::{plugin_tables, Config, Tables};
use detect_workloads_api::config::{ConfigError, Source};
use detect_workloads_api::plugin::PluginKind;

/// Refuses a configuration that cannot work.
pub(crate) fn runnable(
    source: Source<'_>,
    doc: &Spanned<DeTable<'_>>,
    config: &Config,
) -> Result<(), ConfigError> {
    if config.collectors.is_empty() {
        return Err(source.error(
            None,
            "no collector is configured, so a scan would find nothing: add at least one, \
             such as [[collectors.procfs]] (`detect-workloads plugins` lists them)",
        ));
    }
    if config.delivery_sinks().is_empty() {
        return Err(source.error(
            None,
            "no sink is configured, so a scan would keep nothing: add at least one, \
             such as [[sinks.inventory-file]], or name one with --sink",
        ));
    }
    events_with_state(source, config)?;
    fallbacks(source, doc, config)?;
    stage_order(source, doc, config)
}

/// Events are written only with the state they are computed against: a
/// sink that emits events without a sink that keeps the state would log
/// the same transitions at every scan (every container discovered again).
fn events_with_state(source: Source<'_>, config: &Config) -> Result<(), ConfigError> {
    let sinks = config.delivery_sinks();
    if sinks.iter().any(|s| s.plugin.state_store().is_some()) {
        return Ok(());
    }
    let Some(emitter) = sinks.iter().find(|s| s.plugin.emits_events()) else {
        return Ok(());
    };
    let keeper = config
        .sinks
        .iter()
        .find(|s| s.plugin.state_store().is_some())
        .map_or("inventory-file", |s| s.kind);
    if config.sink_override.is_some() {
        return Err(ConfigError {
            file: "--sink".to_string(),
            line: None,
            message: format!(
                "--sink {e} would write events without the state they are computed \
                 against (--sink replaces the configured sinks, so {keeper} would not \
                 be written): every run would log the same workloads as discovered again. \
                 Add --sink {keeper} beside it, or use --dry-run to see the inventory",
                e = emitter.kind
            ),
        });
    }
    Err(source.error(
        None,
        format!(
            "[sinks.{e}] writes events, but no sink keeps the state they are computed \
             against: every scan would log the same workloads as discovered again; \
             add [[sinks.inventory-file]]",
            e = emitter.kind
        ),
    ))
}

/// Each `fallback_for` names a collector type that is configured.
fn fallbacks(
    source: Source<'_>,
    doc: &Spanned<DeTable<'_>>,
    config: &Config,
) -> Result<(), ConfigError> {
    let tables = section_tables(source, doc, PluginKind::Collector)?;
    for (i, c) in config.collectors.iter().enumerate() {
        let Some(target) = c.plugin.fallback_for() else {
            continue;
        };
        if config
            .collectors
            .iter()
            .any(|o| o.name != c.name && (o.kind == target || o.name == target))
        {
            continue;
        }
        let configured: Vec<&str> = config.collectors.iter().map(|o| o.kind).collect();
        let message = format!(
            "[collectors.{}] key `fallback_for`: `{target}` is not a configured collector \
             (configured: {}); name one of them, or remove the key",
            c.kind,
            configured.join(", ")
        );
        return Err(match tables.get(i) {
            Some((_, table)) => source.key_error(table, "fallback_for", message),
            None => source.error(None, message),
        });
    }
    Ok(())
}

/// No stage waits, through `after`, for itself.
fn stage_order(
    source: Source<'_>,
    doc: &Spanned<DeTable<'_>>,
    config: &Config,
) -> Result<(), ConfigError> {
    let kinds: Vec<&str> = config.stages.iter().map(|s| s.kind).collect();
    let after = |kind: &str| -> Vec<&'static str> {
        config
            .stages
            .iter()
            .find(|s| s.kind == kind)
            .map(|s| s.plugin.after().iter().map(|t| t.name()).collect())
            .unwrap_or_default()
    };
    let Some(cycle) = find_cycle(&kinds, &after) else {
        return Ok(());
    };
    let tables = section_tables(source, doc, PluginKind::Stage)?;
    let span = tables
        .iter()
        .find(|(name, _)| name.get_ref() == cycle[0])
        .map(|(name, _)| name.span());
    Err(source.error(
        span,
        format!(
            "the stages cannot be ordered: {} (each runs after the next); \
             remove one of these stages",
            cycle.join(" -> ")
        ),
    ))
}

/// A cycle of `after` among `kinds`, as the path that closes it.
fn find_cycle<'a>(kinds: &[&'a str], after: &dyn Fn(&str) -> Vec<&'a str>) -> Option<Vec<&'a str>> {
    fn visit<'a>(
        node: &'a str,
        kinds: &[&'a str],
        after: &dyn Fn(&str) -> Vec<&'a str>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(pos) = path.iter().position(|p| *p == node) {
            let mut cycle = path[pos..].to_vec();
            cycle.push(node);
            return Some(cycle);
        }
        path.push(node);
        for dep in after(node) {
            if kinds.contains(&dep) {
                if let Some(c) = visit(dep, kinds, after, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        None
    }
    kinds
        .iter()
        .find_map(|k| visit(k, kinds, after, &mut Vec::new()))
}

fn section_tables<'i>(
    source: Source<'_>,
    doc: &Spanned<DeTable<'i>>,
    kind: PluginKind,
) -> Result<Tables<'i>, ConfigError> {
    match doc.get_ref().get(kind.section()) {
        Some(section) => plugin_tables(source, kind, section),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::find_cycle;

    #[test]
    fn a_cycle_of_after_is_found_and_an_order_is_not_one() {
        let deps = |k: &str| -> Vec<&'static str> {
            match k {
                "a" => vec!["b"],
                "b" => vec!["c"],
                "c" => vec!["a"],
                "d" => vec!["a"],
                _ => vec![],
            }
        };
        assert_eq!(
            find_cycle(&["d", "a", "b", "c"], &deps),
            Some(vec!["a", "b", "c", "a"])
        );
        assert_eq!(find_cycle(&["d", "b"], &deps), None);
    }
}
