//! The built-in sinks of `detect-workloads`, one module each. Linking this
//! crate (`use detect_workloads_sinks as _;`) registers them.

pub mod event_log;
pub mod fsafe;
pub mod inventory_file;
pub mod json;
pub mod prometheus;
pub mod stdout;
