//! FedL2P's inner loop [code] (`FedL2PLearner.adapt` + `FedL2PAdamW`): `epochs` shuffled passes
//! over the client's train split, fine-tuning its adapter matrices from their initial values,
//! matrix j with learning rate `lr_j` (LR net × post-multiplier). Reproduces the reference's
//! quirks, since the meta-network learns rates *for this optimiser*:
//!
//! - gradients accumulate (summed, each micro-batch loss divided by the accumulation steps) and
//!   an update happens only when `step > 0 and (step+1) % accumulate == 0`, or on the very last
//!   step, with `step` the index *within the epoch*: with accumulation 1 the first two batches
//!   of every epoch make one update;
//! - the accumulated gradients are clipped to total norm 1.0 (`max_grad_norm`) before each
//!   update;
//! - AdamW without step-dependent bias correction: `m̂ = m/(1−β1)`, `v̂ = v/(1−β2)`,
//!   `θ ← θ − lr·(wd·θ + m̂/(√v̂ + ε))`.
//!
//! Only the last update depends on the learning rates in the reference's graph (earlier ones
//! run under `no_grad`, gradients are taken without `create_graph`), so
//! `∂θ_T/∂lr_j = −(m̂_j/(√v̂_j + ε) + wd·θ_{T−1,j})`: [`InnerRun::direction`] keeps that
//! vector for the hypergradient. The reference runs in bf16; we run in the model's dtype (f32).

use candle_core::Tensor;
use rand::seq::SliceRandom;

use super::{Fedl2pError, InnerModel, Result, Split};
use crate::optim::clip_by_total_norm;
use crate::rng::{derive_seed, rng_from};

/// Inner-loop settings; [`Default`] is the reference's classification setup (2 epochs, batch
/// 32, no accumulation, clip 1.0, β = (0.9, 0.999), ε 1e-8, weight decay 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InnerConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Micro-batches per update (`gradient_accumulation_steps`; Fed-Aya 4).
    pub accumulate: usize,
    pub clip_norm: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for InnerConfig {
    fn default() -> Self {
        Self {
            epochs: 2,
            batch_size: 32,
            accumulate: 1,
            clip_norm: 1.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The outcome of one inner loop: the model's parameters hold θ_T.
#[derive(Debug, Clone)]
pub struct InnerRun {
    /// Mean over micro-batches of their loss ÷ accumulation (the reference's `training_loss`).
    pub mean_loss: f32,
    /// `−∂θ_T/∂lr_j` per parameter: the last update was `θ_T = θ_{T−1} − lr_j·direction_j`.
    pub direction: Vec<Tensor>,
    /// Updates applied.
    pub updates: usize,
}

/// The reference's AdamW state for the parameters of one inner loop.
struct FedL2pAdamW {
    cfg: InnerConfig,
    m: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
}

impl FedL2pAdamW {
    fn new(cfg: InnerConfig, n: usize) -> Self {
        Self {
            cfg,
            m: vec![None; n],
            v: vec![None; n],
        }
    }

    /// Updates parameter `j` (value `theta`) with gradient `g` at rate `lr`; returns
    /// (θ_new, direction) with θ_new = θ − lr·direction.
    fn step(&mut self, j: usize, theta: &Tensor, g: &Tensor, lr: f64) -> Result<(Tensor, Tensor)> {
        let c = self.cfg;
        let m = match &self.m[j] {
            Some(m) => ((m * c.beta1)? + (g * (1.0 - c.beta1))?)?,
            None => (g * (1.0 - c.beta1))?,
        };
        let v = match &self.v[j] {
            Some(v) => ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?,
            None => (g.sqr()? * (1.0 - c.beta2))?,
        };
        // The reference's bias correction has no step exponent.
        let m_hat = (&m / (1.0 - c.beta1))?;
        let v_hat = (&v / (1.0 - c.beta2))?;
        let mut dir = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
        if c.weight_decay != 0.0 {
            dir = (dir + (theta * c.weight_decay)?)?;
        }
        let new = (theta - (&dir * lr)?)?;
        self.m[j] = Some(m);
        self.v[j] = Some(v);
        Ok((new, dir))
    }
}

/// Runs the inner loop on `model` from `init` (one tensor per parameter) with rates `lrs`.
/// Shuffling and dropout are seeded from `seed`.
pub fn inner_loop(
    model: &dyn InnerModel,
    init: &[Tensor],
    lrs: &[f64],
    cfg: &InnerConfig,
    seed: u64,
) -> Result<InnerRun> {
    let params = model.params();
    if init.len() != params.len() || lrs.len() != params.len() {
        return Err(Fedl2pError::Input(format!(
            "{} parameters, {} initial values, {} learning rates",
            params.len(),
            init.len(),
            lrs.len()
        )));
    }
    let n = model.len(Split::Train);
    if n == 0 || cfg.epochs == 0 || cfg.batch_size == 0 || cfg.accumulate == 0 {
        return Err(Fedl2pError::Input(format!(
            "inner loop needs examples, epochs, a batch size and accumulation steps \
             ({n} examples, {} epochs, batch {}, accumulation {})",
            cfg.epochs, cfg.batch_size, cfg.accumulate
        )));
    }
    for (p, t) in params.iter().zip(init) {
        p.set(t)?;
    }
    let mut opt = FedL2pAdamW::new(*cfg, params.len());
    let mut acc: Option<Vec<Tensor>> = None;
    let mut direction = Vec::new();
    let (mut total, mut steps, mut updates) = (0f64, 0u64, 0usize);
    let batches = n.div_ceil(cfg.batch_size);
    for epoch in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng_from(derive_seed(
            seed,
            &["shuffle".into(), epoch.into()],
        )));
        for (step, chunk) in order.chunks(cfg.batch_size).enumerate() {
            let last = epoch + 1 == cfg.epochs && step + 1 == batches;
            let dropout = derive_seed(seed, &["dropout".into(), steps.into()]);
            let loss = (model.loss(Split::Train, chunk, dropout)? / cfg.accumulate as f64)?;
            let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                return Err(Fedl2pError::Model(format!(
                    "inner step {steps}: loss is not finite ({value})"
                )));
            }
            total += value;
            steps += 1;
            let grads = loss.backward()?;
            let grads: Vec<Tensor> = params
                .iter()
                .map(|p| match grads.get(p.as_tensor()) {
                    Some(g) => Ok(g.detach()),
                    None => p.as_tensor().zeros_like(),
                })
                .collect::<candle_core::Result<_>>()?;
            acc = Some(match acc.take() {
                None => grads,
                Some(a) => a
                    .iter()
                    .zip(&grads)
                    .map(|(a, g)| a + g)
                    .collect::<candle_core::Result<_>>()?,
            });
            if (step > 0 && (step + 1) % cfg.accumulate == 0) || last {
                let mut g = acc.take().expect("accumulated above");
                clip_by_total_norm(&mut g, cfg.clip_norm)?;
                direction.clear();
                for (j, p) in params.iter().enumerate() {
                    let theta = p.as_tensor().detach();
                    let (new, dir) = opt.step(j, &theta, &g[j], lrs[j])?;
                    p.set(&new)?;
                    direction.push(dir);
                }
                updates += 1;
            }
        }
    }
    Ok(InnerRun {
        mean_loss: (total / steps as f64) as f32,
        direction,
        updates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fedl2p::testutil::TinyLora;

    fn cfg(batch_size: usize) -> InnerConfig {
        InnerConfig {
            batch_size,
            ..InnerConfig::default()
        }
    }

    fn flat(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn updates_follow_the_reference_accumulation_rule() {
        let q = TinyLora::new(5, 3);
        let init = q.init();
        let lrs = [0.1, 0.05];
        // 3 batches per epoch: the first two make one update, so 2 updates per epoch.
        let run = inner_loop(&q, &init, &lrs, &cfg(2), 7).unwrap();
        assert_eq!(run.updates, 4);
        // One batch per epoch: epoch 0 only accumulates, the last step updates once.
        let run1 = inner_loop(&q, &init, &lrs, &cfg(8), 7).unwrap();
        assert_eq!(run1.updates, 1);
        // First update from zero state: m̂ = g, v̂ = g², so θ moves by lr·g/(|g|+ε) ≈ lr·sign(g).
        for (j, lr) in lrs.iter().enumerate() {
            let after = flat(q.params()[j].as_tensor());
            let before = flat(&init[j]);
            let dir = flat(&run1.direction[j]);
            for ((a, b), d) in after.iter().zip(&before).zip(&dir) {
                assert!(((a - b).abs() - lr).abs() < 1e-6, "{a} {b}");
                assert!((b - lr * d - a).abs() < 1e-12);
            }
        }
        let again = inner_loop(&q, &init, &lrs, &cfg(8), 7).unwrap();
        assert_eq!(again.mean_loss, run1.mean_loss);
        // A zero rate leaves its matrix at the initial value.
        inner_loop(&q, &init, &[0.0, 0.05], &cfg(2), 7).unwrap();
        assert_eq!(flat(q.params()[0].as_tensor()), flat(&init[0]));
        assert!(inner_loop(&q, &init, &[0.1], &cfg(2), 7).is_err());
        // Accumulation 2, 3 batches per epoch: updates at step 1 of each epoch (the leftover
        // third batch carries into the next epoch, as the reference's gradient store) and last.
        let acc = InnerConfig {
            accumulate: 2,
            ..cfg(2)
        };
        assert_eq!(inner_loop(&q, &init, &lrs, &acc, 7).unwrap().updates, 3);
    }
}
