//! PyTorch checkpoints (`pytorch_model.bin`, or shards listed in `pytorch_model.bin.index.json`,
//! as `save_pretrained(safe_serialization=False)` writes them) → HF layout with
//! `model.safetensors`. Checkpoints of that era carry buffers that are not parameters and that
//! the models recompute from `config.json` (`rotary_emb.inv_freq`, BERT's integer
//! `position_ids` / `token_type_ids`): they are dropped and listed in the result. Float tensors
//! keep their dtype (f16 / bf16 / f32; f64 becomes f32); the loaders convert at load time.
//!
//! Only the zip-based format of torch ≥ 1.6 is read (candle's pickle reader); older files must be
//! re-saved with a current torch.

use crate::model::hf_layout::{read_config, shard_files, write_model_dir, HfLayoutError};
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Errors importing a PyTorch checkpoint directory; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum PytorchImportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: cannot read the checkpoint (torch ≥ 1.6 zip format expected): {source}")]
    Read {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error(transparent)]
    Layout(#[from] HfLayoutError),
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct PytorchImport {
    pub tensor_count: usize,
    pub parameter_count: usize,
    pub shard_count: usize,
    /// Buffers left out (sorted), see the module comment.
    pub dropped: Vec<String>,
}

/// Whether a checkpoint entry is a recomputed buffer rather than a parameter.
fn is_buffer(name: &str, dtype: DType) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
        || !matches!(dtype, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

/// The checkpoint files of `dir`: the shards of `pytorch_model.bin.index.json` if present, else
/// `pytorch_model.bin`.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>, PytorchImportError> {
    Ok(shard_files(dir, "pytorch_model.bin", "")?)
}

/// Reads every tensor of one checkpoint file (all on the CPU).
fn read_checkpoint(path: &Path) -> Result<Vec<(String, Tensor)>, PytorchImportError> {
    let read = |source| PytorchImportError::Read {
        path: path.to_path_buf(),
        source,
    };
    let pth = candle_core::pickle::PthTensors::new(path, None).map_err(read)?;
    let mut names: Vec<&String> = pth.tensor_infos().keys().collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let info = &pth.tensor_infos()[name];
        // candle skips `start_offset` bytes where torch counts elements: only offset 0 (what
        // `save_pretrained` writes) or one-byte types are read correctly.
        if info.layout.start_offset() != 0 && info.dtype.size_in_bytes() != 1 {
            return Err(PytorchImportError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "tensor {name:?} is a view at storage offset {}; re-save the checkpoint \
                     with cloned tensors (or as safetensors)",
                    info.layout.start_offset()
                ),
            });
        }
        if let Some(t) = pth.get(name).map_err(read)? {
            out.push((name.clone(), t));
        }
    }
    Ok(out)
}

/// Converts the checkpoint in `src` (config.json, the `.bin` file(s), and `tokenizer.json`
/// unless `tokenizer` names one) into `out_dir`, all or nothing.
pub fn import_pytorch_dir(
    src: &Path,
    tokenizer: Option<&Path>,
    out_dir: &Path,
) -> Result<PytorchImport, PytorchImportError> {
    let config: serde_json::Value = read_config(src)?;
    let tok_path = tokenizer
        .map(Path::to_path_buf)
        .unwrap_or_else(|| src.join("tokenizer.json"));
    if !tok_path.exists() {
        return Err(PytorchImportError::Invalid {
            path: tok_path,
            message: "not found: the HF layout needs a tokenizer.json (from the model's hub \
                      repository, or `AutoTokenizer.from_pretrained(...).save_pretrained(...)` \
                      elsewhere); name one with --tokenizer"
                .into(),
        });
    }
    let tokenizer_json =
        std::fs::read_to_string(&tok_path).map_err(|source| PytorchImportError::Io {
            path: tok_path.clone(),
            source,
        })?;
    let files = checkpoint_files(src)?;
    let mut tensors = HashMap::new();
    let mut dropped = Vec::new();
    for path in &files {
        for (name, t) in read_checkpoint(path)? {
            if is_buffer(&name, t.dtype()) {
                dropped.push(name);
                continue;
            }
            let t = if t.dtype() == DType::F64 {
                t.to_dtype(DType::F32)
            } else {
                Ok(t)
            }
            .map_err(|source| PytorchImportError::Read {
                path: path.clone(),
                source,
            })?;
            if tensors.insert(name.clone(), t).is_some() {
                return Err(PytorchImportError::Invalid {
                    path: path.clone(),
                    message: format!("tensor {name:?} appears in two shards"),
                });
            }
        }
    }
    if tensors.is_empty() {
        return Err(PytorchImportError::Invalid {
            path: src.to_path_buf(),
            message: "the checkpoint holds no float tensors".into(),
        });
    }
    dropped.sort();
    let parameter_count = tensors.values().map(Tensor::elem_count).sum();
    let tensor_count = tensors.len();
    write_model_dir(out_dir, &config, &tensors, &tokenizer_json)?;
    Ok(PytorchImport {
        tensor_count,
        parameter_count,
        shard_count: files.len(),
        dropped,
    })
}
