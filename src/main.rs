//! The `detect-workloads` binary: the command line with the built-in
//! collectors, stages and sinks linked in.

use detect_workloads_collectors as _;
use detect_workloads_sinks as _;
use detect_workloads_stages as _;

fn main() -> std::process::ExitCode {
    detect_workloads::cli::main()
}
