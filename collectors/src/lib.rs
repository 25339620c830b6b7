//! The built-in collectors of `detect-workloads`, one module each. Linking this
//! crate (`use detect_workloads_collectors as _;`) registers them. Module
//! [`activity`] is no collector: it holds the readers of activity counters
//! (CPU time, network bytes) that collectors use.

pub mod activity;
pub mod docker;
pub mod nvidia_smi;
pub mod nvml;
pub mod podman;
pub mod procfs;
