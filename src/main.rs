//! The `detect-workloads` binary: the core's command line with the built-in
//! collectors and sinks linked in.

use detect_workloads_collectors as _;
use detect_workloads_sinks as _;

fn main() -> std::process::ExitCode {
    detect_workloads_core::cli::main()
}
