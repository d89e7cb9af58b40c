//! BERT weights: HF's initialisation from our seeded RNG (a random model, a fresh classifier
//! head) and the HF directory layout (`config.json` + `model.safetensors`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::config::{BertConfig, Init};
use super::{BertError, Result};
use crate::params::ParamStore;
use crate::peft::LinearShape;
use crate::rng::derive_seed;

/// HF `_init_weights` for a linear: weight ~ Normal(0, initializer_range), bias = 0, drawn from
/// our RNG with a seed derived from (seed, parameter name).
fn hf_linear_init(
    store: &mut ParamStore,
    m: &LinearShape,
    std: f64,
    seed: u64,
    dtype: DType,
) -> Result<()> {
    let wname = format!("{}.weight", m.name);
    let w = crate::nn::normal_tensor(
        derive_seed(seed, &[wname.as_str().into()]),
        (m.out_dim, m.in_dim),
        std,
        store.device(),
        dtype,
    )
    .map_err(|e| BertError::Unsupported(e.to_string()))?;
    store.insert(&wname, w, false)?;
    let b = Tensor::zeros(m.out_dim, dtype, store.device())?;
    store.insert(&format!("{}.bias", m.name), b, false)?;
    Ok(())
}

/// Adds a freshly initialised classifier head (`classifier.weight` ~ N(0, initializer_range),
/// bias 0, HF's init distribution from our RNG) if the store lacks one or its label count
/// differs. Returns true when a new head was created.
pub fn ensure_classifier(
    store: &mut ParamStore,
    cfg: &BertConfig,
    num_labels: usize,
    seed: u64,
    dtype: DType,
) -> Result<bool> {
    let ok = store
        .param("classifier.weight")
        .is_some_and(|p| p.tensor().dims() == [num_labels, cfg.hidden_size]);
    if ok {
        return Ok(false);
    }
    let m = LinearShape {
        name: "classifier".into(),
        in_dim: cfg.hidden_size,
        out_dim: num_labels,
    };
    hf_linear_init(store, &m, cfg.initializer_range, seed, dtype)?;
    Ok(true)
}

/// Adds a freshly initialised pooler (`bert.pooler.dense`, HF's `_init_weights`: N(0,
/// initializer_range), bias 0) if the store lacks one, as `from_pretrained` does for a
/// checkpoint saved without it (sentence-embedding models such as multilingual-e5 drop the
/// pooler). Returns true when one was created.
pub fn ensure_pooler(
    store: &mut ParamStore,
    cfg: &BertConfig,
    seed: u64,
    dtype: DType,
) -> Result<bool> {
    if store.contains("bert.pooler.dense.weight") {
        return Ok(false);
    }
    let m = LinearShape {
        name: "bert.pooler.dense".into(),
        in_dim: cfg.hidden_size,
        out_dim: cfg.hidden_size,
    };
    hf_linear_init(store, &m, cfg.initializer_range, seed, dtype)?;
    Ok(true)
}

/// A randomly initialised `BertForSequenceClassification` (HF init distributions, our seeded
/// RNG), all parameters frozen; re-partition with [`ParamStore::set_trainable`].
pub fn random_init(
    cfg: &BertConfig,
    num_labels: usize,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<ParamStore> {
    cfg.validate()?;
    let mut store = ParamStore::new(device);
    for (name, shape, init) in cfg.non_linear_params() {
        let t = match init {
            Init::Embedding { padding_idx } => {
                let t = crate::nn::normal_tensor(
                    derive_seed(seed, &[name.as_str().into()]),
                    (shape[0], shape[1]),
                    cfg.initializer_range,
                    device,
                    dtype,
                )
                .map_err(|e| BertError::Unsupported(e.to_string()))?;
                match padding_idx {
                    Some(p) if p < shape[0] => {
                        // HF zeroes the padding row of the word embeddings.
                        let rows = t.dim(0)?;
                        let mask: Vec<f32> =
                            (0..rows).map(|r| if r == p { 0.0 } else { 1.0 }).collect();
                        let mask = Tensor::from_vec(mask, (rows, 1), device)?.to_dtype(dtype)?;
                        t.broadcast_mul(&mask)?
                    }
                    _ => t,
                }
            }
            Init::Ones => Tensor::ones(shape, dtype, device)?,
            Init::Zeros => Tensor::zeros(shape, dtype, device)?,
        };
        store.insert(&name, t, false)?;
    }
    for m in cfg.linear_modules(num_labels) {
        hf_linear_init(&mut store, &m, cfg.initializer_range, seed, dtype)?;
    }
    Ok(store)
}

/// Saves a model in HF layout: `config.json` + `model.safetensors` (base parameters only;
/// adapter tensors are excluded).
pub fn save_pretrained(store: &ParamStore, cfg: &BertConfig, dir: &Path) -> Result<()> {
    let io = |source| BertError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    // HF tools (and `predict`) dispatch on `model_type`; configs we create have none yet.
    let mut cfg = cfg.clone();
    cfg.extra
        .entry("model_type")
        .or_insert_with(|| serde_json::Value::String("bert".into()));
    let json = serde_json::to_string_pretty(&cfg).map_err(|source| BertError::Config {
        path: dir.join("config.json"),
        source,
    })?;
    std::fs::write(dir.join("config.json"), json).map_err(io)?;
    store.save_safetensors(&dir.join("model.safetensors"), |n| {
        !crate::peft::is_adapter_param(n)
    })?;
    Ok(())
}

/// Loads `config.json` and `model.safetensors` from an HF model directory (a `pytorch_model.bin`
/// is converted beforehand by [`crate::import::pytorch`]). Names matching `trainable` become `Var`s.
pub fn load_pretrained(
    dir: &Path,
    device: &Device,
    dtype: DType,
    trainable: impl Fn(&str) -> bool,
) -> Result<(BertConfig, ParamStore)> {
    let cfg = BertConfig::from_file(&dir.join("config.json"))?;
    let st = dir.join("model.safetensors");
    if !st.exists() {
        return Err(BertError::Io {
            path: st,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "model.safetensors not found{}",
                    crate::model::hf_layout::pytorch_hint(dir)
                ),
            ),
        });
    }
    let store = ParamStore::load_safetensors(&st, device, dtype, trainable)?;
    Ok((cfg, store))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bert::{BertForSequenceClassification, BertInput};
    use crate::peft::layer::ForwardCtx;
    use crate::peft::AdapterSpec;

    #[test]
    fn tiny_random_model_round_trips_through_hf_layout() {
        let cfg = BertConfig::tiny(50);
        let store = random_init(&cfg, 3, 7, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(cfg.linear_modules(3).len(), 2 * 6 + 2);
        let pad = store
            .get("bert.embeddings.word_embeddings.weight")
            .unwrap()
            .get(0)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(pad, 0.0);
        let dir = tempfile::tempdir().unwrap();
        save_pretrained(&store, &cfg, dir.path()).unwrap();
        let (cfg2, store2) =
            load_pretrained(dir.path(), &Device::Cpu, DType::F32, |_| false).unwrap();
        assert_eq!(cfg, cfg2);
        assert_eq!(store.len(), store2.len());
        let model =
            BertForSequenceClassification::load(&store2, &cfg2, &AdapterSpec::NONE).unwrap();
        let input = BertInput {
            input_ids: Tensor::new(&[[2u32, 5, 9, 0], [3, 4, 0, 0]], &Device::Cpu).unwrap(),
            attention_mask: Tensor::new(&[[1u32, 1, 1, 0], [1, 1, 0, 0]], &Device::Cpu).unwrap(),
            token_type_ids: Tensor::zeros((2, 4), DType::U32, &Device::Cpu).unwrap(),
        };
        let logits = model.forward(&input, &ForwardCtx::eval()).unwrap();
        assert_eq!(logits.dims(), &[2, 3]);
        // Same seed, same weights: deterministic init.
        let again = random_init(&cfg, 3, 7, &Device::Cpu, DType::F32).unwrap();
        let w1: Vec<f32> = store
            .get("classifier.weight")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let w2: Vec<f32> = again
            .get("classifier.weight")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(w1, w2);
    }
}
