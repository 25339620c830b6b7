//! `detect-workloads-custom`: the stock collectors, stages and sinks plus the
//! `device-files` collector from outside the workspace's plugin crates.
//! Linking a plugin crate is all it takes: each `use ... as _;` keeps a
//! crate's registrations in the binary.

use detect_workloads_collectors as _;
use detect_workloads_device_files as _;
use detect_workloads_sinks as _;
use detect_workloads_stages as _;

fn main() -> std::process::ExitCode {
    detect_workloads::cli::main()
}
