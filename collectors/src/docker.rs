//! Collector `docker`: every container the Docker engine knows, running or not,
//! through the Engine API (`bollard`).
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
//! previous scan; those inspects run concurrently, at most
//! `max_concurrent_inspects` at a time. The owner of each running container's
//! main process is read from `/proc/<pid>/status` (`proc_root`) every scan.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerInspectResponse, ContainerSummary, EventMessageTypeEnum};
use bollard::query_parameters::{EventsOptions, ListContainersOptions, ListImagesOptions};
use bollard::{ClientVersion, Docker};
use detect_workloads_core::async_trait;
use detect_workloads_core::config::{duration, ConfigError, PluginConfig};
use detect_workloads_core::model::{
    ContainerFacts, DeviceRequest, FactKind, InspectFacts, Inventory, Observations,
};
use detect_workloads_core::plugin::{
    CollectContext, CollectError, Collected, Collector, CollectorPlugin,
};
use detect_workloads_core::scan::short_id;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Deserialize;
use tracing::debug;

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

/// The API version the client is built with. bollard 0.21 sends unversioned
/// paths (`/containers/json`), which every engine answers in its own current
/// version; should a version ever be sent and refused, the refusal names the
/// one to use (see `supported_version`).
const FIRST_API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

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

    fn connect(&self, version: &ClientVersion) -> Result<Docker, CollectError> {
        let secs = self.config.timeout.as_secs().max(1);
        let result = if let Some(path) = self.endpoint.strip_prefix("unix://") {
            Docker::connect_with_unix(path, secs, version)
        } else if self.endpoint.starts_with("tcp://") || self.endpoint.starts_with("http://") {
            Docker::connect_with_http(&self.endpoint, secs, version)
        } else {
            return Err(CollectError::Unavailable(format!(
                "unsupported endpoint {:?} (use unix://, tcp:// or http://)",
                self.endpoint
            )));
        };
        result.map_err(|e| self.classify(e))
    }

    /// "Cannot reach the engine" is unavailability; an engine that answers
    /// wrongly is a failure.
    fn classify(&self, e: DockerError) -> CollectError {
        match e {
            DockerError::DockerResponseServerError {
                status_code,
                message,
            } => CollectError::Failed(format!(
                "engine at {} answered {status_code}: {message}",
                self.endpoint
            )),
            DockerError::JsonDataError { .. } | DockerError::JsonSerdeError { .. } => {
                CollectError::Failed(format!(
                    "engine at {} sent unreadable data: {e}",
                    self.endpoint
                ))
            }
            other => CollectError::Unavailable(format!("engine at {}: {other}", self.endpoint)),
        }
    }
}

fn version_refused(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 400, message }
        if message.contains("API version") || message.contains("client version"))
}

/// The version an engine's refusal names: "client version 1.41 is too old.
/// Minimum supported API version is 1.44" -> 1.44.
fn supported_version(e: &DockerError) -> Option<ClientVersion> {
    let DockerError::DockerResponseServerError { message, .. } = e else {
        return None;
    };
    const NAMED: &str = "supported API version is ";
    let rest = message.get(message.find(NAMED)? + NAMED.len()..)?;
    let text: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let (major, minor) = text.trim_end_matches('.').split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
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

    async fn collect(&self, ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        let calls = Calls::default();
        // Containers with events since the previous scan need a fresh inspect.
        let since = ctx
            .previous_scan
            .filter(|_| !ctx.previous.containers.is_empty());
        let mut docker = self.connect(&FIRST_API_VERSION)?;
        let started = std::time::Instant::now();
        let (list, changes) = match fetch(&docker, since, &calls).await {
            Err(e) if version_refused(&e) => {
                debug!("engine refused the API version: {e}");
                // The refusal names the version the engine takes ("Minimum
                // supported API version is 1.44"); else ask it (bollard's
                // negotiation only ever lowers the version).
                docker = match supported_version(&e) {
                    Some(agreed) => self.connect(&agreed)?,
                    None => {
                        calls.count();
                        docker
                            .negotiate_version()
                            .await
                            .map_err(|e| self.classify(e))?
                    }
                };
                fetch(&docker, since, &calls).await
            }
            other => other,
        }
        .map_err(|e| self.classify(e))?;

        debug!(
            containers = list.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "listed"
        );
        // Image names are looked up again only when an image changed or a
        // container is new; otherwise each keeps the name it had.
        let known = |s: &ContainerSummary| {
            s.id.as_deref()
                .and_then(|id| ctx.previous.containers.get(&short_id(id)))
                .is_some_and(|e| !e.image.is_empty())
        };
        let tags = match &changes {
            Some(changes) if !changes.images && list.iter().all(known) => None,
            _ => Some(
                image_tags(&docker, &calls)
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
                if let Some(previous) = ctx.previous.containers.get(&short_id(&c.id)) {
                    c.image.clone_from(&previous.image);
                }
            }
            match cached_inspect(ctx.previous, &c, &touched) {
                Some(cached) => facts.push(ContainerFacts {
                    inspect: Some(cached),
                    ..c
                }),
                None => to_inspect.push(c),
            }
        }
        let inspected = stream::iter(to_inspect)
            .map(|mut c| {
                let docker = &docker;
                let calls = &calls;
                async move {
                    calls.count();
                    match docker.inspect_container(&c.id, None).await {
                        Ok(response) => {
                            c.inspect = Some(inspect_facts(response));
                            Ok(Some(c))
                        }
                        // Removed between the list and the inspect: gone.
                        Err(DockerError::DockerResponseServerError {
                            status_code: 404, ..
                        }) => Ok(None),
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
/// and, when there is a previous scan, what changed since.
async fn fetch(
    docker: &Docker,
    since: Option<i64>,
    calls: &Calls,
) -> Result<(Vec<ContainerSummary>, Option<Changes>), DockerError> {
    let list = async {
        calls.count();
        docker.list_containers(Some(list_options())).await
    };
    let changes = async {
        match since {
            Some(since) => {
                calls.count();
                changes_since(docker, since).await.map(Some)
            }
            None => Ok(None),
        }
    };
    futures_util::future::try_join(list, changes).await
}

/// Image id -> first tag, for every tagged image.
async fn image_tags(
    docker: &Docker,
    calls: &Calls,
) -> Result<HashMap<String, String>, DockerError> {
    calls.count();
    let images = docker
        .list_images(Some(ListImagesOptions::default()))
        .await?;
    Ok(images
        .into_iter()
        .filter_map(|i| {
            Some((
                i.id,
                i.repo_tags.into_iter().find(|t| t != "<none>:<none>")?,
            ))
        })
        .collect())
}

async fn changes_since(docker: &Docker, since: i64) -> Result<Changes, DockerError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let options = EventsOptions {
        // One second of overlap: events are stamped in whole seconds here.
        since: Some((since - 1).to_string()),
        until: Some(now.to_string()),
        filters: Some(HashMap::from([(
            "type".to_string(),
            vec!["container".to_string(), "image".to_string()],
        )])),
    };
    let mut changes = Changes::default();
    let mut events = docker.events(Some(options));
    while let Some(event) = events.next().await {
        let event = event?;
        if event.typ == Some(EventMessageTypeEnum::IMAGE) {
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
    crate::procfs::parse_status_uid(&status)
}

fn list_options() -> ListContainersOptions {
    ListContainersOptions {
        all: true,
        ..Default::default()
    }
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
fn summary_facts(
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
        inspect: None,
        collector: String::new(),
        main_user: None,
        id,
    })
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
        started_at: state.started_at.unwrap_or_default(),
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Collector>, ConfigError> {
    let parsed: DockerConfig = config.parse()?;
    if parsed.max_concurrent_inspects == 0 {
        return Err(config.invalid("max_concurrent_inspects", "must be at least 1"));
    }
    if let Some(endpoint) = &parsed.endpoint {
        if !["unix://", "tcp://", "http://"]
            .iter()
            .any(|p| endpoint.starts_with(p))
        {
            return Err(config.invalid("endpoint", "must start with unix://, tcp:// or http://"));
        }
    }
    Ok(Box::new(DockerCollector::new(parsed)))
}

detect_workloads_core::inventory::submit! {
    CollectorPlugin {
        name: "docker",
        summary: "every Docker container (running or not) with labels, state, image and GPU access",
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
    fn refusals_name_the_version_to_use() {
        let refusal = |message: &str| DockerError::DockerResponseServerError {
            status_code: 400,
            message: message.to_string(),
        };
        let version =
            |e: &DockerError| supported_version(e).map(|v| (v.major_version, v.minor_version));
        let too_old = refusal("client version 1.41 is too old. Minimum supported API version is 1.44, please upgrade your client to a newer version");
        assert!(version_refused(&too_old));
        assert_eq!(version(&too_old), Some((1, 44)));
        let too_new =
            refusal("client version 1.99 is too new. Maximum supported API version is 1.41");
        assert_eq!(version(&too_new), Some((1, 41)));
        assert_eq!(version(&refusal("client version 1.99 is too new")), None);
        assert_eq!(
            version(&refusal("Maximum supported API version is x")),
            None
        );
    }

    #[test]
    fn null_host_config_fields_are_empty() {
        let facts = inspect_facts(ContainerInspectResponse::default());
        assert_eq!(facts, InspectFacts::default());
    }
}
