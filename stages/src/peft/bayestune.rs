//! BayesTune-LoRA (PAPER_NOTES §3–4): per-rank λ, the Laplace/Gamma prior penalties, global
//! top-k rank selection and pruning back to the seeded initial adapters.

use candle_core::{DType, Tensor};

use super::lora::{a_seed, kaiming_uniform_a, remove_adapter};
use super::{a_name, b_name, lambda_name, AdapterKind, AdapterSpec, LinearShape};
use super::{PeftError, Result};
use crate::nn::{abs_l1, ste_clamp};
use crate::params::ParamStore;

/// Lower clamp of λ in the priors and after training (§3).
pub const LAMBDA_MIN: f64 = 1e-4;
/// Upper clamp of λ (§3; the reference's default 1e4 in one trainer is overridden to 1000).
pub const LAMBDA_MAX: f64 = 1000.0;
/// Weight of the Laplace term L_B [code].
pub const WEIGHT_B: f64 = 100.0;
/// Weight of the Gamma term L_λ [code].
pub const WEIGHT_LAMBDA: f64 = 0.01;
/// β of the Gamma prior as written in the code's `100·λ + log λ`.
pub const GAMMA_RATE: f64 = 100.0;

/// BayesTune-LoRA hyperparameters (§3 defaults via [`Default`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BayesTuneConfig {
    pub r_max: usize,
    pub alpha: f64,
    pub lambda_init: f64,
    pub dropout: f32,
}

impl Default for BayesTuneConfig {
    fn default() -> Self {
        Self {
            r_max: 32,
            alpha: 64.0,
            lambda_init: 1e-4,
            dropout: 0.0,
        }
    }
}

impl BayesTuneConfig {
    /// s = α / r_max, fixed for the whole life of the adapters (also after pruning).
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r_max as f64
    }

    pub fn spec(&self) -> AdapterSpec {
        AdapterSpec {
            kind: AdapterKind::BayesTune {
                scaling: self.scaling(),
            },
            dropout: self.dropout,
        }
    }
}

/// Adds BayesTune adapters (A seeded Kaiming-uniform, B = 0, λ = `lambda_init`, all trainable)
/// with rank r_max to every module.
pub fn add_bayestune(
    store: &mut ParamStore,
    modules: &[LinearShape],
    cfg: &BayesTuneConfig,
    seed: u64,
    dtype: DType,
) -> Result<()> {
    super::lora::add_lora(store, modules, |_| cfg.r_max, seed, dtype)?;
    let device = store.device().clone();
    for m in modules {
        let lambda = (Tensor::ones(cfg.r_max, dtype, &device)? * cfg.lambda_init)?;
        store.insert(&lambda_name(&m.name), lambda, true)?;
    }
    Ok(())
}

/// `(100·L_B + 0.01·L_λ) / N` of §3 over `modules` (B0 = 0, since B starts at zero both in the
/// baseline and after the PSG initialisation), with λ̃ = STE-clamp(λ, 1e-4, 1000) used only
/// here. `n_train` = the client's train-set size N. Modules without λ (pruned) are skipped.
pub fn prior_penalty(
    store: &ParamStore,
    modules: &[LinearShape],
    n_train: usize,
) -> Result<Tensor> {
    if n_train == 0 {
        return Err(PeftError::Invalid(
            "BayesTune prior needs N > 0 training samples".into(),
        ));
    }
    let mut l_b: Option<Tensor> = None;
    let mut l_l: Option<Tensor> = None;
    for m in modules {
        if !store.contains(&lambda_name(&m.name)) {
            continue;
        }
        let lam = ste_clamp(&store.get(&lambda_name(&m.name))?, LAMBDA_MIN, LAMBDA_MAX)?;
        let b = store.get(&b_name(&m.name))?;
        // Σ_j ‖B[:, j]‖₁ / λ̃_j: λ broadcasts over B's rank (column) dimension.
        let tb = abs_l1(&b)?.broadcast_div(&lam)?.sum_all()?;
        let tl = ((&lam * GAMMA_RATE)? + lam.log()?)?.sum_all()?;
        l_b = Some(match l_b {
            None => tb,
            Some(acc) => (acc + tb)?,
        });
        l_l = Some(match l_l {
            None => tl,
            Some(acc) => (acc + tl)?,
        });
    }
    let (Some(l_b), Some(l_l)) = (l_b, l_l) else {
        return Err(PeftError::Invalid("no BayesTune λ in the store".into()));
    };
    Ok((((l_b * WEIGHT_B)? + (l_l * WEIGHT_LAMBDA)?)? / n_train as f64)?)
}

/// λ of each module (detached copies, module order); a module without λ gives an empty tensor.
pub fn lambdas(store: &ParamStore, modules: &[LinearShape]) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(modules.len());
    for m in modules {
        out.push(match store.param(&lambda_name(&m.name)) {
            Some(p) => p.tensor().detach().copy()?,
            None => Tensor::zeros(0, DType::F32, store.device())?,
        });
    }
    Ok(out)
}

/// Sets λ from a flat vector laid out module by module (the PSG's L × r_max output, §5),
/// in place (models built from the store see it).
pub fn set_lambdas_flat(
    store: &mut ParamStore,
    modules: &[LinearShape],
    flat: &Tensor,
) -> Result<()> {
    let flat = flat.flatten_all()?;
    let mut values = std::collections::HashMap::new();
    let mut offset = 0;
    for m in modules {
        let name = lambda_name(&m.name);
        let r = store.get(&name)?.dim(0)?;
        if offset + r > flat.dim(0)? {
            return Err(PeftError::Invalid(format!(
                "λ vector has {} values, modules need more (at `{name}`)",
                flat.dim(0)?
            )));
        }
        values.insert(name, flat.narrow(0, offset, r)?.detach());
        offset += r;
    }
    if offset != flat.dim(0)? {
        return Err(PeftError::Invalid(format!(
            "λ vector has {} values, modules need {offset}",
            flat.dim(0)?
        )));
    }
    store.assign(&values)?;
    Ok(())
}

/// Hard clamp of λ to [1e-4, 1000] after BayesTune training (§3).
pub fn clamp_lambdas(store: &mut ParamStore, modules: &[LinearShape]) -> Result<()> {
    let mut values = std::collections::HashMap::new();
    for m in modules {
        let name = lambda_name(&m.name);
        if let Some(p) = store.param(&name) {
            values.insert(name, p.tensor().clamp(LAMBDA_MIN, LAMBDA_MAX)?);
        }
    }
    store.assign(&values)?;
    Ok(())
}

/// Global top-k over all modules' λ (§4 step 1), k = r_b × #modules. Returns, per module, the
/// kept rank indices in increasing order.
///
/// Tie-break (our choice; the reference's `topk(sorted=False)` leaves it undefined): larger λ
/// first, then earlier module, then lower rank index. NaN is an error.
pub fn top_k_ranks(lambdas: &[Vec<f32>], k: usize) -> Result<Vec<Vec<usize>>> {
    let mut all: Vec<(f32, usize, usize)> = Vec::new();
    for (mi, l) in lambdas.iter().enumerate() {
        for (ri, v) in l.iter().enumerate() {
            if v.is_nan() {
                return Err(PeftError::Invalid(format!(
                    "λ of module {mi} rank {ri} is NaN"
                )));
            }
            all.push((*v, mi, ri));
        }
    }
    if k > all.len() {
        return Err(PeftError::Invalid(format!(
            "budget of {k} ranks exceeds the {} available",
            all.len()
        )));
    }
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut kept = vec![Vec::new(); lambdas.len()];
    for &(_, mi, ri) in &all[..k] {
        kept[mi].push(ri);
    }
    for k in &mut kept {
        k.sort_unstable();
    }
    Ok(kept)
}

/// Prunes to the selected ranks (§4 steps 2–3): kept rows of the *seeded initial* A (re-created
/// from `seed`, nothing re-drawn), B = 0, λ = the selected values, frozen; A and B trainable.
/// Modules with no kept rank lose their adapter entirely.
pub fn prune_to_selection(
    store: &mut ParamStore,
    modules: &[LinearShape],
    kept: &[Vec<usize>],
    cfg: &BayesTuneConfig,
    seed: u64,
    dtype: DType,
) -> Result<()> {
    if kept.len() != modules.len() {
        return Err(PeftError::Invalid(format!(
            "selection covers {} modules, model has {}",
            kept.len(),
            modules.len()
        )));
    }
    let device = store.device().clone();
    // Compute everything first so an error leaves the store untouched.
    let mut plan = Vec::new();
    for (m, idx) in modules.iter().zip(kept) {
        if idx.is_empty() {
            plan.push((m, None));
            continue;
        }
        let lam = store.get(&lambda_name(&m.name))?;
        let ids = Tensor::from_vec(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            idx.len(),
            &device,
        )?;
        let a0 = kaiming_uniform_a(a_seed(seed, &m.name), cfg.r_max, m.in_dim, &device, dtype)?;
        let a = a0.index_select(&ids, 0)?;
        let lam = lam.index_select(&ids, 0)?;
        let b = Tensor::zeros((m.out_dim, idx.len()), dtype, &device)?;
        plan.push((m, Some((a, b, lam))));
    }
    for (m, p) in plan {
        remove_adapter(store, &m.name);
        if let Some((a, b, lam)) = p {
            store.insert(&a_name(&m.name), a, true)?;
            store.insert(&b_name(&m.name), b, true)?;
            store.insert(&lambda_name(&m.name), lam, false)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_breaks_ties_by_module_then_rank() {
        let l = vec![vec![1e-4, 0.5, 1e-4], vec![0.5, 1e-4, 2.0]];
        let kept = top_k_ranks(&l, 4).unwrap();
        // 2.0 (m1r2), 0.5 (m0r1), 0.5 (m1r0), then the first 1e-4 tie: m0r0.
        assert_eq!(kept, vec![vec![0, 1], vec![0, 2]]);
        assert!(top_k_ranks(&l, 7).is_err());
        assert!(top_k_ranks(&[vec![f32::NAN]], 1).is_err());
    }
}
