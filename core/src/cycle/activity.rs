//! Activity (after [`super::assemble`]): what each running workload did
//! since its previous reading, from the counters the collectors read
//! (`ProcessFacts::counters`) and those of the previous reading, kept in the
//! state (`_activity_counters`), so that oneshot runs 30 s apart rate the
//! 30 s between them.
//!
//! - `cpu_cores`: CPU nanoseconds over wall nanoseconds, between two
//!   readings of the same counter (a container's cgroup, a process with the
//!   same start time); a counter that went back (a restart) gives no rate.
//! - `net_bytes_per_s`: containers in a network namespace of their own;
//!   `None` for host networking.
//! - `gpu_util_percent`: the highest per-process sample of its GPU
//!   processes when each is known, else its GPUs' device utilisation when it
//!   is alone on them; otherwise `None` (the `idle` stage may still decide
//!   from a shared GPU's utilisation).
//! - usage: GPUs held x the seconds sampled, added up.
//!
//! Unknown stays `None`, never 0. What the `idle` stage decided before
//! (`idle_since`, `idle`) is carried for it to judge again.

use std::collections::BTreeMap;

use detect_workloads_api::model::{
    Activity, ContainerEntry, Counters, GpuDevice, Inventory, ProcessFacts, Usage,
};

/// The key of a container's counters.
fn container_key(id: &str) -> String {
    format!("container:{id}")
}

/// The key of a host process's counters.
fn process_key(pid: u32) -> String {
    format!("process:{pid}")
}

/// The rates between two readings: `(cpu_cores, net_bytes_per_s,
/// sampled_s)`.
fn rates(
    before: Option<&Counters>,
    now: Option<&Counters>,
) -> (Option<f64>, Option<f64>, Option<f64>) {
    let (Some(before), Some(now)) = (before, now) else {
        return (None, None, None);
    };
    let Some(elapsed_ns) = now.at_ns.checked_sub(before.at_ns).filter(|ns| *ns > 0) else {
        return (None, None, None);
    };
    let elapsed = elapsed_ns as f64;
    let cpu = match (before.cpu_ns, now.cpu_ns) {
        (Some(a), Some(b)) if before.cpu_of == now.cpu_of && b >= a => {
            Some((b - a) as f64 / elapsed)
        }
        _ => None,
    };
    let net = match (before.net_bytes, now.net_bytes) {
        (Some(a), Some(b)) if before.net_ns == now.net_ns && b >= a && !now.host_network => {
            Some((b - a) as f64 * 1e9 / elapsed)
        }
        _ => None,
    };
    (cpu, net, Some(elapsed / 1e9))
}

/// How many workloads hold memory on each GPU.
fn holders(inventory: &Inventory) -> BTreeMap<String, usize> {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for c in inventory.containers.values() {
        for uuid in &c.gpu_uuids {
            *count.entry(uuid.clone()).or_default() += 1;
        }
    }
    for p in inventory
        .host_processes
        .values()
        .chain(inventory.unattributed_processes.values())
    {
        for uuid in p.gpus() {
            *count.entry(uuid.to_string()).or_default() += 1;
        }
    }
    count
}

/// The device utilisation of `gpus` when the workload is alone on each of
/// them and each is known: the highest.
fn alone_device_util(
    gpus: &[&str],
    holders: &BTreeMap<String, usize>,
    devices: &BTreeMap<String, GpuDevice>,
) -> Option<f64> {
    let mut highest: Option<f64> = None;
    for uuid in gpus {
        if holders.get(*uuid).copied().unwrap_or(0) != 1 {
            return None;
        }
        let util = f64::from(devices.get(*uuid)?.utilization_pct?);
        highest = Some(highest.map_or(util, |h: f64| h.max(util)));
    }
    highest
}

/// One workload's new activity, from its readings and what was decided
/// before; `held` is the number of GPUs on which it holds memory.
fn next(
    before: Option<&Counters>,
    now: Option<&Counters>,
    previous: Option<&Activity>,
    gpu_util_percent: Option<f64>,
) -> Activity {
    let (cpu_cores, net_bytes_per_s, sampled_s) = rates(before, now);
    Activity {
        cpu_cores,
        net_bytes_per_s,
        gpu_util_percent,
        sampled_s,
        idle_since: previous.and_then(|a| a.idle_since),
        idle: previous.is_some_and(|a| a.idle),
    }
}

/// `usage` carried from the previous entry, with this interval's GPU time held.
fn held(previous: Option<&Usage>, gpus: usize, sampled_s: Option<f64>) -> Usage {
    let mut usage = previous.cloned().unwrap_or_default();
    if let Some(s) = sampled_s {
        usage.gpu_seconds_held += gpus as f64 * s;
    }
    usage
}

/// The highest per-process sample of a container's GPU processes, when
/// every one is known.
fn container_samples(entry: &ContainerEntry) -> Option<f64> {
    let mut highest: Option<f64> = None;
    for p in &entry.gpu_processes {
        let util = f64::from(p.sm_util?);
        highest = Some(highest.map_or(util, |h: f64| h.max(util)));
    }
    highest
}

/// Sets `activity` and `usage` on every running workload of `inventory`, and
/// the counters the next reading rates against.
pub fn measure(
    previous: &Inventory,
    inventory: &mut Inventory,
    processes: &BTreeMap<u32, ProcessFacts>,
) {
    let holders = holders(inventory);
    let mut counters: BTreeMap<String, Counters> = BTreeMap::new();
    let mut containers = std::mem::take(&mut inventory.containers);
    for (id, entry) in containers.iter_mut() {
        if entry.status != "running" {
            entry.activity = None;
            continue;
        }
        let key = container_key(id);
        let now = entry
            .inspect
            .as_ref()
            .and_then(|i| processes.get(&i.main_pid))
            .and_then(|f| f.counters.as_ref());
        let before = previous.activity_counters.get(&key);
        let gpu = if entry.gpu_processes.is_empty() {
            None
        } else {
            let gpus: Vec<&str> = entry.gpu_uuids.iter().map(String::as_str).collect();
            container_samples(entry).or_else(|| alone_device_util(&gpus, &holders, &inventory.gpus))
        };
        let old = previous.containers.get(id);
        let activity = next(before, now, old.and_then(|o| o.activity.as_ref()), gpu);
        entry.usage = held(
            old.map(|o| &o.usage),
            entry.gpu_uuids.len(),
            activity.sampled_s,
        );
        entry.activity = Some(activity);
        if let Some(c) = now.or(before) {
            counters.insert(key, c.clone());
        }
    }
    inventory.containers = containers;
    let mut hosts = std::mem::take(&mut inventory.host_processes);
    for (pid, entry) in hosts.iter_mut() {
        let key = process_key(*pid);
        let now = processes.get(pid).and_then(|f| f.counters.as_ref());
        let before = previous.activity_counters.get(&key);
        let gpus = entry.gpus();
        let gpu = entry
            .sm_util
            .map(f64::from)
            .or_else(|| alone_device_util(&gpus, &holders, &inventory.gpus));
        let old = previous
            .host_processes
            .get(pid)
            .filter(|o| o.is_process(*pid, entry.start_time));
        let activity = next(before, now, old.and_then(|o| o.activity.as_ref()), gpu);
        entry.usage = held(old.map(|o| &o.usage), gpus.len(), activity.sampled_s);
        entry.activity = Some(activity);
        if let Some(c) = now.or(before) {
            counters.insert(key, c.clone());
        }
    }
    inventory.host_processes = hosts;
    inventory.activity_counters = counters;
}

#[cfg(test)]
mod tests {
    use super::*;
    use detect_workloads_api::model::{ContainerGpuProcess, InspectFacts};

    fn counters(at_s: u64, cpu_s: f64, net: Option<u64>) -> Counters {
        Counters {
            at_ns: at_s * 1_000_000_000,
            cpu_ns: Some((cpu_s * 1e9) as u64),
            cpu_of: "cgroup:/docker/abc".into(),
            net_bytes: net,
            net_ns: net.map(|_| 7),
            host_network: false,
        }
    }

    #[test]
    fn rates_need_two_readings_of_the_same_counter() {
        let a = counters(100, 1.0, Some(1000));
        let b = counters(130, 16.0, Some(31_000));
        assert_eq!(rates(None, Some(&b)), (None, None, None));
        let (cpu, net, s) = rates(Some(&a), Some(&b));
        assert_eq!((cpu, net, s), (Some(0.5), Some(1000.0), Some(30.0)));
        let restarted = Counters {
            cpu_of: "cgroup:/docker/def".into(),
            ..b.clone()
        };
        assert_eq!(rates(Some(&a), Some(&restarted)).0, None);
        let back = counters(130, 0.5, Some(10));
        assert_eq!(rates(Some(&a), Some(&back)).0, None, "counter went back");
        assert_eq!(rates(Some(&a), Some(&back)).1, None);
        let host = Counters {
            host_network: true,
            net_bytes: None,
            ..b.clone()
        };
        assert_eq!(rates(Some(&a), Some(&host)).1, None);
        assert_eq!(
            rates(Some(&b), Some(&a)),
            (None, None, None),
            "time went back"
        );
    }

    fn running(main_pid: u32, gpus: &[(&str, Option<u32>)]) -> ContainerEntry {
        ContainerEntry {
            status: "running".into(),
            inspect: Some(InspectFacts {
                main_pid,
                ..Default::default()
            }),
            gpu_processes: gpus
                .iter()
                .map(|(uuid, util)| ContainerGpuProcess {
                    gpu_uuid: uuid.to_string(),
                    sm_util: *util,
                    ..Default::default()
                })
                .collect(),
            gpu_uuids: gpus.iter().map(|(u, _)| u.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn activity_is_measured_across_scans_and_usage_adds_up() {
        let facts = |c: Counters| ProcessFacts {
            counters: Some(c),
            ..Default::default()
        };
        let mut first = Inventory::default();
        first
            .containers
            .insert("a".into(), running(10, &[("GPU-1", Some(40))]));
        first
            .containers
            .insert("b".into(), running(11, &[("GPU-2", None)]));
        first
            .containers
            .insert("c".into(), running(12, &[("GPU-3", None)]));
        first
            .containers
            .insert("d".into(), running(13, &[("GPU-3", None)]));
        for (uuid, util) in [("GPU-2", 3), ("GPU-3", 1)] {
            first.gpus.insert(
                uuid.into(),
                GpuDevice {
                    uuid: uuid.into(),
                    utilization_pct: Some(util),
                    ..Default::default()
                },
            );
        }
        let mut second = first.clone();
        let procs = BTreeMap::from([(10, facts(counters(100, 1.0, Some(0))))]);
        measure(&Inventory::default(), &mut first, &procs);
        let a = first.containers["a"].activity.clone().expect("running");
        assert_eq!((a.cpu_cores, a.sampled_s), (None, None), "first reading");
        assert_eq!(a.gpu_util_percent, Some(40.0));
        assert!(first.containers["a"].usage.is_zero());
        assert_eq!(
            first.activity_counters.keys().collect::<Vec<_>>(),
            ["container:a"]
        );

        let procs = BTreeMap::from([(10, facts(counters(130, 4.0, Some(3000))))]);
        measure(&first, &mut second, &procs);
        let a = second.containers["a"].activity.clone().expect("running");
        assert_eq!(a.cpu_cores, Some(0.1));
        assert_eq!(a.net_bytes_per_s, Some(100.0));
        assert_eq!(a.sampled_s, Some(30.0));
        assert_eq!(second.containers["a"].usage.gpu_seconds_held, 30.0);
        // Alone on GPU-2 with no per-process sample: the device's figure.
        let b = second.containers["b"].activity.clone().expect("running");
        assert_eq!(b.gpu_util_percent, Some(3.0));
        // Two on GPU-3: unknown, not 0.
        let c = second.containers["c"].activity.clone().expect("running");
        assert_eq!(c.gpu_util_percent, None);
        assert_eq!(c.cpu_cores, None, "no counters read");
    }
}
