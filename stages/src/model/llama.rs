//! LLaMA causal LM (HF `LlamaForCausalLM` semantics and parameter names): RMSNorm, RoPE with
//! `rope_scaling`, grouped-query attention, SwiGLU MLP, tied or untied LM head, an optional
//! KV cache, and the completion-only causal-LM loss.
//!
//! The same forward serves training (full fine-tuning or LoRA-family adapters) and inference;
//! frozen linears (base weights, the LM head) run through the fused CPU kernels, which never
//! form a frozen weight's gradient (inside `nn::fused::composite_scope`, plain candle ops). The model is built from a
//! [`ParamStore`] like BERT: every linear of the decoder layers is an [`AdaptedLinear`], so
//! adapter tensors in the store (`{module}.lora_A.weight`, …) are picked up by module name.

use super::llama_config::LlamaConfig;
use crate::params::{ParamError, ParamStore};
use crate::peft::layer::ForwardCtx;
use crate::peft::{AdaptedLinear, AdapterSpec, LinearShape};
use candle_core::{DType, Device, IndexOp, Result, Tensor, D};

/// Per-layer cached keys and values `(batch, kv_heads, seen, head_dim)` for generation.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(layers: usize) -> Self {
        Self {
            layers: vec![None; layers],
        }
    }

    /// Number of positions already cached.
    pub fn seen(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }
}

struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(store: &ParamStore, name: &str, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: store
                .get_shaped(&format!("{name}.weight"), &[size])
                .map_err(param_err)?,
            eps,
        })
    }

    // HF LlamaRMSNorm: normalise in f32, then scale by the weight.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        x.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }
}

fn param_err(e: ParamError) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// `x·cos + rotate_half(x)·sin` with cos/sin `(batch, 1, seq, head_dim)` (HF layout: the two
/// halves of the head dimension are the rotated pairs).
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(cos)? + rotate_half(x)?.broadcast_mul(sin)?
}

/// Repeats each KV head `n_rep` times to match the query heads (HF `repeat_kv`).
fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, kvh, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, kvh, n_rep, s, d))?
        .reshape((b, kvh * n_rep, s, d))
}

/// Every linear of the decoder layers in module (forward) order — per layer q, k, v, o, gate,
/// up, down — under HF module names. PEFT's `all-linear` for a causal LM adapts exactly these
/// (the output layer `lm_head` is excluded); this order defines the λ layout and top-k ties.
pub fn llama_linear_modules(cfg: &LlamaConfig) -> Vec<LinearShape> {
    let (hs, is) = (cfg.hidden_size, cfg.intermediate_size);
    let (qd, kvd) = (
        cfg.num_attention_heads * cfg.head_dim(),
        cfg.kv_heads() * cfg.head_dim(),
    );
    let mut out = Vec::with_capacity(7 * cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (name, in_dim, out_dim) in [
            ("self_attn.q_proj", hs, qd),
            ("self_attn.k_proj", hs, kvd),
            ("self_attn.v_proj", hs, kvd),
            ("self_attn.o_proj", qd, hs),
            ("mlp.gate_proj", hs, is),
            ("mlp.up_proj", hs, is),
            ("mlp.down_proj", is, hs),
        ] {
            out.push(LinearShape {
                name: format!("{p}.{name}"),
                in_dim,
                out_dim,
            });
        }
    }
    out
}

/// HF module name of the output layer (observed for the PSG meta-data, never adapted).
pub const LM_HEAD: &str = "lm_head";

struct Attention {
    q_proj: AdaptedLinear,
    k_proj: AdaptedLinear,
    v_proj: AdaptedLinear,
    o_proj: AdaptedLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let split = |y: Tensor, n: usize| {
            y.reshape((b, t, n, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q_proj.forward(x, ctx)?, self.heads)?;
        let k = split(self.k_proj.forward(x, ctx)?, self.kv_heads)?;
        let v = split(self.v_proj.forward(x, ctx)?, self.kv_heads)?;
        let q = apply_rope(&q, &rope.0, &rope.1)?;
        let mut k = apply_rope(&k, &rope.0, &rope.1)?;
        let mut v = v;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let n_rep = self.heads / self.kv_heads;
        let k = repeat_kv(k, n_rep)?.contiguous()?;
        let v = repeat_kv(v, n_rep)?.contiguous()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // HF eager attention: (q·kᵀ)·scale + mask, softmax in f32, then ·v.
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax(&scores.to_dtype(DType::F32)?, D::Minus1)?
            .to_dtype(q.dtype())?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, self.heads * self.head_dim))?;
        self.o_proj.forward(&out, ctx)
    }
}

struct Mlp {
    gate_proj: AdaptedLinear,
    up_proj: AdaptedLinear,
    down_proj: AdaptedLinear,
}

impl Mlp {
    // SwiGLU: down(silu(gate(x)) ⊙ up(x)).
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx<'_>) -> Result<Tensor> {
        let g = self.gate_proj.forward(x, ctx)?.silu()?;
        self.down_proj
            .forward(&(g * self.up_proj.forward(x, ctx)?)?, ctx)
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// `LlamaForCausalLM` over a [`ParamStore`] with HF parameter names (`model.embed_tokens.weight`,
/// `model.layers.{i}.self_attn.q_proj.weight`, …, `lm_head.weight` unless tied).
pub struct LlamaForCausalLM {
    cfg: LlamaConfig,
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    inv_freq: Tensor,
    device: Device,
}

impl LlamaForCausalLM {
    /// Builds the model from the store; adapters present in it are interpreted by `spec`.
    pub fn load(store: &ParamStore, cfg: &LlamaConfig, spec: &AdapterSpec) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::wrap)?;
        let hs = cfg.hidden_size;
        let get = |name: &str, shape: &[usize]| store.get_shaped(name, shape).map_err(param_err);
        let embed_tokens = get("model.embed_tokens.weight", &[cfg.vocab_size, hs])?;
        let modules = llama_linear_modules(cfg);
        let lin = |i: usize, bias: bool| {
            AdaptedLinear::load(store, &modules[i], bias, spec).map_err(param_err)
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
            layers.push(Block {
                input_layernorm: RmsNorm::load(
                    store,
                    &format!("{p}.input_layernorm"),
                    hs,
                    cfg.rms_norm_eps,
                )?,
                self_attn: Attention {
                    q_proj: lin(7 * i, ab)?,
                    k_proj: lin(7 * i + 1, ab)?,
                    v_proj: lin(7 * i + 2, ab)?,
                    o_proj: lin(7 * i + 3, ab)?,
                    heads: cfg.num_attention_heads,
                    kv_heads: cfg.kv_heads(),
                    head_dim: cfg.head_dim(),
                },
                post_attention_layernorm: RmsNorm::load(
                    store,
                    &format!("{p}.post_attention_layernorm"),
                    hs,
                    cfg.rms_norm_eps,
                )?,
                mlp: Mlp {
                    gate_proj: lin(7 * i + 4, mb)?,
                    up_proj: lin(7 * i + 5, mb)?,
                    down_proj: lin(7 * i + 6, mb)?,
                },
            });
        }
        let norm = RmsNorm::load(store, "model.norm", hs, cfg.rms_norm_eps)?;
        // Tied: the LM head shares the embedding matrix.
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            get("lm_head.weight", &[cfg.vocab_size, hs])?
        };
        let inv = cfg
            .inverse_frequencies()
            .map_err(candle_core::Error::wrap)?;
        let n = inv.len();
        let inv_freq = Tensor::from_vec(inv, (1, 1, n), store.device())?;
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            device: store.device().clone(),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every adapted linear in module order (see [`llama_linear_modules`]).
    pub fn linears(&self) -> Vec<&AdaptedLinear> {
        let mut out = Vec::new();
        for b in &self.layers {
            let (a, m) = (&b.self_attn, &b.mlp);
            out.extend([&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj]);
            out.extend([&m.gate_proj, &m.up_proj, &m.down_proj]);
        }
        out
    }

    /// Mutable access for merge/unmerge of all adapters.
    pub fn linears_mut(&mut self) -> Vec<&mut AdaptedLinear> {
        let mut out = Vec::new();
        for b in &mut self.layers {
            let a = &mut b.self_attn;
            out.extend([&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj]);
            let m = &mut b.mlp;
            out.extend([&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj]);
        }
        out
    }

    /// cos/sin `(batch, 1, seq, head_dim)` for integer positions `(batch, seq)`.
    fn rope(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let pos = positions.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        let freqs = pos.broadcast_mul(&self.inv_freq)?;
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?.unsqueeze(1)?;
        let dtype = self.embed_tokens.dtype();
        Ok((emb.cos()?.to_dtype(dtype)?, emb.sin()?.to_dtype(dtype)?))
    }

    /// Additive mask `(batch, 1, q, k)`: 0 where query `i` (absolute position `past + i`) may
    /// see key `j` (`j ≤ past + i` and `key_mask[j] = 1`), the dtype's minimum elsewhere (HF's
    /// min-dtype fill, so fully masked padding rows stay finite).
    fn attention_mask(&self, key_mask: &Tensor, q_len: usize) -> Result<Tensor> {
        let (b, k_len) = key_mask.dims2()?;
        let past = k_len - q_len;
        let km = key_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let mut m = vec![0f32; b * q_len * k_len];
        for (bi, row) in km.iter().enumerate() {
            for i in 0..q_len {
                for (j, &keep) in row.iter().enumerate() {
                    if keep == 0 || j > past + i {
                        m[(bi * q_len + i) * k_len + j] = f32::MIN;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, q_len, k_len), &self.device)?;
        match self.embed_tokens.dtype() {
            DType::F32 => Ok(mask),
            // bf16/f16: clamp to the dtype's finite range before converting (f32::MIN → -inf).
            DType::BF16 => mask
                .clamp(f64::from(half::bf16::MIN), 0.0)?
                .to_dtype(DType::BF16),
            dt => mask.to_dtype(dt),
        }
    }

    /// Final hidden states `(batch, seq, hidden)`. `key_mask` `(batch, cached + seq)` covers the
    /// cached and the new positions; `positions` `(batch, seq)` are the RoPE positions.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        key_mask: &Tensor,
        mut cache: Option<&mut KvCache>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor> {
        let (_, t) = input_ids.dims2()?;
        let mask = self.attention_mask(key_mask, t)?;
        let rope = self.rope(positions)?;
        let (b, _) = input_ids.dims2()?;
        let mut h = self
            .embed_tokens
            .embedding(&input_ids.flatten_all()?)?
            .reshape((b, t, self.cfg.hidden_size))?;
        if let Some(c) = cache.as_deref_mut() {
            if c.layers.len() != self.layers.len() {
                *c = KvCache::new(self.layers.len());
            }
        }
        for (i, block) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let a = block.self_attn.forward(
                &block.input_layernorm.forward(&h)?,
                &rope,
                &mask,
                slot,
                ctx,
            )?;
            h = (h + a)?;
            let m = block
                .mlp
                .forward(&block.post_attention_layernorm.forward(&h)?, ctx)?;
            h = (h + m)?;
        }
        self.norm.forward(&h)
    }

    /// LM-head logits for hidden states (the head's input is reported to `ctx`'s observer as
    /// `lm_head`, as the reference's meta-data hooks every base linear).
    pub fn logits(&self, hidden: &Tensor, ctx: &ForwardCtx<'_>) -> Result<Tensor> {
        if let Some(obs) = ctx.observe_input {
            obs(LM_HEAD, hidden)?;
        }
        // The head is frozen (tied embeddings under LoRA): the fused kernel skips the
        // vocabulary-sized weight gradient candle's matmul backward would form.
        if crate::nn::fused::linear::applies(hidden, &self.lm_head, None) {
            crate::nn::fused::linear::frozen_linear(hidden, &self.lm_head, None)
        } else {
            crate::nn::linear_forward(hidden, &self.lm_head, None)
        }
    }

    /// Forward of a right-padded batch: positions `0..seq` (as HF when no position ids are
    /// given), padding keys masked. Returns logits `(batch, seq, vocab)`; train mode (adapter
    /// dropout) when `ctx.dropout` is set.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let positions = Tensor::arange(0u32, t as u32, &self.device)?
            .unsqueeze(0)?
            .expand((b, t))?;
        let h = self.forward_hidden(input_ids, &positions, attention_mask, None, ctx)?;
        self.logits(&h, ctx)
    }

    /// Embedding of token ids (used when resizing or inspecting).
    pub fn embeddings(&self) -> &Tensor {
        &self.embed_tokens
    }
}

/// HF causal-LM loss: logits at position `t` predict label `t+1`; labels equal to
/// [`crate::tokenize::IGNORE_INDEX`] are skipped; the mean is over the remaining tokens
/// (`ForCausalLMLoss` with `num_items_in_batch=None`). `labels` is `i64 (batch, seq)`.
pub fn causal_lm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (sum, n) = causal_lm_loss_sum(logits, labels)?;
    sum / n as f64
}

/// Summed token cross-entropy of [`causal_lm_loss`] and the number of response tokens it sums
/// over (HF divides by the tokens of the whole accumulation group, `num_items_in_batch`).
pub fn causal_lm_loss_sum(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, usize)> {
    let (b, t, v) = logits.dims3()?;
    let lab = labels.to_dtype(DType::I64)?.to_vec2::<i64>()?;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (bi, row) in lab.iter().enumerate() {
        for ti in 0..t.saturating_sub(1) {
            let y = row[ti + 1];
            if y != crate::tokenize::IGNORE_INDEX {
                if y < 0 || y as usize >= v {
                    candle_core::bail!(
                        "label {y} at row {bi}, position {} is outside the vocabulary (size {v})",
                        ti + 1
                    );
                }
                rows.push((bi * t + ti) as u32);
                targets.push(y as u32);
            }
        }
    }
    if rows.is_empty() {
        candle_core::bail!("no response tokens in the batch: every label is ignored (does the response marker occur?)");
    }
    let n = rows.len();
    let flat = logits.reshape((b * t, v))?;
    let picked = flat.index_select(&Tensor::from_vec(rows, n, logits.device())?, 0)?;
    let targets = Tensor::from_vec(targets, (n, 1), logits.device())?;
    let logp = candle_nn::ops::log_softmax(&picked.to_dtype(DType::F32)?, D::Minus1)?;
    let sum = logp.gather(&targets, 1)?.sum_all()?.neg()?;
    Ok((sum, n))
}

/// Last-position logits `(batch, vocab)` of `(batch, seq, vocab)`.
pub fn last_logits(logits: &Tensor) -> Result<Tensor> {
    let t = logits.dim(1)?;
    logits.i((.., t - 1, ..))
}
