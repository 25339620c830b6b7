//! Containers end to end against the private Docker engine that `tests/run.sh`
//! starts: classification, users, GPU access and devices, images, states,
//! transitions, and carry-over while the engine is unreachable.

mod common;

use std::process::Command;

use common::{docker, docker_host, test_image, unique, Containers, Scratch};
use serde_json::Value;

fn entry<'a>(inv: &'a Value, id: &str) -> &'a Value {
    let e = &inv["containers"][id];
    assert!(e.is_object(), "container {id} missing from inventory");
    e
}

/// A character device whose host path contains "nvidia" (same numbers as /dev/null).
fn fake_nvidia_node(s: &Scratch) -> String {
    let path = s.path("nvidia0");
    let c = std::ffi::CString::new(path.to_string_lossy().as_bytes()).expect("path");
    // SAFETY: mknod with a valid NUL-terminated path.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    path.to_string_lossy().into_owned()
}

#[test]
#[ignore = "needs the private Docker engine, root and the test user dwtest: run by tests/run.sh"]
fn containers_are_classified_attributed_and_checked_for_gpus() {
    let host = docker_host();
    let s = Scratch::new();
    let img = test_image();
    let mut c = Containers::new(&host);
    let (user_name, uid) = common::test_user();
    let uid = uid.to_string();

    let managed = c.create(&[
        "--label",
        "ds01.managed=true",
        "--label",
        "devcontainer.local_folder=/home/dave/x",
        "--label",
        "com.docker.compose.project=p",
        "--label",
        "ds01.user=alice",
        "--label",
        "ds01.gpu.slots=0:0,0:1",
        "--name",
        &unique("vsc-managed"),
        &img,
        "true",
    ]);
    let not_managed = c.create(&["--label", "ds01.managed=false", &img, "true"]);
    let devc = c.create(&[
        "--label",
        "devcontainer.local_folder=/home/carol/proj",
        "--label",
        "com.docker.compose.project=p",
        &img,
        "true",
    ]);
    let compose = c.create(&[
        "--label",
        "com.docker.compose.project=p",
        "--label",
        "aime.mlc.USER=bob",
        "--name",
        &unique("vsc-compose"),
        &img,
        "true",
    ]);
    let vsc = c.create(&["--name", &unique("vsc-plain"), &img, "true"]);
    let running_root = c.run(&[&img, "sleep", "600"]);
    let gpus_all = c.create(&["--gpus", "all", &img, "true"]);
    let runtime = c.run(&["--runtime", "nvidia", &img, "sleep", "600"]);
    let node = fake_nvidia_node(&s);
    let device = c.create(&["--device", &format!("{node}:/dev/nvidia0"), &img, "true"]);
    let null_device = c.create(&["--device", "/dev/null:/dev/nvidia1", &img, "true"]);
    let gpus_ids = c.create(&["--gpus", "\"device=0,1\"", &img, "true"]);
    let slot = c.create(&["--label", "ds01.gpu_slot=2", &img, "true"]);
    let allocated = c.create(&[
        "--label",
        "ds01.gpu.allocated=2026-11-26T05:40:02Z",
        "--label",
        "ds01.gpu.uuid=GPU-56c0b0b8-eb5c-605d-11d6-1bac317b478c",
        &img,
        "true",
    ]);
    let uuids = c.create(&["--label", "ds01.gpu.uuids=GPU-a,GPU-b", &img, "true"]);
    let exited = c.run(&[&img, "true"]);
    docker(&host, &["wait", &exited]);
    let image_id = docker(
        &host,
        &[
            "import",
            &std::env::var("DW_TEST_ROOTFS_TAR").unwrap_or_default(),
        ],
    );
    let untagged = c.create(&[&image_id, "true"]);
    let running_as_user = c.run(&["--user", &uid, &img, "sleep", "600"]);
    let created_as_user = c.create(&["--user", &uid, &img, "true"]);

    let config = s.config(Some(&host), "");
    s.scan(&config);
    let inv = s.inventory();
    assert_eq!(inv["scan"]["collectors"]["docker"]["ok"], true);

    let check = |id: &str, origin: &str, user: &str| {
        let e = entry(&inv, id);
        assert_eq!(e["id"], id);
        assert_eq!(e["origin"], origin, "origin of {e}");
        assert_eq!(e["user"], user, "user of {e}");
    };
    check(&managed, "ds01-managed", "alice");
    check(&not_managed, "raw-docker", "unknown");
    check(&devc, "devcontainer", "carol");
    check(&compose, "compose", "bob");
    check(&vsc, "devcontainer", "unknown");
    check(&running_root, "raw-docker", "root");
    check(&running_as_user, "raw-docker", &user_name);
    check(&created_as_user, "raw-docker", &user_name);

    let gpu = |id: &str| {
        (
            entry(&inv, id)["has_gpu"].clone(),
            entry(&inv, id)["gpu_devices"].clone(),
        )
    };
    assert_eq!(gpu(&gpus_all), (Value::Bool(true), serde_json::json!([])));
    assert_eq!(gpu(&runtime).0, true);
    assert_eq!(gpu(&device).0, true);
    assert_eq!(
        gpu(&null_device).0,
        false,
        "host path /dev/null has no nvidia"
    );
    assert_eq!(
        gpu(&gpus_ids),
        (Value::Bool(true), serde_json::json!(["0", "1"]))
    );
    assert_eq!(
        gpu(&running_root),
        (Value::Bool(false), serde_json::json!([]))
    );
    assert_eq!(gpu(&managed).1, serde_json::json!(["0:0", "0:1"]));
    assert_eq!(gpu(&slot).1, serde_json::json!(["2"]));
    assert_eq!(
        gpu(&allocated).1,
        serde_json::json!(["GPU-56c0b0b8-eb5c-605d-11d6-1bac317b478c"])
    );
    assert_eq!(gpu(&uuids).1, serde_json::json!(["GPU-a", "GPU-b"]));

    assert_eq!(entry(&inv, &managed)["status"], "created");
    assert_eq!(entry(&inv, &running_root)["status"], "running");
    assert_eq!(entry(&inv, &exited)["status"], "exited");
    assert_eq!(entry(&inv, &running_root)["image"], img.as_str());
    let short_image = image_id.trim_start_matches("sha256:")[..12].to_string();
    assert_eq!(entry(&inv, &untagged)["image"], short_image.as_str());
    assert!(entry(&inv, &vsc)["name"]
        .as_str()
        .is_some_and(|n| n.starts_with("vsc-plain")));
    assert!(entry(&inv, &vsc)["detected_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    // Every one of ours was discovered, with has_gpu and image in the details.
    let events = s.events();
    for id in [&managed, &gpus_all, &untagged] {
        let e = events
            .iter()
            .find(|e| e["details"]["container_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no event for {id}"));
        assert_eq!(e["event_type"], "detection.container_discovered");
        assert_eq!(e["details"]["has_gpu"], entry(&inv, id)["has_gpu"]);
    }
    drop(c);
    let _ = Command::new("docker")
        .args(["-H", &host, "rmi", &image_id])
        .output();
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn transitions_over_several_scans() {
    let host = docker_host();
    let s = Scratch::new();
    let img = test_image();
    let mut c = Containers::new(&host);
    let name_a = unique("dw-trans-a");
    let a = c.create(&[
        "--label",
        "ds01.user=alice",
        "--name",
        &name_a,
        &img,
        "sleep",
        "600",
    ]);
    let name_b = unique("dw-trans-b");
    let b = c.run(&[
        "--label",
        "ds01.user=bob",
        "--name",
        &name_b,
        &img,
        "sleep",
        "600",
    ]);
    let config = s.config(Some(&host), "");

    s.scan(&config);
    let ts = s.inventory()["last_scan"].as_str().expect("ts").to_string();
    let line_a = format!(
        "{{\"timestamp\":\"{ts}\",\"event_type\":\"detection.container_discovered\",\"schema_version\":\"1\",\"user\":\"alice\",\"source\":\"detect-workloads-test\",\"details\":{{\"container_id\":\"{a}\",\"name\":\"{name_a}\",\"origin\":\"raw-docker\",\"has_gpu\":false,\"image\":\"{img}\"}}}}"
    );
    assert!(s.event_lines().contains(&line_a), "missing {line_a}");
    let detected = entry(&s.inventory(), &a)["detected_at"].clone();

    // Nothing changed: nothing about ours is emitted.
    let ours = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.contains(&a) || l.contains(&b))
            .cloned()
            .collect()
    };
    let before = s.event_lines().len();
    s.scan(&config);
    assert!(ours(&s.event_lines()[before..]).is_empty());

    docker(&host, &["start", &a]);
    docker(&host, &["rm", "-f", &b]);
    let before = s.event_lines().len();
    s.scan(&config);
    let ts = s.inventory()["last_scan"].as_str().expect("ts").to_string();
    let new = ours(&s.event_lines()[before..]);
    assert_eq!(
        new,
        vec![
            format!("{{\"timestamp\":\"{ts}\",\"event_type\":\"detection.container_status_changed\",\"schema_version\":\"1\",\"user\":\"alice\",\"source\":\"detect-workloads-test\",\"details\":{{\"container_id\":\"{a}\",\"name\":\"{name_a}\",\"old_status\":\"created\",\"new_status\":\"running\"}}}}"),
            format!("{{\"timestamp\":\"{ts}\",\"event_type\":\"detection.container_exited\",\"schema_version\":\"1\",\"user\":\"bob\",\"source\":\"detect-workloads-test\",\"details\":{{\"container_id\":\"{b}\",\"name\":\"{name_b}\",\"origin\":\"raw-docker\"}}}}"),
        ]
    );
    let inv = s.inventory();
    assert_eq!(entry(&inv, &a)["detected_at"], detected, "detected_at kept");
    assert!(inv["containers"].get(&b).is_none());
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn engine_outage_carries_containers_over_then_reconciles() {
    let host = docker_host();
    let s = Scratch::new();
    let img = test_image();
    let mut c = Containers::new(&host);
    let keep = c.create(&[&img, "true"]);
    let gone = c.create(&[&img, "true"]);
    let up = s.config(Some(&host), "");
    s.scan(&up);
    let before_outage = s.inventory()["containers"].clone();

    // The engine "goes away": the endpoint is a dead socket.
    let down_text = std::fs::read_to_string(&up)
        .expect("config")
        .replace(&host, &format!("unix://{}", s.path("dead.sock").display()));
    let down = s.path("down.toml");
    std::fs::write(&down, down_text).expect("write");
    docker(&host, &["rm", "-f", &gone]);
    let events_before = s.event_lines().len();
    let stderr = s.scan(&down);
    assert!(
        stderr.contains("docker"),
        "the warning names the collector: {stderr}"
    );
    let inv = s.inventory();
    assert_eq!(inv["containers"], before_outage, "carried over unchanged");
    assert_eq!(inv["scan"]["collectors"]["docker"]["ok"], false);
    assert!(inv["scan"]["collectors"]["docker"]["error"]
        .as_str()
        .is_some_and(|e| e.contains("dead.sock")));
    assert_eq!(s.event_lines().len(), events_before, "no event while down");

    // Back: exactly the real change is reported.
    s.scan(&up);
    let new: Vec<Value> = s.events()[events_before..]
        .iter()
        .filter(|e| {
            e["details"]["container_id"] == gone.as_str()
                || e["details"]["container_id"] == keep.as_str()
        })
        .cloned()
        .collect();
    assert_eq!(new.len(), 1, "{new:#?}");
    assert_eq!(new[0]["event_type"], "detection.container_exited");
    assert_eq!(new[0]["details"]["container_id"], gone.as_str());
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn processes_inside_containers_are_not_host_processes() {
    let host = docker_host();
    let s = Scratch::new();
    let img = test_image();
    let mut c = Containers::new(&host);
    let id = c.run(&[&img, "sleep", "600"]);
    let pid = docker(&host, &["inspect", "-f", "{{.State.Pid}}", &id]);
    s.set_gpu_apps(&format!("{pid}, 100, GPU-x\n"));
    let config = s.config(Some(&host), "");
    s.scan(&config);
    s.scan(&config);
    let inv = s.inventory();
    assert!(inv["host_processes"].get(&pid).is_none(), "{inv}");
    assert!(inv["_pending_processes"].get(&pid).is_none(), "{inv}");
    assert_eq!(
        entry(&inv, &id)["user"],
        "root",
        "owner of the main process"
    );
}

#[test]
#[ignore = "needs the private Docker engine: run by tests/run.sh"]
fn image_names_follow_tags_given_and_taken_between_scans() {
    let host = docker_host();
    let s = Scratch::new();
    let mut c = Containers::new(&host);
    let image_id = docker(
        &host,
        &[
            "import",
            &std::env::var("DW_TEST_ROOTFS_TAR").unwrap_or_default(),
        ],
    );
    let short = image_id.trim_start_matches("sha256:")[..12].to_string();
    let id = c.create(&[&image_id, "true"]);
    let config = s.config(Some(&host), "");
    s.scan(&config);
    assert_eq!(entry(&s.inventory(), &id)["image"], short.as_str());

    let tag = format!("{}:1", unique("dw-test/late"));
    docker(&host, &["tag", &image_id, &tag]);
    // Events are stamped in whole seconds: let the tag fall before the scan.
    common::seconds_pass(2);
    s.scan(&config);
    assert_eq!(entry(&s.inventory(), &id)["image"], tag.as_str());

    docker(&host, &["rmi", "-f", &tag]);
    common::seconds_pass(2);
    s.scan(&config);
    assert_eq!(entry(&s.inventory(), &id)["image"], short.as_str());
    drop(c);
    let _ = Command::new("docker")
        .args(["-H", &host, "rmi", &image_id])
        .output();
}

/// The same engine over `tcp://127.0.0.1:PORT` with `--tlsverify`, and the
/// client certificates tests/run.sh made for it: `(endpoint, good, untrusted)`.
/// In CI (CI=true or CI=1) it must be there.
fn tls_engine() -> (String, String, String) {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (
        var("DW_TEST_DOCKER_TLS_HOST"),
        var("DW_TEST_DOCKER_CERT_PATH"),
        var("DW_TEST_DOCKER_WRONG_CERT_PATH"),
    ) {
        (Some(host), Some(good), Some(wrong)) => (host, good, wrong),
        _ => panic!("no TLS engine (DW_TEST_DOCKER_TLS_HOST): tests/run.sh starts one"),
    }
}

#[test]
#[ignore = "needs the private Docker engine, the TLS listener of the private engine: run by tests/run.sh"]
fn a_tls_engine_is_scanned_and_an_untrusted_certificate_fails_with_carry_over() {
    let host = docker_host();
    let (tls_host, good, wrong) = tls_engine();
    let s = Scratch::new();
    let mut c = Containers::new(&host);
    let id = c.create(&["--name", &unique("dw-tls"), &test_image(), "true"]);
    let config = s.config(Some(&tls_host), "");
    common::edit_config(
        &config,
        "timeout = \"20s\"\n",
        &format!("timeout = \"20s\"\ntls_verify = true\ncert_path = \"{good}\"\n"),
    );
    s.scan(&config);
    let inv = s.inventory();
    assert_eq!(inv["scan"]["collectors"]["docker"]["ok"], true, "{inv}");
    assert_eq!(entry(&inv, &id)["status"], "created");
    let listed = inv["containers"].clone();

    // A client certificate of a CA the engine does not trust.
    common::edit_config(&config, &good, &wrong);
    let events_before = s.event_lines().len();
    s.scan(&config);
    let inv = s.inventory();
    let docker_report = &inv["scan"]["collectors"]["docker"];
    assert_eq!(docker_report["ok"], false, "{docker_report}");
    let error = docker_report["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&tls_host["tcp://".len()..]) && error.contains("TLS"),
        "the error names the engine and TLS: {error}"
    );
    assert!(
        error.to_lowercase().contains("certificate"),
        "the error says the certificate was refused: {error}"
    );
    assert_eq!(inv["containers"], listed, "carried over unchanged");
    assert_eq!(
        s.event_lines().len(),
        events_before,
        "no event while refused"
    );

    // Plain HTTP to the TLS port is no scan either.
    common::edit_config(&config, "tls_verify = true", "tls_verify = false");
    s.scan(&config);
    assert_eq!(s.inventory()["scan"]["collectors"]["docker"]["ok"], false);
    assert_eq!(s.inventory()["containers"], listed);
}
