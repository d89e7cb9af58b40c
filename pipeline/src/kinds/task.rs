//! Task-dependent settings of the model stages. Which task a stage runs follows from its
//! upstream partition (classification: XNLI, MasakhaNEWS; generation: Fed-Aya), and so do the
//! paper's defaults (PAPER_NOTES §1): sequence length 128 / 1024, batch 32 / 4 × 4 accumulation.
//!
//! A generation base model records its prompt template in `model/task.json`, so every stage
//! downstream formats prompts the way the model was trained.

use std::path::Path;

use datasets::{PoolReader, TaskKind};
use serde::{Deserialize, Serialize};
use stages::task::{LmSettings, TaskSetup, WeightDtype};
use stages::tokenize::PromptTemplate;

use super::artifacts::TASK_FILE;
use crate::engine::registry::{ParamError, StageError};

/// Defaults of one task (PAPER_NOTES §1; Fed-Aya: max 1024 new tokens, batch 4 × 4).
#[derive(Debug, Clone, Copy)]
pub struct TaskDefaults {
    pub max_len: usize,
    pub batch_size: usize,
    pub accumulate: usize,
    pub max_new_tokens: usize,
}

pub fn defaults(kind: TaskKind) -> TaskDefaults {
    match kind {
        TaskKind::Classification => TaskDefaults {
            max_len: 128,
            batch_size: 32,
            accumulate: 1,
            max_new_tokens: 0,
        },
        TaskKind::Generation => TaskDefaults {
            max_len: 1024,
            batch_size: 4,
            accumulate: 4,
            max_new_tokens: 1024,
        },
    }
}

/// The optional task settings a model stage accepts (each `None` takes the task's default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct TaskOptions {
    pub max_len: Option<usize>,
    pub batch_size: Option<usize>,
    pub accumulate: Option<usize>,
    pub max_new_tokens: Option<usize>,
    /// Dtype of the base model's weights (`f32` default; the reference's `bf16`).
    pub dtype: Option<WeightDtype>,
}

impl TaskOptions {
    pub fn check(&self) -> Result<(), ParamError> {
        if self.max_len.is_some_and(|n| n < 4) {
            return Err(ParamError::new(Some("max_len"), "`max_len` must be ≥ 4"));
        }
        for (name, v) in [
            ("batch_size", self.batch_size),
            ("accumulate", self.accumulate),
            ("max_new_tokens", self.max_new_tokens),
        ] {
            if v == Some(0) {
                return Err(ParamError::new(Some(name), format!("`{name}` must be ≥ 1")));
            }
        }
        Ok(())
    }

    pub fn max_len(&self, kind: TaskKind) -> usize {
        self.max_len.unwrap_or(defaults(kind).max_len)
    }

    pub fn batch_size(&self, kind: TaskKind) -> usize {
        self.batch_size.unwrap_or(defaults(kind).batch_size)
    }

    pub fn accumulate(&self, kind: TaskKind) -> usize {
        self.accumulate.unwrap_or(defaults(kind).accumulate)
    }

    /// The model setup for `pool`'s task; `prompt` is the base model's template (generation).
    pub fn setup(&self, pool: &PoolReader, prompt: PromptTemplate) -> TaskSetup {
        let kind = pool.task().kind;
        match kind {
            TaskKind::Classification => TaskSetup::Classification {
                labels: pool.labels().to_vec(),
                max_len: self.max_len(kind),
                dtype: self.dtype.unwrap_or_default(),
            },
            TaskKind::Generation => TaskSetup::Generation(LmSettings {
                prompt,
                max_len: self.max_len(kind),
                max_new_tokens: self.max_new_tokens.unwrap_or(defaults(kind).max_new_tokens),
                dtype: self.dtype.unwrap_or_default(),
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    prompt: PromptTemplate,
}

/// Records a generation model's prompt template next to its weights.
pub fn write_task_file(model_dir: &Path, prompt: PromptTemplate) -> Result<(), StageError> {
    let text = serde_json::to_string_pretty(&TaskFile { prompt })
        .map_err(|e| StageError::msg(e.to_string()))?;
    std::fs::write(model_dir.join(TASK_FILE), text + "\n")?;
    Ok(())
}

/// The prompt template of the model in `model_dir` (Alpaca when it records none).
pub fn read_prompt(model_dir: &Path) -> Result<PromptTemplate, StageError> {
    let path = model_dir.join(TASK_FILE);
    if !path.is_file() {
        return Ok(PromptTemplate::Alpaca);
    }
    let text = std::fs::read_to_string(&path)?;
    let f: TaskFile = serde_json::from_str(&text)
        .map_err(|e| StageError::msg(format!("{}: {e}", path.display())))?;
    Ok(f.prompt)
}
