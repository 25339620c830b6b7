//! Transitions between two inventories: the `detection.*` events of SPEC.md.

use serde_json::json;

use crate::model::{pid_map::in_text_order, Event, EventType, Inventory, ProcessEntry};

fn event(now: &str, event_type: EventType, user: &str, details: serde_json::Value) -> Event {
    Event {
        timestamp: now.to_string(),
        event_type,
        user: user.to_string(),
        details,
    }
}

/// Whether `map` holds the process `p` is (same PID, same start time).
fn holds(map: &std::collections::BTreeMap<u32, ProcessEntry>, p: &ProcessEntry) -> bool {
    map.get(&p.pid)
        .is_some_and(|other| other.is_process(p.pid, p.start_time))
}

/// The events that turn `previous` into `current`, stamped `now`: the
/// containers' first, then the host GPU processes'.
pub fn transitions(previous: &Inventory, current: &Inventory, now: &str) -> Vec<Event> {
    let mut events = Vec::new();
    container_events(previous, current, now, &mut events);
    process_events(previous, current, now, &mut events);
    events
}

fn container_events(previous: &Inventory, current: &Inventory, now: &str, events: &mut Vec<Event>) {
    for (id, c) in &current.containers {
        match previous.containers.get(id) {
            None => events.push(event(
                now,
                EventType::ContainerDiscovered,
                &c.user,
                json!({
                    "container_id": c.id,
                    "name": c.name,
                    "origin": c.origin,
                    "has_gpu": c.has_gpu,
                    "image": c.image,
                }),
            )),
            Some(old) if old.status != c.status => events.push(event(
                now,
                EventType::ContainerStatusChanged,
                &c.user,
                json!({
                    "container_id": c.id,
                    "name": c.name,
                    "old_status": old.status,
                    "new_status": c.status,
                }),
            )),
            Some(_) => {}
        }
    }
    for (id, old) in &previous.containers {
        if !current.containers.contains_key(id) {
            events.push(event(
                now,
                EventType::ContainerExited,
                &old.user,
                json!({
                    "container_id": old.id,
                    "name": old.name,
                    "origin": old.origin,
                }),
            ));
        }
    }
}

fn process_events(previous: &Inventory, current: &Inventory, now: &str, events: &mut Vec<Event>) {
    // Processes in the order of their PIDs as text: the order of the file.
    for (_, old) in in_text_order(&previous.host_processes) {
        if !holds(&current.host_processes, old) {
            events.push(event(
                now,
                EventType::HostGpuProcessExited,
                &old.user,
                json!({ "pid": old.pid, "cmdline": old.cmdline }),
            ));
        }
    }
    for (_, new) in in_text_order(&current.host_processes) {
        if !holds(&previous.host_processes, new) {
            events.push(event(
                now,
                EventType::HostGpuProcessDiscovered,
                &new.user,
                json!({
                    "pid": new.pid,
                    "cmdline": new.cmdline,
                    "gpu_memory_mb": new.gpu_memory_mb,
                    "gpu_uuid": new.gpu_uuid,
                }),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ContainerEntry;

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
        let types: Vec<_> = transitions(&prev, &cur, "t")
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
        assert!(transitions(&inv, &inv, "t").is_empty());
    }
}
