//! The cost table (paper Table 5) from the executor's metadata of a finished run: federated
//! training per client-round (`psg/*`), personalization per client (`personalize`). Timings
//! are never artifacts (those stay bit-identical), so the table is built at export time.
//!
//! A BayesTune-LoRA personalization is charged its own wall time plus the Stage-1 instance it
//! read (what one budget costs when run alone), with the larger of the two peaks. Only that
//! method: a `personalize` stage lists the Stage-1 stage among its inputs for every method.

use std::collections::HashMap;
use std::path::Path;

use crate::engine::error::{PipelineError, Result};
use crate::engine::store::Meta;
use crate::report::{CostRecord, Method, Phase};

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
                let stage1 = if method == Method::BayesTuneLora {
                    meta.components.inputs.values().flatten().collect()
                } else {
                    Vec::new()
                };
                for up in stage1 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::key::{InputRef, KeyComponents};
    use std::collections::BTreeMap;

    fn meta(
        instance: &str,
        kind: &str,
        params: serde_json::Value,
        wall: f64,
        inputs: &[&str],
    ) -> Meta {
        let mut ins = BTreeMap::new();
        for i in inputs {
            ins.entry(i.split('[').next().unwrap().to_string())
                .or_insert_with(Vec::new)
                .push(InputRef {
                    instance: i.to_string(),
                    digest: String::new(),
                });
        }
        Meta {
            key: instance.into(),
            stage: instance.split('[').next().unwrap().into(),
            instance: instance.into(),
            components: KeyComponents {
                kind: kind.into(),
                code_version: String::new(),
                params,
                seed: 0,
                device: "cpu".into(),
                inputs: ins,
                external: BTreeMap::new(),
            },
            outputs: BTreeMap::new(),
            output_digest: String::new(),
            start_time: String::new(),
            end_time: String::new(),
            wall_seconds: wall,
            peak_rss_bytes: (wall * 1e6) as u64,
            host: String::new(),
            pid: 0,
            exit_status: "ok".into(),
            error: None,
            resumed: false,
        }
    }

    /// Every method's personalize instance reads the Stage-1 stage (it is in the stage's
    /// `needs`), but only BayesTune-LoRA is charged its Stage 1.
    #[test]
    fn only_bayestune_lora_is_charged_its_stage1() {
        let mut metas = HashMap::new();
        let dir = std::path::PathBuf::new();
        metas.insert(
            "stage1[client=0]".to_string(),
            (
                meta(
                    "stage1[client=0]",
                    "lambda/bayestune",
                    serde_json::json!({}),
                    30.0,
                    &[],
                ),
                dir.clone(),
            ),
        );
        for (m, wall) in [("lora", 10.0), ("bayestune_lora", 12.0), ("fedp2eft", 11.0)] {
            let id = format!("personalize[method={m}]");
            let p = serde_json::json!({"method": m});
            metas.insert(
                id.clone(),
                (
                    meta(&id, "personalize", p, wall, &["stage1[client=0]"]),
                    dir.clone(),
                ),
            );
        }
        let records = cost_records(&metas).unwrap();
        let wall = |m: Method| {
            records
                .iter()
                .find(|r| r.method == m)
                .map(|r| (r.wall_seconds, r.peak_rss_bytes))
                .unwrap()
        };
        assert_eq!(wall(Method::Lora), (10.0, 10_000_000));
        assert_eq!(wall(Method::FedP2eft), (11.0, 11_000_000));
        assert_eq!(wall(Method::BayesTuneLora), (42.0, 30_000_000));
    }
}
