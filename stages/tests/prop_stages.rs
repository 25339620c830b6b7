//! Property tests of the built-in stages on label values and process names of
//! every kind (empty, huge, non-ASCII, control characters, timestamps where
//! slots are expected): no stage panics, and what they produce keeps its shape.

use std::collections::BTreeMap;

use detect_workloads_api::model::{
    ContainerEntry, ContainerFacts, DeviceRequest, InspectFacts, Inventory, Observations,
    ProcessEntry, ProcessFacts, UserSource,
};
use detect_workloads_api::plugin::{ContainerDraft, ProcessDraft, StageContext, Verdict, Workset};
use detect_workloads_api::timefmt::looks_like_timestamp;
use detect_workloads_api::users::UserNames;
use detect_workloads_core::config::{Config, DEFAULT_CONFIG};
use detect_workloads_stages::{split_devices, ExcludeSystem, ExcludeSystemConfig};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The stages of the built-in default configuration (its collectors and
/// sinks live in other crates, not linked here).
fn default_stages() -> Config {
    let start = DEFAULT_CONFIG
        .find("[[stages.")
        .expect("stages in the default config");
    let end = DEFAULT_CONFIG
        .find("[[sinks.")
        .expect("sinks in the default config");
    // A fixed UID_MIN: the tests read nothing outside the repository.
    let text = DEFAULT_CONFIG[start..end].replace(
        "[[stages.exclude-system]]",
        "[[stages.exclude-system]]\nuid_min = 1000",
    );
    Config::parse("default stages", &text, &[]).expect("default stages parse")
}

const USER_LABELS: [&str; 2] = ["ds01.user", "aime.mlc.USER"];
const ORIGINS: [&str; 4] = ["ds01-managed", "devcontainer", "compose", "raw-docker"];

/// Label values of every kind.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        1 => Just(String::new()),
        1 => Just("true".to_string()),
        1 => "[ \\t\\u{a0}\\u{3000}]{1,4}",
        1 => "[\\x00-\\x1f\\x7f\\u{85}\\u{2028},:]{0,12}",
        1 => "[0-9:, ]{0,16}",
        1 => "/home/[^/]{0,12}(/[a-z.]{0,8}){0,3}",
        1 => "20[0-9]{2}-[01][0-9]-[0-3][0-9]([T ][0-2][0-9]:[0-5][0-9](:[0-5][0-9](\\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?",
        1 => "(20[0-9]{2}-[01][0-9]-[0-3][0-9]T00:00:00Z|[0-9]:[0-9]|GPU-[a-f0-9]{8})(,(20[0-9]{2}-[01][0-9]-[0-3][0-9]|[0-9]:[0-9]| ))*",
        1 => (any::<char>(), 1000..20_000usize).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
}

fn label_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "ds01.managed", "ds01.user", "aime.mlc.USER", "devcontainer.local_folder",
            "devcontainer.config_file", "com.docker.compose.project", "ds01.gpu.slots",
            "ds01.gpu_slot", "ds01.gpu.allocated", "ds01.gpu.uuids", "ds01.gpu.uuid",
        ])
        .prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

fn container() -> impl Strategy<Value = ContainerDraft> {
    (
        "[0-9a-f]{64}",
        prop_oneof![
            any::<String>(),
            "vsc-.{0,20}",
            (any::<char>(), 0..5000usize).prop_map(|(c, n)| c.to_string().repeat(n))
        ],
        prop::collection::btree_map(label_key(), value(), 0..8),
        prop::option::of((
            prop_oneof![Just(0u32), 1u32..5],
            prop_oneof![
                Just(String::new()),
                Just("0".to_string()),
                Just("root:root".to_string()),
                "[0-9]{1,10}(:[0-9]{1,5})?",
                any::<String>()
            ],
            // The engine splits `--gpus device=...` on commas.
            prop::collection::vec(
                prop::collection::vec(value().prop_map(|v| v.replace(',', "")), 0..3),
                0..3,
            ),
        )),
    )
        .prop_map(|(id, name, labels, inspect)| ContainerDraft {
            facts: ContainerFacts {
                id: id.clone(),
                name,
                labels,
                state: "running".to_string(),
                image: "img".to_string(),
                inspect: inspect.map(|(main_pid, config_user, requests)| InspectFacts {
                    main_pid,
                    config_user,
                    device_requests: requests
                        .into_iter()
                        .map(|device_ids| DeviceRequest {
                            device_ids,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                created_at: None,
                health: None,
                owner: None,
                collector: "docker".to_string(),
            },
            entry: ContainerEntry {
                id: id[..12].to_string(),
                ..Default::default()
            },
        })
}

fn process() -> impl Strategy<Value = ProcessDraft> {
    (
        1u32..100_000,
        prop_oneof![
            any::<String>(),
            prop::sample::select(vec!["nvidia-persiste", "Xorg", "X", "python3", "dcgm", ""])
                .prop_map(str::to_string),
        ],
        prop_oneof![
            any::<String>(),
            "(/usr/bin/)?(nvidia-persistenced|Xorg|nvidia-smi|python3)( [^ ]{0,10}){0,3}",
            (any::<char>(), 0..20_000usize).prop_map(|(c, n)| c.to_string().repeat(n)),
        ],
        any::<u32>(),
        any::<bool>(),
        prop_oneof![Just(0u32), 0u32..2000, any::<u32>()],
    )
        .prop_map(
            |(pid, comm, cmdline, seen_scans, confirmed_before, uid)| ProcessDraft {
                facts: ProcessFacts {
                    pid,
                    uid,
                    comm,
                    cmdline: cmdline.clone(),
                    ..Default::default()
                },
                entry: ProcessEntry {
                    pid,
                    cmdline,
                    seen_scans,
                    ..Default::default()
                },
                confirmed_before,
                verdict: Verdict::Report,
            },
        )
}

/// What `gpu-devices` makes of one label value (the stage's own splitter,
/// whose output the property below pins down).
fn devices_of(value: &str) -> Vec<String> {
    split_devices(value)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn stages_take_any_labels_and_names(
        containers in prop::collection::vec(container(), 0..4),
        processes in prop::collection::vec(process(), 0..4),
        owners in prop::collection::btree_map(1u32..5, any::<String>(), 0..4),
        previous_users in prop::collection::vec(any::<String>(), 0..4),
    ) {
        let stages = default_stages();
        // The owners of main PIDs, placed in the containers that name them
        // (the last one where several share a PID: the others' are stale).
        let mut observations = Observations::default();
        for c in &containers {
            let main_pid = c.facts.inspect.as_ref().map_or(0, |i| i.main_pid);
            if let Some(user) = owners.get(&main_pid) {
                observations.processes.insert(main_pid, ProcessFacts {
                    pid: main_pid,
                    user: user.clone(),
                    in_container: true,
                    container_id: Some(c.facts.id.clone()),
                    ..Default::default()
                });
            }
        }
        let mut previous = Inventory::default();
        for (c, user) in containers.iter().zip(&previous_users) {
            previous.containers.insert(c.entry.id.clone(), ContainerEntry { id: c.entry.id.clone(), user: user.clone(), ..Default::default() });
        }
        let users = UserNames::new();
        let ctx = StageContext { previous: &previous, observations: &observations, users: &users };
        let mut work = Workset { containers: containers.clone(), processes: processes.clone(), container_processes: vec![] };
        for stage in &stages.stages {
            // A stage may fail (an error value); it may not panic.
            let _ = stage.plugin.run(&mut work, &ctx);
        }

        prop_assert_eq!(work.containers.len(), containers.len());
        for c in &work.containers {
            let labels: &BTreeMap<String, String> = &c.facts.labels;
            prop_assert!(ORIGINS.contains(&c.entry.origin.as_str()), "{}", c.entry.origin);
            prop_assert_eq!(
                c.entry.origin == "ds01-managed",
                labels.get("ds01.managed").map(String::as_str) == Some("true")
            );
            prop_assert!(!c.entry.user.is_empty());
            let labelled = USER_LABELS
                .iter()
                .filter_map(|l| labels.get(*l))
                .map(|v| v.trim())
                .find(|v| !v.is_empty());
            if let Some(user) = labelled {
                prop_assert_eq!(c.entry.user.as_str(), user);
                prop_assert!(c.entry.user_source.to_string().starts_with("label:"));
            }
            if c.entry.user_source == UserSource::ProcessOwner {
                let pid = c.facts.inspect.as_ref().map_or(0, |i| i.main_pid);
                let owner = observations.processes.get(&pid);
                prop_assert_eq!(owner.and_then(|p| p.container_id.as_deref()), Some(c.facts.id.as_str()));
                prop_assert_eq!(owner.map(|p| p.user.as_str()), Some(c.entry.user.as_str()));
            }
            for d in &c.entry.gpu_devices {
                prop_assert!(!d.is_empty());
                prop_assert_eq!(d.trim(), d.as_str());
                prop_assert!(!d.contains(','));
            }
            if let Some(slots) = labels.get("ds01.gpu.slots") {
                let expected = devices_of(slots);
                if !expected.is_empty() {
                    prop_assert_eq!(&c.entry.gpu_devices, &expected);
                }
            }
        }

        let system = ExcludeSystem::new(ExcludeSystemConfig { uid_min: Some(1000), ..ExcludeSystemConfig::default() });
        prop_assert_eq!(work.processes.len(), processes.len());
        for p in &work.processes {
            let dropped = matches!(p.verdict, Verdict::Drop(_));
            prop_assert_eq!(dropped, system.is_system(p.facts.uid, &p.facts.comm, &p.facts.cmdline));
            if p.facts.uid >= 1000 {
                prop_assert!(!dropped);
            }
            // Redacted and capped by the default `redact` stage.
            prop_assert!(p.entry.cmdline.len() <= 4096);
            prop_assert_eq!(&p.entry.cmdline, &p.facts.cmdline);
            if p.verdict == Verdict::Pending {
                prop_assert!(!p.confirmed_before && p.entry.seen_scans < 2);
            }
            if p.verdict == Verdict::Report {
                prop_assert!(p.confirmed_before || p.entry.seen_scans >= 2);
            }
        }
    }

    #[test]
    fn slot_labels_split_into_devices(value in value(), uuid in value()) {
        let stages = default_stages();
        let observations = Observations::default();
        let previous = Inventory::default();
        let users = UserNames::new();
        let ctx = StageContext { previous: &previous, observations: &observations, users: &users };
        let labels = BTreeMap::from([
            ("ds01.gpu.slots".to_string(), value.clone()),
            ("ds01.gpu.uuid".to_string(), uuid.clone()),
        ]);
        let draft = ContainerDraft {
            facts: ContainerFacts { id: "0".repeat(64), labels, inspect: None, ..Default::default() },
            entry: ContainerEntry { id: "0".repeat(12), ..Default::default() },
        };
        let mut work = Workset { containers: vec![draft], processes: vec![], container_processes: vec![] };
        for stage in &stages.stages {
            let _ = stage.plugin.run(&mut work, &ctx);
        }
        let from_slots = devices_of(&value);
        let expected = if from_slots.is_empty() { devices_of(&uuid) } else { from_slots };
        prop_assert_eq!(&work.containers[0].entry.gpu_devices, &expected);
    }
}

proptest! {
    #![proptest_config(config())]

    /// Every device is a trimmed, non-empty piece of the value between commas,
    /// never a timestamp, in the value's order.
    #[test]
    fn split_devices_yields_clean_pieces_in_order(value in any::<String>()) {
        let devices = split_devices(&value);
        let pieces: Vec<&str> = value.split(',').map(str::trim).collect();
        let mut from = 0;
        for d in &devices {
            prop_assert!(!d.is_empty() && d.trim() == d && !d.contains(','));
            prop_assert!(!looks_like_timestamp(d));
            let at = pieces[from..].iter().position(|p| p == d);
            prop_assert!(at.is_some(), "{:?} is not a piece of {:?} after #{}", d, value, from);
            from += at.unwrap_or_default() + 1;
        }
        if !looks_like_timestamp(&value) {
            let expected = pieces.iter().filter(|p| !p.is_empty() && !looks_like_timestamp(p)).count();
            prop_assert_eq!(devices.len(), expected);
        }
    }
}

#[test]
fn slot_examples() {
    assert_eq!(devices_of("0:0,0:1"), ["0:0", "0:1"]);
    assert!(devices_of("2026-11-26T05:40:02Z").is_empty());
}
