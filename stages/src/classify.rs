//! Stage `classify`: sets each container's `origin` (how it was started) from an
//! ordered rule list over its labels and name; the first matching rule wins.
//! Needs nothing but the container's labels and name.

use serde::Deserialize;

use detect_workloads_api::config::{ConfigError, PluginConfig};
use detect_workloads_api::plugin::{Stage, StageContext, StageError, StagePlugin, Workset};

/// One classification rule. Every condition given must hold.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRule {
    /// The origin given to a matching container.
    pub origin: String,
    /// A label that must be present.
    pub label: Option<String>,
    /// ... with exactly this value.
    pub equals: Option<String>,
    /// Some label key must start with this.
    pub label_prefix: Option<String>,
    /// The container name must start with this.
    pub name_prefix: Option<String>,
}

/// The sample configuration of this plugin (`detect-workloads plugins
/// --sample classify`); `config/default.toml` holds the same table.
pub const SAMPLE: &str = r#"[[stages.classify]]             # first matching rule wins
rules = [
  { origin = "ds01-managed", label = "ds01.managed", equals = "true" },
  { origin = "devcontainer", label_prefix = "devcontainer." },
  { origin = "compose",      label = "com.docker.compose.project" },
  { origin = "devcontainer", name_prefix = "vsc-" },
]
default = "raw-docker"
"#;

/// `[[stages.classify]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifyConfig {
    /// Rules, first match wins.
    pub rules: Vec<ClassifyRule>,
    /// Origin when no rule matches.
    pub default: String,
}

fn rule(origin: &str) -> ClassifyRule {
    ClassifyRule {
        origin: origin.to_string(),
        label: None,
        equals: None,
        label_prefix: None,
        name_prefix: None,
    }
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        Self {
            rules: vec![
                ClassifyRule {
                    label: Some("ds01.managed".into()),
                    equals: Some("true".into()),
                    ..rule("ds01-managed")
                },
                ClassifyRule {
                    label_prefix: Some("devcontainer.".into()),
                    ..rule("devcontainer")
                },
                ClassifyRule {
                    label: Some("com.docker.compose.project".into()),
                    ..rule("compose")
                },
                ClassifyRule {
                    name_prefix: Some("vsc-".into()),
                    ..rule("devcontainer")
                },
            ],
            default: "raw-docker".to_string(),
        }
    }
}

/// The `classify` stage.
#[derive(Debug)]
pub struct Classify {
    config: ClassifyConfig,
}

impl Classify {
    /// Builds it, rejecting rules that could never be meant.
    pub fn new(config: ClassifyConfig) -> Result<Self, String> {
        for (i, r) in config.rules.iter().enumerate() {
            if r.label.is_none() && r.label_prefix.is_none() && r.name_prefix.is_none() {
                return Err(format!(
                    "rule {} (origin {:?}) has no condition: give label, label_prefix or name_prefix",
                    i + 1,
                    r.origin
                ));
            }
            if r.equals.is_some() && r.label.is_none() {
                return Err(format!("rule {} has `equals` without `label`", i + 1));
            }
        }
        Ok(Self { config })
    }

    fn origin_of(&self, name: &str, labels: &std::collections::BTreeMap<String, String>) -> &str {
        self.config
            .rules
            .iter()
            .find(|r| {
                let label_ok = match (&r.label, &r.equals) {
                    (Some(l), Some(v)) => labels.get(l) == Some(v),
                    (Some(l), None) => labels.contains_key(l),
                    (None, _) => true,
                };
                let prefix_ok = r
                    .label_prefix
                    .as_ref()
                    .is_none_or(|p| labels.keys().any(|k| k.starts_with(p.as_str())));
                let name_ok = r
                    .name_prefix
                    .as_ref()
                    .is_none_or(|p| name.starts_with(p.as_str()));
                label_ok && prefix_ok && name_ok
            })
            .map_or(self.config.default.as_str(), |r| r.origin.as_str())
    }
}

impl Stage for Classify {
    fn run(&self, work: &mut Workset, _ctx: &StageContext<'_>) -> Result<(), StageError> {
        for c in &mut work.containers {
            c.entry.origin = self.origin_of(&c.facts.name, &c.facts.labels).to_string();
        }
        Ok(())
    }
}

fn build(config: PluginConfig<'_>) -> Result<Box<dyn Stage>, ConfigError> {
    let parsed: ClassifyConfig = config.parse()?;
    Classify::new(parsed)
        .map(|s| Box::new(s) as Box<dyn Stage>)
        .map_err(|e| config.invalid("rules", e))
}

detect_workloads_api::inventory::submit! {
    StagePlugin {
        name: "classify",
        summary: "sets each container's origin from label and name rules (first match wins)",
        sample: SAMPLE,
        build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{container, with_context};

    fn classify(name: &str, labels: &[(&str, &str)]) -> String {
        let stage = Classify::new(ClassifyConfig::default()).expect("default rules are valid");
        let mut work = Workset {
            containers: vec![container(name, labels)],
            processes: vec![],
            container_processes: vec![],
        };
        with_context(|ctx| stage.run(&mut work, ctx)).expect("classify never fails");
        work.containers[0].entry.origin.clone()
    }

    #[test]
    fn default_rules_in_priority_order() {
        assert_eq!(classify("a", &[("ds01.managed", "true")]), "ds01-managed");
        assert_eq!(classify("a", &[("ds01.managed", "false")]), "raw-docker");
        assert_eq!(
            classify(
                "vsc-x",
                &[
                    ("ds01.managed", "true"),
                    ("devcontainer.local_folder", "/home/a"),
                    ("com.docker.compose.project", "p")
                ]
            ),
            "ds01-managed"
        );
        assert_eq!(
            classify(
                "a",
                &[
                    ("devcontainer.local_folder", "/x"),
                    ("com.docker.compose.project", "p")
                ]
            ),
            "devcontainer"
        );
        assert_eq!(
            classify("vsc-a", &[("com.docker.compose.project", "p")]),
            "compose"
        );
        assert_eq!(classify("vsc-a", &[]), "devcontainer");
        assert_eq!(classify("plain", &[]), "raw-docker");
    }

    #[test]
    fn rules_without_conditions_are_rejected() {
        let config = ClassifyConfig {
            rules: vec![rule("x")],
            default: "d".into(),
        };
        assert!(Classify::new(config).is_err());
    }
}
