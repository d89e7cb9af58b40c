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

/// A Hugging Face repo at a revision (`model: {hf: ORG/NAME, revision: REV}`). This crate only
/// holds the name: the pipeline fetches it, records what it resolved to in `locked` (so the
/// commit and file digests are part of the instance's parameters, hence its cache key) and
/// hands the stages the snapshot as a [`ModelSource::Dir`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HfModel {
    pub hf: String,
    #[serde(default = "default_revision")]
    pub revision: String,
    /// Filled by the pipeline from its lock file, never written in a manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked: Option<HfLocked>,
}

fn default_revision() -> String {
    "main".into()
}

/// What an [`HfModel`] resolved to: the commit and each file's sha256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HfLocked {
    pub commit: String,
    pub sha256: std::collections::BTreeMap<String, String>,
}

/// Where the starting model comes from: `{dir: PATH}` (BERT or LLaMA, by `config.json`'s
/// `model_type`), `{hf: ORG/NAME, revision: REV}` (a Hub repo, resolved to a directory by the
/// pipeline), `{tiny: {...}}` (BERT classifier) or `{tiny_llama: {...}}` (causal LM).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    Dir(PathBuf),
    Tiny(TinyBert),
    TinyLlama(TinyLlama),
    Hf(HfModel),
}

/// The externally tagged forms (`{dir: ..}`, `{tiny: ..}`, `{tiny_llama: ..}`); `{hf: ..}` has
/// its `revision` beside the tag, so it is told apart by its `hf` key first.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Tagged {
    Dir(PathBuf),
    Tiny(TinyBert),
    TinyLlama(TinyLlama),
}

impl Serialize for ModelSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let tagged = match self {
            ModelSource::Hf(h) => return h.serialize(s),
            ModelSource::Dir(d) => Tagged::Dir(d.clone()),
            ModelSource::Tiny(t) => Tagged::Tiny(t.clone()),
            ModelSource::TinyLlama(t) => Tagged::TinyLlama(t.clone()),
        };
        tagged.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ModelSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        if v.get("hf").is_some() {
            return HfModel::deserialize(v)
                .map(ModelSource::Hf)
                .map_err(D::Error::custom);
        }
        Ok(match Tagged::deserialize(v).map_err(D::Error::custom)? {
            Tagged::Dir(p) => ModelSource::Dir(p),
            Tagged::Tiny(t) => ModelSource::Tiny(t),
            Tagged::TinyLlama(t) => ModelSource::TinyLlama(t),
        })
    }
}

impl ModelSource {
    /// Files read from outside the workdir (their digests belong in a cache key).
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            ModelSource::Dir(d) => ["config.json", "model.safetensors", "tokenizer.json"]
                .iter()
                .map(|f| d.join(f))
                .collect(),
            // Its digests come from the pipeline's lock (in `locked`), not from re-hashing.
            ModelSource::Tiny(_) | ModelSource::TinyLlama(_) | ModelSource::Hf(_) => Vec::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_sources_parse_beside_the_tagged_forms_and_reject_unknown_fields() {
        let m: ModelSource =
            serde_json::from_str(r#"{"hf": "org/name", "revision": "v1"}"#).unwrap();
        assert!(matches!(&m, ModelSource::Hf(h) if h.hf == "org/name" && h.revision == "v1"));
        let back = serde_json::to_value(&m).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"hf": "org/name", "revision": "v1"})
        );
        let d: ModelSource = serde_json::from_str(r#"{"dir": "/m"}"#).unwrap();
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({"dir": "/m"})
        );
        let e = serde_json::from_str::<ModelSource>(r#"{"hf": "o/n", "revsion": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `revsion`"), "{e}");
    }
}
