//! BERT encoder with a sequence-classification head (mBERT architecture, HF
//! `BertForSequenceClassification`): word/position/type embeddings, post-LN blocks, exact erf
//! GELU, tanh pooler and a linear classifier; the pooler-less encoder alone ([`BertEncoder`],
//! HF `BertModel` hidden states) with e5's mean pooling for sentence embeddings. Parameter
//! names follow the HF checkpoint; every linear is an [`AdaptedLinear`] so LoRA-family adapters
//! in the store are picked up.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Result as CResult, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::nn::{attention, gelu_erf, layer_norm, residual_layer_norm, DropMask, Dropout};
use crate::params::{ParamError, ParamStore};
use crate::peft::layer::ForwardCtx;
use crate::peft::{AdaptedLinear, AdapterSpec, LinearShape};
use crate::rng::derive_seed;

/// Errors loading or saving a BERT model; each names the file or field concerned.
#[derive(Debug, thiserror::Error)]
pub enum BertError {
    #[error("reading {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("parsing BERT config {path}: {source}")]
    Config {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
    #[error("unsupported BERT config: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, BertError>;

fn default_act() -> String {
    "gelu".into()
}
fn default_pos() -> String {
    "absolute".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_init() -> f64 {
    0.02
}

/// Serde mirror of HF `BertConfig` (config.json); unknown fields are kept for round trips.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub hidden_dropout_prob: f32,
    #[serde(default)]
    pub attention_probs_dropout_prob: f32,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "default_pos")]
    pub position_embedding_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl BertConfig {
    /// A small config for tests and CI fixtures.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 64,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
            classifier_dropout: None,
            id2label: None,
            extra: [("model_type".to_string(), serde_json::Value::from("bert"))]
                .into_iter()
                .collect(),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| BertError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|source| BertError::Config {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.hidden_act != "gelu" {
            return Err(BertError::Unsupported(format!(
                "hidden_act `{}` (only the exact erf \"gelu\")",
                self.hidden_act
            )));
        }
        if self.position_embedding_type != "absolute" {
            return Err(BertError::Unsupported(format!(
                "position_embedding_type `{}`",
                self.position_embedding_type
            )));
        }
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(BertError::Unsupported(format!(
                "hidden_size {} not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Ok(())
    }

    /// Number of labels from `id2label` (HF default 2 when absent).
    pub fn num_labels(&self) -> usize {
        self.id2label.as_ref().map_or(2, BTreeMap::len)
    }

    /// Every linear of `BertForSequenceClassification` in module (forward) order: per layer
    /// query, key, value, attention.output.dense, intermediate.dense, output.dense; then
    /// pooler, classifier. This order defines λ layout and top-k tie-breaking.
    pub fn linear_modules(&self, num_labels: usize) -> Vec<LinearShape> {
        let h = self.hidden_size;
        let i = self.intermediate_size;
        let mut out = Vec::with_capacity(self.num_hidden_layers * 6 + 2);
        let mut push = |name: String, in_dim, out_dim| {
            out.push(LinearShape {
                name,
                in_dim,
                out_dim,
            })
        };
        for l in 0..self.num_hidden_layers {
            let p = format!("bert.encoder.layer.{l}");
            push(format!("{p}.attention.self.query"), h, h);
            push(format!("{p}.attention.self.key"), h, h);
            push(format!("{p}.attention.self.value"), h, h);
            push(format!("{p}.attention.output.dense"), h, h);
            push(format!("{p}.intermediate.dense"), h, i);
            push(format!("{p}.output.dense"), i, h);
        }
        push("bert.pooler.dense".into(), h, h);
        push("classifier".into(), h, num_labels);
        out
    }

    /// Names and shapes of every BERT parameter except the linears (embeddings, layer norms).
    fn non_linear_params(&self) -> Vec<(String, Vec<usize>, Init)> {
        let h = self.hidden_size;
        let mut v = vec![
            (
                "bert.embeddings.word_embeddings.weight".into(),
                vec![self.vocab_size, h],
                Init::Embedding {
                    padding_idx: Some(self.pad_token_id),
                },
            ),
            (
                "bert.embeddings.position_embeddings.weight".into(),
                vec![self.max_position_embeddings, h],
                Init::Embedding { padding_idx: None },
            ),
            (
                "bert.embeddings.token_type_embeddings.weight".into(),
                vec![self.type_vocab_size, h],
                Init::Embedding { padding_idx: None },
            ),
            (
                "bert.embeddings.LayerNorm.weight".into(),
                vec![h],
                Init::Ones,
            ),
            (
                "bert.embeddings.LayerNorm.bias".into(),
                vec![h],
                Init::Zeros,
            ),
        ];
        for l in 0..self.num_hidden_layers {
            for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
                v.push((
                    format!("bert.encoder.layer.{l}.{ln}.weight"),
                    vec![h],
                    Init::Ones,
                ));
                v.push((
                    format!("bert.encoder.layer.{l}.{ln}.bias"),
                    vec![h],
                    Init::Zeros,
                ));
            }
        }
        v
    }
}

enum Init {
    Embedding { padding_idx: Option<usize> },
    Ones,
    Zeros,
}

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
    let w = crate::peft::lora::normal_tensor(
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
                let t = crate::peft::lora::normal_tensor(
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

/// One tokenised batch: ids/type ids (u32) and attention mask (1 = token, 0 = pad), all (B, S).
#[derive(Debug, Clone)]
pub struct BertInput {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub token_type_ids: Tensor,
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(store: &ParamStore, prefix: &str, h: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: store.get_shaped(&format!("{prefix}.weight"), &[h])?,
            bias: store.get_shaped(&format!("{prefix}.bias"), &[h])?,
            eps,
        })
    }

    fn forward(&self, xs: &Tensor) -> CResult<Tensor> {
        layer_norm(xs, &self.weight, &self.bias, self.eps)
    }

    /// `LayerNorm(dropout(a) + residual)`.
    fn forward_residual(
        &self,
        a: &Tensor,
        residual: &Tensor,
        drop: Option<DropMask>,
    ) -> CResult<Tensor> {
        residual_layer_norm(a, residual, &self.weight, &self.bias, self.eps, drop)
    }
}

struct BertLayer {
    query: AdaptedLinear,
    key: AdaptedLinear,
    value: AdaptedLinear,
    attn_out: AdaptedLinear,
    attn_ln: LayerNorm,
    intermediate: AdaptedLinear,
    output: AdaptedLinear,
    out_ln: LayerNorm,
}

/// HF `BertModel` without its pooler: embeddings and the post-LN blocks, returning the last
/// hidden states (what sentence-embedding models such as e5 mean-pool).
pub struct BertEncoder {
    cfg: BertConfig,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_ln: LayerNorm,
    layers: Vec<BertLayer>,
    hidden_dropout: Dropout,
    attn_dropout: Dropout,
}

impl BertEncoder {
    /// Builds the encoder from parameters named `{prefix}embeddings.*` / `{prefix}encoder.*`
    /// (`prefix` = "bert." inside a classifier checkpoint, "" for a bare `BertModel`).
    pub fn load(
        store: &ParamStore,
        cfg: &BertConfig,
        spec: &AdapterSpec,
        prefix: &str,
    ) -> Result<Self> {
        cfg.validate()?;
        let h = cfg.hidden_size;
        // Module names of the linears, with this checkpoint's prefix (adapters key on them).
        let mods: Vec<LinearShape> = cfg
            .linear_modules(1)
            .into_iter()
            .take(6 * cfg.num_hidden_layers)
            .map(|m| LinearShape {
                name: format!(
                    "{prefix}{}",
                    m.name.strip_prefix("bert.").unwrap_or(&m.name)
                ),
                ..m
            })
            .collect();
        let lin = |i: usize| AdaptedLinear::load(store, &mods[i], true, spec);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("{prefix}encoder.layer.{l}");
            layers.push(BertLayer {
                query: lin(6 * l)?,
                key: lin(6 * l + 1)?,
                value: lin(6 * l + 2)?,
                attn_out: lin(6 * l + 3)?,
                attn_ln: LayerNorm::load(
                    store,
                    &format!("{p}.attention.output.LayerNorm"),
                    h,
                    cfg.layer_norm_eps,
                )?,
                intermediate: lin(6 * l + 4)?,
                output: lin(6 * l + 5)?,
                out_ln: LayerNorm::load(
                    store,
                    &format!("{p}.output.LayerNorm"),
                    h,
                    cfg.layer_norm_eps,
                )?,
            });
        }
        let emb = |n: &str, rows: usize| {
            store.get_shaped(&format!("{prefix}embeddings.{n}.weight"), &[rows, h])
        };
        Ok(Self {
            cfg: cfg.clone(),
            word: emb("word_embeddings", cfg.vocab_size)?,
            position: emb("position_embeddings", cfg.max_position_embeddings)?,
            token_type: emb("token_type_embeddings", cfg.type_vocab_size)?,
            emb_ln: LayerNorm::load(
                store,
                &format!("{prefix}embeddings.LayerNorm"),
                h,
                cfg.layer_norm_eps,
            )?,
            layers,
            hidden_dropout: Dropout::new(cfg.hidden_dropout_prob),
            attn_dropout: Dropout::new(cfg.attention_probs_dropout_prob),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// The encoder's linears in module order.
    fn linears(&self) -> impl Iterator<Item = &AdaptedLinear> {
        self.layers.iter().flat_map(|l| {
            [
                &l.query,
                &l.key,
                &l.value,
                &l.attn_out,
                &l.intermediate,
                &l.output,
            ]
        })
    }

    fn linears_mut(&mut self) -> impl Iterator<Item = &mut AdaptedLinear> {
        self.layers.iter_mut().flat_map(|l| {
            [
                &mut l.query,
                &mut l.key,
                &mut l.value,
                &mut l.attn_out,
                &mut l.intermediate,
                &mut l.output,
            ]
        })
    }

    /// Last hidden states (B, S, H). Train mode when `ctx.dropout` is set.
    pub fn forward(&self, input: &BertInput, ctx: &ForwardCtx<'_>) -> CResult<Tensor> {
        let (b, s) = input.input_ids.dims2()?;
        let h = self.cfg.hidden_size;
        let nh = self.cfg.num_attention_heads;
        let drop = ctx.dropout;

        // Embeddings: word + absolute position + token type, then LayerNorm and dropout.
        let ids = input.input_ids.flatten_all()?;
        let word = self.word.embedding(&ids)?.reshape((b, s, h))?;
        let pos = self.position.narrow(0, 0, s)?.unsqueeze(0)?;
        let tt = self
            .token_type
            .embedding(&input.token_type_ids.flatten_all()?)?
            .reshape((b, s, h))?;
        let emb = word.broadcast_add(&pos)?.add(&tt)?;
        let mut hs = self
            .hidden_dropout
            .forward(&self.emb_ln.forward(&emb)?, drop)?;

        // HF extended mask: (1 − mask) · finfo(dtype).min, added to the scores.
        let dtype = hs.dtype();
        let min = match dtype {
            DType::F64 => f64::MIN,
            DType::BF16 => f64::from(half::bf16::MIN),
            DType::F16 => f64::from(half::f16::MIN),
            _ => f64::from(f32::MIN),
        };
        let ext = input
            .attention_mask
            .to_dtype(dtype)?
            .affine(-1.0, 1.0)?
            .affine(min, 0.0)?;

        for layer in &self.layers {
            let q = layer.query.forward(&hs, ctx)?;
            let k = layer.key.forward(&hs, ctx)?;
            let v = layer.value.forward(&hs, ctx)?;
            let ctx_t = attention(&q, &k, &v, &ext, nh, self.attn_dropout.mask(drop))?;
            let a = layer.attn_out.forward(&ctx_t, ctx)?;
            let attn = layer
                .attn_ln
                .forward_residual(&a, &hs, self.hidden_dropout.mask(drop))?;
            let inter = gelu_erf(&layer.intermediate.forward(&attn, ctx)?)?;
            let o = layer.output.forward(&inter, ctx)?;
            hs = layer
                .out_ln
                .forward_residual(&o, &attn, self.hidden_dropout.mask(drop))?;
        }
        Ok(hs)
    }
}

/// Mean pooling over the tokens the attention mask keeps, then L2 normalisation: the sentence
/// embedding of e5-style models. `hidden` (B, S, H), `mask` (B, S) of 0/1; returns (B, H) f32.
pub fn mean_pool_normalized(hidden: &Tensor, mask: &Tensor) -> CResult<Tensor> {
    let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = hidden.to_dtype(DType::F32)?.broadcast_mul(&m)?.sum(1)?;
    let pooled = summed.broadcast_div(&m.sum(1)?)?;
    let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?;
    pooled.broadcast_div(&norm)
}

/// HF `BertForSequenceClassification` over a [`ParamStore`].
pub struct BertForSequenceClassification {
    encoder: BertEncoder,
    num_labels: usize,
    pooler: AdaptedLinear,
    classifier: AdaptedLinear,
    classifier_dropout: Dropout,
}

impl BertForSequenceClassification {
    /// Builds the model from the store (the classifier must exist; see [`ensure_classifier`]).
    pub fn load(store: &ParamStore, cfg: &BertConfig, spec: &AdapterSpec) -> Result<Self> {
        let encoder = BertEncoder::load(store, cfg, spec, "bert.")?;
        let cls = store.get("classifier.weight")?;
        let num_labels = cls.dim(0)?;
        let mods = cfg.linear_modules(num_labels);
        let n = mods.len();
        Ok(Self {
            encoder,
            num_labels,
            pooler: AdaptedLinear::load(store, &mods[n - 2], true, spec)?,
            classifier: AdaptedLinear::load(store, &mods[n - 1], true, spec)?,
            classifier_dropout: Dropout::new(
                cfg.classifier_dropout.unwrap_or(cfg.hidden_dropout_prob),
            ),
        })
    }

    pub fn config(&self) -> &BertConfig {
        self.encoder.config()
    }

    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// Every adapted linear in module order (see [`BertConfig::linear_modules`]).
    pub fn linears(&self) -> Vec<&AdaptedLinear> {
        let mut v: Vec<&AdaptedLinear> = self.encoder.linears().collect();
        v.push(&self.pooler);
        v.push(&self.classifier);
        v
    }

    /// Mutable access for merge/unmerge of all adapters.
    pub fn linears_mut(&mut self) -> Vec<&mut AdaptedLinear> {
        let mut v: Vec<&mut AdaptedLinear> = self.encoder.linears_mut().collect();
        v.push(&mut self.pooler);
        v.push(&mut self.classifier);
        v
    }

    /// Merges every adapter into its base weight (evaluation after personalization, §4).
    pub fn merge_adapters(&mut self) -> CResult<()> {
        self.linears_mut()
            .into_iter()
            .try_for_each(AdaptedLinear::merge)
    }

    pub fn unmerge_adapters(&mut self) -> CResult<()> {
        self.linears_mut()
            .into_iter()
            .try_for_each(AdaptedLinear::unmerge)
    }

    /// Logits (B, num_labels). Train mode when `ctx.dropout` is set.
    pub fn forward(&self, input: &BertInput, ctx: &ForwardCtx<'_>) -> CResult<Tensor> {
        let hs = self.encoder.forward(input, ctx)?;
        let first = hs.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pooler.forward(&first, ctx)?.tanh()?;
        let pooled = self.classifier_dropout.forward(&pooled, ctx.dropout)?;
        self.classifier.forward(&pooled, ctx)
    }
}

/// Mean cross-entropy of logits (B, C) against u32 labels (B), as `torch.nn.CrossEntropyLoss`;
/// computed in f32 whatever the model's dtype (as under PyTorch's bf16 autocast).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> CResult<Tensor> {
    candle_nn::loss::cross_entropy(&logits.to_dtype(DType::F32)?, labels)
}

/// Arg-max predictions of logits (B, C).
pub fn predictions(logits: &Tensor) -> CResult<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_vec1::<u32>()
}

#[cfg(test)]
mod tests {
    use super::*;

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
