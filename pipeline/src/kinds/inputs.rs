//! The fetched inputs of a manifest: every `model: {hf: ORG/NAME, revision: REV}` among the
//! stages' params and matrix values is looked up in `manifests/<name>.lock` (and, for `pipeline
//! fetch` / `pipeline run`, fetched — lock, then Hub cache, then mirror or Hub), and what it
//! resolved to is written into the source's `locked` field. The commit and file digests thus
//! become part of every reading instance's params, hence of its cache key, without re-hashing
//! the files; the stages later read the snapshot directory (`model_dir::local`).
//!
//! Without a data root (`data_root:` / `FEDP2EFT_DATA`, which stay overrides), the pinned
//! datasets the partition kinds read are fetched the same way into `$FEDP2EFT_CACHE/data`, laid
//! out as a data root, which becomes the manifest's. Their keys are those of a local data root
//! with the same bytes (external files are keyed by path below the root and digest), the lock
//! making sure the bytes are the pinned ones.

use std::collections::BTreeMap;

use serde_json::Value;
use stages::task::{HfLocked, HfModel};

use crate::engine::error::PipelineError;
use crate::engine::manifest::Manifest;
use crate::engine::spec::MatrixAxis;
use crate::fetch::{lock_path, FetchConfig, Fetcher, LockFile, LockedInput};

pub enum Mode {
    /// Fetch what is missing and write the lock.
    Fetch(Box<FetchConfig>),
    /// Only read the lock (status, explain, exec-instance, dry runs): nothing is downloaded.
    LockOnly,
}

/// What [`resolve`] did: every input by id.
#[derive(Debug, Default)]
pub struct Resolved {
    pub inputs: BTreeMap<String, LockedInput>,
}

/// Every `hf:` source of the manifest, with the stage it is in (for located messages).
fn hf_values(m: &mut Manifest) -> Vec<(String, &mut Value)> {
    let mut out = Vec::new();
    for (name, spec) in m.stages.iter_mut() {
        if let Some(v) = spec.params.get_mut("model") {
            out.push((name.clone(), v));
        }
        if let Some(MatrixAxis::Values(vs)) = spec.matrix.get_mut("model") {
            out.extend(vs.iter_mut().map(|v| (name.clone(), v)));
        }
    }
    out.retain(|(_, v)| v.get("hf").is_some());
    out
}

/// The pinned dataset each partition kind reads (`fetch/pins/<name>.tsv`).
const PINNED: &[(&str, &str)] = &[
    ("partition/masakhanews", "masakhanews"),
    ("partition/xnli", "xnli"),
    ("partition/aya_test_sets", "fedaya"),
];

pub fn resolve(manifest: &mut Manifest, mode: Mode) -> Result<Resolved, PipelineError> {
    let lock_file = lock_path(&manifest.path);
    let fail = |e: crate::fetch::FetchError| PipelineError::Other(e.to_string());
    let lock = LockFile::load(&lock_file).map_err(fail)?;
    let had_lock = lock.is_some();
    let mut lock = lock.unwrap_or_else(LockFile::empty);
    let mut fetcher = match mode {
        Mode::Fetch(mut cfg) => {
            cfg.mirror = cfg.mirror.or_else(|| manifest.mirror.clone());
            Some(Fetcher::new(*cfg))
        }
        Mode::LockOnly => None,
    };
    let path = manifest.path.clone();
    let lines: Vec<Option<usize>> = {
        let names: Vec<String> = hf_values(manifest).into_iter().map(|(s, _)| s).collect();
        names
            .iter()
            .map(|s| manifest.field_line(s, "model"))
            .collect()
    };
    let mut done = Resolved::default();
    let before = lock.clone();
    for ((stage, v), line) in hf_values(manifest).into_iter().zip(lines) {
        let h: HfModel =
            serde_json::from_value(v.clone()).map_err(|e| PipelineError::Manifest {
                file: path.clone(),
                line,
                message: format!("stage `{stage}`: field `model`: {e}"),
            })?;
        let id = crate::fetch::model::input_id(&h.hf, &h.revision);
        let entry = match (&mut fetcher, done.inputs.get(&id)) {
            (_, Some(e)) => Some(e.clone()),
            (Some(f), None) => {
                let fetched = f
                    .model(&h.hf, &h.revision, lock.inputs.get(&id))
                    .map_err(fail)?;
                lock.inputs.insert(id.clone(), fetched.lock.clone());
                Some(fetched.lock)
            }
            (None, None) => lock.inputs.get(&id).cloned(),
        };
        if let Some(e) = entry {
            let locked = HfLocked {
                commit: e.commit.clone(),
                sha256: e
                    .files
                    .iter()
                    .map(|f| (f.path.clone(), f.sha256.clone()))
                    .collect(),
            };
            v["locked"] = serde_json::to_value(locked).expect("plain data serializes");
            done.inputs.insert(id, e);
        }
    }
    if manifest.data_root.is_none() {
        let mut names: Vec<&str> = manifest
            .stages
            .values()
            .filter_map(|s| PINNED.iter().find(|(k, _)| *k == s.kind).map(|(_, n)| *n))
            .collect();
        names.sort();
        names.dedup();
        let mut root = None;
        for name in &names {
            let id = crate::fetch::dataset::input_id(name);
            match &mut fetcher {
                Some(f) => {
                    let d = f.dataset(name, lock.inputs.get(&id)).map_err(fail)?;
                    lock.inputs.insert(id.clone(), d.lock.clone());
                    done.inputs.insert(id, d.lock);
                    root = Some(d.root);
                }
                // Fetched before (by `run` or `fetch`): the cache is the data root.
                None => match lock.inputs.get(&id) {
                    Some(l) => {
                        done.inputs.insert(id, l.clone());
                        root = Some(FetchConfig::from_env().data_cache);
                    }
                    None => {
                        root = None;
                        break;
                    }
                },
            }
        }
        manifest.data_root = root;
    }
    if fetcher.is_some() && (lock != before || !had_lock && !lock.inputs.is_empty()) {
        lock.save(&lock_file).map_err(fail)?;
    }
    Ok(done)
}
