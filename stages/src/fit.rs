//! The local training loop every classifier method shares: `epochs` seeded shuffles of the
//! client's examples, one [`train_step`] per batch (with the method's regulariser and
//! clipping), and a per-step hook (AdaLoRA's rank allocator). Shuffling and dropout seeds are
//! derived from one seed, so the same call is bit-reproducible.

use candle_core::backprop::GradStore;
use candle_core::Device;
use datasets::Example;
use rand::seq::SliceRandom;

use crate::fl::classifier_client::classifier_batch;
use crate::model::bert::BertForSequenceClassification;
use crate::optim::Adam;
use crate::rng::{derive_seed, rng_from};
use crate::tokenize::TextTokenizer;
use crate::train::{train_step, Clip, Regulariser};

/// Loop settings, tokenizer/device, and the loss terms / clipping of one method.
#[derive(Clone, Copy)]
pub struct Fit<'a> {
    pub tokenizer: &'a TextTokenizer,
    pub device: &'a Device,
    pub epochs: usize,
    pub batch_size: usize,
    pub reg: Regulariser<'a>,
    pub clip: Option<&'a Clip<'a>>,
}

/// Number of optimiser steps `fit` takes for `n` examples.
pub fn total_steps(n: usize, epochs: usize, batch_size: usize) -> usize {
    epochs * n.div_ceil(batch_size.max(1))
}

/// Trains `model` with `opt` over `examples`; `after_step(step, grads)` runs after every
/// optimiser step (1-based step). Returns the mean total loss over steps.
pub fn fit(
    model: &BertForSequenceClassification,
    examples: &[Example],
    opt: &mut Adam,
    cfg: &Fit<'_>,
    seed: u64,
    mut after_step: impl FnMut(usize, &GradStore) -> Result<(), String>,
) -> Result<f32, String> {
    if examples.is_empty() {
        return Err("no training examples".into());
    }
    if cfg.batch_size == 0 {
        return Err("batch size must be positive".into());
    }
    let mut total = 0f64;
    let mut steps = 0u64;
    for epoch in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.shuffle(&mut rng_from(derive_seed(
            seed,
            &["shuffle".into(), epoch.into()],
        )));
        for chunk in order.chunks(cfg.batch_size) {
            let batch = classifier_batch(examples, chunk, cfg.tokenizer, cfg.device)?;
            let dropout = derive_seed(seed, &["dropout".into(), steps.into()]);
            let clip = cfg.clip.map(|c| Clip {
                vars: c.vars,
                max_norm: c.max_norm,
            });
            let (stats, grads) = train_step(model, &batch, cfg.reg, opt, clip, Some(dropout))
                .map_err(|e| format!("step {steps}: {e}"))?;
            total += f64::from(stats.loss);
            steps += 1;
            after_step(steps as usize, &grads).map_err(|e| format!("step {steps}: {e}"))?;
        }
    }
    Ok((total / steps.max(1) as f64) as f32)
}
