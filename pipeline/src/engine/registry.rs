//! Stage kinds: the trait every registered stage type implements, and the registry the manifest
//! is validated against.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use super::context::{InputArtifact, StageContext};
pub use super::error::StageError;
pub use super::kind_params::{require_positive, typed_params, ParamError};
pub use super::resources::Resources;

/// Everything a kind may look at to enumerate `matrix: {key: all}` values or external files.
pub struct PlanInputs<'a> {
    pub params: &'a Value,
    pub data_root: Option<&'a std::path::Path>,
    pub inputs: &'a BTreeMap<String, Vec<InputArtifact>>,
}

pub trait StageKind: Send + Sync {
    /// Registered name, e.g. `partition/xnli`.
    fn name(&self) -> &'static str;
    /// Code version: bump when the kind's outputs change for the same inputs; part of the key.
    fn version(&self) -> u32;
    /// One line for `--help`-style listings.
    fn describe(&self) -> &'static str;
    /// Checks parameters (after matrix values are merged in) before anything runs.
    fn validate(&self, params: &Value) -> Result<(), ParamError>;
    /// Matrix keys this kind can enumerate itself (`client: all`).
    fn expandable_keys(&self) -> &'static [&'static str] {
        &[]
    }
    /// Values of an expandable key, computed from finished inputs.
    fn expand(&self, key: &str, _plan: &PlanInputs<'_>) -> Result<Vec<Value>, StageError> {
        Err(StageError::msg(format!(
            "kind `{}` cannot expand `{key}`",
            self.name()
        )))
    }
    /// Whether an instance with `params` reads the upstream instances of `upstream_kind` among
    /// the stages it `needs`. Those it does not read are neither waited for nor part of its key
    /// (a LoRA personalization does not depend on the PSG it shares a manifest stage with).
    fn reads_input(&self, _params: &Value, _upstream_kind: &str) -> bool {
        true
    }
    /// Files outside the workdir the stage reads (raw data); their digests enter the cache key.
    fn external_inputs(&self, _plan: &PlanInputs<'_>) -> Result<Vec<PathBuf>, StageError> {
        Ok(Vec::new())
    }
    /// Checks what an instance with `params` will read from outside the workdir (a model
    /// directory, raw data against the parameters) before anything of the run executes, so a
    /// bad input exits 2 up front instead of failing after upstream stages have committed.
    fn check_inputs(
        &self,
        _params: &Value,
        _data_root: Option<&std::path::Path>,
    ) -> Result<(), ParamError> {
        Ok(())
    }
    /// What one instance asks a cluster for when the manifest and command line say nothing
    /// (`engine::resources`); a light default, which the model kinds raise.
    fn default_resources(&self) -> Resources {
        Resources::new(1, "4G", "1:00:00")
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError>;
}

#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn StageKind>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, kind: Arc<dyn StageKind>) {
        self.kinds.insert(kind.name(), kind);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn StageKind>> {
        self.kinds.get(name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn StageKind>> {
        self.kinds.values()
    }
}
