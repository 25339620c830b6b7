//! The cycle without Docker: fake collectors, stages, sinks and state drive
//! the scheduler, the trust rules, the workset and delivery.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::schedule::{run_collectors, Outcome, Ran};
use super::trust::{gpu_view_complete, Trust};
use super::*;
use crate::config::{AgentConfig, Instance};
use detect_workloads_api::model::{
    ContainerEntry, ContainerFacts, FactKind, GpuProcess, Observations, ProcessEntry, ProcessFacts,
};
use detect_workloads_api::plugin::{
    CollectContext, CollectError, Collected, Collector, HeadStart, LockGuard, Sink, Stage,
    StageError, StageType, StateError, StateStore, Workset,
};

type Log = Arc<Mutex<Vec<String>>>;

fn logged(log: &Log) -> Vec<String> {
    log.lock().map(|l| l.clone()).unwrap_or_default()
}

/// A collector that reports what it saw of its needs, then answers `answer`
/// (after `delay`).
struct Fake {
    name: &'static str,
    provides: &'static [FactKind],
    needs: &'static [FactKind],
    fallback_for: Option<&'static str>,
    delay: Duration,
    answer: Result<Observations, CollectError>,
    log: Log,
}

impl Fake {
    fn new(name: &'static str, provides: &'static [FactKind], log: &Log) -> Fake {
        Fake {
            name,
            provides,
            needs: &[],
            fallback_for: None,
            delay: Duration::ZERO,
            answer: Ok(Observations::default()),
            log: Arc::clone(log),
        }
    }

    fn failing(mut self) -> Fake {
        self.answer = Err(CollectError::Unavailable("no source".into()));
        self
    }

    fn with(mut self, observations: Observations) -> Fake {
        self.answer = Ok(observations);
        self
    }

    fn instance(self) -> Instance<dyn Collector> {
        Instance {
            name: self.name.to_string(),
            kind: self.name,
            plugin: Arc::new(self),
        }
    }
}

#[async_trait]
impl Collector for Fake {
    fn provides(&self) -> &'static [FactKind] {
        self.provides
    }
    fn needs(&self) -> &'static [FactKind] {
        self.needs
    }
    fn timeout(&self) -> Duration {
        Duration::from_millis(200)
    }
    fn fallback_for(&self) -> Option<&str> {
        self.fallback_for
    }
    async fn collect(&self, ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        let seen = ctx.observed.processes.keys().map(u32::to_string);
        let seen: Vec<String> = seen.collect();
        if let Ok(mut log) = self.log.lock() {
            log.push(format!("{} saw [{}]", self.name, seen.join(",")));
        }
        tokio::time::sleep(self.delay).await;
        self.answer.clone().map(|observations| Collected {
            observations,
            stats: BTreeMap::new(),
        })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn schedule(collectors: &[Instance<dyn Collector>]) -> (Vec<(String, Outcome)>, Observations) {
    let previous = Previous::known(Inventory::default());
    let users = UserNames::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let collection = runtime().block_on(run_collectors(collectors, &previous, &users, deadline));
    let outcomes = collection
        .ran
        .into_iter()
        .map(|r| (r.instance.name.clone(), r.outcome))
        .collect();
    (outcomes, collection.observed)
}

fn proc_facts(pid: u32, start_time: u64) -> ProcessFacts {
    ProcessFacts {
        pid,
        uid: 1000,
        user: "alice".into(),
        cmdline: "python3 train.py".into(),
        comm: "python3".into(),
        start_time,
        ..Default::default()
    }
}

fn procs(pids: &[u32]) -> Observations {
    Observations {
        processes: pids.iter().map(|&p| (p, proc_facts(p, 100))).collect(),
        ..Default::default()
    }
}

fn gpu(pids: &[u32]) -> Observations {
    let gpu_processes = pids
        .iter()
        .map(|&pid| GpuProcess {
            pid,
            used_memory_mib: Some(100),
            gpu_uuid: "GPU-1".into(),
            ..Default::default()
        })
        .collect();
    Observations {
        gpu_processes,
        ..Default::default()
    }
}

const PROCS: &[FactKind] = &[FactKind::Processes];
const GPUS: &[FactKind] = &[FactKind::GpuProcesses];
const CONTAINERS: &[FactKind] = &[FactKind::Containers];

fn kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Collected { .. } => "collected",
        Outcome::Failed { .. } => "failed",
        Outcome::SkippedAsFallback { .. } => "skipped",
    }
}

#[test]
fn a_collector_runs_after_those_providing_what_it_needs_and_sees_their_facts() {
    let log = Log::default();
    let mut reader = Fake::new("reader", GPUS, &log);
    reader.needs = PROCS;
    // The provider comes second in the file, and is slow: the reader waits.
    let mut provider = Fake::new("provider", PROCS, &log).with(procs(&[7, 8]));
    provider.delay = Duration::from_millis(20);
    let (outcomes, observed) = schedule(&[reader.instance(), provider.instance()]);
    assert_eq!(logged(&log), ["provider saw []", "reader saw [7,8]"]);
    let kinds: Vec<_> = outcomes
        .iter()
        .map(|(n, o)| (n.as_str(), kind(o)))
        .collect();
    assert_eq!(kinds, [("reader", "collected"), ("provider", "collected")]);
    assert_eq!(observed.processes.len(), 2);
}

/// A collector that needs the containers and reads ahead: its head start
/// logs, opens `gate` and prepares `prepared` (after `delay`); its collect
/// logs what it was handed.
struct ReadsAhead {
    needs: &'static [FactKind],
    delay: Duration,
    /// How long its collect takes.
    collect_delay: Duration,
    /// Its timeout.
    timeout: Duration,
    prepared: u32,
    gate: Arc<tokio::sync::Notify>,
    log: Log,
}

#[async_trait]
impl Collector for ReadsAhead {
    fn provides(&self) -> &'static [FactKind] {
        &[FactKind::Processes]
    }
    fn needs(&self) -> &'static [FactKind] {
        self.needs
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    async fn head_start(&self, _ctx: &CollectContext<'_>) -> Option<HeadStart> {
        if let Ok(mut log) = self.log.lock() {
            log.push("head start".into());
        }
        self.gate.notify_one();
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if let Ok(mut log) = self.log.lock() {
            log.push("head start finished".into());
        }
        Some(HeadStart::new(self.prepared))
    }
    async fn collect(&self, ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        let handed = ctx.head_start.and_then(|h| h.get::<u32>()).copied();
        if let Ok(mut log) = self.log.lock() {
            log.push(format!("collect got {handed:?}"));
        }
        tokio::time::sleep(self.collect_delay).await;
        Ok(Collected::default())
    }
}

/// A container source that answers only once `gate` is opened (or fails
/// at its timeout).
struct Gated {
    gate: Arc<tokio::sync::Notify>,
    log: Log,
}

#[async_trait]
impl Collector for Gated {
    fn provides(&self) -> &'static [FactKind] {
        &[FactKind::Containers]
    }
    fn timeout(&self) -> Duration {
        Duration::from_millis(300)
    }
    async fn collect(&self, _ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        self.gate.notified().await;
        if let Ok(mut log) = self.log.lock() {
            log.push("containers listed".into());
        }
        Ok(Collected::default())
    }
}

fn instance(name: &'static str, plugin: Arc<dyn Collector>) -> Instance<dyn Collector> {
    Instance {
        name: name.to_string(),
        kind: name,
        plugin,
    }
}

#[test]
fn a_head_start_runs_while_what_it_needs_is_collected_and_is_handed_to_its_collect() {
    let log = Log::default();
    let gate = Arc::new(tokio::sync::Notify::new());
    let collectors = [
        instance(
            "engine",
            Arc::new(Gated {
                gate: Arc::clone(&gate),
                log: Arc::clone(&log),
            }),
        ),
        instance(
            "procs",
            Arc::new(ReadsAhead {
                needs: &[FactKind::Containers],
                delay: Duration::ZERO,
                collect_delay: Duration::ZERO,
                timeout: Duration::from_millis(300),
                prepared: 42,
                gate,
                log: Arc::clone(&log),
            }),
        ),
    ];
    let (outcomes, _) = schedule(&collectors);
    // The engine answers only once the head start ran: it ran meanwhile.
    assert!(
        outcomes
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Collected { .. })),
        "{outcomes:?}"
    );
    assert_eq!(
        logged(&log),
        [
            "head start",
            "head start finished",
            "containers listed",
            "collect got Some(42)"
        ]
    );
}

#[test]
fn a_head_start_still_running_when_the_others_are_done_is_stopped() {
    // The engine answers at once; the head start would take 200 ms of its
    // 300 ms timeout, the collection 250 ms more. The collector starts at
    // once without it, with its whole timeout.
    let log = Log::default();
    let collectors = [
        Fake::new("engine", CONTAINERS, &log).instance(),
        instance(
            "procs",
            Arc::new(ReadsAhead {
                needs: &[FactKind::Containers],
                delay: Duration::from_millis(200),
                collect_delay: Duration::from_millis(250),
                timeout: Duration::from_millis(300),
                prepared: 7,
                gate: Arc::new(tokio::sync::Notify::new()),
                log: Arc::clone(&log),
            }),
        ),
    ];
    let (outcomes, _) = schedule(&collectors);
    assert!(
        matches!(outcomes[1].1, Outcome::Collected { .. }),
        "{outcomes:?}"
    );
    assert_eq!(
        logged(&log),
        ["head start", "engine saw []", "collect got None"],
        "stopped, never finished"
    );
}

#[test]
fn a_dependency_cycle_is_broken_at_once_whatever_a_head_start_does() {
    // procs needs containers, engine needs processes: a cycle. procs's
    // head start would take a minute; nothing waits for it.
    let log = Log::default();
    let mut engine = Fake::new("engine", CONTAINERS, &log);
    engine.needs = PROCS;
    let collectors = [
        instance(
            "procs",
            Arc::new(ReadsAhead {
                needs: &[FactKind::Containers],
                delay: Duration::from_secs(60),
                collect_delay: Duration::ZERO,
                timeout: Duration::from_secs(120),
                prepared: 1,
                gate: Arc::new(tokio::sync::Notify::new()),
                log: Arc::clone(&log),
            }),
        ),
        engine.instance(),
    ];
    let started = Instant::now();
    let (outcomes, _) = schedule(&collectors);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited for the head start"
    );
    assert_eq!(outcomes.len(), 2);
    // Broken before the head start was even polled.
    assert_eq!(logged(&log), ["collect got None", "engine saw []"]);
}

#[test]
fn a_collector_that_needs_nothing_starts_at_once_without_a_head_start() {
    let log = Log::default();
    let collectors = [instance(
        "alone",
        Arc::new(ReadsAhead {
            needs: &[],
            delay: Duration::ZERO,
            collect_delay: Duration::ZERO,
            timeout: Duration::from_millis(300),
            prepared: 1,
            gate: Arc::new(tokio::sync::Notify::new()),
            log: Arc::clone(&log),
        }),
    )];
    schedule(&collectors);
    assert_eq!(logged(&log), ["collect got None"]);
}

#[test]
fn a_collector_sees_only_the_facts_it_needs() {
    let log = Log::default();
    let provider = Fake::new("provider", PROCS, &log).with(procs(&[7]));
    // The container source runs after the processes are observed (it needs
    // them), and `other` after it: the processes exist when `other` runs,
    // and only the filter keeps them from it.
    let mut containers = Fake::new("containers", CONTAINERS, &log);
    containers.needs = PROCS;
    let mut other = Fake::new("other", GPUS, &log);
    other.needs = CONTAINERS;
    let (_, _) = schedule(&[other.instance(), containers.instance(), provider.instance()]);
    assert_eq!(
        logged(&log),
        ["provider saw []", "containers saw [7]", "other saw []"]
    );
}

#[test]
fn failures_and_timeouts_are_failed_outcomes_and_the_rest_still_runs() {
    let log = Log::default();
    let broken = Fake::new("broken", CONTAINERS, &log).failing();
    let mut slow = Fake::new("slow", GPUS, &log);
    slow.delay = Duration::from_secs(30);
    let fine = Fake::new("fine", PROCS, &log).with(procs(&[1]));
    let (outcomes, observed) = schedule(&[broken.instance(), slow.instance(), fine.instance()]);
    match &outcomes[0].1 {
        Outcome::Failed { error, .. } => assert_eq!(error.to_string(), "unavailable: no source"),
        other => panic!("{other:?}"),
    }
    match &outcomes[1].1 {
        Outcome::Failed { error, .. } => {
            assert_eq!(*error, CollectError::TimedOut(Duration::from_millis(200)))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(kind(&outcomes[2].1), "collected");
    assert_eq!(observed.processes.len(), 1);
}

#[test]
fn a_fallback_runs_only_when_its_primary_failed() {
    for primary_fails in [false, true] {
        let log = Log::default();
        let mut primary = Fake::new("nvml", GPUS, &log);
        if primary_fails {
            primary = primary.failing();
        }
        let mut fallback = Fake::new("nvidia-smi", GPUS, &log).with(gpu(&[5]));
        fallback.fallback_for = Some("nvml");
        // The fallback first in the file: it still waits for its primary.
        let (outcomes, observed) = schedule(&[fallback.instance(), primary.instance()]);
        let ran = logged(&log);
        if primary_fails {
            assert_eq!(ran, ["nvml saw []", "nvidia-smi saw []"]);
            assert_eq!(kind(&outcomes[0].1), "collected");
            assert_eq!(observed.gpu_processes.len(), 1);
        } else {
            assert_eq!(ran, ["nvml saw []"]);
            assert_eq!(
                outcomes[0].1,
                Outcome::SkippedAsFallback {
                    primary: "nvml".into()
                }
            );
            assert!(observed.gpu_processes.is_empty());
        }
    }
}

#[test]
fn a_dependency_cycle_is_broken_and_everything_runs_once() {
    let log = Log::default();
    let mut a = Fake::new("a", PROCS, &log);
    a.needs = GPUS;
    let mut b = Fake::new("b", GPUS, &log);
    b.needs = PROCS;
    let (outcomes, _) = schedule(&[a.instance(), b.instance()]);
    assert_eq!(logged(&log), ["a saw []", "b saw []"]);
    assert_eq!(outcomes.len(), 2);
}

fn trust_of(collectors: &[Instance<dyn Collector>], outcomes: &[(String, Outcome)]) -> Trust {
    let ran: Vec<Ran<'_>> = collectors
        .iter()
        .zip(outcomes)
        .map(|(instance, (_, outcome))| Ran {
            instance,
            outcome: outcome.clone(),
        })
        .collect();
    Trust::of(&ran)
}

#[test]
fn the_gpu_view_is_complete_only_when_every_gpu_and_proc_source_answered() {
    let log = Log::default();
    let cases: [(bool, bool, bool, bool); 5] = [
        // (nvml fails, fallback configured, fallback fails, procfs fails) -> complete?
        (false, false, false, false),
        (true, false, false, false),
        (true, true, false, false),
        (true, true, true, false),
        (false, false, false, true),
    ];
    let expected = [true, false, true, false, false];
    side_by_side_gpu_sources(&log);
    for (case, want) in cases.into_iter().zip(expected) {
        let (nvml_fails, with_fallback, fallback_fails, procfs_fails) = case;
        let mut list = Vec::new();
        let nvml = Fake::new("nvml", GPUS, &log);
        list.push(if nvml_fails { nvml.failing() } else { nvml }.instance());
        if with_fallback {
            let mut smi = Fake::new("nvidia-smi", GPUS, &log);
            smi.fallback_for = Some("nvml");
            list.push(if fallback_fails { smi.failing() } else { smi }.instance());
        }
        let procfs = Fake::new("procfs", PROCS, &log);
        list.push(
            if procfs_fails {
                procfs.failing()
            } else {
                procfs
            }
            .instance(),
        );
        let (outcomes, _) = schedule(&list);
        let trust = trust_of(&list, &outcomes);
        assert_eq!(trust.gpu_view_complete, want, "{case:?}");
    }
    // A skipped fallback does not cover a failed primary (there is none).
    assert!(gpu_view_complete(&[]));
}

/// Two GPU sources side by side (no `fallback_for`): one that is
/// unavailable is covered by the other's answer; one that answered wrongly
/// is not.
fn side_by_side_gpu_sources(log: &Log) {
    let smi = || Fake::new("nvidia-smi", GPUS, log).instance();
    let unavailable = [Fake::new("nvml", GPUS, log).failing().instance(), smi()];
    let (outcomes, _) = schedule(&unavailable);
    assert!(trust_of(&unavailable, &outcomes).gpu_view_complete);
    let mut wrong = Fake::new("nvml", GPUS, log);
    wrong.answer = Err(CollectError::Failed("garbage".into()));
    let wrong = [wrong.instance(), smi()];
    let (outcomes, _) = schedule(&wrong);
    assert!(!trust_of(&wrong, &outcomes).gpu_view_complete);
    // Both unavailable: nobody answered for the GPUs.
    let none = [
        Fake::new("nvml", GPUS, log).failing().instance(),
        Fake::new("nvidia-smi", GPUS, log).failing().instance(),
    ];
    let (outcomes, _) = schedule(&none);
    assert!(!trust_of(&none, &outcomes).gpu_view_complete);
}

#[test]
fn failed_container_sources_are_named() {
    let log = Log::default();
    let list = [
        Fake::new("docker", CONTAINERS, &log).instance(),
        Fake::new("podman", CONTAINERS, &log).failing().instance(),
    ];
    let (outcomes, _) = schedule(&list);
    let trust = trust_of(&list, &outcomes);
    assert_eq!(trust.failed_container_sources.len(), 1);
    assert!(trust.failed_container_sources.contains("podman"));
    assert_eq!(trust.first_container_source, "docker");
}

const T0: Timestamp = Timestamp::from_unix_seconds(1_000);
const T1: Timestamp = Timestamp::from_unix_seconds(2_000);
const NOW: Timestamp = Timestamp::from_unix_seconds(3_000);

fn container_entry(id: &str, collector: &str) -> ContainerEntry {
    ContainerEntry {
        id: id.into(),
        name: format!("n-{id}"),
        status: "running".into(),
        detected_at: T0,
        collector: collector.into(),
        ..Default::default()
    }
}

#[test]
fn a_failed_sources_containers_are_carried_over_and_only_its() {
    let mut previous = Inventory::default();
    for (id, source) in [("aaa", "docker"), ("bbb", "podman"), ("ccc", "")] {
        previous
            .containers
            .insert(id.into(), container_entry(id, source));
    }
    let trust = Trust {
        failed_container_sources: ["docker".to_string()].into(),
        first_container_source: "docker".into(),
        gpu_view_complete: true,
    };
    let inventory = assemble::inventory(&previous, Workset::default(), &[], &trust, NOW);
    let kept: Vec<&str> = inventory.containers.keys().map(String::as_str).collect();
    // `ccc` predates recording sources: it belongs to the first one.
    assert_eq!(kept, ["aaa", "ccc"]);
    assert_eq!(inventory.containers["aaa"], previous.containers["aaa"]);
}

fn observed_process(pid: u32, start_time: u64) -> Observations {
    let mut o = gpu(&[pid]);
    o.processes.insert(pid, proc_facts(pid, start_time));
    o
}

fn previous_with(entry: ProcessEntry) -> Inventory {
    let mut previous = Inventory::default();
    previous.host_processes.insert(entry.pid, entry);
    previous
}

#[test]
fn the_same_pid_and_start_time_is_the_same_process() {
    let before = ProcessEntry {
        pid: 7,
        start_time: Some(100),
        detected_at: T0,
        seen_scans: 3,
        ..Default::default()
    };
    let previous = previous_with(before.clone());
    let work = workset::build(&mut observed_process(7, 100), &previous, T1);
    let p = &work.processes[0];
    assert_eq!((p.entry.detected_at, p.entry.seen_scans), (T0, 4));
    assert!(p.confirmed_before);

    // The PID reused by a new process: new detected_at, counted from 1.
    let work = workset::build(&mut observed_process(7, 555), &previous, T1);
    let p = &work.processes[0];
    assert_eq!((p.entry.detected_at, p.entry.seen_scans), (T1, 1));
    assert!(!p.confirmed_before);
}

#[test]
fn a_pending_process_carries_its_sightings_and_containers_their_first_sighting() {
    let mut previous = Inventory::default();
    let pending = ProcessEntry {
        pid: 9,
        start_time: Some(100),
        detected_at: T0,
        seen_scans: 1,
        ..Default::default()
    };
    previous.pending_processes.insert(9, pending);
    previous.containers.insert(
        "abcdefabcdef".into(),
        container_entry("abcdefabcdef", "docker"),
    );
    let mut observed = observed_process(9, 100);
    observed.containers.push(ContainerFacts {
        id: "abcdefabcdef".repeat(5),
        ..Default::default()
    });
    observed.containers.push(ContainerFacts {
        id: "0123456789ab".repeat(5),
        ..Default::default()
    });
    let work = workset::build(&mut observed, &previous, T1);
    let p = &work.processes[0];
    assert_eq!((p.entry.detected_at, p.entry.seen_scans), (T0, 2));
    assert!(!p.confirmed_before);
    let seen: Vec<(&str, Timestamp)> = work
        .containers
        .iter()
        .map(|c| (c.entry.id.as_str(), c.entry.detected_at))
        .collect();
    assert_eq!(seen, [("abcdefabcdef", T0), ("0123456789ab", T1)]);
    assert_eq!(workset::first_seen(None, T1), T1);
    assert_eq!(workset::first_seen(Some(T0), T1), T0);
}

#[test]
fn without_a_complete_gpu_view_the_processes_are_carried_over() {
    let before = ProcessEntry {
        pid: 7,
        start_time: Some(100),
        detected_at: T0,
        ..Default::default()
    };
    let previous = previous_with(before);
    let work = workset::build(&mut observed_process(8, 1), &previous, T1);
    let trust = Trust::default();
    let inventory = assemble::inventory(&previous, work, &[], &trust, NOW);
    assert_eq!(inventory.host_processes, previous.host_processes);
}

struct NamedStage {
    after: &'static [StageType],
    fails: bool,
    log: Log,
    name: &'static str,
}

impl Stage for NamedStage {
    fn after(&self) -> &'static [StageType] {
        self.after
    }
    fn run(&self, _work: &mut Workset, _ctx: &StageContext<'_>) -> Result<(), StageError> {
        if let Ok(mut log) = self.log.lock() {
            log.push(self.name.to_string());
        }
        if self.fails {
            return Err(StageError::new("broken"));
        }
        Ok(())
    }
}

#[test]
fn stages_run_after_those_they_name_and_a_failing_one_stops_nothing() {
    let log = Log::default();
    let stage = |name: &'static str, after: &'static [StageType], fails: bool| Instance {
        name: name.to_string(),
        kind: name,
        plugin: Arc::new(NamedStage {
            after,
            fails,
            log: Arc::clone(&log),
            name,
        }) as Arc<dyn Stage>,
    };
    let list = [
        stage("confirm", &[StageType("exclude")], false),
        stage("exclude", &[], true),
        stage("describe", &[], false),
    ];
    let order: Vec<&str> = stages::order(&list)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(order, ["exclude", "confirm", "describe"]);
    let previous = Inventory::default();
    let observations = Observations::default();
    let users = UserNames::new();
    let ctx = StageContext {
        previous: &previous,
        observations: &observations,
        users: &users,
    };
    stages::run(&list, &mut Workset::default(), &ctx);
    assert_eq!(logged(&log), ["exclude", "confirm", "describe"]);
}

/// A sink recording what it was given; `state` makes it the state store,
/// whose load waits on `hold` when set.
struct FakeSink {
    name: &'static str,
    fails: bool,
    required: bool,
    events: bool,
    state: bool,
    hold: Option<Mutex<std::sync::mpsc::Receiver<()>>>,
    log: Log,
}

impl FakeSink {
    fn new(name: &'static str, log: &Log) -> FakeSink {
        FakeSink {
            name,
            fails: false,
            required: false,
            events: false,
            state: false,
            hold: None,
            log: Arc::clone(log),
        }
    }
    fn instance(self) -> Instance<dyn Sink> {
        Instance {
            name: self.name.to_string(),
            kind: self.name,
            plugin: Arc::new(self),
        }
    }
}

#[async_trait]
impl Sink for FakeSink {
    async fn deliver(&self, out: &ScanOutput<'_>) -> Result<(), SinkError> {
        if let Ok(mut log) = self.log.lock() {
            log.push(format!("{} got {} events", self.name, out.events.len()));
        }
        if self.fails {
            return Err(SinkError::new("disk full"));
        }
        Ok(())
    }
    fn required(&self) -> bool {
        self.required
    }
    fn emits_events(&self) -> bool {
        self.events
    }
    fn state_store(&self) -> Option<&dyn StateStore> {
        self.state.then_some(self as &dyn StateStore)
    }
}

impl StateStore for FakeSink {
    fn load(&self) -> Result<Option<Inventory>, StateError> {
        if let Some(hold) = &self.hold {
            // Blocks until the test ends (the sender is dropped then).
            let _ = hold.lock().map(|rx| rx.recv());
        }
        Ok(None)
    }
    fn lock(&self, _wait: Duration) -> Result<LockGuard, StateError> {
        Ok(Box::new(()))
    }
    fn delivered(&self) -> Option<String> {
        None
    }
    fn set_delivered(&self, _id: &str) -> Result<(), StateError> {
        Ok(())
    }
}

fn config(collectors: Vec<Instance<dyn Collector>>, sinks: Vec<Instance<dyn Sink>>) -> Config {
    Config {
        origin: "test".into(),
        agent: AgentConfig {
            scan_timeout: Duration::from_millis(500),
            ..AgentConfig::default()
        },
        collectors,
        stages: Vec::new(),
        sinks,
        sink_override: None,
        stage_choice: Default::default(),
    }
}

#[test]
fn events_go_out_only_once_the_state_is_written() {
    let log = Log::default();
    let mut state = FakeSink::new("state", &log);
    (state.state, state.required, state.fails) = (true, true, true);
    let mut events = FakeSink::new("events", &log);
    events.events = true;
    let other = FakeSink::new("other", &log);
    // Events first in the file: the state is still delivered first.
    let c = config(
        Vec::new(),
        vec![events.instance(), other.instance(), state.instance()],
    );
    let err = run_cycle(&c, &runtime()).err().map(|e| e.to_string());
    assert_eq!(err.as_deref(), Some("sink state: disk full"));
    assert_eq!(logged(&log), ["state got 0 events", "other got 0 events"]);
}

#[test]
fn an_optional_sink_that_fails_fails_nothing() {
    let log = Log::default();
    let mut broken = FakeSink::new("broken", &log);
    broken.fails = true;
    let mut events = FakeSink::new("events", &log);
    events.events = true;
    let c = config(
        vec![Fake::new("docker", CONTAINERS, &log).instance()],
        vec![broken.instance(), events.instance()],
    );
    let result = run_cycle(&c, &runtime()).map(|r| r.inventory.scan.map(|s| s.collectors));
    let reports = result.ok().flatten().expect("a scan report");
    assert!(reports["docker"].ok);
    assert!(logged(&log).contains(&"events got 0 events".to_string()));
}

#[test]
fn a_state_read_that_hangs_is_given_up_at_the_deadline() {
    let log = Log::default();
    let (_release, hold) = std::sync::mpsc::channel::<()>();
    let mut state = FakeSink::new("state", &log);
    (state.state, state.required) = (true, true);
    state.hold = Some(Mutex::new(hold));
    let c = config(Vec::new(), vec![state.instance()]);
    // Before, the reader was a scoped thread and this never returned.
    let err = run_cycle(&c, &runtime()).err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("cannot read the previous inventory: not read within the scan's deadline")
    );
    assert!(logged(&log).is_empty(), "nothing delivered");
}

#[test]
fn the_reserve_is_a_fifth_of_the_timeout_and_at_most_two_seconds() {
    assert_eq!(reserve(Duration::from_secs(5)), Duration::from_secs(1));
    assert_eq!(reserve(Duration::from_secs(25)), Duration::from_secs(2));
    let clock = Clock::start(Duration::from_secs(25));
    assert_eq!(clock.deadline - clock.start, Duration::from_secs(23));
    let forever = Clock::start(Duration::MAX);
    assert!(forever.deadline > forever.start + Duration::from_secs(365 * 24 * 3600));
}

#[test]
fn a_container_id_two_collectors_report_is_kept_from_the_one_configured_first() {
    let log = Log::default();
    let container = |id: &str, name: &str| ContainerFacts {
        id: id.to_string(),
        name: name.to_string(),
        ..Default::default()
    };
    let real = format!("{:0>64}", "a1");
    // Same short id, another tail: the inventory's key is the short id.
    let lookalike = format!("{}{:0>52}", &real[..12], "ff");
    let theirs = |name| Observations {
        containers: vec![container(&real, name), container(&lookalike, name)],
        ..Default::default()
    };
    // The one configured first answers last: it still wins.
    let mut system = Fake::new("system", CONTAINERS, &log).with(Observations {
        containers: vec![container(&real, "real")],
        ..Default::default()
    });
    system.delay = Duration::from_millis(30);
    let users_own = Fake::new("users-own", CONTAINERS, &log).with(theirs("fake"));
    let (_, observed) = schedule(&[system.instance(), users_own.instance()]);
    let kept: Vec<_> = observed
        .containers
        .iter()
        .map(|c| (c.key(), c.name.as_str(), c.collector.as_str()))
        .collect();
    assert_eq!(kept, [(real[..12].to_string(), "real", "system")]);
}

/// A stage told the previous inventory: it logs, and opens `gate`.
struct Told {
    gate: Arc<tokio::sync::Notify>,
    log: Log,
}

impl Stage for Told {
    fn head_start(&self, previous: &Inventory) {
        if let Ok(mut log) = self.log.lock() {
            log.push(format!("told {} containers", previous.containers.len()));
        }
        self.gate.notify_one();
    }
    fn run(&self, _work: &mut Workset, _ctx: &StageContext<'_>) -> Result<(), StageError> {
        if let Ok(mut log) = self.log.lock() {
            log.push("stage run".into());
        }
        Ok(())
    }
}

#[test]
fn stages_are_told_the_previous_inventory_while_the_collectors_run() {
    let log = Log::default();
    let gate = Arc::new(tokio::sync::Notify::new());
    let mut state = FakeSink::new("state", &log);
    (state.state, state.required) = (true, true);
    let mut c = config(
        vec![instance(
            "engine",
            Arc::new(Gated {
                gate: Arc::clone(&gate),
                log: Arc::clone(&log),
            }),
        )],
        vec![state.instance()],
    );
    c.stages = vec![Instance {
        name: "told".into(),
        kind: "told",
        plugin: Arc::new(Told {
            gate,
            log: Arc::clone(&log),
        }),
    }];
    let reports = run_cycle(&c, &runtime())
        .ok()
        .and_then(|r| r.inventory.scan)
        .map(|s| s.collectors)
        .expect("a scan report");
    // The engine answers only once the stage was told: it was meanwhile.
    assert!(reports["engine"].ok, "{reports:?}");
    let log = logged(&log);
    assert_eq!(
        log[..3],
        ["told 0 containers", "containers listed", "stage run"],
        "{log:?}"
    );
}
