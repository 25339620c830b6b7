//! The `nvml` collector against the fake NVML library (`tests/fake-nvml`),
//! loaded through the collector's `library` setting: the real `dlopen` and FFI
//! path of `nvml-wrapper`, without a GPU.
//!
//! The fake library is built here with cargo, into its own target directories
//! under `CARGO_TARGET_TMPDIR` (so this works the same under `cargo test` and
//! `cargo test --release`, and never waits on the lock of the build that runs
//! this test). The fake reads its scenario from `FAKE_NVML_SCENARIO` at every
//! `nvmlInit_v2`; that variable is process-wide, so the tests run one at a time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use detect_workloads_api::model::GpuDevice;
use detect_workloads_api::model::{GpuProcess, Inventory, Observations};
use detect_workloads_api::plugin::{CollectContext, CollectError, Collected, Previous};
use detect_workloads_api::users::UserNames;
use detect_workloads_collectors as _;
use detect_workloads_collectors::nvml::NvmlConfig;
use detect_workloads_core::config::Config;
use detect_workloads_stages as _;

/// The H100 capture in `tests/fixtures/gpu/h100-driver-580`.
const H100_UUID: &str = "GPU-56c0b0b8-eb5c-605d-11d6-1bac317b478c";
const H100: &str = "\
driver 580.159.04
gpu GPU-56c0b0b8-eb5c-605d-11d6-1bac317b478c
compute 441 1616904192
compute 447 1080033280
util 447 1
";

/// The two builds of the fake library.
struct FakeLibraries {
    /// Every function the collector uses.
    complete: PathBuf,
    /// Without `nvmlShutdown` and `nvmlDeviceGetComputeRunningProcesses_v3`.
    missing_symbols: PathBuf,
}

fn build_fake(variant: &str, features: &[&str]) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("collectors/ is inside the workspace");
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fake-nvml")
        .join(variant);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--quiet", "-p", "fake-nvml", "--target-dir"])
        .arg(&target_dir);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build fake-nvml: {e}"));
    assert!(
        status.success(),
        "building fake-nvml ({variant}) failed: {status}"
    );
    let library = target_dir.join("debug").join("libfake_nvml.so");
    assert!(library.exists(), "{} was not built", library.display());
    library
}

fn fake() -> &'static FakeLibraries {
    static LIBRARIES: OnceLock<FakeLibraries> = OnceLock::new();
    LIBRARIES.get_or_init(|| FakeLibraries {
        complete: build_fake("complete", &[]),
        missing_symbols: build_fake("missing-symbols", &["missing-symbols"]),
    })
}

/// One test at a time: the scenario is named by a process-wide variable.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes `scenario` to a file and points `FAKE_NVML_SCENARIO` at it.
fn use_scenario(name: &str, scenario: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nvml-scenarios");
    std::fs::create_dir_all(&dir).expect("scenario directory");
    let path = dir.join(format!("{name}-{}.txt", std::process::id()));
    std::fs::write(&path, scenario).expect("scenario written");
    std::env::set_var("FAKE_NVML_SCENARIO", &path);
}

/// Builds the collector through the configuration, as the program does, and
/// runs one collection with `library` under `limit`. `None`: it did not finish.
fn collect_with_limit(library: &Path, limit: Duration) -> Option<Result<Collected, CollectError>> {
    collect_after(library, limit, Inventory::default())
}

/// One collection with `previous` as the previous inventory.
fn collect_after(
    library: &Path,
    limit: Duration,
    previous: Inventory,
) -> Option<Result<Collected, CollectError>> {
    let text = format!(
        "[[collectors.nvml]]\nlibrary = {:?}\ntimeout = \"5s\"\n",
        library.to_str().expect("UTF-8 path")
    );
    let config = Config::parse("nvml-test.toml", &text, &[]).unwrap_or_else(|e| panic!("{e}"));
    let collector = &config.collectors[0].plugin;
    let previous = Previous::known(previous);
    let observed = Observations::default();
    let users = UserNames::new();
    let ctx = CollectContext {
        previous: &previous,
        observed: &observed,
        users: &users,
        head_start: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        tokio::time::timeout(limit, collector.collect(&ctx))
            .await
            .ok()
    });
    // As the program does: a hung NVML thread is not waited for.
    runtime.shutdown_background();
    result
}

fn collect(library: &Path) -> Result<Collected, CollectError> {
    collect_with_limit(library, Duration::from_secs(20)).expect("collect finished")
}

fn processes(library: &Path) -> Vec<GpuProcess> {
    match collect(library) {
        Ok(c) => c.observations.gpu_processes,
        Err(e) => panic!("collect failed: {e}"),
    }
}

/// A process on a GPU with per-process samples, none of them its own: 0 %.
fn process(pid: u32, mib: Option<u64>, gpu: &str) -> GpuProcess {
    GpuProcess {
        pid,
        used_memory_mib: mib,
        gpu_uuid: gpu.to_string(),
        sm_util: Some(0),
        ..GpuProcess::default()
    }
}

#[test]
fn the_h100_capture() {
    let _serial = serial();
    use_scenario("h100", H100);
    let collected = collect(&fake().complete).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        collected.observations.gpu_processes,
        [
            process(441, Some(1542), H100_UUID),
            GpuProcess {
                sm_util: Some(1),
                ..process(447, Some(1030), H100_UUID)
            },
        ]
    );
    assert_eq!(collected.stats.get("gpus"), Some(&1));
    assert_eq!(collected.stats.get("processes"), Some(&2));
    assert!(collected.observations.containers.is_empty());
    assert!(collected.observations.processes.is_empty());
}

#[test]
fn several_gpus_with_processes_on_each() {
    let _serial = serial();
    use_scenario(
        "several",
        "gpu GPU-00000000-0000-0000-0000-000000000000\n\
         compute 100 104857600\n\
         compute 900 1048576\n\
         gpu GPU-11111111-1111-1111-1111-111111111111\n\
         compute 200 209715200\n\
         graphics 200 209715200\n\
         graphics 201 3145728\n\
         compute 900 2097152\n\
         gpu GPU-22222222-2222-2222-2222-222222222222\n\
         # a GPU with nothing on it, and utilisation sampling not supported anywhere\n\
         fail nvmlDeviceGetProcessUtilization 3\n",
    );
    let gpu = |n: usize| {
        [
            "GPU-00000000-0000-0000-0000-000000000000",
            "GPU-11111111-1111-1111-1111-111111111111",
        ][n]
    };
    let collected = collect(&fake().complete).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        collected.observations.gpu_processes,
        [
            process(100, Some(100), gpu(0)),
            process(900, Some(1), gpu(0)),
            // compute and graphics of one process: one entry
            process(200, Some(200), gpu(1)),
            process(900, Some(2), gpu(1)),
            process(201, Some(3), gpu(1)),
        ]
        .map(|p| GpuProcess {
            // No samples anywhere: unknown, not 0 %.
            sm_util: None,
            ..p
        })
    );
    assert_eq!(collected.stats.get("gpus"), Some(&3));
}

#[test]
fn each_gpu_is_described_for_people() {
    let _serial = serial();
    // The capture's GPU (nvidia-smi.txt: 2587MiB / 81559MiB), a second GPU
    // whose memory is its processes' sum, and a driver that answers no
    // utilisation: that is left out, the rest is there.
    use_scenario(
        "described",
        &format!(
            "gpu {H100_UUID} mem=2587/81559 busy=0\n\
             gpu GPU-11111111-1111-1111-1111-111111111111 busy=37 name=NVIDIA_A100\n\
             compute 200 209715200\n\
             fail nvmlDeviceGetUtilizationRates 3\n"
        ),
    );
    let collected = collect(&fake().complete).unwrap_or_else(|e| panic!("{e}"));
    let gpus = collected.observations.gpus;
    assert_eq!(
        gpus,
        [
            GpuDevice {
                uuid: H100_UUID.to_string(),
                index: 0,
                name: "NVIDIA H100 80GB HBM3".to_string(),
                memory_used_mb: Some(2587),
                memory_total_mb: Some(81559),
                utilization_pct: None,
                samples_until_us: None,
            },
            GpuDevice {
                uuid: "GPU-11111111-1111-1111-1111-111111111111".to_string(),
                index: 1,
                name: "NVIDIA A100".to_string(),
                memory_used_mb: Some(200),
                memory_total_mb: Some(81559),
                utilization_pct: None,
                samples_until_us: None,
            },
        ]
    );
    // Without the failure the utilisation is there.
    use_scenario("described-util", &format!("gpu {H100_UUID} busy=42\n"));
    let collected = collect(&fake().complete).unwrap_or_else(|e| panic!("{e}"));
    let util: Vec<_> = collected
        .observations
        .gpus
        .iter()
        .map(|g| g.utilization_pct)
        .collect();
    assert_eq!(util, [Some(42)]);
}

#[test]
fn unavailable_memory_is_none_not_zero() {
    let _serial = serial();
    use_scenario(
        "unavailable",
        &format!(
            "gpu {H100_UUID}\ncompute 441 unavailable\ngraphics 442 unavailable\ncompute 443 0\n"
        ),
    );
    assert_eq!(
        processes(&fake().complete),
        [
            process(441, None, H100_UUID),
            process(443, Some(0), H100_UUID),
            process(442, None, H100_UUID),
        ]
    );
}

#[test]
fn mig_processes_come_from_each_mig_device() {
    let _serial = serial();
    use_scenario(
        "mig",
        "gpu GPU-aaaaaaaa-0000-0000-0000-000000000000 mig=on\n\
         mig MIG-11111111-1111-1111-1111-111111111111 gi=1 ci=0\n\
         compute 2001 1048576000 gi=1 ci=0\n\
         mig MIG-22222222-2222-2222-2222-222222222222 gi=2 ci=0\n\
         # the process info has no instance ids: they come from the MIG handle\n\
         compute 2002 2097152000\n\
         mig MIG-33333333-3333-3333-3333-333333333333 gi=5 ci=1\n\
         gpu GPU-bbbbbbbb-0000-0000-0000-000000000000\n\
         compute 2003 10485760\n",
    );
    let collected = collect(&fake().complete).unwrap_or_else(|e| panic!("{e}"));
    let parent = "GPU-aaaaaaaa-0000-0000-0000-000000000000";
    // The parent's own (aggregate) list is not read as well: no duplicates.
    assert_eq!(
        collected.observations.gpu_processes,
        [
            GpuProcess {
                mig_uuid: Some("MIG-11111111-1111-1111-1111-111111111111".into()),
                gpu_instance_id: Some(1),
                compute_instance_id: Some(0),
                // No per-process samples on MIG: unknown.
                sm_util: None,
                ..process(2001, Some(1000), parent)
            },
            GpuProcess {
                mig_uuid: Some("MIG-22222222-2222-2222-2222-222222222222".into()),
                gpu_instance_id: Some(2),
                compute_instance_id: Some(0),
                // No per-process samples on MIG: unknown.
                sm_util: None,
                ..process(2002, Some(2000), parent)
            },
            process(2003, Some(10), "GPU-bbbbbbbb-0000-0000-0000-000000000000"),
        ]
    );
    assert_eq!(collected.stats.get("mig_devices"), Some(&3));
}

#[test]
fn no_gpu_is_found_nothing_not_a_failure() {
    let _serial = serial();
    use_scenario("empty", "# a driver with no GPU\n");
    let collected = collect(&fake().complete).unwrap_or_else(|e| panic!("{e}"));
    assert!(collected.observations.gpu_processes.is_empty());
    assert_eq!(collected.stats.get("gpus"), Some(&0));
}

#[test]
fn driver_not_loaded_at_init_is_unavailable() {
    let _serial = serial();
    use_scenario("init-error", &format!("fail nvmlInit_v2 9\n{H100}"));
    let library = &fake().complete;
    match collect(library) {
        Err(CollectError::Unavailable(m)) => {
            assert!(m.contains("driver is not loaded"), "{m}");
            assert!(m.contains(&*library.to_string_lossy()), "{m}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn other_init_errors_fail() {
    let _serial = serial();
    use_scenario("init-unknown", &format!("fail nvmlInit_v2 999\n{H100}"));
    match collect(&fake().complete) {
        Err(CollectError::Failed(m)) => assert!(m.contains("initialisation"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failing_query_fails_the_collection_rather_than_finding_nothing() {
    let _serial = serial();
    use_scenario(
        "gpu-lost",
        &format!("{H100}fail nvmlDeviceGetComputeRunningProcesses_v3 15\n"),
    );
    let library = &fake().complete;
    match collect(library) {
        Err(CollectError::Failed(m)) => {
            assert!(m.contains("nvmlDeviceGetComputeRunningProcesses_v3"), "{m}");
            assert!(m.contains(H100_UUID), "{m}");
            assert!(m.contains(&*library.to_string_lossy()), "{m}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_function_is_an_error_not_a_panic() {
    let _serial = serial();
    use_scenario("missing", H100);
    // The library lacks the process query (and nvmlShutdown, which
    // nvml-wrapper's Drop would call unchecked).
    match collect(&fake().missing_symbols) {
        Err(CollectError::Failed(m)) => {
            assert!(m.contains("nvmlDeviceGetComputeRunningProcesses_v3"), "{m}");
            assert!(!m.contains("panicked"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // Nothing to query: succeeds, and the missing nvmlShutdown does not panic.
    use_scenario("missing-empty", "");
    match collect(&fake().missing_symbols) {
        Ok(c) => assert!(c.observations.gpu_processes.is_empty()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_library_that_is_not_nvml_is_unavailable() {
    let _serial = serial();
    // The C library is on every Linux machine and exports no NVML function.
    match collect(Path::new("libc.so.6")) {
        Err(CollectError::Unavailable(m)) => {
            assert!(m.contains("nvmlInit_v2"), "{m}");
            assert!(m.contains("libc.so.6"), "{m}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_library_path_pointing_nowhere_is_unavailable() {
    let _serial = serial();
    match collect(Path::new("/nonexistent/libnvidia-ml.so.1")) {
        Err(CollectError::Unavailable(m)) => {
            assert!(m.contains("/nonexistent/libnvidia-ml.so.1"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_hanging_call_is_abandoned_at_the_timeout() {
    let _serial = serial();
    let library = fake().complete.clone();
    use_scenario(
        "hang",
        &format!("{H100}hang nvmlDeviceGetComputeRunningProcesses_v3\n"),
    );
    let start = Instant::now();
    // The blocking thread stays asleep inside the fake library; it is leaked.
    let result = collect_with_limit(&library, Duration::from_millis(300));
    assert!(result.is_none(), "a hung call returned: {result:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );

    // The library still answers other callers afterwards.
    use_scenario("after-hang", H100);
    assert_eq!(processes(&library).len(), 2);
}

#[test]
fn its_configuration_defaults() {
    let config = NvmlConfig::default();
    assert_eq!(config.library, "libnvidia-ml.so.1");
    assert_eq!(config.timeout, Duration::from_secs(5));
}

/// Per-process utilisation over the time since the previous reading: a busy
/// process, an idle one (no sample), one whose busy samples are older than
/// the previous reading (still in the driver's buffer), a sample above 100 %
/// and one of a PID NVML does not list; then NOT_FOUND; and MIG (no
/// per-process samples: unknown).
#[test]
fn utilisation_covers_the_time_since_the_previous_reading() {
    let _serial = serial();
    use_scenario(
        "util",
        "\
gpu GPU-aaaaaaaa-0000
compute 10 1048576
compute 11 1048576
compute 12 1048576
compute 13 1048576
util 10 80 ts=200
util 10 95 ts=300
util 12 70 ts=100
util 13 150 ts=300
util 99 60 ts=300
gpu GPU-bbbbbbbb-0000 mig=on
mig MIG-cccccccc-0000 gi=1 ci=0
compute 20 1048576
",
    );
    let sm = |collected: &Collected| -> Vec<(u32, Option<u32>)> {
        collected
            .observations
            .gpu_processes
            .iter()
            .map(|p| (p.pid, p.sm_util))
            .collect()
    };
    let until = |collected: &Collected, uuid: &str| {
        collected
            .observations
            .gpus
            .iter()
            .find(|g| g.uuid == uuid)
            .and_then(|g| g.samples_until_us)
    };
    let limit = Duration::from_secs(20);
    // The previous reading ended at 150: 12's busy sample (100) is older.
    let mut previous = Inventory::default();
    previous.gpus.insert(
        "GPU-aaaaaaaa-0000".into(),
        GpuDevice {
            uuid: "GPU-aaaaaaaa-0000".into(),
            samples_until_us: Some(150),
            ..GpuDevice::default()
        },
    );
    let first = collect_after(&fake().complete, limit, previous)
        .expect("finished")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        sm(&first),
        [
            (10, Some(95)),
            (11, Some(0)),
            (12, Some(0)),
            (13, Some(0)),
            (20, None)
        ]
    );
    assert_eq!(until(&first, "GPU-aaaaaaaa-0000"), Some(300));
    // The next reading starts where this one ended: nothing newer, NOT_FOUND,
    // and every listed process computed nothing since.
    let mut previous = Inventory::default();
    for g in &first.observations.gpus {
        previous.gpus.insert(g.uuid.clone(), g.clone());
    }
    let second = collect_after(&fake().complete, limit, previous)
        .expect("finished")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        sm(&second),
        [
            (10, Some(0)),
            (11, Some(0)),
            (12, Some(0)),
            (13, Some(0)),
            (20, None)
        ]
    );
    assert_eq!(until(&second, "GPU-aaaaaaaa-0000"), Some(300));
}
