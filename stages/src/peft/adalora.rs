//! AdaLoRA building blocks as in PEFT `tuners/adalora`: SVD-form adapters P·Λ·Q (`lora_B`,
//! `lora_E`, `lora_A`), the orthogonal regulariser, and the rank allocator (sensitivity ×
//! uncertainty importance with EMAs, cubic budget schedule, masking of the lowest triplets).
//! Settings of the baseline: PAPER_NOTES §6.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, D};

use super::{a_name, b_name, e_name, LinearShape};
use super::{PeftError, Result};
use crate::nn::normal_tensor;
use crate::params::ParamStore;
use crate::rng::derive_seed;

/// AdaLoRA hyperparameters (PEFT `AdaLoraConfig` names). PAPER_NOTES §6: init_r = 1.5·r_b,
/// target_r = r_b, lora_alpha 8, dropout 0, tinit 10 % and tfinal 30 % of the steps,
/// ΔT = 1, β1 = β2 = 0.85, orth_reg_weight 0.1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaLoraConfig {
    pub init_r: usize,
    pub target_r: usize,
    pub lora_alpha: f64,
    pub dropout: f32,
    pub tinit: usize,
    pub tfinal: usize,
    pub total_step: usize,
    pub delta_t: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub orth_reg_weight: f64,
}

impl AdaLoraConfig {
    /// The paper's baseline for budget `r_b` over `total_step` optimiser steps (§6).
    pub fn for_budget(r_b: usize, total_step: usize) -> Self {
        Self {
            init_r: r_b * 3 / 2,
            target_r: r_b,
            lora_alpha: 8.0,
            dropout: 0.0,
            // The reference truncates: int(0.1 · total_step).
            tinit: total_step / 10,
            tfinal: total_step * 3 / 10,
            total_step,
            delta_t: 1,
            beta1: 0.85,
            beta2: 0.85,
            orth_reg_weight: 0.1,
        }
    }

    pub fn spec(&self) -> super::AdapterSpec {
        super::AdapterSpec {
            kind: super::AdapterKind::AdaLora {
                alpha: self.lora_alpha,
            },
            dropout: self.dropout,
        }
    }
}

/// Adds AdaLoRA adapters with PEFT's init: E = 0, A and B ~ Normal(0, 0.02) (our seeded RNG),
/// all trainable, rank `init_r`.
pub fn add_adalora(
    store: &mut ParamStore,
    modules: &[LinearShape],
    init_r: usize,
    seed: u64,
    dtype: DType,
) -> Result<()> {
    let device = store.device().clone();
    for m in modules {
        let sa = derive_seed(seed, &["adalora_A".into(), m.name.as_str().into()]);
        let sb = derive_seed(seed, &["adalora_B".into(), m.name.as_str().into()]);
        let a = normal_tensor(sa, (init_r, m.in_dim), 0.02, &device, dtype)?;
        let b = normal_tensor(sb, (m.out_dim, init_r), 0.02, &device, dtype)?;
        let e = Tensor::zeros((init_r, 1), dtype, &device)?;
        store.insert(&a_name(&m.name), a, true)?;
        store.insert(&b_name(&m.name), b, true)?;
        store.insert(&e_name(&m.name), e, true)?;
    }
    Ok(())
}

/// PEFT's orthogonal regulariser: mean over all A and B of ‖A·Aᵀ − I‖_F and ‖Bᵀ·B − I‖_F
/// (to be multiplied by `orth_reg_weight` and added to the loss).
pub fn orth_regulariser(store: &ParamStore, modules: &[LinearShape]) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    let mut count = 0usize;
    for m in modules {
        for (name, is_a) in [(a_name(&m.name), true), (b_name(&m.name), false)] {
            let p = store.get(&name)?;
            let cov = if is_a {
                p.matmul(&p.t()?)?
            } else {
                p.t()?.matmul(&p)?
            };
            let n = cov.dim(0)?;
            let eye = Tensor::eye(n, cov.dtype(), cov.device())?;
            let fro = (cov - eye)?.sqr()?.sum_all()?.sqrt()?;
            total = Some(match total {
                None => fro,
                Some(t) => (t + fro)?,
            });
            count += 1;
        }
    }
    let total = total.ok_or_else(|| PeftError::Invalid("no AdaLoRA adapters".into()))?;
    Ok((total / count as f64)?)
}

#[derive(Debug, Clone)]
struct Ema {
    ipt: Tensor,
    unc: Tensor,
}

/// PEFT's `RankAllocator`: call [`update_and_allocate`](Self::update_and_allocate) after each
/// optimiser step with that step's gradients and HF's `global_step` before its increment
/// (0-based: the first optimiser step is step 0).
#[derive(Debug, Clone)]
pub struct RankAllocator {
    cfg: AdaLoraConfig,
    modules: Vec<LinearShape>,
    init_bgt: usize,
    target_bgt: usize,
    ema: HashMap<String, Ema>,
    rank_pattern: Option<Vec<Vec<bool>>>,
}

impl RankAllocator {
    /// `modules` are the adapted linears; triplets are ranked in PEFT's sorted-name order.
    pub fn new(cfg: AdaLoraConfig, store: &ParamStore, modules: &[LinearShape]) -> Result<Self> {
        if !(cfg.beta1 > 0.0 && cfg.beta1 < 1.0 && cfg.beta2 > 0.0 && cfg.beta2 < 1.0) {
            return Err(PeftError::Invalid(
                "AdaLoRA betas must lie in (0, 1)".into(),
            ));
        }
        if cfg.tinit + cfg.tfinal >= cfg.total_step {
            return Err(PeftError::Invalid(format!(
                "AdaLoRA needs tinit + tfinal < total_step ({} + {} >= {})",
                cfg.tinit, cfg.tfinal, cfg.total_step
            )));
        }
        let mut modules = modules.to_vec();
        modules.sort_by(|a, b| a.name.cmp(&b.name));
        let mut init_bgt = 0;
        for m in &modules {
            init_bgt += store.get(&a_name(&m.name))?.dim(0)?;
        }
        Ok(Self {
            cfg,
            target_bgt: cfg.target_r * modules.len(),
            modules,
            init_bgt,
            ema: HashMap::new(),
            rank_pattern: None,
        })
    }

    /// (budget, whether to mask at this step): warm-up at full budget until `tinit`, cubic
    /// decay to the target, then the target for the last `tfinal` steps.
    pub fn budget_schedule(&self, step: usize) -> (usize, bool) {
        let c = &self.cfg;
        if step <= c.tinit {
            (self.init_bgt, false)
        } else if step > c.total_step - c.tfinal {
            (self.target_bgt, true)
        } else {
            let mul = 1.0 - (step - c.tinit) as f64 / (c.total_step - c.tfinal - c.tinit) as f64;
            let budget = ((self.init_bgt - self.target_bgt) as f64 * mul.powi(3)
                + self.target_bgt as f64) as usize;
            (budget, step % c.delta_t.max(1) == 0)
        }
    }

    /// The current mask per module (sorted-name order), once one was computed.
    pub fn rank_pattern(&self) -> Option<&[Vec<bool>]> {
        self.rank_pattern.as_deref()
    }

    /// Modules in the allocator's (sorted-name) order.
    pub fn modules(&self) -> &[LinearShape] {
        &self.modules
    }

    /// Exponential moving averages of sensitivity (`ipt`) and uncertainty (`unc`) of a named
    /// adapter tensor, for inspection and tests.
    pub fn ema(&self, param: &str) -> Option<(&Tensor, &Tensor)> {
        self.ema.get(param).map(|e| (&e.ipt, &e.unc))
    }

    fn update_ipt(&mut self, store: &ParamStore, grads: &GradStore) -> Result<()> {
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        for m in &self.modules {
            for name in [a_name(&m.name), b_name(&m.name), e_name(&m.name)] {
                let p = store.get(&name)?;
                let Some(g) = grads.get(&p) else {
                    continue;
                };
                // Sensitivity |θ ⊙ ∇θ| with θ after the optimiser step, as PEFT's order.
                let ipt = (p.detach() * g)?.abs()?;
                let prev = match self.ema.remove(&name) {
                    Some(e) => e,
                    None => Ema {
                        ipt: ipt.zeros_like()?,
                        unc: ipt.zeros_like()?,
                    },
                };
                let ema_ipt = ((prev.ipt * b1)? + (&ipt * (1.0 - b1))?)?;
                let unc = ((prev.unc * b2)? + ((ipt - &ema_ipt)?.abs()? * (1.0 - b2))?)?;
                self.ema.insert(name, Ema { ipt: ema_ipt, unc });
            }
        }
        Ok(())
    }

    fn score(&self, name: &str) -> Result<Tensor> {
        let e = self
            .ema
            .get(name)
            .ok_or_else(|| PeftError::Invalid(format!("no importance recorded for `{name}`")))?;
        Ok((&e.ipt * &e.unc)?)
    }

    /// Triplet scores per module: s(E) + mean_row s(A) + mean_col s(B).
    fn triplet_scores(&self) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(self.modules.len());
        for m in &self.modules {
            let sa = self.score(&a_name(&m.name))?.mean(D::Minus1)?;
            let sb = self.score(&b_name(&m.name))?.mean(0)?;
            let se = self.score(&e_name(&m.name))?.flatten_all()?;
            out.push(((se + sa)? + sb)?);
        }
        Ok(out)
    }

    /// Zeroes E of the lowest-scoring triplets so that `budget` remain (PEFT: threshold =
    /// k-th smallest score with k = init_bgt − budget; ties at the threshold are masked too).
    fn mask_to_budget(&mut self, store: &mut ParamStore, budget: usize) -> Result<()> {
        let scores = self.triplet_scores()?;
        let host: Vec<Vec<f32>> = scores
            .iter()
            .map(|s| s.to_dtype(DType::F32)?.to_vec1::<f32>())
            .collect::<candle_core::Result<_>>()?;
        let k = self.init_bgt.saturating_sub(budget);
        let pattern: Vec<Vec<bool>> = if k == 0 {
            // torch.kthvalue(k=0) would raise; nothing needs masking at the full budget.
            host.iter().map(|s| vec![true; s.len()]).collect()
        } else {
            let mut all: Vec<f32> = host.iter().flatten().copied().collect();
            all.sort_by(f32::total_cmp);
            let threshold = all[k - 1];
            host.iter()
                .map(|s| s.iter().map(|v| *v > threshold).collect())
                .collect()
        };
        self.rank_pattern = Some(pattern);
        self.apply_pattern(store)
    }

    fn apply_pattern(&self, store: &mut ParamStore) -> Result<()> {
        let Some(pattern) = &self.rank_pattern else {
            return Ok(());
        };
        let mut values = HashMap::new();
        for (m, keep) in self.modules.iter().zip(pattern) {
            let e = store.get(&e_name(&m.name))?;
            let mask: Vec<f32> = keep.iter().map(|k| if *k { 1.0 } else { 0.0 }).collect();
            let mask = Tensor::from_vec(mask, (keep.len(), 1), e.device())?.to_dtype(e.dtype())?;
            values.insert(e_name(&m.name), (e.detach() * mask)?);
        }
        store.assign(&values)?;
        Ok(())
    }

    /// PEFT `AdaLoraModel.update_and_allocate(global_step)`: before the final phase update the
    /// importance EMAs and mask to the scheduled budget; at its first step fix the final
    /// pattern (and reset the EMAs); afterwards re-apply the fixed pattern.
    pub fn update_and_allocate(
        &mut self,
        store: &mut ParamStore,
        grads: &GradStore,
        global_step: usize,
    ) -> Result<usize> {
        let final_start = self.cfg.total_step - self.cfg.tfinal;
        let (budget, mask) = self.budget_schedule(global_step);
        if global_step < final_start {
            self.update_ipt(store, grads)?;
            if mask {
                self.mask_to_budget(store, budget)?;
            }
        } else if global_step == final_start {
            self.mask_to_budget(store, budget)?;
            self.ema.clear();
        } else {
            self.apply_pattern(store)?;
        }
        Ok(budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_budget_settings_and_cubic_schedule() {
        let c = AdaLoraConfig::for_budget(16, 100);
        assert_eq!((c.init_r, c.target_r, c.tinit, c.tfinal), (24, 16, 10, 30));
        let mut store = ParamStore::new(&candle_core::Device::Cpu);
        let mods = vec![LinearShape {
            name: "m".into(),
            in_dim: 3,
            out_dim: 2,
        }];
        add_adalora(&mut store, &mods, 24, 0, DType::F32).unwrap();
        let ra = RankAllocator::new(c, &store, &mods).unwrap();
        assert_eq!(ra.budget_schedule(10), (24, false));
        assert_eq!(ra.budget_schedule(71), (16, true));
        // Halfway through the decay: (24−16)·0.5³ + 16 = 17.
        assert_eq!(ra.budget_schedule(40), (17, true));
    }
}
