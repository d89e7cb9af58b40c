//! Local training with a fresh AdamW, as a Flower client (and the reference's personalization
//! trainer) runs it: `epochs` passes over the examples, or a fixed number of steps on a seeded
//! subset, at a constant or per-round cosine lr.

use datasets::Example;
use rand::seq::SliceRandom;

use super::{Batcher, Fit};
use crate::optim::{Adam, AdamConfig, ParamGroup};
use crate::params::ParamStore;
use crate::rng::{derive_seed, rng_from};
use crate::task::Net;

/// The lr of each round: constant, or the reference's `cosine_learning_rate(round, rounds,
/// lr, min_lr)` = min + ½(lr − min)(1 + cos(π·round/rounds)) with 1-based rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RoundLr {
    Constant,
    Cosine { rounds: u64, min_lr: f64 },
}

/// Local optimisation settings (PAPER_NOTES §2: AdamW, lr 5e-5, wd 0, 2 epochs, batch 32 for
/// BERT; lr 2e-5 cosine, 10 steps of 4 × 4 for LLaMA).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalSgdConfig {
    pub lr: f64,
    pub weight_decay: f64,
    pub epochs: usize,
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub accumulate: usize,
    /// Exactly this many steps per round on a subset of `steps · batch · accumulate` examples
    /// drawn from the round's seed (the reference's `shuffle(seed=round).select(...)`).
    pub max_steps: Option<usize>,
    pub round_lr: RoundLr,
}

impl LocalSgdConfig {
    /// `epochs` passes at a constant lr, no accumulation (the BERT setups).
    pub fn epochs(lr: f64, weight_decay: f64, epochs: usize, batch_size: usize) -> Self {
        Self {
            lr,
            weight_decay,
            epochs,
            batch_size,
            accumulate: 1,
            max_steps: None,
            round_lr: RoundLr::Constant,
        }
    }

    /// The lr of 1-based `round`.
    pub fn lr_at(&self, round: u64) -> f64 {
        match self.round_lr {
            RoundLr::Constant => self.lr,
            RoundLr::Cosine { rounds, min_lr } => {
                let x = std::f64::consts::PI * round as f64 / rounds.max(1) as f64;
                min_lr + 0.5 * (self.lr - min_lr) * (1.0 + x.cos())
            }
        }
    }
}

/// Local training of `net` (built over `store`) on `examples` (tokenised by `batch`) with a
/// fresh AdamW on the store's trainable parameters at `lr`; returns every optimiser step's loss
/// and the number of examples trained on. Shuffling and dropout draw from seeds derived from
/// `seed`, so the same call is bit-reproducible.
pub fn train_local(
    net: &Net,
    batch: Batcher<'_>,
    store: &ParamStore,
    examples: &[Example],
    cfg: &LocalSgdConfig,
    lr: f64,
    seed: u64,
) -> Result<(Vec<f32>, usize), String> {
    let mut opt = Adam::new(
        AdamConfig::adamw(),
        vec![ParamGroup {
            params: store.trainable(),
            lr,
            weight_decay: cfg.weight_decay,
        }],
    )
    .map_err(|e| e.to_string())?;
    let subset;
    let examples = match cfg.max_steps {
        Some(steps) => {
            let want = steps * cfg.batch_size * cfg.accumulate;
            let mut order: Vec<usize> = (0..examples.len()).collect();
            order.shuffle(&mut rng_from(derive_seed(seed, &["subset".into()])));
            order.truncate(want);
            subset = order
                .iter()
                .map(|&i| examples[i].clone())
                .collect::<Vec<_>>();
            &subset
        }
        None => examples,
    };
    let fit = Fit {
        accumulate: cfg.accumulate,
        max_steps: cfg.max_steps,
        ..Fit::plain(batch, cfg.epochs, cfg.batch_size)
    };
    let losses = super::fit_losses(net, examples, &mut opt, &fit, seed, |_, _| Ok(()))?;
    Ok((losses, examples.len()))
}
