//! What the two Stage-1 kinds (`psg/fedp2eft`'s clients and `lambda/bayestune`) share: the
//! Stage-1 settings of a manifest (PAPER_NOTES §3) and the adapter record personalization
//! rebuilds the BayesTune adapters from (`psg/config.json`, `stage1.json`).

use std::path::Path;

use datasets::TaskKind;
use serde::{Deserialize, Serialize};
use stages::methods::stage1::Stage1Config;
use stages::peft::bayestune::BayesTuneConfig;
use stages::task::WeightDtype;

use super::task::TaskOptions;
use crate::engine::registry::{require_positive, ParamError, StageError};

/// Stage-1 settings shared by both kinds (PAPER_NOTES §3 defaults; sequence length, batch and
/// accumulation default per task, see `kinds::task`).
#[derive(Debug, Clone, Deserialize)]
pub struct Stage1Params {
    #[serde(default = "d_epochs")]
    epochs: usize,
    // The `TaskOptions` fields, spelled out: serde cannot reject unknown fields through two
    // levels of `flatten`.
    #[serde(default)]
    max_len: Option<usize>,
    #[serde(default)]
    batch_size: Option<usize>,
    #[serde(default)]
    accumulate: Option<usize>,
    #[serde(default)]
    max_new_tokens: Option<usize>,
    #[serde(default)]
    dtype: Option<WeightDtype>,
    #[serde(default = "d_r_max")]
    pub r_max: usize,
    #[serde(default = "d_alpha")]
    pub alpha: f64,
    #[serde(default = "d_lr_adapter")]
    lr_adapter: f64,
    #[serde(default = "d_lr_lambda")]
    lr_lambda: f64,
    #[serde(default = "d_clip")]
    clip_norm: f64,
}

fn d_epochs() -> usize {
    2
}
fn d_r_max() -> usize {
    32
}
fn d_alpha() -> f64 {
    64.0
}
fn d_lr_adapter() -> f64 {
    1e-4
}
fn d_lr_lambda() -> f64 {
    1e-2
}
fn d_clip() -> f64 {
    1.0
}
impl Stage1Params {
    pub fn task(&self) -> TaskOptions {
        TaskOptions {
            max_len: self.max_len,
            batch_size: self.batch_size,
            accumulate: self.accumulate,
            max_new_tokens: self.max_new_tokens,
            dtype: self.dtype,
        }
    }

    pub fn check(&self) -> Result<(), ParamError> {
        if self.epochs == 0 || self.r_max == 0 {
            return Err(ParamError::new(
                Some("epochs"),
                "`epochs` and `r_max` must be ≥ 1",
            ));
        }
        self.task().check()?;
        require_positive(&[
            ("alpha", self.alpha),
            ("lr_adapter", self.lr_adapter),
            ("lr_lambda", self.lr_lambda),
            ("clip_norm", self.clip_norm),
        ])
    }

    pub fn config(&self, kind: TaskKind) -> Stage1Config {
        Stage1Config {
            bayestune: BayesTuneConfig {
                r_max: self.r_max,
                alpha: self.alpha,
                ..BayesTuneConfig::default()
            },
            epochs: self.epochs,
            batch_size: self.task().batch_size(kind),
            accumulate: self.task().accumulate(kind),
            lr_adapter: self.lr_adapter,
            lr_lambda: self.lr_lambda,
            clip_norm: self.clip_norm,
        }
    }
}

/// `psg/config.json` and `stage1.json`: what personalization needs to rebuild the adapters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdapterMeta {
    /// Adapted linears (PSG: L).
    pub modules: usize,
    /// Base linears the PSG's meta-data observe (BERT: = modules; LLaMA: + lm_head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<usize>,
    pub r_max: usize,
    pub alpha: f64,
    /// Seed of the adapters' initial A (Stage 1 only; pruning restores rows of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_seed: Option<u64>,
}

impl AdapterMeta {
    pub fn read(path: &Path) -> Result<Self, StageError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StageError::msg(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| StageError::msg(format!("{}: {e}", path.display())))
    }

    pub fn write(&self, path: &Path) -> Result<(), StageError> {
        let text = serde_json::to_string_pretty(self).map_err(err)?;
        std::fs::write(path, text + "\n")?;
        Ok(())
    }

    pub fn bayestune(&self) -> BayesTuneConfig {
        BayesTuneConfig {
            r_max: self.r_max,
            alpha: self.alpha,
            ..BayesTuneConfig::default()
        }
    }
}

fn err(e: impl std::fmt::Display) -> StageError {
    StageError(e.to_string())
}
