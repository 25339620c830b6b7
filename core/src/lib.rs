//! The engine of `detect-workloads`: configuration loading, the scan cycle,
//! the diff and watch mode. It runs plugins written against
//! `detect-workloads-api` (collectors, stages, sinks), names none of them,
//! and has no command line: the `detect-workloads` crate is the front end
//! and the one place that links the built-in plugins.
//!
//! A scan: [`config::Config::load_from`] builds the plugins of a file, then
//! [`cycle::run_cycle`] collects, runs the stages, diffs against the previous
//! inventory and delivers to the sinks; [`watch`] repeats that on engine
//! events and timers.
#![deny(missing_docs)]

pub mod config;
pub mod cycle;
pub mod diff;
pub mod watch;
