//! `detect-workloads generate-assets DIR` (hidden): the manual pages and the
//! shell completions, generated from the command-line definition itself
//! (clap_mangen, clap_complete), so they can never drift from `--help`. The
//! package build runs it before `cargo deb` (tests/run.sh;
//! docs/deploying.md); the package ships what it writes.
//!
//! Layout under DIR: `man/detect-workloads.1` and one page per subcommand
//! (`man/detect-workloads-ps.1`, ...), `completions/detect-workloads.bash`,
//! `completions/_detect-workloads` (zsh), `completions/detect-workloads.fish`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use tracing::error;

use super::Cli;

/// The binary's name, as the pages and completions know it.
const NAME: &str = "detect-workloads";

/// What the main page says beyond `--help`: exit status, files, environment.
const EXTRA: &str = r#".SH "EXIT STATUS"
.TP
0
the command did what it was asked (a scan also when collectors were unavailable)
.TP
1
a fatal error: the inventory cannot be written, another scan holds the lock past
lock_timeout; for ps and top, no inventory to read or every container source failed
.TP
2
an invalid configuration or command line (the message names file, line and key)
.SH FILES
.TP
/etc/ds01/detect-workloads.toml
the configuration (else the built-in default, which \fBdetect-workloads config\fR prints)
.TP
/var/lib/ds01/workload-inventory.json
the inventory (and the scan lock beside it)
.TP
/var/log/ds01/events.jsonl
the event log, one JSON object per line (rotated by /etc/logrotate.d/detect-workloads)
.SH ENVIRONMENT
.TP
DETECT_WORKLOADS_CONFIG
the configuration file when --config is not given
.TP
DETECT_WORKLOADS_LOG
a tracing filter (for example debug) overriding -v and -q
.TP
DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH
the Docker engine, as for the Docker CLI, when the configuration names none
.TP
NO_COLOR
no colour in ps and top
.SH "SEE ALSO"
/usr/share/doc/detect-workloads/README.md, /usr/share/doc/detect-workloads/docs/cli.md, /usr/share/doc/detect-workloads/docs/formats.md
"#;

/// Writes the pages and completions under `dir` (exit 1 when it cannot).
pub fn run(dir: &Path) -> ExitCode {
    match write(dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err((path, e)) => {
            error!("cannot write {}: {e}", path.display());
            ExitCode::from(1)
        }
    }
}

type WriteError = (PathBuf, std::io::Error);

fn write(dir: &Path) -> Result<(), WriteError> {
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |e| (path, e)
    };
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).map_err(at(d))?;
    }
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let main = man.join(format!("{NAME}.1"));
    std::fs::write(&main, main_page(&cmd).map_err(at(&main))?).map_err(at(&main))?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page = clap_mangen::Man::new(sub.clone());
        let path = man.join(page.get_filename());
        let mut text = Vec::new();
        page.render(&mut text).map_err(at(&path))?;
        std::fs::write(&path, text).map_err(at(&path))?;
    }
    for (shell, file) in [
        (Shell::Bash, format!("{NAME}.bash")),
        (Shell::Zsh, format!("_{NAME}")),
        (Shell::Fish, format!("{NAME}.fish")),
    ] {
        let path = completions.join(file);
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd, NAME, &mut text);
        if shell == Shell::Bash {
            text = bash_subcommand_cases(&text);
        }
        std::fs::write(&path, text).map_err(at(&path))?;
    }
    Ok(())
}

/// clap_complete 4.6 names a subcommand's case in its bash script from the
/// binary's name with each `-` replaced by `__subcmd__`
/// (`detect__subcmd__workloads__subcmd__ps`), but finds the subcommand on the
/// command line under the name with `-` replaced by `__`
/// (`detect__workloads__subcmd__ps`): with a `-` in the binary's name no
/// subcommand's options would ever complete. The cases are renamed to what
/// the script looks for (tests/e2e_package.rs completes `ps --f`).
fn bash_subcommand_cases(script: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(script);
    let wrong = format!("{}__subcmd__", NAME.replace('-', "__subcmd__"));
    let right = format!("{}__subcmd__", NAME.replace('-', "__"));
    text.replace(&wrong, &right).into_bytes()
}

/// The main page: clap_mangen's sections, then [`EXTRA`], then the version.
fn main_page(cmd: &clap::Command) -> std::io::Result<Vec<u8>> {
    let page = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    page.render_title(&mut out)?;
    page.render_name_section(&mut out)?;
    page.render_synopsis_section(&mut out)?;
    page.render_description_section(&mut out)?;
    page.render_options_section(&mut out)?;
    page.render_subcommands_section(&mut out)?;
    out.write_all(EXTRA.as_bytes())?;
    page.render_version_section(&mut out)?;
    Ok(out)
}
