//! `detect-workloads plugins [--sample NAME]`.

use std::process::ExitCode;

use detect_workloads_api::plugin::PluginKind;

/// The text of `detect-workloads plugins`.
pub fn plugin_listing() -> String {
    let mut out = String::new();
    for kind in [PluginKind::Collector, PluginKind::Stage, PluginKind::Sink] {
        out += &format!("{}:\n", kind.section());
        for (name, summary) in kind.registered() {
            out += &format!("  {name:<18} {summary}\n");
        }
    }
    out
}

/// `detect-workloads plugins --sample NAME`: the plugin's sample configuration.
pub fn print_sample(name: &str) -> ExitCode {
    match detect_workloads_api::plugin::sample_of(name) {
        Some((_, sample)) => {
            print!("{sample}");
            ExitCode::SUCCESS
        }
        None => {
            let known: Vec<&str> = PluginKind::ALL
                .iter()
                .flat_map(|k| k.listed())
                .map(|l| l.name)
                .collect();
            super::usage_error(format!("no plugin `{name}`; known: {}", known.join(", ")))
        }
    }
}
