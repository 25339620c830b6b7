//! The three plugin kinds, their contracts, and the compile-time registry.
//!
//! A plugin is registered with one `inventory::submit!` of a [`CollectorPlugin`],
//! [`StagePlugin`] or [`SinkPlugin`]; the core finds it by name. Nothing in the
//! core names a plugin.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;
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
}

/// What a state load yields: the inventory, or why it could not be read.
pub type LoadResult = Result<Option<Inventory>, String>;

/// The previous inventory, possibly still being read (on another thread) while
/// the collectors start. [`Previous::get`] waits for it.
pub struct Previous {
    loaded: tokio::sync::OnceCell<Loaded>,
    pending: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<LoadResult>>>,
}

struct Loaded {
    inventory: Inventory,
    started: Option<i64>,
    error: Option<String>,
}

impl Loaded {
    fn new(result: LoadResult) -> Self {
        let (inventory, error) = match result {
            Ok(inventory) => (inventory.unwrap_or_default(), None),
            Err(e) => (Inventory::default(), Some(e)),
        };
        Loaded {
            started: crate::timefmt::parse_rfc3339(&inventory.last_scan),
            inventory,
            error,
        }
    }
}

impl Previous {
    /// An inventory already in memory (tests, tools; none yet: the default).
    pub fn known(inventory: Inventory) -> Self {
        Previous {
            loaded: tokio::sync::OnceCell::new_with(Some(Loaded::new(Ok(Some(inventory))))),
            pending: std::sync::Mutex::new(None),
        }
    }

    /// One that arrives on `result` (sent by the thread reading it).
    pub fn arriving(result: tokio::sync::oneshot::Receiver<LoadResult>) -> Self {
        Previous {
            loaded: tokio::sync::OnceCell::new(),
            pending: std::sync::Mutex::new(Some(result)),
        }
    }

    async fn loaded(&self) -> &Loaded {
        self.loaded
            .get_or_init(|| async {
                let pending = self.pending.lock().ok().and_then(|mut p| p.take());
                let result = match pending {
                    Some(rx) => rx
                        .await
                        .unwrap_or_else(|_| Err("the state reader stopped".to_string())),
                    None => Err("no state reader".to_string()),
                };
                Loaded::new(result)
            })
            .await
    }

    /// The previous inventory (empty when there is none, or when it could
    /// not be read: the cycle then fails after the collectors).
    pub async fn get(&self) -> &Inventory {
        &self.loaded().await.inventory
    }

    /// When the previous scan started (seconds since the epoch), if there was one.
    pub async fn scan_started(&self) -> Option<i64> {
        self.loaded().await.started
    }

    /// The previous inventory, or why it could not be read.
    pub async fn result(&self) -> Result<&Inventory, String> {
        let loaded = self.loaded().await;
        match &loaded.error {
            Some(e) => Err(e.clone()),
            None => Ok(&loaded.inventory),
        }
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
    /// Observes.
    async fn collect(&self, ctx: &CollectContext<'_>) -> Result<Collected, CollectError>;
}

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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StageError(pub String);

/// Turns observations into inventory entries: reads the observations and the
/// previous inventory, and changes only the [`Workset`].
pub trait Stage: Send + Sync {
    /// Stage types that must run before this one (when configured).
    fn after(&self) -> &'static [&'static str] {
        &[]
    }
    /// Does its work on the entries.
    fn run(&self, work: &mut Workset, ctx: &StageContext<'_>) -> Result<(), StageError>;
}

/// What a sink is handed at the end of a cycle.
pub struct ScanOutput<'a> {
    /// The new inventory.
    pub inventory: &'a Inventory,
    /// The transitions since the previous inventory.
    pub events: &'a [Event],
    /// The agent settings (for example the event `source`).
    pub agent: &'a AgentConfig,
}

/// Why a sink could not deliver.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// A held scan lock; released when dropped.
pub type LockGuard = Box<dyn Any + Send>;

/// Where the previous inventory lives between runs (the inventory file).
pub trait StateStore: Send + Sync {
    /// Where it is, for messages.
    fn location(&self) -> &Path;
    /// Reads the previous inventory: `Ok(None)` when there is none yet. A
    /// corrupt one is moved aside and reported as none.
    fn load(&self) -> Result<Option<Inventory>, String>;
    /// Takes the scan lock, waiting at most `wait`.
    fn lock(&self, wait: Duration) -> Result<LockGuard, String>;
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
}

/// Builds a plugin from its configuration table.
pub type BuildFn<T> = fn(PluginConfig<'_>) -> Result<Box<T>, ConfigError>;

/// A registered collector type.
pub struct CollectorPlugin {
    /// Type name, as in `[[collectors.NAME]]`.
    pub name: &'static str,
    /// One line for `detect-workloads plugins`.
    pub summary: &'static str,
    /// Builds an instance.
    pub build: BuildFn<dyn Collector>,
}

/// A registered stage type.
pub struct StagePlugin {
    /// Type name, as in `[[stages.NAME]]`.
    pub name: &'static str,
    /// One line for `detect-workloads plugins`.
    pub summary: &'static str,
    /// Builds an instance.
    pub build: BuildFn<dyn Stage>,
}

/// A registered sink type.
pub struct SinkPlugin {
    /// Type name, as in `[[sinks.NAME]]`.
    pub name: &'static str,
    /// One line for `detect-workloads plugins`.
    pub summary: &'static str,
    /// Builds an instance.
    pub build: BuildFn<dyn Sink>,
}

inventory::collect!(CollectorPlugin);
inventory::collect!(StagePlugin);
inventory::collect!(SinkPlugin);

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

impl PluginKind {
    /// The config section name.
    pub fn section(self) -> &'static str {
        match self {
            PluginKind::Collector => "collectors",
            PluginKind::Stage => "stages",
            PluginKind::Sink => "sinks",
        }
    }

    /// Every registered plugin of this kind, as (name, summary), sorted by name.
    pub fn registered(self) -> Vec<(&'static str, &'static str)> {
        let mut all: Vec<_> = match self {
            PluginKind::Collector => inventory::iter::<CollectorPlugin>
                .into_iter()
                .map(|p| (p.name, p.summary))
                .collect(),
            PluginKind::Stage => inventory::iter::<StagePlugin>
                .into_iter()
                .map(|p| (p.name, p.summary))
                .collect(),
            PluginKind::Sink => inventory::iter::<SinkPlugin>
                .into_iter()
                .map(|p| (p.name, p.summary))
                .collect(),
        };
        all.sort();
        all
    }
}

/// Finds a registered collector type by name.
pub fn find_collector(name: &str) -> Option<&'static CollectorPlugin> {
    inventory::iter::<CollectorPlugin>
        .into_iter()
        .find(|p| p.name == name)
}

/// Finds a registered stage type by name.
pub fn find_stage(name: &str) -> Option<&'static StagePlugin> {
    inventory::iter::<StagePlugin>
        .into_iter()
        .find(|p| p.name == name)
}

/// Finds a registered sink type by name.
pub fn find_sink(name: &str) -> Option<&'static SinkPlugin> {
    inventory::iter::<SinkPlugin>
        .into_iter()
        .find(|p| p.name == name)
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
    fn the_previous_state_is_what_the_reader_sends() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let previous = Previous::arriving(rx);
        let inventory = Inventory {
            last_scan: "2026-11-26T08:00:00Z".to_string(),
            ..Inventory::default()
        };
        block_on(async {
            // Both wait for the reader; it answers from another thread.
            let reader = std::thread::spawn(move || tx.send(Ok(Some(inventory))).is_ok());
            let (a, b) = tokio::join!(previous.get(), previous.scan_started());
            assert!(reader.join().expect("reader"));
            assert_eq!(a.last_scan, "2026-11-26T08:00:00Z");
            assert_eq!(b, crate::timefmt::parse_rfc3339("2026-11-26T08:00:00Z"));
            assert!(b.is_some());
            assert!(previous.result().await.is_ok());
        });
    }

    #[test]
    fn a_state_that_cannot_be_read_is_empty_and_an_error() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(tx.send(Err("permission denied".to_string())).is_ok());
        let previous = Previous::arriving(rx);
        block_on(async {
            assert!(previous.get().await.containers.is_empty());
            assert_eq!(previous.scan_started().await, None);
            assert_eq!(
                previous.result().await.err().as_deref(),
                Some("permission denied")
            );
        });

        // A reader that stops without an answer is an error too, not "no state".
        let (tx, rx) = tokio::sync::oneshot::channel::<LoadResult>();
        drop(tx);
        let previous = Previous::arriving(rx);
        block_on(async {
            assert_eq!(
                previous.result().await.err().as_deref(),
                Some("the state reader stopped")
            );
        });
        // None yet is no error.
        let previous = Previous::known(Inventory::default());
        block_on(async { assert!(previous.result().await.is_ok()) });
    }
}
