//! Stage `resolve-user`: attributes each container to a user, in order: the
//! first present user label, a path label under a home directory
//! (`/home/<user>/...`), the owner of the container's main process (read from
//! `/proc` by the `procfs` collector, while its cgroup is the container's), the user it was started as when it is not
//! running, the user it had in the previous scan, else `unknown`.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::Deserialize;

use crate::config::{ConfigError, PluginConfig};
use crate::model::ContainerFacts;
use crate::plugin::{Stage, StageContext, StageError, StagePlugin, Workset};
use crate::users;

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
}

impl Default for ResolveUserConfig {
    fn default() -> Self {
        Self {
            labels: vec!["ds01.user".into(), "aime.mlc.USER".into()],
            path_labels: vec!["devcontainer.local_folder".into()],
            home_dirs: vec!["/home".into()],
        }
    }
}

/// The `resolve-user` stage.
#[derive(Debug)]
pub struct ResolveUser {
    config: ResolveUserConfig,
}

/// Name used when nothing says who owns a container.
pub const UNKNOWN_USER: &str = "unknown";

impl ResolveUser {
    /// Builds it.
    pub fn new(config: ResolveUserConfig) -> Self {
        Self { config }
    }

    fn by_labels(&self, labels: &BTreeMap<String, String>) -> Option<String> {
        self.config
            .labels
            .iter()
            .filter_map(|l| labels.get(l))
            .map(|v| v.trim())
            .find(|v| !v.is_empty())
            .map(str::to_string)
    }

    fn by_path_labels(&self, labels: &BTreeMap<String, String>) -> Option<String> {
        self.config
            .path_labels
            .iter()
            .filter_map(|l| labels.get(l))
            .find_map(|path| user_from_home_path(Path::new(path.trim()), &self.config.home_dirs))
    }

    fn by_main_process(&self, facts: &ContainerFacts, ctx: &StageContext<'_>) -> Option<String> {
        let pid = facts.inspect.as_ref()?.main_pid;
        let process = ctx.observations.processes.get(&pid)?;
        // Only a process still in this container's cgroup is its main process;
        // an NSS entry may have an empty name: that names nobody.
        (pid > 0 && process.container_id.as_deref() == Some(facts.id.as_str()))
            .then(|| process.user.clone())
            .filter(|u| !u.is_empty())
    }

    fn by_config_user(&self, facts: &ContainerFacts, ctx: &StageContext<'_>) -> Option<String> {
        let inspect = facts.inspect.as_ref()?;
        // `Config.User` is `name`, `uid`, `name:group` or `uid:gid`; empty means root.
        let user = inspect.config_user.split(':').next().unwrap_or("").trim();
        if user.is_empty() {
            return None;
        }
        match user.parse::<u32>() {
            Ok(uid) => Some(ctx.users.name(uid)),
            Err(_) => users::lookup_name(user).map(|_| user.to_string()),
        }
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
            let previous = ctx
                .previous
                .containers
                .get(&c.entry.id)
                .map(|e| e.user.clone())
                .filter(|u| !u.is_empty() && u != UNKNOWN_USER);
            let user = self
                .by_labels(&c.facts.labels)
                .or_else(|| self.by_path_labels(&c.facts.labels))
                .or_else(|| self.by_main_process(&c.facts, ctx))
                .or_else(|| if running { None } else { previous.clone() })
                .or_else(|| self.by_config_user(&c.facts, ctx))
                .or(previous);
            c.entry.user = user.unwrap_or_else(|| UNKNOWN_USER.to_string());
        }
        Ok(())
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Stage>, ConfigError> {
    Ok(Box::new(ResolveUser::new(config.parse()?)))
}

inventory::submit! {
    StagePlugin {
        name: "resolve-user",
        summary: "attributes each container to a user (labels, home path, main process owner)",
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Inventory, Observations, ProcessFacts};
    use crate::stages::testing::container;
    use crate::users::UserNames;

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

    #[test]
    fn order_of_sources() {
        let stage = ResolveUser::new(ResolveUserConfig::default());
        // Main PID 77 is owned by carol, 78 by a user whose NSS name is empty,
        // 79 by erin but in another container's cgroup.
        let resolve = |labels: &[(&str, &str)], main_pid: u32, config_user: &str| {
            let mut c = container("c", labels);
            if let Some(i) = c.facts.inspect.as_mut() {
                i.main_pid = main_pid;
                i.config_user = config_user.to_string();
            }
            let owner = |pid: u32, user: &str, id: &str| ProcessFacts {
                pid,
                user: user.to_string(),
                container_id: Some(id.to_string()),
                ..Default::default()
            };
            let id = c.facts.id.clone();
            let mut observations = Observations::default();
            for p in [
                owner(77, "carol", &id),
                owner(78, "", &id),
                owner(79, "erin", "x"),
            ] {
                observations.processes.insert(p.pid, p);
            }
            let mut work = Workset {
                containers: vec![c],
                processes: vec![],
            };
            let (previous, users) = (Inventory::default(), UserNames::new());
            let ctx = StageContext {
                previous: &previous,
                observations: &observations,
                users: &users,
            };
            stage.run(&mut work, &ctx).expect("never fails");
            work.containers[0].entry.user.clone()
        };
        let both = [
            ("aime.mlc.USER", "bob"),
            ("ds01.user", "alice"),
            ("devcontainer.local_folder", "/home/dave/x"),
        ];
        assert_eq!(resolve(&both, 77, ""), "alice");
        assert_eq!(resolve(&both[..1], 77, ""), "bob");
        assert_eq!(resolve(&[("ds01.user", " ")], 77, ""), "carol");
        assert_eq!(resolve(&both[2..], 77, ""), "dave");
        assert_eq!(resolve(&[], 77, ""), "carol");
        assert_eq!(
            resolve(&[], 78, ""),
            UNKNOWN_USER,
            "an owner with an empty name"
        );
        assert_eq!(resolve(&[], 0, "0"), "root");
        assert_eq!(resolve(&[], 0, "root:root"), "root");
        assert_eq!(resolve(&[], 79, ""), UNKNOWN_USER, "another container's");
        assert_eq!(resolve(&[], 0, ""), UNKNOWN_USER);
        assert_eq!(resolve(&[], 0, "no-such-user-x"), UNKNOWN_USER);
    }
}
