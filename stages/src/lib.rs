//! The built-in stages of `detect-workloads`. Each file is one stage: its
//! config, its code, its tests, and its registration. They are plugins like
//! the collectors and sinks: written against `detect-workloads-api` only, and
//! in force where a binary links this crate (`use detect_workloads_stages as _;`).
#![deny(missing_docs)]

mod classify;
mod exclude_system;
mod gpu_devices;
mod idle;
mod redact;
mod resolve_user;
mod transient_filter;

pub use classify::{Classify, ClassifyConfig, ClassifyRule};
pub use exclude_system::{ExcludeSystem, ExcludeSystemConfig};
pub use gpu_devices::{split_devices, GpuDevices, GpuDevicesConfig};
pub use idle::{Idle, IdleConfig};
pub use redact::{cap, Redact, RedactConfig, RedactError, RedactMode};
pub use resolve_user::{ResolveUser, ResolveUserConfig};
pub use transient_filter::{TransientFilter, TransientFilterConfig};

#[cfg(test)]
mod testing {
    use detect_workloads_api::model::{
        ContainerEntry, ContainerFacts, InspectFacts, Inventory, Observations,
    };
    use detect_workloads_api::plugin::{ContainerDraft, StageContext};
    use detect_workloads_api::users::UserNames;

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
                created_at: None,
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
