//! Where a task's starting model comes from: an HF-layout directory, or a seeded random tiny
//! BERT / LLaMA for CI; and the device a model runs on.

use std::path::PathBuf;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};

/// A random tiny BERT for CI (real code paths, seconds to train).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TinyBert {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vocab_size: usize,
    pub seed: u64,
}

/// A random tiny LLaMA for CI (real code paths, seconds to train).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TinyLlama {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub vocab_size: usize,
    pub seed: u64,
}

/// Where the starting model comes from: `{dir: PATH}` (BERT or LLaMA, by `config.json`'s
/// `model_type`), `{tiny: {...}}` (BERT classifier) or `{tiny_llama: {...}}` (causal LM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSource {
    Dir(PathBuf),
    Tiny(TinyBert),
    TinyLlama(TinyLlama),
}

impl ModelSource {
    /// Files read from outside the workdir (their digests belong in a cache key).
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            ModelSource::Dir(d) => ["config.json", "model.safetensors", "tokenizer.json"]
                .iter()
                .map(|f| d.join(f))
                .collect(),
            ModelSource::Tiny(_) | ModelSource::TinyLlama(_) => Vec::new(),
        }
    }
}

/// `"cpu"`, `"cuda"` or `"cuda:N"` → a candle device.
pub fn device_from_name(name: &str) -> Result<Device> {
    let cuda = |i| Device::new_cuda(i).map_err(|e| ModelError::Invalid(e.to_string()));
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(ModelError::Invalid(format!(
                "unknown device {other:?} (cpu, cuda, cuda:N)"
            ))),
        },
    }
}

/// The dtype a base model's weights are held (and, in base FL, trained) in: the reference loads
/// every model with `torch_dtype=bfloat16`; f32 is the CPU default (bf16 is slower on most
/// CPUs). Adapters, losses and the optimiser maths of adapters stay f32, as PEFT's autocast
/// keeps LoRA weights in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightDtype {
    #[default]
    F32,
    Bf16,
}

impl WeightDtype {
    pub fn dtype(self) -> DType {
        match self {
            WeightDtype::F32 => DType::F32,
            WeightDtype::Bf16 => DType::BF16,
        }
    }

    /// `x` rounded to this dtype's precision (values stay f32): the reference's bf16 λ.
    pub fn round(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            WeightDtype::F32 => Ok(x.clone()),
            WeightDtype::Bf16 => x.to_dtype(DType::BF16)?.to_dtype(x.dtype()),
        }
    }
}
