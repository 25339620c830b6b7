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

use super::replay::{observes_containers, Replaying};
use super::schedule::Job;
use super::{feeds, Notice};

/// A running configuration.
pub struct Service {
    config: Config,
    replays: Vec<Arc<Replaying>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Service {
    /// Wraps `config`'s container collectors; starts nothing yet.
    pub fn new(mut config: Config) -> Service {
        let mut replays = Vec::new();
        for c in &mut config.collectors {
            if observes_containers(c.plugin.as_ref()) {
                let wrapped = Arc::new(Replaying::new(Arc::clone(&c.plugin)));
                c.plugin = wrapped.clone();
                replays.push(wrapped);
            }
        }
        Service {
            config,
            replays,
            tasks: Vec::new(),
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

    /// Follows the change streams and starts the sinks' services.
    pub fn start(&mut self, runtime: &tokio::runtime::Runtime, tx: &UnboundedSender<Notice>) {
        for c in &self.config.collectors {
            if observes_containers(c.plugin.as_ref()) {
                let follow = feeds::follow(c.name.clone(), Arc::clone(&c.plugin), tx.clone());
                self.tasks.push(runtime.spawn(follow));
            }
        }
        for s in self.config.delivery_sinks() {
            let Some(service) = s.plugin.service() else {
                continue;
            };
            let name = s.name.clone();
            self.tasks.push(runtime.spawn(async move {
                if let Err(e) = service.await {
                    error!(sink = %name, "stopped serving: {e}");
                }
            }));
        }
    }

    /// Runs one cycle; a failed one is logged (the service goes on).
    pub fn run(&self, job: Job, runtime: &tokio::runtime::Runtime) -> Option<ScanResult> {
        for r in &self.replays {
            r.set_replay(job == Job::Gpu);
        }
        match run_cycle(&self.config, runtime) {
            Ok(result) => Some(result),
            Err(e) => {
                warn!("{job:?} scan failed: {e}");
                None
            }
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
