//! What a running stage sees: its parameters, run seed, inputs, an output directory, a
//! checkpoint API for long stages, a log and progress reporting.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;
use stages::rng::{derive_seed, SeedPart};

use super::error::StageError;
use super::matrix::Combo;
use super::progress::StageProgress;
use super::store::write_bytes_synced;

/// A finished upstream instance the stage reads from.
#[derive(Debug, Clone)]
pub struct InputArtifact {
    pub stage: String,
    pub kind: String,
    pub instance: String,
    pub combo: Combo,
    pub key: String,
    /// The instance's `out/` directory (read-only by convention).
    pub dir: PathBuf,
}

pub struct StageContext {
    pub(crate) stage: String,
    pub(crate) kind: String,
    pub(crate) instance: String,
    /// The instance's cache key: checkpoints are bound to it.
    pub(crate) key: String,
    pub(crate) combo: Combo,
    pub(crate) params: Value,
    pub(crate) run_seed: u64,
    pub(crate) device: String,
    pub(crate) data_root: Option<PathBuf>,
    pub(crate) inputs: BTreeMap<String, Vec<InputArtifact>>,
    pub(crate) out_dir: PathBuf,
    pub(crate) checkpoint_dir: PathBuf,
    pub(crate) log: Option<std::fs::File>,
    pub(crate) progress: StageProgress,
    pub(crate) resumed: bool,
}

impl StageContext {
    pub fn stage(&self) -> &str {
        &self.stage
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The instance's matrix values.
    pub fn combo(&self) -> &Combo {
        &self.combo
    }

    pub fn params_value(&self) -> &Value {
        &self.params
    }

    pub fn params<T: DeserializeOwned>(&self) -> Result<T, StageError> {
        super::kind_params::typed_params(&self.params).map_err(|e| StageError(e.message))
    }

    /// The run seed: the instance's `seed` matrix value, or the manifest seed.
    pub fn run_seed(&self) -> u64 {
        self.run_seed
    }

    /// A seed for one purpose of this stage kind (round, client, ...): same inputs, same draw.
    /// Derived from the kind, not the stage name, because the cache key does not contain names.
    pub fn derive_seed(&self, parts: &[SeedPart<'_>]) -> u64 {
        let mut all = vec![SeedPart::Name(&self.kind)];
        all.extend_from_slice(parts);
        derive_seed(self.run_seed, &all)
    }

    /// A seed shared by every kind for the same run seed: for draws that must coincide across
    /// the methods being compared (which clients a round samples, a new classifier head), so
    /// that FedAvg, DEPT and FedDPA-T differ only in what they are meant to differ in.
    pub fn shared_seed(&self, parts: &[SeedPart<'_>]) -> u64 {
        let mut all = vec![SeedPart::Name("shared")];
        all.extend_from_slice(parts);
        derive_seed(self.run_seed, &all)
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn data_root(&self) -> Result<&Path, StageError> {
        self.data_root.as_deref().ok_or_else(|| {
            StageError::msg(format!(
                "stage `{}` reads raw data but no data root is set: add `data_root:` to the manifest or set {}",
                self.stage,
                super::spec::DATA_ROOT_ENV
            ))
        })
    }

    /// Instances of the upstream stage `stage`.
    pub fn inputs(&self, stage: &str) -> &[InputArtifact] {
        self.inputs.get(stage).map(Vec::as_slice).unwrap_or(&[])
    }

    /// All upstream instances whose kind starts with `prefix` (`partition/`, `base/`): kinds
    /// cannot know the names a manifest gives their upstream stages.
    pub fn inputs_of_kind(&self, prefix: &str) -> Vec<&InputArtifact> {
        self.inputs
            .values()
            .flatten()
            .filter(|a| a.kind.starts_with(prefix))
            .collect()
    }

    /// Exactly one upstream instance of a kind prefix, or a clear error.
    pub fn single_input_of_kind(&self, prefix: &str) -> Result<&InputArtifact, StageError> {
        let found = self.inputs_of_kind(prefix);
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(StageError::msg(format!(
                "stage `{}` needs an upstream stage of kind `{prefix}*`",
                self.stage
            ))),
            many => Err(StageError::msg(format!(
                "stage `{}` found {} upstream instances of kind `{prefix}*` ({}); give the matrices a shared key so one matches",
                self.stage,
                many.len(),
                many.iter().map(|a| a.instance.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Directory the stage writes its artifacts into (a temporary one until the stage succeeds).
    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    /// Saves the stage's resumable state atomically, behind a header with its key and digest
    /// (`engine::checkpoint`); a killed run resumes from the last one.
    pub fn checkpoint(&self, state: &[u8]) -> Result<(), StageError> {
        let bytes = super::checkpoint::encode(&self.key, state);
        write_bytes_synced(&self.checkpoint_dir.join("state.bin"), &bytes)
            .map_err(|e| StageError(e.to_string()))
    }

    /// The last checkpoint of an interrupted attempt at this same key, if any. One that fails
    /// its header check (damaged, truncated, another key, an old format) is deleted with a
    /// warning naming it, and the stage starts from scratch.
    pub fn resume(&mut self) -> Option<Vec<u8>> {
        let path = self.checkpoint_dir.join("state.bin");
        let bytes = std::fs::read(&path).ok()?;
        match super::checkpoint::decode(&self.key, &bytes) {
            Ok(state) => {
                self.resumed = true;
                self.log(&format!("resuming from checkpoint ({} bytes)", state.len()));
                Some(state.to_vec())
            }
            Err(why) => {
                let msg = format!(
                    "warning: {}: discarding checkpoint {} ({why}); the stage restarts from scratch",
                    self.instance,
                    path.display()
                );
                eprintln!("{msg}");
                self.log(&msg);
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Appends a line to the instance's log (kept with its outputs, or with the failure).
    pub fn log(&mut self, line: &str) {
        if let Some(f) = self.log.as_mut() {
            let _ = writeln!(f, "{} {line}", super::timefmt::now_rfc3339());
        }
    }

    /// Starts (or restarts) this stage's progress bar with `total` steps.
    pub fn progress(&self, total: u64, what: &str) -> &StageProgress {
        self.progress.start(total, what);
        &self.progress
    }
}
