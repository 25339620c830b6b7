//! The front end of `detect-workloads`: the command line ([`cli::main`]),
//! `ps`, `top`, `validate`, `plugins` and the packaging assets. It runs the
//! engine (`detect-workloads-core`) with whatever plugins the binary links:
//! `src/main.rs` links the built-in ones; a custom build links its own
//! (`examples/custom-build`).
#![deny(missing_docs)]

pub mod cli;
pub mod term;
pub mod top;
