//! GPU processes inside containers, attributed to their containers' entries
//! once the stages have judged them (redacted, confirmed by the transient
//! filter): `gpu_processes`, `gpu_memory_mb` (their sum), `gpu_uuids`
//! (distinct), `gpu_in_use`, and `gpu_mismatch` when the use does not match
//! what the container was granted. A confirmed process whose container is
//! not in the inventory (gone meanwhile) is handed back, to be reported as
//! a host process: never dropped.
//!
//! This runs on the assembled inventory (not in a stage) because it needs the
//! final set of containers, those carried over from a failed source included,
//! and because failure is not absence: when the GPU view is incomplete, every
//! container keeps the GPU fields it had, as host processes are kept.

use std::collections::{BTreeMap, BTreeSet};

use tracing::debug;

use detect_workloads_api::model::{
    short_id, ContainerEntry, ContainerGpuProcess, GpuDevice, GpuMismatch, Inventory,
};
use detect_workloads_api::plugin::{ContainerProcessDraft, ProcessDraft, Verdict};

/// Fills the containers' GPU fields and `_pending_container_processes` of
/// `inventory` from this cycle's drafts, or, when the GPU view is
/// incomplete, from `previous`. Returns the confirmed processes whose
/// container is not in the inventory.
pub fn attribute(
    inventory: &mut Inventory,
    previous: &Inventory,
    drafts: Vec<ContainerProcessDraft>,
    gpu_view_complete: bool,
) -> Vec<ProcessDraft> {
    if !gpu_view_complete {
        carry_over(inventory, previous);
        return Vec::new();
    }
    for entry in inventory.containers.values_mut() {
        clear(entry);
    }
    let orphans = drafts
        .into_iter()
        .filter_map(|draft| place(inventory, draft))
        .collect();
    let index = gpu_index(&inventory.gpus);
    for entry in inventory.containers.values_mut() {
        summarise(entry, &index);
    }
    orphans
}

/// The GPU fields of each container, and the process maps, as they were.
fn carry_over(inventory: &mut Inventory, previous: &Inventory) {
    for (id, entry) in inventory.containers.iter_mut() {
        match previous.containers.get(id) {
            Some(before) => {
                entry.gpu_processes.clone_from(&before.gpu_processes);
                entry.gpu_memory_mb = before.gpu_memory_mb;
                entry.gpu_uuids.clone_from(&before.gpu_uuids);
                entry.gpu_in_use = before.gpu_in_use;
                entry.gpu_mismatch = before.gpu_mismatch;
            }
            None => clear(entry),
        }
    }
    inventory
        .unattributed_processes
        .clone_from(&previous.unattributed_processes);
    inventory
        .pending_container_processes
        .clone_from(&previous.pending_container_processes);
}

fn clear(entry: &mut ContainerEntry) {
    entry.gpu_processes.clear();
    entry.gpu_memory_mb = None;
    entry.gpu_uuids.clear();
    entry.gpu_in_use = false;
    entry.gpu_mismatch = None;
}

/// Puts one judged process where its verdict and its container say; hands
/// it back when its container is not in the inventory.
fn place(inventory: &mut Inventory, draft: ContainerProcessDraft) -> Option<ProcessDraft> {
    let p = draft.process;
    let pid = p.entry.pid;
    match p.verdict {
        Verdict::Pending => {
            inventory.pending_container_processes.insert(pid, p.entry);
        }
        Verdict::Drop(reason) => debug!(pid, "not reported: {reason}"),
        Verdict::Report => {
            let key = p.facts.container_id.as_deref().map(short_id);
            match key.and_then(|k| inventory.containers.get_mut(&k)) {
                Some(container) => {
                    container.gpu_processes.extend(draft.gpus.iter().map(|g| {
                        ContainerGpuProcess {
                            pid,
                            user: p.entry.user.clone(),
                            cmdline: p.entry.cmdline.clone(),
                            gpu_uuid: g.gpu_uuid.clone(),
                            mig_uuid: g.mig_uuid.clone(),
                            gpu_memory_mb: g.used_memory_mib,
                            sm_util: g.sm_util,
                            start_time: p.entry.start_time,
                        }
                    }));
                }
                None => {
                    debug!(pid, container = ?p.facts.container_id, "GPU process of a container no longer in the inventory: reported as a host process");
                    return Some(p);
                }
            }
        }
    }
    None
}

/// GPU index (as `nvidia-smi` numbers them) -> UUID, from NVML's description.
fn gpu_index(gpus: &BTreeMap<String, GpuDevice>) -> BTreeMap<u32, String> {
    gpus.values().map(|g| (g.index, g.uuid.clone())).collect()
}

/// The sums and the mismatch of one container, from its `gpu_processes`.
fn summarise(entry: &mut ContainerEntry, index: &BTreeMap<u32, String>) {
    entry
        .gpu_processes
        .sort_by(|a, b| (a.pid, &a.gpu_uuid, &a.mig_uuid).cmp(&(b.pid, &b.gpu_uuid, &b.mig_uuid)));
    let known: Vec<u64> = entry
        .gpu_processes
        .iter()
        .filter_map(|p| p.gpu_memory_mb)
        .collect();
    entry.gpu_memory_mb = (!known.is_empty()).then(|| known.iter().sum());
    let uuids: BTreeSet<&String> = entry.gpu_processes.iter().map(|p| &p.gpu_uuid).collect();
    entry.gpu_uuids = uuids.into_iter().cloned().collect();
    entry.gpu_in_use = !entry.gpu_processes.is_empty();
    entry.gpu_mismatch = mismatch(entry, index);
}

/// How the container's GPU use differs from its grant: any use without
/// access configured; a GPU outside `gpu_devices` when every device there
/// can be read as a UUID or mapped to one (an index, or a slot `N:M` on GPU
/// `N`, through NVML's index). A grant it cannot read is not judged.
pub fn mismatch(entry: &ContainerEntry, index: &BTreeMap<u32, String>) -> Option<GpuMismatch> {
    if !entry.gpu_in_use {
        return None;
    }
    if !entry.has_gpu {
        return Some(GpuMismatch::NotGranted);
    }
    if entry.gpu_devices.is_empty() {
        return None;
    }
    let granted: Option<BTreeSet<String>> = entry
        .gpu_devices
        .iter()
        .map(|d| granted_uuid(d, index))
        .collect();
    let granted = granted?;
    let outside = entry.gpu_processes.iter().any(|p| {
        !granted.contains(&p.gpu_uuid) && !p.mig_uuid.as_ref().is_some_and(|m| granted.contains(m))
    });
    outside.then_some(GpuMismatch::OutsideAllocation)
}

/// The UUID one `gpu_devices` value names: itself (`GPU-…`, `MIG-…`), or the
/// GPU of an index or slot `N:M`.
fn granted_uuid(device: &str, index: &BTreeMap<u32, String>) -> Option<String> {
    let device = device.trim();
    if device.starts_with("GPU-") || device.starts_with("MIG-") {
        return Some(device.to_string());
    }
    let gpu = device.split(':').next()?.trim().parse::<u32>().ok()?;
    index.get(&gpu).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use detect_workloads_api::model::{GpuProcess, ProcessEntry, ProcessFacts};
    use detect_workloads_api::plugin::ProcessDraft;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn draft(
        pid: u32,
        container: &str,
        verdict: Verdict,
        gpus: &[(&str, u64)],
    ) -> ContainerProcessDraft {
        ContainerProcessDraft {
            process: ProcessDraft {
                facts: ProcessFacts {
                    pid,
                    in_container: true,
                    container_id: Some(container.to_string()),
                    ..Default::default()
                },
                entry: ProcessEntry {
                    pid,
                    user: "alice".into(),
                    cmdline: "python3 train.py".into(),
                    start_time: Some(5),
                    ..Default::default()
                },
                confirmed_before: false,
                verdict,
            },
            gpus: gpus
                .iter()
                .map(|(uuid, mib)| GpuProcess {
                    pid,
                    gpu_uuid: uuid.to_string(),
                    used_memory_mib: Some(*mib),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn inventory_with(has_gpu: bool, devices: &[&str]) -> Inventory {
        let mut inv = Inventory::default();
        inv.containers.insert(
            short_id(ID),
            ContainerEntry {
                id: short_id(ID),
                has_gpu,
                gpu_devices: devices.iter().map(|d| d.to_string()).collect(),
                ..Default::default()
            },
        );
        for (i, uuid) in ["GPU-a", "GPU-b"].into_iter().enumerate() {
            inv.gpus.insert(
                uuid.into(),
                GpuDevice {
                    uuid: uuid.into(),
                    index: i as u32,
                    ..Default::default()
                },
            );
        }
        inv
    }

    #[test]
    fn attributed_summed_pending_and_unattributed() {
        let mut inv = inventory_with(true, &[]);
        let unknown = "f".repeat(64);
        let drafts = vec![
            draft(10, ID, Verdict::Report, &[("GPU-a", 100), ("GPU-b", 5)]),
            draft(11, ID, Verdict::Report, &[("GPU-a", 20)]),
            draft(12, ID, Verdict::Pending, &[("GPU-b", 1)]),
            draft(13, &unknown, Verdict::Report, &[("GPU-b", 7)]),
        ];
        let orphans = attribute(&mut inv, &Inventory::default(), drafts, true);
        let c = &inv.containers[&short_id(ID)];
        let pids: Vec<u32> = c.gpu_processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [10, 10, 11]);
        assert_eq!(c.gpu_memory_mb, Some(125));
        assert_eq!(c.gpu_uuids, ["GPU-a", "GPU-b"]);
        assert!(c.gpu_in_use);
        assert_eq!(c.gpu_mismatch, None);
        assert_eq!(c.gpu_processes[0].user, "alice");
        assert_eq!(c.gpu_processes[0].start_time, Some(5));
        assert_eq!(
            inv.pending_container_processes.keys().collect::<Vec<_>>(),
            [&12]
        );
        let orphans: Vec<u32> = orphans.iter().map(|p| p.entry.pid).collect();
        assert_eq!(orphans, [13], "handed back, to be reported on the host");
    }

    #[test]
    fn an_incomplete_gpu_view_keeps_what_was_known() {
        let mut previous = inventory_with(true, &[]);
        attribute(
            &mut previous,
            &Inventory::default(),
            vec![
                draft(10, ID, Verdict::Report, &[("GPU-a", 100)]),
                draft(13, &"f".repeat(64), Verdict::Report, &[("GPU-b", 7)]),
            ],
            true,
        );
        let mut inv = inventory_with(true, &[]);
        attribute(&mut inv, &previous, vec![], false);
        assert_eq!(inv.containers, previous.containers);
        assert_eq!(inv.unattributed_processes, previous.unattributed_processes);
        // Complete and empty: the use is gone.
        let mut inv = inventory_with(true, &[]);
        attribute(&mut inv, &previous, vec![], true);
        let c = &inv.containers[&short_id(ID)];
        assert!(!c.gpu_in_use && c.gpu_processes.is_empty() && c.gpu_memory_mb.is_none());
        assert!(inv.unattributed_processes.is_empty());
    }

    #[test]
    fn mismatches() {
        let judge = |has_gpu: bool, devices: &[&str], uses: &str| {
            let mut inv = inventory_with(has_gpu, devices);
            attribute(
                &mut inv,
                &Inventory::default(),
                vec![draft(10, ID, Verdict::Report, &[(uses, 1)])],
                true,
            );
            inv.containers[&short_id(ID)].gpu_mismatch
        };
        assert_eq!(judge(false, &[], "GPU-a"), Some(GpuMismatch::NotGranted));
        assert_eq!(judge(true, &[], "GPU-a"), None, "all GPUs granted");
        assert_eq!(judge(true, &["GPU-a"], "GPU-a"), None);
        assert_eq!(
            judge(true, &["GPU-a"], "GPU-b"),
            Some(GpuMismatch::OutsideAllocation)
        );
        assert_eq!(judge(true, &["0"], "GPU-a"), None, "index 0 is GPU-a");
        assert_eq!(
            judge(true, &["1:0"], "GPU-a"),
            Some(GpuMismatch::OutsideAllocation)
        );
        assert_eq!(judge(true, &["1:0", "0:2"], "GPU-a"), None);
        assert_eq!(
            judge(true, &["7"], "GPU-b"),
            None,
            "an index NVML does not know is not judged"
        );
        assert_eq!(judge(true, &["x"], "GPU-b"), None);
        // Not in use: nothing to judge.
        let mut inv = inventory_with(false, &[]);
        attribute(&mut inv, &Inventory::default(), vec![], true);
        assert_eq!(inv.containers[&short_id(ID)].gpu_mismatch, None);
    }
}
