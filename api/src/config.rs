//! What a plugin's configuration is made of: the error every build function
//! returns ([`ConfigError`]: file, line, key), the table it is handed
//! ([`PluginConfig`]), the duration syntax (`"5s"`, `"1m 30s"`) and the
//! `[agent]` settings a plugin may read. Loading a whole file, building the
//! plugins and checking the result is the engine's (`detect-workloads-core`).

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use toml::de::{DeValue, ValueDeserializer};
use toml::Spanned;

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
pub struct Source<'i> {
    file: &'i str,
    text: &'i str,
}

/// A byte range of the text.
pub type Span = std::ops::Range<usize>;

impl<'i> Source<'i> {
    /// The text of `file` (a path, `built-in default config`, `command line`).
    pub fn new(file: &'i str, text: &'i str) -> Self {
        Source { file, text }
    }

    /// The file's name, as errors give it.
    pub fn file(&self) -> &'i str {
        self.file
    }

    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// A deserialization error of `table`, placed on the line of the key it
    /// is about and naming that key. Both come from the error's own span
    /// (the unknown key, or the bad value) and the parsed table's spans.
    pub fn value_error(
        &self,
        label: &str,
        table: &Spanned<DeValue<'_>>,
        e: &toml::de::Error,
    ) -> ConfigError {
        let message = in_user_words(e.message());
        let message = message.as_str();
        let offset = e.span().map_or(table.span().start, |s| s.start);
        let (line, message) = match key_containing(table, offset) {
            Some((key, span)) if !message.contains(&format!("`{key}`")) => {
                (span.start, format!("[{label}] key `{key}`: {message}"))
            }
            Some((_, span)) => (span.start, format!("[{label}] {message}")),
            None => (offset, format!("[{label}] {message}")),
        };
        ConfigError {
            file: self.file.to_string(),
            line: Some(self.line_of(line)),
            message,
        }
    }

    /// An error at `span` (the file's, when unknown).
    pub fn error(&self, span: Option<Span>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: span.map(|s| self.line_of(s.start)),
            message: message.into(),
        }
    }

    /// An error about `key` of `table`, on the key's line (the table's when
    /// the key is not written).
    pub fn key_error(
        &self,
        table: &Spanned<DeValue<'_>>,
        key: &str,
        message: String,
    ) -> ConfigError {
        let span = key_span(table, key).unwrap_or_else(|| table.span());
        self.error(Some(span), message)
    }
}

/// A deserializer's message with Rust's type names replaced by the words a
/// person writing the file would use.
fn in_user_words(message: &str) -> String {
    const WHOLE: [&str; 10] = [
        "u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64", "isize",
    ];
    let mut out = message.to_string();
    for t in WHOLE {
        out = out.replace(&format!("expected {t}"), "expected a whole number");
    }
    out.replace("expected a boolean", "expected true or false")
}

/// The span of `key` as written in `table`.
fn key_span(table: &Spanned<DeValue<'_>>, key: &str) -> Option<Span> {
    let table = table.get_ref().as_table()?;
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(k, _)| k.span())
}

/// The key of `table` whose key or value spans `offset`, with its key's span.
fn key_containing<'t>(table: &'t Spanned<DeValue<'_>>, offset: usize) -> Option<(&'t str, Span)> {
    let table = table.get_ref().as_table()?;
    table.iter().find_map(|(k, v)| {
        let (ks, vs) = (k.span(), v.span());
        (ks.contains(&offset) || vs.contains(&offset) || offset == vs.end)
            .then(|| (k.get_ref().as_ref(), ks))
    })
}

/// One plugin's configuration table, handed to its build function.
pub struct PluginConfig<'i> {
    value: Spanned<DeValue<'i>>,
    source: Source<'i>,
    label: String,
}

impl<'i> PluginConfig<'i> {
    /// The table `value` of `[[label]]` (`sinks.stdout`), read from `source`.
    pub fn new(source: Source<'i>, label: String, value: Spanned<DeValue<'i>>) -> Self {
        PluginConfig {
            value,
            source,
            label,
        }
    }

    /// Deserializes the table into the plugin's config struct (which should use
    /// `#[serde(default, deny_unknown_fields)]`).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        T::deserialize(ValueDeserializer::from(self.value.clone()))
            .map_err(|e| self.source.value_error(&self.label, &self.value, &e))
    }

    /// An error about one key's value, found by the plugin after parsing,
    /// placed on the key's line.
    pub fn invalid(&self, key: &str, message: impl fmt::Display) -> ConfigError {
        let message = format!("[{}] key `{}`: {}", self.label, key, message);
        self.source.key_error(&self.value, key, message)
    }
}

/// Deserializes a duration written as `"5s"`, `"250ms"`, `"1m 30s"`; zero
/// and negative durations are refused (nothing can be done in no time).
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// How a duration is explained to the person writing one.
const DURATION_HINT: &str =
    "a duration is a positive number with a unit, such as \"10s\" or \"250ms\"";

struct DurationVisitor;

impl DurationVisitor {
    fn not_a_string<E: serde::de::Error>(found: impl fmt::Display) -> E {
        E::custom(format!(
            "expected a duration such as \"10s\" (in quotes, with a unit), found {found}"
        ))
    }
}

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"10s\"")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
        parse_duration(text).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
        Err(Self::not_a_string(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
        Err(Self::not_a_string(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
        Err(Self::not_a_string(v))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Duration, E> {
        Err(Self::not_a_string(v))
    }
}

/// A duration as the configuration writes it (`10s`, `1m 30s`).
pub fn human_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A positive duration from its text, or the message saying how to write one.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("invalid duration {text:?}: {DURATION_HINT}")),
    }
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
    /// Watch mode: a full scan this often (and at each engine event).
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Watch mode: a GPU poll this often (GPU collectors, `/proc` and the
    /// stages; the containers of the last full scan are reused).
    #[serde(deserialize_with = "duration")]
    pub gpu_interval: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            scan_timeout: Duration::from_secs(25),
            source: "detect-workloads".to_string(),
            lock_timeout: Duration::from_secs(10),
            interval: Duration::from_secs(30),
            gpu_interval: Duration::from_secs(2),
        }
    }
}

/// Why a file with this owner and mode must not configure a process run by
/// `euid`, if it must not (only root's are checked): the one rule for every
/// file that configures what root runs (this configuration, a sink's
/// `web_config`).
pub fn untrusted_because(owner: u32, mode: u32, euid: u32) -> Option<String> {
    if euid != 0 {
        return None;
    }
    if owner != 0 {
        return Some(format!("is owned by uid {owner}, not root"));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "is writable by its group or by everyone (mode {:04o})",
            mode & 0o7777
        ));
    }
    None
}
