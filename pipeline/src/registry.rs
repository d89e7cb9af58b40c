//! Stage kinds: the trait every registered stage type implements, and the registry the manifest
//! is validated against.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::context::{InputArtifact, StageContext};

/// A parameter problem found before anything runs; `field` lets the manifest error name a line.
#[derive(Debug, Clone)]
pub struct ParamError {
    pub field: Option<String>,
    pub message: String,
}

impl ParamError {
    pub fn new(field: Option<&str>, message: impl Into<String>) -> Self {
        ParamError {
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
}

/// A failure while a stage runs. Library errors are kept as their display text (they already
/// name the file, record or client involved).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StageError(pub String);

impl StageError {
    pub fn msg(m: impl Into<String>) -> Self {
        StageError(m.into())
    }
}

macro_rules! stage_error_from {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for StageError {
            fn from(e: $t) -> Self { StageError(e.to_string()) }
        }
    )*};
}
stage_error_from!(
    std::io::Error,
    serde_json::Error,
    crate::error::PipelineError,
    datasets::DatasetError,
);

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

/// Checks that every named value is positive and finite, naming the first that is not.
pub fn require_positive(values: &[(&str, f64)]) -> Result<(), ParamError> {
    match values.iter().find(|(_, v)| !(*v > 0.0 && v.is_finite())) {
        Some((name, _)) => Err(ParamError::new(
            Some(name),
            format!("`{name}` must be positive"),
        )),
        None => Ok(()),
    }
}

/// Deserializes a kind's typed parameters, naming the offending field on error.
pub fn typed_params<T: DeserializeOwned>(params: &Value) -> Result<T, ParamError> {
    serde_json::from_value(params.clone()).map_err(|e| {
        let message = e.to_string();
        let field = message
            .split('`')
            .nth(1)
            .filter(|_| message.contains("field `"))
            .map(str::to_string);
        ParamError { field, message }
    })
}
