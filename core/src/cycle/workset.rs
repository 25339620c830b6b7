//! The drafts the stages work on, built from this cycle's observations and
//! the previous inventory. Two rules live here: a process is the same one
//! only with the same PID and start time ([`ProcessEntry::is_process`]), and
//! what is carried over from an earlier sighting ([`first_seen`]).

use std::collections::{BTreeMap, BTreeSet};

use tracing::debug;

use super::membership::Membership;
use detect_workloads_api::model::{
    short_id, ContainerEntry, ContainerFacts, GpuProcess, Inventory, Observations, ProcessEntry,
    ProcessFacts, ShortLivedContainer,
};
use detect_workloads_api::plugin::{
    ContainerDraft, ContainerProcessDraft, ProcessDraft, Verdict, Workset,
};
use detect_workloads_api::timefmt::Timestamp;

/// When an entry was first seen: as recorded at an earlier sighting of the
/// same container or process, else `now`.
pub fn first_seen(before: Option<Timestamp>, now: Timestamp) -> Timestamp {
    before.unwrap_or(now)
}

/// The drafts of this cycle. The containers' facts move into their drafts
/// (they are large: labels, inspect facts); the rest stays observed.
pub fn build(observed: &mut Observations, previous: &Inventory, now: Timestamp) -> Workset {
    let mut by_pid: BTreeMap<u32, Vec<&GpuProcess>> = BTreeMap::new();
    for g in &observed.gpu_processes {
        by_pid.entry(g.pid).or_default().push(g);
    }
    let membership = Membership::new(&observed.containers, &observed.processes);
    let listed: BTreeSet<String> = observed.containers.iter().map(|c| c.key()).collect();
    let mut processes = Vec::new();
    let mut container_processes = Vec::new();
    for (pid, gpus) in by_pid {
        let Some(facts) = observed.processes.get(&pid) else {
            debug!(
                pid,
                "GPU process gone from /proc before it could be read; skipped"
            );
            continue;
        };
        let container = membership
            .container_of(facts)
            .map(str::to_string)
            .or_else(|| attributed_before(facts, previous, &listed));
        match container {
            Some(id) => {
                let facts = ProcessFacts {
                    in_container: true,
                    container_id: Some(id),
                    ..facts.clone()
                };
                let seen = SeenBefore::in_container(&facts, previous);
                container_processes.push(ContainerProcessDraft {
                    process: process_draft(&facts, &gpus, seen, now),
                    gpus: gpus.into_iter().cloned().collect(),
                });
            }
            None => {
                if facts.in_container {
                    debug!(pid, cgroup = ?facts.cgroup_path(), "its cgroup looks like a container's, but no container the engine listed runs there: a host process");
                }
                let seen = SeenBefore::on_host(facts, previous);
                processes.push(process_draft(facts, &gpus, seen, now));
            }
        }
    }
    let containers = std::mem::take(&mut observed.containers)
        .into_iter()
        .map(|facts| container_draft(facts, previous, now))
        .collect();
    Workset {
        containers,
        processes,
        container_processes,
    }
}

/// The container a process was attributed to in the previous inventory (the
/// same process: same PID and start time), when that container is not
/// listed this cycle (its source failed and it is carried over) and the
/// process's cgroup still names it: it stays there rather than flapping to
/// the host for one scan. Its full id, from the process's cgroup.
fn attributed_before(
    facts: &ProcessFacts,
    previous: &Inventory,
    listed: &BTreeSet<String>,
) -> Option<String> {
    let id = facts.container_id.as_ref()?;
    let key = short_id(id);
    if listed.contains(&key) {
        return None;
    }
    let entry = previous.containers.get(&key)?;
    entry
        .gpu_processes
        .iter()
        .any(|p| p.pid == facts.pid && p.start_time == Some(facts.start_time))
        .then(|| id.clone())
}

/// An earlier sighting of the same process (same PID, same start time).
struct SeenBefore {
    /// It was confirmed (reported) in the previous inventory.
    confirmed: bool,
    /// When it was first seen and in how many consecutive scans, when it was.
    entry: Option<(Timestamp, u32)>,
}

impl SeenBefore {
    fn of(entry: Option<&ProcessEntry>, confirmed: bool) -> SeenBefore {
        SeenBefore {
            confirmed,
            entry: entry.map(|e| (e.detected_at, e.seen_scans)),
        }
    }

    /// A host process: in `host_processes`, else in `_pending_processes`.
    fn on_host(facts: &ProcessFacts, previous: &Inventory) -> SeenBefore {
        let same = |e: &&ProcessEntry| e.is_process(facts.pid, Some(facts.start_time));
        let confirmed = previous.host_processes.get(&facts.pid).filter(same);
        let pending = previous.pending_processes.get(&facts.pid).filter(same);
        SeenBefore::of(confirmed.or(pending), confirmed.is_some())
    }

    /// A process in a container: attributed to a container, unattributed,
    /// else in `_pending_container_processes`.
    fn in_container(facts: &ProcessFacts, previous: &Inventory) -> SeenBefore {
        let same = |e: &&ProcessEntry| e.is_process(facts.pid, Some(facts.start_time));
        let attributed = previous
            .containers
            .values()
            .flat_map(|c| &c.gpu_processes)
            .any(|p| p.pid == facts.pid && p.start_time.is_none_or(|t| t == facts.start_time));
        if attributed {
            // Attributed entries keep no first sighting nor count: confirmed is enough.
            return SeenBefore {
                confirmed: true,
                entry: None,
            };
        }
        let unattributed = previous.unattributed_processes.get(&facts.pid).filter(same);
        let pending = previous
            .pending_container_processes
            .get(&facts.pid)
            .filter(same);
        SeenBefore::of(unattributed.or(pending), unattributed.is_some())
    }
}

/// The containers created and removed since the previous scan, as drafts
/// the stages classify and attribute like any listed container (from the
/// labels, name and image of the engine's events; state `removed`).
pub fn short_lived(observed: &Observations, previous: &Inventory, now: Timestamp) -> Workset {
    let containers = observed
        .short_lived
        .iter()
        .map(|c| {
            container_draft(
                ContainerFacts {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    labels: c.labels.clone(),
                    state: "removed".to_string(),
                    image: c.image.clone(),
                    created_at: Some(c.created_at),
                    health: None,
                    inspect: None,
                    owner: None,
                    collector: String::new(),
                },
                previous,
                now,
            )
        })
        .collect();
    Workset {
        containers,
        ..Workset::default()
    }
}

/// The short-lived containers the stages kept (by id), each with the
/// origin, user and (possibly redacted) name and image they gave it.
pub fn classified_short_lived(
    seen: &[ShortLivedContainer],
    staged: Workset,
) -> Vec<ShortLivedContainer> {
    let mut by_id: BTreeMap<String, ContainerEntry> = staged
        .containers
        .into_iter()
        .map(|d| (d.facts.id.clone(), d.entry))
        .collect();
    seen.iter()
        .filter_map(|c| {
            let entry = by_id.remove(&c.id)?;
            Some(ShortLivedContainer {
                name: entry.name,
                image: entry.image,
                origin: entry.origin,
                user: entry.user,
                ..c.clone()
            })
        })
        .collect()
}

fn container_draft(facts: ContainerFacts, previous: &Inventory, now: Timestamp) -> ContainerDraft {
    let id = facts.key();
    let before = previous.containers.get(&id).map(|e| e.detected_at);
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
            // Moved in from the facts when the inventory is assembled
            // (with `labels`, `created_at` and `health`).
            collector: String::new(),
            inspect: None,
            ..ContainerEntry::default()
        },
        facts,
    }
}

/// The draft of one GPU process seen on `gpus` (one per GPU or MIG
/// device it uses), with what an earlier sighting of the same process
/// carries over: `detected_at` and the count of consecutive scans.
fn process_draft(
    facts: &ProcessFacts,
    gpus: &[&GpuProcess],
    seen: SeenBefore,
    now: Timestamp,
) -> ProcessDraft {
    let (detected_at, seen_scans) = seen.entry.map_or((None, 0), |(d, n)| (Some(d), n));
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
        detected_at: first_seen(detected_at, now),
        gpu_uuids: if uuids.len() > 1 { uuids } else { Vec::new() },
        mig_uuid: first.mig_uuid.clone(),
        gpu_instance_id: first.gpu_instance_id,
        compute_instance_id: first.compute_instance_id,
        // Known only when known on each GPU it uses: a process computing on
        // a MIG device (no samples) is not idle for being at 0 % elsewhere.
        sm_util: gpus
            .iter()
            .map(|g| g.sm_util)
            .collect::<Option<Vec<u32>>>()
            .and_then(|known| known.into_iter().max()),
        start_time: Some(facts.start_time),
        seen_scans: seen_scans.saturating_add(1),
        cgroup: facts.cgroup_path().map(str::to_string),
        read_error: facts.read_error.clone(),
        activity: None,
        usage: Default::default(),
    };
    ProcessDraft {
        facts: facts.clone(),
        entry,
        confirmed_before: seen.confirmed,
        verdict: Verdict::Report,
    }
}
