//! Configuration: the TOML file of SPEC.md, parsed with positions so that every
//! error names the file, the line and the key (or the unknown plugin and the
//! known ones), and turned into built plugin instances.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use crate::plugin::{find_collector, find_sink, find_stage, Collector, PluginKind, Sink, Stage};

/// The built-in default configuration (`config/default.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

/// Where the configuration is looked for when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ds01/detect-workloads.toml";

/// An invalid configuration (exit status 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or `built-in default config`.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong, naming the key or plugin.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The text being parsed, to turn byte offsets into lines.
#[derive(Debug, Clone, Copy)]
struct Source<'i> {
    file: &'i str,
    text: &'i str,
}

impl Source<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The key written on the line holding `offset` (`key = value`), if any.
    fn key_at(&self, offset: usize) -> Option<&str> {
        let start = self.text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
        let line = self.text.get(start..)?.lines().next()?;
        let key = line.split_once('=')?.0.trim().trim_matches(['"', '\'']);
        (!key.is_empty() && !key.starts_with('[')).then_some(key)
    }

    /// A deserialization error of the table at `table`, placed on the key's line
    /// and naming the key.
    fn value_error(
        &self,
        label: &str,
        table: &std::ops::Range<usize>,
        e: &toml::de::Error,
    ) -> ConfigError {
        let message = e.message();
        if let Some(key) = unknown_field(message) {
            return ConfigError {
                file: self.file.to_string(),
                line: self
                    .key_line(table, key)
                    .or_else(|| Some(self.line_of(table.start))),
                message: format!("[{label}] {message}"),
            };
        }
        let offset = e.span().map_or(table.start, |s| s.start);
        let message = match self.key_at(offset) {
            Some(key) if !message.contains(&format!("`{key}`")) => {
                format!("[{label}] key `{key}`: {message}")
            }
            _ => format!("[{label}] {message}"),
        };
        ConfigError {
            file: self.file.to_string(),
            line: Some(self.line_of(offset)),
            message,
        }
    }

    fn error(
        &self,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: span.map(|s| self.line_of(s.start)),
            message: message.into(),
        }
    }

    /// The line where `key = ...` is written in the table starting at `span`
    /// (its body runs to the next table header).
    fn key_line(&self, span: &std::ops::Range<usize>, key: &str) -> Option<usize> {
        let start = span.start.min(self.text.len());
        let body = self.text.get(start..)?;
        let mut offset = start;
        for (n, line) in body.split_inclusive('\n').enumerate() {
            let trimmed = line.trim_start();
            if n > 0 && trimmed.starts_with('[') && offset >= span.end {
                break;
            }
            let bare = trimmed.trim_start_matches(['"', '\'']);
            if let Some(rest) = bare.strip_prefix(key) {
                let rest = rest.trim_start_matches(['"', '\'']).trim_start();
                if rest.starts_with('=') {
                    return Some(self.line_of(offset));
                }
            }
            offset += line.len();
        }
        None
    }
}

/// One plugin's configuration table, handed to its build function.
pub struct PluginConfig<'i> {
    value: Spanned<DeValue<'i>>,
    source: Source<'i>,
    label: String,
}

impl PluginConfig<'_> {
    /// Deserializes the table into the plugin's config struct (which should use
    /// `#[serde(default, deny_unknown_fields)]`).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        T::deserialize(ValueDeserializer::from(self.value.clone()))
            .map_err(|e| self.source.value_error(&self.label, &self.value.span(), &e))
    }

    /// An error about one key's value, found by the plugin after parsing.
    pub fn invalid(&self, key: &str, message: impl fmt::Display) -> ConfigError {
        let span = self.value.span();
        ConfigError {
            file: self.source.file.to_string(),
            line: self
                .source
                .key_line(&span, key)
                .or_else(|| Some(self.source.line_of(span.start))),
            message: format!("[{}] key `{}`: {}", self.label, key, message),
        }
    }
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// Deserializes a duration written as `"5s"`, `"250ms"`, `"1m 30s"`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
}

/// `[agent]`: settings of the cycle itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The whole cycle must end within this.
    #[serde(deserialize_with = "duration")]
    pub scan_timeout: Duration,
    /// The `source` field of every event.
    pub source: String,
    /// How long a scan waits for another one holding the lock.
    #[serde(deserialize_with = "duration")]
    pub lock_timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            scan_timeout: Duration::from_secs(25),
            source: "detect-workloads".to_string(),
            lock_timeout: Duration::from_secs(10),
        }
    }
}

/// A built plugin with its instance name (`docker`, `docker.2`).
pub struct Instance<T: ?Sized> {
    /// Instance name: the type, with `.N` for the N-th table of that type.
    pub name: String,
    /// Plugin type name.
    pub kind: &'static str,
    /// The plugin.
    pub plugin: Box<T>,
}

/// A loaded, checked configuration with every plugin built.
pub struct Config {
    /// Where it came from.
    pub origin: String,
    /// `[agent]`.
    pub agent: AgentConfig,
    /// Configured collectors, in file order.
    pub collectors: Vec<Instance<dyn Collector>>,
    /// Configured stages, in file order (the pipeline orders them).
    pub stages: Vec<Instance<dyn Stage>>,
    /// Configured sinks.
    pub sinks: Vec<Instance<dyn Sink>>,
    /// The sinks named with `--sink`, when given: they replace `sinks` for
    /// delivery, while `sinks` still provide the previous state.
    pub sink_override: Option<Vec<Instance<dyn Sink>>>,
}

/// Which configuration to use: `--config`, else `DETECT_WORKLOADS_CONFIG`, else
/// the default path if it exists, else the built-in default.
pub fn choose_config(cli: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = cli {
        return Some(path.to_path_buf());
    }
    if let Some(env) = std::env::var_os("DETECT_WORKLOADS_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(env));
    }
    let default = Path::new(DEFAULT_CONFIG_PATH);
    default.exists().then(|| default.to_path_buf())
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |list: Vec<&str>| list.join(", ");
        f.debug_struct("Config")
            .field("origin", &self.origin)
            .field("agent", &self.agent)
            .field(
                "collectors",
                &names(self.collectors.iter().map(|c| c.name.as_str()).collect()),
            )
            .field(
                "stages",
                &names(self.stages.iter().map(|c| c.name.as_str()).collect()),
            )
            .field(
                "sinks",
                &names(self.sinks.iter().map(|c| c.name.as_str()).collect()),
            )
            .finish()
    }
}

impl Config {
    /// Reads and builds the configuration from a file, or the built-in one.
    pub fn load(path: Option<&Path>, sink_override: &[String]) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let file = path.display().to_string();
                let text = crate::config_file::read_trusted(path)?;
                Config::parse(&file, &text, sink_override)
            }
            None => Config::parse("built-in default config", DEFAULT_CONFIG, sink_override),
        }
    }

    /// Parses configuration text (`file` names it in errors).
    pub fn parse(file: &str, text: &str, sink_override: &[String]) -> Result<Config, ConfigError> {
        let source = Source { file, text };
        let doc = DeTable::parse(text).map_err(|e| source.error(e.span(), e.message()))?;
        let mut config = Config {
            origin: file.to_string(),
            agent: AgentConfig::default(),
            collectors: Vec::new(),
            stages: Vec::new(),
            sinks: Vec::new(),
            sink_override: None,
        };
        for (key, value) in doc.get_ref() {
            let span = key.span();
            match key.get_ref().as_ref() {
                "agent" => {
                    config.agent = AgentConfig::deserialize(ValueDeserializer::from(value.clone()))
                        .map_err(|e| source.value_error("agent", &value.span(), &e))?;
                    if config.agent.scan_timeout.is_zero() {
                        let line = source
                            .key_line(&value.span(), "scan_timeout")
                            .unwrap_or_else(|| source.line_of(value.span().start));
                        return Err(ConfigError {
                            file: file.to_string(),
                            line: Some(line),
                            message: "[agent] key `scan_timeout`: must be longer than 0s".into(),
                        });
                    }
                }
                "collectors" => {
                    for (name, table) in plugin_tables(source, PluginKind::Collector, value)? {
                        let plugin = find_collector(name.get_ref())
                            .ok_or_else(|| unknown_plugin(source, PluginKind::Collector, &name))?;
                        let cfg = plugin_config(source, PluginKind::Collector, plugin.name, table);
                        let built = (plugin.build)(cfg)?;
                        push_instance(&mut config.collectors, plugin.name, built);
                    }
                }
                "stages" => {
                    for (name, table) in plugin_tables(source, PluginKind::Stage, value)? {
                        let plugin = find_stage(name.get_ref())
                            .ok_or_else(|| unknown_plugin(source, PluginKind::Stage, &name))?;
                        let cfg = plugin_config(source, PluginKind::Stage, plugin.name, table);
                        let built = (plugin.build)(cfg)?;
                        push_instance(&mut config.stages, plugin.name, built);
                    }
                }
                "sinks" => {
                    for (name, table) in plugin_tables(source, PluginKind::Sink, value)? {
                        let plugin = find_sink(name.get_ref())
                            .ok_or_else(|| unknown_plugin(source, PluginKind::Sink, &name))?;
                        let cfg = plugin_config(source, PluginKind::Sink, plugin.name, table);
                        let built = (plugin.build)(cfg)?;
                        push_instance(&mut config.sinks, plugin.name, built);
                    }
                }
                other => {
                    return Err(source.error(
                        Some(span),
                        format!(
                            "unknown section `{other}`, expected one of `agent`, `collectors`, `stages`, `sinks`"
                        ),
                    ))
                }
            }
        }
        crate::stages::add_mandatory(file, &mut config.stages)?;
        if !sink_override.is_empty() {
            config.sink_override = Some(build_sink_override(source, &doc, sink_override)?);
        }
        Ok(config)
    }

    /// The sinks that receive this cycle's output.
    pub fn delivery_sinks(&self) -> &[Instance<dyn Sink>] {
        self.sink_override.as_deref().unwrap_or(&self.sinks)
    }
}

fn push_instance<T: ?Sized>(list: &mut Vec<Instance<T>>, kind: &'static str, plugin: Box<T>) {
    let n = list.iter().filter(|i| i.kind == kind).count() + 1;
    let name = if n == 1 {
        kind.to_string()
    } else {
        format!("{kind}.{n}")
    };
    list.push(Instance { name, kind, plugin });
}

type Tables<'i> = Vec<(Spanned<String>, Spanned<DeValue<'i>>)>;

/// The `(type name, table)` pairs of one section, accepting both
/// `[[section.type]]` (array of tables) and `[section.type]`.
fn plugin_tables<'i>(
    source: Source<'_>,
    kind: PluginKind,
    section: &Spanned<DeValue<'i>>,
) -> Result<Tables<'i>, ConfigError> {
    let Some(table) = section.get_ref().as_table() else {
        return Err(source.error(
            Some(section.span()),
            format!("`{}` must be a table of plugin types", kind.section()),
        ));
    };
    let mut out = Vec::new();
    for (name, value) in table {
        let name_owned = Spanned::new(name.span(), name.get_ref().to_string());
        match value.get_ref() {
            DeValue::Array(items) => {
                for item in items {
                    if !item.get_ref().is_table() {
                        return Err(source.error(
                            Some(item.span()),
                            format!(
                                "[[{}.{}]] entries must be tables",
                                kind.section(),
                                name.get_ref()
                            ),
                        ));
                    }
                    out.push((name_owned.clone(), item.clone()));
                }
            }
            DeValue::Table(_) => out.push((name_owned, value.clone())),
            _ => {
                return Err(source.error(
                    Some(value.span()),
                    format!(
                        "`{}.{}` must be a table: write [[{}.{}]]",
                        kind.section(),
                        name.get_ref(),
                        kind.section(),
                        name.get_ref()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

fn plugin_config<'i>(
    source: Source<'i>,
    kind: PluginKind,
    name: &str,
    value: Spanned<DeValue<'i>>,
) -> PluginConfig<'i> {
    PluginConfig {
        value,
        source,
        label: format!("{}.{}", kind.section(), name),
    }
}

fn unknown_plugin(source: Source<'_>, kind: PluginKind, name: &Spanned<String>) -> ConfigError {
    source.error(
        Some(name.span()),
        unknown_plugin_message(kind, name.get_ref()),
    )
}

/// The message for a plugin name that is not registered, listing the known ones.
pub fn unknown_plugin_message(kind: PluginKind, name: &str) -> String {
    let known: Vec<&str> = kind.registered().into_iter().map(|(n, _)| n).collect();
    format!(
        "unknown {} plugin `{}`; known: {}",
        match kind {
            PluginKind::Collector => "collector",
            PluginKind::Stage => "stage",
            PluginKind::Sink => "sink",
        },
        name,
        known.join(", ")
    )
}

/// Builds the sinks named by `--sink`: the configured instance of that type if
/// there is one, else one with its defaults.
fn build_sink_override(
    source: Source<'_>,
    doc: &Spanned<DeTable<'_>>,
    names: &[String],
) -> Result<Vec<Instance<dyn Sink>>, ConfigError> {
    let configured: Tables<'_> = match doc.get_ref().get("sinks") {
        Some(section) => plugin_tables(source, PluginKind::Sink, section)?,
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for wanted in names {
        let plugin = find_sink(wanted).ok_or_else(|| ConfigError {
            file: "--sink".to_string(),
            line: None,
            message: unknown_plugin_message(PluginKind::Sink, wanted),
        })?;
        if out
            .iter()
            .any(|i: &Instance<dyn Sink>| i.kind == plugin.name)
        {
            continue;
        }
        let table = configured
            .iter()
            .find(|(name, _)| name.get_ref() == plugin.name)
            .map(|(_, table)| table.clone());
        let built = match table {
            Some(table) => {
                (plugin.build)(plugin_config(source, PluginKind::Sink, plugin.name, table))?
            }
            None => {
                let empty = Source {
                    file: "--sink",
                    text: "{}",
                };
                let value = DeValue::parse("{}").map_err(|e| empty.error(None, e.message()))?;
                (plugin.build)(plugin_config(empty, PluginKind::Sink, plugin.name, value))?
            }
        };
        push_instance(&mut out, plugin.name, built);
    }
    Ok(out)
}
