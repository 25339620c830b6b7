//! Stage `redact`: hides secrets in the command lines of GPU processes (on the
//! host and in containers)
//! before anything is stored or emitted, and caps their length.
//!
//! It is in force even when a configuration does not list it (see
//! [`InForce`]); turning it off is an explicit `mode = "full"`.
//! In the default mode `redacted`, these become `***`, the rest staying
//! readable:
//! - the value of a flag whose name contains a secret word
//!   (`--token=v`, `--password v`), and of a configured short flag (`-p v`);
//! - the value of an assignment whose name contains a secret word
//!   (`AWS_SECRET_ACCESS_KEY=v`, `db.password=v`), case-insensitively;
//! - the same in URL query strings (`?access_token=v`);
//! - the password of user-info in URLs (`postgres://bob:***@db/x`);
//! - what configured extra patterns match (their first group when they have one).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use regex::{Regex, RegexBuilder};
use serde::Deserialize;

use detect_workloads_api::config::{ConfigError, PluginConfig};
use detect_workloads_api::model::{Argv, Inventory};
use detect_workloads_api::plugin::{
    InForce, Stage, StageContext, StageError, StagePlugin, Workset,
};

/// The stage's type name.
pub const NAME: &str = "redact";

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample redact`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[stages.redact]]               # in force even when a config lists its stages without it
mode = "redacted"               # "redacted": secrets become ***; "full": keep everything; "argv0": the program only
secret_words = ["password", "passwd", "token", "secret", "key", "credential"]  # in flag/assignment names, any case
short_flags = []                # e.g. ["-p"]: hides the value of `-p v`, `-p=v`, `-pv`
patterns = []                   # extra regexes: the first group (else the whole match) becomes ***
max_length = 4096               # bytes kept of a command line, ending in … when cut
"#;

/// What replaces a hidden value.
pub const MASK: &str = "***";

/// What ends a command line cut at `max_length`.
pub const ELLIPSIS: char = '…';

/// How much of a command line is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RedactMode {
    /// The whole command line (still capped at `max_length`).
    Full,
    /// The command line with secrets replaced by `***`.
    #[default]
    Redacted,
    /// Only `argv[0]`.
    Argv0,
}

/// `[[stages.redact]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactConfig {
    /// `full`, `redacted` or `argv0`.
    pub mode: RedactMode,
    /// A flag or assignment whose name contains one of these (any case) has
    /// its value hidden.
    pub secret_words: Vec<String>,
    /// Short flags whose value is hidden: `-p v`, `-p=v`, `-pv`.
    pub short_flags: Vec<String>,
    /// Extra regular expressions: the first group of each match (the whole
    /// match when there is no group) is hidden.
    pub patterns: Vec<String>,
    /// Longest stored command line in bytes, the final `…` included.
    pub max_length: usize,
}

impl Default for RedactConfig {
    fn default() -> Self {
        Self {
            mode: RedactMode::Redacted,
            secret_words: DEFAULT_SECRET_WORDS.map(String::from).to_vec(),
            short_flags: Vec::new(),
            patterns: Vec::new(),
            max_length: 4096,
        }
    }
}

/// The default `secret_words`.
const DEFAULT_SECRET_WORDS: [&str; 6] =
    ["password", "passwd", "token", "secret", "key", "credential"];

/// Shortest `max_length` accepted: room for a program name and the `…`.
const MIN_LENGTH: usize = 16;

/// Why a redact configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    /// A pattern (extra or built from the secret words) does not compile.
    #[error("pattern {pattern:?}: {source}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        source: Box<regex::Error>,
    },
    /// A short flag that is not `-` and one or more characters.
    #[error("short flag {0:?} must be `-` followed by a name, like \"-p\"")]
    ShortFlag(String),
    /// A `max_length` too small to hold anything.
    #[error("max_length must be at least {MIN_LENGTH} bytes, not {0}")]
    MaxLength(usize),
    /// A secret word that is empty (it would match every name).
    #[error("secret_words may not hold an empty word")]
    EmptyWord,
}

impl RedactError {
    /// The configuration key it is about.
    pub fn key(&self) -> &'static str {
        match self {
            RedactError::Pattern { .. } => "patterns",
            RedactError::ShortFlag(_) => "short_flags",
            RedactError::MaxLength(_) => "max_length",
            RedactError::EmptyWord => "secret_words",
        }
    }
}

/// The `redact` stage.
#[derive(Debug)]
pub struct Redact {
    mode: RedactMode,
    words: Vec<String>,
    short_flags: Vec<String>,
    /// Compiled when a line is first redacted, or before on a thread of
    /// their own when the previous scan had processes ([`Stage::head_start`],
    /// [`Redact::compile_in_background`]: compiling them costs more than the
    /// rest of a scan's stages, and a scan waits for its containers long
    /// enough), except for secret words other than the
    /// defaults, compiled when the configuration is loaded so that it is
    /// refused then if they do not compile. `None` if they failed to
    /// compile at first use, which the defaults never do (tested).
    line_rules: Arc<OnceLock<Option<LineRules>>>,
    /// A thread was started to compile them.
    compiling: AtomicBool,
    patterns: Vec<Regex>,
    max_length: usize,
}

/// The line-wide rules built in: URL passwords, and query secrets named by
/// the secret words.
#[derive(Debug)]
struct LineRules {
    url_userinfo: Regex,
    query: Option<Regex>,
}

impl LineRules {
    /// `words` are the secret words, lowercased.
    fn compile(words: &[String]) -> Result<LineRules, RedactError> {
        let query = if words.is_empty() {
            None
        } else {
            let alternatives: Vec<String> = words.iter().map(|w| regex::escape(w)).collect();
            Some(compile(&format!(
                r"(?i)([?&;][\w.\-]*(?:{})[\w.\-]*=)[^\s&#;]+",
                alternatives.join("|")
            ))?)
        };
        Ok(LineRules {
            url_userinfo: compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/?#@]*):[^\s/?#]*@")?,
            query,
        })
    }
}

/// The line-wide rules for these words, `None` (logged) if they do not compile.
fn compile_rules(words: &[String]) -> Option<LineRules> {
    LineRules::compile(words)
        .inspect_err(|e| tracing::error!("redact: {e}; whole command lines are hidden"))
        .ok()
}

fn compile(pattern: &str) -> Result<Regex, RedactError> {
    RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| RedactError::Pattern {
            pattern: pattern.to_string(),
            source: Box::new(e),
        })
}

impl Redact {
    /// Builds it, checking the configuration.
    pub fn new(config: RedactConfig) -> Result<Self, RedactError> {
        if config.max_length < MIN_LENGTH {
            return Err(RedactError::MaxLength(config.max_length));
        }
        if config.secret_words.iter().any(|w| w.is_empty()) {
            return Err(RedactError::EmptyWord);
        }
        if let Some(bad) = config.short_flags.iter().find(|f| !is_short_flag(f)) {
            return Err(RedactError::ShortFlag(bad.clone()));
        }
        let words: Vec<String> = config
            .secret_words
            .iter()
            .map(|w| w.to_lowercase())
            .collect();
        let line_rules = Arc::new(OnceLock::new());
        if words != DEFAULT_SECRET_WORDS {
            let _ = line_rules.set(Some(LineRules::compile(&words)?));
        }
        Ok(Self {
            mode: config.mode,
            words,
            short_flags: config.short_flags,
            line_rules,
            compiling: AtomicBool::new(false),
            patterns: config
                .patterns
                .iter()
                .map(|p| compile(p))
                .collect::<Result<_, _>>()?,
            max_length: config.max_length,
        })
    }

    /// Compiles the line-wide rules on a thread of its own, if they are not
    /// yet: the first line redacted (a scan's first GPU process, once the
    /// engine has answered) then finds them ready, or waits for that
    /// thread rather than compiling them again.
    pub fn compile_in_background(&self) {
        if self.line_rules.get().is_some() || self.compiling.swap(true, Ordering::SeqCst) {
            return;
        }
        let (rules, words) = (Arc::clone(&self.line_rules), self.words.clone());
        // Without the thread, the first line compiles them.
        let _ = std::thread::Builder::new()
            .name("redact-compile".into())
            .spawn(move || {
                rules.get_or_init(|| compile_rules(&words));
            });
    }

    /// What is stored of this command line, known only as a line (its
    /// arguments are taken to be separated by spaces).
    pub fn apply(&self, cmdline: &str) -> String {
        let argv: Vec<&str> = cmdline.split(' ').collect();
        self.apply_to(&argv)
    }

    /// What is stored of these arguments: the line people read (them
    /// joined with spaces), with the secrets hidden. An argument is hidden
    /// whole, spaces and all.
    pub fn apply_argv(&self, argv: &Argv) -> String {
        let argv: Vec<&str> = argv.iter().collect();
        self.apply_to(&argv)
    }

    fn apply_to(&self, argv: &[&str]) -> String {
        let kept = match self.mode {
            RedactMode::Full => argv.join(" "),
            RedactMode::Argv0 => argv.first().copied().unwrap_or_default().to_string(),
            RedactMode::Redacted => self.redact(&self.redact_arguments(argv).join(" ")),
        };
        cap(&kept, self.max_length)
    }

    /// The arguments with their secrets hidden, one by one (nothing cut).
    pub fn redact_argv(&self, argv: &Argv) -> Argv {
        match self.mode {
            RedactMode::Full => argv.clone(),
            RedactMode::Argv0 => Argv::new(argv.first()),
            RedactMode::Redacted => {
                let args: Vec<&str> = argv.iter().collect();
                let hidden: Vec<String> = self
                    .redact_arguments(&args)
                    .iter()
                    .map(|arg| self.redact(arg))
                    .collect();
                Argv::new(hidden.iter().map(String::as_str))
            }
        }
    }

    /// What the line-wide rules hide: URL passwords, query secrets, the
    /// configured patterns.
    fn redact(&self, line: &str) -> String {
        let rules = self.line_rules.get_or_init(|| compile_rules(&self.words));
        let Some(rules) = rules else {
            return MASK.to_string();
        };
        let line = rules
            .url_userinfo
            .replace_all(line, format!("${{1}}:{MASK}@"));
        let mut line = line.into_owned();
        if let Some(query) = &rules.query {
            line = query
                .replace_all(&line, format!("${{1}}{MASK}"))
                .into_owned();
        }
        for pattern in &self.patterns {
            line = mask_matches(pattern, &line);
        }
        line
    }

    /// Flags and assignments, argument by argument. The argument after a
    /// secret flag is hidden whole; an argument holding spaces is also a
    /// command line of its own (`sh -c "mysql --password x"`), hidden word
    /// by word.
    fn redact_arguments<'a>(&self, argv: &[&'a str]) -> Vec<Cow<'a, str>> {
        let mut hide_next = false;
        argv.iter()
            .map(|&arg| {
                if std::mem::take(&mut hide_next) && !arg.is_empty() && !arg.starts_with("--") {
                    return Cow::Borrowed(MASK);
                }
                if arg.contains(' ') {
                    let (words, hide) = self.words(arg.split(' '));
                    hide_next = hide;
                    return Cow::Owned(words.join(" "));
                }
                let (kept, hide) = self.argument(arg);
                hide_next = hide;
                kept
            })
            .collect()
    }

    /// The words of a line, each with its secret hidden, and whether the
    /// last one asks for the next argument to be hidden.
    fn words<'a>(&self, words: impl Iterator<Item = &'a str>) -> (Vec<Cow<'a, str>>, bool) {
        let mut out = Vec::new();
        let mut hide_next = false;
        for word in words {
            if std::mem::take(&mut hide_next) && !word.is_empty() && !word.starts_with("--") {
                out.push(Cow::Borrowed(MASK));
                continue;
            }
            let (kept, hide) = self.argument(word);
            hide_next = hide;
            out.push(kept);
        }
        (out, hide_next)
    }

    /// One argument with its secret hidden, and whether the next argument is
    /// a secret value.
    fn argument<'a>(&self, arg: &'a str) -> (Cow<'a, str>, bool) {
        if let Some(found) = self.short_flag(arg) {
            return found;
        }
        let (name, value) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (arg, None),
        };
        let is_flag = name.starts_with('-');
        if !self.names_secret(name.trim_start_matches('-')) {
            return (Cow::Borrowed(arg), false);
        }
        match value {
            Some("") => (Cow::Borrowed(arg), false),
            Some(_) if is_flag || is_assignment_name(name) => {
                (Cow::Owned(format!("{name}={MASK}")), false)
            }
            Some(_) => (Cow::Borrowed(arg), false),
            None => (Cow::Borrowed(arg), is_flag),
        }
    }

    /// A configured short flag: `-p v` (the next argument is the value),
    /// `-p=v`, and for a one-letter flag `-pv`.
    fn short_flag<'a>(&self, arg: &'a str) -> Option<(Cow<'a, str>, bool)> {
        if self.short_flags.iter().any(|f| f == arg) {
            return Some((Cow::Borrowed(arg), true));
        }
        self.short_flags.iter().find_map(|flag| {
            let rest = arg.strip_prefix(flag.as_str())?;
            if rest.starts_with('=') {
                Some((Cow::Owned(format!("{flag}={MASK}")), false))
            } else {
                (flag.len() == 2).then(|| (Cow::Owned(format!("{flag}{MASK}")), false))
            }
        })
    }

    fn names_secret(&self, name: &str) -> bool {
        let name = name.to_lowercase();
        self.words.iter().any(|w| name.contains(w.as_str()))
    }
}

/// `-p`, `-pw`: a single dash and a name.
fn is_short_flag(flag: &str) -> bool {
    flag.strip_prefix('-')
        .is_some_and(|name| !name.is_empty() && !name.starts_with('-') && !name.contains('='))
}

/// `AWS_SECRET_ACCESS_KEY`, `db.password`, `api-key`: a name an assignment may have.
fn is_assignment_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Each match of `pattern` (its first group when it has one) becomes `***`.
fn mask_matches(pattern: &Regex, line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut last = 0;
    for caps in pattern.captures_iter(line) {
        let Some(hidden) = caps.get(1).or_else(|| caps.get(0)) else {
            continue;
        };
        if hidden.start() < last || hidden.is_empty() {
            continue;
        }
        out.push_str(&line[last..hidden.start()]);
        out.push_str(MASK);
        last = hidden.end();
    }
    out.push_str(&line[last..]);
    out
}

/// At most `max` bytes, ending in `…` when cut (on a character boundary).
pub fn cap(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(ELLIPSIS.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + ELLIPSIS.len_utf8());
    out.push_str(&text[..end]);
    out.push(ELLIPSIS);
    out
}

impl Stage for Redact {
    /// The rules compile while the collectors run when the previous scan
    /// had processes (their lines are redacted again once the engine has
    /// answered); otherwise at the first line, if any.
    fn head_start(&self, previous: &Inventory) {
        if previous.gpu_process_pids().next().is_some() {
            self.compile_in_background();
        }
    }

    fn run(&self, work: &mut Workset, _ctx: &StageContext<'_>) -> Result<(), StageError> {
        for p in work.all_processes_mut() {
            // The arguments when the collector gave them; else the line.
            let original = std::mem::take(&mut p.entry.cmdline);
            p.entry.cmdline = if p.facts.argv.is_empty() {
                self.apply(&original)
            } else {
                self.apply_argv(&p.facts.argv)
            };
            p.facts.cmdline = if p.facts.cmdline == original {
                p.entry.cmdline.clone()
            } else {
                self.apply(&p.facts.cmdline)
            };
            p.facts.argv = self.redact_argv(&p.facts.argv);
        }
        Ok(())
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Stage>, ConfigError> {
    Redact::new(config.parse()?)
        .map(|r| Box::new(r) as Box<dyn Stage>)
        .map_err(|e| config.invalid(e.key(), e))
}

detect_workloads_api::inventory::submit! {
    InForce { stage: NAME }
}

detect_workloads_api::inventory::submit! {
    StagePlugin {
        name: NAME,
        summary: "hides secrets in command lines (flags, assignments, URL passwords) and caps their length",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn redact(config: RedactConfig, line: &str) -> String {
        Redact::new(config).expect("valid config").apply(line)
    }

    fn default(line: &str) -> String {
        redact(RedactConfig::default(), line)
    }

    #[test]
    fn an_argument_holding_spaces_is_hidden_whole() {
        let r = Redact::new(RedactConfig::default()).expect("default");
        let argv = Argv::new(["app", "--password", "hunter2 extra", "--name", "a b"]);
        assert_eq!(r.apply_argv(&argv), "app --password *** --name a b");
        assert_eq!(
            r.redact_argv(&argv).iter().collect::<Vec<_>>(),
            ["app", "--password", "***", "--name", "a b"]
        );
        let argv0 = Redact::new(RedactConfig {
            mode: RedactMode::Argv0,
            ..RedactConfig::default()
        })
        .expect("argv0");
        let spaced = Argv::new(["/opt/my app/bin", "--password", "x"]);
        assert_eq!(argv0.apply_argv(&spaced), "/opt/my app/bin");
        // A command line inside an argument is redacted word by word.
        let shell = Argv::new(["sh", "-c", "mysql --password hunter2 -e 'x'"]);
        assert_eq!(r.apply_argv(&shell), "sh -c mysql --password *** -e 'x'");
    }

    #[test]
    fn flag_values_are_hidden() {
        assert_eq!(
            default("python3 train.py --token=hf_abc --epochs 3"),
            "python3 train.py --token=*** --epochs 3"
        );
        assert_eq!(
            default("app --password hunter2 --db-passwd=x -v"),
            "app --password *** --db-passwd=*** -v"
        );
        assert_eq!(default("app --API-KEY k1 x"), "app --API-KEY *** x");
        assert_eq!(
            default("app --aws-credential c"),
            "app --aws-credential ***"
        );
        // A flag right after is not taken for the value; an empty value stays.
        assert_eq!(default("app --token --verbose"), "app --token --verbose");
        assert_eq!(default("app --token="), "app --token=");
        assert_eq!(default("app --secret"), "app --secret");
        // Names without a secret word are untouched.
        assert_eq!(
            default("app --config=/etc/a.yaml --name bob"),
            "app --config=/etc/a.yaml --name bob"
        );
    }

    #[test]
    fn short_flags_only_where_configured() {
        assert_eq!(
            default("mysql -u bob -p hunter2"),
            "mysql -u bob -p hunter2"
        );
        let config = || RedactConfig {
            short_flags: vec!["-p".into(), "-pw".into()],
            ..RedactConfig::default()
        };
        assert_eq!(
            redact(config(), "mysql -u bob -p hunter2"),
            "mysql -u bob -p ***"
        );
        assert_eq!(redact(config(), "mysql -phunter2"), "mysql -p***");
        assert_eq!(redact(config(), "mysql -p=hunter2"), "mysql -p=***");
        assert_eq!(redact(config(), "x -pw s3 -pwx"), "x -pw *** -p***");
    }

    #[test]
    fn assignments_are_hidden_case_insensitively() {
        assert_eq!(
            default("env AWS_SECRET_ACCESS_KEY=abc/def HF_TOKEN=hf_x PATH=/bin run"),
            "env AWS_SECRET_ACCESS_KEY=*** HF_TOKEN=*** PATH=/bin run"
        );
        assert_eq!(
            default("run db_Password=pw api_key=k trainer.lr=0.1"),
            "run db_Password=*** api_key=*** trainer.lr=0.1"
        );
        // Not a name: a path or a URL holding `=` is not an assignment.
        assert_eq!(default("run /tmp/key=x"), "run /tmp/key=x");
    }

    #[test]
    fn url_passwords_and_query_secrets_are_hidden() {
        assert_eq!(
            default("psql postgres://bob:hunter2@db/x"),
            "psql postgres://bob:***@db/x"
        );
        assert_eq!(
            default("git clone https://u:p@ss:w@host/r.git http://host:8080/a@b"),
            "git clone https://u:***@host/r.git http://host:8080/a@b"
        );
        assert_eq!(
            default("curl https://h/x?access_token=abc&page=2"),
            "curl https://h/x?access_token=***&page=2"
        );
        assert_eq!(default("ssh://git@host/x"), "ssh://git@host/x");
    }

    #[test]
    fn extra_patterns_hide_their_group_or_match() {
        let config = RedactConfig {
            patterns: vec![r"hf_[A-Za-z0-9]+".into(), r"--auth\s+(\S+)".into()],
            ..RedactConfig::default()
        };
        assert_eq!(
            redact(config, "run hf_abc123 --auth bob:pw x"),
            "run *** --auth *** x"
        );
    }

    #[test]
    fn modes() {
        let line = "python3 --token=abc x";
        let mode = |mode| RedactConfig {
            mode,
            ..RedactConfig::default()
        };
        assert_eq!(redact(mode(RedactMode::Full), line), line);
        assert_eq!(redact(mode(RedactMode::Argv0), line), "python3");
        assert_eq!(
            redact(mode(RedactMode::Redacted), line),
            "python3 --token=*** x"
        );
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        let config = || RedactConfig {
            max_length: 16,
            ..RedactConfig::default()
        };
        assert_eq!(redact(config(), "short"), "short");
        let cut = redact(config(), &"é".repeat(40));
        assert!(cut.len() <= 16, "{cut}");
        assert!(cut.ends_with(ELLIPSIS));
        assert_eq!(cut, format!("{}…", "é".repeat(6)));
        let huge = format!("run --token=secret {}", "a".repeat(2_000_000));
        let stored = default(&huge);
        assert_eq!(stored.len(), 4096);
        assert!(stored.starts_with("run --token=*** aaa"));
        // The secret is hidden before the cut, never cut in two.
        assert_eq!(
            redact(config(), "run --token=abcdefghijklmnop"),
            "run --token=***"
        );
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad = |config| Redact::new(config).is_err();
        assert!(bad(RedactConfig {
            patterns: vec!["(".into()],
            ..RedactConfig::default()
        }));
        assert!(bad(RedactConfig {
            short_flags: vec!["p".into()],
            ..RedactConfig::default()
        }));
        assert!(bad(RedactConfig {
            short_flags: vec!["--p".into()],
            ..RedactConfig::default()
        }));
        assert!(bad(RedactConfig {
            max_length: 3,
            ..RedactConfig::default()
        }));
        assert!(bad(RedactConfig {
            secret_words: vec![String::new()],
            ..RedactConfig::default()
        }));
    }

    #[test]
    fn line_rules_are_compiled_at_first_use_unless_the_words_are_custom() {
        let lazy = Redact::new(RedactConfig::default()).expect("default");
        assert!(lazy.line_rules.get().is_none(), "nothing compiled yet");
        assert_eq!(lazy.apply("x --token=v"), "x --token=***");
        assert!(matches!(lazy.line_rules.get(), Some(Some(_))));
        assert_eq!(
            lazy.apply("psql postgres://u:pw@db/x"),
            "psql postgres://u:***@db/x"
        );
        let upper = Redact::new(RedactConfig {
            secret_words: DEFAULT_SECRET_WORDS.map(str::to_uppercase).to_vec(),
            ..RedactConfig::default()
        })
        .expect("same words");
        assert!(upper.line_rules.get().is_none(), "the defaults, any case");
        let custom = Redact::new(RedactConfig {
            secret_words: vec!["pin".into()],
            ..RedactConfig::default()
        })
        .expect("custom");
        assert!(
            matches!(custom.line_rules.get(), Some(Some(_))),
            "checked at load"
        );
        assert_eq!(custom.apply("x ?pin=1234"), "x ?pin=***");
    }

    /// Waits (a minute at most) for the line-wide rules to be compiled by
    /// another thread, and checks they compiled.
    fn wait_for_rules(stage: &Redact) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while stage.line_rules.get().is_none() {
            assert!(std::time::Instant::now() < deadline, "never compiled");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(matches!(stage.line_rules.get(), Some(Some(_))));
    }

    #[test]
    fn line_rules_compiled_in_the_background_serve_the_first_line() {
        let early = Redact::new(RedactConfig::default()).expect("default");
        early.compile_in_background();
        wait_for_rules(&early);
        assert_eq!(
            early.apply("psql postgres://u:pw@db/x?password=a"),
            "psql postgres://u:***@db/x?password=***"
        );
        // Asked again, with the rules already there: nothing more to do.
        early.compile_in_background();
    }

    #[test]
    fn the_previous_scan_with_processes_starts_the_compilation() {
        use detect_workloads_api::model::ProcessEntry;
        let stage = Redact::new(RedactConfig::default()).expect("default");
        stage.head_start(&Inventory::default());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            stage.line_rules.get().is_none(),
            "no process: left to the first line"
        );
        let previous = Inventory {
            host_processes: BTreeMap::from([(447, ProcessEntry::default())]),
            ..Inventory::default()
        };
        stage.head_start(&previous);
        wait_for_rules(&stage);
    }

    fn stage_kinds(text: &str) -> Vec<&'static str> {
        let config =
            detect_workloads_core::config::Config::parse("t.toml", text, &[]).expect("parses");
        config.stages.iter().map(|s| s.kind).collect()
    }

    #[test]
    fn in_force_unless_configured_otherwise() {
        // Listed stages without it, and no stages at all: it is added, first.
        assert_eq!(
            stage_kinds("[[stages.exclude-system]]\nuid_min = 1000\n[[stages.transient-filter]]\n"),
            [NAME, "exclude-system", "transient-filter"]
        );
        // No [stages] at all: the default stages, redact first; an empty
        // [stages] table lists none on purpose: redact alone.
        assert_eq!(
            stage_kinds("[agent]\n"),
            [
                NAME,
                "classify",
                "resolve-user",
                "gpu-devices",
                "exclude-system",
                "transient-filter",
                "idle"
            ]
        );
        assert_eq!(stage_kinds("[stages]\n"), [NAME]);
        // Configured: only that one.
        assert_eq!(
            stage_kinds("[[stages.transient-filter]]\n[[stages.redact]]\nmode = \"full\"\n"),
            ["transient-filter", NAME]
        );
        let err = detect_workloads_core::config::Config::parse(
            "t.toml",
            "[[stages.redact]]\nmax_length = 2\n",
            &[],
        )
        .expect_err("refused");
        assert!(err.to_string().contains("max_length"), "{err}");
    }
}
