//! The layers of README "Architecture", checked: the plugin API has no
//! front-end dependency, no plugin crate depends on the engine or the front
//! end, and within each crate no two top-level modules import each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What only the command line and the terminal UI use.
const FRONT_END: [&str; 4] = ["clap", "clap_complete", "crossterm", "tracing-subscriber"];

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()));
    c.current_dir(ROOT);
    c
}

/// Every crate `package` depends on for its build (normal dependencies,
/// transitively).
fn normal_tree(package: &str) -> BTreeSet<String> {
    let out = cargo()
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_plugin_api_builds_without_the_front_end_or_the_engine() {
    let tree = normal_tree("detect-workloads-api");
    assert!(tree.contains("serde"), "cargo tree looks empty: {tree:?}");
    for name in FRONT_END
        .iter()
        .chain(&["detect-workloads-core", "detect-workloads"])
    {
        assert!(
            !tree.contains(*name),
            "detect-workloads-api depends on {name}"
        );
    }
}

#[test]
fn the_engine_has_no_front_end_and_names_no_plugin_crate() {
    let tree = normal_tree("detect-workloads-core");
    assert!(tree.contains("detect-workloads-api"), "{tree:?}");
    for name in FRONT_END.iter().chain(&[
        "detect-workloads-collectors",
        "detect-workloads-stages",
        "detect-workloads-sinks",
        "detect-workloads",
    ]) {
        assert!(
            !tree.contains(*name),
            "detect-workloads-core depends on {name}"
        );
    }
}

#[test]
fn plugin_crates_depend_on_the_api_not_on_the_engine_or_the_front_end() {
    for package in [
        "detect-workloads-collectors",
        "detect-workloads-stages",
        "detect-workloads-sinks",
        "detect-workloads-device-files",
    ] {
        let tree = normal_tree(package);
        assert!(tree.contains("detect-workloads-api"), "{package}: {tree:?}");
        for name in [
            "detect-workloads-core",
            "detect-workloads",
            "clap",
            "tracing-subscriber",
        ] {
            assert!(!tree.contains(name), "{package} depends on {name}");
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source folder").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src` belongs to (`cycle` for
/// `src/cycle/state.rs`, `config` for `src/config.rs`), `None` for the
/// crate root.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (!matches!(name.as_str(), "lib" | "main")).then_some(name)
}

/// The `crate::NAME` paths of `text`, comments left out.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let tail = &rest[at + "crate::".len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let before = rest[..at].chars().last();
            // `detect_workloads_crate::` or `$crate::` are not this crate.
            if !name.is_empty()
                && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
            {
                out.insert(name);
            }
            rest = tail;
        }
    }
    out
}

/// The module graph of one crate: module -> the modules it names.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = top_module(src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("source file");
        let named: Vec<String> = crate_paths(&text)
            .into_iter()
            .filter(|m| *m != module)
            .collect();
        graph.entry(module).or_default().extend(named);
    }
    graph
}

/// A cycle of `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        crate_paths("use crate::config::X; // crate::model\nlet x = $crate::y; a_crate::z;"),
        ["config".to_string()].into()
    );
}

#[test]
fn no_two_modules_of_a_crate_import_each_other() {
    for src in [
        "api/src",
        "core/src",
        "stages/src",
        "collectors/src",
        "sinks/src",
        "src",
    ] {
        let graph = module_graph(&Path::new(ROOT).join(src));
        assert!(graph.len() > 1, "{src}: {graph:?}");
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{src}: modules import each other: {}", cycle.join(" -> "));
        }
    }
}
