//! The cost of a scan in Docker API calls (issue 5), counted by the collector
//! itself (`scan.collectors.docker.stats`), never by timing: a cold scan lists
//! and inspects every container; a steady scan makes exactly two calls (list
//! containers, events since the previous scan) whatever the number of
//! containers; a changed container costs one inspect; new containers or a
//! changed image add the image list (for tags) and their inspects.
//!
//! Its own test binary, so no other test of this crate creates containers on
//! the engine while it counts.

mod common;

use std::time::Duration;

use common::{docker, docker_host, test_image, Containers, Scratch};
use serde_json::Value;

/// `(api_calls, inspects)` of the last scan.
fn docker_stats(inv: &Value) -> (u64, u64) {
    let d = &inv["scan"]["collectors"]["docker"];
    assert_eq!(d["ok"], true, "docker collector failed: {d}");
    let n = |k: &str| {
        d["stats"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("no stats.{k}: {d}"))
    };
    (n("api_calls"), n("inspects"))
}

/// The collector asks for the events since one second before the previous
/// scan, in whole seconds: after this long a change is no longer in that window.
fn settle() {
    std::thread::sleep(Duration::from_millis(2500));
}

/// A steady scan: nothing of ours changed since the previous scan. Retried
/// (after settling) only if something else on a shared engine had events.
fn steady_scan(s: &Scratch, config: &std::path::Path) -> (u64, u64, usize) {
    let mut last = (0, 0, 0);
    for _ in 0..3 {
        s.scan(config);
        let inv = s.inventory();
        let (calls, inspects) = docker_stats(&inv);
        last = (
            calls,
            inspects,
            inv["containers"].as_object().map_or(0, |m| m.len()),
        );
        if inspects == 0 {
            break;
        }
        settle();
    }
    last
}

#[test]
fn steady_scan_costs_two_calls_whatever_the_number_of_containers() {
    let Some(host) = docker_host() else { return };
    let can_run = std::env::var("DW_TEST_DOCKER_CAN_RUN").as_deref() != Ok("0");
    let s = Scratch::new();
    let img = test_image();
    let config = s.config(Some(&host), "");
    let mut c = Containers::new(&host);

    // k = 5 containers of ours, 2 of them running.
    let mut created = Vec::new();
    for i in 0..5 {
        if can_run && i < 2 {
            c.run(&["--network", "none", &img, "sleep", "300"]);
        } else {
            created.push(c.create(&["--network", "none", &img, "sleep", "300"]));
        }
    }
    settle();

    // Cold: list + images + one inspect per container (ours and any other).
    s.scan(&config);
    let inv = s.inventory();
    let (calls, inspects) = docker_stats(&inv);
    let total = inv["containers"].as_object().expect("containers").len();
    for id in c.ids.iter().map(|id| &id[..12]) {
        assert!(inv["containers"][id].is_object(), "{id} missing");
    }
    assert!(inspects >= 5, "cold scan inspected {inspects} of >= 5");
    assert_eq!(
        inspects as usize, total,
        "cold scan inspects every container"
    );
    assert_eq!(calls, 2 + inspects, "cold: list + images + inspects");

    // Steady: list, images, events; nothing inspected.
    let (calls, inspects, n) = steady_scan(&s, &config);
    assert_eq!((calls, inspects), (2, 0), "steady scan with {n} containers");
    assert_eq!(n, total);

    // One container changes state: one more call, its inspect.
    if can_run {
        let id = created.first().expect("a created container");
        docker(&host, &["start", id]);
        s.scan(&config);
        let inv = s.inventory();
        assert_eq!(inv["containers"][id]["status"], "running");
        assert_eq!(
            docker_stats(&inv),
            (3, 1),
            "after starting {id}: list + events + 1 inspect"
        );
    }

    // Three times as many containers of ours: a steady scan still makes 2 calls.
    for _ in 0..10 {
        c.create(&["--network", "none", &img, "sleep", "300"]);
    }
    settle();
    s.scan(&config); // inspects the 10 new ones
    let (calls, inspects) = docker_stats(&s.inventory());
    assert!(inspects >= 10, "new containers inspected: {inspects}");
    assert_eq!(calls, 3 + inspects, "list + events + images + inspects");

    // An image tagged: the image list is fetched again, nothing inspected.
    docker(&host, &["tag", &img, "dw-test/retagged:calls"]);
    settle();
    s.scan(&config);
    assert_eq!(
        docker_stats(&s.inventory()),
        (3, 0),
        "list + events + images"
    );
    docker(&host, &["rmi", "dw-test/retagged:calls"]);
    settle();
    s.scan(&config);
    settle();
    let (calls, inspects, n) = steady_scan(&s, &config);
    assert!(
        n >= total + 10,
        "{n} containers, expected at least {}",
        total + 10
    );
    assert_eq!((calls, inspects), (2, 0), "steady scan with {n} containers");
}

#[test]
fn a_cached_main_pid_that_left_the_container_is_inspected_again() {
    // The engine keeps only its last 256 events: a restart between two scans
    // can go unseen, and the cached main PID then be gone or another
    // process's. Played here by pointing the cache at a host process.
    let Some(host) = docker_host() else { return };
    if std::env::var("DW_TEST_DOCKER_CAN_RUN").as_deref() == Ok("0") {
        return;
    }
    let Some((user, uid)) = common::test_user() else {
        panic!("tests/run.sh creates the test user");
    };
    let s = Scratch::new();
    let config = s.config(Some(&host), "");
    let mut c = Containers::new(&host);
    let uid = uid.to_string();
    let id = c.run(&[
        "--network",
        "none",
        "--user",
        &uid,
        &test_image(),
        "sleep",
        "300",
    ]);
    settle();
    s.scan(&config);
    steady_scan(&s, &config);
    let inv = s.inventory();
    let real_pid = inv["containers"][&id]["inspect"]["main_pid"].clone();
    assert!(real_pid.as_u64().is_some_and(|p| p > 0), "{inv}");
    assert_eq!(inv["containers"][&id]["user"], user.as_str());

    // The cache now names a process of root's outside the container.
    let stranger = common::sleeper();
    let mut edited = inv.clone();
    edited["containers"][&id]["inspect"]["main_pid"] = stranger.pid().into();
    std::fs::write(s.inventory_path(), edited.to_string()).expect("write inventory");

    s.scan(&config);
    let inv = s.inventory();
    let (calls, inspects) = docker_stats(&inv);
    assert_eq!((calls, inspects), (3, 1), "list + events + one inspect");
    assert_eq!(inv["containers"][&id]["inspect"]["main_pid"], real_pid);
    assert_eq!(
        inv["containers"][&id]["user"],
        user.as_str(),
        "the owner of the container's own main process, not root's sleep"
    );

    // And the next scan is steady again.
    let (calls, inspects, _) = steady_scan(&s, &config);
    assert_eq!((calls, inspects), (2, 0));
}
