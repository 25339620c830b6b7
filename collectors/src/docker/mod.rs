//! Collector `docker`: every container the Docker engine knows, running or not,
//! through the Engine API (`engine.rs`: plain HTTP `GET`s over the socket).
//!
//! Needs: read access to the engine socket (`endpoint`, else `$DOCKER_HOST`,
//! else `unix:///var/run/docker.sock`). It only reads.
//!
//! Cost: a steady scan makes two API calls whatever the number of containers:
//! list containers, and the container and image events since the previous
//! scan. Image names (first tag) are looked up again (list images) only when a
//! container is new or an image changed. Facts that need an inspect (GPU
//! access, devices, main PID, user) are cached in the inventory and refreshed
//! only for containers that are new, changed state, or had an event since the
//! previous scan, or whose cached main PID no longer runs in them (its
//! `/proc/<pid>/cgroup` does not name the container); those inspects run
//! concurrently, at most `max_concurrent_inspects` at a time. The owner of each
//! running container's main process is read from `/proc/<pid>/status`
//! (`proc_root`) every scan.

mod engine;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use detect_workloads_core::async_trait;
use detect_workloads_core::config::{duration, ConfigError, PluginConfig};
use detect_workloads_core::model::{
    short_id, ContainerFacts, DeviceRequest, FactKind, InspectFacts, Inventory, Observations,
    ProcessFacts,
};
use detect_workloads_core::plugin::{
    CollectContext, CollectError, Collected, Collector, CollectorPlugin, Previous,
};
use engine::{ApiError, Endpoint, Engine, EventMessage, ImageSummary, Inspect, Summary};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Deserialize;
use tracing::debug;

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample docker`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[collectors.docker]]
# endpoint = "unix:///tmp/other.sock"   # default: $DOCKER_HOST, else unix:///var/run/docker.sock
timeout = "10s"
max_concurrent_inspects = 16    # inspect calls in flight at once on a cold scan
proc_root = "/proc"             # where the host's /proc is: owners of containers' main processes
"#;

/// `[[collectors.docker]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// `unix:///path`, `tcp://host:port` or `http://host:port`.
    pub endpoint: Option<String>,
    /// Time allowed for the whole collection.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Inspect calls in flight at once on a cold scan.
    pub max_concurrent_inspects: usize,
    /// Where the host's `/proc` is, to read who owns each running
    /// container's main process.
    pub proc_root: PathBuf,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            timeout: Duration::from_secs(10),
            max_concurrent_inspects: 16,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// The `docker` collector.
#[derive(Debug)]
pub struct DockerCollector {
    config: DockerConfig,
    endpoint: String,
}

impl DockerCollector {
    /// Builds it; the endpoint is resolved now (config, `$DOCKER_HOST`, default).
    pub fn new(config: DockerConfig) -> Self {
        let endpoint = config
            .endpoint
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        Self { config, endpoint }
    }

    /// "Cannot reach the engine" is unavailability; an engine that answers
    /// wrongly is a failure.
    fn classify(&self, e: ApiError) -> CollectError {
        match e {
            ApiError::Io(e) => {
                CollectError::Unavailable(format!("engine at {}: {e}", self.endpoint))
            }
            other => CollectError::Failed(format!("engine at {} {other}", self.endpoint)),
        }
    }
}

/// Counts the API calls of one collection.
#[derive(Default)]
struct Calls(AtomicU64);

impl Calls {
    fn count(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
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
        format!(
            "endpoint {}, timeout {}, max_concurrent_inspects {}",
            self.endpoint,
            detect_workloads_core::config::human_duration(self.config.timeout),
            self.config.max_concurrent_inspects
        )
    }

    async fn collect(&self, ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        let calls = Calls::default();
        let engine =
            Engine::new(Endpoint::parse(&self.endpoint).map_err(CollectError::Unavailable)?);
        let started = std::time::Instant::now();
        let (list, changes) = fetch(&engine, ctx.previous, &calls)
            .await
            .map_err(|e| self.classify(e))?;
        debug!(
            containers = list.len(),
            elapsed_ms = detect_workloads_core::cycle::round_ms(started.elapsed()),
            "listed"
        );
        let previous = ctx.previous.get().await;
        // Image names are looked up again only when an image changed or a
        // container is new; otherwise each keeps the name it had.
        let known = |s: &Summary| {
            s.id.as_deref()
                .and_then(|id| previous.containers.get(&short_id(id)))
                .is_some_and(|e| !e.image.is_empty())
        };
        let tags = match &changes {
            Some(changes) if !changes.images && list.iter().all(known) => None,
            _ => Some(
                image_tags(&engine, &calls)
                    .await
                    .map_err(|e| self.classify(e))?,
            ),
        };
        let touched = changes.map(|c| c.containers).unwrap_or_default();

        let mut facts = Vec::with_capacity(list.len());
        let mut to_inspect = Vec::new();
        for summary in list {
            let Some(mut c) = summary_facts(summary, tags.as_ref()) else {
                continue;
            };
            if tags.is_none() {
                if let Some(before) = previous.containers.get(&short_id(&c.id)) {
                    c.image.clone_from(&before.image);
                }
            }
            match cached_inspect(previous, &c, &touched) {
                Some(cached) if main_process_is_current(&self.config.proc_root, &c.id, &cached) => {
                    facts.push(ContainerFacts {
                        inspect: Some(cached),
                        ..c
                    })
                }
                Some(_) => {
                    debug!(container = %short_id(&c.id), "its cached main PID is no longer in it (a restart whose events were missed); inspecting it again");
                    to_inspect.push(c)
                }
                None => to_inspect.push(c),
            }
        }
        let inspected = stream::iter(to_inspect)
            .map(|mut c| {
                let engine = &engine;
                let calls = &calls;
                async move {
                    calls.count();
                    let path = format!("/containers/{}/json", engine::query_value(&c.id));
                    match engine.get::<Inspect>(&path).await {
                        Ok(response) => {
                            c.inspect = Some(inspect_facts(response));
                            Ok(Some(c))
                        }
                        // Removed between the list and the inspect: gone.
                        Err(ApiError::Status { code: 404, .. }) => Ok(None),
                        Err(e) => Err(self.classify(e)),
                    }
                }
            })
            .buffer_unordered(self.config.max_concurrent_inspects.max(1))
            .try_collect::<Vec<_>>()
            .await?;
        let inspects = inspected.len() as u64;
        facts.extend(inspected.into_iter().flatten());
        for c in &mut facts {
            c.main_user =
                main_process_uid(&self.config.proc_root, c).map(|uid| ctx.users.name(uid));
        }
        facts.sort_by(|a, b| a.id.cmp(&b.id));

        let mut stats = BTreeMap::new();
        stats.insert("api_calls".to_string(), calls.total());
        stats.insert("inspects".to_string(), inspects);
        Ok(Collected {
            observations: Observations {
                containers: facts,
                ..Default::default()
            },
            stats,
        })
    }
}

/// What changed on the engine since the previous scan, from its events.
#[derive(Debug, Default)]
struct Changes {
    /// Short ids of containers with an event (they need a fresh inspect).
    containers: BTreeSet<String>,
    /// Whether any image was tagged, untagged, pulled, loaded or removed (the
    /// containers' image names must then be looked up again).
    images: bool,
}

/// The calls of every scan, concurrently (each on its own connection, so a
/// steady scan takes about as long as the list call alone): the containers,
/// and, when there is a previous scan, what changed since. The list is asked
/// for first; the previous state may still be loading meanwhile.
async fn fetch(
    engine: &Engine,
    previous: &Previous,
    calls: &Calls,
) -> Result<(Vec<Summary>, Option<Changes>), ApiError> {
    let list = async {
        calls.count();
        engine.get::<Vec<Summary>>("/containers/json?all=1").await
    };
    let changes = async {
        // Containers with events since the previous scan need a fresh inspect.
        let since = if previous.get().await.containers.is_empty() {
            None
        } else {
            previous.scan_started().await
        };
        match since {
            Some(since) => {
                calls.count();
                changes_since(engine, since).await.map(Some)
            }
            None => Ok(None),
        }
    };
    futures_util::future::try_join(list, changes).await
}

/// Image id -> first tag, for every tagged image.
async fn image_tags(engine: &Engine, calls: &Calls) -> Result<HashMap<String, String>, ApiError> {
    calls.count();
    let images: Vec<ImageSummary> = engine.get("/images/json").await?;
    Ok(images
        .into_iter()
        .filter_map(|i| {
            let tag = i.repo_tags?.into_iter().find(|t| t != "<none>:<none>")?;
            Some((i.id, tag))
        })
        .collect())
}

async fn changes_since(engine: &Engine, since: i64) -> Result<Changes, ApiError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    // One second of overlap: events are stamped in whole seconds here.
    let path = format!(
        "/events?since={}&until={now}&filters={}",
        since - 1,
        engine::query_value(r#"{"type":["container","image"]}"#)
    );
    let mut changes = Changes::default();
    for event in engine.get_all::<EventMessage>(&path).await? {
        if event.typ.as_deref() == Some("image") {
            changes.images = true;
        } else if let Some(id) = event.actor.and_then(|a| a.id) {
            changes.containers.insert(short_id(&id));
        }
    }
    Ok(changes)
}

/// The real uid of a running container's main process (one small read per
/// running container; not cached, so a privilege drop after start is seen).
fn main_process_uid(proc_root: &Path, c: &ContainerFacts) -> Option<u32> {
    let pid = c.inspect.as_ref()?.main_pid;
    if pid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    ProcessFacts::uid_from_status(&status)
}

/// Whether the cached main PID of a container still runs in it: its cgroup
/// path names the container's id. Events say when a container restarts, but
/// the engine keeps only its last 256 events (of every kind): a restart
/// between two scans can go unseen, and the cached PID then be gone or reused
/// by another process, whose owner would become the container's user. One
/// small read per running container.
fn main_process_is_current(proc_root: &Path, id: &str, cached: &InspectFacts) -> bool {
    if cached.main_pid == 0 {
        return true;
    }
    let cgroup = proc_root.join(cached.main_pid.to_string()).join("cgroup");
    std::fs::read_to_string(cgroup).is_ok_and(|text| text.contains(id))
}

/// The cached inspect facts of a container, when still valid: same state as in
/// the previous inventory and no event since.
fn cached_inspect(
    previous: &Inventory,
    c: &ContainerFacts,
    touched: &BTreeSet<String>,
) -> Option<InspectFacts> {
    let key = short_id(&c.id);
    if touched.contains(&key) {
        return None;
    }
    let entry = previous.containers.get(&key)?;
    (entry.status == c.state)
        .then(|| entry.inspect.clone())
        .flatten()
}

/// The image as SPEC.md wants it: first tag, else 12 hex digits of the id.
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
fn summary_facts(s: Summary, tags: Option<&HashMap<String, String>>) -> Option<ContainerFacts> {
    let id = s.id.filter(|id| !id.is_empty())?;
    let name = s
        .names
        .and_then(|n| n.into_iter().next())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default();
    Some(ContainerFacts {
        name,
        labels: s.labels.unwrap_or_default(),
        state: s.state.unwrap_or_default(),
        image: tags
            .map(|tags| image_name(s.image.as_deref(), s.image_id.as_deref(), tags))
            .unwrap_or_default(),
        inspect: None,
        collector: String::new(),
        main_user: None,
        id,
    })
}

fn inspect_facts(r: Inspect) -> InspectFacts {
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
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Collector>, ConfigError> {
    let parsed: DockerConfig = config.parse()?;
    if parsed.max_concurrent_inspects == 0 {
        return Err(config.invalid("max_concurrent_inspects", "must be at least 1"));
    }
    if let Some(endpoint) = &parsed.endpoint {
        Endpoint::parse(endpoint).map_err(|e| config.invalid("endpoint", e))?;
    }
    Ok(Box::new(DockerCollector::new(parsed)))
}

detect_workloads_core::inventory::submit! {
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
    fn null_host_config_fields_are_empty() {
        let facts = inspect_facts(Inspect::default());
        assert_eq!(facts, InspectFacts::default());
    }
}
