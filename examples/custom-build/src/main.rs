//! `detect-workloads-custom`: the stock collectors and sinks plus the
//! `device-files` collector from outside the core. Linking a plugin crate is
//! all it takes: each `use ... as _;` keeps a crate's registrations in the binary.

use detect_workloads_collectors as _;
use detect_workloads_device_files as _;
use detect_workloads_sinks as _;

fn main() -> std::process::ExitCode {
    detect_workloads_core::cli::main()
}
