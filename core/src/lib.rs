//! The core of `detect-workloads`: the data model, the plugin traits and their
//! compile-time registry, configuration loading, the scan cycle and the diff.
//! The built-in stages live here too (`stages/`, one file each); collectors and
//! sinks live in their own crates and register themselves.
//!
//! A binary links the plugins it wants and calls [`cli::main`]:
//!
//! ```text
//! use detect_workloads_collectors as _;
//! use detect_workloads_sinks as _;
//! fn main() -> std::process::ExitCode {
//!     detect_workloads_core::cli::main()
//! }
//! ```
#![deny(missing_docs)]

pub mod cli;
pub mod config;
mod config_check;
pub mod config_file;
pub mod cycle;
pub mod diff;
pub mod model;
pub mod plugin;
pub mod stages;
pub mod timefmt;
pub mod top;
pub mod users;
pub mod view;
pub mod watch;

pub use async_trait::async_trait;
pub use inventory;
