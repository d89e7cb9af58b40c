//! LLaMA causal LM (HF `LlamaForCausalLM` semantics and parameter names): RMSNorm, RoPE with
//! `rope_scaling`, grouped-query attention, SwiGLU MLP, tied or untied LM head, an optional
//! KV cache, and the completion-only causal-LM loss.
//!
//! Every op is differentiable in candle (no fused custom kernels), so the same forward serves
//! training (LoRA) and inference.

use super::linear::{named_linear, NamedLinear};
use super::llama_config::LlamaConfig;
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::{Embedding, VarBuilder};

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
    fn load(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
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

struct Attention {
    q_proj: NamedLinear,
    k_proj: NamedLinear,
    v_proj: NamedLinear,
    o_proj: NamedLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: &VarBuilder, prefix: &str, cfg: &LlamaConfig) -> Result<Self> {
        let (h, kvh, d, bias) = (
            cfg.num_attention_heads,
            cfg.kv_heads(),
            cfg.head_dim(),
            cfg.attention_bias,
        );
        let hs = cfg.hidden_size;
        Ok(Self {
            q_proj: named_linear(vb, &format!("{prefix}.q_proj"), hs, h * d, bias)?,
            k_proj: named_linear(vb, &format!("{prefix}.k_proj"), hs, kvh * d, bias)?,
            v_proj: named_linear(vb, &format!("{prefix}.v_proj"), hs, kvh * d, bias)?,
            o_proj: named_linear(vb, &format!("{prefix}.o_proj"), h * d, hs, bias)?,
            heads: h,
            kv_heads: kvh,
            head_dim: d,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let split = |y: Tensor, n: usize| {
            y.reshape((b, t, n, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q_proj.forward(x, train)?, self.heads)?;
        let k = split(self.k_proj.forward(x, train)?, self.kv_heads)?;
        let v = split(self.v_proj.forward(x, train)?, self.kv_heads)?;
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
        self.o_proj.forward(&out, train)
    }
}

struct Mlp {
    gate_proj: NamedLinear,
    up_proj: NamedLinear,
    down_proj: NamedLinear,
}

impl Mlp {
    fn load(vb: &VarBuilder, prefix: &str, cfg: &LlamaConfig) -> Result<Self> {
        let (hs, is, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: named_linear(vb, &format!("{prefix}.gate_proj"), hs, is, bias)?,
            up_proj: named_linear(vb, &format!("{prefix}.up_proj"), hs, is, bias)?,
            down_proj: named_linear(vb, &format!("{prefix}.down_proj"), is, hs, bias)?,
        })
    }

    // SwiGLU: down(silu(gate(x)) ⊙ up(x)).
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let g = self.gate_proj.forward(x, train)?.silu()?;
        self.down_proj
            .forward(&(g * self.up_proj.forward(x, train)?)?, train)
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// `LlamaForCausalLM`: loads from HF parameter names (`model.embed_tokens.weight`,
/// `model.layers.{i}.self_attn.q_proj.weight`, …, `lm_head.weight` unless tied).
pub struct LlamaForCausalLM {
    cfg: LlamaConfig,
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: NamedLinear,
    inv_freq: Tensor,
    device: Device,
}

impl LlamaForCausalLM {
    /// Builds the model from tensors under `vb` (root = checkpoint root).
    pub fn load(vb: VarBuilder, cfg: &LlamaConfig) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::wrap)?;
        let hs = cfg.hidden_size;
        let embed_w = vb.get((cfg.vocab_size, hs), "model.embed_tokens.weight")?;
        let embed_tokens = Embedding::new(embed_w.clone(), hs);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(Block {
                input_layernorm: RmsNorm::load(
                    vb.pp(format!("{p}.input_layernorm")),
                    hs,
                    cfg.rms_norm_eps,
                )?,
                self_attn: Attention::load(&vb, &format!("{p}.self_attn"), cfg)?,
                post_attention_layernorm: RmsNorm::load(
                    vb.pp(format!("{p}.post_attention_layernorm")),
                    hs,
                    cfg.rms_norm_eps,
                )?,
                mlp: Mlp::load(&vb, &format!("{p}.mlp"), cfg)?,
            });
        }
        let norm = RmsNorm::load(vb.pp("model.norm"), hs, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            // Tied: the LM head shares the embedding matrix; the layer keeps its HF name.
            let vbt = VarBuilder::from_tensors(
                [("lm_head.weight".to_string(), embed_w)]
                    .into_iter()
                    .collect(),
                vb.dtype(),
                vb.device(),
            );
            named_linear(&vbt, "lm_head", hs, cfg.vocab_size, false)?
        } else {
            named_linear(&vb, "lm_head", hs, cfg.vocab_size, false)?
        };
        let inv = cfg
            .inverse_frequencies()
            .map_err(candle_core::Error::wrap)?;
        let n = inv.len();
        let inv_freq = Tensor::from_vec(inv, (1, 1, n), vb.device())?;
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every linear layer with its HF module name, in model order (q,k,v,o,gate,up,down per
    /// layer, then `lm_head`) — where adapters are attached.
    pub fn linears_mut(&mut self) -> Vec<&mut NamedLinear> {
        let mut out = Vec::new();
        for b in &mut self.layers {
            let a = &mut b.self_attn;
            out.extend([&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj]);
            let m = &mut b.mlp;
            out.extend([&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj]);
        }
        out.push(&mut self.lm_head);
        out
    }

    /// cos/sin `(batch, 1, seq, head_dim)` for integer positions `(batch, seq)`.
    fn rope(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let pos = positions.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        let freqs = pos.broadcast_mul(&self.inv_freq)?;
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?.unsqueeze(1)?;
        Ok((emb.cos()?, emb.sin()?))
    }

    /// Additive mask `(batch, 1, q, k)`: 0 where query `i` (absolute position `past + i`) may
    /// see key `j` (`j ≤ past + i` and `key_mask[j] = 1`), f32::MIN elsewhere (HF's min-dtype
    /// fill, so fully masked padding rows stay finite).
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
        Tensor::from_vec(m, (b, 1, q_len, k_len), &self.device)
    }

    /// Final hidden states `(batch, seq, hidden)`. `key_mask` `(batch, cached + seq)` covers the
    /// cached and the new positions; `positions` `(batch, seq)` are the RoPE positions.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        key_mask: &Tensor,
        mut cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        let (_, t) = input_ids.dims2()?;
        let mask = self.attention_mask(key_mask, t)?;
        let rope = self.rope(positions)?;
        let mut h = self.embed_tokens.forward(input_ids)?;
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
                train,
            )?;
            h = (h + a)?;
            let m = block
                .mlp
                .forward(&block.post_attention_layernorm.forward(&h)?, train)?;
            h = (h + m)?;
        }
        self.norm.forward(&h)
    }

    /// LM-head logits for hidden states.
    pub fn logits(&self, hidden: &Tensor, train: bool) -> Result<Tensor> {
        self.lm_head.forward(hidden, train)
    }

    /// Training-mode forward of a right-padded batch: positions `0..seq` (as HF when no
    /// position ids are given), padding keys masked. Returns logits `(batch, seq, vocab)`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let positions = Tensor::arange(0u32, t as u32, &self.device)?
            .unsqueeze(0)?
            .expand((b, t))?;
        let h = self.forward_hidden(input_ids, &positions, attention_mask, None, train)?;
        self.logits(&h, train)
    }

    /// Embedding of token ids (used when resizing or inspecting).
    pub fn embeddings(&self) -> &Tensor {
        self.embed_tokens.embeddings()
    }
}

/// HF causal-LM loss: logits at position `t` predict label `t+1`; labels equal to
/// [`crate::tokenize::IGNORE_INDEX`] are skipped; the mean is over the remaining tokens
/// (`ForCausalLMLoss` with `num_items_in_batch=None`). `labels` is `i64 (batch, seq)`.
pub fn causal_lm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
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
    let targets = Tensor::from_vec(targets, n, logits.device())?;
    candle_nn::loss::cross_entropy(&picked.to_dtype(DType::F32)?, &targets)
}

/// Last-position logits `(batch, vocab)` of `(batch, seq, vocab)`.
pub fn last_logits(logits: &Tensor) -> Result<Tensor> {
    let t = logits.dim(1)?;
    logits.i((.., t - 1, ..))
}
