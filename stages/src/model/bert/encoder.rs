//! HF `BertModel` without its pooler: embeddings, post-LN blocks with exact erf GELU, every
//! linear an [`AdaptedLinear`] found by its HF module name.

use candle_core::{DType, Result as CResult, Tensor};

use super::config::BertConfig;
use super::Result;
use crate::nn::{attention, gelu_erf, layer_norm, residual_layer_norm, DropMask, Dropout};
use crate::params::ParamStore;
use crate::peft::layer::ForwardCtx;
use crate::peft::{AdaptedLinear, AdapterSpec, LinearShape};

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
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("{prefix}encoder.layer.{l}");
            // Each linear by its HF module name under the layer (adapters key on the name).
            let lin = |name: &str, in_dim: usize, out_dim: usize| {
                let shape = LinearShape {
                    name: format!("{p}.{name}"),
                    in_dim,
                    out_dim,
                };
                AdaptedLinear::load(store, &shape, true, spec)
            };
            let ln =
                |name: &str| LayerNorm::load(store, &format!("{p}.{name}"), h, cfg.layer_norm_eps);
            layers.push(BertLayer {
                query: lin("attention.self.query", h, h)?,
                key: lin("attention.self.key", h, h)?,
                value: lin("attention.self.value", h, h)?,
                attn_out: lin("attention.output.dense", h, h)?,
                attn_ln: ln("attention.output.LayerNorm")?,
                intermediate: lin("intermediate.dense", h, i)?,
                output: lin("output.dense", i, h)?,
                out_ln: ln("output.LayerNorm")?,
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
    pub(super) fn linears(&self) -> impl Iterator<Item = &AdaptedLinear> {
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

    pub(super) fn linears_mut(&mut self) -> impl Iterator<Item = &mut AdaptedLinear> {
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
