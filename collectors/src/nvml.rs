//! Collector `nvml`: the processes holding GPU memory, read from the NVIDIA
//! Management Library through `nvml-wrapper`.
//!
//! Observes, for every GPU: its compute and graphics processes (PID, used
//! memory in MiB, GPU UUID) and their SM utilisation when the driver samples
//! it. On a GPU in MIG mode the processes are read from each MIG device, with
//! the MIG device's UUID and its GPU and compute instance ids.
//!
//! Needs: the NVML library (`libnvidia-ml.so.1`, `dlopen`ed at run time from
//! the `library` setting) and a loaded NVIDIA driver. Without them it is
//! *unavailable* (a warning, and the `nvidia-smi` fallback runs); it never
//! makes the program fail to start. All NVML calls run on a blocking thread,
//! because a wedged driver can make them hang: the core's timeout then abandons
//! that thread.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::mem::ManuallyDrop;
use std::os::raw::c_uint;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detect_workloads_api::async_trait;
use detect_workloads_api::config::{duration, ConfigError, PluginConfig};
use detect_workloads_api::model::{FactKind, GpuDevice, GpuProcess, Observations};
use detect_workloads_api::plugin::{
    CollectContext, CollectError, Collected, Collector, CollectorPlugin,
};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::{ProcessInfo, ProcessUtilizationSample};
use nvml_wrapper::{Device, Nvml};
use serde::Deserialize;
use tracing::debug;

/// `nvmlDeviceGetMigMode`'s "enabled" (`NVML_DEVICE_MIG_ENABLE`).
const MIG_ENABLED: u32 = 1;
/// Bytes in a MiB: NVML reports bytes, the inventory MiB.
const MIB: u64 = 1024 * 1024;

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample nvml`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[collectors.nvml]]
library = "libnvidia-ml.so.1"   # dlopen'ed at run time; absent: said once at INFO, the scan goes on
timeout = "5s"
"#;

/// `[[collectors.nvml]]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct NvmlConfig {
    /// The NVML library to load: a file name looked up by the dynamic loader,
    /// or a path.
    pub library: String,
    /// How long one collection may take.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for NvmlConfig {
    fn default() -> Self {
        Self {
            library: "libnvidia-ml.so.1".to_string(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The `nvml` collector.
///
/// NVML is initialised at the first collection, on the blocking thread that
/// does the work, and the session is kept open for the next ones: watch
/// mode polls every `gpu_interval`, and initialising costs far more than a
/// process query on an open handle. After any error the session is closed,
/// so the next collection opens a fresh one (a driver reloaded in between
/// is noticed then). A oneshot scan collects once; its session closes when
/// the process ends.
pub struct NvmlCollector {
    config: NvmlConfig,
    /// The open session; locked by the one collection using it.
    session: Arc<Mutex<Option<Session>>>,
    /// Sessions opened so far (the `sessions_opened` counter).
    opened: Arc<AtomicU64>,
}

impl std::fmt::Debug for NvmlCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlCollector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl NvmlCollector {
    /// Builds it from its configuration.
    pub fn new(config: NvmlConfig) -> Self {
        Self {
            config,
            session: Arc::new(Mutex::new(None)),
            opened: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// One collection on the kept session: opens it when there is none, and
/// closes it after an error (the next collection opens a fresh one).
fn collect_on(
    library: &str,
    session: &Mutex<Option<Session>>,
    opened: &AtomicU64,
    since: &BTreeMap<String, u64>,
) -> Result<Collected, CollectError> {
    // A collection abandoned at its timeout may still hold it, hung in the driver.
    let mut guard = session.try_lock().map_err(|_| {
        CollectError::Failed(format!(
            "NVML ({library}): the previous query has not returned yet"
        ))
    })?;
    let started = std::time::Instant::now();
    if guard.is_none() {
        *guard = Some(open(library)?);
        opened.fetch_add(1, Ordering::Relaxed);
    }
    let init_us = started.elapsed().as_micros() as u64;
    let Some(open_session) = guard.as_ref() else {
        return Err(CollectError::Failed("NVML session vanished".into()));
    };
    let result = query(library, &open_session.0, init_us, since);
    match result {
        Ok(mut collected) => {
            collected
                .stats
                .insert("sessions_opened".into(), opened.load(Ordering::Relaxed));
            Ok(collected)
        }
        Err(e) => {
            // A driver error: start afresh next time.
            *guard = None;
            Err(e)
        }
    }
}

#[async_trait]
impl Collector for NvmlCollector {
    fn provides(&self) -> &'static [FactKind] {
        &[FactKind::GpuProcesses]
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    fn describe(&self) -> String {
        format!(
            "library {}, timeout {}",
            self.config.library,
            detect_workloads_api::config::human_duration(self.config.timeout)
        )
    }

    async fn collect(&self, ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        let library = self.config.library.clone();
        let (session, opened) = (Arc::clone(&self.session), Arc::clone(&self.opened));
        // Where the previous reading of each GPU's samples ended.
        let since: BTreeMap<String, u64> = ctx
            .previous
            .get()
            .await
            .gpus
            .values()
            .filter_map(|g| Some((g.uuid.clone(), g.samples_until_us?)))
            .collect();
        // If the core's timeout drops this future, the thread is left to
        // finish (or hang) on its own; nothing waits for it.
        let task =
            tokio::task::spawn_blocking(move || collect_on(&library, &session, &opened, &since));
        match task.await {
            Ok(result) => {
                if let Err(e) = &result {
                    debug!(library = %self.config.library, "nvml: {e}");
                }
                result
            }
            Err(e) if e.is_panic() => Err(CollectError::Failed(format!(
                "NVML query through {} panicked",
                self.config.library
            ))),
            Err(e) => Err(CollectError::Failed(format!(
                "NVML query through {} did not finish: {e}",
                self.config.library
            ))),
        }
    }
}

/// An initialised NVML, shut down when dropped.
///
/// `nvml-wrapper` calls `nvmlShutdown` from its `Drop` without checking that
/// the library exports it, and panics when it does not; such a library is
/// left loaded instead.
struct Session(ManuallyDrop<Nvml>);

impl Drop for Session {
    fn drop(&mut self) {
        if self.0.lib().nvmlShutdown.is_ok() {
            // SAFETY: dropped once, here, and never used again.
            unsafe { ManuallyDrop::drop(&mut self.0) };
        } else {
            debug!("the NVML library has no nvmlShutdown; leaving it loaded");
        }
    }
}

/// Loads and initialises NVML from `library`.
fn open(library: &str) -> Result<Session, CollectError> {
    Nvml::builder()
        .lib_path(OsStr::new(library))
        .init()
        .map(|nvml| Session(ManuallyDrop::new(nvml)))
        .map_err(|e| init_error(library, e))
}

/// What a failed initialisation means for the scan.
fn init_error(library: &str, e: NvmlError) -> CollectError {
    match e {
        NvmlError::LibloadingError(e) => {
            // The loader's message usually names the file already.
            let e = e.to_string();
            if e.contains(library) {
                CollectError::Unavailable(format!("cannot load the NVML library: {e}"))
            } else {
                CollectError::Unavailable(format!("cannot load the NVML library {library}: {e}"))
            }
        }
        NvmlError::FailedToLoadSymbol(e) => CollectError::Unavailable(format!(
            "{library} is not a usable NVML library: {e}"
        )),
        NvmlError::DriverNotLoaded => CollectError::Unavailable(format!(
            "the NVIDIA driver is not loaded (NVML library {library})"
        )),
        NvmlError::NoPermission => CollectError::Unavailable(format!(
            "no permission to talk to the NVIDIA driver (NVML library {library})"
        )),
        NvmlError::LibraryNotFound => CollectError::Unavailable(format!(
            "NVML ({library}) could not find a library it needs"
        )),
        NvmlError::LibRmVersionMismatch => CollectError::Unavailable(format!(
            "the NVML library {library} does not match the loaded NVIDIA driver (reboot pending after a driver update?)"
        )),
        other => CollectError::Failed(format!(
            "NVML initialisation failed (library {library}): {other}"
        )),
    }
}

/// An error of one NVML call after initialisation.
fn call_error(library: &str, what: &str, e: NvmlError) -> CollectError {
    match e {
        NvmlError::FailedToLoadSymbol(_) => CollectError::Failed(format!(
            "NVML ({library}): {what}: the library does not export this function (a driver older than this program needs?)"
        )),
        e => CollectError::Failed(format!("NVML ({library}): {what}: {e}")),
    }
}

/// Does all the NVML work of one collection (on a blocking thread).
fn query(
    library: &str,
    nvml: &Nvml,
    init_us: u64,
    since: &BTreeMap<String, u64>,
) -> Result<Collected, CollectError> {
    let queried = std::time::Instant::now();
    let fail = |what: &str| {
        let what = what.to_string();
        move |e| call_error(library, &what, e)
    };

    let count = nvml.device_count().map_err(fail("nvmlDeviceGetCount_v2"))?;
    let mut found = Vec::new();
    let mut gpus = Vec::new();
    let mut mig_devices = 0u64;
    for index in 0..count {
        let gpu = nvml
            .device_by_index(index)
            .map_err(fail(&format!("GPU {index}: nvmlDeviceGetHandleByIndex_v2")))?;
        let gpu_uuid = gpu
            .uuid()
            .map_err(fail(&format!("GPU {index}: nvmlDeviceGetUUID")))?;
        let gpu_label = format!("GPU {index} ({gpu_uuid})");
        let mut device = describe(&gpu, index, &gpu_uuid);
        let after = since.get(&gpu_uuid).copied();
        let (sm_util, until) = sm_util_since(&gpu, &gpu_uuid, after);
        device.samples_until_us = until;
        gpus.push(device);

        if !mig_enabled(&gpu).map_err(fail(&format!("{gpu_label}: nvmlDeviceGetMigMode")))? {
            for p in processes_of(&gpu)
                .map_err(|(call, e)| call_error(library, &format!("{gpu_label}: {call}"), e))?
            {
                found.push(gpu_process(
                    &p,
                    &gpu_uuid,
                    None,
                    (None, None),
                    sm_util.as_ref(),
                ));
            }
            continue;
        }

        let slots = gpu.mig_device_count().map_err(fail(&format!(
            "{gpu_label}: nvmlDeviceGetMaxMigDeviceCount"
        )))?;
        for slot in 0..slots {
            let mig = match gpu.mig_device_by_index(slot) {
                Ok(mig) => mig,
                // An empty slot.
                Err(NvmlError::NotFound) => continue,
                Err(e) => {
                    return Err(call_error(
                        library,
                        &format!(
                            "{gpu_label}: MIG slot {slot}: nvmlDeviceGetMigDeviceHandleByIndex"
                        ),
                        e,
                    ))
                }
            };
            mig_devices += 1;
            let mig_uuid = mig.uuid().map_err(fail(&format!(
                "{gpu_label}: MIG slot {slot}: nvmlDeviceGetUUID"
            )))?;
            let processes = processes_of(&mig).map_err(|(call, e)| {
                call_error(
                    library,
                    &format!("{gpu_label}: MIG device {mig_uuid}: {call}"),
                    e,
                )
            })?;
            if processes.is_empty() {
                continue;
            }
            let ids = (
                instance_id(nvml, &mig, InstanceId::Gpu),
                instance_id(nvml, &mig, InstanceId::Compute),
            );
            // No per-process samples on MIG: unknown, not the GPU's.
            for p in processes {
                found.push(gpu_process(&p, &gpu_uuid, Some(&mig_uuid), ids, None));
            }
        }
    }

    let stats = BTreeMap::from([
        ("gpus".to_string(), u64::from(count)),
        ("mig_devices".to_string(), mig_devices),
        ("processes".to_string(), found.len() as u64),
        // Loading and initialising the library (0 on a kept session) vs. the queries.
        ("init_us".to_string(), init_us),
        ("query_us".to_string(), queried.elapsed().as_micros() as u64),
    ]);
    Ok(Collected {
        observations: Observations {
            gpu_processes: found,
            gpus,
            ..Observations::default()
        },
        stats,
    })
}

/// Name, memory and utilisation of a GPU, for people's views. Each is best
/// effort: a driver that does not answer one leaves it out, and the scan
/// goes on (the processes are what the inventory is for).
fn describe(gpu: &Device<'_>, index: u32, uuid: &str) -> GpuDevice {
    let memory = gpu
        .memory_info()
        .map_err(|e| debug!(gpu = %uuid, "no memory info: {e}"));
    let util = gpu
        .utilization_rates()
        .map_err(|e| debug!(gpu = %uuid, "no utilisation: {e}"));
    GpuDevice {
        uuid: uuid.to_string(),
        index,
        name: gpu.name().unwrap_or_default(),
        memory_used_mb: memory.as_ref().ok().map(|m| m.used / MIB),
        memory_total_mb: memory.as_ref().ok().map(|m| m.total / MIB),
        utilization_pct: util.ok().map(|u| u.gpu),
        // Set by the caller once the samples are read.
        samples_until_us: None,
    }
}

/// Whether the GPU is in MIG mode now. A GPU (or driver) without MIG is not.
fn mig_enabled(gpu: &Device<'_>) -> Result<bool, NvmlError> {
    match gpu.mig_mode() {
        Ok(mode) => Ok(mode.current == MIG_ENABLED),
        Err(NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The compute and graphics processes of a GPU or MIG device, one per PID.
/// On error, the NVML function that failed.
fn processes_of(device: &Device<'_>) -> Result<Vec<ProcessInfo>, (&'static str, NvmlError)> {
    let compute = device
        .running_compute_processes()
        .map_err(|e| ("nvmlDeviceGetComputeRunningProcesses_v3", e))?;
    let graphics = match device.running_graphics_processes() {
        Ok(list) => list,
        // MIG devices and compute-only boards have no graphics contexts.
        Err(NvmlError::NotSupported) => Vec::new(),
        Err(e) => return Err(("nvmlDeviceGetGraphicsRunningProcesses_v3", e)),
    };
    Ok(merge_by_pid(compute.into_iter().chain(graphics)))
}

/// One entry per PID, in first-seen order. A process listed twice (compute
/// and graphics) keeps the larger known memory figure and the instance ids
/// that are set.
fn merge_by_pid(processes: impl IntoIterator<Item = ProcessInfo>) -> Vec<ProcessInfo> {
    let mut merged: Vec<ProcessInfo> = Vec::new();
    for p in processes {
        match merged.iter_mut().find(|m| m.pid == p.pid) {
            None => merged.push(p),
            Some(m) => {
                m.used_gpu_memory = match (&m.used_gpu_memory, &p.used_gpu_memory) {
                    (UsedGpuMemory::Used(a), UsedGpuMemory::Used(b)) => {
                        UsedGpuMemory::Used((*a).max(*b))
                    }
                    (UsedGpuMemory::Unavailable, b) => b.clone(),
                    (a, _) => a.clone(),
                };
                m.gpu_instance_id = m.gpu_instance_id.or(p.gpu_instance_id);
                m.compute_instance_id = m.compute_instance_id.or(p.compute_instance_id);
            }
        }
    }
    merged
}

/// The highest SM utilisation of each PID since the previous reading
/// (`after`: the newest sample it read; the driver's whole buffer at a
/// GPU's first reading), and where this reading ends. NVML answers
/// NOT_FOUND when no process had non-zero utilisation since `after`: every
/// process it lists then computed nothing (0 %). `None`: the GPU gives no
/// per-process samples (an old driver, a call that fails), so they are
/// unknown, never 0.
fn sm_util_since(
    gpu: &Device<'_>,
    uuid: &str,
    after: Option<u64>,
) -> (Option<BTreeMap<u32, u32>>, Option<u64>) {
    let since = after.unwrap_or(0);
    match gpu.process_utilization_stats(since) {
        Ok(samples) => {
            let (highest, newest) = highest_sm_util(samples, since);
            (Some(highest), Some(newest.max(since)))
        }
        Err(NvmlError::NotFound) => (Some(BTreeMap::new()), after),
        Err(e) => {
            debug!(gpu = %uuid, "no process utilisation samples: {e}");
            (None, after)
        }
    }
}

/// The highest SM utilisation per PID among the samples newer than `since`
/// (an older one, or one above 100 %, is dropped), and the newest sample's
/// timestamp (`since` when none is kept).
fn highest_sm_util(
    samples: Vec<ProcessUtilizationSample>,
    since: u64,
) -> (BTreeMap<u32, u32>, u64) {
    let mut highest: BTreeMap<u32, u32> = BTreeMap::new();
    let mut newest = since;
    for s in samples
        .into_iter()
        .filter(|s| s.timestamp > since && s.sm_util <= 100)
    {
        newest = newest.max(s.timestamp);
        let entry = highest.entry(s.pid).or_insert(s.sm_util);
        *entry = (*entry).max(s.sm_util);
    }
    (highest, newest)
}

/// Used GPU memory in MiB; `None` when NVML does not know it.
fn memory_mib(used: &UsedGpuMemory) -> Option<u64> {
    match used {
        UsedGpuMemory::Used(bytes) => Some(bytes / MIB),
        UsedGpuMemory::Unavailable => None,
    }
}

/// The observation for one process. `handle_ids` are the MIG device's
/// (GPU instance, compute instance) ids, used when the process info has none.
fn gpu_process(
    p: &ProcessInfo,
    gpu_uuid: &str,
    mig_uuid: Option<&str>,
    handle_ids: (Option<u32>, Option<u32>),
    sm_util: Option<&BTreeMap<u32, u32>>,
) -> GpuProcess {
    GpuProcess {
        pid: p.pid,
        used_memory_mib: memory_mib(&p.used_gpu_memory),
        gpu_uuid: gpu_uuid.to_string(),
        mig_uuid: mig_uuid.map(str::to_string),
        gpu_instance_id: p.gpu_instance_id.or(handle_ids.0),
        compute_instance_id: p.compute_instance_id.or(handle_ids.1),
        // A listed process with no sample since the previous reading
        // computed nothing; the samples of PIDs not listed are not looked at.
        sm_util: sm_util.map(|m| m.get(&p.pid).copied().unwrap_or(0)),
    }
}

/// Which instance id of a MIG device to read.
#[derive(Clone, Copy)]
enum InstanceId {
    Gpu,
    Compute,
}

/// A MIG device's GPU or compute instance id. `nvml-wrapper` 0.13 has no
/// method for these, so the raw function is called; `None` when the library
/// lacks it or it fails.
fn instance_id(nvml: &Nvml, mig: &Device<'_>, which: InstanceId) -> Option<u32> {
    let lib = nvml.lib();
    let function = match which {
        InstanceId::Gpu => lib.nvmlDeviceGetGpuInstanceId.as_ref(),
        InstanceId::Compute => lib.nvmlDeviceGetComputeInstanceId.as_ref(),
    }
    .ok()?;
    let mut id: c_uint = 0;
    // SAFETY: `function` has NVML's signature (from the nvml-wrapper-sys
    // bindings); the handle comes from this live session; `id` is a valid
    // out-pointer for the duration of the call.
    let code = unsafe { function(mig.handle(), &mut id) };
    (code == 0).then_some(id)
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Collector>, ConfigError> {
    let parsed: NvmlConfig = config.parse()?;
    if parsed.library.trim().is_empty() {
        return Err(config.invalid("library", "must not be empty"));
    }
    if parsed.timeout.is_zero() {
        return Err(config.invalid("timeout", "must be more than zero"));
    }
    Ok(Box::new(NvmlCollector::new(parsed)))
}

detect_workloads_api::inventory::submit! {
    CollectorPlugin {
        name: "nvml",
        summary: "GPU processes (memory, GPU/MIG device, SM use) from the NVML library, loaded at run time",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detect_workloads_api::plugin::Previous;
    use detect_workloads_core::config::Config;
    use detect_workloads_stages as _;

    fn info(pid: u32, used: UsedGpuMemory) -> ProcessInfo {
        ProcessInfo {
            pid,
            used_gpu_memory: used,
            gpu_instance_id: None,
            compute_instance_id: None,
        }
    }

    fn sample(pid: u32, timestamp: u64, sm_util: u32) -> ProcessUtilizationSample {
        ProcessUtilizationSample {
            pid,
            timestamp,
            sm_util,
            mem_util: 0,
            enc_util: 0,
            dec_util: 0,
        }
    }

    #[test]
    fn defaults() {
        let c: NvmlConfig = serde_json::from_str("{}").expect("empty table");
        assert_eq!(c, NvmlConfig::default());
        assert_eq!(c.library, "libnvidia-ml.so.1");
        assert_eq!(c.timeout, Duration::from_secs(5));
    }

    #[test]
    fn reads_its_settings_and_rejects_unknown_keys() {
        let c: NvmlConfig =
            serde_json::from_str(r#"{"library": "/opt/lib/libnvidia-ml.so", "timeout": "250ms"}"#)
                .expect("valid");
        assert_eq!(c.library, "/opt/lib/libnvidia-ml.so");
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert!(serde_json::from_str::<NvmlConfig>(r#"{"libary": "x"}"#).is_err());
        assert!(serde_json::from_str::<NvmlConfig>(r#"{"timeout": "soon"}"#).is_err());
    }

    #[test]
    fn is_registered_and_built_from_the_config_file() {
        let config = Config::parse(
            "test.toml",
            "[[collectors.nvml]]\nlibrary = \"libnvidia-ml.so.1\"\ntimeout = \"3s\"\n",
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let nvml = &config.collectors[0];
        assert_eq!(nvml.name, "nvml");
        assert_eq!(nvml.plugin.provides(), &[FactKind::GpuProcesses]);
        assert_eq!(nvml.plugin.timeout(), Duration::from_secs(3));
        assert_eq!(nvml.plugin.fallback_for(), None);
    }

    #[test]
    fn config_errors_name_the_key_and_line() {
        let err = |text: &str| match Config::parse("test.toml", text, &[]) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        };
        let e = err("[[collectors.nvml]]\nlibary = \"x\"\n");
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("libary"), "{e}");
        // (The line of a value rejected after parsing is the core's to find:
        // `PluginConfig::invalid` currently gives the table header's line.)
        let e = err("[[collectors.nvml]]\nlibrary = \"  \"\n");
        assert!(e.message.contains("`library`"), "{e}");
        let e = err("[[collectors.nvml]]\ntimeout = \"0s\"\n");
        assert!(e.message.contains("timeout"), "{e}");
    }

    #[test]
    fn memory_is_mib_and_unavailable_is_none() {
        assert_eq!(memory_mib(&UsedGpuMemory::Used(1_616_904_192)), Some(1542));
        assert_eq!(memory_mib(&UsedGpuMemory::Used(1_080_033_280)), Some(1030));
        assert_eq!(memory_mib(&UsedGpuMemory::Used(MIB - 1)), Some(0));
        assert_eq!(memory_mib(&UsedGpuMemory::Unavailable), None);
    }

    #[test]
    fn one_entry_per_pid_keeping_known_memory() {
        let merged = merge_by_pid([
            info(10, UsedGpuMemory::Unavailable),
            info(11, UsedGpuMemory::Used(5)),
            info(10, UsedGpuMemory::Used(7)),
            info(11, UsedGpuMemory::Unavailable),
            info(12, UsedGpuMemory::Used(1)),
        ]);
        let pids: Vec<u32> = merged.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [10, 11, 12]);
        assert_eq!(merged[0].used_gpu_memory, UsedGpuMemory::Used(7));
        assert_eq!(merged[1].used_gpu_memory, UsedGpuMemory::Used(5));
    }

    #[test]
    fn sm_util_is_the_highest_newer_sample_of_each_pid() {
        let (util, newest) = highest_sm_util(
            vec![
                sample(447, 5, 30),
                sample(447, 9, 1),
                sample(441, 2, 4),
                sample(447, 7, 50),
                // Not newer than the previous reading, or not a percentage.
                sample(441, 1, 99),
                sample(442, 8, 101),
            ],
            1,
        );
        assert_eq!(util.get(&447), Some(&50));
        assert_eq!(util.get(&441), Some(&4));
        assert_eq!(util.get(&442), None);
        assert_eq!(newest, 9);
        assert_eq!(
            highest_sm_util(vec![sample(1, 3, 9)], 3),
            (BTreeMap::new(), 3)
        );
    }

    #[test]
    fn a_listed_process_without_a_sample_computed_nothing_unless_samples_are_unknown() {
        let p = info(3, UsedGpuMemory::Used(2 * MIB));
        let none = BTreeMap::new();
        assert_eq!(
            gpu_process(&p, "GPU-a", None, (None, None), Some(&none)).sm_util,
            Some(0)
        );
        assert_eq!(
            gpu_process(&p, "GPU-a", None, (None, None), None).sm_util,
            None
        );
    }

    #[test]
    fn process_info_ids_win_over_the_handle_ids() {
        let util = BTreeMap::new();
        let util = Some(&util);
        let mut p = info(3, UsedGpuMemory::Used(2 * MIB));
        let g = gpu_process(&p, "GPU-a", Some("MIG-b"), (Some(5), Some(6)), util);
        assert_eq!(
            (g.gpu_instance_id, g.compute_instance_id),
            (Some(5), Some(6))
        );
        p.gpu_instance_id = Some(1);
        p.compute_instance_id = Some(0);
        let g = gpu_process(&p, "GPU-a", Some("MIG-b"), (Some(5), Some(6)), util);
        assert_eq!(
            (g.gpu_instance_id, g.compute_instance_id),
            (Some(1), Some(0))
        );
        assert_eq!(g.gpu_uuid, "GPU-a");
        assert_eq!(g.mig_uuid.as_deref(), Some("MIG-b"));
        assert_eq!(g.used_memory_mib, Some(2));
    }

    #[test]
    fn init_errors_say_unavailable_or_failed_and_name_the_library() {
        let lib = "/x/libnvidia-ml.so.1";
        for e in [
            NvmlError::DriverNotLoaded,
            NvmlError::NoPermission,
            NvmlError::FailedToLoadSymbol("undefined symbol: nvmlInit_v2".into()),
            NvmlError::LibRmVersionMismatch,
        ] {
            match init_error(lib, e) {
                CollectError::Unavailable(m) => assert!(m.contains(lib), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        match init_error(lib, NvmlError::Unknown) {
            CollectError::Failed(m) => assert!(m.contains(lib), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_library_that_is_not_there_is_unavailable() {
        let collector = NvmlCollector::new(NvmlConfig {
            library: "/nonexistent/libnvidia-ml.so.1".into(),
            ..NvmlConfig::default()
        });
        let previous = Previous::known(Default::default());
        let observed = Default::default();
        let users = detect_workloads_api::users::UserNames::new();
        let ctx = CollectContext {
            previous: &previous,
            observed: &observed,
            users: &users,
            head_start: None,
        };
        match collector.collect(&ctx).await {
            Err(CollectError::Unavailable(m)) => {
                assert!(m.contains("/nonexistent/libnvidia-ml.so.1"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
}
