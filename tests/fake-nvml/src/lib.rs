//! A fake NVML (`libnvidia-ml.so`) for tests without a GPU.
//!
//! It exports, with NVML's C names and signatures, the functions that the
//! `nvml` collector reaches through `nvml-wrapper` 0.13, and answers them from
//! a scenario file named by the environment variable `FAKE_NVML_SCENARIO`. The
//! file is read again at every `nvmlInit_v2`, so one process can run several
//! scenarios one after the other (not at the same time: the environment
//! variable is process-wide).
//!
//! # Scenario format
//!
//! One directive per line; `#` starts a comment; words are separated by blanks.
//!
//! ```text
//! driver 580.159.04                      # nvmlSystemGetDriverVersion (optional)
//! gpu GPU-56c0b0b8-... [mig=on|off|unsupported] [mem=USED/TOTAL] [busy=N] [name=NVIDIA_H100]
//!                                        # a physical GPU; its index is its rank among `gpu` lines;
//!                                        # mem in MiB (default: its processes' sum / 81559),
//!                                        # busy = GPU utilisation % (default 0), `_` in name = space
//! mig MIG-1a2b... gi=1 ci=0              # a MIG device of the last GPU (index = rank on that GPU)
//! compute 441 1616904192 [gi=N] [ci=N]   # a compute process of the last `gpu` or `mig` line
//! graphics 500 unavailable               # a graphics process; memory in bytes or `unavailable`
//! util 447 1 [ts=N|ts=now]              # a process utilisation sample (pid, SM %) of the last GPU
//! fail nvmlInit_v2 9                     # that function returns this NVML return code
//! hang nvmlDeviceGetUUID                 # that function never returns
//! ```
//!
//! Behaviour worth knowing:
//! - `mig=unsupported` makes `nvmlDeviceGetMigMode` answer NOT_SUPPORTED, as a
//!   GPU older than Ampere does; the default is `off`.
//! - A GPU reports 7 possible MIG devices (an H100's maximum); the indices
//!   after its `mig` lines answer NOT_FOUND, as the driver does for empty slots.
//! - In MIG mode the physical GPU's handle lists the processes of all its MIG
//!   devices (as NVML does for a privileged caller), with their instance ids.
//! - Process `gi`/`ci` default to "not set" (0xFFFFFFFF).
//! - A sample's timestamp is NVML's CPU timestamp (microseconds): `ts=N`
//!   (default 1) is fixed, so once read it is never newer than a later
//!   reading's `lastSeenTimeStamp` (a process that stopped computing, its
//!   last sample still in the buffer); `ts=now` is the time of each call, so
//!   every reading finds it newer (a process that keeps computing).
//! - No utilisation sample newer than `lastSeenTimeStamp` answers NOT_FOUND,
//!   as NVML does (`fail nvmlDeviceGetProcessUtilization 6` answers it
//!   whatever the samples).
//! - In MIG mode the GPU answers NOT_SUPPORTED to
//!   `nvmlDeviceGetUtilizationRates` and `nvmlDeviceGetProcessUtilization`,
//!   as NVML does ("On MIG-enabled GPUs, querying ... is not currently
//!   supported"): its `busy=` and `util` lines are not served then.
//! - With `FAKE_NVML_FOLLOW=1` the scenario file is also read again by every
//!   `nvmlDeviceGetCount_v2`, with which each collection starts (a kept
//!   session sees processes and samples come and go, as watch mode's polls
//!   do; `tests/bench/watch.sh`).
//! - A missing or invalid scenario makes `nvmlInit_v2` print why on standard
//!   error and return NVML_ERROR_UNKNOWN (999).
//!
//! # Missing symbols
//!
//! A scenario cannot remove an exported symbol, so the cargo feature
//! `missing-symbols` builds a variant without `nvmlShutdown` and
//! `nvmlDeviceGetComputeRunningProcesses_v3` (build it into its own
//! `--target-dir`, since both variants are called `libfake_nvml.so`).

// Every export takes raw pointers exactly as NVML's C API does (see nvml.h):
// the caller's obligations are NVML's, documented once here.
#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_char, c_uint, c_ulonglong, c_void, CStr};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// `nvmlReturn_t`.
type Ret = c_uint;
/// `nvmlDevice_t`: an opaque handle (here an encoded index, never dereferenced).
type Handle = *mut c_void;

const SUCCESS: Ret = 0;
const UNINITIALIZED: Ret = 1;
const INVALID_ARGUMENT: Ret = 2;
const NOT_SUPPORTED: Ret = 3;
const NOT_FOUND: Ret = 6;
const INSUFFICIENT_SIZE: Ret = 7;
const UNKNOWN: Ret = 999;

/// `gpuInstanceId` / `computeInstanceId` when not set.
const NO_VALUE: c_uint = 0xFFFF_FFFF;
/// `NVML_VALUE_NOT_AVAILABLE` as an unsigned long long.
const NOT_AVAILABLE: c_ulonglong = c_ulonglong::MAX;
/// What `nvmlDeviceGetMaxMigDeviceCount` answers.
const MAX_MIG_DEVICES: c_uint = 7;

/// `nvmlProcessInfo_t` (the v2 layout, used by the `_v3` process queries).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

/// `nvmlProcessUtilizationSample_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcessUtilizationSample {
    pid: c_uint,
    time_stamp: c_ulonglong,
    sm_util: c_uint,
    mem_util: c_uint,
    enc_util: c_uint,
    dec_util: c_uint,
}

// ---------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Scenario {
    driver: String,
    gpus: Vec<Gpu>,
    fail: Vec<(String, Ret)>,
    hang: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MigMode {
    On,
    Off,
    Unsupported,
}

#[derive(Debug)]
struct Gpu {
    uuid: String,
    mig_mode: MigMode,
    migs: Vec<MigDevice>,
    compute: Vec<Process>,
    graphics: Vec<Process>,
    util: Vec<Sample>,
    name: String,
    /// Used and total memory in MiB, when the scenario says.
    memory: Option<(u64, u64)>,
    busy: c_uint,
}

/// An H100's memory in MiB, as `nvidia-smi` reports it.
const H100_MIB: u64 = 81_559;

#[derive(Debug)]
struct MigDevice {
    uuid: String,
    gi: c_uint,
    ci: c_uint,
    compute: Vec<Process>,
    graphics: Vec<Process>,
}

#[derive(Debug, Clone, Copy)]
struct Process {
    pid: c_uint,
    bytes: Option<u64>,
    gi: Option<c_uint>,
    ci: Option<c_uint>,
}

impl Process {
    fn info(&self) -> ProcessInfo {
        ProcessInfo {
            pid: self.pid,
            used_gpu_memory: self.bytes.unwrap_or(NOT_AVAILABLE),
            gpu_instance_id: self.gi.unwrap_or(NO_VALUE),
            compute_instance_id: self.ci.unwrap_or(NO_VALUE),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    pid: c_uint,
    sm: c_uint,
    ts: Timestamp,
}

/// When a sample was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timestamp {
    /// Fixed, microseconds.
    At(c_ulonglong),
    /// The time of each call that reads it (`ts=now`).
    Now,
}

impl Timestamp {
    fn at(self, now_us: c_ulonglong) -> c_ulonglong {
        match self {
            Timestamp::At(ts) => ts,
            Timestamp::Now => now_us,
        }
    }
}

/// The time now as NVML's CPU timestamp: microseconds since the epoch.
fn now_us() -> c_ulonglong {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as c_ulonglong)
}

/// `key=value` options after the positional words of a line.
fn options<'a>(words: &[&'a str]) -> Result<Vec<(&'a str, &'a str)>, String> {
    words
        .iter()
        .map(|w| {
            w.split_once('=')
                .ok_or_else(|| format!("expected key=value, got {w:?}"))
        })
        .collect()
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{what}: not a number: {text:?}"))
}

fn parse_process(words: &[&str]) -> Result<Process, String> {
    let [pid, bytes, rest @ ..] = words else {
        return Err("expected: <pid> <bytes|unavailable> [gi=N] [ci=N]".into());
    };
    let mut process = Process {
        pid: number(pid, "pid")?,
        bytes: match *bytes {
            "unavailable" => None,
            b => Some(number(b, "bytes")?),
        },
        gi: None,
        ci: None,
    };
    for (key, value) in options(rest)? {
        match key {
            "gi" => process.gi = Some(number(value, "gi")?),
            "ci" => process.ci = Some(number(value, "ci")?),
            _ => return Err(format!("unknown option {key:?}")),
        }
    }
    Ok(process)
}

/// One `key=value` option of a `gpu` line.
fn gpu_option(gpu: &mut Gpu, key: &str, value: &str) -> Result<(), String> {
    match (key, value) {
        ("mig", "on") => gpu.mig_mode = MigMode::On,
        ("mig", "off") => gpu.mig_mode = MigMode::Off,
        ("mig", "unsupported") => gpu.mig_mode = MigMode::Unsupported,
        ("mem", v) => {
            let (used, total) = v.split_once('/').ok_or("mem=USED/TOTAL (MiB)")?;
            gpu.memory = Some((number(used, "mem")?, number(total, "mem")?));
        }
        ("busy", v) => gpu.busy = number(v, "busy")?,
        ("name", v) => gpu.name = v.replace('_', " "),
        _ => return Err(format!("unknown option {key}={value}")),
    }
    Ok(())
}

impl Scenario {
    fn parse(text: &str) -> Result<Scenario, String> {
        let mut s = Scenario {
            driver: "580.159.04".into(),
            ..Scenario::default()
        };
        // Whether process lines go to the last MIG device (else the last GPU).
        let mut in_mig = false;
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some((&directive, args)) = words.split_first() else {
                continue;
            };
            let at = |e: String| format!("line {}: {e}", n + 1);
            match directive {
                "driver" => s.driver = args.join(" "),
                "gpu" => {
                    let [uuid, rest @ ..] = args else {
                        return Err(at("expected: gpu <uuid> [mig=on|off|unsupported] [mem=U/T] [busy=N] [name=X]".into()));
                    };
                    let mut gpu = Gpu {
                        uuid: uuid.to_string(),
                        mig_mode: MigMode::Off,
                        migs: Vec::new(),
                        compute: Vec::new(),
                        graphics: Vec::new(),
                        util: Vec::new(),
                        name: "NVIDIA H100 80GB HBM3".into(),
                        memory: None,
                        busy: 0,
                    };
                    for (key, value) in options(rest).map_err(at)? {
                        gpu_option(&mut gpu, key, value).map_err(at)?;
                    }
                    s.gpus.push(gpu);
                    in_mig = false;
                }
                "mig" => {
                    let gpu = s
                        .gpus
                        .last_mut()
                        .ok_or_else(|| at("`mig` before any `gpu`".into()))?;
                    let [uuid, rest @ ..] = args else {
                        return Err(at("expected: mig <uuid> gi=N ci=N".into()));
                    };
                    let (mut gi, mut ci) = (None, None);
                    for (key, value) in options(rest).map_err(at)? {
                        match key {
                            "gi" => gi = Some(number(value, "gi").map_err(at)?),
                            "ci" => ci = Some(number(value, "ci").map_err(at)?),
                            _ => return Err(at(format!("unknown option {key:?}"))),
                        }
                    }
                    let (Some(gi), Some(ci)) = (gi, ci) else {
                        return Err(at("a MIG device needs gi=N and ci=N".into()));
                    };
                    gpu.migs.push(MigDevice {
                        uuid: uuid.to_string(),
                        gi,
                        ci,
                        compute: Vec::new(),
                        graphics: Vec::new(),
                    });
                    in_mig = true;
                }
                "compute" | "graphics" => {
                    let process = parse_process(args).map_err(at)?;
                    let gpu = s
                        .gpus
                        .last_mut()
                        .ok_or_else(|| at("process before any `gpu`".into()))?;
                    let list = match (in_mig, gpu.migs.last_mut()) {
                        (true, Some(mig)) if directive == "compute" => &mut mig.compute,
                        (true, Some(mig)) => &mut mig.graphics,
                        _ if directive == "compute" => &mut gpu.compute,
                        _ => &mut gpu.graphics,
                    };
                    list.push(process);
                }
                "util" => {
                    let gpu = s
                        .gpus
                        .last_mut()
                        .ok_or_else(|| at("`util` before any `gpu`".into()))?;
                    let [pid, sm, rest @ ..] = args else {
                        return Err(at("expected: util <pid> <sm%> [ts=N|ts=now]".into()));
                    };
                    let mut sample = Sample {
                        pid: number(pid, "pid").map_err(at)?,
                        sm: number(sm, "sm").map_err(at)?,
                        ts: Timestamp::At(1),
                    };
                    for (key, value) in options(rest).map_err(at)? {
                        match (key, value) {
                            ("ts", "now") => sample.ts = Timestamp::Now,
                            ("ts", v) => sample.ts = Timestamp::At(number(v, "ts").map_err(at)?),
                            _ => return Err(at(format!("unknown option {key:?}"))),
                        }
                    }
                    gpu.util.push(sample);
                }
                "fail" => {
                    let [function, code] = args else {
                        return Err(at("expected: fail <function> <code>".into()));
                    };
                    s.fail
                        .push((function.to_string(), number(code, "code").map_err(at)?));
                }
                "hang" => {
                    let [function] = args else {
                        return Err(at("expected: hang <function>".into()));
                    };
                    s.hang.push(function.to_string());
                }
                other => return Err(at(format!("unknown directive {other:?}"))),
            }
        }
        Ok(s)
    }

    fn load() -> Result<Scenario, String> {
        let path = std::env::var_os("FAKE_NVML_SCENARIO").ok_or("FAKE_NVML_SCENARIO is not set")?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: {e}", path.to_string_lossy()))?;
        Scenario::parse(&text).map_err(|e| format!("{}: {e}", path.to_string_lossy()))
    }
}

// ---------------------------------------------------------------------------
// Shared state and call plumbing
// ---------------------------------------------------------------------------

/// The scenario loaded by the last `nvmlInit_v2`; `None` before.
static STATE: Mutex<Option<Scenario>> = Mutex::new(None);

fn state() -> MutexGuard<'static, Option<Scenario>> {
    STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn hang_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Runs one NVML function: hangs or fails as the scenario says, else answers
/// with `answer`. The lock is not held while hanging.
fn call(function: &str, answer: impl FnOnce(&Scenario) -> Ret) -> Ret {
    let (hang, fail) = match state().as_ref() {
        None => return UNINITIALIZED,
        Some(s) => (
            s.hang.iter().any(|f| f == function),
            s.fail
                .iter()
                .find(|(f, _)| f == function)
                .map(|(_, code)| *code),
        ),
    };
    if hang {
        hang_forever();
    }
    if let Some(code) = fail {
        return code;
    }
    match state().as_ref() {
        None => UNINITIALIZED,
        Some(s) => answer(s),
    }
}

/// What a device handle stands for.
enum Target<'a> {
    Gpu(&'a Gpu),
    Mig(&'a MigDevice),
}

fn gpu_handle(gpu: usize) -> Handle {
    std::ptr::without_provenance_mut((gpu + 1) << 8)
}

fn mig_handle(gpu: usize, mig: usize) -> Handle {
    std::ptr::without_provenance_mut(((gpu + 1) << 8) | (mig + 1))
}

fn target(s: &Scenario, handle: Handle) -> Option<Target<'_>> {
    let raw = handle.addr();
    let gpu = s.gpus.get((raw >> 8).checked_sub(1)?)?;
    match raw & 0xff {
        0 => Some(Target::Gpu(gpu)),
        mig => gpu.migs.get(mig - 1).map(Target::Mig),
    }
}

/// Answers for a device handle, or INVALID_ARGUMENT for a handle it never gave.
fn on_device(function: &str, device: Handle, answer: impl FnOnce(Target<'_>) -> Ret) -> Ret {
    call(function, |s| match target(s, device) {
        Some(t) => answer(t),
        None => INVALID_ARGUMENT,
    })
}

/// Writes `value` to an out-parameter.
unsafe fn put<T>(out: *mut T, value: T) -> Ret {
    if out.is_null() {
        return INVALID_ARGUMENT;
    }
    out.write(value);
    SUCCESS
}

/// Copies `text` with its NUL into a caller's buffer of `length` bytes.
unsafe fn put_str(text: &str, buffer: *mut c_char, length: c_uint) -> Ret {
    if buffer.is_null() {
        return INVALID_ARGUMENT;
    }
    if text.len() + 1 > length as usize {
        return INSUFFICIENT_SIZE;
    }
    std::ptr::copy_nonoverlapping(text.as_ptr().cast::<c_char>(), buffer, text.len());
    buffer.add(text.len()).write(0);
    SUCCESS
}

/// NVML's two-call list protocol: `*count` is the caller's capacity on entry
/// and the number of entries on return; INSUFFICIENT_SIZE when it is too small.
unsafe fn put_list<T: Copy>(items: &[T], count: *mut c_uint, out: *mut T) -> Ret {
    if count.is_null() {
        return INVALID_ARGUMENT;
    }
    let capacity = count.read() as usize;
    count.write(items.len() as c_uint);
    if items.is_empty() {
        return SUCCESS;
    }
    if out.is_null() || capacity < items.len() {
        return INSUFFICIENT_SIZE;
    }
    std::ptr::copy_nonoverlapping(items.as_ptr(), out, items.len());
    SUCCESS
}

/// The processes a handle lists: a MIG device its own; a GPU its own, plus, in
/// MIG mode, those of all its MIG devices (the privileged aggregate view).
fn processes(t: Target<'_>, graphics: bool) -> Vec<ProcessInfo> {
    let pick = |compute: &[Process], graphic: &[Process]| -> Vec<Process> {
        if graphics {
            graphic.to_vec()
        } else {
            compute.to_vec()
        }
    };
    match t {
        Target::Mig(m) => pick(&m.compute, &m.graphics)
            .iter()
            .map(Process::info)
            .collect(),
        Target::Gpu(g) => {
            let mut all: Vec<ProcessInfo> = pick(&g.compute, &g.graphics)
                .iter()
                .map(Process::info)
                .collect();
            if g.mig_mode == MigMode::On {
                for m in &g.migs {
                    all.extend(pick(&m.compute, &m.graphics).iter().map(|p| {
                        let mut info = p.info();
                        info.gpu_instance_id = p.gi.unwrap_or(m.gi);
                        info.compute_instance_id = p.ci.unwrap_or(m.ci);
                        info
                    }));
                }
            }
            all
        }
    }
}

// ---------------------------------------------------------------------------
// The exported NVML functions
// ---------------------------------------------------------------------------

/// `nvmlInit_v2`: (re)reads the scenario.
#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> Ret {
    match Scenario::load() {
        Ok(s) => *state() = Some(s),
        Err(e) => {
            eprintln!("fake-nvml: {e}");
            *state() = None;
            return UNKNOWN;
        }
    }
    let code = call("nvmlInit_v2", |_| SUCCESS);
    if code != SUCCESS {
        *state() = None;
    }
    code
}

/// `nvmlInitWithFlags`: the flags are ignored.
#[no_mangle]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Ret {
    nvmlInit_v2()
}

/// `nvmlShutdown`: keeps the scenario (NVML's init is reference-counted, and a
/// hung caller may still be inside).
#[cfg(not(feature = "missing-symbols"))]
#[no_mangle]
pub extern "C" fn nvmlShutdown() -> Ret {
    call("nvmlShutdown", |_| SUCCESS)
}

/// `nvmlErrorString`.
#[no_mangle]
pub extern "C" fn nvmlErrorString(result: Ret) -> *const c_char {
    let text: &CStr = match result {
        SUCCESS => c"Success",
        UNINITIALIZED => c"Uninitialized",
        INVALID_ARGUMENT => c"Invalid Argument",
        NOT_SUPPORTED => c"Not Supported",
        4 => c"Insufficient Permissions",
        NOT_FOUND => c"Not Found",
        INSUFFICIENT_SIZE => c"Insufficient Size",
        9 => c"Driver Not Loaded",
        15 => c"GPU is lost",
        _ => c"Unknown Error",
    };
    text.as_ptr()
}

/// `nvmlSystemGetDriverVersion`.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> Ret {
    call("nvmlSystemGetDriverVersion", |s| {
        put_str(&s.driver, version, length)
    })
}

/// `nvmlDeviceGetCount_v2`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Ret {
    follow_scenario();
    call("nvmlDeviceGetCount_v2", |s| {
        put(count, s.gpus.len() as c_uint)
    })
}

/// `nvmlDeviceGetHandleByIndex_v2`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut Handle) -> Ret {
    call("nvmlDeviceGetHandleByIndex_v2", |s| {
        if (index as usize) < s.gpus.len() {
            put(device, gpu_handle(index as usize))
        } else {
            INVALID_ARGUMENT
        }
    })
}

/// `nvmlDeviceGetUUID`: of a GPU or a MIG device.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: Handle,
    uuid: *mut c_char,
    length: c_uint,
) -> Ret {
    on_device("nvmlDeviceGetUUID", device, |t| match t {
        Target::Gpu(g) => put_str(&g.uuid, uuid, length),
        Target::Mig(m) => put_str(&m.uuid, uuid, length),
    })
}

/// `nvmlMemory_v2_t`.
#[repr(C)]
pub struct Memory2 {
    version: c_uint,
    total: c_ulonglong,
    reserved: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

/// `nvmlUtilization_t`.
#[repr(C)]
pub struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

/// `nvmlDeviceGetName`: of a GPU.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: Handle,
    name: *mut c_char,
    length: c_uint,
) -> Ret {
    on_device("nvmlDeviceGetName", device, |t| match t {
        Target::Gpu(g) => put_str(&g.name, name, length),
        Target::Mig(_) => NOT_SUPPORTED,
    })
}

/// `nvmlDeviceGetMemoryInfo_v2`: the scenario's `mem=`, else the sum of the
/// GPU's processes on an H100's total.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(device: Handle, memory: *mut Memory2) -> Ret {
    on_device("nvmlDeviceGetMemoryInfo_v2", device, |t| {
        let Target::Gpu(g) = t else {
            return NOT_SUPPORTED;
        };
        let (used, total) = g.memory.unwrap_or_else(|| {
            let bytes: u64 = g
                .compute
                .iter()
                .chain(&g.graphics)
                .filter_map(|p| p.bytes)
                .sum();
            (bytes / 1_048_576, H100_MIB)
        });
        let mib = 1_048_576;
        put(
            memory,
            Memory2 {
                version: 0,
                total: total * mib,
                reserved: 0,
                free: total.saturating_sub(used) * mib,
                used: used * mib,
            },
        )
    })
}

/// `nvmlDeviceGetUtilizationRates`: the scenario's `busy=`; NOT_SUPPORTED in
/// MIG mode.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: Handle,
    util: *mut Utilization,
) -> Ret {
    on_device("nvmlDeviceGetUtilizationRates", device, |t| match t {
        Target::Gpu(g) if g.mig_mode == MigMode::On => NOT_SUPPORTED,
        Target::Gpu(g) => put(
            util,
            Utilization {
                gpu: g.busy,
                memory: 0,
            },
        ),
        Target::Mig(_) => NOT_SUPPORTED,
    })
}

/// `nvmlDeviceGetComputeRunningProcesses_v3`.
#[cfg(not(feature = "missing-symbols"))]
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: Handle,
    info_count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> Ret {
    on_device("nvmlDeviceGetComputeRunningProcesses_v3", device, |t| {
        put_list(&processes(t, false), info_count, infos)
    })
}

/// `FAKE_NVML_FOLLOW=1`: the scenario file read again on an initialised
/// session (an unreadable one leaves the loaded scenario).
fn follow_scenario() {
    if std::env::var_os("FAKE_NVML_FOLLOW").is_none_or(|v| v != "1") {
        return;
    }
    let mut state = state();
    if state.is_some() {
        if let Ok(s) = Scenario::load() {
            *state = Some(s);
        }
    }
}

/// `nvmlDeviceGetGraphicsRunningProcesses_v3`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v3(
    device: Handle,
    info_count: *mut c_uint,
    infos: *mut ProcessInfo,
) -> Ret {
    on_device("nvmlDeviceGetGraphicsRunningProcesses_v3", device, |t| {
        put_list(&processes(t, true), info_count, infos)
    })
}

/// `nvmlDeviceGetMigMode`: current and pending mode are the same.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: Handle,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> Ret {
    on_device("nvmlDeviceGetMigMode", device, |t| {
        let mode = match t {
            Target::Gpu(g) => g.mig_mode,
            Target::Mig(_) => return NOT_SUPPORTED,
        };
        let value = match mode {
            MigMode::On => 1,
            MigMode::Off => 0,
            MigMode::Unsupported => return NOT_SUPPORTED,
        };
        match put(current, value) {
            SUCCESS => put(pending, value),
            error => error,
        }
    })
}

/// `nvmlDeviceGetMaxMigDeviceCount`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(device: Handle, count: *mut c_uint) -> Ret {
    on_device("nvmlDeviceGetMaxMigDeviceCount", device, |t| match t {
        Target::Gpu(g) if g.mig_mode != MigMode::Unsupported => put(count, MAX_MIG_DEVICES),
        _ => NOT_SUPPORTED,
    })
}

/// `nvmlDeviceGetMigDeviceHandleByIndex`: NOT_FOUND for an empty slot.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: Handle,
    index: c_uint,
    mig_device: *mut Handle,
) -> Ret {
    call("nvmlDeviceGetMigDeviceHandleByIndex", |s| {
        let raw = device.addr();
        let Some(gpu_index) = (raw >> 8).checked_sub(1).filter(|_| raw & 0xff == 0) else {
            return INVALID_ARGUMENT;
        };
        let Some(gpu) = s.gpus.get(gpu_index) else {
            return INVALID_ARGUMENT;
        };
        if gpu.mig_mode != MigMode::On {
            return INVALID_ARGUMENT;
        }
        if index >= MAX_MIG_DEVICES {
            return INVALID_ARGUMENT;
        }
        if (index as usize) < gpu.migs.len() {
            put(mig_device, mig_handle(gpu_index, index as usize))
        } else {
            NOT_FOUND
        }
    })
}

/// `nvmlDeviceGetGpuInstanceId`: of a MIG device handle.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(device: Handle, id: *mut c_uint) -> Ret {
    on_device("nvmlDeviceGetGpuInstanceId", device, |t| match t {
        Target::Mig(m) => put(id, m.gi),
        Target::Gpu(_) => INVALID_ARGUMENT,
    })
}

/// `nvmlDeviceGetComputeInstanceId`: of a MIG device handle.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(device: Handle, id: *mut c_uint) -> Ret {
    on_device("nvmlDeviceGetComputeInstanceId", device, |t| match t {
        Target::Mig(m) => put(id, m.ci),
        Target::Gpu(_) => INVALID_ARGUMENT,
    })
}

/// The samples of a GPU newer than `last_seen`, as `now_us` finds them;
/// NOT_SUPPORTED in MIG mode, NOT_FOUND when there are none.
fn samples_after(
    gpu: &Gpu,
    last_seen: c_ulonglong,
    now_us: c_ulonglong,
) -> Result<Vec<ProcessUtilizationSample>, Ret> {
    if gpu.mig_mode == MigMode::On {
        return Err(NOT_SUPPORTED);
    }
    let samples: Vec<ProcessUtilizationSample> = gpu
        .util
        .iter()
        .map(|u| ProcessUtilizationSample {
            pid: u.pid,
            time_stamp: u.ts.at(now_us),
            sm_util: u.sm,
            mem_util: 0,
            enc_util: 0,
            dec_util: 0,
        })
        .filter(|u| u.time_stamp > last_seen)
        .collect();
    if samples.is_empty() {
        return Err(NOT_FOUND);
    }
    Ok(samples)
}

/// `nvmlDeviceGetProcessUtilization`: the samples newer than `last_seen`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    device: Handle,
    utilization: *mut ProcessUtilizationSample,
    samples_count: *mut c_uint,
    last_seen: c_ulonglong,
) -> Ret {
    on_device("nvmlDeviceGetProcessUtilization", device, |t| {
        let Target::Gpu(g) = t else {
            return NOT_SUPPORTED;
        };
        match samples_after(g, last_seen, now_us()) {
            Ok(samples) => put_list(&samples, samples_count, utilization),
            Err(code) => code,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_directive() {
        let s = Scenario::parse(
            "driver 1.2\n\
             gpu GPU-a  # comment\n\
             compute 441 1616904192\n\
             graphics 9 unavailable gi=1\n\
             util 441 5 ts=7\n\
             gpu GPU-b mig=on\n\
             mig MIG-x gi=1 ci=0\n\
             compute 10 1\n\
             fail nvmlInit_v2 9\n\
             hang nvmlDeviceGetUUID\n",
        )
        .expect("valid scenario");
        assert_eq!(s.driver, "1.2");
        assert_eq!(s.gpus.len(), 2);
        assert_eq!(s.gpus[0].compute[0].bytes, Some(1616904192));
        assert_eq!(s.gpus[0].graphics[0].bytes, None);
        assert_eq!(s.gpus[0].graphics[0].gi, Some(1));
        assert_eq!(s.gpus[0].util[0].ts, Timestamp::At(7));
        assert_eq!(s.gpus[1].mig_mode, MigMode::On);
        assert_eq!(s.gpus[1].migs[0].compute[0].pid, 10);
        assert!(s.gpus[1].compute.is_empty());
        assert_eq!(s.fail, vec![("nvmlInit_v2".to_string(), 9)]);
        assert_eq!(s.hang, vec!["nvmlDeviceGetUUID".to_string()]);
    }

    #[test]
    fn rejects_mistakes_with_the_line() {
        let e = Scenario::parse("gpu A\ncompute x 1\n").expect_err("bad pid");
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(Scenario::parse("compute 1 1\n").is_err());
        assert!(Scenario::parse("gpu A mig=maybe\n").is_err());
        assert!(Scenario::parse("frobnicate\n").is_err());
    }

    fn sample_pids(samples: &[ProcessUtilizationSample]) -> Vec<(c_uint, c_ulonglong, c_uint)> {
        samples
            .iter()
            .map(|s| (s.pid, s.time_stamp, s.sm_util))
            .collect()
    }

    #[test]
    fn samples_are_those_newer_than_last_seen_and_now_is_always_newer() {
        let s = Scenario::parse(
            "gpu A
             util 10 90 ts=now
             util 11 80 ts=100
             util 12 70
",
        )
        .expect("valid");
        assert_eq!(s.gpus[0].util[0].ts, Timestamp::Now);
        assert_eq!(s.gpus[0].util[2].ts, Timestamp::At(1));
        let gpu = &s.gpus[0];
        // The first reading (0): the whole buffer, `now` as the time of the call.
        let all = samples_after(gpu, 0, 5_000).expect("samples");
        assert_eq!(
            sample_pids(&all),
            [(10, 5_000, 90), (11, 100, 80), (12, 1, 70)]
        );
        // After it: only the one still computing, at the new call's time.
        let later = samples_after(gpu, 5_000, 6_000).expect("samples");
        assert_eq!(sample_pids(&later), [(10, 6_000, 90)]);
        assert_eq!(
            sample_pids(&samples_after(gpu, 1, 2).expect("samples"))[1],
            (11, 100, 80)
        );
        // Nothing newer: NOT_FOUND, as NVML.
        let quiet = Scenario::parse(
            "gpu A
util 11 80 ts=100
",
        )
        .expect("valid");
        assert_eq!(
            samples_after(&quiet.gpus[0], 100, 6_000).err(),
            Some(NOT_FOUND)
        );
        assert_eq!(
            samples_after(&quiet.gpus[0], 0, 6_000).map(|v| v.len()),
            Ok(1)
        );
        assert!(Scenario::parse(
            "gpu A
util 1 2 ts=soon
"
        )
        .is_err());
        assert!(Scenario::parse(
            "gpu A
util 1 2 at=3
"
        )
        .is_err());
    }

    #[test]
    fn a_gpu_in_mig_mode_has_no_utilisation_to_give() {
        let s = Scenario::parse(
            "gpu A mig=on busy=40
util 1 50 ts=now
mig M gi=1 ci=0
",
        )
        .expect("valid");
        assert_eq!(samples_after(&s.gpus[0], 0, 10).err(), Some(NOT_SUPPORTED));
        let mut util = Utilization { gpu: 7, memory: 7 };
        *state() = Some(s);
        // SAFETY: a handle this scenario gives, and a live out-pointer.
        let code = unsafe { nvmlDeviceGetUtilizationRates(gpu_handle(0), &mut util) };
        assert_eq!((code, util.gpu), (NOT_SUPPORTED, 7));
    }

    #[test]
    fn handles_round_trip() {
        let s = Scenario::parse("gpu A mig=on\nmig M gi=2 ci=1\n").expect("valid");
        assert!(matches!(target(&s, gpu_handle(0)), Some(Target::Gpu(g)) if g.uuid == "A"));
        assert!(matches!(target(&s, mig_handle(0, 0)), Some(Target::Mig(m)) if m.gi == 2));
        assert!(target(&s, mig_handle(0, 1)).is_none());
        assert!(target(&s, std::ptr::null_mut()).is_none());
    }
}
