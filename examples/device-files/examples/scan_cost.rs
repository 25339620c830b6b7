//! Measures what one `device-files` scan costs on this machine:
//! `cargo run --release -p detect-workloads-device-files --example scan_cost [ROOT] [DEV_DIR] [RUNS]`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use detect_workloads_device_files::scan_fd_tables;

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(args.next().unwrap_or_else(|| "/proc".to_string()));
    let dev_dir = PathBuf::from(args.next().unwrap_or_else(|| "/dev".to_string()));
    let runs: u32 = match args.next() {
        Some(n) => n.parse().map_err(|e| format!("RUNS {n:?}: {e}"))?,
        None => 20,
    };
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let scan =
            scan_fd_tables(&root, &dev_dir, &AtomicBool::new(false)).map_err(|e| e.to_string())?;
        times.push(start.elapsed());
        last = Some(scan);
    }
    times.sort();
    let scan = last.ok_or("no run")?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{} processes, {} fds, {} unreadable, {} GPU entries: median {:.2} ms, min {:.2} ms, max {:.2} ms over {} runs",
        scan.processes,
        scan.fds,
        scan.unreadable,
        scan.gpu_processes.len(),
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1]),
        times.len()
    );
    Ok(())
}
