//! Planning: expand every stage's matrix into instances, link each instance to the upstream
//! instances it reads (those that agree on every shared matrix key), and compute cache keys for
//! the instances whose inputs are all finished.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde_json::Value;

use super::context::InputArtifact;
use super::error::{PipelineError, Result};
use super::key::{file_digest, InputRef, KeyComponents, PIPELINE_EPOCH};
use super::manifest::Manifest;
use super::matrix::{self, Combo};
use super::registry::{PlanInputs, Registry};
use super::spec::MatrixAxis;
use super::store::{Meta, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Finished: `store/<key>` exists.
    Done,
    /// Key known, not finished (never run, or the inputs/params changed).
    Ready,
    /// Key known and the last attempt at it failed.
    Failed,
    /// Some upstream instance is not finished, so the key cannot be computed yet.
    Waiting,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub stage: String,
    pub kind: String,
    pub combo: Combo,
    pub id: String,
    pub params: Value,
    pub run_seed: u64,
    /// Indices of the upstream instances, in `Plan::instances`.
    pub deps: Vec<usize>,
    pub components: Option<KeyComponents>,
    pub key: Option<String>,
    pub state: State,
    /// A placeholder for instances a `matrix: {key: all}` will produce once upstream is done.
    pub pending_expansion: bool,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub instances: Vec<Instance>,
    pub order: Vec<String>,
}

/// Memoises file digests by (path, size, mtime) across the plans of one process.
#[derive(Default)]
pub struct DigestCache {
    files: HashMap<PathBuf, (u64, std::time::SystemTime, String)>,
    metas: HashMap<String, Meta>,
}

impl DigestCache {
    fn file(&mut self, path: &std::path::Path) -> Result<String> {
        let md = std::fs::metadata(path).map_err(|e| PipelineError::io(path, e))?;
        let mtime = md.modified().map_err(|e| PipelineError::io(path, e))?;
        if let Some((len, t, d)) = self.files.get(path) {
            if *len == md.len() && *t == mtime {
                return Ok(d.clone());
            }
        }
        let (d, _) = file_digest(path).map_err(|e| PipelineError::io(path, e))?;
        self.files
            .insert(path.to_path_buf(), (md.len(), mtime, d.clone()));
        Ok(d)
    }

    fn meta(&mut self, store: &Store, key: &str) -> Result<&Meta> {
        if !self.metas.contains_key(key) {
            let m = store.read_meta(key)?;
            self.metas.insert(key.to_string(), m);
        }
        Ok(&self.metas[key])
    }

    /// Forget cached metadata (after `verify` moved instances away).
    pub fn forget_metas(&mut self) {
        self.metas.clear();
    }
}

pub fn instance_id(stage: &str, combo: &Combo) -> String {
    if combo.is_empty() {
        stage.to_string()
    } else {
        format!("{stage}[{}]", matrix::label(combo))
    }
}

impl Plan {
    pub fn build(
        manifest: &Manifest,
        registry: &Registry,
        store: &Store,
        cache: &mut DigestCache,
    ) -> Result<Plan> {
        let order = super::dag::topo_order(&manifest.stages);
        let device = manifest.device.resolved();
        let mut plan = Plan {
            instances: Vec::new(),
            order: order.clone(),
        };
        let mut by_stage: BTreeMap<&str, Vec<usize>> = BTreeMap::new();

        for stage in &order {
            let spec = &manifest.stages[stage];
            let kind = registry.get(&spec.kind).expect("validated");
            let all_axes: Vec<&String> = spec
                .matrix
                .iter()
                .filter(|(_, a)| **a == MatrixAxis::All)
                .map(|(k, _)| k)
                .collect();
            let mut new_indices = Vec::new();
            for combo in matrix::static_combinations(&spec.matrix) {
                let static_params = matrix::merged_params(&spec.params, &combo);
                let deps: Vec<usize> = spec
                    .needs
                    .iter()
                    .flat_map(|need| by_stage.get(need.as_str()).cloned().unwrap_or_default())
                    .filter(|&i| matrix::compatible(&plan.instances[i].combo, &combo))
                    .filter(|&i| kind.reads_input(&static_params, &plan.instances[i].kind))
                    .collect();
                let deps_done = deps.iter().all(|&i| {
                    plan.instances[i].state == State::Done && !plan.instances[i].pending_expansion
                });
                let run_seed = combo
                    .get("seed")
                    .and_then(Value::as_u64)
                    .unwrap_or(manifest.seed);

                let combos = if all_axes.is_empty() {
                    vec![combo.clone()]
                } else if deps_done {
                    let inputs = input_artifacts(&plan, &deps, store);
                    let params = matrix::merged_params(&spec.params, &combo);
                    let pi = PlanInputs {
                        params: &params,
                        data_root: manifest.data_root.as_deref(),
                        inputs: &inputs,
                    };
                    let mut cs = vec![combo.clone()];
                    for key in &all_axes {
                        let values =
                            kind.expand(key, &pi).map_err(|e| PipelineError::Manifest {
                                file: manifest.path.clone(),
                                line: manifest.stage_line(stage),
                                message: format!(
                                    "stage `{stage}`: cannot expand `{key}: all`: {e}"
                                ),
                            })?;
                        cs = matrix::extend(cs, key, &values);
                    }
                    cs
                } else {
                    let mut placeholder = combo.clone();
                    for key in &all_axes {
                        placeholder.insert((*key).clone(), Value::String("*".into()));
                    }
                    plan.instances.push(Instance {
                        stage: stage.clone(),
                        kind: spec.kind.clone(),
                        id: instance_id(stage, &placeholder),
                        combo: placeholder,
                        params: matrix::merged_params(&spec.params, &combo),
                        run_seed,
                        deps,
                        components: None,
                        key: None,
                        state: State::Waiting,
                        pending_expansion: true,
                    });
                    new_indices.push(plan.instances.len() - 1);
                    continue;
                };

                for c in combos {
                    let params = matrix::merged_params(&spec.params, &c);
                    // Expanded keys (`client: all`) also select upstream instances: a client's
                    // personalization reads that client's Stage-1 instance only.
                    let deps: Vec<usize> = deps
                        .iter()
                        .copied()
                        .filter(|&i| matrix::compatible(&plan.instances[i].combo, &c))
                        .collect();
                    let mut inst = Instance {
                        stage: stage.clone(),
                        kind: spec.kind.clone(),
                        id: instance_id(stage, &c),
                        combo: c,
                        params,
                        run_seed,
                        deps: deps.clone(),
                        components: None,
                        key: None,
                        state: State::Waiting,
                        pending_expansion: false,
                    };
                    if deps_done {
                        let inputs = input_artifacts(&plan, &deps, store);
                        let mut refs: BTreeMap<String, Vec<InputRef>> = BTreeMap::new();
                        for &d in &deps {
                            let up = &plan.instances[d];
                            let key = up.key.as_deref().expect("done has key");
                            let digest = cache.meta(store, key)?.output_digest.clone();
                            refs.entry(up.stage.clone()).or_default().push(InputRef {
                                instance: up.id.clone(),
                                digest,
                            });
                        }
                        let pi = PlanInputs {
                            params: &inst.params,
                            data_root: manifest.data_root.as_deref(),
                            inputs: &inputs,
                        };
                        let files =
                            kind.external_inputs(&pi)
                                .map_err(|e| PipelineError::Manifest {
                                    file: manifest.path.clone(),
                                    line: manifest.stage_line(stage),
                                    message: format!("stage `{stage}`: {e}"),
                                })?;
                        let mut external = BTreeMap::new();
                        for f in files {
                            let label = manifest
                                .data_root
                                .as_deref()
                                .and_then(|r| f.strip_prefix(r).ok())
                                .map(|p| format!("data:{}", p.display()))
                                .unwrap_or_else(|| f.display().to_string());
                            external.insert(label, cache.file(&f)?);
                        }
                        let comps = KeyComponents {
                            kind: spec.kind.clone(),
                            code_version: format!("{}.{}", PIPELINE_EPOCH, kind.version()),
                            params: inst.params.clone(),
                            seed: inst.run_seed,
                            device: device.clone(),
                            inputs: refs,
                            external,
                        };
                        let key = comps.key();
                        inst.state = if store.is_done(&key) {
                            State::Done
                        } else if store.is_failed(&key) {
                            State::Failed
                        } else {
                            State::Ready
                        };
                        inst.key = Some(key);
                        inst.components = Some(comps);
                    }
                    plan.instances.push(inst);
                    new_indices.push(plan.instances.len() - 1);
                }
            }
            by_stage.insert(stage.as_str(), new_indices);
        }
        Ok(plan)
    }

    /// Instances of the given stages and everything they (transitively) need.
    pub fn closure(manifest: &Manifest, targets: &[String]) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let mut stack: Vec<&String> = targets.iter().collect();
        while let Some(s) = stack.pop() {
            if out.insert(s.clone()) {
                stack.extend(manifest.stages[s].needs.iter());
            }
        }
        out
    }

    /// What the stage of instance `i` reads, as the executor hands it over.
    pub fn inputs_of(&self, i: usize, store: &Store) -> BTreeMap<String, Vec<InputArtifact>> {
        input_artifacts(self, &self.instances[i].deps, store)
    }
}

fn input_artifacts(
    plan: &Plan,
    deps: &[usize],
    store: &Store,
) -> BTreeMap<String, Vec<InputArtifact>> {
    let mut inputs: BTreeMap<String, Vec<InputArtifact>> = BTreeMap::new();
    for &d in deps {
        let up = &plan.instances[d];
        let key = up.key.clone().unwrap_or_default();
        inputs
            .entry(up.stage.clone())
            .or_default()
            .push(InputArtifact {
                stage: up.stage.clone(),
                kind: up.kind.clone(),
                instance: up.id.clone(),
                combo: up.combo.clone(),
                dir: store.out_dir(&key),
                key,
            });
    }
    inputs
}
