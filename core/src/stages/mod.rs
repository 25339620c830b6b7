//! The built-in stages. Each file is one stage: its config, its code, its tests,
//! and its registration.

mod classify;
mod exclude_system;
mod gpu_devices;
mod redact;
mod resolve_user;
mod transient_filter;

pub use classify::{Classify, ClassifyConfig, ClassifyRule};
pub use exclude_system::{ExcludeSystem, ExcludeSystemConfig};
pub use gpu_devices::{split_devices, GpuDevices, GpuDevicesConfig};
pub use redact::{cap, Redact, RedactConfig, RedactError, RedactMode};
pub use resolve_user::{ResolveUser, ResolveUserConfig};
pub use transient_filter::{TransientFilter, TransientFilterConfig};

use crate::config::{ConfigError, Instance};
use crate::plugin::Stage;

/// Adds the stages that are in force even when a configuration does not list
/// them (`redact`, with its defaults), ahead of the others.
pub fn add_mandatory(file: &str, stages: &mut Vec<Instance<dyn Stage>>) -> Result<(), ConfigError> {
    redact::add_if_missing(stages).map_err(|e| ConfigError {
        file: file.to_string(),
        line: None,
        message: format!("[stages.{}] built-in defaults: {e}", redact::NAME),
    })
}

#[cfg(test)]
pub(crate) mod testing {
    use crate::model::{ContainerEntry, ContainerFacts, InspectFacts, Inventory, Observations};
    use crate::plugin::{ContainerDraft, StageContext};
    use crate::users::UserNames;

    pub fn container(name: &str, labels: &[(&str, &str)]) -> ContainerDraft {
        ContainerDraft {
            facts: ContainerFacts {
                id: format!("{:0>64}", name.len()),
                name: name.to_string(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                state: "running".to_string(),
                image: "img".to_string(),
                created_at: String::new(),
                health: None,
                inspect: Some(InspectFacts::default()),
                owner: None,
                collector: "docker".to_string(),
            },
            entry: ContainerEntry::default(),
        }
    }

    pub fn with_context<R>(f: impl FnOnce(&StageContext<'_>) -> R) -> R {
        let previous = Inventory::default();
        let observations = Observations::default();
        let users = UserNames::new();
        f(&StageContext {
            previous: &previous,
            observations: &observations,
            users: &users,
        })
    }
}
