//! Stage `gpu-devices`: fills each container's `gpu_devices` from, in order, the
//! first slot label that names devices (`"0:0,0:1"` -> `["0:0","0:1"]`; a value
//! that reads as a timestamp is not a device), the first UUID label, then the
//! device ids of `HostConfig.DeviceRequests` (`--gpus '"device=0,1"'`).

use std::collections::BTreeMap;

use serde::Deserialize;

use detect_workloads_api::config::{ConfigError, PluginConfig};
use detect_workloads_api::model::{GpuAccess, InspectFacts};
use detect_workloads_api::plugin::{Stage, StageContext, StageError, StagePlugin, Workset};
use detect_workloads_api::timefmt::looks_like_timestamp;

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample gpu-devices`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[stages.gpu-devices]]
slot_labels = ["ds01.gpu.slots", "ds01.gpu_slot", "ds01.gpu.allocated"]
uuid_labels = ["ds01.gpu.uuids", "ds01.gpu.uuid"]
"#;

/// `[[stages.gpu-devices]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuDevicesConfig {
    /// Labels holding GPU slots.
    pub slot_labels: Vec<String>,
    /// Labels holding GPU UUIDs.
    pub uuid_labels: Vec<String>,
}

impl Default for GpuDevicesConfig {
    fn default() -> Self {
        Self {
            slot_labels: vec![
                "ds01.gpu.slots".into(),
                "ds01.gpu_slot".into(),
                "ds01.gpu.allocated".into(),
            ],
            uuid_labels: vec!["ds01.gpu.uuids".into(), "ds01.gpu.uuid".into()],
        }
    }
}

/// The `gpu-devices` stage.
#[derive(Debug)]
pub struct GpuDevices {
    config: GpuDevicesConfig,
}

/// The devices named by a label value: comma-separated, blanks and timestamps dropped.
pub fn split_devices(value: &str) -> Vec<String> {
    if looks_like_timestamp(value) {
        return Vec::new();
    }
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty() && !looks_like_timestamp(v))
        .map(str::to_string)
        .collect()
}

fn first_label_devices(labels: &BTreeMap<String, String>, names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter_map(|name| labels.get(name))
        .map(|value| split_devices(value))
        .find(|devices| !devices.is_empty())
        .unwrap_or_default()
}

fn request_devices(inspect: Option<&InspectFacts>) -> Vec<String> {
    inspect
        .map(|i| {
            i.device_requests
                .iter()
                .flat_map(|r| &r.device_ids)
                // The engine keeps what `--gpus '"device=0, 1,"'` said: " 1", "".
                .map(|id| id.trim())
                .filter(|id| !id.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl Stage for GpuDevices {
    fn run(&self, work: &mut Workset, _ctx: &StageContext<'_>) -> Result<(), StageError> {
        for c in &mut work.containers {
            let mut devices = first_label_devices(&c.facts.labels, &self.config.slot_labels);
            if devices.is_empty() {
                devices = first_label_devices(&c.facts.labels, &self.config.uuid_labels);
            }
            if devices.is_empty() {
                devices = request_devices(c.facts.inspect.as_ref());
            }
            c.entry.gpu_access =
                (!c.entry.has_gpu && !devices.is_empty()).then_some(GpuAccess::LabelOnly);
            c.entry.gpu_devices = devices;
        }
        Ok(())
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Stage>, ConfigError> {
    Ok(Box::new(GpuDevices {
        config: config.parse()?,
    }))
}

detect_workloads_api::inventory::submit! {
    StagePlugin {
        name: "gpu-devices",
        summary: "lists each container's GPUs from slot and UUID labels, then device requests",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{container, with_context};
    use detect_workloads_api::model::DeviceRequest;

    fn devices(labels: &[(&str, &str)], ids: &[&str]) -> Vec<String> {
        let mut c = container("c", labels);
        if let Some(i) = c.facts.inspect.as_mut() {
            i.device_requests = vec![DeviceRequest {
                device_ids: ids.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }];
        }
        let mut work = Workset {
            containers: vec![c],
            processes: vec![],
            container_processes: vec![],
        };
        let stage = GpuDevices {
            config: GpuDevicesConfig::default(),
        };
        with_context(|ctx| stage.run(&mut work, ctx)).expect("never fails");
        work.containers[0].entry.gpu_devices.clone()
    }

    #[test]
    fn labels_then_requests() {
        assert_eq!(
            devices(&[("ds01.gpu.slots", "0:0, 0:1,")], &["3"]),
            ["0:0", "0:1"]
        );
        assert_eq!(devices(&[("ds01.gpu_slot", "2")], &[]), ["2"]);
        assert_eq!(devices(&[("ds01.gpu.allocated", "1:0")], &[]), ["1:0"]);
        assert_eq!(
            devices(
                &[("ds01.gpu.allocated", "2026-11-26T05:40:02Z")],
                &["0", "1"]
            ),
            ["0", "1"]
        );
        assert_eq!(
            devices(
                &[
                    ("ds01.gpu.allocated", "2026-11-26T05:40:02Z"),
                    ("ds01.gpu.uuid", "GPU-56c0b0b8")
                ],
                &[]
            ),
            ["GPU-56c0b0b8"]
        );
        assert_eq!(devices(&[("ds01.gpu.slots", "")], &["0"]), ["0"]);
        assert_eq!(devices(&[], &["0", " 1", ""]), ["0", "1"]);
        assert!(devices(&[], &[]).is_empty());
    }

    #[test]
    fn gpu_labels_without_gpu_access_are_flagged_label_only() {
        let run = |has_gpu: bool, labels: &[(&str, &str)]| {
            let mut c = container("c", labels);
            c.entry.has_gpu = has_gpu;
            let mut work = Workset {
                containers: vec![c],
                ..Workset::default()
            };
            let stage = GpuDevices {
                config: GpuDevicesConfig::default(),
            };
            with_context(|ctx| stage.run(&mut work, ctx)).expect("never fails");
            work.containers[0].entry.gpu_access
        };
        let slots = [("ds01.gpu.slots", "0:0,0:1")];
        assert_eq!(run(false, &slots), Some(GpuAccess::LabelOnly));
        assert_eq!(run(true, &slots), None);
        assert_eq!(run(false, &[]), None);
    }
}
