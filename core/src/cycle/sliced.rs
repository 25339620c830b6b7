//! Continuous GPU use by short-lived processes (a job sliced into PIDs that
//! each live shorter than a scan, so that none is ever confirmed by the
//! transient filter). Worked out on the assembled inventory, from its
//! pending host processes and the previous inventory:
//!
//! - The pending host processes of one user on one GPU (holding memory, or
//!   memory unknown) are that user's *unconfirmed use* of that GPU.
//! - Such use is **confirmed** (`user_gpu_use`) when the previous scan saw
//!   it too and at least one process that carried it then is gone without
//!   having been confirmed (it vanished: the slicing), or when it was
//!   confirmed already. Otherwise it waits in `_pending_user_gpu_use`.
//! - It ends when the user has no pending process on that GPU left.
//!
//! So a single process seen once makes nothing; an ordinary job (pending,
//! then confirmed as a host process) makes nothing either, since its
//! process did not vanish; and a chain of processes that hold memory in two
//! consecutive scans is one use, told once when it starts and once when it
//! ends (see `diff`). A process that lives entirely between two scans is
//! never seen by the GPU source, and so not here either.

use std::collections::{BTreeMap, BTreeSet};

use detect_workloads_api::model::{Inventory, UserGpuUse};
use detect_workloads_api::timefmt::Timestamp;

use super::workset::first_seen;

/// Fills `user_gpu_use` and `_pending_user_gpu_use` of `inventory` (whose
/// host processes are placed) from its pending processes and `previous`.
pub fn track(inventory: &mut Inventory, previous: &Inventory, now: Timestamp) {
    let mut now_held: BTreeMap<(String, String), (Option<u64>, Vec<u32>)> = BTreeMap::new();
    for p in inventory.pending_processes.values() {
        if p.gpu_memory_mb == Some(0) {
            continue;
        }
        let uuids = if p.gpu_uuids.is_empty() {
            std::slice::from_ref(&p.gpu_uuid)
        } else {
            &p.gpu_uuids[..]
        };
        for uuid in uuids {
            let (memory, pids) = now_held
                .entry((p.user.clone(), uuid.clone()))
                .or_insert((None, Vec::new()));
            // Per-GPU memory is not split in the entry: the sum is the
            // process's total, counted on its first GPU only.
            if uuid == &p.gpu_uuid {
                if let Some(mib) = p.gpu_memory_mb {
                    *memory = Some(memory.unwrap_or(0) + mib);
                }
            }
            pids.push(p.pid);
        }
    }
    let running: BTreeSet<u32> = inventory
        .host_processes
        .keys()
        .chain(inventory.pending_processes.keys())
        .copied()
        .collect();
    let find = |list: &[UserGpuUse], user: &str, uuid: &str| {
        list.iter()
            .find(|u| u.user == user && u.gpu_uuid == uuid)
            .cloned()
    };
    let (mut confirmed, mut pending) = (Vec::new(), Vec::new());
    for ((user, uuid), (memory, pids)) in now_held {
        let was_confirmed = find(&previous.user_gpu_use, &user, &uuid);
        let was_pending = find(&previous.pending_user_gpu_use, &user, &uuid);
        let before = was_confirmed.clone().or(was_pending.clone());
        let new_pids = match &before {
            Some(b) => pids.iter().filter(|p| !b.pids.contains(p)).count(),
            None => pids.len(),
        };
        let sliced = was_pending.is_some_and(|b| b.pids.iter().any(|p| !running.contains(p)));
        let entry = UserGpuUse {
            detected_at: first_seen(before.as_ref().map(|b| b.detected_at), now),
            seen_scans: before
                .as_ref()
                .map_or(0, |b| b.seen_scans)
                .saturating_add(1),
            processes_seen: before.as_ref().map_or(0, |b| b.processes_seen) + new_pids as u64,
            user,
            gpu_uuid: uuid,
            gpu_memory_mb: memory,
            pids,
        };
        if was_confirmed.is_some() || sliced {
            confirmed.push(entry);
        } else {
            pending.push(entry);
        }
    }
    inventory.user_gpu_use = confirmed;
    inventory.pending_user_gpu_use = pending;
}

#[cfg(test)]
mod tests {
    use super::*;
    use detect_workloads_api::model::ProcessEntry;

    fn pending(inv: &mut Inventory, pid: u32, user: &str, mib: u64) {
        inv.pending_processes.insert(
            pid,
            ProcessEntry {
                pid,
                user: user.into(),
                gpu_memory_mb: Some(mib),
                gpu_uuid: "GPU-a".into(),
                ..Default::default()
            },
        );
    }

    /// One scan: the pending processes (pid, user, MiB), the confirmed pids.
    type Scan<'a> = (&'a [(u32, &'a str, u64)], &'a [u32]);

    /// Runs `scans` through [`track`]; the confirmed use after each.
    fn run(scans: &[Scan<'_>]) -> Vec<Vec<UserGpuUse>> {
        let mut previous = Inventory::default();
        let mut out = Vec::new();
        for (i, (pendings, confirmed)) in scans.iter().enumerate() {
            let mut inv = Inventory::default();
            for (pid, user, mib) in *pendings {
                pending(&mut inv, *pid, user, *mib);
            }
            for pid in *confirmed {
                inv.host_processes.insert(*pid, ProcessEntry::default());
            }
            track(&mut inv, &previous, Timestamp::from_unix_seconds(i as i64));
            out.push(inv.user_gpu_use.clone());
            previous = inv;
        }
        out
    }

    #[test]
    fn a_chain_of_short_processes_is_one_use() {
        let uses = run(&[
            (&[(1, "eve", 4096)], &[]),
            (&[(2, "eve", 4096)], &[]),
            (&[(3, "eve", 2048), (4, "eve", 2048)], &[]),
            (&[], &[]),
        ]);
        assert!(uses[0].is_empty(), "seen once");
        assert_eq!(uses[1].len(), 1);
        assert_eq!(
            (
                uses[1][0].user.as_str(),
                uses[1][0].gpu_memory_mb,
                uses[1][0].detected_at
            ),
            ("eve", Some(4096), Timestamp::from_unix_seconds(0))
        );
        assert_eq!(
            (uses[2][0].processes_seen, uses[2][0].pids.clone()),
            (4, vec![3, 4])
        );
        assert!(uses[3].is_empty(), "ended");
    }

    #[test]
    fn ordinary_jobs_and_single_sightings_make_nothing() {
        // One process seen once.
        assert!(run(&[(&[(1, "eve", 10)], &[]), (&[], &[])])
            .iter()
            .all(Vec::is_empty));
        // A job confirmed in its second scan, another starting meanwhile.
        let uses = run(&[
            (&[(1, "ann", 10)], &[]),
            (&[(2, "ann", 10)], &[1]),
            (&[], &[1, 2]),
        ]);
        assert!(uses.iter().all(Vec::is_empty), "{uses:?}");
        // Two users do not make one chain.
        let uses = run(&[(&[(1, "ann", 10)], &[]), (&[(2, "bob", 10)], &[])]);
        assert!(uses.iter().all(Vec::is_empty), "{uses:?}");
    }
}
