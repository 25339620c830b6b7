//! The stages, in an order where each runs after those it names in
//! [`Stage::after`] (file order otherwise). A stage that fails is skipped
//! for this cycle; the others still run.

use tracing::warn;

use crate::config::Instance;
use detect_workloads_api::model::Inventory;
use detect_workloads_api::plugin::{Stage, StageContext, Workset};

/// The stages in the order they run.
pub fn order(stages: &[Instance<dyn Stage>]) -> Vec<&Instance<dyn Stage>> {
    let mut left: Vec<&Instance<dyn Stage>> = stages.iter().collect();
    let mut ordered = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let waits = |s: &Instance<dyn Stage>, left: &[&Instance<dyn Stage>]| {
            s.plugin
                .after()
                .iter()
                .any(|dep| left.iter().any(|o| *dep == o.kind))
        };
        // The first one waiting for none left; in a cycle, the first one.
        let pos = left.iter().position(|s| !waits(s, &left)).unwrap_or(0);
        ordered.push(left.remove(pos));
    }
    ordered
}

/// Tells each stage the previous inventory ([`Stage::head_start`]).
pub fn head_start(stages: &[Instance<dyn Stage>], previous: &Inventory) {
    for stage in stages {
        stage.plugin.head_start(previous);
    }
}

/// Runs the stages on `work`.
pub fn run(stages: &[Instance<dyn Stage>], work: &mut Workset, ctx: &StageContext<'_>) {
    for stage in order(stages) {
        if let Err(e) = stage.plugin.run(work, ctx) {
            warn!(stage = %stage.name, "stage failed, its work is skipped this cycle: {e}");
        }
    }
}

/// Runs the stages' [`Stage::review`] on the assembled `inventory`, in the
/// same order.
pub fn review(stages: &[Instance<dyn Stage>], inventory: &mut Inventory, ctx: &StageContext<'_>) {
    for stage in order(stages) {
        if let Err(e) = stage.plugin.review(inventory, ctx) {
            warn!(stage = %stage.name, "stage failed to review the inventory this cycle: {e}");
        }
    }
}
