//! The cost table (paper Table 5) from the executor's metadata of a finished run: federated
//! training per client-round (`psg/*`), personalization per client (`personalize`). Timings
//! are never artifacts (those stay bit-identical), so the table is built at export time.
//!
//! A BayesTune-LoRA personalization is charged its own wall time plus the Stage-1 instance it
//! read (what one budget costs when run alone), with the larger of the two peaks.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{PipelineError, Result};
use crate::report::{CostRecord, Method, Phase};
use crate::store::Meta;

/// Cost records of every finished instance that has one (`metas`: instance id → meta, out dir).
pub fn cost_records(
    metas: &HashMap<String, (Meta, std::path::PathBuf)>,
) -> Result<Vec<CostRecord>> {
    let mut ids: Vec<&String> = metas.keys().collect();
    ids.sort();
    let mut out = Vec::new();
    for id in ids {
        let (meta, dir) = &metas[id];
        let kind = meta.components.kind.as_str();
        let setup = setup_of(meta, metas);
        let record = match kind {
            "personalize" => {
                let method = method_of(meta)?;
                let (mut wall, mut peak) = (meta.wall_seconds, meta.peak_rss_bytes);
                for up in meta.components.inputs.values().flatten() {
                    if let Some((m, _)) = metas.get(&up.instance) {
                        if m.components.kind == "lambda/bayestune" {
                            wall += m.wall_seconds;
                            peak = peak.max(m.peak_rss_bytes);
                        }
                    }
                }
                CostRecord {
                    setup,
                    method,
                    phase: Phase::Personalization,
                    wall_seconds: wall,
                    peak_rss_bytes: peak,
                    clients: 1,
                }
            }
            k if k.starts_with("psg/") => {
                let method: Method = k
                    .trim_start_matches("psg/")
                    .parse()
                    .map_err(|e: String| PipelineError::Other(format!("{id}: {e}")))?;
                CostRecord {
                    setup,
                    method,
                    phase: Phase::FederatedTraining,
                    wall_seconds: meta.wall_seconds,
                    peak_rss_bytes: meta.peak_rss_bytes,
                    clients: client_rounds(&dir.join("rounds.csv"))?,
                }
            }
            _ => continue,
        };
        // A resumed instance's wall time covers only its last attempt: leave it out.
        if !meta.resumed && record.clients > 0 {
            out.push(record);
        }
    }
    Ok(out)
}

/// The partition stage an instance reads (its experiment), or "" when it reads none.
fn setup_of(meta: &Meta, metas: &HashMap<String, (Meta, std::path::PathBuf)>) -> String {
    meta.components
        .inputs
        .values()
        .flatten()
        .filter_map(|up| metas.get(&up.instance))
        .find(|(m, _)| m.components.kind.starts_with("partition/"))
        .map(|(m, _)| m.stage.clone())
        .unwrap_or_default()
}

fn method_of(meta: &Meta) -> Result<Method> {
    let m = meta
        .components
        .params
        .get("method")
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            PipelineError::Other(format!(
                "{}: personalize params have no `method`",
                meta.instance
            ))
        })?;
    m.parse()
        .map_err(|e: String| PipelineError::Other(format!("{}: {e}", meta.instance)))
}

/// Σ `n_clients` over the rows of a `rounds.csv`.
fn client_rounds(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PipelineError::Other(format!("{}: {e}", path.display())))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "n_clients")
        .ok_or_else(|| {
            PipelineError::Other(format!("{}: no `n_clients` column", path.display()))
        })?;
    let mut total = 0u64;
    for (i, line) in lines.enumerate() {
        let v = line
            .split(',')
            .nth(col)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                PipelineError::Other(format!("{}: line {}: bad n_clients", path.display(), i + 2))
            })?;
        total += v;
    }
    Ok(total)
}
