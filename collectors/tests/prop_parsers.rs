//! Property tests of the parsers that read what the machine prints: the
//! `nvidia-smi` CSV, and what remains ours of `/proc` (the procfs crate parses
//! the files): command lines and which cgroup path names a container.
//! Whatever the input, they return a value (never panic), and well-formed
//! input reads back exactly.

use detect_workloads_collectors::nvidia_smi::parse_compute_apps;
use detect_workloads_collectors::procfs::{cgroup_info, cmdline_text};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text with a good share of the characters the parsers split on.
fn texty() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9, \\[\\]():\\n\\t/a-fNA-]{0,200}",
        prop::collection::vec(any::<u8>(), 0..300)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// Blanks nvidia-smi may put around a field.
fn pad() -> impl Strategy<Value = String> {
    "[ \\t]{0,3}"
}

#[derive(Debug, Clone)]
struct Row {
    pid: u32,
    memory: Option<u64>,
    unknown: &'static str,
    uuid: String,
    pads: Vec<String>,
}

impl Row {
    fn line(&self) -> String {
        let memory = match self.memory {
            Some(m) => m.to_string(),
            None => self.unknown.to_string(),
        };
        let p = &self.pads;
        format!(
            "{}{}{},{}{}{},{}{}{}",
            p[0], self.pid, p[1], p[2], memory, p[3], p[4], self.uuid, p[5]
        )
    }
}

fn row() -> impl Strategy<Value = Row> {
    (
        any::<u32>(),
        prop::option::of(any::<u64>()),
        prop::sample::select(vec!["[N/A]", "[Not Supported]", "N/A", "n/a"]),
        "(GPU|MIG)-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}",
        prop::collection::vec(pad(), 6),
    )
        .prop_map(|(pid, memory, unknown, uuid, pads)| Row {
            pid,
            memory,
            unknown,
            uuid,
            pads,
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn compute_apps_never_panics(text in texty()) {
        if let Ok(apps) = parse_compute_apps(&text) {
            prop_assert!(apps.len() <= text.lines().count());
            for app in apps {
                prop_assert!(!app.gpu_uuid.is_empty());
                prop_assert_eq!(app.gpu_uuid.trim(), app.gpu_uuid.as_str());
                prop_assert!(!app.gpu_uuid.contains(','));
            }
        }
    }

    #[test]
    fn compute_apps_reads_well_formed_rows_back(
        rows in prop::collection::vec(row(), 0..20),
        blank_lines in prop::collection::vec(any::<bool>(), 0..20),
        crlf in any::<bool>(),
    ) {
        let mut text = String::new();
        for (i, r) in rows.iter().enumerate() {
            if blank_lines.get(i).copied().unwrap_or(false) {
                text.push_str("  \n");
            }
            text.push_str(&r.line());
            text.push_str(if crlf { "\r\n" } else { "\n" });
        }
        let apps = parse_compute_apps(&text).map_err(TestCaseError::fail)?;
        prop_assert_eq!(apps.len(), rows.len());
        for (app, r) in apps.iter().zip(&rows) {
            prop_assert_eq!(app.pid, r.pid);
            prop_assert_eq!(app.used_memory_mib, r.memory);
            prop_assert_eq!(&app.gpu_uuid, &r.uuid);
        }
    }

    #[test]
    fn compute_apps_rejects_a_bad_row_among_good_ones(
        rows in prop::collection::vec(row(), 1..10),
        at in any::<prop::sample::Index>(),
        bad in prop_oneof![
            Just("1, 2".to_string()),
            Just("1, 2, GPU-a, extra".to_string()),
            "[a-z]{1,8}, 1, GPU-a",
            "-[0-9]{1,5}, 1, GPU-a",
            "[1-9][0-9]{10,14}, 1, GPU-a",
            "[0-9]{1,5}, [a-z]{2,6}, GPU-a",
            "[0-9]{1,5}, [0-9]{1,5},[ \\t]*",
        ],
    ) {
        let mut lines: Vec<String> = rows.iter().map(Row::line).collect();
        let at = at.index(lines.len() + 1);
        lines.insert(at, bad);
        let text = lines.join("\n");
        let err = parse_compute_apps(&text).err();
        prop_assert!(err.is_some(), "accepted {:?}", text);
        let err = err.unwrap_or_default();
        let expected = format!("line {}:", at + 1);
        prop_assert!(err.starts_with(&expected), "{}", err);
        prop_assert!(err.chars().count() < 200, "the message quotes a clip only");
    }

    #[test]
    fn cmdline_never_panics_and_has_no_nul(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let text = cmdline_text(&bytes);
        prop_assert!(!text.contains('\0'));
    }

    #[test]
    fn cmdline_joins_arguments_with_spaces(args in prop::collection::vec("[^\\x00]{0,30}", 1..10)) {
        let mut bytes = Vec::new();
        for a in &args {
            bytes.extend_from_slice(a.as_bytes());
            bytes.push(0);
        }
        prop_assert_eq!(cmdline_text(&bytes), args.join(" "));
    }

    #[test]
    fn cgroup_never_panics(paths in prop::collection::vec(texty(), 0..4)) {
        let info = cgroup_info(paths.iter().map(String::as_str));
        if let Some(id) = &info.container_id {
            prop_assert!(info.in_container);
            prop_assert_eq!(id.len(), 64);
            prop_assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
    }

    #[test]
    fn cgroup_finds_container_ids_in_every_layout(
        id in "[0-9a-f]{64}",
        layout in 0usize..6,
        host_paths in prop::collection::vec("/(user|system|init)\\.slice(/[a-z0-9@._-]{1,20}){0,3}", 0..5),
        at in any::<prop::sample::Index>(),
    ) {
        let path = match layout {
            0 => format!("/docker/{id}"),
            1 => format!("/system.slice/docker-{id}.scope"),
            2 => format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-{id}.scope"),
            3 => format!("/machine.slice/libpod-{id}.scope/container"),
            4 => format!("/kubepods/burstable/pod0a1b/{id}"),
            _ => format!("/system.slice/containerd.service/k8s.io/docker/{id}"),
        };
        // cgroup v1 lists one path per hierarchy: the container's among others.
        let mut paths = host_paths;
        paths.insert(at.index(paths.len() + 1), path);
        let info = cgroup_info(paths.iter().map(String::as_str));
        prop_assert!(info.in_container, "{:?}", paths);
        prop_assert_eq!(info.container_id, Some(id));
    }

    #[test]
    fn cgroup_of_host_processes_is_not_a_container(
        paths in prop::collection::vec(prop::collection::vec("[a-z0-9@._-]{1,70}", 0..5), 1..6),
    ) {
        let markers = ["docker", "containerd", "libpod", "kubepods"];
        let paths: Vec<String> = paths.iter().map(|segments| format!("/{}", segments.join("/"))).collect();
        prop_assume!(!paths.iter().any(|p| markers.iter().any(|m| p.contains(m))));
        prop_assert_eq!(cgroup_info(paths.iter().map(String::as_str)), Default::default());
    }
}
