//! Batched greedy generation with a KV cache for left-padded prompts, matching HF
//! `generate(do_sample=False)`: positions from the attention mask (`cumsum − 1`, padding → 1),
//! finished rows fed the pad token, stop on any stop token or after `max_new_tokens`.

use crate::model::llama::{KvCache, LlamaForCausalLM};
use crate::peft::layer::ForwardCtx;
use candle_core::{DType, IndexOp, Result, Tensor};

/// Greedy decoding settings.
#[derive(Debug, Clone)]
pub struct GreedyConfig {
    pub max_new_tokens: usize,
    /// A row finishes when it emits any of these (EOS, `<|eot_id|>`, …).
    pub stop_token_ids: Vec<u32>,
    /// Fed to (and reported for) rows that already finished.
    pub pad_token_id: u32,
}

/// Generates continuations of a left-padded batch (`input_ids`, `attention_mask`: `(batch, seq)`).
/// Returns, per row, the new tokens up to and including the first stop token.
pub fn generate_greedy(
    model: &LlamaForCausalLM,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    cfg: &GreedyConfig,
) -> Result<Vec<Vec<u32>>> {
    let device = model.device().clone();
    let (b, t) = input_ids.dims2()?;
    let mut mask: Vec<Vec<u32>> = attention_mask.to_dtype(DType::U32)?.to_vec2()?;
    // HF: position_ids = attention_mask.cumsum(-1) - 1, masked_fill(attention_mask == 0, 1).
    let mut next_pos = vec![0u32; b];
    let mut positions = Vec::with_capacity(b * t);
    for (r, row) in mask.iter().enumerate() {
        let mut c = 0u32;
        for &m in row {
            c += m;
            positions.push(if m == 0 { 1 } else { c.saturating_sub(1) });
        }
        next_pos[r] = c;
    }
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut finished = vec![false; b];
    if cfg.max_new_tokens == 0 || b == 0 {
        return Ok(out);
    }
    let mut cache = KvCache::new(model.config().num_hidden_layers);
    let mut ids = input_ids.clone();
    let mut pos = Tensor::from_vec(positions, (b, t), &device)?;
    for _ in 0..cfg.max_new_tokens {
        let key_mask = Tensor::from_vec(mask.concat(), (b, mask[0].len()), &device)?;
        let ctx = ForwardCtx::eval();
        let h = model.forward_hidden(&ids, &pos, &key_mask, Some(&mut cache), &ctx)?;
        let last = h.i((.., h.dim(1)? - 1..))?;
        let logits: Vec<Vec<f32>> = model
            .logits(&last, &ctx)?
            .squeeze(1)?
            .to_dtype(DType::F32)?
            .to_vec2()?;
        let mut next = Vec::with_capacity(b);
        for r in 0..b {
            let tok = if finished[r] {
                cfg.pad_token_id
            } else {
                argmax_first(&logits[r])
            };
            if !finished[r] {
                out[r].push(tok);
                finished[r] = cfg.stop_token_ids.contains(&tok);
            }
            next.push(tok);
        }
        if finished.iter().all(|&f| f) {
            break;
        }
        for row in mask.iter_mut() {
            row.push(1);
        }
        let step_pos: Vec<u32> = next_pos.clone();
        for p in next_pos.iter_mut() {
            *p += 1;
        }
        ids = Tensor::from_vec(next, (b, 1), &device)?;
        pos = Tensor::from_vec(step_pos, (b, 1), &device)?;
    }
    Ok(out)
}

/// Index of the largest value, the first on ties (as `torch.argmax`).
fn argmax_first(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::argmax_first;

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax_first(&[0.0, 2.0, 2.0, 1.0]), 1);
    }
}
