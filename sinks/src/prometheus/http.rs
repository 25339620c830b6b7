//! Serving: `/metrics` over HTTP/1.1 with hyper, in watch mode.
//!
//! - `GET /metrics` (and `HEAD`): the latest metrics, with the process's own
//!   `process_*` metrics read at each request; `GET /`: a short landing page;
//!   `GET /-/healthy`: 200 while the last full scan is at most three
//!   `[agent] interval`s old, 503 after. Another method on these paths is 405
//!   with `Allow: GET, HEAD`; any other path is 404.
//! - TLS and basic authentication as the web configuration says
//!   ([`super::web_config`]): wrong or missing credentials are 401 with
//!   `WWW-Authenticate`; plain HTTP to a TLS listener fails the handshake.
//! - Bounded: at most [`Limits::max_connections`] connections are open (well
//!   below the descriptor limit, which the scans need); when a new one
//!   arrives at the cap, an idle connection is closed for it: first the one
//!   that has waited longest without ever sending a request, then the
//!   longest idle keep-alive one. So connections held open by a local user
//!   cannot lock Prometheus out. A connection must complete its
//!   TLS handshake within [`Limits::handshake_timeout`], send each request
//!   head within [`Limits::header_timeout`] of opening or of the previous
//!   response (hyper's header read timeout, which also closes idle
//!   keep-alive connections), and be done with a request within
//!   [`Limits::request_timeout`].

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io::ErrorKind;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::render::{process_metrics, CONTENT_TYPE, VERSION};
use super::web_config::WebConfig;

/// The bounds of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// The TLS handshake must end within this.
    pub handshake_timeout: Duration,
    /// Each request head must arrive within this (of opening, or of the
    /// previous response).
    pub header_timeout: Duration,
    /// A request must be answered (the response written) within this.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// What the sink publishes for the server: the latest metrics and when the
/// last full scan was delivered.
#[derive(Debug)]
pub struct Feed {
    started: Instant,
    latest: Mutex<Latest>,
}

#[derive(Debug, Clone, Default)]
struct Latest {
    metrics: Bytes,
    last_full_scan: Option<Instant>,
    interval: Option<Duration>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            started: Instant::now(),
            latest: Mutex::new(Latest::default()),
        }
    }
}

impl Feed {
    fn lock(&self) -> MutexGuard<'_, Latest> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A delivery: the new metrics; `full` when the cycle asked every source
    /// (not a GPU poll); `interval` is the configuration's full-scan interval.
    pub fn publish(&self, metrics: String, full: bool, interval: Duration) {
        let mut latest = self.lock();
        latest.metrics = Bytes::from(metrics);
        latest.interval = Some(interval);
        if full {
            latest.last_full_scan = Some(Instant::now());
        }
    }

    /// The latest metrics (empty before the first delivery).
    pub fn metrics(&self) -> Bytes {
        self.lock().metrics.clone()
    }

    /// `Ok` with a line when the last full scan (or, before the first, the
    /// start) is at most three intervals old; `Err` with a line otherwise.
    pub fn health(&self, now: Instant) -> Result<String, String> {
        let latest = self.lock().clone();
        let interval = latest
            .interval
            .unwrap_or(detect_workloads_api::config::AgentConfig::default().interval);
        let limit = interval * 3;
        let fmt = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
        match latest.last_full_scan {
            Some(at) if now.duration_since(at) <= limit => Ok(format!(
                "ok: last full scan {} ago\n",
                fmt(now.duration_since(at))
            )),
            Some(at) => Err(format!(
                "stale: last full scan {} ago, more than three intervals ({})\n",
                fmt(now.duration_since(at)),
                fmt(limit)
            )),
            None if now.duration_since(self.started) <= limit => {
                Ok("ok: no full scan yet\n".to_string())
            }
            None => Err(format!(
                "stale: no full scan in the {} since start\n",
                fmt(now.duration_since(self.started))
            )),
        }
    }
}

/// The open connections: at the cap, the one idle longest is closed.
#[derive(Debug)]
struct Slots {
    max: usize,
    inner: Mutex<SlotMap>,
}

#[derive(Debug, Default)]
struct SlotMap {
    next: u64,
    open: BTreeMap<u64, Slot>,
}

#[derive(Debug)]
struct Slot {
    /// Since when it is busy (a request in progress) or idle.
    since: Instant,
    busy: bool,
    /// Whether it has completed a request (a scraper's keep-alive
    /// connection): evicted only after those that never sent one.
    served: bool,
    close: Arc<Notify>,
}

impl Slots {
    fn lock(&self) -> MutexGuard<'_, SlotMap> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection, closing the longest idle one at the cap;
    /// `None` (refuse it) when every slot has a request in progress.
    fn admit(&self, now: Instant) -> Option<(u64, Arc<Notify>)> {
        let mut map = self.lock();
        if map.open.len() >= self.max {
            let oldest_idle = map
                .open
                .iter()
                .filter(|(_, s)| !s.busy)
                .min_by_key(|(_, s)| (s.served, s.since))
                .map(|(id, _)| *id)?;
            if let Some(evicted) = map.open.remove(&oldest_idle) {
                evicted.close.notify_one();
            }
        }
        let id = map.next;
        map.next += 1;
        let close = Arc::new(Notify::new());
        map.open.insert(
            id,
            Slot {
                since: now,
                busy: false,
                served: false,
                close: close.clone(),
            },
        );
        Some((id, close))
    }

    fn set_busy(&self, id: u64, busy: bool) {
        if let Some(slot) = self.lock().open.get_mut(&id) {
            slot.busy = busy;
            slot.served |= !busy;
            slot.since = Instant::now();
        }
    }

    /// Whether the connection has run over its time: a request in progress
    /// for longer than the request timeout, or no new request for longer
    /// than both timeouts (hyper closes an idle connection at the header
    /// timeout, so it is stuck writing a response nobody reads).
    fn overdue(&self, id: u64, limits: &Limits) -> bool {
        self.lock().open.get(&id).is_some_and(|s| {
            let limit = if s.busy {
                limits.request_timeout
            } else {
                limits.request_timeout + limits.header_timeout
            };
            s.since.elapsed() > limit
        })
    }

    fn release(&self, id: u64) {
        self.lock().open.remove(&id);
    }

    fn open(&self) -> usize {
        self.lock().open.len()
    }
}

/// Basic authentication against bcrypt hashes. A password that verified is
/// remembered (as its SHA-256, compared in constant time) so that a scrape
/// does not cost a bcrypt run each time.
#[derive(Debug, Default)]
struct Auth {
    users: BTreeMap<String, String>,
    verified: Mutex<HashMap<String, [u8; 32]>>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Whether the request's `Authorization` header names a user with the
    /// right password (always true when no users are configured).
    async fn allows(self: &Arc<Self>, header: Option<&header::HeaderValue>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some((user, password)) = header.and_then(basic_credentials) else {
            return false;
        };
        let Some(hash) = self.users.get(&user).cloned() else {
            return false;
        };
        let digest = sha256(password.as_bytes());
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
            .copied();
        if cached.is_some_and(|c| same(&c, &digest)) {
            return true;
        }
        // bcrypt is slow on purpose: off the runtime's threads.
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .is_ok_and(|r| r.unwrap_or(false));
        if ok {
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(user, digest);
        }
        ok
    }
}

/// `Basic base64(user:password)` -> (user, password).
fn basic_credentials(value: &header::HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The paths served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    Landing,
    Health,
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        match path {
            "/metrics" => Some(Route::Metrics),
            "/" => Some(Route::Landing),
            "/-/healthy" => Some(Route::Health),
            _ => None,
        }
    }
}

const LANDING: &str = "<!DOCTYPE html>\n<html><head><title>detect-workloads</title></head>\n\
<body><h1>detect-workloads</h1>\n<p>The inventory of the workloads on this GPU server, \
for Prometheus.</p>\n<ul><li><a href=\"metrics\">/metrics</a></li>\n\
<li><a href=\"-/healthy\">/-/healthy</a></li></ul>\n<p>Version ";

fn text(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}

/// The answer to one request (authentication already checked).
fn respond(method: &Method, path: &str, feed: &Feed) -> Response<Full<Bytes>> {
    let Some(route) = Route::of(path) else {
        return text(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    };
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET and HEAD\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match route {
        Route::Metrics => {
            let mut body = feed.metrics().to_vec();
            body.extend_from_slice(process_metrics().as_bytes());
            text(StatusCode::OK, CONTENT_TYPE, body)
        }
        Route::Landing => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            format!("{LANDING}{VERSION}</p></body></html>\n"),
        ),
        Route::Health => match feed.health(Instant::now()) {
            Ok(line) => text(StatusCode::OK, "text/plain", line),
            Err(line) => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", line),
        },
    }
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::UNAUTHORIZED, "text/plain", "unauthorized\n");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"detect-workloads\""),
    );
    r
}

/// Everything a connection needs.
struct Shared {
    feed: Arc<Feed>,
    auth: Arc<Auth>,
    tls: Option<TlsAcceptor>,
    slots: Slots,
    limits: Limits,
}

/// Serves on `listener` until it fails for good (it is shared with a
/// configuration that replaces this one at a reload, which goes on accepting).
pub async fn serve(
    listener: Arc<TcpListener>,
    feed: Arc<Feed>,
    web: WebConfig,
    limits: Limits,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        feed,
        auth: Arc::new(Auth {
            users: web.users,
            verified: Mutex::default(),
        }),
        tls: web.tls.map(TlsAcceptor::from),
        slots: Slots {
            max: limits.max_connections.max(1),
            inner: Mutex::default(),
        },
        limits,
    });
    // The connections are this future's: when it is dropped (a reload
    // replaced the configuration, or the service stopped) every one of them
    // is aborted with it, so that none goes on serving an old feed with old
    // credentials outside the new cap.
    let mut connections: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors and the like: wait, then go on serving.
            Err(e) if e.kind() != ErrorKind::InvalidInput => {
                warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some((id, close)) = shared.slots.admit(Instant::now()) else {
            debug!(%peer, "every metrics connection is busy: refused");
            continue;
        };
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            connection(&shared, id, stream, close).await;
            shared.slots.release(id);
            debug!(%peer, open = shared.slots.open(), "metrics connection closed");
        });
    }
}

async fn connection(shared: &Arc<Shared>, id: u64, stream: TcpStream, close: Arc<Notify>) {
    let _ = stream.set_nodelay(true);
    let served = async {
        match &shared.tls {
            None => http1(shared, id, stream).await,
            Some(acceptor) => {
                match tokio::time::timeout(shared.limits.handshake_timeout, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(tls)) => http1(shared, id, tls).await,
                    Ok(Err(e)) => debug!("metrics TLS handshake: {e}"),
                    Err(_) => debug!("metrics TLS handshake timed out"),
                }
            }
        }
    };
    let watchdog = async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if shared.slots.overdue(id, &shared.limits) {
                debug!("metrics request ran over its time: closed");
                return;
            }
        }
    };
    tokio::select! {
        () = served => {}
        () = close.notified() => debug!("metrics connection closed for a newer one"),
        () = watchdog => {}
    }
}

async fn http1<S>(shared: &Arc<Shared>, id: u64, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(|req: Request<Incoming>| {
        let shared = Arc::clone(shared);
        async move {
            shared.slots.set_busy(id, true);
            let response = if shared
                .auth
                .allows(req.headers().get(header::AUTHORIZATION))
                .await
            {
                respond(req.method(), req.uri().path(), &shared.feed)
            } else {
                unauthorized()
            };
            shared.slots.set_busy(id, false);
            Ok::<_, Infallible>(response)
        }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_timeout)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        debug!("metrics connection: {e}");
    }
}

#[cfg(test)]
mod tests;
