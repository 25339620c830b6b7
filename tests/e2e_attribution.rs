//! Who really uses the GPUs (issue 14), end to end: GPU processes inside
//! containers of the private engine attributed to them, processes in
//! containers the engine does not know, the user from the cgroup parent, and
//! containers that lived between two scans.

mod common;

use common::{
    docker, docker_host, edit_config, fake_nvml, test_image, unique, use_nvml, Containers, Scratch,
    BIN, UUID,
};
use serde_json::Value;

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event_type"] == format!("detection.{t}"))
        .collect()
}

/// The host PIDs of the processes in a container running `args` (as `docker top` lists them).
fn pid_running(host: &str, id: &str, args: &str) -> u32 {
    let top = docker(host, &["top", id, "-o", "pid,args"]);
    top.lines()
        .find(|l| l.trim_end().ends_with(args))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no {args:?} in {top}"))
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn container_gpu_processes_are_attributed_summed_and_told_once() {
    let host = docker_host();
    let s = Scratch::new();
    let mut c = Containers::new(&host);
    // No GPU access configured: its use is a mismatch.
    let id = c.run(&["--name", &unique("p2b-gpu"), &test_image(), "sleep", "600"]);
    docker(&host, &["exec", "-d", &id, "sleep", "599"]);
    let main = pid_running(&host, &id, "sleep 600");
    let second = pid_running(&host, &id, "sleep 599");
    s.set_gpu_apps(&format!("{main}, 1000, {UUID}\n{second}, 24, {UUID}\n"));
    let config = s.config(Some(&host), "");

    let first = s.scan_events(&config);
    assert!(
        of_type(&first, "container_gpu_started").is_empty(),
        "transient filter first"
    );
    let inv = s.inventory();
    assert_eq!(inv["containers"][&id]["gpu_in_use"], false);
    assert!(inv["host_processes"]
        .as_object()
        .is_some_and(|m| m.is_empty()));

    let second_scan = s.scan_events(&config);
    let started = of_type(&second_scan, "container_gpu_started");
    assert_eq!(started.len(), 1, "{second_scan:#?}");
    assert_eq!(started[0]["details"]["container_id"], id.as_str());
    assert_eq!(started[0]["details"]["gpu_memory_mb"], 1024);
    assert_eq!(
        started[0]["details"]["gpu_uuids"],
        serde_json::json!([UUID])
    );
    let mismatch = of_type(&second_scan, "container_gpu_mismatch");
    assert_eq!(mismatch.len(), 1);
    assert_eq!(mismatch[0]["details"]["mismatch"], "not-granted");
    let inv = s.inventory();
    let e = &inv["containers"][&id];
    assert_eq!(e["has_gpu"], false, "has_gpu keeps its meaning");
    assert_eq!(e["gpu_in_use"], true);
    assert_eq!(e["gpu_memory_mb"], 1024);
    assert_eq!(e["gpu_mismatch"], "not-granted");
    let pids: Vec<u64> = e["gpu_processes"]
        .as_array()
        .expect("gpu_processes")
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    assert_eq!(
        pids,
        [u64::from(main.min(second)), u64::from(main.max(second))]
    );
    assert_eq!(e["gpu_processes"][0]["user"], "root");
    assert!(inv["host_processes"]
        .as_object()
        .is_some_and(|m| m.is_empty()));

    let third = s.scan_events(&config);
    assert!(of_type(&third, "container_gpu_started").is_empty());
    assert!(
        of_type(&third, "container_gpu_mismatch").is_empty(),
        "once, not every scan"
    );

    docker(&host, &["stop", "-t", "0", &id]);
    s.set_gpu_apps("");
    let stopped_scan = s.scan_events(&config);
    let stopped = of_type(&stopped_scan, "container_gpu_stopped");
    assert_eq!(stopped.len(), 1, "{stopped_scan:#?}");
    assert_eq!(stopped[0]["details"]["gpu_memory_mb"], 1024);
    assert_eq!(s.inventory()["containers"][&id]["gpu_in_use"], false);
    assert!(of_type(&s.scan_events(&config), "container_gpu_stopped").is_empty());
}

#[test]
fn a_process_in_a_container_the_engine_does_not_know_is_unattributed() {
    let s = Scratch::new();
    let root = s.path("proc");
    let dir = root.join("447");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proc/447");
    for f in ["stat", "status", "cmdline"] {
        std::fs::copy(fixture.join(f), dir.join(f)).expect("copy fixture");
    }
    let unknown = "fedcba9876543210".repeat(4);
    std::fs::write(
        dir.join("cgroup"),
        format!("0::/ds01-students-zed.slice/{unknown}\n"),
    )
    .expect("cgroup");
    s.set_gpu_apps(&format!("447, 300, {UUID}\n"));
    let config = s.config(None, "");
    edit_config(
        &config,
        "[[collectors.procfs]]",
        &format!("[[collectors.procfs]]\nroot = \"{}\"", root.display()),
    );
    s.scan(&config);
    assert!(s.inventory()["unattributed_processes"]
        .as_object()
        .is_some_and(|m| m.is_empty()));
    s.scan(&config);
    let inv = s.inventory();
    let p = &inv["unattributed_processes"]["447"];
    assert_eq!(p["pid"], 447, "{inv:#}");
    assert_eq!(p["gpu_memory_mb"], 300);
    // A cgroup that only looks like a container's is no container: the
    // process is also a host GPU process of its owner (issue 18).
    assert_eq!(
        inv["host_processes"]["447"]["gpu_memory_mb"], 300,
        "{inv:#}"
    );
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn the_cgroup_parent_names_the_user() {
    let host = docker_host();
    let s = Scratch::new();
    let mut c = Containers::new(&host);
    // The private engine uses the cgroupfs driver: the parent is a path.
    let id = c.run(&[
        "--cgroup-parent",
        "/ds01-students-alice.slice",
        "--name",
        &unique("p2b-parent"),
        &test_image(),
        "sleep",
        "600",
    ]);
    let config = s.config(Some(&host), "");
    edit_config(
        &config,
        "[[stages.resolve-user]]",
        "[[stages.resolve-user]]\ncgroup_parent_pattern = \"ds01-{group}-{user}.slice\"",
    );
    s.scan(&config);
    let inv = s.inventory();
    let e = &inv["containers"][&id];
    assert_eq!(
        (e["user"].as_str(), e["user_source"].as_str()),
        (Some("alice"), Some("cgroup-parent"))
    );
    assert_eq!(e["inspect"]["cgroup_parent"], "/ds01-students-alice.slice");
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn a_container_between_two_scans_is_discovered_and_exited() {
    let host = docker_host();
    let s = Scratch::new();
    let config = s.config(Some(&host), "");
    s.scan(&config);
    let name = unique("p2b-blink");
    docker(&host, &["run", "--name", &name, &test_image(), "true"]);
    let id = docker(&host, &["inspect", "-f", "{{.Id}}", &name]);
    docker(&host, &["rm", &name]);
    let events = s.scan_events(&config);
    let short = &id[..12];
    let mine = |t: &str| -> Vec<Value> {
        of_type(&events, t)
            .into_iter()
            .filter(|e| e["details"]["container_id"] == short)
            .cloned()
            .collect()
    };
    let (found, gone) = (mine("container_discovered"), mine("container_exited"));
    assert_eq!((found.len(), gone.len()), (1, 1), "{events:#?}");
    assert_eq!(found[0]["details"]["short_lived"], true);
    assert_eq!(found[0]["details"]["name"], name.as_str());
    assert_eq!(gone[0]["details"]["short_lived"], true);
    let created = found[0]["details"]["created_at"]
        .as_str()
        .unwrap_or_default();
    let removed = gone[0]["details"]["removed_at"]
        .as_str()
        .unwrap_or_default();
    assert!(
        created.ends_with('Z') && removed.ends_with('Z') && created <= removed,
        "{created} {removed}"
    );
    assert!(!s.inventory()["containers"]
        .as_object()
        .is_some_and(|m| m.contains_key(short)));
}

/// One scan that must succeed, with the fake NVML reading `scenario`;
/// returns the events it wrote.
fn scan_with_nvml(s: &Scratch, config: &std::path::Path, scenario: &std::path::Path) -> Vec<Value> {
    let before = s.event_lines().len();
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(config)
        .env_remove("DETECT_WORKLOADS_CONFIG")
        .env_remove("DOCKER_HOST")
        .env("FAKE_NVML_SCENARIO", scenario)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run detect-workloads");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scan failed: {stderr}");
    s.events().split_off(before)
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn container_gpu_processes_listed_by_nvml_are_attributed() {
    let host = docker_host();
    let s = Scratch::new();
    let mut c = Containers::new(&host);
    let id = c.run(&["--name", &unique("p2f-nvml"), &test_image(), "sleep", "600"]);
    docker(&host, &["exec", "-d", &id, "sleep", "599"]);
    let main = pid_running(&host, &id, "sleep 600");
    let second = pid_running(&host, &id, "sleep 599");
    // NVML lists both (1000 MiB and 24 MiB, in bytes); nvidia-smi lists nothing.
    let scenario = s.path("nvml-scenario");
    std::fs::write(
        &scenario,
        format!("gpu {UUID}\ncompute {main} 1048576000\ncompute {second} 25165824\n"),
    )
    .expect("write scenario");
    let config = s.config(Some(&host), "");
    use_nvml(&config, fake_nvml());

    let first = scan_with_nvml(&s, &config, &scenario);
    assert!(
        of_type(&first, "container_gpu_started").is_empty(),
        "transient filter first"
    );
    let second_scan = scan_with_nvml(&s, &config, &scenario);
    let inv = s.inventory();
    assert_eq!(
        inv["scan"]["collectors"]["nvml"]["ok"], true,
        "{:#}",
        inv["scan"]
    );
    let started = of_type(&second_scan, "container_gpu_started");
    assert_eq!(started.len(), 1, "{second_scan:#?}");
    assert_eq!(started[0]["details"]["container_id"], id.as_str());
    assert_eq!(started[0]["details"]["gpu_memory_mb"], 1024);
    let e = &inv["containers"][&id];
    assert_eq!(
        (e["gpu_in_use"].as_bool(), e["gpu_memory_mb"].as_u64()),
        (Some(true), Some(1024))
    );
    assert_eq!(e["gpu_uuids"], serde_json::json!([UUID]));
    let pids: Vec<u64> = e["gpu_processes"]
        .as_array()
        .expect("gpu_processes")
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    assert_eq!(
        pids,
        [u64::from(main.min(second)), u64::from(main.max(second))]
    );
    assert!(inv["host_processes"]
        .as_object()
        .is_some_and(|m| m.is_empty()));
    assert!(of_type(
        &scan_with_nvml(&s, &config, &scenario),
        "container_gpu_started"
    )
    .is_empty());

    // The container stops and NVML lists nothing: stopped, once.
    docker(&host, &["stop", "-t", "0", &id]);
    std::fs::write(&scenario, format!("gpu {UUID}\n")).expect("write scenario");
    let stopped = of_type(
        &scan_with_nvml(&s, &config, &scenario),
        "container_gpu_stopped",
    )
    .len();
    assert_eq!(stopped, 1);
    assert_eq!(s.inventory()["containers"][&id]["gpu_in_use"], false);
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn a_secret_in_a_container_gpu_process_is_redacted() {
    let host = docker_host();
    let s = Scratch::new();
    let mut c = Containers::new(&host);
    // `; :` keeps the shell itself (the main process, holding the secret in
    // its command line) from exec'ing into the sleep.
    let id = c.run(&[
        "--name",
        &unique("p2f-secret"),
        &test_image(),
        "sh",
        "-c",
        "sleep 600; :",
        "serve",
        "--token=hf_abc",
    ]);
    let main = pid_running(&host, &id, "--token=hf_abc");
    s.set_gpu_apps(&format!("{main}, 64, {UUID}\n"));
    let config = s.config(Some(&host), "");
    s.scan(&config);
    s.scan(&config);
    let inv = s.inventory();
    let processes = &inv["containers"][&id]["gpu_processes"];
    assert_eq!(processes[0]["pid"], main, "{inv:#}");
    let cmdline = processes[0]["cmdline"].as_str().unwrap_or_default();
    assert!(cmdline.ends_with("serve --token=***"), "{cmdline}");
    assert!(!processes.to_string().contains("hf_abc"), "{processes}");
    for event in of_type(&s.events(), "container_gpu_started") {
        assert!(!event.to_string().contains("hf_abc"), "{event}");
    }
}
