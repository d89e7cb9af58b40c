//! The local training loop every method shares, for both tasks: seeded shuffles of the client's
//! examples, micro-batches grouped for gradient accumulation, one [`train_step`] per group
//! (with the method's regulariser and clipping), and a per-step hook (AdaLoRA's rank
//! allocator). It runs `epochs` passes, or exactly `max_steps` optimiser steps cycling through
//! reshuffled epochs (HF `max_steps`). Shuffling and dropout seeds are derived from one seed,
//! so the same call is bit-reproducible.

use candle_core::backprop::GradStore;
use candle_core::Var;
use datasets::Example;
use rand::seq::SliceRandom;

mod carry;
pub mod local;
pub mod step;

pub use carry::GradCarry;
pub use local::{train_local, LocalSgdConfig, RoundLr};
pub use step::{train_step, Clip, Regulariser, StepStats, TrainError};

/// `max_grad_norm` of every fine-tune the reference runs through the HF `Trainer` (its default;
/// the reference never sets it): LoRA, AdaLoRA, the BayesTune fine-tunes, FedL2P's fine-tune and
/// every base-model FL client.
pub const REFERENCE_MAX_GRAD_NORM: f64 = 1.0;

use crate::optim::Adam;
use crate::rng::{derive_seed, rng_from};
use crate::task::{Batch, Net};

/// Tokenises `examples[order]` into one training batch (e.g. `TaskModel::batch`).
pub type Batcher<'a> = &'a dyn Fn(&[Example], &[usize]) -> Result<Batch, String>;

/// Loop settings, how examples become batches, and the loss terms / clipping of one method.
#[derive(Clone, Copy)]
pub struct Fit<'a> {
    pub batch: Batcher<'a>,
    pub epochs: usize,
    pub batch_size: usize,
    /// Micro-batches per optimiser step (1 = no accumulation).
    pub accumulate: usize,
    /// Exactly this many optimiser steps instead of `epochs` passes.
    pub max_steps: Option<usize>,
    pub reg: Regulariser<'a>,
    /// Clipping of a chosen subset (BayesTune Stage 1: A and B only).
    pub clip: Option<&'a Clip<'a>>,
    /// Without `clip`: `clip_grad_norm_` over every parameter the optimiser steps, as the HF
    /// Trainer does ([`REFERENCE_MAX_GRAD_NORM`] by default).
    pub max_grad_norm: Option<f64>,
    /// Vars whose gradients are summed over all steps so far (see [`GradCarry`]).
    pub carry: &'a [Var],
}

impl<'a> Fit<'a> {
    /// `epochs` passes in batches of `batch_size`, no accumulation, no regulariser, gradients
    /// clipped at [`REFERENCE_MAX_GRAD_NORM`].
    pub fn plain(batch: Batcher<'a>, epochs: usize, batch_size: usize) -> Self {
        Self {
            batch,
            epochs,
            batch_size,
            accumulate: 1,
            max_steps: None,
            reg: Regulariser::None,
            clip: None,
            max_grad_norm: Some(REFERENCE_MAX_GRAD_NORM),
            carry: &[],
        }
    }
}

/// Number of optimiser steps `fit` takes for `n` examples (a last partial accumulation group
/// of an epoch still steps, as HF's Trainer does).
pub fn total_steps(n: usize, cfg: &Fit<'_>) -> usize {
    if let Some(s) = cfg.max_steps {
        return s;
    }
    let batches = n.div_ceil(cfg.batch_size.max(1));
    cfg.epochs * batches.div_ceil(cfg.accumulate.max(1))
}

/// Trains `net` with `opt` over `examples`; `after_step(step, grads)` runs after every
/// optimiser step (1-based step). Returns the mean total loss over steps.
pub fn fit(
    net: &Net,
    examples: &[Example],
    opt: &mut Adam,
    cfg: &Fit<'_>,
    seed: u64,
    after_step: impl FnMut(usize, &GradStore) -> Result<(), String>,
) -> Result<f32, String> {
    fit_losses(net, examples, opt, cfg, seed, after_step).map(|l| mean_loss(&l))
}

/// The mean of per-step losses (f64 sum), as every training loop reports it.
pub fn mean_loss(losses: &[f32]) -> f32 {
    let total: f64 = losses.iter().map(|&l| f64::from(l)).sum();
    (total / losses.len().max(1) as f64) as f32
}

/// [`fit`], returning the total loss of every optimiser step (a learning curve).
pub fn fit_losses(
    net: &Net,
    examples: &[Example],
    opt: &mut Adam,
    cfg: &Fit<'_>,
    seed: u64,
    mut after_step: impl FnMut(usize, &GradStore) -> Result<(), String>,
) -> Result<Vec<f32>, String> {
    if examples.is_empty() {
        return Err("no training examples".into());
    }
    if cfg.batch_size == 0 || cfg.accumulate == 0 {
        return Err("batch size and accumulation steps must be positive".into());
    }
    let target = total_steps(examples.len(), cfg);
    let all_vars: Vec<Var> = opt.vars().into_iter().cloned().collect();
    let all_refs: Vec<&Var> = all_vars.iter().collect();
    let mut carry = (!cfg.carry.is_empty()).then(|| GradCarry::new(cfg.carry.to_vec()));
    let mut losses = Vec::with_capacity(target);
    let mut steps = 0usize;
    let mut epoch = 0u64;
    while steps < target {
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.shuffle(&mut rng_from(derive_seed(
            seed,
            &["shuffle".into(), epoch.into()],
        )));
        let micro: Vec<&[usize]> = order.chunks(cfg.batch_size).collect();
        for group in micro.chunks(cfg.accumulate) {
            if steps == target {
                break;
            }
            let batches = group
                .iter()
                .map(|chunk| (cfg.batch)(examples, chunk))
                .collect::<Result<Vec<_>, _>>()?;
            let dropout = derive_seed(seed, &["dropout".into(), (steps as u64).into()]);
            let clip = match (cfg.clip, cfg.max_grad_norm) {
                (Some(c), _) => Some(Clip {
                    vars: c.vars,
                    max_norm: c.max_norm,
                }),
                (None, Some(max_norm)) => Some(Clip {
                    vars: &all_refs,
                    max_norm,
                }),
                (None, None) => None,
            };
            let (stats, grads) = train_step(
                net,
                &batches,
                cfg.reg,
                opt,
                clip,
                Some(dropout),
                carry.as_mut(),
            )
            .map_err(|e| format!("step {steps}: {e}"))?;
            losses.push(stats.loss);
            steps += 1;
            after_step(steps, &grads).map_err(|e| format!("step {steps}: {e}"))?;
        }
        epoch += 1;
    }
    Ok(losses)
}
