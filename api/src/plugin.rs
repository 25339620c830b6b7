//! The three plugin kinds, their contracts, and the compile-time registry.
//!
//! A plugin is registered with one `inventory::submit!` of a [`Registration`]
//! ([`CollectorPlugin`], [`StagePlugin`] or [`SinkPlugin`]): its name, a
//! summary, its sample configuration and its build function. The core finds
//! it by name. Nothing in the core names a plugin.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{AgentConfig, ConfigError, PluginConfig};
use crate::model::{
    ContainerEntry, ContainerFacts, Event, FactKind, Inventory, Observations, ProcessEntry,
    ProcessFacts,
};
use crate::users::UserNames;

/// Why a collector produced nothing this cycle. Distinct from finding nothing
/// (`Ok` with empty observations).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectError {
    /// The source is not there or not reachable (no socket, no library, no command).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The source answered, but wrongly (error status, garbage output).
    #[error("{0}")]
    Failed(String),
    /// It did not answer within its timeout.
    #[error("timed out after {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
}

/// What a collector returns on success.
#[derive(Debug, Default)]
pub struct Collected {
    /// What it observed.
    pub observations: Observations,
    /// Counters worth recording in `scan.collectors.<name>` (for example API calls).
    pub stats: BTreeMap<String, u64>,
}

/// What a collector may read while collecting.
pub struct CollectContext<'a> {
    /// The previous inventory (for caches; never to invent current facts). It
    /// is read from disk while the collectors start: ask for it only once
    /// your requests are under way.
    pub previous: &'a Previous,
    /// What the collectors that ran before this one observed this cycle (the
    /// facts named in [`Collector::needs`]).
    pub observed: &'a Observations,
    /// uid -> user name, resolved once per scan.
    pub users: &'a UserNames,
    /// What this collector's [`Collector::head_start`] prepared this cycle,
    /// if it did.
    pub head_start: Option<&'a HeadStart>,
}

/// What a collector read ahead at the start of a cycle
/// ([`Collector::head_start`]), handed back to its own
/// [`Collector::collect`] in the same cycle. Only the collector that made it
/// knows its type ([`HeadStart::get`]).
pub struct HeadStart(Box<dyn Any + Send + Sync>);

impl HeadStart {
    /// Wraps what a collector prepared.
    pub fn new<T: Any + Send + Sync>(prepared: T) -> Self {
        HeadStart(Box::new(prepared))
    }

    /// What was prepared, if it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl std::fmt::Debug for HeadStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeadStart(..)")
    }
}

/// What a state load yields: the inventory, or why it could not be read.
pub type LoadResult = Result<Option<Inventory>, StateError>;

/// Why the previous state could not be read, or the scan lock taken.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file could not be read, written or locked.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// Another scan holds the lock.
    #[error("{0}")]
    Busy(String),
    /// Anything else, said in words.
    #[error("{0}")]
    Other(String),
    /// The reader did not answer before the scan's deadline.
    #[error("not read within the scan's deadline")]
    TimedOut,
    /// The reader stopped without an answer.
    #[error("the state reader stopped")]
    ReaderStopped,
}

impl StateError {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StateError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The previous inventory, possibly still being read (on another thread) while
/// the collectors start. [`Previous::get`] waits for it, until the deadline
/// given to [`Previous::arriving`] at most.
pub struct Previous {
    loaded: tokio::sync::OnceCell<Loaded>,
    pending: tokio::sync::Mutex<Option<Pending>>,
}

struct Pending {
    result: tokio::sync::oneshot::Receiver<LoadResult>,
    deadline: Option<tokio::time::Instant>,
}

struct Loaded {
    inventory: Inventory,
    error: Option<std::sync::Arc<StateError>>,
}

impl Loaded {
    fn new(result: LoadResult) -> Self {
        let (inventory, error) = match result {
            Ok(inventory) => (inventory.unwrap_or_default(), None),
            Err(e) => (Inventory::default(), Some(std::sync::Arc::new(e))),
        };
        Loaded { inventory, error }
    }
}

impl Previous {
    /// An inventory already in memory (tests, tools; none yet: the default).
    pub fn known(inventory: Inventory) -> Self {
        Previous {
            loaded: tokio::sync::OnceCell::new_with(Some(Loaded::new(Ok(Some(inventory))))),
            pending: tokio::sync::Mutex::new(None),
        }
    }

    /// One that arrives on `result` (sent by the thread reading it); when
    /// it has not arrived by `deadline` (if any), it is an error
    /// ([`StateError::TimedOut`]) and the reader is left behind.
    pub fn arriving(
        result: tokio::sync::oneshot::Receiver<LoadResult>,
        deadline: Option<std::time::Instant>,
    ) -> Self {
        Previous {
            loaded: tokio::sync::OnceCell::new(),
            pending: tokio::sync::Mutex::new(Some(Pending {
                result,
                deadline: deadline.map(tokio::time::Instant::from_std),
            })),
        }
    }

    async fn loaded(&self) -> &Loaded {
        self.loaded
            .get_or_init(|| async {
                // The receiver stays in place while it is awaited: a caller
                // dropped midway (a collector that failed or ran over while
                // waiting for it) leaves it to the next one.
                let mut pending = self.pending.lock().await;
                Loaded::new(match pending.as_mut() {
                    Some(pending) => pending.wait().await,
                    None => Err(StateError::ReaderStopped),
                })
            })
            .await
    }

    /// The previous inventory (empty when there is none, or when it could
    /// not be read: the cycle then fails after the collectors).
    pub async fn get(&self) -> &Inventory {
        &self.loaded().await.inventory
    }

    /// When the previous scan started, if there was one.
    pub async fn scan_started(&self) -> Option<crate::timefmt::Timestamp> {
        self.loaded().await.inventory.last_scan
    }

    /// The previous inventory, or why it could not be read.
    pub async fn result(&self) -> Result<&Inventory, std::sync::Arc<StateError>> {
        let loaded = self.loaded().await;
        match &loaded.error {
            Some(e) => Err(e.clone()),
            None => Ok(&loaded.inventory),
        }
    }
}

impl Pending {
    async fn wait(&mut self) -> LoadResult {
        let answer = match self.deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, &mut self.result).await {
                Ok(answer) => answer,
                Err(_) => return Err(StateError::TimedOut),
            },
            None => (&mut self.result).await,
        };
        answer.unwrap_or(Err(StateError::ReaderStopped))
    }
}

/// Observes one aspect of the machine.
///
/// Contract: return `Ok` with what was found (possibly nothing) when the source
/// answered, and `Err` when it could not be asked; never panic. The core runs
/// collectors concurrently, each under [`Collector::timeout`], and drops the
/// future when it runs over, so any child process must be killed on drop.
#[async_trait]
pub trait Collector: Send + Sync {
    /// The kinds of facts it provides.
    fn provides(&self) -> &'static [FactKind];
    /// The kinds of facts it needs from other collectors this cycle; it runs
    /// after every collector that provides them.
    fn needs(&self) -> &'static [FactKind] {
        &[]
    }
    /// How long it may take.
    fn timeout(&self) -> Duration {
        Duration::from_secs(10)
    }
    /// The collector type it stands in for: it runs only in a cycle where that
    /// one failed.
    fn fallback_for(&self) -> Option<&str> {
        None
    }
    /// What `validate` says about this instance: the settings that matter
    /// (endpoint, paths, timeout). By default its timeout; a collector with
    /// no timeout of its own says what it reads instead.
    fn describe(&self) -> String {
        format!("timeout {}", crate::config::human_duration(self.timeout()))
    }
    /// For a collector that [`needs`](Collector::needs) others: work that
    /// can start with the cycle, before they have answered, reading ahead
    /// what the previous inventory says it will be asked about
    /// (`ctx.observed` is empty, `ctx.previous` may still be loading). The
    /// core starts it with the cycle, under the collector's timeout; once
    /// the others are done, [`collect`](Collector::collect) starts with
    /// what it returned in `ctx.head_start` if it is done, else without it
    /// (it is dropped: stop any thread it started). `collect` must check
    /// what it is handed against what it is asked this cycle, since the
    /// previous inventory is not the current one. By default none.
    async fn head_start(&self, ctx: &CollectContext<'_>) -> Option<HeadStart> {
        let _ = ctx;
        None
    }
    /// Observes.
    async fn collect(&self, ctx: &CollectContext<'_>) -> Result<Collected, CollectError>;
    /// Watch mode: a stream of change notices from a source that can push
    /// them (the Docker engine's event stream), replaying from `since` (the
    /// last notice seen) when given. `None`: the source cannot push; watch
    /// mode then relies on its timer.
    fn changes(&self, since: Option<Change>) -> Option<ChangeFeed> {
        let _ = since;
        None
    }
}

/// A source's notice that what it observes changed (watch mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// When it happened, by the source's clock, in nanoseconds since the
    /// epoch: where a new subscription replays from.
    pub time_nanos: i64,
}

/// Change notices as a source pushes them; an `Err` or the end of the stream
/// means the subscription was lost (watch mode subscribes again).
pub type ChangeFeed =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Change, CollectError>> + Send>>;

/// A container being turned into an inventory entry by the stages.
#[derive(Debug, Clone)]
pub struct ContainerDraft {
    /// What the engine said.
    pub facts: ContainerFacts,
    /// The entry the stages fill in (`origin`, `user`, `gpu_devices`...).
    pub entry: ContainerEntry,
}

/// What becomes of a GPU process after the stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Reported in `host_processes`.
    Report,
    /// Kept in `_pending_processes` until confirmed.
    Pending,
    /// Not a host workload; the reason is logged at debug level.
    Drop(String),
}

/// A host GPU process being turned into an inventory entry by the stages.
#[derive(Debug, Clone)]
pub struct ProcessDraft {
    /// What `/proc` said.
    pub facts: ProcessFacts,
    /// The entry the stages fill in.
    pub entry: ProcessEntry,
    /// Whether it was already confirmed in the previous inventory.
    pub confirmed_before: bool,
    /// Where it goes.
    pub verdict: Verdict,
}

/// The entries of one cycle, as the stages see and change them.
#[derive(Debug, Clone, Default)]
pub struct Workset {
    /// Every container observed this cycle.
    pub containers: Vec<ContainerDraft>,
    /// Every GPU process on the host (outside containers) observed this cycle.
    pub processes: Vec<ProcessDraft>,
    /// Every GPU process inside a container observed this cycle (attributed
    /// to its container when the inventory is assembled). `exclude-system`
    /// leaves them alone; `redact` and `transient-filter` treat them as host
    /// processes.
    pub container_processes: Vec<ContainerProcessDraft>,
}

/// A GPU process inside a container, being turned into an entry.
#[derive(Debug, Clone)]
pub struct ContainerProcessDraft {
    /// The process as a host process would be (facts, entry, verdict);
    /// `facts.container_id` names its container, when the cgroup says.
    pub process: ProcessDraft,
    /// One line per GPU it uses, as the GPU collector saw it.
    pub gpus: Vec<crate::model::GpuProcess>,
}

impl Workset {
    /// Every GPU process draft, on the host or in a container.
    pub fn all_processes_mut(&mut self) -> impl Iterator<Item = &mut ProcessDraft> {
        self.processes
            .iter_mut()
            .chain(self.container_processes.iter_mut().map(|c| &mut c.process))
    }
}

/// What a stage may read.
pub struct StageContext<'a> {
    /// The previous inventory.
    pub previous: &'a Inventory,
    /// This cycle's observations (GPU processes and `/proc` facts; the
    /// containers' facts are in the [`Workset`]'s drafts).
    pub observations: &'a Observations,
    /// uid -> user name, resolved once per scan.
    pub users: &'a UserNames,
}

/// Why a stage could not do its work. The cycle goes on without it.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Something it needed is missing or wrong.
    #[error("{0}")]
    Failed(String),
    /// An error of something it called.
    #[error("{context}: {source}")]
    Caused {
        /// What it was doing.
        context: String,
        /// Why that failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StageError {
    /// A failure said in words.
    pub fn new(message: impl Into<String>) -> Self {
        StageError::Failed(message.into())
    }
}

/// A stage type, named as in `[[stages.NAME]]`: what [`Stage::after`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StageType(pub &'static str);

impl StageType {
    /// Its name.
    pub fn name(self) -> &'static str {
        self.0
    }

    /// Whether a stage of this type is registered in this binary.
    pub fn is_registered(self) -> bool {
        find_stage(self.0).is_some()
    }
}

impl PartialEq<&str> for StageType {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Turns observations into inventory entries: reads the observations and the
/// previous inventory, and changes only the [`Workset`].
pub trait Stage: Send + Sync {
    /// Stage types that must run before this one (when configured).
    fn after(&self) -> &'static [StageType] {
        &[]
    }
    /// Told the previous inventory as soon as it is read, while the
    /// collectors still run: a stage may prepare there what the scan will
    /// likely need, and keep it itself (`redact` compiles its rules on a
    /// thread of its own when the previous scan had processes). It must
    /// return at once: long work goes to a thread. Does nothing unless a
    /// stage implements it.
    fn head_start(&self, previous: &Inventory) {
        let _ = previous;
    }
    /// Does its work on the entries.
    fn run(&self, work: &mut Workset, ctx: &StageContext<'_>) -> Result<(), StageError>;
    /// Judges the assembled inventory, after every stage's `run`: the
    /// containers hold their attributed GPU processes and every running
    /// workload its `activity`. For decisions that need the whole picture
    /// (the `idle` stage); changes only entries of `inventory`. Does nothing
    /// unless a stage implements it.
    fn review(&self, inventory: &mut Inventory, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let _ = (inventory, ctx);
        Ok(())
    }
}

/// What a sink is handed at the end of a cycle.
pub struct ScanOutput<'a> {
    /// The new inventory.
    pub inventory: &'a Inventory,
    /// The transitions since the previous inventory, each with its
    /// `event_id`.
    pub events: &'a [Event],
    /// Events an earlier cycle recorded in its state but may not have
    /// delivered (it was killed, or an event sink failed): an event sink
    /// appends those its log does not already hold (by `event_id`), before
    /// `events`. Counters and other consumers ignore them: they were counted
    /// when they happened.
    pub owed: &'a [Event],
    /// The agent settings (for example the event `source`).
    pub agent: &'a AgentConfig,
}

/// Why a sink could not deliver.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The output could not be encoded.
    #[error("cannot encode the inventory: {0}")]
    Encode(#[source] serde_json::Error),
    /// A file or stream could not be written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// Anything else, said in words.
    #[error("{0}")]
    Failed(String),
}

impl SinkError {
    /// A failure said in words.
    pub fn new(message: impl Into<String>) -> Self {
        SinkError::Failed(message.into())
    }

    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        SinkError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A held scan lock; released when dropped.
pub type LockGuard = Box<dyn Any + Send>;

/// Where the previous inventory lives between runs (the inventory file).
pub trait StateStore: Send + Sync {
    /// Reads the previous inventory: `Ok(None)` when there is none yet. A
    /// corrupt one is moved aside and reported as none. It runs on a thread
    /// of its own, which the cycle abandons at its deadline.
    fn load(&self) -> Result<Option<Inventory>, StateError>;
    /// Takes the scan lock, waiting at most `wait`.
    fn lock(&self, wait: Duration) -> Result<LockGuard, StateError>;
    /// Reads the inventory for a person (`ps`, `top`), changing nothing: a
    /// corrupt one is an error, not moved aside. By default [`StateStore::load`].
    fn peek(&self) -> Result<Option<Inventory>, StateError> {
        self.load()
    }
    /// The id of the last [`crate::model::Outbox`] every event sink took,
    /// if one is recorded (an outbox not recorded is offered again, and its
    /// events carried into the next state's until it is).
    fn delivered(&self) -> Option<String>;
    /// Records that every event sink took the outbox `id` (called under the
    /// scan lock, after the sinks).
    fn set_delivered(&self, id: &str) -> Result<(), StateError>;
}

/// Delivers the result of a cycle.
///
/// Contract: a sink that fails returns `Err`; the core logs it and still runs
/// every other sink. A sink whose [`Sink::required`] is true makes the run exit 1.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Delivers the inventory and events.
    async fn deliver(&self, out: &ScanOutput<'_>) -> Result<(), SinkError>;
    /// Whether the run fails when this sink fails.
    fn required(&self) -> bool {
        false
    }
    /// Whether this sink writes the events (a dry run emits none).
    fn emits_events(&self) -> bool {
        false
    }
    /// The state this sink keeps for the next scan, if any.
    fn state_store(&self) -> Option<&dyn StateStore> {
        None
    }
    /// The JSON-lines file this sink appends the events to, if it keeps
    /// one, for the readers of the history (`report`); its rotated copies
    /// (`NAME.1`, `NAME.2.gz`, `NAME-20261201`) lie beside it.
    fn events_file(&self) -> Option<&std::path::Path> {
        None
    }
    /// Watch mode: a task this sink runs for as long as the service does
    /// (the Prometheus sink's `/metrics` listener). Made once per loaded
    /// configuration, inside the runtime; what it must have to run (a bound
    /// address, taken from `listeners`) it gets here, so that a failure is
    /// an error now: fatal at start, and at a reload a reason to keep the
    /// running configuration. Dropped (stopped) when the configuration is
    /// replaced.
    fn service(&self, listeners: &mut Listeners) -> Result<Option<SinkService>, SinkError> {
        let _ = listeners;
        Ok(None)
    }
    /// What `validate` says about this instance (the file it writes, ...).
    fn describe(&self) -> String {
        String::new()
    }
}

/// The listening sockets of one loaded configuration, by address. A reload
/// makes the new configuration's from the running one's
/// ([`Listeners::handed_over`]): an address both use is kept open, never
/// released and bound again (in between, another local user could take the
/// port and serve forged metrics).
#[derive(Debug, Default)]
pub struct Listeners {
    previous: std::collections::BTreeMap<std::net::SocketAddr, Arc<tokio::net::TcpListener>>,
    bound: std::collections::BTreeMap<std::net::SocketAddr, Arc<tokio::net::TcpListener>>,
}

impl Listeners {
    /// The sockets for a configuration that replaces the one holding `running`.
    pub fn handed_over(running: &Listeners) -> Listeners {
        Listeners {
            previous: running.bound.clone(),
            bound: Default::default(),
        }
    }

    /// A listener on `addr`: the running configuration's when it had one
    /// there, else bound now (inside the runtime). Two sinks of one
    /// configuration cannot share an address.
    pub fn bind(
        &mut self,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<Arc<tokio::net::TcpListener>> {
        if self.bound.contains_key(&addr) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another sink of this configuration listens there",
            ));
        }
        let listener = match self.previous.remove(&addr) {
            Some(kept) => kept,
            None => {
                let std = std::net::TcpListener::bind(addr)?;
                std.set_nonblocking(true)?;
                Arc::new(tokio::net::TcpListener::from_std(std)?)
            }
        };
        self.bound.insert(addr, Arc::clone(&listener));
        Ok(listener)
    }

    /// The addresses bound (their actual ports, for port 0).
    pub fn addresses(&self) -> Vec<std::net::SocketAddr> {
        self.bound
            .values()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
}

/// A sink's long-running task in watch mode; it ends only on failure.
pub type SinkService =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SinkError>> + Send>>;

/// Builds a plugin from its configuration table.
pub type BuildFn<T> = fn(PluginConfig<'_>) -> Result<Box<T>, ConfigError>;

/// A registered plugin type of one kind (`T` is `dyn Collector`, `dyn Stage`
/// or `dyn Sink`).
pub struct Registration<T: ?Sized + 'static> {
    /// Type name, as in `[[collectors.NAME]]`.
    pub name: &'static str,
    /// One line for `detect-workloads plugins`.
    pub summary: &'static str,
    /// Its table in a configuration file with its defaults, commented: a
    /// `const SAMPLE: &str` beside the plugin's config struct.
    /// `detect-workloads plugins --sample NAME` prints it; the tables of
    /// `config/default.toml` are checked against it.
    pub sample: &'static str,
    /// Builds an instance.
    pub build: BuildFn<T>,
}

/// A registered collector type.
pub type CollectorPlugin = Registration<dyn Collector>;
/// A registered stage type.
pub type StagePlugin = Registration<dyn Stage>;
/// A registered sink type.
pub type SinkPlugin = Registration<dyn Sink>;

inventory::collect!(CollectorPlugin);
inventory::collect!(StagePlugin);
inventory::collect!(SinkPlugin);

/// A stage in force even when a configuration does not list it: the engine
/// adds it, built from an empty table (its defaults), ahead of the others.
/// `redact` registers one, so that no configuration stores command lines
/// unredacted by forgetting a table (turning it off is an explicit
/// `mode = "full"`).
pub struct InForce {
    /// The stage's type name.
    pub stage: &'static str,
}

inventory::collect!(InForce);

/// The stages registered as [`InForce`], sorted by name.
pub fn in_force() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = inventory::iter::<InForce>
        .into_iter()
        .map(|f| f.stage)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The registrations of one plugin kind (implemented for `dyn Collector`,
/// `dyn Stage`, `dyn Sink`).
pub trait Registered: 'static {
    /// Its config section.
    const KIND: PluginKind;
    /// Every registration of this kind, in link order.
    fn all() -> Vec<&'static Registration<Self>>;
}

impl Registered for dyn Collector {
    const KIND: PluginKind = PluginKind::Collector;
    fn all() -> Vec<&'static Registration<Self>> {
        inventory::iter::<CollectorPlugin>.into_iter().collect()
    }
}

impl Registered for dyn Stage {
    const KIND: PluginKind = PluginKind::Stage;
    fn all() -> Vec<&'static Registration<Self>> {
        inventory::iter::<StagePlugin>.into_iter().collect()
    }
}

impl Registered for dyn Sink {
    const KIND: PluginKind = PluginKind::Sink;
    fn all() -> Vec<&'static Registration<Self>> {
        inventory::iter::<SinkPlugin>.into_iter().collect()
    }
}

/// Finds a registered plugin type of kind `T` by name.
pub fn find<T: Registered + ?Sized>(name: &str) -> Option<&'static Registration<T>> {
    T::all().into_iter().find(|p| p.name == name)
}

/// The kind of a plugin: its config section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PluginKind {
    /// `[[collectors.*]]`
    Collector,
    /// `[[stages.*]]`
    Stage,
    /// `[[sinks.*]]`
    Sink,
}

/// What is known of a registered plugin whatever its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listing {
    /// Type name.
    pub name: &'static str,
    /// One line.
    pub summary: &'static str,
    /// Sample configuration.
    pub sample: &'static str,
}

fn listings<T: Registered + ?Sized>() -> Vec<Listing> {
    T::all()
        .into_iter()
        .map(|p| Listing {
            name: p.name,
            summary: p.summary,
            sample: p.sample,
        })
        .collect()
}

impl PluginKind {
    /// Every kind, in the order of the configuration file.
    pub const ALL: [PluginKind; 3] = [PluginKind::Collector, PluginKind::Stage, PluginKind::Sink];

    /// The config section name.
    pub fn section(self) -> &'static str {
        match self {
            PluginKind::Collector => "collectors",
            PluginKind::Stage => "stages",
            PluginKind::Sink => "sinks",
        }
    }

    /// The kind in words (`collector`).
    pub fn noun(self) -> &'static str {
        match self {
            PluginKind::Collector => "collector",
            PluginKind::Stage => "stage",
            PluginKind::Sink => "sink",
        }
    }

    /// Every registered plugin of this kind, sorted by name.
    pub fn listed(self) -> Vec<Listing> {
        let mut all = match self {
            PluginKind::Collector => listings::<dyn Collector>(),
            PluginKind::Stage => listings::<dyn Stage>(),
            PluginKind::Sink => listings::<dyn Sink>(),
        };
        all.sort();
        all
    }

    /// Every registered plugin of this kind, as (name, summary), sorted by name.
    pub fn registered(self) -> Vec<(&'static str, &'static str)> {
        self.listed()
            .into_iter()
            .map(|l| (l.name, l.summary))
            .collect()
    }
}

/// Checks that no two plugins of one kind are registered under one name
/// (two crates linked into one binary may both register `docker`).
pub fn check_unique_names() -> Result<(), String> {
    for kind in PluginKind::ALL {
        let names: Vec<&str> = kind.listed().iter().map(|l| l.name).collect();
        if let Some(twice) = first_duplicate(&names) {
            return Err(duplicate_message(kind, twice));
        }
    }
    Ok(())
}

/// The first name listed twice in `sorted`.
fn first_duplicate<'a>(sorted: &[&'a str]) -> Option<&'a str> {
    sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

fn duplicate_message(kind: PluginKind, name: &str) -> String {
    format!(
        "two {} plugins are registered as `{name}`: link only one of them",
        kind.noun()
    )
}

/// The sample configuration of the plugin `name`, searched in every kind.
pub fn sample_of(name: &str) -> Option<(PluginKind, &'static str)> {
    PluginKind::ALL.into_iter().find_map(|kind| {
        kind.listed()
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| (kind, l.sample))
    })
}

/// Finds a registered collector type by name.
pub fn find_collector(name: &str) -> Option<&'static CollectorPlugin> {
    find::<dyn Collector>(name)
}

/// Finds a registered stage type by name.
pub fn find_stage(name: &str) -> Option<&'static StagePlugin> {
    find::<dyn Stage>(name)
}

/// Finds a registered sink type by name.
pub fn find_sink(name: &str) -> Option<&'static SinkPlugin> {
    find::<dyn Sink>(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn plugin_names_are_unique() {
        assert_eq!(check_unique_names(), Ok(()));
        assert_eq!(
            first_duplicate(&["docker", "docker", "nvml"]),
            Some("docker")
        );
        assert_eq!(first_duplicate(&["docker", "nvml"]), None);
        assert_eq!(
            duplicate_message(PluginKind::Collector, "docker"),
            "two collector plugins are registered as `docker`: link only one of them"
        );
    }

    /// A stage registered by this test module only: the API crate links no
    /// plugin of its own.
    struct Noop;

    impl Stage for Noop {
        fn run(&self, _: &mut Workset, _: &StageContext<'_>) -> Result<(), StageError> {
            Ok(())
        }
    }

    fn build_noop(_: PluginConfig<'_>) -> Result<Box<dyn Stage>, ConfigError> {
        Ok(Box::new(Noop))
    }

    inventory::submit! {
        StagePlugin {
            name: "test-noop",
            summary: "does nothing",
            sample: "[[stages.test-noop]]\n",
            build: build_noop,
        }
    }

    #[test]
    fn the_registries_share_one_shape() {
        let names: Vec<&str> = PluginKind::Stage.listed().iter().map(|l| l.name).collect();
        assert!(names.contains(&"test-noop"), "{names:?}");
        assert!(find::<dyn Stage>("test-noop").is_some());
        assert!(find::<dyn Collector>("test-noop").is_none());
        assert!(StageType("test-noop").is_registered());
        assert!(!StageType("test-nope").is_registered());
        let (kind, sample) = sample_of("test-noop").expect("a sample");
        assert_eq!(kind, PluginKind::Stage);
        assert_eq!(sample, "[[stages.test-noop]]\n");
        assert_eq!(sample_of("nope"), None);
    }

    #[test]
    fn a_state_reader_that_does_not_answer_is_given_up_at_the_deadline() {
        let (_tx, rx) = tokio::sync::oneshot::channel();
        let deadline = std::time::Instant::now() + Duration::from_millis(20);
        let previous = Previous::arriving(rx, Some(deadline));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let err = runtime.block_on(async { previous.result().await.err().map(|e| e.to_string()) });
        assert_eq!(err.as_deref(), Some("not read within the scan's deadline"));
    }

    #[test]
    fn a_wait_given_up_midway_leaves_the_state_to_the_next_caller() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let previous = Previous::arriving(rx, None);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            // A collector stops waiting (it failed, or ran over) before the
            // reader answers: the answer still reaches the cycle.
            let gave_up =
                tokio::time::timeout(Duration::from_millis(20), previous.scan_started()).await;
            assert!(gave_up.is_err());
            let inventory = Inventory {
                last_scan: "2026-11-26T08:00:00Z".parse().ok(),
                ..Inventory::default()
            };
            assert!(tx.send(Ok(Some(inventory))).is_ok());
            let read = previous.result().await.map(|i| i.last_scan);
            assert_eq!(
                read.ok().flatten().map(|t| t.to_string()).as_deref(),
                Some("2026-11-26T08:00:00Z")
            );
        });
    }

    #[test]
    fn the_previous_state_is_what_the_reader_sends() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let previous = Previous::arriving(rx, None);
        let inventory = Inventory {
            last_scan: "2026-11-26T08:00:00Z".parse().ok(),
            ..Inventory::default()
        };
        block_on(async {
            // Both wait for the reader; it answers from another thread.
            let reader = std::thread::spawn(move || tx.send(Ok(Some(inventory))).is_ok());
            let (a, b) = tokio::join!(previous.get(), previous.scan_started());
            assert!(reader.join().expect("reader"));
            assert_eq!(a.last_scan, "2026-11-26T08:00:00Z".parse().ok());
            assert_eq!(b.map(|t| t.unix_seconds()), Some(1_795_680_000));
            assert!(b.is_some());
            assert!(previous.result().await.is_ok());
        });
    }

    #[test]
    fn a_state_that_cannot_be_read_is_empty_and_an_error() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(tx
            .send(Err(StateError::Other("permission denied".to_string())))
            .is_ok());
        let previous = Previous::arriving(rx, None);
        block_on(async {
            assert!(previous.get().await.containers.is_empty());
            assert_eq!(previous.scan_started().await, None);
            assert_eq!(
                previous
                    .result()
                    .await
                    .err()
                    .map(|e| e.to_string())
                    .as_deref(),
                Some("permission denied")
            );
        });

        // A reader that stops without an answer is an error too, not "no state".
        let (tx, rx) = tokio::sync::oneshot::channel::<LoadResult>();
        drop(tx);
        let previous = Previous::arriving(rx, None);
        block_on(async {
            assert_eq!(
                previous
                    .result()
                    .await
                    .err()
                    .map(|e| e.to_string())
                    .as_deref(),
                Some("the state reader stopped")
            );
        });
        // None yet is no error.
        let previous = Previous::known(Inventory::default());
        block_on(async { assert!(previous.result().await.is_ok()) });
    }
}
