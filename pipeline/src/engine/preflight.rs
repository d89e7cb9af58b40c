//! Checks every input the selected, not yet finished instances will read from outside the
//! workdir ([`StageKind::check_inputs`]) before a run starts: a missing model directory or a
//! partition that cannot be dealt is a manifest error (exit 2) with nothing written, not a failure
//! after the stages before it have run.

use std::collections::BTreeSet;

use super::error::{PipelineError, Result};
use super::manifest::Manifest;
use super::plan::{Plan, State};
use super::registry::{Registry, StageKind};

/// `selected`: the stages this run executes; `forced`: those rerun even when finished.
pub fn check(
    manifest: &Manifest,
    registry: &Registry,
    plan: &Plan,
    selected: &BTreeSet<String>,
    forced: &BTreeSet<String>,
) -> Result<()> {
    // Matrix instances often share their inputs (one model under many budgets): check each
    // distinct (kind, params) once.
    let mut checked = BTreeSet::new();
    for inst in plan
        .instances
        .iter()
        .filter(|i| selected.contains(&i.stage))
    {
        if inst.state == State::Done && !forced.contains(&inst.stage) {
            continue;
        }
        if !checked.insert((inst.kind.clone(), inst.params.to_string())) {
            continue;
        }
        let kind: &dyn StageKind = registry.get(&inst.kind).expect("validated").as_ref();
        if let Err(e) = kind.check_inputs(&inst.params, manifest.data_root.as_deref()) {
            let line = e
                .field
                .as_deref()
                .and_then(|f| manifest.field_line(&inst.stage, f))
                .or_else(|| manifest.stage_line(&inst.stage));
            return Err(PipelineError::Manifest {
                file: manifest.path.clone(),
                line,
                message: format!("stage `{}` ({}): {}", inst.stage, inst.id, e.message),
            });
        }
    }
    Ok(())
}
