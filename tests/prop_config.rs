//! Property tests of configuration parsing with every built-in plugin linked
//! in: arbitrary text, TOML assembled from the real sections and keys, and
//! mutations of the built-in default configuration. Parsing never panics; a
//! bad configuration is an error value that names the file and a real line.

use detect_workloads_collectors as _;
use detect_workloads_core::config::{Config, ConfigError, DEFAULT_CONFIG};
use detect_workloads_sinks as _;
use detect_workloads_stages as _;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const FILE: &str = "test.toml";

/// Parses, checking that an error is well-formed.
fn parse(text: &str, sinks: &[String]) -> Result<Option<Config>, TestCaseError> {
    match Config::parse(FILE, text, sinks) {
        Ok(config) => Ok(Some(config)),
        Err(ConfigError {
            file,
            line,
            message,
        }) => {
            prop_assert!(
                file == FILE || file == "--sink",
                "error names the file: {}",
                file
            );
            prop_assert!(!message.is_empty());
            if let Some(line) = line {
                prop_assert!(line >= 1, "line {}", line);
                prop_assert!(
                    line <= text.lines().count() + 1,
                    "line {} of {} lines: {}",
                    line,
                    text.lines().count(),
                    message
                );
            }
            Ok(None)
        }
    }
}

fn header() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "[agent]",
        "[[collectors.docker]]",
        "[[collectors.nvml]]",
        "[[collectors.nvidia-smi]]",
        "[[collectors.procfs]]",
        "[collectors.docker]",
        "[[collectors.nope]]",
        "[[stages.classify]]",
        "[[stages.resolve-user]]",
        "[[stages.gpu-devices]]",
        "[[stages.exclude-system]]",
        "[[stages.transient-filter]]",
        "[stages.transient-filter]",
        "[[stages.redact]]",
        "[[sinks.inventory-file]]",
        "[[sinks.event-log]]",
        "[[sinks.stdout]]",
        "[[sinks]]",
        "[other]",
        "[[agent]]",
    ])
    .prop_map(str::to_string)
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "scan_timeout", "source", "lock_timeout", "endpoint", "timeout", "library",
            "command", "fallback_for", "root", "rules", "default", "labels", "path_labels",
            "home_dirs", "slot_labels", "uuid_labels", "process_names", "min_scans", "path",
            "mode", "format", "max_concurrent_inspects", "secret_words", "short_flags",
            "patterns", "max_length",
        ])
        .prop_map(str::to_string),
        1 => "[a-z_]{1,12}",
        1 => "\"[^\"\\\\\\n]{0,12}\"",
    ]
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        "\"[0-9]{1,25}(ns|us|ms|s|m|h|d|w|y|M)\"",
        "\"[ -!#-\\[\\]-~]{0,20}\"",
        Just("\"unix:///tmp/x.sock\"".to_string()),
        Just("\"tcp://127.0.0.1:1\"".to_string()),
        Just("\"nvml\"".to_string()),
        Just("\"0644\"".to_string()),
        Just("\"0o7777\"".to_string()),
        Just("\"json\"".to_string()),
        Just("\"table\"".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
    ]
}

fn value() -> impl Strategy<Value = String> {
    scalar().prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((key(), inner), 0..4).prop_map(|kv| {
                let fields: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", fields.join(", "))
            }),
        ]
    })
}

/// A document of real sections and keys with values of every type.
fn document() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (header(), prop::collection::vec((key(), value()), 0..4)),
        0..8,
    )
    .prop_map(|sections| {
        let mut text = String::new();
        for (header, entries) in sections {
            text.push_str(&header);
            text.push('\n');
            for (k, v) in entries {
                text.push_str(&format!("{k} = {v}\n"));
            }
            text.push('\n');
        }
        text
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(prop::sample::Index),
    Duplicate(prop::sample::Index),
    Swap(prop::sample::Index, prop::sample::Index),
    Insert(prop::sample::Index, String),
    ReplaceChar(prop::sample::Index, char),
    InsertChar(prop::sample::Index, char),
    Truncate(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let line = prop_oneof![
        any::<String>(),
        (key(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        header(),
    ];
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Delete),
        any::<prop::sample::Index>().prop_map(Mutation::Duplicate),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Mutation::Swap(a, b)),
        (any::<prop::sample::Index>(), line).prop_map(|(i, l)| Mutation::Insert(i, l)),
        (any::<prop::sample::Index>(), any::<char>())
            .prop_map(|(i, c)| Mutation::ReplaceChar(i, c)),
        (
            any::<prop::sample::Index>(),
            prop::sample::select(vec![
                '"', '\'', '[', ']', '{', '}', '=', '\n', '#', ',', '\\', '\0'
            ])
        )
            .prop_map(|(i, c)| Mutation::InsertChar(i, c)),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for m in mutations {
        match m {
            Mutation::Delete(i) if !lines.is_empty() => {
                lines.remove(i.index(lines.len()));
            }
            Mutation::Duplicate(i) if !lines.is_empty() => {
                let at = i.index(lines.len());
                lines.insert(at, lines[at].clone());
            }
            Mutation::Swap(a, b) if !lines.is_empty() => {
                let (a, b) = (a.index(lines.len()), b.index(lines.len()));
                lines.swap(a, b);
            }
            Mutation::Insert(i, l) => {
                let at = i.index(lines.len() + 1);
                lines.insert(at, l.clone());
            }
            Mutation::ReplaceChar(i, c) | Mutation::InsertChar(i, c) => {
                let joined = lines.join("\n");
                let chars: Vec<char> = joined.chars().collect();
                if chars.is_empty() {
                    continue;
                }
                let at = i.index(chars.len());
                let mut out: String = chars[..at].iter().collect();
                out.push(*c);
                let skip = usize::from(matches!(m, Mutation::ReplaceChar(..)));
                out.extend(&chars[at + skip..]);
                lines = out.lines().map(str::to_string).collect();
            }
            Mutation::Truncate(i) => {
                let joined = lines.join("\n");
                let chars: Vec<char> = joined.chars().collect();
                let at = i.index(chars.len() + 1);
                let out: String = chars[..at].iter().collect();
                lines = out.lines().map(str::to_string).collect();
            }
            _ => {}
        }
    }
    lines.join("\n")
}

#[test]
fn the_default_configuration_parses() {
    let config = Config::parse(FILE, DEFAULT_CONFIG, &[]).expect("the default parses");
    assert_eq!(config.collectors.len(), 5);
    assert_eq!(config.stages.len(), 7);
    assert_eq!(config.sinks.len(), 2);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text_is_a_value(text in any::<String>()) {
        parse(&text, &[])?;
    }

    #[test]
    fn arbitrary_bytes_are_a_value(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        parse(&String::from_utf8_lossy(&bytes), &[])?;
    }

    #[test]
    fn assembled_documents_are_a_value(text in document()) {
        parse(&text, &[])?;
    }

    #[test]
    fn mutated_defaults_are_a_value(mutations in prop::collection::vec(mutation(), 1..6)) {
        let text = mutate(DEFAULT_CONFIG, &mutations);
        parse(&text, &[])?;
    }

    #[test]
    fn any_sink_override_is_a_value(
        names in prop::collection::vec(
            prop_oneof![
                3 => prop::sample::select(vec!["stdout", "inventory-file", "event-log"]).prop_map(str::to_string),
                1 => any::<String>(),
            ],
            0..4,
        ),
        mutations in prop::collection::vec(mutation(), 0..3),
    ) {
        let text = mutate(DEFAULT_CONFIG, &mutations);
        if let Some(config) = parse(&text, &names)? {
            if !names.is_empty() {
                let delivered = config.delivery_sinks();
                prop_assert!(!delivered.is_empty());
                for sink in delivered {
                    prop_assert!(names.iter().any(|n| n == sink.kind));
                }
            }
        }
    }
}
