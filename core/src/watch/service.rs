//! One loaded configuration running in watch mode: its container collectors
//! wrapped to be replayed on GPU polls, the change streams followed and the
//! sinks' services (the `/metrics` listener) running. Dropping it stops the
//! tasks (a reload starts the new configuration's).

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tracing::{error, warn};

use crate::config::Config;
use crate::cycle::{run_cycle, ScanResult};
use detect_workloads_api::model::Inventory;
use detect_workloads_api::plugin::{Listeners, SinkError};

use super::probe::{lists_gpu_processes, Listed, Probed};
use super::replay::{observes_containers, Replaying};
use super::schedule::Job;
use super::{feeds, Notice};
use detect_workloads_api::plugin::Collector as _;

/// A running configuration.
pub struct Service {
    config: Config,
    replays: Vec<Arc<Replaying>>,
    /// The GPU collectors (type, wrapped), fallbacks included.
    probes: Vec<(&'static str, Arc<Probed>)>,
    /// What the probes listed before the last GPU poll's cycle, when that
    /// cycle succeeded with nothing pending; `None` forces the next cycle.
    settled: std::sync::Mutex<Option<Vec<Listed>>>,
    /// What the probes are told of the previous reading: the GPUs of the
    /// last cycle's inventory, where its readings of per-process samples
    /// ended (as the cycle would read them from the state it wrote).
    previous: std::sync::Mutex<Inventory>,
    tasks: Vec<JoinHandle<()>>,
    /// The sinks' listening sockets (handed to the next configuration).
    listeners: Listeners,
}

impl Service {
    /// Wraps `config`'s container collectors; starts nothing yet.
    pub fn new(mut config: Config) -> Service {
        let (mut replays, mut probes) = (Vec::new(), Vec::new());
        for c in &mut config.collectors {
            if observes_containers(c.plugin.as_ref()) {
                let wrapped = Arc::new(Replaying::new(Arc::clone(&c.plugin)));
                c.plugin = wrapped.clone();
                replays.push(wrapped);
            } else if lists_gpu_processes(c.plugin.as_ref()) {
                let wrapped = Arc::new(Probed::new(Arc::clone(&c.plugin)));
                c.plugin = wrapped.clone();
                probes.push((c.kind, wrapped));
            }
        }
        Service {
            config,
            replays,
            probes,
            settled: std::sync::Mutex::new(None),
            previous: std::sync::Mutex::new(Inventory::default()),
            tasks: Vec::new(),
            listeners: Listeners::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The wrapped container collectors.
    pub fn replays(&self) -> &[Arc<Replaying>] {
        &self.replays
    }

    /// Starts the sinks' services, then follows the change streams. The
    /// services get their listeners first: from `running` (the configuration
    /// this one replaces) where it had the same address, else bound now. An
    /// address that cannot be bound is an error, and nothing is started.
    pub fn start(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        tx: &UnboundedSender<Notice>,
        running: Option<&Service>,
    ) -> Result<(), SinkError> {
        let _inside = runtime.enter();
        let mut listeners =
            running.map_or_else(Listeners::default, |r| Listeners::handed_over(&r.listeners));
        let mut services = Vec::new();
        for s in self.config.delivery_sinks() {
            match s.plugin.service(&mut listeners) {
                Ok(Some(service)) => services.push((s.name.clone(), service)),
                Ok(None) => {}
                Err(e) => return Err(SinkError::new(format!("sink {}: {e}", s.name))),
            }
        }
        self.listeners = listeners;
        for (name, service) in services {
            self.tasks.push(runtime.spawn(async move {
                if let Err(e) = service.await {
                    error!(sink = %name, "stopped serving: {e}");
                }
            }));
        }
        for c in &self.config.collectors {
            if observes_containers(c.plugin.as_ref()) {
                let follow = feeds::follow(c.name.clone(), Arc::clone(&c.plugin), tx.clone());
                self.tasks.push(runtime.spawn(follow));
            }
        }
        Ok(())
    }

    /// The addresses its sinks listen on.
    pub fn listening(&self) -> Vec<std::net::SocketAddr> {
        self.listeners.addresses()
    }

    /// Runs one cycle; a failed one is logged (the service goes on). A GPU
    /// poll whose GPU collectors list what they listed at the previous one,
    /// with nothing pending, is skipped ([`Outcome::Unchanged`]).
    pub fn run(&self, job: Job, runtime: &tokio::runtime::Runtime) -> Outcome {
        for r in &self.replays {
            r.set_replay(job == Job::Gpu);
        }
        let listed = (job == Job::Gpu && !self.probes.is_empty())
            .then(|| runtime.block_on(self.probe_all()));
        if listed.is_some() && *self.lock_settled() == listed {
            self.forget_all();
            return Outcome::Unchanged;
        }
        let result = run_cycle(&self.config, runtime);
        self.forget_all();
        let settled = match &result {
            Ok(r) if r.inventory.pending_processes.is_empty() => listed,
            _ => None,
        };
        *self.lock_settled() = settled;
        if let Ok(r) = &result {
            *self.lock_previous() = Inventory {
                gpus: r.inventory.gpus.clone(),
                ..Inventory::default()
            };
        }
        match result {
            Ok(result) => Outcome::Ran(Box::new(result)),
            Err(e) => {
                warn!("{job:?} scan failed: {e}");
                Outcome::Failed
            }
        }
    }

    /// Asks the GPU collectors the cycle would ask: every primary (at once),
    /// then each fallback unless every instance of the type it stands in
    /// for answered (as the cycle skips it). What each listed, in order.
    async fn probe_all(&self) -> Vec<Listed> {
        let previous = self.lock_previous().clone();
        let primaries: Vec<&(&'static str, Arc<Probed>)> = self
            .probes
            .iter()
            .filter(|(_, p)| p.fallback_for().is_none())
            .collect();
        let answers =
            futures_util::future::join_all(primaries.iter().map(|(_, p)| p.probe(&previous))).await;
        let mut listed = Vec::with_capacity(self.probes.len());
        let mut answered: Vec<(&str, bool)> = Vec::new();
        for ((kind, _), answer) in primaries.iter().zip(answers) {
            answered.push((kind, matches!(answer, Listed::Ok { .. })));
            listed.push(answer);
        }
        for (_, fallback) in &self.probes {
            let Some(primary) = fallback.fallback_for() else {
                continue;
            };
            let mut of_type = answered.iter().filter(|(k, _)| *k == primary).peekable();
            let skipped = of_type.peek().is_some() && of_type.all(|(_, ok)| *ok);
            if !skipped {
                listed.push(fallback.probe(&previous).await);
            }
        }
        listed
    }

    fn forget_all(&self) {
        self.probes.iter().for_each(|(_, p)| p.forget());
    }

    fn lock_previous(&self) -> std::sync::MutexGuard<'_, Inventory> {
        self.previous
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_settled(&self) -> std::sync::MutexGuard<'_, Option<Vec<Listed>>> {
        self.settled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What [`Service::run`] did.
#[derive(Debug)]
pub enum Outcome {
    /// The cycle ran and was written.
    Ran(Box<ScanResult>),
    /// A GPU poll found nothing new: no cycle.
    Unchanged,
    /// The cycle failed (logged).
    Failed,
}

impl Outcome {
    /// The cycle's result, when one ran.
    pub fn ran(self) -> Option<ScanResult> {
        match self {
            Outcome::Ran(r) => Some(*r),
            _ => None,
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
