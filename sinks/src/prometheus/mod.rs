//! Sink `prometheus`: the inventory as Prometheus metrics, for a fleet's
//! Prometheus (with node_exporter, dcgm-exporter and Grafana).
//!
//! Two ways out, both the classic text format ([`render()`](fn@render)):
//! - `textfile_dir`: `detect_workloads.prom` in node_exporter's textfile
//!   collector directory, written atomically with the directory checks of
//!   every file sink ([`crate::fsafe::write_atomic`], mode 0644): node_exporter
//!   never reads half a file. Works in oneshot mode; the counters carried
//!   between runs live beside it ([`carried`]).
//! - `listen`: `/metrics` served by hyper in watch mode ([`http`]), with TLS
//!   and basic authentication from `web_config` ([`web_config`]). The address
//!   is bound when watch mode starts (a port that cannot be bound is fatal)
//!   and kept across a reload that keeps it ([`Sink::service`]).
//!
//! This file is the sink itself: its configuration, the delivery and the
//! registration. Each part is a module of its own: [`render`](mod@render) (pure),
//! [`carried`] (state between runs), [`http`] (serving) and [`web_config`].

pub mod carried;
pub mod http;
pub mod render;
pub mod web_config;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use detect_workloads_api::async_trait;
use detect_workloads_api::config::{ConfigError, PluginConfig};
use detect_workloads_api::plugin::{
    Listeners, ScanOutput, Sink, SinkError, SinkPlugin, SinkService,
};
use serde::{Deserialize, Deserializer};
use tracing::{info, warn};

pub use carried::{Carried, StateFile};
pub use http::{Feed, Limits};
pub use render::{process_metrics, render, CONTENT_TYPE, KNOWN_EVENT_TYPES};
pub use web_config::WebConfig;

/// The file written in `textfile_dir` (node_exporter reads `*.prom`).
pub const FILE_NAME: &str = "detect_workloads.prom";

/// The port `listen` gets when only a host is missing (`":9102"`, `"9102"`).
pub const DEFAULT_HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample prometheus`); `config/default.toml` shows it commented out.
pub const SAMPLE: &str = r#"[[sinks.prometheus]]
textfile_dir = "/var/lib/prometheus/node-exporter"   # must exist; gets detect_workloads.prom
# listen = "127.0.0.1:9102"                          # watch mode only: serves /metrics there (":9102": loopback)
# web_config = "/etc/ds01/metrics-web.yml"           # TLS and basic auth, as exporter-toolkit's web config
"#;

/// `[[sinks.prometheus]]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// node_exporter's textfile collector directory (Debian:
    /// `/var/lib/prometheus/node-exporter`); it must exist.
    pub textfile_dir: Option<PathBuf>,
    /// Where watch mode serves `/metrics`, e.g. `127.0.0.1:9102`; a port
    /// alone (`":9102"`) is on loopback.
    #[serde(deserialize_with = "listen_address")]
    pub listen: Option<SocketAddr>,
    /// The exporter-toolkit web configuration file (TLS, basic auth).
    pub web_config: Option<PathBuf>,
}

/// `"host:port"`, `"[v6]:port"`, or a port alone (`":9102"`, `"9102"`),
/// which is on loopback: nothing is exposed to the network unless asked.
fn listen_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    let port_only = text.strip_prefix(':').unwrap_or(&text);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(Some(SocketAddr::new(DEFAULT_HOST, port)));
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "`{text}` is not an address (\"127.0.0.1:9102\", \"[::1]:9102\" or \":9102\")"
        ))
    })
}

/// The `prometheus` sink.
#[derive(Debug)]
pub struct PrometheusSink {
    textfile_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    web: WebConfig,
    /// `None` until the first delivery reads it back from the state file.
    carried: Mutex<Option<Carried>>,
    feed: Arc<Feed>,
    limits: Limits,
}

impl PrometheusSink {
    /// A sink writing into `textfile_dir` and/or serving on `listen`.
    pub fn new(textfile_dir: Option<PathBuf>, listen: Option<SocketAddr>) -> Self {
        Self {
            textfile_dir,
            listen,
            web: WebConfig::default(),
            carried: Mutex::new(None),
            feed: Arc::new(Feed::default()),
            limits: Limits::default(),
        }
    }

    /// The same, served with `web` (TLS, users).
    pub fn with_web_config(mut self, web: WebConfig) -> Self {
        self.web = web;
        self
    }

    /// The same, with other listener bounds (tests).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The address watch mode serves `/metrics` on, when configured.
    pub fn listen(&self) -> Option<SocketAddr> {
        self.listen
    }

    /// What the server answers from.
    pub fn feed(&self) -> Arc<Feed> {
        Arc::clone(&self.feed)
    }

    fn previous(&self) -> Carried {
        let Some(dir) = &self.textfile_dir else {
            return Carried::default();
        };
        StateFile::in_dir(dir).load().unwrap_or_else(|e| {
            warn!("{e}; the metrics' counters restart");
            Carried::default()
        })
    }

    fn advance(&self, out: &ScanOutput<'_>) -> Result<Carried, SinkError> {
        let mut guard = self
            .carried
            .lock()
            .map_err(|_| SinkError::new("the metrics state was poisoned"))?;
        let carried = guard.get_or_insert_with(|| self.previous());
        carried.advance(out.inventory, out.events);
        Ok(carried.clone())
    }
}

/// Whether a cycle asked every source (not a GPU poll, which replays the
/// containers of the last full scan).
fn is_full_scan(out: &ScanOutput<'_>) -> bool {
    out.inventory.scan.as_ref().is_none_or(|s| {
        s.collectors
            .values()
            .all(|r| !r.stats.contains_key("replayed"))
    })
}

#[async_trait]
impl Sink for PrometheusSink {
    async fn deliver(&self, out: &ScanOutput<'_>) -> Result<(), SinkError> {
        let carried = self.advance(out)?;
        let text = render(out.inventory, &carried)
            .map_err(|e| SinkError::new(format!("cannot render the metrics: {e}")))?;
        if let Some(dir) = &self.textfile_dir {
            StateFile::in_dir(dir)
                .store(&carried)
                .map_err(SinkError::new)?;
            crate::fsafe::write_atomic(&dir.join(FILE_NAME), text.as_bytes(), 0o644)
                .map_err(SinkError::new)?;
        }
        self.feed
            .publish(text, is_full_scan(out), out.agent.interval);
        Ok(())
    }

    fn service(&self, listeners: &mut Listeners) -> Result<Option<SinkService>, SinkError> {
        let Some(addr) = self.listen else {
            return Ok(None);
        };
        let listener = listeners
            .bind(addr)
            .map_err(|e| SinkError::io(format!("cannot listen on {addr}"), e))?;
        let bound = listener.local_addr().unwrap_or(addr);
        let secured = match (self.web.tls.is_some(), !self.web.users.is_empty()) {
            (true, true) => "TLS and basic authentication",
            (true, false) => "TLS",
            (false, true) => "basic authentication (no TLS: passwords travel in clear)",
            (false, false) => "plain HTTP",
        };
        info!("serving /metrics on {bound} ({secured})");
        if !addr.ip().is_loopback() && (self.web.tls.is_none() || self.web.users.is_empty()) {
            warn!(
                "/metrics on {bound} is reachable from the network without {}: set web_config \
                 (tls_server_config and basic_auth_users), or listen on 127.0.0.1",
                if self.web.tls.is_none() {
                    "TLS"
                } else {
                    "authentication"
                }
            );
        }
        let feed = self.feed();
        let web = self.web.clone();
        let limits = self.limits;
        Ok(Some(Box::pin(async move {
            http::serve(listener, feed, web, limits)
                .await
                .map_err(|e| SinkError::io(format!("listener on {bound}"), e))
        })))
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(dir) = &self.textfile_dir {
            parts.push(format!(
                "writes {} atomically (mode 0644)",
                dir.join(FILE_NAME).display()
            ));
        }
        if let Some(addr) = self.listen {
            parts.push(format!("serves http://{addr}/metrics (watch mode only)"));
        }
        parts.join("; ")
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Sink>, ConfigError> {
    let parsed: PrometheusConfig = config.parse()?;
    match (&parsed.textfile_dir, parsed.listen) {
        (None, None) => {
            return Err(config.invalid(
                "textfile_dir",
                "set textfile_dir (node_exporter's textfile directory) or listen (watch mode)",
            ))
        }
        (Some(dir), _) if dir.as_os_str().is_empty() => {
            return Err(config.invalid("textfile_dir", "must not be empty"))
        }
        _ => {}
    }
    let web = match &parsed.web_config {
        None => WebConfig::default(),
        Some(_) if parsed.listen.is_none() => {
            return Err(config.invalid("web_config", "it configures listen, which is not set"))
        }
        Some(path) => WebConfig::load(path).map_err(|e| config.invalid("web_config", &e))?,
    };
    Ok(Box::new(
        PrometheusSink::new(parsed.textfile_dir, parsed.listen).with_web_config(web),
    ))
}

detect_workloads_api::inventory::submit! {
    SinkPlugin {
        name: "prometheus",
        summary: "writes metrics for node_exporter's textfile collector (watch mode: serves /metrics)",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_alone_is_on_loopback() {
        let parse = |s: &str| -> Result<PrometheusConfig, String> {
            toml::from_str(&format!("listen = \"{s}\"")).map_err(|e| e.to_string())
        };
        for text in [":9102", "9102", "127.0.0.1:9102"] {
            assert_eq!(
                parse(text).expect(text).listen,
                Some("127.0.0.1:9102".parse().expect("addr"))
            );
        }
        assert_eq!(
            parse("0.0.0.0:9102").expect("any").listen,
            Some("0.0.0.0:9102".parse().expect("addr"))
        );
        assert!(parse("localhost").is_err());
    }
}
