//! A GPU collector in watch mode, asked once before a GPU poll's cycle: when
//! it lists exactly what it listed at the previous poll and nothing is
//! pending, the poll's cycle is skipped (nothing to confirm or end; the
//! inventory is written on the next change or full scan). Otherwise the
//! cycle runs and is handed the answer already given, instead of asking twice.
//! The fallbacks are asked too, where the cycle would run them (their
//! primary failed): with NVML absent, the `nvidia-smi` fallback's answer is
//! what tells a poll that something changed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use detect_workloads_api::model::{FactKind, GpuDevice, GpuProcess, Inventory, Observations};
use detect_workloads_api::plugin::{
    Change, ChangeFeed, CollectContext, CollectError, Collected, Collector, HeadStart, Previous,
};
use detect_workloads_api::users::UserNames;

type Answer = Result<Collected, CollectError>;

/// What a probed collector answered, compared by value with the previous
/// poll's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Listed {
    /// The processes and GPUs it listed.
    Ok {
        /// The GPU processes.
        processes: Vec<GpuProcess>,
        /// The GPUs.
        gpus: Vec<GpuDevice>,
    },
    /// Why it failed.
    Failed(String),
}

/// Wraps a GPU collector; see the module's documentation.
pub struct Probed {
    inner: Arc<dyn Collector>,
    answer: Mutex<Option<Answer>>,
}

impl Probed {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Collector>) -> Self {
        Probed {
            inner,
            answer: Mutex::new(None),
        }
    }

    /// Asks the collector now (bounded by its timeout), with `previous` as
    /// the previous reading (the cycle hands its answer on as its own, so it
    /// must be what the cycle would have asked: NVML reads the samples after
    /// the previous reading's); keeps the answer for the cycle and returns
    /// what it listed, or why it failed.
    pub async fn probe(&self, previous: &Inventory) -> Listed {
        let previous = Previous::known(previous.clone());
        let (observed, users) = (Observations::default(), UserNames::new());
        let ctx = CollectContext {
            previous: &previous,
            observed: &observed,
            users: &users,
            head_start: None,
        };
        let answer = tokio::time::timeout(self.inner.timeout(), self.inner.collect(&ctx))
            .await
            .unwrap_or_else(|_| Err(CollectError::Failed("probe timed out".into())));
        let listed = match &answer {
            Ok(c) => Listed::Ok {
                processes: c.observations.gpu_processes.clone(),
                gpus: c.observations.gpus.clone(),
            },
            Err(e) => Listed::Failed(e.to_string()),
        };
        self.keep(Some(answer));
        listed
    }

    /// Forgets a kept answer (after the cycle, or when it is skipped).
    pub fn forget(&self) {
        self.keep(None);
    }

    fn keep(&self, answer: Option<Answer>) {
        if let Ok(mut kept) = self.answer.lock() {
            *kept = answer;
        }
    }

    fn take(&self) -> Option<Answer> {
        self.answer.lock().ok().and_then(|mut a| a.take())
    }
}

#[async_trait]
impl Collector for Probed {
    fn provides(&self) -> &'static [FactKind] {
        self.inner.provides()
    }

    fn needs(&self) -> &'static [FactKind] {
        self.inner.needs()
    }

    fn timeout(&self) -> Duration {
        self.inner.timeout()
    }

    fn fallback_for(&self) -> Option<&str> {
        self.inner.fallback_for()
    }

    async fn head_start(&self, ctx: &CollectContext<'_>) -> Option<HeadStart> {
        self.inner.head_start(ctx).await
    }

    async fn collect(&self, ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        match self.take() {
            Some(answer) => answer,
            None => self.inner.collect(ctx).await,
        }
    }

    fn changes(&self, since: Option<Change>) -> Option<ChangeFeed> {
        self.inner.changes(since)
    }
}

/// Whether a collector lists GPU processes (and is probed before GPU polls):
/// a primary source or a fallback (`nvidia-smi` where NVML is absent).
pub fn lists_gpu_processes(c: &dyn Collector) -> bool {
    c.provides().contains(&FactKind::GpuProcesses) && c.needs().is_empty()
}
