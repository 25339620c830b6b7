//! The built-in collectors of `detect-workloads`, one module each. Linking this
//! crate (`use detect_workloads_collectors as _;`) registers them.

pub mod docker;
pub mod nvidia_smi;
pub mod nvml;
pub mod podman;
pub mod procfs;
