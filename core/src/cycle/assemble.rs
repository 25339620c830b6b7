//! The new inventory: this cycle's entries, plus, for each source that
//! failed, the entries it owned in the previous inventory, unchanged.

use tracing::debug;

use detect_workloads_api::model::{ContainerEntry, GpuDevice, Inventory};
use detect_workloads_api::plugin::{Verdict, Workset};
use detect_workloads_api::timefmt::Timestamp;

use super::trust::Trust;

/// Assembles the inventory from the stages' work and the GPUs described
/// this cycle (without `last_scan` and `scan`, which the cycle fills in).
pub fn inventory(
    previous: &Inventory,
    work: Workset,
    gpus: &[GpuDevice],
    trust: &Trust,
    now: Timestamp,
) -> Inventory {
    // Moved, not copied: the facts end here. Collected, not inserted one
    // by one: the drafts come in id order, which a map built at once takes
    // without moving its (large) entries around.
    let containers = work.containers.into_iter().map(|draft| {
        let entry = ContainerEntry {
            collector: draft.facts.collector,
            inspect: draft.facts.inspect,
            labels: draft.facts.labels,
            created_at: draft.facts.created_at,
            health: draft.facts.health,
            ..draft.entry
        };
        (entry.id.clone(), entry)
    });
    let mut inventory = Inventory {
        gpus: gpus.iter().map(|g| (g.uuid.clone(), g.clone())).collect(),
        containers: containers.collect(),
        ..Inventory::default()
    };
    carry_over_containers(previous, trust, &mut inventory);
    let orphans = super::attribute::attribute(
        &mut inventory,
        previous,
        work.container_processes,
        trust.gpu_view_complete,
    );
    if trust.gpu_view_complete {
        for draft in work.processes.into_iter().chain(orphans) {
            let pid = draft.entry.pid;
            match draft.verdict {
                Verdict::Report => {
                    // Kept for readers of `unattributed_processes`: a process
                    // whose cgroup claims a container no engine runs it in.
                    // It is a host process all the same (events, metrics, ps).
                    if draft.facts.in_container {
                        inventory
                            .unattributed_processes
                            .insert(pid, draft.entry.clone());
                    }
                    inventory.host_processes.insert(pid, draft.entry);
                }
                Verdict::Pending => {
                    inventory.pending_processes.insert(pid, draft.entry);
                }
                Verdict::Drop(reason) => debug!(pid, "not reported: {reason}"),
            }
        }
        super::sliced::track(&mut inventory, previous, now);
    } else {
        inventory.host_processes = previous.host_processes.clone();
        inventory.pending_processes = previous.pending_processes.clone();
        inventory.user_gpu_use = previous.user_gpu_use.clone();
        inventory.pending_user_gpu_use = previous.pending_user_gpu_use.clone();
    }
    inventory
}

/// Keeps the previous entries of every container source that failed.
fn carry_over_containers(previous: &Inventory, trust: &Trust, inventory: &mut Inventory) {
    if trust.failed_container_sources.is_empty() {
        return;
    }
    for (id, entry) in &previous.containers {
        // Entries from before the source was recorded belong to the first one.
        let source = if entry.collector.is_empty() {
            &trust.first_container_source
        } else {
            &entry.collector
        };
        if trust.failed_container_sources.contains(source) {
            inventory
                .containers
                .entry(id.clone())
                .or_insert_with(|| entry.clone());
        }
    }
}
