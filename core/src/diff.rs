//! Transitions between two inventories: the `detection.*` events of docs/formats.md.

use std::collections::BTreeMap;

use detect_workloads_api::timefmt::Timestamp;

use detect_workloads_api::details::{self, to_json, Signals, WorkloadKind};
use detect_workloads_api::model::{
    pid_map::in_text_order, short_id, Activity, ContainerEntry, Event, EventType, Inventory,
    ProcessEntry, ShortLivedContainer, Usage, UserGpuUse,
};

fn event(now: Timestamp, event_type: EventType, user: &str, details: serde_json::Value) -> Event {
    Event {
        timestamp: now,
        event_type,
        user: user.to_string(),
        details,
        event_id: String::new(),
    }
}

/// Whether `map` holds the process `p` is (same PID, same start time).
fn holds(map: &std::collections::BTreeMap<u32, ProcessEntry>, p: &ProcessEntry) -> bool {
    map.get(&p.pid)
        .is_some_and(|other| other.is_process(p.pid, p.start_time))
}

/// The events that turn `previous` into `current`, stamped `now`: the
/// containers' first, then those that lived between the two scans
/// (`short_lived`, as the engine's events tell), then the containers' GPU
/// use, then the host GPU processes'.
pub fn transitions(
    previous: &Inventory,
    current: &Inventory,
    short_lived: &[ShortLivedContainer],
    now: Timestamp,
) -> Vec<Event> {
    let mut events = Vec::new();
    container_events(previous, current, now, &mut events);
    short_lived_events(previous, current, short_lived, now, &mut events);
    container_gpu_events(previous, current, now, &mut events);
    process_events(previous, current, now, &mut events);
    user_gpu_use_events(previous, current, now, &mut events);
    workload_events(previous, current, now, &mut events);
    events
}

/// Whether a workload's activity says it is reported idle.
fn is_idle(activity: Option<&Activity>) -> bool {
    activity.is_some_and(|a| a.idle)
}

/// What a workload idle event says of its signals.
fn signals(activity: &Activity) -> Signals {
    Signals {
        cpu_cores: activity.cpu_cores,
        net_bytes_per_s: activity.net_bytes_per_s,
        gpu_util_percent: activity.gpu_util_percent,
        sampled_s: activity.sampled_s,
    }
}

/// How long a workload told idle was idle, when its `idle_since` is known.
fn idle_for(old: &Activity, now: Timestamp) -> Option<i64> {
    old.idle_since.map(|since| now.seconds_since(since).max(0))
}

/// The idle or active event of a workload whose reading is `activity`
/// (the previous one `old`), if it changed.
fn workload_event<'a>(
    mut details: details::Workload<'a>,
    user: &str,
    activity: &'a Activity,
    old: Option<&'a Activity>,
    now: Timestamp,
) -> Option<Event> {
    if activity.idle && !is_idle(old) {
        details.idle_since = activity.idle_since;
        details.signals = Some(signals(activity));
        return Some(event(now, EventType::WorkloadIdle, user, to_json(&details)));
    }
    let old = old.filter(|o| o.idle && !activity.idle)?;
    details.idle_since = old.idle_since;
    details.idle_for_s = Some(idle_for(old, now));
    Some(event(
        now,
        EventType::WorkloadActive,
        user,
        to_json(&details),
    ))
}

/// A workload reported idle (the `idle` stage's `activity.idle` turned
/// true) and one reported idle that is active again; once each, since the
/// flag is in the state. A workload that stops or vanishes while idle is
/// told by its own events.
fn workload_events(
    previous: &Inventory,
    current: &Inventory,
    now: Timestamp,
    events: &mut Vec<Event>,
) {
    for (id, c) in &current.containers {
        let old = previous
            .containers
            .get(id)
            .and_then(|o| o.activity.as_ref());
        let Some(activity) = c.activity.as_ref() else {
            continue;
        };
        let details = details::Workload {
            kind: WorkloadKind::Container,
            container_id: Some(&c.id),
            name: Some(&c.name),
            pid: None,
            cmdline: None,
            gpu_memory_mb: c.gpu_memory_mb,
            gpu_uuids: c.gpu_uuids.iter().map(String::as_str).collect(),
            idle_since: None,
            signals: None,
            idle_for_s: None,
        };
        events.extend(workload_event(details, &c.user, activity, old, now));
    }
    for (_, p) in in_text_order(&current.host_processes) {
        let old = previous
            .host_processes
            .get(&p.pid)
            .filter(|o| o.is_process(p.pid, p.start_time))
            .and_then(|o| o.activity.as_ref());
        let Some(activity) = p.activity.as_ref() else {
            continue;
        };
        let details = details::Workload {
            kind: WorkloadKind::HostProcess,
            container_id: None,
            name: None,
            pid: Some(p.pid),
            cmdline: Some(&p.cmdline),
            gpu_memory_mb: p.gpu_memory_mb,
            gpu_uuids: p.gpus(),
            idle_since: None,
            signals: None,
            idle_for_s: None,
        };
        events.extend(workload_event(details, &p.user, activity, old, now));
    }
}

/// The GPU time a workload held, for its exit event (`None` when it held none).
fn usage_details(usage: &Usage) -> Option<&Usage> {
    (!usage.is_zero()).then_some(usage)
}

/// How long (seconds) a container told exited is remembered in
/// [`Inventory::told_gone`]: its removal can be among the engine's events of
/// a scan starting up to a second later, and whole seconds are compared.
const TOLD_GONE_FOR: i64 = 2;

/// The containers told exited recently, after this cycle's `events`
/// (stamped `now`): the previous ones still within two seconds of
/// `now`, and those this cycle tells.
pub fn told_gone(
    previous: &Inventory,
    events: &[Event],
    now: Timestamp,
) -> BTreeMap<String, Timestamp> {
    let horizon = now.plus_seconds(-TOLD_GONE_FOR);
    let mut kept: BTreeMap<String, Timestamp> = previous
        .told_gone
        .iter()
        .filter(|(_, at)| **at >= horizon)
        .map(|(id, at)| (id.clone(), *at))
        .collect();
    for e in events {
        if e.event_type != EventType::ContainerExited {
            continue;
        }
        if let Some(id) = e.details.get("container_id").and_then(|v| v.as_str()) {
            kept.insert(id.to_string(), now);
        }
    }
    kept
}

/// A user's GPU use by short-lived processes (`user_gpu_use`): started
/// when it is first confirmed, stopped when it ends; once each.
fn user_gpu_use_events(
    previous: &Inventory,
    current: &Inventory,
    now: Timestamp,
    events: &mut Vec<Event>,
) {
    let same = |a: &UserGpuUse, b: &UserGpuUse| a.user == b.user && a.gpu_uuid == b.gpu_uuid;
    for old in &previous.user_gpu_use {
        if !current.user_gpu_use.iter().any(|u| same(u, old)) {
            events.push(event(
                now,
                EventType::UserGpuUseStopped,
                &old.user,
                to_json(&details::UserGpuUse {
                    gpu_uuid: &old.gpu_uuid,
                    gpu_memory_mb: old.gpu_memory_mb,
                    pids: None,
                    processes_seen: old.processes_seen,
                    detected_at: old.detected_at,
                }),
            ));
        }
    }
    for new in &current.user_gpu_use {
        if !previous.user_gpu_use.iter().any(|u| same(u, new)) {
            events.push(event(
                now,
                EventType::UserGpuUseStarted,
                &new.user,
                to_json(&details::UserGpuUse {
                    gpu_uuid: &new.gpu_uuid,
                    gpu_memory_mb: new.gpu_memory_mb,
                    pids: Some(&new.pids),
                    processes_seen: new.processes_seen,
                    detected_at: new.detected_at,
                }),
            ));
        }
    }
}

/// A container created and removed between the two scans: discovered and
/// exited, with the engine's own times and the origin and user the stages
/// gave it, unless either inventory lists it (then the ordinary events tell
/// its story) or a scan of the last seconds told it exited.
fn short_lived_events(
    previous: &Inventory,
    current: &Inventory,
    short_lived: &[ShortLivedContainer],
    now: Timestamp,
    events: &mut Vec<Event>,
) {
    for c in short_lived {
        let id = short_id(&c.id);
        if previous.containers.contains_key(&id)
            || current.containers.contains_key(&id)
            || previous.told_gone.contains_key(&id)
        {
            continue;
        }
        events.push(event(
            now,
            EventType::ContainerDiscovered,
            &c.user,
            to_json(&details::ContainerDiscovered {
                container_id: &id,
                name: &c.name,
                origin: &c.origin,
                has_gpu: false,
                image: &c.image,
                short_lived: Some(true),
                created_at: Some(c.created_at),
            }),
        ));
        events.push(event(
            now,
            EventType::ContainerExited,
            &c.user,
            to_json(&details::ContainerExited {
                container_id: &id,
                name: &c.name,
                origin: &c.origin,
                usage: None,
                short_lived: Some(true),
                created_at: Some(c.created_at),
                removed_at: Some(c.removed_at),
            }),
        ));
    }
}

fn gpu_details(c: &ContainerEntry) -> details::ContainerGpu<'_> {
    details::ContainerGpu {
        container_id: &c.id,
        name: &c.name,
        user: &c.user,
        gpu_memory_mb: c.gpu_memory_mb,
        gpu_uuids: &c.gpu_uuids,
        mismatch: None,
        has_gpu: None,
        gpu_devices: None,
    }
}

/// GPU use starting and stopping in containers, and mismatches appearing.
/// A container gone while in use stops using its GPUs too.
fn container_gpu_events(
    previous: &Inventory,
    current: &Inventory,
    now: Timestamp,
    events: &mut Vec<Event>,
) {
    for (id, c) in &current.containers {
        let before = previous.containers.get(id);
        if c.gpu_in_use && !before.is_some_and(|b| b.gpu_in_use) {
            events.push(event(
                now,
                EventType::ContainerGpuStarted,
                &c.user,
                to_json(&gpu_details(c)),
            ));
        }
        if let Some(mismatch) = c.gpu_mismatch {
            if before.and_then(|b| b.gpu_mismatch) != Some(mismatch) {
                let details = details::ContainerGpu {
                    mismatch: Some(mismatch),
                    has_gpu: Some(c.has_gpu),
                    gpu_devices: Some(&c.gpu_devices),
                    ..gpu_details(c)
                };
                events.push(event(
                    now,
                    EventType::ContainerGpuMismatch,
                    &c.user,
                    to_json(&details),
                ));
            }
        }
    }
    for (id, old) in &previous.containers {
        let in_use = current.containers.get(id).is_some_and(|c| c.gpu_in_use);
        if old.gpu_in_use && !in_use {
            events.push(event(
                now,
                EventType::ContainerGpuStopped,
                &old.user,
                to_json(&gpu_details(old)),
            ));
        }
    }
}

fn container_events(
    previous: &Inventory,
    current: &Inventory,
    now: Timestamp,
    events: &mut Vec<Event>,
) {
    for (id, c) in &current.containers {
        match previous.containers.get(id) {
            None => events.push(event(
                now,
                EventType::ContainerDiscovered,
                &c.user,
                to_json(&details::ContainerDiscovered {
                    container_id: &c.id,
                    name: &c.name,
                    origin: &c.origin,
                    has_gpu: c.has_gpu,
                    image: &c.image,
                    short_lived: None,
                    created_at: None,
                }),
            )),
            Some(old) if old.status != c.status => events.push(event(
                now,
                EventType::ContainerStatusChanged,
                &c.user,
                to_json(&details::ContainerStatusChanged {
                    container_id: &c.id,
                    name: &c.name,
                    old_status: &old.status,
                    new_status: &c.status,
                }),
            )),
            Some(_) => {}
        }
    }
    for (id, old) in &previous.containers {
        if !current.containers.contains_key(id) {
            let details = details::ContainerExited {
                container_id: &old.id,
                name: &old.name,
                origin: &old.origin,
                usage: usage_details(&old.usage),
                short_lived: None,
                created_at: None,
                removed_at: None,
            };
            events.push(event(
                now,
                EventType::ContainerExited,
                &old.user,
                to_json(&details),
            ));
        }
    }
}

/// What a discovered host GPU process's event says: its pid, command line,
/// memory and GPU, and, when known, its cgroup (where it really runs) and
/// why some of its `/proc` files could not be read.
fn discovered_details(p: &ProcessEntry) -> serde_json::Value {
    to_json(&details::HostGpuProcessDiscovered {
        pid: p.pid,
        cmdline: &p.cmdline,
        gpu_memory_mb: p.gpu_memory_mb,
        gpu_uuid: &p.gpu_uuid,
        cgroup: p.cgroup.as_deref(),
        read_error: p.read_error.as_deref(),
    })
}

fn process_events(
    previous: &Inventory,
    current: &Inventory,
    now: Timestamp,
    events: &mut Vec<Event>,
) {
    // Processes in the order of their PIDs as text: the order of the file.
    for (_, old) in in_text_order(&previous.host_processes) {
        if !holds(&current.host_processes, old) {
            let details = details::HostGpuProcessExited {
                pid: old.pid,
                cmdline: &old.cmdline,
                usage: usage_details(&old.usage),
            };
            events.push(event(
                now,
                EventType::HostGpuProcessExited,
                &old.user,
                to_json(&details),
            ));
        }
    }
    for (_, new) in in_text_order(&current.host_processes) {
        if !holds(&previous.host_processes, new) {
            events.push(event(
                now,
                EventType::HostGpuProcessDiscovered,
                &new.user,
                discovered_details(new),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }
    use detect_workloads_api::model::ContainerEntry;

    fn container(id: &str, status: &str) -> ContainerEntry {
        ContainerEntry {
            id: id.into(),
            name: format!("n-{id}"),
            origin: "raw-docker".into(),
            user: "alice".into(),
            status: status.into(),
            ..Default::default()
        }
    }

    fn process(pid: u32, start: Option<u64>) -> ProcessEntry {
        ProcessEntry {
            pid,
            user: "bob".into(),
            cmdline: "python3 x.py".into(),
            gpu_memory_mb: Some(10),
            gpu_uuid: "GPU-1".into(),
            start_time: start,
            ..Default::default()
        }
    }

    #[test]
    fn container_and_process_transitions() {
        let mut prev = Inventory::default();
        prev.containers
            .insert("a".into(), container("a", "running"));
        prev.containers
            .insert("b".into(), container("b", "running"));
        prev.host_processes.insert(10, process(10, Some(5)));
        prev.host_processes.insert(11, process(11, None));
        let mut cur = Inventory::default();
        cur.containers.insert("a".into(), container("a", "exited"));
        cur.containers.insert("c".into(), container("c", "created"));
        cur.host_processes.insert(10, process(10, Some(6)));
        cur.host_processes.insert(11, process(11, Some(9)));
        let types: Vec<_> = transitions(&prev, &cur, &[], Timestamp::UNIX_EPOCH)
            .into_iter()
            .map(|e| (e.event_type.as_str().to_string(), e.details.to_string()))
            .collect();
        assert_eq!(
            types,
            [
                (
                    "detection.container_status_changed".to_string(),
                    r#"{"container_id":"a","name":"n-a","old_status":"running","new_status":"exited"}"#.to_string()
                ),
                (
                    "detection.container_discovered".to_string(),
                    r#"{"container_id":"c","name":"n-c","origin":"raw-docker","has_gpu":false,"image":""}"#.to_string()
                ),
                (
                    "detection.container_exited".to_string(),
                    r#"{"container_id":"b","name":"n-b","origin":"raw-docker"}"#.to_string()
                ),
                (
                    "detection.host_gpu_process_exited".to_string(),
                    r#"{"pid":10,"cmdline":"python3 x.py"}"#.to_string()
                ),
                (
                    "detection.host_gpu_process_discovered".to_string(),
                    r#"{"pid":10,"cmdline":"python3 x.py","gpu_memory_mb":10,"gpu_uuid":"GPU-1"}"#.to_string()
                ),
            ]
        );
    }

    #[test]
    fn identical_inventories_have_no_transitions() {
        let mut inv = Inventory::default();
        inv.containers.insert("a".into(), container("a", "running"));
        inv.host_processes.insert(10, process(10, Some(5)));
        assert!(transitions(&inv, &inv, &[], Timestamp::UNIX_EPOCH).is_empty());
    }

    fn in_use(c: ContainerEntry, mib: u64) -> ContainerEntry {
        ContainerEntry {
            gpu_in_use: true,
            gpu_memory_mb: Some(mib),
            gpu_uuids: vec!["GPU-1".into()],
            ..c
        }
    }

    fn summary(events: &[Event]) -> Vec<(String, String)> {
        events
            .iter()
            .map(|e| (e.event_type.as_str().to_string(), e.details.to_string()))
            .collect()
    }

    #[test]
    fn gpu_use_in_containers_starts_and_stops_once() {
        let idle = |id: &str| container(id, "running");
        let with = |entries: Vec<ContainerEntry>| Inventory {
            containers: entries.into_iter().map(|c| (c.id.clone(), c)).collect(),
            ..Default::default()
        };
        let a_idle = with(vec![idle("a"), idle("b")]);
        let a_busy = with(vec![in_use(idle("a"), 70), idle("b")]);
        let more = with(vec![in_use(idle("a"), 90), idle("b")]);
        let started = transitions(&a_idle, &a_busy, &[], Timestamp::UNIX_EPOCH);
        assert_eq!(
            summary(&started),
            [(
                "detection.container_gpu_started".to_string(),
                r#"{"container_id":"a","name":"n-a","user":"alice","gpu_memory_mb":70,"gpu_uuids":["GPU-1"]}"#.to_string()
            )]
        );
        assert_eq!(started[0].user, "alice");
        assert!(
            transitions(&a_busy, &more, &[], Timestamp::UNIX_EPOCH).is_empty(),
            "still in use"
        );
        let stopped = transitions(&more, &a_idle, &[], Timestamp::UNIX_EPOCH);
        assert_eq!(
            summary(&stopped),
            [(
                "detection.container_gpu_stopped".to_string(),
                r#"{"container_id":"a","name":"n-a","user":"alice","gpu_memory_mb":90,"gpu_uuids":["GPU-1"]}"#.to_string()
            )]
        );
        // Gone while in use: exited, and stopped.
        let gone = with(vec![idle("b")]);
        let types: Vec<String> = summary(&transitions(&more, &gone, &[], Timestamp::UNIX_EPOCH))
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(
            types,
            [
                "detection.container_exited",
                "detection.container_gpu_stopped"
            ]
        );
    }

    #[test]
    fn a_mismatch_is_told_once_when_it_appears() {
        use detect_workloads_api::model::GpuMismatch;
        let c = ContainerEntry {
            gpu_mismatch: Some(GpuMismatch::NotGranted),
            ..in_use(container("a", "running"), 1)
        };
        let mut prev = Inventory::default();
        prev.containers
            .insert("a".into(), container("a", "running"));
        let mut cur = Inventory::default();
        cur.containers.insert("a".into(), c);
        let types: Vec<String> = summary(&transitions(&prev, &cur, &[], Timestamp::UNIX_EPOCH))
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(
            types,
            [
                "detection.container_gpu_started",
                "detection.container_gpu_mismatch"
            ]
        );
        let mismatch = &transitions(&prev, &cur, &[], Timestamp::UNIX_EPOCH)[1];
        assert_eq!(mismatch.details["mismatch"], "not-granted");
        assert!(
            transitions(&cur, &cur, &[], Timestamp::UNIX_EPOCH).is_empty(),
            "not every scan"
        );
    }

    #[test]
    fn short_lived_containers_are_discovered_and_exited() {
        let gone = ShortLivedContainer {
            id: "abcdefabcdef0123".into(),
            name: "blink".into(),
            image: "busybox".into(),
            created_at: ts("2024-05-01T10:00:01Z"),
            removed_at: ts("2024-05-01T10:00:03Z"),
            origin: "compose".into(),
            user: "alice".into(),
            ..ShortLivedContainer::default()
        };
        let listed = ShortLivedContainer {
            id: "a".into(),
            ..gone.clone()
        };
        let mut prev = Inventory::default();
        prev.containers
            .insert("a".into(), container("a", "running"));
        let events = transitions(&prev, &prev, &[gone.clone(), listed], Timestamp::UNIX_EPOCH);
        assert!(events.iter().all(|e| e.user == "alice"));
        assert_eq!(
            summary(&events),
            [
                (
                    "detection.container_discovered".to_string(),
                    r#"{"container_id":"abcdefabcdef","name":"blink","origin":"compose","has_gpu":false,"image":"busybox","short_lived":true,"created_at":"2024-05-01T10:00:01Z"}"#.to_string()
                ),
                (
                    "detection.container_exited".to_string(),
                    r#"{"container_id":"abcdefabcdef","name":"blink","origin":"compose","short_lived":true,"created_at":"2024-05-01T10:00:01Z","removed_at":"2024-05-01T10:00:03Z"}"#.to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_container_told_exited_is_not_told_again_as_short_lived() {
        let gone = ShortLivedContainer {
            id: "abcdefabcdef0123".into(),
            ..ShortLivedContainer::default()
        };
        let mut prev = Inventory {
            last_scan: Some(ts("2024-05-01T10:00:04Z")),
            ..Inventory::default()
        };
        prev.containers
            .insert("abcdefabcdef".into(), container("abcdefabcdef", "running"));
        let cur = Inventory::default();
        let events = transitions(&prev, &cur, &[], ts("2024-05-01T10:00:05Z"));
        assert_eq!(events.len(), 1, "{events:?}");
        let told = told_gone(&prev, &events, ts("2024-05-01T10:00:05Z"));
        assert_eq!(
            told.get("abcdefabcdef").copied(),
            Some(ts("2024-05-01T10:00:05Z"))
        );
        // The next scan sees its creation and removal among the engine's
        // events (the window overlaps): not told again.
        let next = Inventory {
            told_gone: told.clone(),
            ..Inventory::default()
        };
        assert!(transitions(
            &next,
            &cur,
            std::slice::from_ref(&gone),
            ts("2024-05-01T10:00:06Z")
        )
        .is_empty());
        // Remembered two seconds, then forgotten.
        assert_eq!(told_gone(&next, &[], ts("2024-05-01T10:00:07Z")), told);
        assert!(told_gone(&next, &[], ts("2024-05-01T10:00:08Z")).is_empty());
    }
}
