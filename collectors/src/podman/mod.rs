//! Collector `podman`: the containers of every user's rootless Podman, through
//! the Docker-compatible API each user's Podman service answers on
//! `<runtime_dir>/<uid>/podman/podman.sock` (`podman system service`, or the
//! `podman.socket` user unit), read with `bollard` as the `docker` collector
//! reads the Docker engine.
//!
//! Needs: root (to open each user's socket). It only reads, and nothing but
//! the sockets, `/proc/<pid>` of the containers' main processes and the
//! subordinate id file.
//!
//! A user's Podman is that user's program: it answers whatever its owner
//! wants. So what it says is believed only where it cannot harm anyone else:
//!
//! - a socket is asked only when it is a socket owned by the uid its folder
//!   is named after, in a folder that uid owns; the server on the other end
//!   must be that uid too (`SO_PEERCRED`: a link to the system's Docker
//!   socket, or to another user's service, is refused and counted in the
//!   stat `sockets_refused`); an answer is cut off after `max_answer_mb`;
//! - every container it lists is its owner's ([`ContainerFacts::owner`]:
//!   the `resolve-user` stage lets no label override it);
//! - the main PID it reports is kept only when that process belongs to the
//!   owner (its uid, or one of the owner's subordinate uids from
//!   `subuid_file`, which is where a rootless container's processes run);
//!   otherwise it is zeroed and counted (`main_pids_refused`), so that no
//!   one else's processes can be put in its containers;
//! - a container id another collector also reports is kept from the one
//!   configured first (the core's rule): a user cannot replace or hide a
//!   container of the system's engine by naming it.
//!
//! A socket nobody serves (the user's service has stopped) is skipped: its
//! containers cannot be seen. Any other failure of one socket (a timeout,
//! an answer that is not the API's, one over `max_answer_mb`) fails the
//! whole collection, naming the socket: the core then keeps what was
//! reported last rather than declaring anyone's containers gone.
//!
//! Cost: per socket, a list of containers, a list of images, and an inspect
//! for each container that is new, changed state, or runs with no trusted
//! main PID. Podman's events are not asked for: a container created and
//! removed between two scans is not seen (its GPU processes still are, as
//! host processes of its owner).

mod transport;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use detect_workloads_api::async_trait;
use detect_workloads_api::config::{duration, human_duration, ConfigError, PluginConfig};
use detect_workloads_api::model::{ContainerFacts, FactKind, Observations};
use detect_workloads_api::plugin::{
    CollectContext, CollectError, Collected, Collector, CollectorPlugin,
};
use futures_util::future::join_all;
use serde::Deserialize;
use tracing::{debug, warn};

use crate::docker::connection::{with_causes, Calls};
use crate::docker::{self, Events};

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample podman`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[collectors.podman]]
runtime_dir = "/run/user"       # each user's <runtime_dir>/<uid>/podman/podman.sock
subuid_file = "/etc/subuid"     # where a rootless container's processes may run
timeout = "5s"                  # for each user's socket (all are asked at once)
max_answer_mb = 16              # an answer longer than this fails the collection
"#;

/// `[[collectors.podman]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodmanConfig {
    /// The folder of the users' runtime folders (`$XDG_RUNTIME_DIR` is
    /// `<runtime_dir>/<uid>`).
    pub runtime_dir: PathBuf,
    /// The subordinate uid ranges (`user:first:count`).
    pub subuid_file: PathBuf,
    /// Time allowed for each socket (and each request).
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// The most bytes read on one connection, MiB.
    pub max_answer_mb: u64,
}

impl Default for PodmanConfig {
    fn default() -> Self {
        Self {
            runtime_dir: PathBuf::from("/run/user"),
            subuid_file: PathBuf::from("/etc/subuid"),
            timeout: Duration::from_secs(5),
            max_answer_mb: 16,
        }
    }
}

/// Inspect calls in flight at once on one socket.
const INSPECTS_AT_ONCE: usize = 4;

/// The `podman` collector.
#[derive(Debug)]
pub struct PodmanCollector {
    config: PodmanConfig,
}

/// One user's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UserSocket {
    uid: u32,
    path: PathBuf,
}

/// What one socket gave.
enum Answer {
    /// Its containers (owner and main PIDs already checked).
    Containers {
        containers: Vec<ContainerFacts>,
        calls: u64,
        inspects: u64,
        main_pids_refused: u64,
    },
    /// Served by someone else: not asked.
    Refused,
    /// Nobody serves it.
    Stale,
}

#[async_trait]
impl Collector for PodmanCollector {
    fn provides(&self) -> &'static [FactKind] {
        &[FactKind::Containers]
    }

    fn timeout(&self) -> Duration {
        // Each socket has `timeout`; this margin lets a slow one fail with
        // its own name rather than as the collection's timeout.
        self.config.timeout + Duration::from_secs(1)
    }

    fn describe(&self) -> String {
        format!(
            "sockets {}/<uid>/podman/podman.sock, subuid_file {}, timeout {} per socket, max_answer_mb {}",
            self.config.runtime_dir.display(),
            self.config.subuid_file.display(),
            human_duration(self.config.timeout),
            self.config.max_answer_mb
        )
    }

    async fn collect(&self, ctx: &CollectContext<'_>) -> Result<Collected, CollectError> {
        let sockets = user_sockets(&self.config.runtime_dir)?;
        if sockets.is_empty() {
            return Err(CollectError::Unavailable(format!(
                "no user runs a Podman service (no {}/<uid>/podman/podman.sock)",
                self.config.runtime_dir.display()
            )));
        }
        let subuids = SubordinateIds::read(&self.config.subuid_file);
        let answers = join_all(sockets.iter().map(|s| self.ask(s, ctx, &subuids))).await;
        let mut containers = Vec::new();
        let mut stats = BTreeMap::from([("sockets".to_string(), sockets.len() as u64)]);
        let mut failures = Vec::new();
        for (socket, answer) in sockets.iter().zip(answers) {
            let stat = match answer {
                Ok(Answer::Containers {
                    containers: found,
                    calls,
                    inspects,
                    main_pids_refused,
                }) => {
                    containers.extend(found);
                    *stats.entry("api_calls".into()).or_default() += calls;
                    *stats.entry("inspects".into()).or_default() += inspects;
                    *stats.entry("main_pids_refused".into()).or_default() += main_pids_refused;
                    continue;
                }
                Ok(Answer::Refused) => "sockets_refused",
                Ok(Answer::Stale) => "sockets_stale",
                Err(why) => {
                    failures.push(format!(
                        "{} (uid {}): {why}",
                        socket.path.display(),
                        socket.uid
                    ));
                    continue;
                }
            };
            *stats.entry(stat.to_string()).or_default() += 1;
        }
        if !failures.is_empty() {
            return Err(CollectError::Failed(failures.join("; ")));
        }
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Collected {
            observations: Observations {
                containers,
                ..Default::default()
            },
            stats,
        })
    }
}

impl PodmanCollector {
    /// Asks one user's socket, within `timeout`.
    async fn ask(
        &self,
        socket: &UserSocket,
        ctx: &CollectContext<'_>,
        subuids: &SubordinateIds,
    ) -> Result<Answer, String> {
        let timeout = self.config.timeout;
        match tokio::time::timeout(timeout, self.ask_now(socket, ctx, subuids)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {}", human_duration(timeout))),
        }
    }

    async fn ask_now(
        &self,
        socket: &UserSocket,
        ctx: &CollectContext<'_>,
        subuids: &SubordinateIds,
    ) -> Result<Answer, String> {
        match transport::connect(&socket.path, socket.uid).await {
            Ok(Ok(_checked)) => {}
            Ok(Err(refused)) => {
                warn!(
                    socket = %socket.path.display(),
                    owner = socket.uid,
                    served_by = refused.served_by,
                    "a user's Podman socket is served by someone else: not asked"
                );
                return Ok(Answer::Refused);
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                debug!(socket = %socket.path.display(), "nobody serves this Podman socket");
                return Ok(Answer::Stale);
            }
            Err(e) => return Err(e.to_string()),
        }
        let calls = Arc::new(Calls::default());
        let client = transport::client(
            socket.path.clone(),
            socket.uid,
            self.config.timeout,
            self.config.max_answer_mb.saturating_mul(1 << 20),
            Arc::clone(&calls),
        )
        .map_err(|e| e.to_string())?;
        let found = docker::containers(&client, ctx.previous, Events::NotAsked, INSPECTS_AT_ONCE)
            .await
            .map_err(|e| with_causes(&e))?;
        let owner = ctx.users.name(socket.uid);
        let mut main_pids_refused = 0;
        let containers = found
            .containers
            .into_iter()
            .map(|mut c| {
                c.owner = Some(owner.clone());
                let key = c.key();
                if let Some(inspect) = c.inspect.as_mut() {
                    let pid = inspect.main_pid;
                    if pid > 0 && !subuids.owns(socket.uid, &owner, process_uid(pid)) {
                        warn!(
                            container = %key,
                            owner = %owner,
                            pid,
                            "a Podman service reports a main process that is not its owner's: ignored"
                        );
                        inspect.main_pid = 0;
                        main_pids_refused += 1;
                    }
                }
                c
            })
            .collect();
        Ok(Answer::Containers {
            containers,
            calls: calls.total(),
            inspects: found.inspects,
            main_pids_refused,
        })
    }
}

/// The uid owning `/proc/<pid>`: the process's, for as long as it lives.
fn process_uid(pid: u32) -> Option<u32> {
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

/// Every `<runtime_dir>/<uid>/podman/podman.sock` that is a socket owned by
/// `<uid>`, in a folder `<uid>` owns (nothing else is asked); sorted by uid.
fn user_sockets(runtime_dir: &Path) -> Result<Vec<UserSocket>, CollectError> {
    let entries = std::fs::read_dir(runtime_dir).map_err(|e| {
        CollectError::Unavailable(format!("cannot list {}: {e}", runtime_dir.display()))
    })?;
    let mut sockets: Vec<UserSocket> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let uid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let dir = entry.path();
            let owned_dir = |p: &Path| {
                std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == uid)
            };
            let path = dir.join("podman").join("podman.sock");
            let socket = std::fs::symlink_metadata(&path).ok()?;
            let ok = owned_dir(&dir)
                && owned_dir(&dir.join("podman"))
                && socket.file_type().is_socket()
                && socket.uid() == uid;
            if !ok {
                debug!(path = %path.display(), uid, "not a socket of its folder's owner: not asked");
            }
            ok.then_some(UserSocket { uid, path })
        })
        .collect();
    sockets.sort_by_key(|s| s.uid);
    Ok(sockets)
}

/// The subordinate uid ranges of `/etc/subuid` (`user:first:count`, the user
/// by name or uid).
#[derive(Debug, Default)]
struct SubordinateIds {
    ranges: Vec<(String, u64, u64)>,
}

impl SubordinateIds {
    /// Reads the file; one that cannot be read gives no ranges (then only
    /// the owner's own uid counts).
    fn read(path: &Path) -> Self {
        let text = std::fs::read(path).unwrap_or_default();
        Self::parse(&String::from_utf8_lossy(&text))
    }

    fn parse(text: &str) -> Self {
        let ranges = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.trim().split(':');
                let who = fields.next()?.to_string();
                let first = fields.next()?.parse().ok()?;
                let count = fields.next()?.parse().ok()?;
                Some((who, first, count))
            })
            .collect();
        Self { ranges }
    }

    /// Whether a process running as `uid` belongs to the user `owner`
    /// (`owner_uid`): its own uid or one of its subordinate uids.
    fn owns(&self, owner_uid: u32, owner: &str, uid: Option<u32>) -> bool {
        let Some(uid) = uid else { return false };
        uid == owner_uid
            || self.ranges.iter().any(|(who, first, count)| {
                (who == owner || *who == owner_uid.to_string())
                    && (*first..first.saturating_add(*count)).contains(&u64::from(uid))
            })
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Collector>, ConfigError> {
    let parsed: PodmanConfig = config.parse()?;
    if !parsed.runtime_dir.is_absolute() {
        return Err(config.invalid("runtime_dir", "must be an absolute path"));
    }
    if parsed.max_answer_mb == 0 {
        return Err(config.invalid("max_answer_mb", "must be at least 1"));
    }
    Ok(Box::new(PodmanCollector { config: parsed }))
}

detect_workloads_api::inventory::submit! {
    CollectorPlugin {
        name: "podman",
        summary: "every user's rootless Podman containers, owned by the socket's owner",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ids_by_name_or_uid() {
        let ids = SubordinateIds::parse("alice:100000:65536\n4243:200000:10\nbad line\n");
        assert!(ids.owns(1000, "alice", Some(1000)));
        assert!(ids.owns(1000, "alice", Some(100000)));
        assert!(ids.owns(1000, "alice", Some(165535)));
        assert!(!ids.owns(1000, "alice", Some(165536)));
        assert!(!ids.owns(1000, "alice", Some(0)));
        assert!(!ids.owns(1000, "alice", None));
        assert!(ids.owns(4243, "bob", Some(200009)));
        assert!(
            !ids.owns(4243, "bob", Some(100000)),
            "alice's range is not bob's"
        );
    }

    #[test]
    fn only_sockets_of_their_folders_owner_are_asked() {
        let me = nix::unistd::getuid().as_raw();
        let folder = |root: &Path, uid: u32| {
            let dir = root.join(uid.to_string()).join("podman");
            std::fs::create_dir_all(&dir).unwrap();
            dir.join("podman.sock")
        };
        let dir = tempfile::tempdir().unwrap();
        let mine = folder(dir.path(), me);
        let _listener = std::os::unix::net::UnixListener::bind(&mine).unwrap();
        // Named after someone else: not asked (its owner is not that uid).
        let _l2 = std::os::unix::net::UnixListener::bind(folder(dir.path(), me + 1)).unwrap();
        std::fs::create_dir(dir.path().join("not-a-uid")).unwrap();
        let found = user_sockets(dir.path()).unwrap();
        assert_eq!(
            found,
            vec![UserSocket {
                uid: me,
                path: mine.clone()
            }]
        );
        // A link to a socket, even one of mine, is not asked.
        let linked = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&mine, folder(linked.path(), me)).unwrap();
        assert_eq!(user_sockets(linked.path()).unwrap(), vec![]);
    }
}
