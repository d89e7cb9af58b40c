//! GGUF (llama.cpp) LLaMA → HF layout: dequantised f32 `model.safetensors` with HF parameter
//! names, a `config.json` from the `llama.*` metadata, and a `tokenizer.json` rebuilt from the
//! GPT-2-style BPE vocabulary and merges in `tokenizer.ggml.*`.
//!
//! llama.cpp's converter permutes the rows of `attn_q`/`attn_k` from HF's rotate-half RoPE
//! layout to interleaved pairs; we undo it (the inverse of `convert_hf_to_gguf.py`'s
//! `permute`, as transformers' `reverse_permute_weights` does).

use crate::model::hf_layout::{write_model_dir, HfLayoutError};
use crate::model::llama_config::{LlamaConfig, RopeScaling, TokenIds};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

/// Errors importing a GGUF file; each names the file and the key or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum GgufImportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a readable GGUF file: {source}")]
    Read {
        path: String,
        source: candle_core::Error,
    },
    #[error("{path}: metadata {key:?}: {message}")]
    Metadata {
        path: String,
        key: String,
        message: String,
    },
    #[error("{path}: tensor {name:?}: {message}")]
    Tensor {
        path: String,
        name: String,
        message: String,
    },
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: String, message: String },
    #[error(transparent)]
    Write(#[from] HfLayoutError),
}

/// What an import produced.
#[derive(Debug, Clone)]
pub struct GgufImport {
    pub config: LlamaConfig,
    pub tensor_count: usize,
    pub parameter_count: usize,
}

struct Meta<'a> {
    path: String,
    content: &'a Content,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&Value, GgufImportError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.err(key, "missing"))
    }

    fn err(&self, key: &str, message: impl Into<String>) -> GgufImportError {
        GgufImportError::Metadata {
            path: self.path.clone(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn usize(&self, key: &str) -> Result<usize, GgufImportError> {
        let v = self.get(key)?;
        let n = match v {
            Value::U8(x) => u64::from(*x),
            Value::U16(x) => u64::from(*x),
            Value::U32(x) => u64::from(*x),
            Value::U64(x) => *x,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => {
                return Err(self.err(
                    key,
                    format!("expected a non-negative integer, got {other:?}"),
                ))
            }
        };
        Ok(n as usize)
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, GgufImportError> {
        if self.content.metadata.contains_key(key) {
            self.usize(key).map(Some)
        } else {
            Ok(None)
        }
    }

    fn f64(&self, key: &str) -> Result<f64, GgufImportError> {
        match self.get(key)? {
            Value::F32(x) => Ok(f64::from(*x)),
            Value::F64(x) => Ok(*x),
            other => Err(self.err(key, format!("expected a float, got {other:?}"))),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, GgufImportError> {
        if self.content.metadata.contains_key(key) {
            self.f64(key).map(Some)
        } else {
            Ok(None)
        }
    }

    fn string(&self, key: &str) -> Result<String, GgufImportError> {
        self.get(key)?
            .to_string()
            .cloned()
            .map_err(|e| self.err(key, e.to_string()))
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufImportError> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(v) => v
                .to_bool()
                .map(Some)
                .map_err(|e| self.err(key, e.to_string())),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, GgufImportError> {
        let arr = self
            .get(key)?
            .to_vec()
            .map_err(|e| self.err(key, e.to_string()))?;
        arr.iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|e| self.err(key, e.to_string()))
            })
            .collect()
    }

    fn ints(&self, key: &str) -> Result<Vec<i64>, GgufImportError> {
        let arr = self
            .get(key)?
            .to_vec()
            .map_err(|e| self.err(key, e.to_string()))?;
        arr.iter()
            .map(|v| match v {
                Value::I32(x) => Ok(i64::from(*x)),
                Value::U32(x) => Ok(i64::from(*x)),
                Value::I64(x) => Ok(*x),
                Value::U8(x) => Ok(i64::from(*x)),
                other => Err(self.err(key, format!("expected integers, got {other:?}"))),
            })
            .collect()
    }
}

/// Reads the GGUF header and metadata of `path`.
pub fn read_gguf(path: &Path) -> Result<(Content, std::fs::File), GgufImportError> {
    let p = path.display().to_string();
    let mut f = std::fs::File::open(path).map_err(|source| GgufImportError::Io {
        path: p.clone(),
        source,
    })?;
    let content =
        Content::read(&mut f).map_err(|source| GgufImportError::Read { path: p, source })?;
    Ok((content, f))
}

/// The HF `LlamaConfig` described by the `llama.*` and `tokenizer.ggml.*` metadata.
pub fn llama_config_from_gguf(
    path: &Path,
    content: &Content,
) -> Result<LlamaConfig, GgufImportError> {
    let m = Meta {
        path: path.display().to_string(),
        content,
    };
    let arch = m.string("general.architecture")?;
    if arch != "llama" {
        return Err(m.err(
            "general.architecture",
            format!("{arch:?} is not supported (only \"llama\")"),
        ));
    }
    let vocab = m.strings("tokenizer.ggml.tokens")?.len();
    let heads = m.usize("llama.attention.head_count")?;
    let hidden = m.usize("llama.embedding_length")?;
    let mut cfg = LlamaConfig::new(
        vocab,
        hidden,
        m.usize("llama.feed_forward_length")?,
        m.usize("llama.block_count")?,
        heads,
        m.opt_usize("llama.attention.head_count_kv")?
            .unwrap_or(heads),
    );
    if let Some(kd) = m.opt_usize("llama.attention.key_length")? {
        if kd != hidden / heads {
            cfg.head_dim = Some(kd);
        }
    }
    cfg.max_position_embeddings = m.usize("llama.context_length")?;
    cfg.rms_norm_eps = m.f64("llama.attention.layer_norm_rms_epsilon")?;
    if let Some(theta) = m.opt_f64("llama.rope.freq_base")? {
        cfg.rope_theta = theta;
    }
    if let Ok(kind) = m.string("llama.rope.scaling.type") {
        if kind != "none" {
            cfg.rope_scaling = Some(RopeScaling {
                rope_type: kind,
                factor: m.opt_f64("llama.rope.scaling.factor")?,
                low_freq_factor: None,
                high_freq_factor: None,
                original_max_position_embeddings: m
                    .opt_usize("llama.rope.scaling.original_context_length")?,
            });
        }
    }
    // llama.cpp omits `output.weight` when the LM head is tied to the embeddings.
    cfg.tie_word_embeddings = !content.tensor_infos.contains_key("output.weight");
    cfg.bos_token_id = m
        .opt_usize("tokenizer.ggml.bos_token_id")?
        .map(|i| TokenIds::One(i as u32));
    cfg.eos_token_id = m
        .opt_usize("tokenizer.ggml.eos_token_id")?
        .map(|i| TokenIds::One(i as u32));
    cfg.pad_token_id = m
        .opt_usize("tokenizer.ggml.padding_token_id")?
        .map(|i| i as u32);
    cfg.validate()
        .map_err(|e| m.err("llama.*", e.to_string()))?;
    Ok(cfg)
}

/// HF name of a GGUF LLaMA tensor.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = part.rsplit_once('.')?;
    let hf = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Inverse of llama.cpp's Q/K permutation: rows `(heads, 2, d/2)` were reordered to
/// `(heads, d/2, 2)`; swap back. Works for weights `(out, in)` and biases `(out,)`.
pub fn unpermute_rope_rows(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = w.dims().to_vec();
    let out = dims[0];
    let rest: Vec<usize> = dims[1..].to_vec();
    let mut shape = vec![heads, out / heads / 2, 2];
    shape.extend(&rest);
    w.reshape(shape)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// The BPE `tokenizer.json` described by `tokenizer.ggml.*` (model `gpt2`): byte-level
/// pre-tokenizer and decoder, vocabulary and merges as stored, control tokens (type 3) special,
/// BOS prepended if `add_bos_token`.
pub fn tokenizer_from_gguf(path: &Path, content: &Content) -> Result<Tokenizer, GgufImportError> {
    let m = Meta {
        path: path.display().to_string(),
        content,
    };
    let terr = |message: String| GgufImportError::Tokenizer {
        path: m.path.clone(),
        message,
    };
    let model = m.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(m.err(
            "tokenizer.ggml.model",
            format!("{model:?} unsupported (only \"gpt2\" byte-level BPE)"),
        ));
    }
    let tokens = m.strings("tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = m
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|s| {
            s.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| terr(format!("merge {s:?} has no space")))
        })
        .collect::<Result<_, _>>()?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| terr(e.to_string()))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let types = m.ints("tokenizer.ggml.token_type").unwrap_or_default();
    let specials: Vec<AddedToken> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == 3)
        .map(|(i, _)| AddedToken::from(tokens[i].clone(), true))
        .collect();
    tok.add_special_tokens(specials)
        .map_err(|e| terr(e.to_string()))?;
    if m.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false) {
        let bos_id = m.usize("tokenizer.ggml.bos_token_id")?;
        let bos = tokens
            .get(bos_id)
            .ok_or_else(|| terr(format!("bos id {bos_id} outside vocabulary")))?;
        let post = TemplateProcessing::builder()
            .try_single(format!("{bos} $A"))
            .and_then(|b| b.try_pair(format!("{bos} $A {bos} $B:1")))
            .map_err(|e| terr(e.to_string()))?
            .special_tokens(vec![(bos.clone(), bos_id as u32)])
            .build()
            .map_err(|e| terr(e.to_string()))?;
        tok.with_post_processor(Some(post));
    }
    Ok(tok)
}

/// Imports a LLaMA GGUF file into `out_dir` (HF layout, f32 weights); all or nothing.
pub fn import_gguf_llama(gguf: &Path, out_dir: &Path) -> Result<GgufImport, GgufImportError> {
    let p = gguf.display().to_string();
    let (content, mut file) = read_gguf(gguf)?;
    let cfg = llama_config_from_gguf(gguf, &content)?;
    let tokenizer = tokenizer_from_gguf(gguf, &content)?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = HashMap::new();
    let mut params = 0usize;
    for name in names {
        let terr = |message: String| GgufImportError::Tensor {
            path: p.clone(),
            name: name.clone(),
            message,
        };
        // rope_freqs and similar precomputed tables are not parameters of the HF model.
        let Some(hf) = hf_name(name) else {
            if name == "rope_freqs.weight" {
                continue;
            }
            return Err(terr("no HF LLaMA counterpart".into()));
        };
        let q = content
            .tensor(&mut file, name, &Device::Cpu)
            .map_err(|e| terr(e.to_string()))?;
        let mut w = q
            .dequantize(&Device::Cpu)
            .map_err(|e| terr(e.to_string()))?;
        if hf.contains("q_proj") {
            w = unpermute_rope_rows(&w, cfg.num_attention_heads)
                .map_err(|e| terr(e.to_string()))?;
        } else if hf.contains("k_proj") {
            w = unpermute_rope_rows(&w, cfg.kv_heads()).map_err(|e| terr(e.to_string()))?;
        }
        params += w.elem_count();
        tensors.insert(hf, w);
    }
    let config = serde_json::to_value(&cfg).map_err(|e| GgufImportError::Metadata {
        path: p.clone(),
        key: "config".into(),
        message: e.to_string(),
    })?;
    let tok_json = tokenizer
        .to_string(true)
        .map_err(|e| GgufImportError::Tokenizer {
            path: p.clone(),
            message: e.to_string(),
        })?;
    write_model_dir(out_dir, &config, &tensors, &tok_json)?;
    Ok(GgufImport {
        config: cfg,
        tensor_count: tensors.len(),
        parameter_count: params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_gguf_names() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight").unwrap(),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").unwrap(),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert!(hf_name("blk.x.attn_q.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(h, 2, d/2, in).swapaxes(1, 2).reshape(out, in).
        let (h, d, inp) = (2usize, 4usize, 3usize);
        let w = Tensor::arange(0f32, (h * d * inp) as f32, &Device::Cpu)
            .unwrap()
            .reshape((h * d, inp))
            .unwrap();
        let permuted = w
            .reshape((h, 2, d / 2, inp))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((h * d, inp))
            .unwrap();
        let back = unpermute_rope_rows(&permuted, h).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }
}
