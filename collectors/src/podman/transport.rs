//! The connection to one user's Podman socket. Its owner runs the server at
//! the other end and may answer anything, so each connection is checked and
//! bounded before bollard reads a byte of it:
//!
//! - the server's credentials (`SO_PEERCRED`) must be the socket's owner: a
//!   `podman.sock` that is a link to the system's Docker socket, or to
//!   another user's service, is refused ([`Refused`]);
//! - an answer is cut off after `max_answer` bytes (an endless list would
//!   otherwise be held in memory whole);
//! - every request is counted and sent without an API version in its path,
//!   as the Docker collector's are (`docker::connection::through`).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::{BollardRequest, Docker, API_DEFAULT_VERSION};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

use crate::docker::connection::{through, Calls};

/// A socket whose server is not its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    /// The uid of the process serving it.
    pub served_by: u32,
}

/// Connects to `socket` and checks that `owner` serves it.
pub(crate) async fn connect(socket: &Path, owner: u32) -> io::Result<Result<UnixStream, Refused>> {
    let stream = UnixStream::connect(socket).await?;
    let served_by = stream.peer_cred()?.uid();
    Ok(if served_by == owner {
        Ok(stream)
    } else {
        Err(Refused { served_by })
    })
}

/// The bollard client of one collection on `socket`, served by `owner`;
/// `timeout` bounds each request, `max_answer` the bytes read on each
/// connection.
pub(crate) fn client(
    socket: PathBuf,
    owner: u32,
    timeout: Duration,
    max_answer: u64,
    calls: Arc<Calls>,
) -> Result<Docker, DockerError> {
    let socket = Arc::new(socket);
    let transport = move |request: BollardRequest| {
        let request = origin_form(through(&calls, request));
        let socket = Arc::clone(&socket);
        async move {
            let stream = match connect(&socket, owner).await? {
                Ok(stream) => stream,
                Err(Refused { served_by }) => {
                    return Err(DockerError::IOError {
                        err: io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!("served by uid {served_by}, not by its owner (uid {owner})"),
                        ),
                    })
                }
            };
            let io = TokioIo::new(Capped {
                inner: stream,
                left: max_answer,
                max: max_answer,
            });
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
            // The connection is driven beside the request, and never longer
            // than a request may take.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(timeout, connection).await;
            });
            Ok(sender.send_request(request).await?)
        }
    };
    Docker::connect_with_custom_transport(
        transport,
        Some("http://podman"),
        timeout.as_secs().max(1),
        API_DEFAULT_VERSION,
    )
}

/// `http://podman/containers/json?all=true` -> `/containers/json?all=true`,
/// with a `Host` header (HTTP/1.1 servers require one).
fn origin_form(mut request: BollardRequest) -> BollardRequest {
    if let Some(path) = request.uri().path_and_query().cloned() {
        *request.uri_mut() = path.into();
    }
    request
        .headers_mut()
        .entry(http::header::HOST)
        .or_insert(http::HeaderValue::from_static("podman"));
    request
}

/// A stream that fails once more than `max` bytes have been read from it.
struct Capped {
    inner: UnixStream,
    left: u64,
    max: u64,
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Err(io::Error::other(format!(
                "the answer is longer than max_answer ({} bytes)",
                self.max
            ))));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        this.left = this.left.saturating_sub(read);
        result
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_answer_over_the_cap_fails_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.write_all(&[b'x'; 4096]).await;
        });
        let mut capped = Capped {
            inner: UnixStream::connect(&path).await.unwrap(),
            left: 1000,
            max: 1000,
        };
        let mut all = Vec::new();
        let err = capped.read_to_end(&mut all).await.unwrap_err();
        assert!(err.to_string().contains("max_answer (1000 bytes)"), "{err}");
        assert!(all.len() <= 4096 && all.len() >= 1000, "read {}", all.len());
    }

    #[tokio::test]
    async fn a_socket_served_by_someone_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        let me = nix::unistd::getuid().as_raw();
        assert!(connect(&path, me).await.unwrap().is_ok());
        let refused = connect(&path, me + 1).await.unwrap().unwrap_err();
        assert_eq!(refused.served_by, me);
    }
}
