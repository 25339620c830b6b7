//! Which container a GPU process belongs to. A cgroup's name is not proof:
//! anyone with a delegated cgroup (systemd's user manager, `systemd-run
//! --user --scope --unit=docker-<id>`) can give it a container's look, and a
//! container's full id is readable in its processes' `/proc/<pid>/cgroup`.
//! So a process is in container C only when
//!
//! - its cgroup (in some hierarchy) is, or lies under, the cgroup of C's main
//!   process (the PID the engine reported), and that cgroup's path names C's
//!   **full** id; or
//! - its cgroup lies in C's cgroup parent (`HostConfig.CgroupParent`, as a
//!   path for the cgroupfs driver or a systemd slice), in a segment naming
//!   C's full id: where the engine creates C's cgroup, a place no user can
//!   write; or
//! - it shares the PID namespace of C's main process, when that is not the
//!   host's: nobody can enter another user's container's namespace, and this
//!   also holds where a container has no cgroup of its own (rootless
//!   containers on cgroup v1).
//!
//! Everything else, whatever its cgroup is called, is a host process of its
//! real owner.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use detect_workloads_api::model::{
    cgroup_segment_id, CgroupMembership, ContainerFacts, ProcessFacts,
};

/// The running containers the engines listed this cycle, with their main
/// processes' `/proc` facts.
pub struct Membership<'a> {
    containers: Vec<Candidate<'a>>,
    /// The candidates (their indices) by the paths a process's cgroup path
    /// must equal or lie under to be in them: their main processes' cgroup
    /// paths (without a trailing `/`) and their parents' paths. A lookup
    /// finds those worth checking; the rules above decide.
    by_path: HashMap<Cow<'a, str>, Vec<usize>>,
    /// The lengths of those paths: a prefix of another length is not
    /// looked up (a user's delegated cgroup may nest thousands deep).
    lengths: HashSet<usize>,
}

struct Candidate<'a> {
    id: &'a str,
    /// The main process's cgroups that name the full id.
    cgroups: Vec<&'a CgroupMembership>,
    /// The main process's PID namespace (never the host's).
    pid_namespace: Option<u64>,
    /// Where the engine puts its cgroup, from its cgroup parent.
    parents: Vec<String>,
}

impl<'a> Membership<'a> {
    /// From this cycle's containers and `/proc` facts.
    pub fn new(
        containers: &'a [ContainerFacts],
        processes: &'a BTreeMap<u32, ProcessFacts>,
    ) -> Self {
        let containers = containers
            .iter()
            .filter(|c| c.id.len() == 64)
            .filter_map(|c| {
                let inspect = c.inspect.as_ref()?;
                let main = (inspect.main_pid > 0)
                    .then(|| processes.get(&inspect.main_pid))
                    .flatten();
                Some(Candidate {
                    id: c.id.as_str(),
                    cgroups: main
                        .map(|m| m.cgroups.iter().filter(|g| g.names(&c.id)).collect())
                        .unwrap_or_default(),
                    pid_namespace: main.and_then(|m| m.pid_namespace),
                    parents: parent_paths(&inspect.cgroup_parent),
                })
            })
            .collect::<Vec<_>>();
        let mut by_path: HashMap<Cow<'a, str>, Vec<usize>> = HashMap::new();
        for (n, c) in containers.iter().enumerate() {
            let own = c
                .cgroups
                .iter()
                .map(|g| Cow::Borrowed(g.path.trim_end_matches('/')));
            let parents = c.parents.iter().map(|p| Cow::Owned(p.clone()));
            for path in own.chain(parents) {
                let at = by_path.entry(path).or_default();
                if at.last() != Some(&n) {
                    at.push(n);
                }
            }
        }
        let lengths = by_path.keys().map(|k| k.len()).collect();
        Membership {
            containers,
            by_path,
            lengths,
        }
    }

    /// The candidates whose paths are `path` or one of its ancestors, in
    /// the order the engines listed them: every one `path` may be in.
    fn worth_checking<'p>(&'p self, path: &'p str) -> impl Iterator<Item = usize> + 'p {
        let ancestors = path.match_indices('/').map(|(at, _)| &path[..at]);
        ancestors
            .chain(std::iter::once(path))
            .filter(|prefix| self.lengths.contains(&prefix.len()))
            .filter_map(|prefix| self.by_path.get(prefix))
            .flatten()
            .copied()
    }

    /// The full id of the container `p` is in, when it is in one.
    pub fn container_of(&self, p: &ProcessFacts) -> Option<&'a str> {
        let in_it = |c: &Candidate<'_>| {
            p.cgroups.iter().any(|mine| {
                c.cgroups.iter().any(|theirs| mine.within(theirs))
                    || c.parents
                        .iter()
                        .any(|parent| in_parent(&mine.path, parent, c.id))
            })
        };
        let mut worth: Vec<usize> = p
            .cgroups
            .iter()
            .flat_map(|mine| self.worth_checking(&mine.path))
            .collect();
        worth.sort_unstable();
        worth.dedup();
        let by_cgroup = worth
            .into_iter()
            .map(|n| &self.containers[n])
            .find(|c| in_it(c));
        let by_namespace = || {
            let ns = p.pid_namespace?;
            self.containers.iter().find(|c| c.pid_namespace == Some(ns))
        };
        by_cgroup.or_else(by_namespace).map(|c| c.id)
    }
}

/// The cgroup paths a cgroup parent stands for: as given (the cgroupfs
/// driver: `/ds01-students-alice.slice`), and, for a slice, its systemd
/// nesting (`/ds01.slice/ds01-students.slice/ds01-students-alice.slice`).
/// None for an empty parent (the engine's default, which its main process
/// shows).
fn parent_paths(parent: &str) -> Vec<String> {
    let parent = parent.trim().trim_end_matches('/');
    if parent.is_empty() {
        return Vec::new();
    }
    let mut paths = vec![format!("/{}", parent.trim_start_matches('/'))];
    if let Some(name) = parent.strip_suffix(".slice").filter(|n| !n.contains('/')) {
        let parts: Vec<&str> = name.split('-').collect();
        let nested: Vec<String> = (1..=parts.len())
            .map(|n| format!("{}.slice", parts[..n].join("-")))
            .collect();
        paths.push(format!("/{}", nested.join("/")));
    }
    paths
}

/// Whether `path` is `<parent>/<segment naming id>` or lies under it.
fn in_parent(path: &str, parent: &str, id: &str) -> bool {
    path.strip_prefix(parent)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|segment| cgroup_segment_id(segment) == Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use detect_workloads_api::model::InspectFacts;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn groups(paths: &[(&str, &str)]) -> Vec<CgroupMembership> {
        paths
            .iter()
            .map(|(h, p)| CgroupMembership {
                hierarchy: h.to_string(),
                path: p.to_string(),
            })
            .collect()
    }

    fn process(pid: u32, cgroups: &[(&str, &str)], ns: Option<u64>) -> ProcessFacts {
        ProcessFacts {
            pid,
            cgroups: groups(cgroups),
            pid_namespace: ns,
            ..Default::default()
        }
    }

    fn container(main_pid: u32, parent: &str) -> ContainerFacts {
        ContainerFacts {
            id: ID.to_string(),
            inspect: Some(InspectFacts {
                main_pid,
                cgroup_parent: parent.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_where_the_engine_runs_it() {
        let inside = format!("/docker/{ID}");
        let mut procs = BTreeMap::new();
        procs.insert(
            10,
            process(10, &[("12:pids", &inside), ("0:", "/")], Some(7)),
        );
        let containers = [container(10, "")];
        let m = Membership::new(&containers, &procs);
        let at = |cgroups: &[(&str, &str)], ns| m.container_of(&process(20, cgroups, ns));
        assert_eq!(at(&[("12:pids", &inside)], None), Some(ID));
        assert_eq!(at(&[("12:pids", &format!("{inside}/sub"))], None), Some(ID));
        // Same path, another hierarchy: not the same cgroup.
        assert_eq!(at(&[("11:memory", &inside)], None), None);
        // A look-alike under a user's slice, with the full id or a short one.
        let user = "/user.slice/user-4242.slice/user@4242.service";
        assert_eq!(
            at(&[("12:pids", &format!("{user}/docker-{ID}.scope"))], None),
            None
        );
        let framed = format!("{user}/docker-{}{}.scope", &ID[..12], "a".repeat(52));
        assert_eq!(at(&[("12:pids", &framed)], None), None);
        assert_eq!(at(&[("12:pids", &format!("{inside}x"))], None), None);
        // The main process's PID namespace.
        assert_eq!(at(&[("12:pids", "/user.slice")], Some(7)), Some(ID));
        assert_eq!(at(&[("12:pids", "/user.slice")], Some(8)), None);
    }

    #[test]
    fn the_main_process_cgroup_must_name_the_full_id() {
        // Rootless on cgroup v1: the main process is in its owner's session.
        let session = "/user.slice/user-4242.slice/session-3.scope";
        let mut procs = BTreeMap::new();
        procs.insert(10, process(10, &[("1:name=systemd", session)], Some(9)));
        let containers = [container(10, "")];
        let m = Membership::new(&containers, &procs);
        assert_eq!(
            m.container_of(&process(20, &[("1:name=systemd", session)], None)),
            None
        );
        assert_eq!(
            m.container_of(&process(21, &[("1:name=systemd", session)], Some(9))),
            Some(ID)
        );
    }

    #[test]
    fn the_cgroup_parent_as_a_path_or_a_slice() {
        let procs = BTreeMap::new();
        let containers = [container(0, "ds01-students-alice.slice")];
        let m = Membership::new(&containers, &procs);
        let at = |path: &str| m.container_of(&process(20, &[("0:", path)], None));
        assert_eq!(at(&format!("/ds01-students-alice.slice/{ID}")), Some(ID));
        assert_eq!(
            at(&format!(
                "/ds01.slice/ds01-students.slice/ds01-students-alice.slice/docker-{ID}.scope"
            )),
            Some(ID)
        );
        assert_eq!(
            at(&format!(
                "/user.slice/ds01-students-alice.slice/docker-{ID}.scope"
            )),
            None
        );
        assert_eq!(at("/ds01-students-alice.slice/other"), None);
        assert_eq!(parent_paths(""), Vec::<String>::new());
        assert_eq!(parent_paths("/docker"), ["/docker"]);
    }

    /// The lookup by path decides as checking every container in turn did:
    /// the first container listed whose rules a process meets, among
    /// nested containers (one's cgroup under another's), parents, paths
    /// with a trailing `/`, and containers that share nothing with it.
    #[test]
    fn the_lookup_finds_what_checking_each_container_finds() {
        let ids: Vec<String> = (0..4).map(|n| format!("{n}").repeat(64)).collect();
        let mut procs = BTreeMap::new();
        let mut containers = Vec::new();
        // 0: /docker/<id0>; 1: nested in it; 2: parent slice; 3: v2 path
        // written with a trailing slash.
        let own = [
            format!("/docker/{}", ids[0]),
            format!("/docker/{}/docker/{}", ids[0], ids[1]),
            String::new(),
            format!("/system.slice/docker-{}.scope/", ids[3]),
        ];
        for (n, id) in ids.iter().enumerate() {
            let pid = 100 + n as u32;
            if !own[n].is_empty() {
                procs.insert(pid, process(pid, &[("0:", &own[n])], None));
            }
            containers.push(ContainerFacts {
                id: id.clone(),
                inspect: Some(InspectFacts {
                    main_pid: pid,
                    cgroup_parent: if n == 2 {
                        "ds01-alice.slice".into()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        // The nested one listed first, or the outer one would always win.
        containers.swap(0, 1);
        let m = Membership::new(&containers, &procs);
        // Checking each container in turn, as the rules say.
        let each = |p: &ProcessFacts| {
            m.containers
                .iter()
                .find(|c| {
                    p.cgroups.iter().any(|mine| {
                        c.cgroups.iter().any(|theirs| mine.within(theirs))
                            || c.parents
                                .iter()
                                .any(|parent| in_parent(&mine.path, parent, c.id))
                    })
                })
                .map(|c| c.id)
        };
        let paths = [
            own[0].clone(),
            format!("{}/sub", own[0]),
            own[1].clone(),
            format!("{}/deeper/still", own[1]),
            format!("/ds01-alice.slice/{}", ids[2]),
            format!("/ds01.slice/ds01-alice.slice/docker-{}.scope/x", ids[2]),
            format!("/ds01-alice.slice/{}", ids[1]),
            own[3].clone(),
            own[3].trim_end_matches('/').to_string(),
            format!("{}child", own[3]),
            format!("/docker/{}x", ids[0]),
            "/docker".to_string(),
            "/".to_string(),
            String::new(),
        ];
        let mut decided = Vec::new();
        for a in &paths {
            for b in &paths {
                for hierarchy in ["0:", "12:pids"] {
                    let p = process(7, &[(hierarchy, a), ("0:", b)], None);
                    assert_eq!(m.container_of(&p), each(&p), "{a} {b} {hierarchy}");
                    decided.push(m.container_of(&p));
                }
            }
        }
        // Not a vacuous agreement: each container is found, and none too.
        for id in &ids {
            assert!(decided.contains(&Some(id.as_str())), "{id}");
        }
        assert!(decided.contains(&None));
    }
}
