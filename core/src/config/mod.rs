//! Configuration: the TOML file of README "Configuration" and
//! `config/default.toml`, parsed with positions so that every
//! error names the file, the line and the key (or the unknown plugin and the
//! known ones), and turned into built plugin instances.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use detect_workloads_api::config::Source;
/// The plugin-facing half of the configuration, defined by the plugin API.
pub use detect_workloads_api::config::{
    duration, human_duration, parse_duration, AgentConfig, ConfigError, PluginConfig,
};
use detect_workloads_api::plugin::{
    check_unique_names, find, find_sink, in_force, Collector, PluginKind, Registered, Sink, Stage,
};

mod check;
pub mod file;

/// The built-in default configuration (`config/default.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/default.toml");

/// Where the configuration is looked for when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ds01/detect-workloads.toml";

/// A built plugin with its instance name (`docker`, `docker.2`).
pub struct Instance<T: ?Sized> {
    /// Instance name: the type, with `.N` for the N-th table of that type.
    pub name: String,
    /// Plugin type name.
    pub kind: &'static str,
    /// The plugin (shared: the state is read on a thread of its own).
    pub plugin: std::sync::Arc<T>,
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
    /// Where the stages came from (`validate` says it).
    pub stage_choice: StageChoice,
}

/// Why these stages run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StageChoice {
    /// The file lists its stages (`[[stages.NAME]]`; an empty `[stages]`
    /// table lists none on purpose).
    #[default]
    Listed,
    /// The file has no `[stages]` section: the stages of the built-in
    /// default configuration are in force, with their defaults.
    BuiltInDefaults,
}

/// Where the configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--config PATH`.
    Flag(PathBuf),
    /// `$DETECT_WORKLOADS_CONFIG`.
    Environment(PathBuf),
    /// [`DEFAULT_CONFIG_PATH`], which exists.
    Etc(PathBuf),
    /// The built-in default ([`DEFAULT_CONFIG`]).
    BuiltIn,
}

impl ConfigSource {
    /// Which configuration to use: `--config`, else `DETECT_WORKLOADS_CONFIG`,
    /// else the default path if it exists, else the built-in default.
    pub fn choose(cli: Option<&Path>) -> ConfigSource {
        if let Some(path) = cli {
            return ConfigSource::Flag(path.to_path_buf());
        }
        if let Some(env) = std::env::var_os("DETECT_WORKLOADS_CONFIG").filter(|v| !v.is_empty()) {
            return ConfigSource::Environment(PathBuf::from(env));
        }
        let default = Path::new(DEFAULT_CONFIG_PATH);
        if default.exists() {
            ConfigSource::Etc(default.to_path_buf())
        } else {
            ConfigSource::BuiltIn
        }
    }

    /// The file read, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::Flag(p) | ConfigSource::Environment(p) | ConfigSource::Etc(p) => Some(p),
            ConfigSource::BuiltIn => None,
        }
    }

    /// How the file was chosen, for `validate` and error messages.
    pub fn how(&self) -> &'static str {
        match self {
            ConfigSource::Flag(_) => "named with --config",
            ConfigSource::Environment(_) => "named by $DETECT_WORKLOADS_CONFIG",
            ConfigSource::Etc(_) => "the system configuration, found at its default place",
            ConfigSource::BuiltIn => {
                "no --config, no $DETECT_WORKLOADS_CONFIG and no /etc/ds01/detect-workloads.toml"
            }
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path() {
            Some(p) => write!(f, "{} ({})", p.display(), self.how()),
            None => write!(f, "built-in default config ({})", self.how()),
        }
    }
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
    /// Reads and builds the configuration from a file, or the built-in one,
    /// refusing one that cannot work ([`Config::parse_runnable`]).
    pub fn load(path: Option<&Path>, sink_override: &[String]) -> Result<Config, ConfigError> {
        let source = match path {
            Some(path) => ConfigSource::Flag(path.to_path_buf()),
            None => ConfigSource::BuiltIn,
        };
        Config::load_from(&source, &Overrides::sinks(sink_override))
    }

    /// [`Config::load`] from a chosen source, with command-line overrides.
    /// An error in a file named by `$DETECT_WORKLOADS_CONFIG` says so.
    pub fn load_from(source: &ConfigSource, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match source.path() {
            Some(path) => {
                let file = match source {
                    ConfigSource::Environment(_) => {
                        format!("{} (from $DETECT_WORKLOADS_CONFIG)", path.display())
                    }
                    _ => path.display().to_string(),
                };
                let text = file::read_trusted(path).map_err(|e| ConfigError {
                    file: file.clone(),
                    ..e
                })?;
                Config::parse_runnable(&file, &text, overrides)?
            }
            None => Config::parse_runnable("built-in default config", DEFAULT_CONFIG, overrides)?,
        };
        config.origin = source.to_string();
        Ok(config)
    }

    /// Parses configuration text (`file` names it in errors). A fragment is
    /// accepted (no collector, a fallback for a collector not listed): see
    /// [`Config::parse_runnable`] for a whole configuration.
    pub fn parse(file: &str, text: &str, sink_override: &[String]) -> Result<Config, ConfigError> {
        Config::parse_with(file, text, &Overrides::sinks(sink_override), false)
    }

    /// Parses a whole configuration, refusing what cannot work: no collector,
    /// no sink, a `fallback_for` naming no configured collector, stages whose
    /// `after` form a cycle.
    pub fn parse_runnable(
        file: &str,
        text: &str,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        Config::parse_with(file, text, overrides, true)
    }

    fn parse_with(
        file: &str,
        text: &str,
        overrides: &Overrides,
        runnable: bool,
    ) -> Result<Config, ConfigError> {
        check_unique_names().map_err(|message| ConfigError {
            file: "plugin registry".to_string(),
            line: None,
            message,
        })?;
        let source = Source::new(file, text);
        let doc = DeTable::parse(text).map_err(|e| source.error(e.span(), e.message()))?;
        let mut config = Config {
            origin: file.to_string(),
            agent: AgentConfig::default(),
            collectors: Vec::new(),
            stages: Vec::new(),
            sinks: Vec::new(),
            sink_override: None,
            stage_choice: StageChoice::Listed,
        };
        let mut stages_listed = false;
        for (key, value) in doc.get_ref() {
            let span = key.span();
            match key.get_ref().as_ref() {
                "agent" if value.get_ref().is_array() => {
                    return Err(source.error(
                        Some(span),
                        "[agent] is a single table; write [agent], not [[agent]]",
                    ))
                }
                "agent" => {
                    config.agent = AgentConfig::deserialize(ValueDeserializer::from(value.clone()))
                        .map_err(|e| source.value_error("agent", value, &e))?;
                }
                "collectors" => build_section(source, value, &mut config.collectors)?,
                "stages" => {
                    stages_listed = true;
                    build_section(source, value, &mut config.stages)?;
                }
                "sinks" => build_section(source, value, &mut config.sinks)?,
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
        if !stages_listed {
            default_stages(&mut config.stages)?;
            config.stage_choice = StageChoice::BuiltInDefaults;
        }
        add_in_force(file, &mut config.stages)?;
        if !overrides.sinks.is_empty() {
            config.sink_override = Some(build_sink_override(source, &doc, overrides)?);
        }
        if runnable {
            check::runnable(source, &doc, &config)?;
        }
        Ok(config)
    }

    /// The sinks that receive this cycle's output.
    pub fn delivery_sinks(&self) -> &[Instance<dyn Sink>] {
        self.sink_override.as_deref().unwrap_or(&self.sinks)
    }
}

/// The stages of the built-in default configuration, with its settings: in
/// force when a file lists none, so that a configuration naming only its
/// collectors and sinks still classifies, attributes and filters.
fn default_stages(stages: &mut Vec<Instance<dyn Stage>>) -> Result<(), ConfigError> {
    let source = Source::new("built-in default config", DEFAULT_CONFIG);
    let doc = DeTable::parse(DEFAULT_CONFIG).map_err(|e| source.error(e.span(), e.message()))?;
    match doc.get_ref().get("stages") {
        Some(section) => build_section(source, section, stages),
        None => Ok(()),
    }
}

/// Builds every plugin of one section into `list`.
fn build_section<T: Registered + ?Sized>(
    source: Source<'_>,
    section: &Spanned<DeValue<'_>>,
    list: &mut Vec<Instance<T>>,
) -> Result<(), ConfigError> {
    for (name, table) in plugin_tables(source, T::KIND, section)? {
        let plugin =
            find::<T>(name.get_ref()).ok_or_else(|| unknown_plugin(source, T::KIND, &name))?;
        let cfg = plugin_config(source, T::KIND, plugin.name, table);
        let built = (plugin.build)(cfg)?;
        push_instance(list, plugin.name, built);
    }
    Ok(())
}

fn push_instance<T: ?Sized>(list: &mut Vec<Instance<T>>, kind: &'static str, plugin: Box<T>) {
    let n = list.iter().filter(|i| i.kind == kind).count() + 1;
    let name = if n == 1 {
        kind.to_string()
    } else {
        format!("{kind}.{n}")
    };
    list.push(Instance {
        name,
        kind,
        plugin: plugin.into(),
    });
}

pub(crate) type Tables<'i> = Vec<(Spanned<String>, Spanned<DeValue<'i>>)>;

/// The `(type name, table)` pairs of one section, accepting both
/// `[[section.type]]` (array of tables) and `[section.type]`.
pub(crate) fn plugin_tables<'i>(
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
    PluginConfig::new(source, format!("{}.{}", kind.section(), name), value)
}

/// Settings given on the command line as the table a file would hold.
fn settings_table(settings: &BTreeMap<String, String>) -> Spanned<DeValue<'_>> {
    let mut table = DeTable::new();
    for (key, value) in settings {
        table.insert(
            Spanned::new(0..0, Cow::Borrowed(key.as_str())),
            Spanned::new(0..0, DeValue::String(Cow::Borrowed(value.as_str()))),
        );
    }
    Spanned::new(0..0, DeValue::Table(table))
}

/// An empty table for a plugin built with its defaults (`file` names who
/// asked for it in errors).
fn empty_table(
    file: &'static str,
    kind: PluginKind,
    name: &str,
) -> Result<PluginConfig<'static>, ConfigError> {
    let source = Source::new(file, "{}");
    let value = DeValue::parse("{}").map_err(|e| source.error(None, e.message()))?;
    Ok(plugin_config(source, kind, name, value))
}

/// Adds the stages registered as in force ([`in_force`]: `redact`) that the
/// configuration does not list, with their defaults, ahead of the others.
fn add_in_force(file: &str, stages: &mut Vec<Instance<dyn Stage>>) -> Result<(), ConfigError> {
    for name in in_force() {
        if stages.iter().any(|s| s.kind == name) {
            continue;
        }
        let plugin = find::<dyn Stage>(name).ok_or_else(|| ConfigError {
            file: file.to_string(),
            line: None,
            message: unknown_plugin_message(PluginKind::Stage, name),
        })?;
        let built = (plugin.build)(empty_table("built-in defaults", PluginKind::Stage, name)?)
            .map_err(|e| ConfigError {
                file: file.to_string(),
                line: None,
                message: format!("[stages.{name}] built-in defaults: {}", e.message),
            })?;
        stages.insert(
            0,
            Instance {
                name: name.to_string(),
                kind: plugin.name,
                plugin: built.into(),
            },
        );
    }
    Ok(())
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
        kind.noun(),
        name,
        known.join(", ")
    )
}

/// What the command line changes in a configuration.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--sink NAME`: deliver to these instead of the configured sinks.
    pub sinks: Vec<String>,
    /// Sink type -> its settings given on the command line, each a string
    /// (`--format table` sets the `stdout` sink's `format` to `"table"`),
    /// used instead of the file's table.
    pub sink_settings: BTreeMap<String, BTreeMap<String, String>>,
}

impl Overrides {
    /// Only `--sink` names.
    pub fn sinks(names: &[String]) -> Overrides {
        Overrides {
            sinks: names.to_vec(),
            sink_settings: BTreeMap::new(),
        }
    }
}

/// Builds the sinks named by `--sink`: the configured instance of that type if
/// there is one, else one with its defaults.
fn build_sink_override(
    source: Source<'_>,
    doc: &Spanned<DeTable<'_>>,
    overrides: &Overrides,
) -> Result<Vec<Instance<dyn Sink>>, ConfigError> {
    let configured: Tables<'_> = match doc.get_ref().get("sinks") {
        Some(section) => plugin_tables(source, PluginKind::Sink, section)?,
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for wanted in &overrides.sinks {
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
        let forced = overrides.sink_settings.get(plugin.name);
        let built = match (forced, table) {
            (Some(settings), _) => {
                let given = Source::new("command line", "");
                let value = settings_table(settings);
                (plugin.build)(plugin_config(given, PluginKind::Sink, plugin.name, value))?
            }
            (None, Some(table)) => {
                (plugin.build)(plugin_config(source, PluginKind::Sink, plugin.name, table))?
            }
            (None, None) => (plugin.build)(empty_table("--sink", PluginKind::Sink, plugin.name)?)?,
        };
        push_instance(&mut out, plugin.name, built);
    }
    Ok(out)
}
