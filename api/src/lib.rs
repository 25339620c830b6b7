//! The plugin API of `detect-workloads`: what a collector, a stage or a sink
//! is written against, and nothing else.
//!
//! - [`model`]: the facts collectors report and the inventory and events
//!   the engine makes of them;
//! - [`details`]: the `details` of each event type, typed;
//! - [`plugin`]: the three traits, their contexts and errors, and the
//!   compile-time registry (`inventory::submit!` a [`plugin::Registration`]);
//! - [`config`]: what a plugin's build function is handed and returns;
//! - [`users`], [`timefmt`]: user names through NSS and RFC 3339 times;
//! - [`view`]: the inventory drawn as a table (the `stdout` sink, `ps`, `top`).
//!
//! The engine (`detect-workloads-core`) runs the plugins; the command line is
//! the `detect-workloads` crate's. Neither is a dependency of this one, so a
//! plugin builds without them.
#![deny(missing_docs)]

pub mod config;
pub mod details;
pub mod model;
pub mod plugin;
pub mod timefmt;
pub mod users;
pub mod view;

pub use async_trait::async_trait;
pub use inventory;
