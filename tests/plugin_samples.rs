//! Every plugin carries its sample configuration: `plugins --sample NAME`
//! prints it, it is a configuration that builds, and `config/default.toml`
//! is made of exactly those samples (so the default and the code cannot drift).

mod common;

use std::process::Command;

use detect_workloads_api::plugin::{sample_of, PluginKind};
use detect_workloads_collectors as _;
use detect_workloads_core::config::{Config, DEFAULT_CONFIG};
use detect_workloads_sinks as _;
use detect_workloads_stages as _;

/// The `[[section.name]]` tables of the default configuration, each up to the
/// next blank line.
fn default_tables() -> Vec<(String, String)> {
    DEFAULT_CONFIG
        .split("\n\n")
        .filter_map(|chunk| {
            let header = chunk.strip_prefix("[[")?;
            let name = header.split("]]").next()?.split_once('.')?.1.to_string();
            Some((name, format!("{}\n", chunk.trim_end_matches('\n'))))
        })
        .collect()
}

#[test]
fn the_default_configuration_is_the_plugins_samples() {
    let tables = default_tables();
    assert_eq!(tables.len(), 14, "{tables:?}");
    for (name, table) in tables {
        let (_, sample) = sample_of(&name).unwrap_or_else(|| panic!("no plugin {name}"));
        assert_eq!(
            table, sample,
            "config/default.toml differs from {name}'s SAMPLE"
        );
    }
}

#[test]
fn every_sample_is_a_configuration_that_builds() {
    for kind in PluginKind::ALL {
        for listing in kind.listed() {
            let header = format!("[[{}.{}]]", kind.section(), listing.name);
            assert!(listing.sample.starts_with(&header), "{}", listing.sample);
            let config = Config::parse(listing.name, listing.sample, &[]);
            assert!(config.is_ok(), "{}: {:?}", listing.name, config.err());
        }
    }
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_detect-workloads"))
}

#[test]
fn plugins_sample_prints_the_sample_and_names_the_known_ones_otherwise() {
    let out = binary()
        .args(["plugins", "--sample", "docker"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let (_, docker) = sample_of("docker").expect("docker");
    assert_eq!(String::from_utf8_lossy(&out.stdout), docker);

    let out = binary()
        .args(["plugins", "--sample", "dockr"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no plugin `dockr`; known: docker"), "{err}");
}

/// The methods of `pub trait NAME` in `text` (up to the trait's closing
/// brace at the start of a line).
fn trait_methods(text: &str, name: &str) -> Vec<String> {
    let Some(start) = text.find(&format!("pub trait {name}:")) else {
        return Vec::new();
    };
    let body = &text[start..];
    let body = &body[..body.find("\n}").unwrap_or(body.len())];
    body.lines()
        .filter_map(|l| {
            let rest = l.trim_start().trim_start_matches("async ");
            let rest = rest.strip_prefix("fn ")?;
            let end = rest.find(['(', '<'])?;
            Some(rest[..end].to_string())
        })
        .collect()
}

#[test]
fn docs_plugins_lists_the_plugin_traits_as_they_are() {
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/plugins.md")).expect("docs/plugins.md");
    let code = std::fs::read_to_string(format!("{root}/api/src/plugin.rs")).expect("plugin.rs");
    for name in ["Collector", "Stage", "Sink"] {
        let documented = trait_methods(&doc, name);
        let real = trait_methods(&code, name);
        assert!(!real.is_empty(), "no trait {name} in api/src/plugin.rs");
        assert_eq!(
            documented, real,
            "docs/plugins.md's {name} vs api/src/plugin.rs"
        );
    }
}

#[test]
fn the_commented_prometheus_table_of_the_default_is_its_sample() {
    let block = DEFAULT_CONFIG
        .split("# [[sinks.prometheus]]")
        .nth(1)
        .map(|rest| format!("# [[sinks.prometheus]]{rest}"))
        .expect("the commented [[sinks.prometheus]] table");
    let (_, sample) = sample_of("prometheus").expect("the prometheus sink");
    let commented: String = sample
        .lines()
        .map(|l| {
            if l.starts_with("# ") {
                format!("{l}\n")
            } else {
                format!("# {l}\n")
            }
        })
        .collect();
    assert_eq!(block, commented);
}
