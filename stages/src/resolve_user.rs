//! Stage `resolve-user`: attributes each container to a user, in order: the
//! owner of the engine when the engine is one user's own (a rootless Podman
//! service: [`ContainerFacts::owner`], which no label overrides), the first
//! present user label, a path label under a home directory
//! (`/home/<user>/...`), its cgroup parent when it matches
//! `cgroup_parent_pattern` (`ds01-{group}-{user}.slice`), the owner of the container's main process (its `/proc`
//! facts, when they place it in this container), the user it was started as
//! when it is not running, the user it had in the previous scan, else
//! `unknown`; and records where the user came from (`user_source`).
//!
//! Label values are data: stored as they are (trimmed), never used as paths.
//!
//! The cgroup parent is the engine's `HostConfig.CgroupParent` (cached with
//! the inspect facts), not the main process's cgroup path: it is what the
//! wrapper passed, word for word, whatever the cgroup driver makes of it
//! (the systemd driver nests `a-b-c.slice` under `a.slice/a-b.slice`), and it
//! is known for containers that are not running.

use std::collections::BTreeMap;

use regex::Regex;
use std::path::{Component, Path};

use serde::Deserialize;

use detect_workloads_api::config::{ConfigError, PluginConfig};
use tracing::debug;

use detect_workloads_api::model::{ContainerFacts, UserSource};
use detect_workloads_api::plugin::{
    ContainerDraft, Stage, StageContext, StageError, StagePlugin, Workset,
};
use detect_workloads_api::users;

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample resolve-user`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[stages.resolve-user]]
labels = ["ds01.user", "aime.mlc.USER"]          # first present label wins
path_labels = ["devcontainer.local_folder"]      # /home/<user>/... -> <user>
home_dirs = ["/home"]
# cgroup_parent_pattern = "ds01-{group}-{user}.slice"   # --cgroup-parent -> {user}
"#;

/// `[[stages.resolve-user]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolveUserConfig {
    /// Labels naming the user; the first present wins.
    pub labels: Vec<String>,
    /// Labels holding a path under a home directory.
    pub path_labels: Vec<String>,
    /// Home directory roots.
    pub home_dirs: Vec<String>,
    /// The cgroup parent's last segment, with `{user}` (and optionally
    /// `{group}`, any other text taken literally) where the names stand.
    pub cgroup_parent_pattern: Option<String>,
}

impl Default for ResolveUserConfig {
    fn default() -> Self {
        Self {
            labels: vec!["ds01.user".into(), "aime.mlc.USER".into()],
            path_labels: vec!["devcontainer.local_folder".into()],
            home_dirs: vec!["/home".into()],
            cgroup_parent_pattern: None,
        }
    }
}

/// The `resolve-user` stage.
#[derive(Debug)]
pub struct ResolveUser {
    config: ResolveUserConfig,
    cgroup_parent: Option<Regex>,
}

/// `ds01-{group}-{user}.slice` -> a regex matching a whole segment, `{user}`
/// captured; `None` when the pattern has no `{user}`.
pub fn cgroup_parent_regex(pattern: &str) -> Option<Regex> {
    if !pattern.contains("{user}") {
        return None;
    }
    let mut re = String::from("^");
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        re.push_str(&regex::escape(&rest[..start]));
        let after = &rest[start..];
        let (part, len) = if after.starts_with("{user}") {
            ("(?P<user>[^/]+)", 6)
        } else if after.starts_with("{group}") {
            ("[^/]+?", 7)
        } else {
            ("\\{", 1)
        };
        re.push_str(part);
        rest = &after[len..];
    }
    re.push_str(&regex::escape(rest));
    re.push('$');
    Regex::new(&re).ok()
}

/// Name used when nothing says who owns a container.
pub const UNKNOWN_USER: &str = "unknown";

impl ResolveUser {
    /// Builds it (a `cgroup_parent_pattern` without `{user}` matches nothing;
    /// the configuration refuses it).
    pub fn new(config: ResolveUserConfig) -> Self {
        let cgroup_parent = config
            .cgroup_parent_pattern
            .as_deref()
            .and_then(cgroup_parent_regex);
        Self {
            config,
            cgroup_parent,
        }
    }

    /// The user its cgroup parent names (its last segment, through the pattern).
    fn by_cgroup_parent(&self, facts: &ContainerFacts) -> Option<(String, UserSource)> {
        let re = self.cgroup_parent.as_ref()?;
        let parent = &facts.inspect.as_ref()?.cgroup_parent;
        let segment = parent.trim_end_matches('/').rsplit('/').next()?;
        let user = re.captures(segment)?.name("user")?.as_str();
        (!user.is_empty()).then(|| (user.to_string(), UserSource::CgroupParent))
    }

    fn by_labels(&self, labels: &BTreeMap<String, String>) -> Option<(String, UserSource)> {
        self.config.labels.iter().find_map(|label| {
            let value = labels.get(label)?.trim();
            (!value.is_empty()).then(|| (value.to_string(), UserSource::Label(label.clone())))
        })
    }

    fn by_path_labels(&self, labels: &BTreeMap<String, String>) -> Option<(String, UserSource)> {
        self.config.path_labels.iter().find_map(|label| {
            let path = labels.get(label)?;
            let user = user_from_home_path(Path::new(path.trim()), &self.config.home_dirs)?;
            Some((user, UserSource::PathLabel(label.clone())))
        })
    }

    /// The owner of the main process, when its `/proc` facts place it in this
    /// container. When they place it elsewhere (or nowhere), the cached main
    /// PID is stale: it is zeroed, so that the container is inspected again.
    fn by_main_process(
        &self,
        draft: &mut ContainerDraft,
        ctx: &StageContext<'_>,
    ) -> Option<String> {
        let inspect = draft.facts.inspect.as_mut()?;
        if inspect.main_pid == 0 {
            return None;
        }
        let process = ctx.observations.processes.get(&inspect.main_pid)?;
        // Its cgroup names this container, or (a rootless container without
        // a cgroup of its own) it names none and the process has a PID
        // namespace of its own.
        let id = draft.facts.id.as_str();
        let here = process.cgroups.iter().any(|g| g.names(id))
            || process.container_id.as_deref() == Some(id)
            || (process.container_id.is_none() && process.pid_namespace.is_some());
        if !here {
            debug!(
                container = %draft.entry.id,
                pid = inspect.main_pid,
                in_container = ?process.container_id,
                "the cached main PID is not this container's; it is inspected again next scan"
            );
            inspect.main_pid = 0;
            return None;
        }
        // An NSS entry may have an empty name: that names nobody.
        Some(process.user.clone()).filter(|u| !u.is_empty())
    }

    fn by_config_user(
        &self,
        facts: &ContainerFacts,
        ctx: &StageContext<'_>,
    ) -> Option<(String, UserSource)> {
        let inspect = facts.inspect.as_ref()?;
        // `Config.User` is `name`, `uid`, `name:group` or `uid:gid`; empty means root.
        let user = inspect.config_user.split(':').next().unwrap_or("").trim();
        if user.is_empty() {
            return None;
        }
        let name = match user.parse::<u32>() {
            Ok(uid) => Some(ctx.users.name(uid)),
            Err(_) => users::lookup_name(user).map(|_| user.to_string()),
        };
        name.map(|n| (n, UserSource::ConfigUser))
    }
}

/// `/home/alice/projects/x` under `/home` -> `alice`.
fn user_from_home_path(path: &Path, home_dirs: &[String]) -> Option<String> {
    if !path.is_absolute() {
        return None;
    }
    home_dirs.iter().find_map(|home| {
        let rest = path.strip_prefix(Path::new(home)).ok()?;
        match rest.components().next()? {
            Component::Normal(name) => {
                let name = name.to_string_lossy();
                (!name.is_empty()).then(|| name.into_owned())
            }
            _ => None,
        }
    })
}

impl Stage for ResolveUser {
    fn run(&self, work: &mut Workset, ctx: &StageContext<'_>) -> Result<(), StageError> {
        for c in &mut work.containers {
            let running = c.facts.inspect.as_ref().is_some_and(|i| i.main_pid > 0);
            let owner = self
                .by_main_process(c, ctx)
                .map(|u| (u, UserSource::ProcessOwner));
            let previous = ctx
                .previous
                .containers
                .get(&c.entry.id)
                .filter(|e| !e.user.is_empty() && e.user != UNKNOWN_USER)
                .map(|e| (e.user.clone(), e.user_source.clone()));
            // A user's own engine vouches for nobody but that user: its
            // containers' labels cannot name someone else.
            let engine_owner = c
                .facts
                .owner
                .clone()
                .filter(|u| !u.is_empty())
                .map(|u| (u, UserSource::EngineOwner));
            let found = engine_owner
                .or_else(|| self.by_labels(&c.facts.labels))
                .or_else(|| self.by_path_labels(&c.facts.labels))
                .or_else(|| self.by_cgroup_parent(&c.facts))
                .or(owner)
                .or_else(|| if running { None } else { previous.clone() })
                .or_else(|| self.by_config_user(&c.facts, ctx))
                .or(previous);
            (c.entry.user, c.entry.user_source) =
                found.unwrap_or_else(|| (UNKNOWN_USER.to_string(), UserSource::Unknown));
        }
        Ok(())
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Stage>, ConfigError> {
    let parsed: ResolveUserConfig = config.parse()?;
    if let Some(pattern) = &parsed.cgroup_parent_pattern {
        if cgroup_parent_regex(pattern).is_none() {
            return Err(config.invalid("cgroup_parent_pattern", "must contain {user}"));
        }
    }
    Ok(Box::new(ResolveUser::new(parsed)))
}

detect_workloads_api::inventory::submit! {
    StagePlugin {
        name: "resolve-user",
        summary: "attributes each container to a user (labels, home path, main process owner)",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::container;
    use detect_workloads_api::model::{ContainerEntry, Inventory, Observations, ProcessFacts};
    use detect_workloads_api::users::UserNames;

    #[test]
    fn home_paths() {
        let homes = vec!["/home".to_string(), "/srv/home".to_string()];
        let user = |p: &str| user_from_home_path(Path::new(p), &homes);
        assert_eq!(user("/home/alice/proj"), Some("alice".into()));
        assert_eq!(user("/srv/home/bob"), Some("bob".into()));
        assert_eq!(user("/home"), None);
        assert_eq!(user("/home/../etc"), None);
        assert_eq!(user("/homeless/x"), None);
        assert_eq!(user("home/alice"), None);
        assert_eq!(user("/opt/alice"), None);
    }

    /// A container whose main PID is `main_pid`, resolved with these `/proc`
    /// facts: (pid, owner, container id or None).
    fn resolve_with(
        labels: &[(&str, &str)],
        main_pid: u32,
        config_user: &str,
        procs: &[(u32, &str, Option<&str>)],
    ) -> ContainerDraft {
        let stage = ResolveUser::new(ResolveUserConfig::default());
        let mut c = container("c", labels);
        if let Some(i) = c.facts.inspect.as_mut() {
            i.main_pid = main_pid;
            i.config_user = config_user.to_string();
        }
        let mut observations = Observations::default();
        for (pid, user, id) in procs {
            let container_id = id.map(|id| {
                if id == "self" {
                    c.facts.id.clone()
                } else {
                    id.to_string()
                }
            });
            observations.processes.insert(
                *pid,
                ProcessFacts {
                    pid: *pid,
                    user: user.to_string(),
                    in_container: container_id.is_some(),
                    container_id,
                    ..Default::default()
                },
            );
        }
        let mut work = Workset {
            containers: vec![c],
            processes: vec![],
            container_processes: vec![],
        };
        let (previous, users) = (Inventory::default(), UserNames::new());
        let ctx = StageContext {
            previous: &previous,
            observations: &observations,
            users: &users,
        };
        stage.run(&mut work, &ctx).expect("never fails");
        work.containers.remove(0)
    }

    #[test]
    fn order_of_sources() {
        // Main PID 77 is carol's, 78 belongs to a user whose NSS name is empty.
        let procs = [(77, "carol", Some("self")), (78, "", Some("self"))];
        let resolve = |labels: &[(&str, &str)], main_pid: u32, config_user: &str| {
            let c = resolve_with(labels, main_pid, config_user, &procs);
            (c.entry.user, c.entry.user_source.to_string())
        };
        let both = [
            ("aime.mlc.USER", "bob"),
            ("ds01.user", "alice"),
            ("devcontainer.local_folder", "/home/dave/x"),
        ];
        let r = |u: &str, s: &str| (u.to_string(), s.to_string());
        assert_eq!(resolve(&both, 77, ""), r("alice", "label:ds01.user"));
        assert_eq!(resolve(&both[..1], 77, ""), r("bob", "label:aime.mlc.USER"));
        assert_eq!(
            resolve(&[("ds01.user", " ")], 77, ""),
            r("carol", "process-owner")
        );
        assert_eq!(
            resolve(&both[2..], 77, ""),
            r("dave", "path-label:devcontainer.local_folder")
        );
        assert_eq!(resolve(&[], 77, ""), r("carol", "process-owner"));
        assert_eq!(
            resolve(&[], 78, ""),
            r(UNKNOWN_USER, "unknown"),
            "an owner with an empty name"
        );
        assert_eq!(resolve(&[], 0, "0"), r("root", "config-user"));
        assert_eq!(resolve(&[], 0, "root:root"), r("root", "config-user"));
        assert_eq!(resolve(&[], 0, ""), r(UNKNOWN_USER, "unknown"));
        assert_eq!(
            resolve(&[], 0, "no-such-user-x"),
            r(UNKNOWN_USER, "unknown")
        );
    }

    #[test]
    fn the_engine_owner_comes_before_every_label() {
        let stage = ResolveUser::new(ResolveUserConfig::default());
        let mut c = container("c", &[("ds01.user", "alice")]);
        c.facts.owner = Some("mallory".to_string());
        let mut work = Workset {
            containers: vec![c],
            processes: vec![],
            container_processes: vec![],
        };
        let (previous, users, observations) = (
            Inventory::default(),
            UserNames::new(),
            Observations::default(),
        );
        let ctx = StageContext {
            previous: &previous,
            observations: &observations,
            users: &users,
        };
        stage.run(&mut work, &ctx).expect("never fails");
        let c = &work.containers[0];
        assert_eq!(c.entry.user, "mallory");
        assert_eq!(c.entry.user_source.to_string(), "engine-owner");
        assert_eq!(
            UserSource::from("engine-owner".to_string()),
            UserSource::EngineOwner
        );
    }

    #[test]
    fn a_main_pid_of_another_container_or_none_is_not_the_owner() {
        let other = "f".repeat(64);
        for procs in [
            [(77, "mallory", Some(other.as_str()))],
            [(77, "mallory", None)],
        ] {
            let c = resolve_with(&[], 77, "", &procs);
            assert_eq!(c.entry.user, UNKNOWN_USER, "{procs:?}");
            assert_eq!(c.entry.user_source, UserSource::Unknown);
            let main_pid = c.facts.inspect.as_ref().map(|i| i.main_pid);
            assert_eq!(main_pid, Some(0), "the stale PID is dropped: {procs:?}");
        }
        // Its own: used, and kept.
        let c = resolve_with(&[], 77, "", &[(77, "carol", Some("self"))]);
        assert_eq!(c.entry.user, "carol");
        assert_eq!(c.facts.inspect.as_ref().map(|i| i.main_pid), Some(77));
        // Not read this cycle: not used, kept.
        let c = resolve_with(&[], 77, "", &[]);
        assert_eq!(c.entry.user, UNKNOWN_USER);
        assert_eq!(c.facts.inspect.as_ref().map(|i| i.main_pid), Some(77));
    }

    #[test]
    fn cgroup_parent_patterns() {
        let re = cgroup_parent_regex("ds01-{group}-{user}.slice").expect("pattern");
        let user = |s: &str| {
            re.captures(s)
                .and_then(|c| c.name("user"))
                .map(|m| m.as_str().to_string())
        };
        assert_eq!(user("ds01-students-alice.slice"), Some("alice".into()));
        assert_eq!(user("ds01-staff-bob.smith.slice"), Some("bob.smith".into()));
        assert_eq!(user("ds01-students-alice.slicex"), None);
        assert_eq!(user("xds01-students-alice.slice"), None);
        assert_eq!(user("ds01-alice.slice"), None, "no group");
        assert!(cgroup_parent_regex("ds01-{group}.slice").is_none());
        let only = cgroup_parent_regex("u.{user}").expect("pattern");
        assert!(
            only.is_match("u.carol") && !only.is_match("uxcarol"),
            "dots are literal"
        );
    }

    #[test]
    fn the_cgroup_parent_comes_after_labels_and_before_the_owner() {
        let stage = ResolveUser::new(ResolveUserConfig {
            cgroup_parent_pattern: Some("ds01-{group}-{user}.slice".into()),
            ..Default::default()
        });
        let resolve = |labels: &[(&str, &str)], parent: &str| {
            let mut c = container("c", labels);
            if let Some(i) = c.facts.inspect.as_mut() {
                i.cgroup_parent = parent.to_string();
                i.main_pid = 77;
            }
            let mut observations = Observations::default();
            let id = c.facts.id.clone();
            observations.processes.insert(
                77,
                ProcessFacts {
                    pid: 77,
                    user: "carol".into(),
                    in_container: true,
                    container_id: Some(id),
                    ..Default::default()
                },
            );
            let mut work = Workset {
                containers: vec![c],
                ..Default::default()
            };
            let (previous, users) = (Inventory::default(), UserNames::new());
            let ctx = StageContext {
                previous: &previous,
                observations: &observations,
                users: &users,
            };
            stage.run(&mut work, &ctx).expect("never fails");
            let e = &work.containers[0].entry;
            (e.user.clone(), e.user_source.to_string())
        };
        let r = |u: &str, s: &str| (u.to_string(), s.to_string());
        // cgroupfs driver: a path; systemd driver: the slice name.
        assert_eq!(
            resolve(&[], "/ds01-students-alice.slice"),
            r("alice", "cgroup-parent")
        );
        assert_eq!(
            resolve(&[], "ds01-students-alice.slice"),
            r("alice", "cgroup-parent")
        );
        assert_eq!(
            resolve(&[("ds01.user", "bob")], "ds01-students-alice.slice"),
            r("bob", "label:ds01.user")
        );
        assert_eq!(resolve(&[], "/other.slice"), r("carol", "process-owner"));
        assert_eq!(resolve(&[], ""), r("carol", "process-owner"));
    }

    #[test]
    fn label_values_are_stored_as_data() {
        for value in ["../../etc", "a\u{1b}[31mb\u{7}", "x\u{2028}/y"] {
            let c = resolve_with(&[("ds01.user", value)], 0, "", &[]);
            assert_eq!(c.entry.user, value);
            assert_eq!(c.entry.user_source.to_string(), "label:ds01.user");
        }
    }

    #[test]
    fn a_user_kept_from_the_previous_scan_keeps_its_source() {
        let stage = ResolveUser::new(ResolveUserConfig::default());
        let c = container("c", &[]);
        let mut previous = Inventory::default();
        previous.containers.insert(
            c.entry.id.clone(),
            ContainerEntry {
                user: "erin".into(),
                user_source: UserSource::Label("ds01.user".into()),
                ..Default::default()
            },
        );
        let mut work = Workset {
            containers: vec![c],
            processes: vec![],
            container_processes: vec![],
        };
        let (observations, users) = (Observations::default(), UserNames::new());
        let ctx = StageContext {
            previous: &previous,
            observations: &observations,
            users: &users,
        };
        stage.run(&mut work, &ctx).expect("never fails");
        assert_eq!(work.containers[0].entry.user, "erin");
        assert_eq!(
            work.containers[0].entry.user_source,
            UserSource::Label("ds01.user".into())
        );
    }
}
