//! Logging to stderr: a level from `-v`/`-q`, or a filter from
//! `$DETECT_WORKLOADS_LOG` (refused when it does not parse); timestamps
//! unless journald, which stamps lines itself, reads stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The variable holding a log filter (`info`, `detect_workloads_core=debug`).
pub const LOG_VARIABLE: &str = "DETECT_WORKLOADS_LOG";

/// The filter: `$DETECT_WORKLOADS_LOG` when set, else the flags' level.
pub fn filter(verbose: bool, quiet: bool, variable: Option<&str>) -> Result<EnvFilter, String> {
    if let Some(text) = variable.filter(|t| !t.trim().is_empty()) {
        return EnvFilter::builder().parse(text).map_err(|e| {
            format!(
                "invalid ${LOG_VARIABLE} {text:?}: {e}; write a level such as \"info\" or \
                 \"debug\", or target=level pairs separated by commas"
            )
        });
    }
    // `-v` is this program's debug lines (every crate of it is named
    // `detect_workloads*`), not the HTTP and TLS libraries' internals.
    let level = if verbose {
        "info,detect_workloads=debug"
    } else if quiet {
        "warn"
    } else {
        "info"
    };
    Ok(EnvFilter::new(level))
}

/// Installs the logger.
pub fn init(verbose: bool, quiet: bool) -> Result<(), String> {
    let variable = std::env::var(LOG_VARIABLE).ok();
    let filter = filter(verbose, quiet, variable.as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    // A second logger (tests calling main twice) is no error worth stopping for.
    let _ = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_an_error_and_a_good_one_is_used() {
        let e = filter(false, false, Some("info,foo=loud")).expect_err("bad filter");
        assert!(
            e.starts_with("invalid $DETECT_WORKLOADS_LOG \"info,foo=loud\": "),
            "{e}"
        );
        assert!(filter(false, false, Some("debug")).is_ok());
        assert!(filter(false, true, None).is_ok());
    }

    #[test]
    fn verbose_is_our_debug_lines_only() {
        let f = filter(true, false, None).expect("filter").to_string();
        assert!(f.contains("detect_workloads=debug"), "{f}");
        assert!(!f.starts_with("debug"), "{f}");
    }
}
