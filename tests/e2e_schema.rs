//! The JSON Schemas of `docs/schemas/` (issue 19, "docs that match") against
//! what the real binary writes: the inventory file, the event log and
//! `ps --format json`, from scans of the private engine's containers and GPU
//! processes listed by the fake NVML, checked by `tests/lib/check_schema.py`
//! as published (unknown fields allowed) and strictly (every field the
//! program writes must be described); and the field names of
//! docs/formats.md against those of the schemas, both ways.

mod common;

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::{
    docker, docker_host, fake_nvml, sleeper, test_image, test_user, unique, use_nvml, Containers,
    Proc, Scratch, UUID,
};
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A second GPU (the first is the fixture's, [`UUID`]), and a third in MIG mode.
const UUID2: &str = "GPU-7d1e2f30-4a5b-6c7d-8e9f-0a1b2c3d4e5f";
const UUID3: &str = "GPU-a0b1c2d3-e4f5-0617-2839-4a5b6c7d8e9f";
const MIG: &str = "MIG-0c1d2e3f-4a5b-5c6d-7e8f-9a0b1c2d3e4f";

fn schema(name: &str) -> PathBuf {
    Path::new(ROOT)
        .join("docs/schemas")
        .join(format!("{name}.schema.json"))
}

/// An interpreter with the `jsonschema` module: `python3` on the PATH, else
/// Debian's (tests/run.sh installs python3-jsonschema).
fn python() -> &'static str {
    static FOUND: OnceLock<&'static str> = OnceLock::new();
    FOUND.get_or_init(|| {
        ["python3", "/usr/bin/python3"]
            .into_iter()
            .find(|p| {
                Command::new(p)
                    .args(["-c", "import jsonschema"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .unwrap_or_else(|| {
                panic!("no python3 with the jsonschema module: run tests/run.sh (it installs python3-jsonschema)")
            })
    })
}

/// `tests/lib/check_schema.py` on these files: whether it passed, and what it said.
fn check(schema_name: &str, strict: bool, lines: bool, files: &[&Path]) -> (bool, String) {
    let mut cmd = Command::new(python());
    cmd.arg(Path::new(ROOT).join("tests/lib/check_schema.py"))
        .arg(schema(schema_name));
    if strict {
        cmd.arg("--strict");
    }
    if lines {
        cmd.arg("--lines");
    }
    let out = cmd.args(files).output().expect("run check_schema.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => (true, text),
        Some(1) => (false, text),
        other => panic!("check_schema.py could not check ({other:?}): {text}"),
    }
}

/// The files match the schema, as published and strictly.
fn assert_matches(schema_name: &str, lines: bool, files: &[&Path]) {
    for strict in [false, true] {
        let (ok, text) = check(schema_name, strict, lines, files);
        assert!(ok, "{schema_name} (strict: {strict}):\n{text}");
        assert!(text.starts_with("ok: "), "{text}");
    }
}

/// The file does not match (strictly or as published); what it said
/// must contain each of `why`.
fn assert_rejected(schema_name: &str, strict: bool, lines: bool, file: &Path, why: &[&str]) {
    let (ok, text) = check(schema_name, strict, lines, &[file]);
    assert!(!ok, "{} accepted by {schema_name}:\n{text}", file.display());
    for part in why {
        assert!(text.contains(part), "no {part:?} in:\n{text}");
    }
}

/// How check_schema.py writes the path step to an object's key: `.key`
/// when it is an identifier, else `["key"]`.
fn json_key(key: &str) -> String {
    let identifier = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if identifier {
        format!(".{key}")
    } else {
        format!("[{}]", Value::from(key))
    }
}

fn paths(files: &[PathBuf]) -> Vec<&Path> {
    files.iter().map(PathBuf::as_path).collect()
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, value.to_string()).expect("write JSON");
}

/// The host PID of the process in a container running `args`.
fn pid_running(host: &str, id: &str, args: &str) -> u32 {
    let top = docker(host, &["top", id, "-o", "pid,args"]);
    top.lines()
        .find(|l| l.trim_end().ends_with(args))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no {args:?} in {top}"))
}

/// The binary with the fake NVML reading `scenario`.
fn run(config: &Path, scenario: &Path, args: &[&str]) -> Output {
    common::binary(config, args)
        .env("FAKE_NVML_SCENARIO", scenario)
        .stdin(Stdio::null())
        .output()
        .expect("run detect-workloads")
}

/// What the fake NVML lists (see tests/fake-nvml): three GPUs, the third in
/// MIG mode, with the process lines `first`, `second` and `mig` (on its MIG
/// device).
fn scenario(first: &[String], second: &[String], mig: &[String]) -> String {
    format!(
        "driver 580.159.04\n\
         gpu {UUID} mem=4096/81559 busy=37 name=NVIDIA_H100_80GB_HBM3\n{}\
         gpu {UUID2} mem=512/81559 busy=3 name=NVIDIA_H100_80GB_HBM3\n{}\
         gpu {UUID3} mig=on\n\
         mig {MIG} gi=1 ci=0\n{}",
        first.concat(),
        second.concat(),
        mig.concat()
    )
}

fn types(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "needs the private Docker engine, root, the test user and python3-jsonschema: run by tests/run.sh"]
fn the_real_inventory_events_and_ps_rows_match_the_schemas() {
    let host = docker_host();
    let (test_user_name, uid) = test_user();
    let s = Scratch::new();
    let img = test_image();
    let mut c = Containers::new(&host);

    // A GPU job: the nvidia runtime, labels naming another GPU (so that its
    // use is outside its allocation), a health check, two GPU processes.
    let job = c.run(&[
        "--runtime",
        "nvidia",
        "--label",
        "ds01.managed=true",
        "--label",
        "ds01.user=alice",
        "--label",
        &format!("ds01.gpu.uuid={UUID2}"),
        "--health-cmd",
        "true",
        "--health-interval",
        "1s",
        "--name",
        &unique("schema-job"),
        &img,
        "sleep",
        "600",
    ]);
    docker(&host, &["exec", "-d", &job, "sleep", "599"]);
    let job_main = pid_running(&host, &job, "sleep 600");
    let job_second = pid_running(&host, &job, "sleep 599");
    let plain = c.run(&["--name", &unique("schema-plain"), &img, "sleep", "600"]);
    let exited = c.run(&["--name", &unique("schema-exited"), &img, "true"]);
    docker(&host, &["wait", &exited]);
    // Labels allocate a slot the engine does not give; a configured user.
    let label_only = c.create(&[
        "--label",
        "ds01.gpu.slots=0:0",
        "--user",
        &uid.to_string(),
        "--name",
        &unique("schema-label-only"),
        &img,
        "true",
    ]);
    let gpus_all = c.create(&["--gpus", "all", &img, "true"]);
    let device = c.create(&["--device", "/dev/null:/dev/nvidia1", &img, "true"]);
    let doomed = c.create(&["--name", &unique("schema-doomed"), &img, "true"]);

    // Host GPU processes: one on two GPUs with a utilisation sample, one on
    // the MIG device, and the test user's job sliced into short-lived ones.
    let host_proc = sleeper();
    let mig_proc = sleeper();
    let as_test_user = || {
        Proc(
            Command::new("sleep")
                .arg("600")
                .uid(uid)
                .gid(uid)
                .spawn()
                .expect("spawn as the test user"),
        )
    };
    let compute = |pid: u32, mib: u64| format!("compute {pid} {}\n", mib << 20);
    let job_lines = [compute(job_main, 1000), compute(job_second, 24)];
    let host_lines = |p: &Proc| vec![compute(p.pid(), 1024), format!("util {} 12\n", p.pid())];
    let mig_line = |p: &Proc| vec![format!("compute {} {} gi=1 ci=0\n", p.pid(), 256u64 << 20)];

    let nvml = s.path("nvml-scenario");
    let config = s.config(Some(&host), "");
    use_nvml(&config, fake_nvml());
    let mut inventories = Vec::new();
    let mut ps_outputs = Vec::new();
    let scan = |n: usize, inventories: &mut Vec<PathBuf>| {
        let out = run(&config, &nvml, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "scan {n} failed: {stderr}");
        let copy = s.path(&format!("inventory-{n}.json"));
        std::fs::copy(s.inventory_path(), &copy).expect("keep the inventory");
        inventories.push(copy);
        serde_json::from_str::<Value>(
            &std::fs::read_to_string(s.inventory_path()).expect("inventory"),
        )
        .expect("inventory is JSON")
    };
    let ps = |n: usize, args: &[&str], outputs: &mut Vec<PathBuf>| {
        let mut all = vec!["ps", "--format", "json"];
        all.extend_from_slice(args);
        let out = run(&config, &nvml, &all);
        assert!(
            out.status.success(),
            "ps {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = s.path(&format!("ps-{n}.json"));
        std::fs::write(&path, &out.stdout).expect("keep ps output");
        outputs.push(path);
        serde_json::from_slice::<Value>(&out.stdout).expect("ps --format json is JSON")
    };

    // Scan 1: everything is discovered, every GPU process is pending.
    let slice1 = as_test_user();
    let slice_line = |p: &Proc| compute(p.pid(), 512);
    let mut first = job_lines.to_vec();
    first.extend(host_lines(&host_proc));
    first.push(slice_line(&slice1));
    let second = vec![compute(host_proc.pid(), 512)];
    std::fs::write(&nvml, scenario(&first, &second, &mig_line(&mig_proc))).expect("scenario");
    let inv1 = scan(1, &mut inventories);
    assert!(
        inv1["_pending_processes"]
            .as_object()
            .is_some_and(|m| m.len() >= 3),
        "{inv1:#}"
    );
    assert!(inv1["_pending_container_processes"].is_object(), "{inv1:#}");
    assert!(inv1["_pending_user_gpu_use"].is_array(), "{inv1:#}");
    assert_eq!(inv1["containers"][&exited]["status"], "exited");
    ps(1, &["-a"], &mut ps_outputs);

    // Scan 2: confirmed; the test user's first slice is gone, a second holds
    // the GPU: GPU use by short-lived processes.
    drop(slice1);
    let slice2 = as_test_user();
    let mut first = job_lines.to_vec();
    first.extend(host_lines(&host_proc));
    first.push(slice_line(&slice2));
    std::fs::write(&nvml, scenario(&first, &second, &mig_line(&mig_proc))).expect("scenario");
    let inv2 = scan(2, &mut inventories);
    // What the strict check below must see to mean anything.
    let job_entry = &inv2["containers"][&job];
    assert_eq!(job_entry["gpu_in_use"], true, "{inv2:#}");
    assert_eq!(job_entry["gpu_mismatch"], "outside-allocation", "{inv2:#}");
    assert!(job_entry["gpu_processes"][1]["pid"].is_u64(), "{inv2:#}");
    assert!(job_entry["health"].is_string(), "{job_entry:#}");
    assert!(job_entry["labels"]["ds01.user"].is_string());
    assert!(job_entry["inspect"]["started_at"].is_string());
    assert_eq!(inv2["containers"][&label_only]["gpu_access"], "label-only");
    assert!(inv2["containers"][&label_only]["inspect"]["config_user"].is_string());
    assert!(
        inv2["containers"][&gpus_all]["inspect"]["device_requests"][0]["capabilities"].is_array()
    );
    assert!(inv2["containers"][&device]["inspect"]["devices"][0].is_string());
    let host_entry = &inv2["host_processes"][host_proc.pid().to_string()];
    assert_eq!(
        host_entry["gpu_uuids"].as_array().map(Vec::len),
        Some(2),
        "{inv2:#}"
    );
    // 0 by now: the sample was read by the first scan.
    assert!(host_entry["sm_util"].is_u64(), "{host_entry:#}");
    assert_eq!(
        inv2["host_processes"][mig_proc.pid().to_string()]["mig_uuid"],
        MIG,
        "{inv2:#}"
    );
    assert_eq!(
        inv2["user_gpu_use"][0]["user"],
        test_user_name.as_str(),
        "{inv2:#}"
    );
    assert!(inv2["gpus"][UUID]["name"].is_string(), "{inv2:#}");
    assert!(inv2["scan"]["collectors"]["nvml"]["stats"].is_object());
    assert!(inv2["scan"]["collectors"]["nvidia-smi"]["skipped"].is_string());
    assert!(inv2["_outbox"]["events"][0].is_object(), "{inv2:#}");
    let rows = ps(2, &["-a"], &mut ps_outputs);
    let kinds: BTreeSet<&str> = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["container", "gpu-use", "process"]),
        "{rows:#}"
    );

    // Scan 3: containers stop, one is removed, one lives between two
    // scans; GPU use stops, the MIG process and the sliced job end.
    docker(&host, &["stop", "-t", "0", &plain]);
    docker(&host, &["stop", "-t", "0", &job]);
    docker(&host, &["rm", &doomed]);
    docker(
        &host,
        &[
            "run",
            "--rm",
            "--label",
            "dw-test=1",
            "--name",
            &unique("schema-blink"),
            &img,
            "true",
        ],
    );
    drop(slice2);
    drop(mig_proc);
    std::fs::write(&nvml, scenario(&host_lines(&host_proc), &second, &[])).expect("scenario");
    scan(3, &mut inventories);
    ps(3, &[], &mut ps_outputs);
    ps(4, &["-a"], &mut ps_outputs);

    // Every event type, in a real log.
    let events = s.events();
    let all: BTreeSet<String> = [
        "container_discovered",
        "container_status_changed",
        "container_exited",
        "container_gpu_started",
        "container_gpu_stopped",
        "container_gpu_mismatch",
        "host_gpu_process_discovered",
        "host_gpu_process_exited",
        "user_gpu_use_started",
        "user_gpu_use_stopped",
    ]
    .iter()
    .map(|t| format!("detection.{t}"))
    .collect();
    assert_eq!(types(&events), all, "{events:#?}");
    assert!(
        events.iter().any(|e| e["details"]["short_lived"] == true),
        "{events:#?}"
    );

    assert_matches("inventory", false, &paths(&inventories));
    assert_matches("event", true, &[s.events_path().as_path()]);
    assert_matches("ps", false, &paths(&ps_outputs));

    // The checks can fail: a time that is not one, a field nobody
    // described (accepted as published, refused strictly).
    let mut broken = inv2.clone();
    broken["last_scan"] = "yesterday".into();
    let path = s.path("broken-last-scan.json");
    write_json(&path, &broken);
    assert_rejected(
        "inventory",
        false,
        false,
        &path,
        &["$.last_scan: 'yesterday' does not match"],
    );
    let mut unknown = inv2.clone();
    unknown["containers"][&job]["not_in_the_docs"] = 1.into();
    let path = s.path("undocumented-field.json");
    write_json(&path, &unknown);
    assert!(
        check("inventory", false, false, &[&path]).0,
        "published: allowed"
    );
    assert_rejected(
        "inventory",
        true,
        false,
        &path,
        &[
            &format!("$.containers{}: ", json_key(&job)),
            "Additional properties are not allowed ('not_in_the_docs' was unexpected)",
        ],
    );
    let mut line = events[0].clone();
    line["details"]["not_in_the_docs"] = true.into();
    let path = s.path("undocumented-detail.jsonl");
    write_json(&path, &line);
    assert_rejected(
        "event",
        true,
        true,
        &path,
        &["'not_in_the_docs' was unexpected"],
    );
    drop(host_proc);
}

#[test]
#[ignore = "needs python3-jsonschema: run by tests/run.sh"]
fn the_documented_examples_match_and_broken_documents_do_not() {
    let s = Scratch::new();
    let docs = std::fs::read_to_string(Path::new(ROOT).join("docs/formats.md")).expect("docs");
    let inventory = section(&docs, "## The inventory file");
    let example = between(&inventory, "```json\n", "\n```");
    let path = s.path("example-inventory.json");
    std::fs::write(&path, &example).expect("write");
    assert_matches("inventory", false, &[&path]);
    let events = section(&docs, "## The event log");
    let line = between(&events, "```json\n", "\n```");
    let events_path = s.path("example-events.jsonl");
    std::fs::write(&events_path, &line).expect("write");
    assert_matches("event", true, &[&events_path]);
    let rows = between(
        &section(&docs, "## `ps --format json`"),
        "```json\n",
        "\n```",
    );
    let ps_path = s.path("example-ps.json");
    std::fs::write(&ps_path, &rows).expect("write");
    assert_matches("ps", false, &[&ps_path]);

    let example: Value = serde_json::from_str(&example).expect("the example is JSON");
    let broken = |name: &str, edit: &dyn Fn(&mut Value)| {
        let mut doc = example.clone();
        edit(&mut doc);
        let path = s.path(name);
        write_json(&path, &doc);
        path
    };
    let path = broken("offset.json", &|d| {
        d["last_scan"] = "2026-11-26T07:11:49+01:00".into()
    });
    assert_rejected("inventory", false, false, &path, &["$.last_scan"]);
    let path = broken("status.json", &|d| {
        d["containers"]["61dbbc5fe4b3"]["status"] = "sleeping".into()
    });
    assert_rejected(
        "inventory",
        false,
        false,
        &path,
        &["'sleeping' is not one of"],
    );
    let path = broken("pid.json", &|d| {
        d["host_processes"]["447"]["pid"] = "447".into()
    });
    assert_rejected(
        "inventory",
        false,
        false,
        &path,
        &["$.host_processes[\"447\"].pid"],
    );
    let mut line: Value = serde_json::from_str(&line).expect("the example line is JSON");
    line["event_type"] = "detection.gpu_melted".into();
    write_json(&events_path, &line);
    assert_rejected("event", false, true, &events_path, &["$.event_type"]);
    std::fs::write(&events_path, "{\"timestamp\":").expect("write");
    assert_rejected("event", false, true, &events_path, &["not JSON"]);
    std::fs::write(&ps_path, "[{\"kind\":\"vm\"}]").expect("write");
    assert_rejected("ps", false, false, &ps_path, &["'vm' is not one of"]);
}

// --- docs/formats.md against the schemas, no engine needed ------------------

/// The text of `docs` from the heading `heading` to the next heading of the
/// same level.
fn section(docs: &str, heading: &str) -> String {
    let start = docs
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no {heading:?} in docs/formats.md"));
    let body = &docs[start + 1..];
    let level = heading.split(' ').next().unwrap_or("##");
    let end = body[heading.len()..]
        .find(&format!("\n{level} "))
        .map_or(body.len(), |i| i + heading.len());
    body[..end].to_string()
}

/// The text after the first `open` up to the next `close`.
fn between(text: &str, open: &str, close: &str) -> String {
    let start = text.find(open).unwrap_or_else(|| panic!("no {open:?}")) + open.len();
    let len = text[start..]
        .find(close)
        .unwrap_or_else(|| panic!("no {close:?}"));
    text[start..start + len].to_string()
}

/// `text` without its fenced code blocks (the examples).
fn without_fences(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The `code` spans of `text` (outside fenced blocks).
fn code_spans(text: &str) -> Vec<String> {
    without_fences(text)
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The words made of letters, digits, `_` and `.` in the code spans of
/// `text` (`gpus.<uuid>._samples_until_us` gives `gpus`, `uuid` and
/// `_samples_until_us`).
fn code_words(text: &str) -> BTreeSet<String> {
    code_spans(text)
        .iter()
        .flat_map(|span| {
            span.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The rows of the markdown tables in `text` (header and rule left out):
/// their cells.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells: Vec<String> = line
            .trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().to_string())
            .collect();
        if !in_table {
            in_table = true; // the header
            continue;
        }
        if cells.iter().all(|c| c.chars().all(|ch| ch == '-')) {
            continue;
        }
        rows.push(cells);
    }
    rows
}

fn load_schema(name: &str) -> Value {
    let text = std::fs::read_to_string(schema(name)).expect("read schema");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}.schema.json: {e}"))
}

/// Every property name a schema describes (the keys of every `properties`).
fn property_names(schema: &Value, into: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "properties" {
                    if let Value::Object(props) = value {
                        into.extend(props.keys().cloned());
                    }
                }
                if key != "enum" && key != "const" {
                    property_names(value, into);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| property_names(v, into)),
        _ => {}
    }
}

fn names_of(schema_name: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    property_names(&load_schema(schema_name), &mut names);
    names
}

/// The field names a table's first column (or `column`) names in code spans.
fn table_fields(text: &str, column: usize) -> BTreeSet<String> {
    table_rows(text)
        .iter()
        .filter_map(|row| row.get(column))
        .flat_map(|cell| code_spans(cell))
        .filter(|span| {
            span.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .collect()
}

fn formats() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("docs/formats.md")).expect("docs/formats.md")
}

/// Both ways: every field the docs' tables name is in the schema, and
/// every property of the schema is named (in code) in the docs' section.
fn assert_docs_and_schema_agree(heading: &str, schema_name: &str, columns: &[usize]) {
    let text = section(&formats(), heading);
    let in_schema = names_of(schema_name);
    let mut in_tables = BTreeSet::new();
    for &column in columns {
        in_tables.extend(table_fields(&text, column));
    }
    assert!(
        in_tables.len() > 5,
        "{heading}: no table read: {in_tables:?}"
    );
    let undescribed: Vec<&String> = in_tables.difference(&in_schema).collect();
    assert!(
        undescribed.is_empty(),
        "{heading}: named in docs/formats.md's tables, not in {schema_name}.schema.json: {undescribed:?}"
    );
    let in_text = code_words(&text);
    let undocumented: Vec<&String> = in_schema.difference(&in_text).collect();
    assert!(
        undocumented.is_empty(),
        "in {schema_name}.schema.json, not named in docs/formats.md's {heading:?}: {undocumented:?}"
    );
}

#[test]
fn the_inventory_fields_of_the_docs_are_the_schemas() {
    assert_docs_and_schema_agree("## The inventory file", "inventory", &[0]);
}

#[test]
fn the_event_fields_of_the_docs_are_the_schemas() {
    // The envelope's table names fields in its first column, the event
    // types' table their details in its third.
    assert_docs_and_schema_agree("## The event log", "event", &[0, 2]);
    let text = section(&formats(), "## The event log");
    let documented: BTreeSet<String> = table_rows(&text)
        .iter()
        .filter_map(|row| row.first())
        .flat_map(|cell| code_spans(cell))
        .filter(|span| span.starts_with("detection."))
        .collect();
    let schema = load_schema("event");
    let listed: BTreeSet<String> = schema["properties"]["event_type"]["enum"]
        .as_array()
        .expect("event_type enum")
        .iter()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    assert_eq!(
        documented, listed,
        "event types: docs/formats.md vs event.schema.json"
    );
    let inventory = load_schema("inventory");
    assert_eq!(
        inventory["$defs"]["outboxEvent"]["properties"]["event_type"]["enum"],
        schema["properties"]["event_type"]["enum"],
        "the outbox's event types are the log's"
    );
}

#[test]
fn the_ps_row_fields_of_the_docs_are_the_schemas() {
    assert_docs_and_schema_agree("## `ps --format json`", "ps", &[0]);
}

#[test]
fn the_schemas_share_their_definitions() {
    let inventory = load_schema("inventory");
    let event = load_schema("event");
    for name in ["timestamp", "uuid", "shortId", "pid", "mib"] {
        assert_eq!(
            inventory["$defs"][name], event["$defs"][name],
            "$defs/{name} differs between inventory and event schema"
        );
    }
    assert_eq!(
        inventory["$defs"]["container"]["properties"]["status"]["enum"],
        event["$defs"]["status"]["enum"],
        "container states"
    );
    let ps = load_schema("ps");
    let row = &ps["$defs"]["row"]["properties"];
    let states: Vec<&Value> = row["status"]["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .collect();
    for state in event["$defs"]["status"]["enum"].as_array().expect("enum") {
        assert!(states.contains(&state), "ps status lacks {state}");
    }
    assert_eq!(
        row["health"]["enum"], inventory["$defs"]["container"]["properties"]["health"]["enum"],
        "health verdicts"
    );
}
