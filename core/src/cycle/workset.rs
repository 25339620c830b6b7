//! The drafts the stages work on, built from this cycle's observations and
//! the previous inventory. Two rules live here: a process is the same one
//! only with the same PID and start time ([`ProcessEntry::is_process`]), and
//! what is carried over from an earlier sighting ([`first_seen`]).

use std::collections::BTreeMap;

use tracing::debug;

use crate::model::{
    ContainerEntry, ContainerFacts, GpuProcess, Inventory, Observations, ProcessEntry, ProcessFacts,
};
use crate::plugin::{ContainerDraft, ProcessDraft, Verdict, Workset};

/// When an entry was first seen: as recorded at an earlier sighting of the
/// same container or process, else `now`.
pub fn first_seen(before: Option<&str>, now: &str) -> String {
    before.filter(|d| !d.is_empty()).unwrap_or(now).to_string()
}

/// The drafts of this cycle. The containers' facts move into their drafts
/// (they are large: labels, inspect facts); the rest stays observed.
pub fn build(observed: &mut Observations, previous: &Inventory, now: &str) -> Workset {
    let containers = std::mem::take(&mut observed.containers)
        .into_iter()
        .map(|facts| container_draft(facts, previous, now))
        .collect();
    let mut by_pid: BTreeMap<u32, Vec<&GpuProcess>> = BTreeMap::new();
    for g in &observed.gpu_processes {
        by_pid.entry(g.pid).or_default().push(g);
    }
    let processes = by_pid
        .into_iter()
        .filter_map(|(pid, gpus)| {
            let facts = host_process(observed, pid)?;
            Some(process_draft(facts, &gpus, previous, now))
        })
        .collect();
    Workset {
        containers,
        processes,
    }
}

fn container_draft(facts: ContainerFacts, previous: &Inventory, now: &str) -> ContainerDraft {
    let id = facts.key();
    let before = previous.containers.get(&id).map(|e| e.detected_at.as_str());
    ContainerDraft {
        entry: ContainerEntry {
            detected_at: first_seen(before, now),
            id,
            name: facts.name.clone(),
            origin: String::new(),
            user: String::new(),
            has_gpu: facts.has_gpu(),
            gpu_devices: Vec::new(),
            status: facts.state.clone(),
            image: facts.image.clone(),
            // Moved in from the facts when the inventory is assembled.
            collector: String::new(),
            inspect: None,
            ..ContainerEntry::default()
        },
        facts,
    }
}

/// The `/proc` facts of GPU process `pid` when it runs on the host.
fn host_process(observed: &Observations, pid: u32) -> Option<&ProcessFacts> {
    let Some(facts) = observed.processes.get(&pid) else {
        debug!(
            pid,
            "GPU process gone from /proc before it could be read; skipped"
        );
        return None;
    };
    if facts.in_container {
        debug!(pid, container = ?facts.container_id, "GPU process inside a container; not a host process");
        return None;
    }
    Some(facts)
}

/// The draft of one host GPU process seen on `gpus` (one per GPU or MIG
/// device it uses), with what an earlier sighting of the same process
/// carries over: `detected_at` and the count of consecutive scans.
fn process_draft(
    facts: &ProcessFacts,
    gpus: &[&GpuProcess],
    previous: &Inventory,
    now: &str,
) -> ProcessDraft {
    let same = |e: &&ProcessEntry| e.is_process(facts.pid, Some(facts.start_time));
    let confirmed = previous.host_processes.get(&facts.pid).filter(same);
    let seen_before = confirmed.or_else(|| previous.pending_processes.get(&facts.pid).filter(same));
    let first = gpus[0];
    let known: Vec<u64> = gpus.iter().filter_map(|g| g.used_memory_mib).collect();
    let mut uuids: Vec<String> = Vec::new();
    for g in gpus {
        if !uuids.contains(&g.gpu_uuid) {
            uuids.push(g.gpu_uuid.clone());
        }
    }
    let entry = ProcessEntry {
        pid: facts.pid,
        user: facts.user.clone(),
        cmdline: facts.cmdline.clone(),
        gpu_memory_mb: (!known.is_empty()).then(|| known.iter().sum()),
        gpu_uuid: first.gpu_uuid.clone(),
        detected_at: first_seen(seen_before.map(|e| e.detected_at.as_str()), now),
        gpu_uuids: if uuids.len() > 1 { uuids } else { Vec::new() },
        mig_uuid: first.mig_uuid.clone(),
        gpu_instance_id: first.gpu_instance_id,
        compute_instance_id: first.compute_instance_id,
        sm_util: gpus.iter().filter_map(|g| g.sm_util).max(),
        start_time: Some(facts.start_time),
        seen_scans: seen_before.map_or(0, |e| e.seen_scans).saturating_add(1),
    };
    ProcessDraft {
        facts: facts.clone(),
        entry,
        confirmed_before: confirmed.is_some(),
        verdict: Verdict::Report,
    }
}
