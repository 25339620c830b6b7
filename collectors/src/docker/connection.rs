//! How the collector reaches the engine, as the Docker CLI does: `unix://`,
//! `tcp://` (plain) and `tcp://` with TLS, from the `[[collectors.docker]]`
//! keys `endpoint`, `tls_verify`, `cert_path`, else from `DOCKER_HOST`,
//! `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH` (else `~/.docker`).
//!
//! [`Connection::client`] builds the bollard client of one collection. Every
//! request bollard makes passes through one function, [`through`]: it counts
//! the request ([`Calls`]) and sends it without an API version in the path.
//!
//! Why unversioned paths: bollard puts its own default version (1.53 for
//! bollard 0.21) in every path; an engine older than that refuses it (dockerd
//! 20.10 stops at 1.41) and one newer than the version we could pin instead
//! may refuse an old one (Docker 29 takes nothing below 1.44). Asking which
//! version to use (bollard's `negotiate_version`) would cost one more call
//! every scan. An unversioned path is answered in the engine's own current
//! version, which every engine supports; the fields we read have kept their
//! names and meaning from API 1.25 on.

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::{BollardRequest, Docker, API_DEFAULT_VERSION};
use detect_workloads_api::plugin::CollectError;

/// Where the engine listens and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// `host:port`, plain HTTP.
    Tcp(String),
    /// `host:port` over TLS, verified against `certs/ca.pem`, presenting
    /// `certs/cert.pem` with `certs/key.pem`.
    Tls { addr: String, certs: PathBuf },
}

/// The connection settings as given (config keys or environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `unix:///path`, `tcp://host[:port]` or `http://host[:port]`.
    pub endpoint: Option<String>,
    /// TLS with verification on a `tcp://` endpoint.
    pub tls_verify: Option<bool>,
    /// Folder holding `ca.pem`, `cert.pem`, `key.pem`.
    pub cert_path: Option<PathBuf>,
}

impl Settings {
    /// The configured values, each missing one taken from the environment as
    /// the Docker CLI does (`DOCKER_TLS_VERIFY` set to anything non-empty
    /// turns verification on).
    pub(crate) fn with_environment(self, env: impl Fn(&str) -> Option<String>) -> Settings {
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        Settings {
            endpoint: self.endpoint.or_else(|| env("DOCKER_HOST")),
            tls_verify: self
                .tls_verify
                .or_else(|| env("DOCKER_TLS_VERIFY").map(|_| true)),
            cert_path: self.cert_path.or_else(|| {
                env("DOCKER_CERT_PATH")
                    .map(PathBuf::from)
                    .or_else(|| env("HOME").map(|home| Path::new(&home).join(".docker")))
            }),
        }
    }

    /// The endpoint these settings name (`unix:///var/run/docker.sock` when
    /// none). TLS applies to `tcp://` only (as for the Docker CLI, a Unix
    /// socket ignores it); its default port is then 2376, else 2375.
    pub(crate) fn endpoint(&self) -> Result<Endpoint, String> {
        let endpoint = self
            .endpoint
            .as_deref()
            .unwrap_or("unix:///var/run/docker.sock");
        if let Some(path) = endpoint.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(format!("no socket path in {endpoint:?}"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let tls = self.tls_verify == Some(true);
        let (rest, port) = match (endpoint.strip_prefix("tcp://"), tls) {
            (Some(rest), true) => (rest, 2376),
            (Some(rest), false) => (rest, 2375),
            (None, _) => match endpoint.strip_prefix("http://") {
                Some(_) if tls => {
                    return Err(format!("{endpoint:?} is plain HTTP but tls_verify is on"))
                }
                Some(rest) => (rest, 2375),
                None => {
                    return Err(format!(
                        "unsupported endpoint {endpoint:?} (use unix://, tcp:// or http://)"
                    ))
                }
            },
        };
        let addr = host_port(rest, port).ok_or_else(|| format!("no host:port in {endpoint:?}"))?;
        if !tls {
            return Ok(Endpoint::Tcp(addr));
        }
        let certs = self
            .cert_path
            .clone()
            .ok_or("tls_verify is on but no cert_path (nor $DOCKER_CERT_PATH, $HOME) is set")?;
        Ok(Endpoint::Tls { addr, certs })
    }
}

/// `host[:port][/]` -> `host:port`.
fn host_port(rest: &str, default_port: u16) -> Option<String> {
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return None;
    }
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok());
    Some(if has_port {
        host.to_string()
    } else {
        format!("{host}:{default_port}")
    })
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
            Endpoint::Tls { addr, .. } => write!(f, "tcp://{addr} (TLS)"),
        }
    }
}

/// The API calls of one collection, counted where every request passes.
#[derive(Debug, Default)]
pub(crate) struct Calls(AtomicU64);

impl Calls {
    pub(crate) fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The one function every request of the client goes through: counted, and
/// sent without an API version in its path (see the module's comment).
pub(crate) fn through(calls: &Calls, mut request: BollardRequest) -> BollardRequest {
    calls.0.fetch_add(1, Ordering::Relaxed);
    if let Some(uri) = unversioned(request.uri()) {
        *request.uri_mut() = uri;
    }
    if let Some(uri) = listing(request.uri()) {
        *request.uri_mut() = uri;
        // As `list_containers` sends it: no body, so no content type.
        request.headers_mut().remove(http::header::CONTENT_TYPE);
    }
    request
}

/// The container whose export stands for the list of every container: the
/// collector asks bollard for `export_container(LIST_ALL)`, a call whose
/// answer bollard hands over as bytes, and [`through`] sends it as
/// `GET /containers/json?all=true`, the request of bollard's
/// `list_containers`. bollard's typed list decodes every field of every
/// container (ports, mounts, networks); the collector reads a few
/// (`docker::Listed`). No export is ever asked for otherwise.
pub(crate) const LIST_ALL: &str = "detect-workloads.list-all";

/// The path of the export call standing for the list, rewritten to the
/// list's; None for any other.
fn listing(uri: &http::Uri) -> Option<http::Uri> {
    let path = uri.path().strip_prefix("/containers/")?;
    if path.strip_suffix("/export")? != LIST_ALL {
        return None;
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static(
        "/containers/json?all=true",
    ));
    http::Uri::from_parts(parts).ok()
}

/// `.../v1.53/containers/json?all=true` -> `.../containers/json?all=true`;
/// None when the path carries no version.
fn unversioned(uri: &http::Uri) -> Option<http::Uri> {
    let path_and_query = uri.path_and_query()?;
    let rest = path_and_query.path().strip_prefix("/v")?;
    let (version, path) = rest.split_at(rest.find('/')?);
    let is_version = version
        .split('.')
        .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !is_version {
        return None;
    }
    let new = match path_and_query.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(new.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

impl Endpoint {
    /// The bollard client of one collection; `timeout` bounds each request
    /// (whole seconds, at least 1).
    pub(crate) fn client(
        &self,
        timeout: Duration,
        calls: Arc<Calls>,
    ) -> Result<Docker, DockerError> {
        let secs = timeout.as_secs().max(1);
        let version = API_DEFAULT_VERSION;
        let docker = match self {
            Endpoint::Unix(path) => {
                Docker::connect_with_unix(&path.to_string_lossy(), secs, version)?
            }
            Endpoint::Tcp(addr) => Docker::connect_with_http(addr, secs, version)?,
            Endpoint::Tls { addr, certs } => Docker::connect_with_ssl(
                addr,
                &certs.join("key.pem"),
                &certs.join("cert.pem"),
                &certs.join("ca.pem"),
                secs,
                version,
            )?,
        };
        Ok(docker.with_request_modifier(move |request| through(&calls, request)))
    }

    /// "Cannot reach the engine" (no socket, refused, TLS handshake refused)
    /// is unavailability; an engine that answers wrongly (error status, data
    /// bollard cannot read) or takes a connection and never answers (a hung
    /// dockerd: the alerts must see it) is a failure. The message carries
    /// every cause (hyper's own says only "client error (Connect)").
    ///
    /// A socket we may not open is a failure, not an absence: the engine is
    /// there and the scan cannot see it; the message says what to change.
    pub(crate) fn classify(&self, e: DockerError) -> CollectError {
        let text = with_causes(&e);
        match e {
            DockerError::RequestTimeoutError => CollectError::Failed(format!(
                "engine at {self}: {text} (it took the connection and did not answer: \
                 is dockerd hung? `journalctl -u docker`)"
            )),
            DockerError::DockerResponseServerError { .. }
            | DockerError::JsonDataError { .. }
            | DockerError::JsonSerdeError { .. } => {
                CollectError::Failed(format!("engine at {self}: {text}"))
            }
            DockerError::SocketNotFoundError(_) => CollectError::Unavailable(format!(
                "engine at {self}: {text} (no Docker engine on this machine, or it listens \
                 elsewhere: set `endpoint` in [[collectors.docker]] or $DOCKER_HOST)"
            )),
            _ => match io_kind(&e) {
                Some(std::io::ErrorKind::PermissionDenied) => CollectError::Failed(format!(
                    "engine at {self}: {text}; {}",
                    self.permission_hint()
                )),
                Some(std::io::ErrorKind::ConnectionRefused) => CollectError::Unavailable(format!(
                    "engine at {self}: {text} (is the engine running? `systemctl status docker`)"
                )),
                _ => CollectError::Unavailable(format!("engine at {self}: {text}")),
            },
        }
    }

    /// What to do about a socket we may not open: who may.
    fn permission_hint(&self) -> String {
        let Endpoint::Unix(path) = self else {
            return "check the client certificates' permissions".to_string();
        };
        use std::os::unix::fs::MetadataExt;
        let group = std::fs::metadata(path)
            .ok()
            .and_then(|m| nix::unistd::Group::from_gid(m.gid().into()).ok().flatten())
            .map(|g| g.name);
        match group {
            Some(group) => format!(
                "run as root (as the systemd units do) or as a member of the socket's \
                 group `{group}`"
            ),
            None => "run as root (as the systemd units do) or as a member of the socket's group"
                .to_string(),
        }
    }
}

/// The kind of the operating-system error under a client error, if any.
fn io_kind(e: &DockerError) -> Option<std::io::ErrorKind> {
    if let DockerError::IOError { err } = e {
        return Some(err.kind());
    }
    let mut source = e.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = cause.source();
    }
    None
}

/// Why an endpoint from `$DOCKER_HOST` cannot be used, with what to do: a
/// failure at every scan (a warning), not an engine missing on this machine.
pub(crate) fn unusable_from_environment(endpoint: Option<&str>, why: &str) -> CollectError {
    match endpoint {
        Some(value) => CollectError::Failed(format!(
            "$DOCKER_HOST={value:?} is not a usable Docker endpoint: {why}; fix or unset \
             DOCKER_HOST (unix:///path, tcp://host[:port]), or set `endpoint` in \
             [[collectors.docker]]"
        )),
        None => CollectError::Failed(format!(
            "the Docker endpoint cannot be used: {why}; fix $DOCKER_TLS_VERIFY / \
             $DOCKER_CERT_PATH, or set `endpoint`, `tls_verify` and `cert_path` in \
             [[collectors.docker]]"
        )),
    }
}

/// An error and its sources, `a: b: c`, each said once.
pub(crate) fn with_causes(e: &DockerError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(endpoint: &str, tls: Option<bool>) -> Settings {
        Settings {
            endpoint: Some(endpoint.to_string()),
            tls_verify: tls,
            cert_path: Some(PathBuf::from("/certs")),
        }
    }

    #[test]
    fn endpoints_follow_the_docker_cli() {
        let tcp = |e: &str| settings(e, None).endpoint();
        assert_eq!(
            Settings::default().endpoint(),
            Ok(Endpoint::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            tcp("unix:///run/docker.sock"),
            Ok(Endpoint::Unix("/run/docker.sock".into()))
        );
        assert_eq!(
            tcp("tcp://10.0.0.1:2376"),
            Ok(Endpoint::Tcp("10.0.0.1:2376".into()))
        );
        assert_eq!(
            tcp("http://localhost/"),
            Ok(Endpoint::Tcp("localhost:2375".into()))
        );
        assert_eq!(tcp("tcp://[::1]"), Ok(Endpoint::Tcp("[::1]:2375".into())));
        assert_eq!(
            settings("tcp://h", Some(true)).endpoint(),
            Ok(Endpoint::Tls {
                addr: "h:2376".into(),
                certs: "/certs".into()
            })
        );
        // A Unix socket ignores TLS, as the CLI does.
        assert_eq!(
            settings("unix:///s", Some(true)).endpoint(),
            Ok(Endpoint::Unix("/s".into()))
        );
        for bad in [
            "unix://",
            "tcp://",
            "https://h:1",
            "npipe:////./pipe/x",
            "tcp://h:1/x",
        ] {
            assert!(tcp(bad).is_err(), "{bad}");
        }
        assert!(settings("http://h:1", Some(true)).endpoint().is_err());
        let no_certs = Settings {
            cert_path: None,
            ..settings("tcp://h:1", Some(true))
        };
        assert!(no_certs.endpoint().is_err());
    }

    #[test]
    fn configured_keys_win_over_the_environment() {
        let env = |name: &str| match name {
            "DOCKER_HOST" => Some("tcp://env:1".to_string()),
            "DOCKER_TLS_VERIFY" => Some("1".to_string()),
            "DOCKER_CERT_PATH" => Some("/env-certs".to_string()),
            _ => None,
        };
        let from_env = Settings::default().with_environment(env);
        assert_eq!(
            from_env.endpoint(),
            Ok(Endpoint::Tls {
                addr: "env:1".into(),
                certs: "/env-certs".into()
            })
        );
        let configured = settings("tcp://cfg:2", Some(false)).with_environment(env);
        assert_eq!(configured.endpoint(), Ok(Endpoint::Tcp("cfg:2".into())));
        // Empty variables are unset; the certificates default to ~/.docker.
        let empty = |name: &str| match name {
            "HOME" => Some("/root".to_string()),
            _ => Some(String::new()),
        };
        let defaults = Settings::default().with_environment(empty);
        assert_eq!(defaults.tls_verify, None);
        assert_eq!(defaults.cert_path, Some(PathBuf::from("/root/.docker")));
        assert_eq!(
            defaults.endpoint(),
            Ok(Endpoint::Unix("/var/run/docker.sock".into()))
        );
    }

    #[test]
    fn paths_lose_their_api_version_only() {
        let sent = |uri: &str| {
            let uri: http::Uri = uri.parse().expect("uri");
            unversioned(&uri).map(|u| u.to_string())
        };
        assert_eq!(
            sent("http://h:1/v1.53/containers/json?all=true").as_deref(),
            Some("http://h:1/containers/json?all=true")
        );
        assert_eq!(
            sent("http://h:1/v1.41/events").as_deref(),
            Some("http://h:1/events")
        );
        assert_eq!(sent("http://h:1/version"), None);
        assert_eq!(sent("http://h:1/volumes/x"), None);
        assert_eq!(sent("http://h:1/v1.x/info"), None);
    }

    #[test]
    fn the_list_export_is_sent_as_the_list_call() {
        let calls = Calls::default();
        let sent = |uri: &str| {
            let request = http::Request::builder()
                .uri(uri)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(bollard::body_full(Default::default()))
                .expect("request");
            let request = through(&calls, request);
            (
                request.uri().to_string(),
                request.headers().contains_key(http::header::CONTENT_TYPE),
            )
        };
        let export = format!("http://h:1/v1.53/containers/{LIST_ALL}/export");
        assert_eq!(
            sent(&export),
            ("http://h:1/containers/json?all=true".to_string(), false)
        );
        let other = "http://h:1/v1.53/containers/abc/export";
        assert_eq!(
            sent(other),
            ("http://h:1/containers/abc/export".to_string(), true)
        );
        let named = format!("http://h:1/containers/{LIST_ALL}/json");
        assert_eq!(sent(&named), (named.clone(), true));
        assert_eq!(calls.total(), 3);
    }
}
