//! SIGTERM and SIGINT stop watch mode once the current cycle is written;
//! SIGHUP reloads the configuration.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::UnboundedSender;

use super::Notice;

/// Installs the handlers (from now on these signals no longer kill the
/// process) and forwards them to the loop as notices.
pub fn listen(
    runtime: &tokio::runtime::Runtime,
    tx: UnboundedSender<Notice>,
) -> std::io::Result<()> {
    let _entered = runtime.enter();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    runtime.spawn(async move {
        loop {
            let notice = tokio::select! {
                _ = term.recv() => Notice::Stop("SIGTERM"),
                _ = int.recv() => Notice::Stop("SIGINT"),
                _ = hup.recv() => Notice::Reload,
            };
            if tx.send(notice).is_err() {
                return;
            }
        }
    });
    Ok(())
}
