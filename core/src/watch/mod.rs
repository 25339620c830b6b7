//! `detect-workloads watch`: the scan cycle, long-lived.
//!
//! A full scan at start, every `[agent] interval` and [`schedule::DEBOUNCE`]
//! after the engine reports a container create, start, die or destroy; a
//! GPU poll every `[agent] gpu_interval` that reuses the containers of the
//! last full scan ([`replay`]). Each is one [`crate::cycle::run_cycle`]: the
//! same lock, inventory and events as a oneshot scan. SIGTERM and SIGINT
//! stop the loop once the current cycle is written (exit 0); SIGHUP
//! reloads the configuration, keeping the running one when the new one is
//! invalid or its listeners cannot be bound (an address both use is handed
//! over, never released). A full scan that fails, or in which a collector
//! fails (not one unavailable on this machine), is tried again after 0.5 s,
//! doubling to 30 s ([`backoff`]), until one succeeds. At start the soft
//! descriptor limit is raised to the hard one.
//!
//! The loop runs on the main thread; the signal handlers, the change
//! streams and the sinks' services are tasks on the runtime that wake it
//! through one channel ([`Notice`]).

pub mod backoff;
pub mod feeds;
pub mod probe;
pub mod replay;
pub mod schedule;
pub mod service;
pub mod signals;

#[cfg(test)]
mod tests;

use std::process::ExitCode;
use std::time::Instant;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracing::{error, info};

use crate::config::Config;
use detect_workloads_api::plugin::SinkError;

use backoff::Backoff;
use schedule::{Job, Schedule};
use service::{Outcome, Service};

/// What wakes the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// A source reported a change.
    Changed,
    /// Reload the configuration (SIGHUP).
    Reload,
    /// Stop after the current cycle (the signal's name).
    Stop(&'static str),
}

/// Where the configuration comes from, for reloads.
#[derive(Debug, Clone)]
pub struct Source {
    /// Where the configuration comes from (read again on SIGHUP).
    pub config: crate::config::ConfigSource,
    /// What the command line changes (`--sink`, `--dry-run`, `--format`),
    /// applied again at each reload.
    pub overrides: crate::config::Overrides,
}

impl Source {
    fn load(&self) -> Result<Config, crate::config::ConfigError> {
        Config::load_from(&self.config, &self.overrides)
    }
}

/// Runs watch mode until SIGTERM or SIGINT.
pub fn main(source: Source) -> ExitCode {
    let config = match source.load() {
        Ok(config) => config,
        Err(e) => {
            error!("invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    raise_descriptor_limit();
    let (tx, rx) = unbounded_channel();
    if let Err(e) = signals::listen(&runtime, tx.clone()) {
        error!("cannot install the signal handlers: {e}");
        return ExitCode::from(1);
    }
    let watch = match Loop::new(source, config, &runtime, tx, rx) {
        Ok(watch) => watch,
        Err(e) => {
            error!("cannot start: {e}");
            runtime.shutdown_background();
            return ExitCode::from(1);
        }
    };
    let stopped_by = watch.run();
    info!("{stopped_by}: stopping");
    // A collector abandoned on a blocking thread must not keep the process alive.
    runtime.shutdown_background();
    ExitCode::SUCCESS
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: the scans open files
/// and sockets, and the `/metrics` listener's connections are capped well
/// below either limit.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!("open files limit raised from {soft} to {hard}"),
            Err(e) => tracing::warn!("cannot raise the open files limit from {soft}: {e}"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open files limit: {e}"),
    }
}

/// The watch loop's state.
struct Loop<'r> {
    source: Source,
    service: Service,
    schedule: Schedule,
    /// The wait before a failed full scan is tried again.
    retry: Backoff,
    runtime: &'r tokio::runtime::Runtime,
    tx: UnboundedSender<Notice>,
    rx: UnboundedReceiver<Notice>,
}

impl<'r> Loop<'r> {
    fn new(
        source: Source,
        config: Config,
        runtime: &'r tokio::runtime::Runtime,
        tx: UnboundedSender<Notice>,
        rx: UnboundedReceiver<Notice>,
    ) -> Result<Self, SinkError> {
        let schedule = schedule_of(&config);
        let mut service = Service::new(config);
        service.start(runtime, &tx, None)?;
        Ok(Loop {
            source,
            service,
            schedule,
            retry: Backoff::default(),
            runtime,
            tx,
            rx,
        })
    }

    /// Runs jobs as they fall due, until a stop notice; returns its signal.
    fn run(mut self) -> &'static str {
        info!(
            "watching: full scan every {}, GPU poll every {}",
            humantime::format_duration(self.service.config().agent.interval),
            humantime::format_duration(self.service.config().agent.gpu_interval)
        );
        loop {
            if let Some(job) = self.schedule.take(Instant::now()) {
                let outcome = self.service.run(job, self.runtime);
                if let Job::Full(_) = job {
                    if needs_retry(&outcome) {
                        let wait = self.retry.next_wait();
                        info!(
                            "full scan incomplete: trying again in {}",
                            humantime::format_duration(wait)
                        );
                        self.schedule.retry(Instant::now() + wait);
                    } else {
                        self.retry.reset();
                    }
                }
            }
            // Every notice that arrived during the job, then wait for the next one.
            let wake = tokio::time::Instant::from_std(self.schedule.next_wake());
            let notice = self.runtime.block_on(async {
                tokio::time::timeout_at(wake, self.rx.recv())
                    .await
                    .ok()
                    .flatten()
            });
            match notice {
                Some(Notice::Stop(signal)) => return signal,
                Some(Notice::Changed) => self.schedule.changed(Instant::now()),
                Some(Notice::Reload) => self.reload(),
                None => {}
            }
        }
    }

    /// SIGHUP: the new configuration replaces the running one and a full
    /// scan follows; an invalid one is logged and the running one kept.
    fn reload(&mut self) {
        match self.source.load() {
            Ok(config) => {
                let origin = config.origin.clone();
                let schedule = schedule_of(&config);
                let mut next = Service::new(config);
                // The new listeners are bound (or handed over) while the old
                // ones still serve; only then are the old tasks stopped.
                match next.start(self.runtime, &self.tx, Some(&self.service)) {
                    Ok(()) => {
                        info!("configuration reloaded from {origin}");
                        self.schedule = schedule;
                        self.service = next;
                        self.retry.reset();
                    }
                    Err(e) => error!(
                        "cannot apply the reloaded configuration, keeping the running one: {e}"
                    ),
                }
            }
            Err(e) => error!("invalid configuration, keeping the running one: {e}"),
        }
    }
}

/// Whether a full scan must be tried again: it failed, or a collector in it
/// failed for another reason than not being on this machine.
fn needs_retry(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Failed => true,
        Outcome::Unchanged => false,
        Outcome::Ran(result) => result
            .inventory
            .scan
            .as_ref()
            .is_some_and(|scan| scan.collectors.values().any(|r| !r.ok && !r.unavailable)),
    }
}

fn schedule_of(config: &Config) -> Schedule {
    Schedule::new(
        Instant::now(),
        config.agent.interval,
        config.agent.gpu_interval,
    )
}
