//! Loading a LLaMA from an HF model directory, and creating small random-initialised LLaMAs
//! (seeded, HF `_init_weights` scheme) saved in HF layout for CI and smoke runs.

use super::hf_layout::{load_tensors, read_config, write_model_dir, HfLayoutError};
use super::llama::LlamaForCausalLM;
use super::llama_config::LlamaConfig;
use crate::params::ParamStore;
use crate::peft::AdapterSpec;
use crate::rng::{derive_seed, rng_from, SeedPart};
use candle_core::{DType, Device, Tensor};
use rand_distr::{Distribution, Normal};
use std::collections::HashMap;
use std::path::Path;

/// Errors loading or creating a LLaMA directory.
#[derive(Debug, thiserror::Error)]
pub enum LlamaIoError {
    #[error(transparent)]
    Layout(#[from] HfLayoutError),
    #[error("{dir}: {message}")]
    Model { dir: String, message: String },
}

/// Reads `config.json` + safetensors weights from `dir` as `dtype` on `device` into a store;
/// names matching `trainable` become `Var`s.
pub fn load_llama_store(
    dir: &Path,
    dtype: DType,
    device: &Device,
    trainable: impl Fn(&str) -> bool,
) -> Result<(LlamaConfig, ParamStore), LlamaIoError> {
    let cfg: LlamaConfig = read_config(dir)?;
    let err = |message: String| LlamaIoError::Model {
        dir: dir.display().to_string(),
        message,
    };
    cfg.validate().map_err(|e| err(e.to_string()))?;
    let tensors = load_tensors(dir, dtype, device)?;
    let store = ParamStore::from_tensors(tensors, device, dtype, trainable)
        .map_err(|e| err(e.to_string()))?;
    Ok((cfg, store))
}

/// Loads the model in `dir` for inference (every weight frozen, adapters ignored).
pub fn load_llama(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<LlamaForCausalLM, LlamaIoError> {
    let (cfg, store) = load_llama_store(dir, dtype, device, |_| false)?;
    LlamaForCausalLM::load(&store, &cfg, &AdapterSpec::NONE).map_err(|e| LlamaIoError::Model {
        dir: dir.display().to_string(),
        message: e.to_string(),
    })
}

/// Names and shapes of every parameter of a LLaMA with this config, in HF naming.
pub fn llama_parameter_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (hs, is, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (qd, kvd) = (
        cfg.num_attention_heads * cfg.head_dim(),
        cfg.kv_heads() * cfg.head_dim(),
    );
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, hs])];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut linear = |name: &str, o: usize, inp: usize, bias: bool| {
            out.push((format!("{p}.{name}.weight"), vec![o, inp]));
            if bias {
                out.push((format!("{p}.{name}.bias"), vec![o]));
            }
        };
        linear("self_attn.q_proj", qd, hs, cfg.attention_bias);
        linear("self_attn.k_proj", kvd, hs, cfg.attention_bias);
        linear("self_attn.v_proj", kvd, hs, cfg.attention_bias);
        linear("self_attn.o_proj", hs, qd, cfg.attention_bias);
        linear("mlp.gate_proj", is, hs, cfg.mlp_bias);
        linear("mlp.up_proj", is, hs, cfg.mlp_bias);
        linear("mlp.down_proj", hs, is, cfg.mlp_bias);
        out.push((format!("{p}.input_layernorm.weight"), vec![hs]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![hs]));
    }
    out.push(("model.norm.weight".to_string(), vec![hs]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, hs]));
    }
    out
}

/// Random f32 weights as HF `LlamaPreTrainedModel._init_weights`: linear and embedding weights
/// ~ N(0, initializer_range), biases 0, RMSNorm weights 1. Each tensor draws from its own seed
/// derived from `(seed, "llama_init", name)`, so values do not depend on iteration order.
pub fn random_llama_weights(
    cfg: &LlamaConfig,
    seed: u64,
) -> Result<HashMap<String, Tensor>, LlamaIoError> {
    let normal =
        Normal::new(0.0f32, cfg.initializer_range as f32).map_err(|e| LlamaIoError::Model {
            dir: "<random init>".into(),
            message: format!("initializer_range {}: {e}", cfg.initializer_range),
        })?;
    let mut out = HashMap::new();
    for (name, shape) in llama_parameter_shapes(cfg) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            let mut rng = rng_from(derive_seed(
                seed,
                &[SeedPart::Name("llama_init"), SeedPart::Name(&name)],
            ));
            (0..n).map(|_| normal.sample(&mut rng)).collect()
        };
        let t = Tensor::from_vec(data, shape, &Device::Cpu).map_err(|e| LlamaIoError::Model {
            dir: "<random init>".into(),
            message: e.to_string(),
        })?;
        out.insert(name, t);
    }
    Ok(out)
}

/// Creates a random-initialised LLaMA (see [`random_llama_weights`]) and saves it in HF layout
/// with `tokenizer_json` into `dir` (replacing it). Same config + seed → identical files.
pub fn create_random_llama(
    dir: &Path,
    cfg: &LlamaConfig,
    seed: u64,
    tokenizer_json: &str,
) -> Result<(), LlamaIoError> {
    cfg.validate().map_err(|e| LlamaIoError::Model {
        dir: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let tensors = random_llama_weights(cfg, seed)?;
    let config = serde_json::to_value(cfg).map_err(|e| LlamaIoError::Model {
        dir: dir.display().to_string(),
        message: e.to_string(),
    })?;
    write_model_dir(dir, &config, &tensors, tokenizer_json)?;
    Ok(())
}

/// Grows the vocabulary to `new_vocab` rows (e.g. after adding the `<pad>` token of the
/// Llama-3 recipe, PAPER_NOTES §1): new rows of `model.embed_tokens.weight` and, if untied,
/// `lm_head.weight` are the mean of the existing rows — the mean HF's
/// `resize_token_embeddings(mean_resizing=True)` centres its (1e-9-variance) draw on, taken
/// exactly so the result is deterministic. `cfg.vocab_size` is updated.
pub fn resize_vocab(
    tensors: &mut HashMap<String, Tensor>,
    cfg: &mut LlamaConfig,
    new_vocab: usize,
) -> Result<(), LlamaIoError> {
    let err = |message: String| LlamaIoError::Model {
        dir: "<resize vocabulary>".into(),
        message,
    };
    if new_vocab < cfg.vocab_size {
        return Err(err(format!(
            "cannot shrink the vocabulary from {} to {new_vocab}",
            cfg.vocab_size
        )));
    }
    let extra = new_vocab - cfg.vocab_size;
    if extra == 0 {
        return Ok(());
    }
    let mut names = vec!["model.embed_tokens.weight"];
    if !cfg.tie_word_embeddings {
        names.push("lm_head.weight");
    }
    for name in names {
        let w = tensors
            .get(name)
            .ok_or_else(|| err(format!("missing tensor {name}")))?;
        let grown = (|| {
            let mean = w.mean_keepdim(0)?;
            let rows = mean.broadcast_as((extra, w.dim(1)?))?.contiguous()?;
            Tensor::cat(&[w, &rows], 0)
        })()
        .map_err(|e| err(format!("{name}: {e}")))?;
        tensors.insert(name.to_string(), grown);
    }
    cfg.vocab_size = new_vocab;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{generate_greedy, GreedyConfig};
    use crate::tokenize::{train_byte_level_bpe, BpeSpecials, PaddingSide, TextTokenizer};

    fn tiny_config(vocab: usize) -> LlamaConfig {
        let mut cfg = LlamaConfig::new(vocab, 32, 64, 2, 4, 2);
        cfg.bos_token_id = Some(crate::model::llama_config::TokenIds::One(0));
        cfg.eos_token_id = Some(crate::model::llama_config::TokenIds::One(1));
        cfg.pad_token_id = Some(2);
        cfg
    }

    #[test]
    fn random_llama_is_deterministic_and_runs() {
        let texts = ["hello world", "bonjour le monde", "hola mundo, ¿qué tal?"];
        let tok = train_byte_level_bpe(&texts, 300, &BpeSpecials::default()).unwrap();
        let json = tok.to_string(false).unwrap();
        let cfg = tiny_config(tok.get_vocab_size(true));
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        create_random_llama(&a, &cfg, 7, &json).unwrap();
        create_random_llama(&b, &cfg, 7, &json).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            assert_eq!(
                std::fs::read(a.join(f)).unwrap(),
                std::fs::read(b.join(f)).unwrap(),
                "{f} differs"
            );
        }
        let c = tmp.path().join("c");
        create_random_llama(&c, &cfg, 8, &json).unwrap();
        assert_ne!(
            std::fs::read(a.join("model.safetensors")).unwrap(),
            std::fs::read(c.join("model.safetensors")).unwrap()
        );

        let model = load_llama(&a, DType::F32, &Device::Cpu).unwrap();
        let tok = TextTokenizer::from_file(&a.join("tokenizer.json"), "<pad>").unwrap();
        let batch = tok
            .encode_batch(&["hello", "hola mundo"], PaddingSide::Left)
            .unwrap();
        let (ids, mask, _) = batch.to_tensors(&Device::Cpu).unwrap();
        let cfg = GreedyConfig {
            max_new_tokens: 4,
            stop_token_ids: vec![1],
            pad_token_id: tok.pad_id(),
        };
        let out = generate_greedy(&model, &ids, &mask, &cfg).unwrap();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|r| !r.is_empty() && r.len() <= 4));
    }

    #[test]
    fn resize_vocab_appends_mean_rows() {
        let mut cfg = tiny_config(6);
        let mut t = random_llama_weights(&cfg, 3).unwrap();
        let old = t["lm_head.weight"].clone();
        resize_vocab(&mut t, &mut cfg, 8).unwrap();
        assert_eq!(cfg.vocab_size, 8);
        let w = &t["lm_head.weight"];
        assert_eq!(w.dims(), &[8, 32]);
        let mean: Vec<f32> = old
            .mean_keepdim(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(w.get(7).unwrap().to_vec1::<f32>().unwrap(), mean);
        assert_eq!(t["model.embed_tokens.weight"].dims(), &[8, 32]);
        let store = ParamStore::from_tensors(t, &Device::Cpu, DType::F32, |_| false).unwrap();
        LlamaForCausalLM::load(&store, &cfg, &AdapterSpec::NONE).unwrap();
        assert!(resize_vocab(&mut HashMap::new(), &mut cfg, 4).is_err());
    }

    #[test]
    fn missing_weights_are_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("config.json"),
            serde_json::to_string(&tiny_config(10)).unwrap(),
        )
        .unwrap();
        let e = load_llama(tmp.path(), DType::F32, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("model.safetensors"), "{e}");
    }
}
