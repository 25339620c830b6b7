//! Collector `docker`: every container the Docker engine knows, running or not,
//! through the Engine API with `bollard` (`connection.rs`: which engine, over
//! `unix://`, `tcp://` or `tcp://` with TLS, and the one place every request
//! passes, where calls are counted).
//!
//! Needs: read access to the engine socket (`endpoint`, else `$DOCKER_HOST`,
//! else `unix:///var/run/docker.sock`), or for TLS the client certificates in
//! `cert_path`. It only reads, and it reads nothing but the engine's API.
//!
//! Cost: a steady scan makes two API calls whatever the number of containers:
//! list containers, and the container and image events since the previous
//! scan. Image names (first tag) are looked up again (list images) only when a
//! container is new or an image changed. Facts that need an inspect (GPU
//! access, devices, main PID, user) are cached in the inventory and refreshed
//! only for containers that are new, changed state, or had an event since the
//! previous scan, or that run while their cached main PID is 0 (another stage
//! zeroes it when `/proc` shows that PID is no longer in the container: a
//! restart whose events were missed); those inspects run concurrently, at
//! most `max_concurrent_inspects` at a time. The list's answer is decoded
//! into the eight fields read (`Listed`), not into bollard's whole model.
//!
//! Workloads between scans: a container created and removed since the
//! previous scan is never listed; the events tell it (`create` then
//! `destroy`), and it is reported as short-lived with the engine's times. The
//! engine keeps only its last [`EVENTS_KEPT`] events (of every type) and
//! loses them when it restarts: when the answer holds that many and its
//! first is later than the previous scan, events may be missing; this is
//! logged and recorded as the stat `events_gap` = 1. (A restart of the engine
//! alone is not detected: its API gives no start time cheaply.)

pub(crate) mod connection;
mod events;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use std::borrow::Cow;

use bollard::models::{
    ContainerInspectResponse, ContainerSummaryStateEnum, EventMessage, EventMessageTypeEnum,
};
use bollard::query_parameters::{EventsOptions, ListImagesOptions};
use bollard::Docker;
use connection::{Calls, Endpoint, Settings};
use detect_workloads_api::async_trait;
use detect_workloads_api::config::{duration, ConfigError, PluginConfig};
use detect_workloads_api::model::{
    short_id, short_key, ContainerFacts, DeviceRequest, FactKind, Health, InspectFacts, Inventory,
    Observations, ShortLivedContainer,
};
use detect_workloads_api::plugin::{
    Change, ChangeFeed, CollectContext, CollectError, Collected, Collector, CollectorPlugin,
    Previous,
};
use detect_workloads_api::timefmt::Timestamp;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Deserialize;
use tracing::{debug, warn};

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample docker`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[collectors.docker]]
# endpoint = "unix:///tmp/other.sock"   # default: $DOCKER_HOST, else unix:///var/run/docker.sock
# tls_verify = true                     # TLS for tcp:// endpoints; default: on when $DOCKER_TLS_VERIFY is set
# cert_path = "/etc/ds01/docker-certs"  # ca.pem, cert.pem, key.pem; default: $DOCKER_CERT_PATH, else ~/.docker
timeout = "10s"
max_concurrent_inspects = 16    # inspect calls in flight at once on a cold scan
"#;

/// `[[collectors.docker]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// `unix:///path`, `tcp://host[:port]` or `http://host[:port]`; else
    /// `$DOCKER_HOST`, else `unix:///var/run/docker.sock`.
    pub endpoint: Option<String>,
    /// TLS with verification on a `tcp://` endpoint; else on when
    /// `$DOCKER_TLS_VERIFY` is set (non-empty).
    pub tls_verify: Option<bool>,
    /// Folder holding `ca.pem`, `cert.pem` and `key.pem` (as for the Docker
    /// CLI); else `$DOCKER_CERT_PATH`, else `~/.docker`.
    pub cert_path: Option<PathBuf>,
    /// Time allowed for the whole collection (and for each request).
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Inspect calls in flight at once on a cold scan.
    pub max_concurrent_inspects: usize,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            tls_verify: None,
            cert_path: None,
            timeout: Duration::from_secs(10),
            max_concurrent_inspects: 16,
        }
    }
}

impl DockerConfig {
    /// The connection settings: these keys, each missing one from the
    /// environment as the Docker CLI reads it.
    fn settings(&self) -> Settings {
        Settings {
            endpoint: self.endpoint.clone(),
            tls_verify: self.tls_verify,
            cert_path: self.cert_path.clone(),
        }
        .with_environment(|name| std::env::var(name).ok())
    }
}

/// The `docker` collector.
#[derive(Debug)]
pub struct DockerCollector {
    config: DockerConfig,
    /// Resolved when built; an unusable one (from the environment) makes
    /// every collection unavailable.
    endpoint: Result<Endpoint, String>,
}

impl DockerCollector {
    /// Builds it; the endpoint is resolved now (config, environment, default).
    pub fn new(config: DockerConfig) -> Self {
        let endpoint = config.settings().endpoint();
        Self { config, endpoint }
    }
}

impl DockerCollector {
    /// Why the endpoint (from the environment: a configured one is checked
    /// when the configuration is loaded) cannot be used.
    fn unusable(&self, why: &str) -> CollectError {
        let from_env = self.config.endpoint.is_none();
        let value = from_env
            .then(|| std::env::var("DOCKER_HOST").ok())
            .flatten()
            .filter(|v| !v.is_empty());
        connection::unusable_from_environment(value.as_deref(), why)
    }
}

#[async_trait]
impl Collector for DockerCollector {
    fn provides(&self) -> &'static [FactKind] {
        &[FactKind::Containers]
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    fn describe(&self) -> String {
        let endpoint = match &self.endpoint {
            Ok(endpoint) => endpoint.to_string(),
            Err(e) => format!("unusable ({e})"),
        };
        format!(
            "endpoint {endpoint}, timeout {}, max_concurrent_inspects {}",
            detect_workloads_api::config::human_duration(self.config.timeout),
            self.config.max_concurrent_inspects
        )
    }

    async fn collect(&self, ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        let endpoint = self.endpoint.as_ref().map_err(|e| self.unusable(e))?;
        let calls = Arc::new(Calls::default());
        let docker = endpoint
            .client(self.config.timeout, Arc::clone(&calls))
            .map_err(|e| endpoint.classify(e))?;
        let found = containers(
            &docker,
            ctx.previous,
            Events::Asked,
            self.config.max_concurrent_inspects,
        )
        .await
        .map_err(|e| endpoint.classify(e))?;
        let mut stats = BTreeMap::new();
        stats.insert("api_calls".to_string(), calls.total());
        stats.insert("inspects".to_string(), found.inspects);
        if found.events_gap {
            stats.insert("events_gap".to_string(), 1);
        }
        Ok(Collected {
            observations: Observations {
                containers: found.containers,
                short_lived: found.short_lived,
                ..Default::default()
            },
            stats,
        })
    }

    fn changes(&self, since: Option<Change>) -> Option<ChangeFeed> {
        Some(match &self.endpoint {
            Ok(endpoint) => events::subscribe(endpoint, self.config.timeout, since),
            Err(e) => Box::pin(stream::iter([Err(self.unusable(e))])),
        })
    }
}

/// What one collection found.
pub(crate) struct Found {
    /// Every container, sorted by id.
    pub(crate) containers: Vec<ContainerFacts>,
    /// How many were inspected.
    pub(crate) inspects: u64,
    /// Containers created and removed since the previous scan.
    short_lived: Vec<ShortLivedContainer>,
    /// Whether the engine's events may not cover the time since then.
    events_gap: bool,
}

/// Whether a collection asks the engine for its events since the previous
/// scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Events {
    /// Asked: containers with an event are inspected again, and those
    /// created and removed meanwhile are told.
    Asked,
    /// Not asked (an engine whose events are not Docker's): cached inspect
    /// facts are refreshed on a change of state or a stale main PID only,
    /// and image names are looked up every scan.
    NotAsked,
}

/// Every container of the engine `docker` answers for, and what its events
/// since the previous scan tell; at most `at_once` inspects in flight.
pub(crate) async fn containers(
    docker: &Docker,
    previous_state: &Previous,
    events: Events,
    at_once: usize,
) -> Result<Found, DockerError> {
    let started = std::time::Instant::now();
    let (body, changes) = fetch(docker, previous_state, events).await?;
    let mut list = decode_list(&body)?;
    debug!(
        containers = list.len(),
        elapsed_ms = detect_workloads_api::timefmt::round_ms(started.elapsed()),
        "listed"
    );
    let previous = previous_state.get().await;
    // Image names are looked up again only when an image changed or a
    // container is new; otherwise each keeps the name it had.
    let known = |s: &Listed<'_>| {
        s.id.as_deref()
            .and_then(|id| previous.containers.get(short_key(id)))
            .is_some_and(|e| !e.image.is_empty())
    };
    let tags = match &changes {
        Some(changes) if !changes.images && list.iter().all(known) => None,
        _ => Some(image_tags(docker).await?),
    };
    let Changes {
        containers: touched,
        short_lived,
        events_gap,
        ..
    } = changes.unwrap_or_default();

    // In id order from here: the cached ones stay in it, the inspected are
    // put in it apart, and the final sort merges two runs (sorting the
    // entries themselves, large, in the engine's order costs a millisecond
    // at a thousand containers). Stable: two entries with one id (an
    // engine a user runs may say anything) keep the engine's order, whose
    // first one is kept.
    list.sort_by(|a, b| a.id.cmp(&b.id));
    let mut facts = Vec::with_capacity(list.len());
    let mut to_inspect = Vec::new();
    for summary in list {
        let Some(mut c) = summary_facts(summary, tags.as_ref()) else {
            continue;
        };
        if tags.is_none() {
            if let Some(before) = previous.containers.get(short_key(&c.id)) {
                c.image.clone_from(&before.image);
            }
        }
        match cached_inspect(previous, &c, &touched) {
            Some(cached) => facts.push(ContainerFacts {
                inspect: Some(cached),
                ..c
            }),
            None => to_inspect.push(c),
        }
    }
    let inspected = inspect_all(docker, to_inspect, at_once).await?;
    let inspects = inspected.len() as u64;
    let mut inspected: Vec<ContainerFacts> = inspected.into_iter().flatten().collect();
    inspected.sort_by(|a, b| a.id.cmp(&b.id));
    facts.extend(inspected);
    facts.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Found {
        containers: facts,
        inspects,
        short_lived,
        events_gap,
    })
}

/// Inspects each container, at most `at_once` at a time; a container removed
/// between the list and its inspect is gone (`None`).
async fn inspect_all(
    docker: &Docker,
    containers: Vec<ContainerFacts>,
    at_once: usize,
) -> Result<Vec<Option<ContainerFacts>>, DockerError> {
    stream::iter(containers)
        .map(|mut c| async move {
            match docker.inspect_container(&c.id, None).await {
                Ok(response) => {
                    c.inspect = Some(inspect_facts(response));
                    Ok(Some(c))
                }
                Err(DockerError::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(at_once.max(1))
        .try_collect()
        .await
}

/// What changed on the engine since the previous scan, from its events.
#[derive(Debug, Default)]
struct Changes {
    /// Short ids of containers with an event (they need a fresh inspect).
    containers: BTreeSet<String>,
    /// Whether any image was tagged, untagged, pulled, loaded or removed (the
    /// containers' image names must then be looked up again).
    images: bool,
    /// Containers both created and removed in the window.
    short_lived: Vec<ShortLivedContainer>,
    /// Whether the engine's events may not reach back to the window's start.
    events_gap: bool,
}

/// How many events the engine keeps for `since` queries (moby's
/// `daemon/events` keeps the last 256, of every type).
pub const EVENTS_KEPT: usize = 256;

/// Whether an answer to "events since `since`" may have lost some: it holds
/// everything the engine keeps and its first event is later than `since`.
fn events_gap(since: i64, first_time: Option<i64>, count: usize) -> bool {
    count >= EVENTS_KEPT && first_time.is_some_and(|t| t > since)
}

/// The containers both created and removed among `events` (in the engine's
/// order), with the engine's times; those removed before `since` (the
/// previous scan's start: the query overlaps it by a second) were told then.
fn short_lived(events: &[EventMessage], since: i64) -> Vec<ShortLivedContainer> {
    let mut created: BTreeMap<String, ShortLivedContainer> = BTreeMap::new();
    let mut out = Vec::new();
    for e in events {
        if e.typ != Some(EventMessageTypeEnum::CONTAINER) {
            continue;
        }
        let Some(actor) = &e.actor else { continue };
        let Some(id) = actor.id.clone() else { continue };
        let attr = |k: &str| {
            actor
                .attributes
                .as_ref()
                .and_then(|a| a.get(k))
                .cloned()
                .unwrap_or_default()
        };
        let at = event_time(e);
        match e.action.as_deref() {
            Some("create") => {
                created.insert(
                    id.clone(),
                    ShortLivedContainer {
                        id,
                        name: attr("name"),
                        image: attr("image"),
                        created_at: at,
                        // Set by its destroy event.
                        removed_at: at,
                        // The create event's attributes are the labels,
                        // plus the name and image.
                        labels: actor
                            .attributes
                            .iter()
                            .flatten()
                            .filter(|(k, _)| k.as_str() != "name" && k.as_str() != "image")
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        ..ShortLivedContainer::default()
                    },
                );
            }
            Some("destroy") => {
                let removed = created.remove(&id);
                if let Some(c) = removed.filter(|_| e.time.is_some_and(|t| t >= since)) {
                    out.push(ShortLivedContainer {
                        removed_at: at,
                        ..c
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// An event's time (whole seconds, as the engine's `time`; the epoch when
/// it has none or one before it).
fn event_time(e: &EventMessage) -> Timestamp {
    Timestamp::from_unix_seconds(e.time.unwrap_or_default().max(0))
}

/// The calls of every scan, concurrently (each on its own connection, so a
/// steady scan takes about as long as the list call alone): the containers
/// (the list's body, [`decode_list`] reads it), and, when there is a
/// previous scan, what changed since. The list is asked for first; the
/// previous state may still be loading meanwhile.
async fn fetch(
    docker: &Docker,
    previous: &Previous,
    events: Events,
) -> Result<(Vec<u8>, Option<Changes>), DockerError> {
    let list = list_body(docker);
    let changes = async {
        // Containers with events since the previous scan need a fresh
        // inspect; containers that came and went are told by them.
        let since = match events {
            // The engine's `since` is in seconds since the epoch.
            Events::Asked => previous.scan_started().await.map(Timestamp::unix_seconds),
            Events::NotAsked => None,
        };
        match since {
            Some(since) => changes_since(docker, since).await.map(Some),
            None => Ok(None),
        }
    };
    futures_util::future::try_join(list, changes).await
}

/// `GET /containers/json?all=true` through bollard, as `list_containers`
/// sends it, its answer as bytes (see [`connection::LIST_ALL`]).
async fn list_body(docker: &Docker) -> Result<Vec<u8>, DockerError> {
    let mut chunks = docker.export_container(connection::LIST_ALL);
    let mut body = Vec::new();
    while let Some(chunk) = chunks.try_next().await? {
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// One container of the list, with only the fields the collector reads
/// (bollard's `ContainerSummary` has the same names and types, the state
/// is its very type: a state it does not know fails the list as it would);
/// the others are skipped unread. Strings without escapes are borrowed from
/// the answer.
#[derive(Debug, Deserialize)]
struct Listed<'a> {
    #[serde(rename = "Id", borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(rename = "Names", borrow, default)]
    names: Option<Vec<Cow<'a, str>>>,
    #[serde(rename = "Image", borrow, default)]
    image: Option<Cow<'a, str>>,
    #[serde(rename = "ImageID", borrow, default)]
    image_id: Option<Cow<'a, str>>,
    #[serde(rename = "Created", default)]
    created: Option<i64>,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "State", default)]
    state: Option<ContainerSummaryStateEnum>,
    #[serde(rename = "Status", borrow, default)]
    status: Option<Cow<'a, str>>,
}

/// The list's answer decoded as bollard's `list_containers` decodes it
/// (the same errors), into the fields read. The text is checked to be
/// UTF-8 once, not string by string.
fn decode_list(body: &[u8]) -> Result<Vec<Listed<'_>>, DockerError> {
    let decoded = match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        // Not UTF-8: the error bollard would give.
        Err(_) => serde_json::from_slice(body),
    };
    decoded.map_err(|e| {
        if e.is_data() || e.is_syntax() {
            DockerError::JsonDataError {
                message: e.to_string(),
                column: e.column(),
            }
        } else {
            e.into()
        }
    })
}

/// Image id -> first tag, for every tagged image.
async fn image_tags(docker: &Docker) -> Result<HashMap<String, String>, DockerError> {
    let images = docker
        .list_images(Some(ListImagesOptions::default()))
        .await?;
    Ok(images
        .into_iter()
        .filter_map(|i| {
            let tag = i.repo_tags.into_iter().find(|t| t != "<none>:<none>")?;
            Some((i.id, tag))
        })
        .collect())
}

async fn changes_since(docker: &Docker, since: i64) -> Result<Changes, DockerError> {
    // To the nanosecond: an event later in this second must not be cut off.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let until = format!("{}.{:09}", now.as_secs(), now.subsec_nanos());
    let options = EventsOptions {
        // One second of overlap: events are stamped in whole seconds here.
        // Every type: only then does the count say whether the engine's
        // buffer was full (see `events_gap`).
        since: Some((since - 1).to_string()),
        until: Some(until),
        filters: None,
    };
    let events: Vec<EventMessage> = docker.events(Some(options)).try_collect().await?;
    let mut changes = Changes {
        short_lived: short_lived(&events, since),
        events_gap: events_gap(since - 1, events.first().and_then(|e| e.time), events.len()),
        ..Default::default()
    };
    if changes.events_gap {
        warn!(
            events = events.len(),
            "the engine's events may not cover the time since the previous scan: containers created and removed meanwhile may be missing"
        );
    }
    for event in events {
        match event.typ {
            Some(EventMessageTypeEnum::IMAGE) => changes.images = true,
            Some(EventMessageTypeEnum::CONTAINER) => {
                if let Some(id) = event.actor.and_then(|a| a.id) {
                    changes.containers.insert(short_id(&id));
                }
            }
            _ => {}
        }
    }
    Ok(changes)
}

/// The cached inspect facts of a container, when still valid: same state as in
/// the previous inventory, no event since, and a main PID if it runs.
fn cached_inspect(
    previous: &Inventory,
    c: &ContainerFacts,
    touched: &BTreeSet<String>,
) -> Option<InspectFacts> {
    let key = short_key(&c.id);
    if touched.contains(key) {
        return None;
    }
    let entry = previous.containers.get(key)?;
    if entry.status != c.state {
        return None;
    }
    let cached = entry.inspect.clone()?;
    // A running container has a main process: a 0 in the cache means another
    // stage found the cached PID no longer in the container (a restart whose
    // events were missed), or it was never known.
    (c.state != "running" || cached.main_pid != 0).then_some(cached)
}

/// The image as docs/formats.md gives it: first tag, else 12 hex digits of the id.
fn image_name(
    summary_image: Option<&str>,
    image_id: Option<&str>,
    tags: &HashMap<String, String>,
) -> String {
    if let Some(tag) = image_id.and_then(|id| tags.get(id)) {
        return tag.clone();
    }
    let hex = |s: &str| -> String { s.trim_start_matches("sha256:").chars().take(12).collect() };
    match (image_id, summary_image) {
        (Some(id), _) if !id.is_empty() => hex(id),
        (_, Some(image)) => {
            if image.starts_with("sha256:") {
                hex(image)
            } else {
                image.to_string()
            }
        }
        _ => String::new(),
    }
}

/// The facts of one listed container; its image name is resolved when the
/// image tags were fetched (else the caller keeps the previous one).
fn summary_facts(s: Listed<'_>, tags: Option<&HashMap<String, String>>) -> Option<ContainerFacts> {
    let id = s.id.filter(|id| !id.is_empty())?.into_owned();
    let name = s
        .names
        .and_then(|n| n.into_iter().next())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default();
    Some(ContainerFacts {
        name,
        labels: s.labels.unwrap_or_default(),
        state: s.state.map(state_name).unwrap_or_default(),
        image: tags
            .map(|tags| image_name(s.image.as_deref(), s.image_id.as_deref(), tags))
            .unwrap_or_default(),
        created_at: s
            .created
            .filter(|&t| t > 0)
            .map(Timestamp::from_unix_seconds),
        health: s.status.as_deref().and_then(Health::from_status),
        id,
        ..Default::default()
    })
}

/// A state as bollard writes it (its `Display`), without the formatter.
fn state_name(state: ContainerSummaryStateEnum) -> String {
    use ContainerSummaryStateEnum as S;
    match state {
        S::EMPTY => "",
        S::CREATED => "created",
        S::RUNNING => "running",
        S::PAUSED => "paused",
        S::RESTARTING => "restarting",
        S::EXITED => "exited",
        S::REMOVING => "removing",
        S::DEAD => "dead",
        S::STOPPING => "stopping",
    }
    .to_string()
}

fn inspect_facts(r: ContainerInspectResponse) -> InspectFacts {
    let host = r.host_config.unwrap_or_default();
    let state = r.state.unwrap_or_default();
    InspectFacts {
        runtime: host.runtime.unwrap_or_default(),
        device_requests: host
            .device_requests
            .unwrap_or_default()
            .into_iter()
            .map(|d| DeviceRequest {
                driver: d.driver.unwrap_or_default(),
                count: d.count.unwrap_or_default(),
                device_ids: d.device_ids.unwrap_or_default(),
                capabilities: d.capabilities.unwrap_or_default(),
            })
            .collect(),
        devices: host
            .devices
            .unwrap_or_default()
            .into_iter()
            .filter_map(|d| d.path_on_host)
            .collect(),
        main_pid: state
            .pid
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or_default(),
        config_user: r.config.and_then(|c| c.user).unwrap_or_default(),
        // The engine says year 1 for a container that never started.
        started_at: state
            .started_at
            .filter(|t| !t.starts_with("0001-01-01"))
            .unwrap_or_default(),
        cgroup_parent: host.cgroup_parent.unwrap_or_default(),
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Collector>, ConfigError> {
    let parsed: DockerConfig = config.parse()?;
    if parsed.max_concurrent_inspects == 0 {
        return Err(config.invalid("max_concurrent_inspects", "must be at least 1"));
    }
    // A configured endpoint must be usable; one from the environment is
    // checked when collecting (a failure saying what to change, not a
    // configuration error: the file is fine).
    if parsed.endpoint.is_some() {
        parsed
            .settings()
            .endpoint()
            .map_err(|e| config.invalid("endpoint", e))?;
    }
    Ok(Box::new(DockerCollector::new(parsed)))
}

detect_workloads_api::inventory::submit! {
    CollectorPlugin {
        name: "docker",
        summary: "every Docker container (running or not) with labels, state, image and GPU access",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ContainerSummary;

    #[test]
    fn image_is_first_tag_else_short_id() {
        let tags = HashMap::from([(
            "sha256:aaaabbbbccccdddd".to_string(),
            "ds01/pytorch:latest".to_string(),
        )]);
        assert_eq!(
            image_name(Some("x"), Some("sha256:aaaabbbbccccdddd"), &tags),
            "ds01/pytorch:latest"
        );
        assert_eq!(
            image_name(
                Some("sha256:0123456789abcdef"),
                Some("sha256:0123456789abcdef"),
                &tags
            ),
            "0123456789ab"
        );
        assert_eq!(image_name(Some("busybox"), None, &tags), "busybox");
        assert_eq!(
            image_name(Some("sha256:0123456789abcdef"), None, &tags),
            "0123456789ab"
        );
    }

    #[test]
    fn a_running_container_whose_cached_main_pid_is_zero_is_inspected_again() {
        use detect_workloads_api::model::ContainerEntry;
        let id = "0123456789abcdef".to_string();
        let cached = |status: &str, main_pid: u32| Inventory {
            containers: BTreeMap::from([(
                short_id(&id),
                ContainerEntry {
                    status: status.to_string(),
                    inspect: Some(InspectFacts {
                        main_pid,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        let listed = |state: &str| ContainerFacts {
            id: id.clone(),
            state: state.to_string(),
            ..Default::default()
        };
        let none = BTreeSet::new();
        let reuse = |previous: &Inventory, state: &str| {
            cached_inspect(previous, &listed(state), &none).map(|i| i.main_pid)
        };
        assert_eq!(reuse(&cached("running", 42), "running"), Some(42));
        assert_eq!(reuse(&cached("running", 0), "running"), None);
        // Not running: no main process, 0 is right.
        assert_eq!(reuse(&cached("exited", 0), "exited"), Some(0));
        assert_eq!(reuse(&cached("created", 0), "created"), Some(0));
        // A changed state or an event since: inspected again anyway.
        assert_eq!(reuse(&cached("exited", 0), "running"), None);
        let touched = BTreeSet::from([short_id(&id)]);
        let previous = cached("running", 42);
        assert_eq!(
            cached_inspect(&previous, &listed("running"), &touched),
            None
        );
    }

    #[test]
    fn unknown_container_states_fail_the_list() {
        // bollard's typed state cannot hold a state added by a later engine:
        // the list is then unreadable (a failure: containers carried over).
        let list: Result<Vec<ContainerSummary>, _> =
            serde_json::from_str(r#"[{"Id":"abc","State":"hibernating"}]"#);
        assert!(list.is_err());
        let list = decode_list(br#"[{"Id":"abc","State":"hibernating"}]"#);
        assert!(matches!(list, Err(DockerError::JsonDataError { .. })));
        let list = decode_list(br#"[{"Id":"abc","Names":null,"State":"exited","Labels":null}]"#)
            .expect("list");
        let facts = summary_facts(list.into_iter().next().expect("one"), None).expect("facts");
        assert_eq!((facts.state.as_str(), facts.labels.len()), ("exited", 0));
    }

    /// The facts of a listed container as they were taken from bollard's
    /// own model before the list was decoded into [`Listed`].
    fn facts_from_bollard(
        s: ContainerSummary,
        tags: Option<&HashMap<String, String>>,
    ) -> Option<ContainerFacts> {
        let id = s.id.filter(|id| !id.is_empty())?;
        let name = s
            .names
            .and_then(|n| n.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default();
        Some(ContainerFacts {
            name,
            labels: s.labels.unwrap_or_default().into_iter().collect(),
            state: s.state.map(|st| st.to_string()).unwrap_or_default(),
            image: tags
                .map(|tags| image_name(s.image.as_deref(), s.image_id.as_deref(), tags))
                .unwrap_or_default(),
            created_at: s
                .created
                .filter(|&t| t > 0)
                .map(Timestamp::from_unix_seconds),
            health: s.status.as_deref().and_then(Health::from_status),
            id,
            ..Default::default()
        })
    }

    /// Both decodings of one answer, with and without the image tags.
    fn both(body: &[u8]) -> (Vec<Option<ContainerFacts>>, Vec<Option<ContainerFacts>>) {
        let tags = HashMap::from([(
            "sha256:b8b15010d70e2e9e74ddcb854d823b3ce69464f7cfea27708ae6a7f96fe0a584".to_string(),
            "dw-test/busybox:latest".to_string(),
        )]);
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for tags in [None, Some(&tags)] {
            let bollard: Vec<ContainerSummary> = serde_json::from_slice(body).expect("bollard");
            theirs.extend(bollard.into_iter().map(|s| facts_from_bollard(s, tags)));
            let listed = decode_list(body).expect("ours");
            ours.extend(listed.into_iter().map(|s| summary_facts(s, tags)));
        }
        (ours, theirs)
    }

    #[test]
    fn the_list_reads_as_bollards_model_does() {
        // A real answer (dockerd 20.10): created, running with a port and a
        // mount, healthy, unhealthy, exited and paused containers; labels
        // with escapes and non-ASCII text.
        let (ours, theirs) = both(include_bytes!("testdata/list.json"));
        assert_eq!(ours.len(), 12);
        assert!(ours.iter().all(Option::is_some));
        assert_eq!(ours, theirs);
        let states: BTreeSet<&str> = ours.iter().flatten().map(|c| c.state.as_str()).collect();
        assert_eq!(
            states,
            BTreeSet::from(["created", "exited", "paused", "running"])
        );
        assert!(ours
            .iter()
            .flatten()
            .any(|c| c.health == Some(Health::Healthy)));
        assert!(ours
            .iter()
            .flatten()
            .any(|c| c.health == Some(Health::Unhealthy)));
        assert!(ours
            .iter()
            .flatten()
            .any(|c| c.labels.get("note").is_some_and(|n| n.contains('"'))));

        // What a newer engine adds, nulls, escapes, a missing or empty id,
        // an image known by its id only, every state bollard knows.
        let odd = r#"[
            {"Id":"\u0061bc","Names":["/w\u00e9ird\"name","/second"],"Image":"sha256:0123456789abcdef0123","ImageID":"","Created":0,
             "Labels":{"k":"v","k":"w","\u2028":"\/"},"State":"","Status":"Up 1 second (health: starting)",
             "ImageManifestDescriptor":{"mediaType":"x","digest":"sha256:1","size":3,"annotations":{"a":"b"}},
             "Health":{"Status":"starting","FailingStreak":0},"Ports":[{"IP":"::","PrivatePort":80,"PublicPort":8080,"Type":"tcp"}],
             "Mounts":[{"Type":"bind","Source":"/a","Destination":"/b","Mode":"","RW":true,"Propagation":"rprivate"}],
             "HostConfig":{"NetworkMode":"host","Annotations":{"x":"y"}},"SizeRw":12,"SizeRootFs":34,"Command":"sh -c \"x\""},
            {"Names":["/no-id"],"State":"running"},
            {"Id":"","State":"dead"},
            {"Id":"e1","Names":null,"Image":null,"ImageID":"sha256:b8b15010d70e2e9e74ddcb854d823b3ce69464f7cfea27708ae6a7f96fe0a584","Created":-5,"Labels":null,"State":"restarting","Status":null},
            {"Id":"e2","Names":[],"Image":"busybox","Created":1714557601,"State":"removing"},
            {"Id":"e3","State":"stopping","Status":"Up (unhealthy)"},
            {"Id":"e4","State":"created","Unknown":[1,{"deep":[null,true,1.5e3]}]}
        ]"#;
        let (ours, theirs) = both(odd.as_bytes());
        assert_eq!(ours, theirs);
        assert_eq!(ours.iter().filter(|c| c.is_none()).count(), 4);
        let first = ours[0].as_ref().expect("first");
        assert_eq!(
            (first.id.as_str(), first.name.as_str()),
            ("abc", "wéird\"name")
        );

        // Whatever fails bollard's decoding of a field we read fails ours.
        for bad in [
            r#"[{"Id":"a","State":"hibernating"}]"#,
            r#"[{"Id":"a","Labels":{"k":null}}]"#,
            r#"[{"Id":1}]"#,
            r#"[{"Id":"a","Created":"yesterday"}]"#,
            r#"[{"Id":"a","Names":"/one"}]"#,
            r#"[{"Id":"a","Id":"b"}]"#,
            r#"{"Id":"a"}"#,
            r#"[{"Id":"a"}"#,
            "",
        ] {
            let theirs: Result<Vec<ContainerSummary>, _> = serde_json::from_str(bad);
            assert!(theirs.is_err(), "{bad}");
            assert!(decode_list(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(matches!(
            decode_list(b"[{\"Id\":\"\xff\"}]"),
            Err(DockerError::JsonDataError { .. })
        ));
    }

    fn ev(typ: EventMessageTypeEnum, action: &str, id: &str, time: i64) -> EventMessage {
        EventMessage {
            typ: Some(typ),
            action: Some(action.to_string()),
            actor: Some(bollard::models::EventActor {
                id: Some(id.to_string()),
                attributes: Some(HashMap::from([
                    ("name".to_string(), format!("n-{id}")),
                    ("image".to_string(), "busybox".to_string()),
                    ("ds01.user".to_string(), "alice".to_string()),
                ])),
            }),
            time: Some(time),
            ..Default::default()
        }
    }

    #[test]
    fn created_and_removed_in_the_window_is_short_lived() {
        use EventMessageTypeEnum::{CONTAINER, NETWORK};
        let events = [
            ev(CONTAINER, "destroy", "old", 100), // created before the window
            ev(CONTAINER, "create", "blink", 1_714_557_601),
            ev(NETWORK, "connect", "blink", 1_714_557_601),
            ev(CONTAINER, "start", "blink", 1_714_557_602),
            ev(CONTAINER, "create", "stays", 1_714_557_602),
            ev(CONTAINER, "destroy", "blink", 1_714_557_603),
        ];
        assert_eq!(
            short_lived(&events, 1_714_557_603),
            [ShortLivedContainer {
                id: "blink".into(),
                name: "n-blink".into(),
                image: "busybox".into(),
                created_at: "2024-05-01T10:00:01Z".parse().expect("time"),
                removed_at: "2024-05-01T10:00:03Z".parse().expect("time"),
                // The create event's labels, without its name and image.
                labels: [("ds01.user".to_string(), "alice".to_string())].into(),
                ..ShortLivedContainer::default()
            }]
        );
        // Removed before the previous scan started: told by that scan.
        assert!(short_lived(&events, 1_714_557_604).is_empty());
    }

    #[test]
    fn a_full_event_buffer_starting_late_is_a_gap() {
        assert!(events_gap(100, Some(150), EVENTS_KEPT));
        assert!(
            !events_gap(100, Some(100), EVENTS_KEPT),
            "reaches back to since"
        );
        assert!(
            !events_gap(100, Some(150), EVENTS_KEPT - 1),
            "buffer not full: older ones kept"
        );
        assert!(!events_gap(100, None, 0));
    }

    #[test]
    fn null_host_config_fields_are_empty() {
        let facts = inspect_facts(ContainerInspectResponse::default());
        assert_eq!(facts, InspectFacts::default());
    }
}
