//! One client's FedL2P round [code] (`FedL2PTrainer.train`) and the server's early stopping
//! (`FedL2PSeqClsApp.run`).
//!
//! Per outer step (3): rates = post ⊙ LRNet(meta-data); the inner loop from the adapters'
//! initial values (a fresh deep copy every step); then 16 (train, val) example pairs, each
//! drawn from its own endlessly reshuffled stream of single examples (`cycle` over batch-1
//! loaders, continuing across outer steps), add their hypergradients; the LR net's and the
//! post-multipliers' gradients are clipped to norm 1.0 separately and each takes one Adam step
//! (lr 1e-4 and 1e-6; the optimisers live for the client's round).

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use rand::seq::SliceRandom;

use super::hypergrad::{pair_hypergrad, Hypergrad, Pair};
use super::inner::{inner_loop, InnerConfig};
use super::lr_net::{meta_params, LrNet, LrNetConfig};
use super::{Fedl2pError, InnerModel, Result, Split};
use crate::optim::{clip_grad_norm, Adam, AdamConfig, ParamGroup};
use crate::params::ParamStore;
use crate::rng::{derive_seed, rng_from};

/// A client's meta-training settings; [`Default`] is the reference's configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetaConfig {
    /// `outer_loop_steps` (3).
    pub outer_steps: usize,
    /// `outer_loop_grad_accum` (16): hypergradient pairs per outer step.
    pub pairs: usize,
    pub hypergrad: Hypergrad,
    pub inner: InnerConfig,
    /// Adam lr of the LR network (1e-4) and of the post-multipliers (1e-6).
    pub lr_net_lr: f64,
    pub post_lr: f64,
    /// `max_grad_norm` applied to the meta-gradients (1.0).
    pub meta_clip: f64,
}

impl Default for MetaConfig {
    fn default() -> Self {
        Self {
            outer_steps: 3,
            pairs: 16,
            hypergrad: Hypergrad::default(),
            inner: InnerConfig::default(),
            lr_net_lr: 1e-4,
            post_lr: 1e-6,
            meta_clip: 1.0,
        }
    }
}

/// Losses of a client's round, as the reference reports them to the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetaOutcome {
    /// Mean over outer steps of the inner loop's mean batch loss.
    pub train_loss: f32,
    /// Mean over outer steps of the mean validation loss of its pairs (`val_loss`, which the
    /// server's early stopping averages over clients).
    pub val_loss: f32,
}

/// Single examples of a split in an endless sequence of seeded shuffles (`cycle(DataLoader(
/// batch_size=1, shuffle=True))`).
struct ExampleStream {
    n: usize,
    seed: u64,
    pass: u64,
    order: Vec<usize>,
    at: usize,
}

impl ExampleStream {
    fn new(n: usize, seed: u64) -> Self {
        Self {
            n,
            seed,
            pass: 0,
            order: Vec::new(),
            at: 0,
        }
    }

    fn next_index(&mut self) -> usize {
        if self.at == self.order.len() {
            self.order = (0..self.n).collect();
            self.order
                .shuffle(&mut rng_from(derive_seed(self.seed, &[self.pass.into()])));
            self.pass += 1;
            self.at = 0;
        }
        self.at += 1;
        self.order[self.at - 1]
    }
}

/// Trains the LR network in `net_store` (its trainable tensors are updated in place) on one
/// client: `model` is the client's adapted model, `init` its adapters' initial values,
/// `features` its meta-data.
pub fn meta_train(
    model: &dyn InnerModel,
    init: &[Tensor],
    net_store: &ParamStore,
    net_cfg: &LrNetConfig,
    features: &Tensor,
    cfg: &MetaConfig,
    seed: u64,
) -> Result<MetaOutcome> {
    let m = model.params().len();
    if net_cfg.outputs != m {
        return Err(Fedl2pError::Input(format!(
            "the LR network gives {} learning rates; the model has {m} adapter matrices",
            net_cfg.outputs
        )));
    }
    let (n_train, n_val) = (model.len(Split::Train), model.len(Split::Val));
    if n_train == 0 || n_val == 0 || cfg.outer_steps == 0 || cfg.pairs == 0 {
        return Err(Fedl2pError::Input(format!(
            "meta-training needs train and validation examples, outer steps and pairs \
             ({n_train} train, {n_val} val, {} steps, {} pairs)",
            cfg.outer_steps, cfg.pairs
        )));
    }
    let net = LrNet::load(net_store, net_cfg)?;
    let (net_vars, post_vars) = meta_params(net_store);
    let net_refs: Vec<_> = net_vars.iter().map(|(_, v)| v.clone()).collect();
    let post_refs: Vec<_> = post_vars.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = Adam::new(
        AdamConfig::adam(),
        vec![
            ParamGroup {
                params: net_vars,
                lr: cfg.lr_net_lr,
                weight_decay: 0.0,
            },
            ParamGroup {
                params: post_vars,
                lr: cfg.post_lr,
                weight_decay: 0.0,
            },
        ],
    )?;
    let mut train_stream = ExampleStream::new(n_train, derive_seed(seed, &["train_pairs".into()]));
    let mut val_stream = ExampleStream::new(n_val, derive_seed(seed, &["val_pairs".into()]));
    let scale = 1.0 / cfg.pairs as f64;
    let (mut train_sum, mut val_sum) = (0f64, 0f64);
    for step in 0..cfg.outer_steps {
        let lrs_t = net.learning_rates(features)?;
        let lrs: Vec<f64> = lrs_t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let run = inner_loop(
            model,
            init,
            &lrs,
            &cfg.inner,
            derive_seed(seed, &["inner".into(), step.into()]),
        )?;
        train_sum += f64::from(run.mean_loss);
        let mut lr_grads = vec![0f64; m];
        let mut step_val = 0f64;
        for k in 0..cfg.pairs {
            let pair = Pair {
                train: train_stream.next_index(),
                val: val_stream.next_index(),
                scale,
                train_seed: derive_seed(seed, &["pair".into(), step.into(), k.into(), 0u64.into()]),
                val_seed: derive_seed(seed, &["pair".into(), step.into(), k.into(), 1u64.into()]),
            };
            let h = pair_hypergrad(model, &run.direction, &pair, &cfg.hypergrad)?;
            for (a, g) in lr_grads.iter_mut().zip(&h.lr_grads) {
                *a += g;
            }
            step_val += h.val_loss;
        }
        val_sum += step_val;
        let mut grads = chain_through_rates(&lrs_t, &lr_grads)?;
        clip_grad_norm(
            &mut grads,
            &net_refs.iter().collect::<Vec<_>>(),
            cfg.meta_clip,
        )?;
        clip_grad_norm(
            &mut grads,
            &post_refs.iter().collect::<Vec<_>>(),
            cfg.meta_clip,
        )?;
        opt.step(&grads)?;
    }
    let steps = cfg.outer_steps as f64;
    Ok(MetaOutcome {
        train_loss: (train_sum / steps) as f32,
        val_loss: (val_sum / steps) as f32,
    })
}

/// The meta-parameters' gradients from the learning rates' (`lrs` = post ⊙ LRNet(x), still
/// attached to the LR net's graph): the gradient of `Σ_j lr_grads_j · lrs_j`, which is the
/// reference's `autograd.grad(…, meta_params)` chained through the rates.
pub fn chain_through_rates(lrs: &Tensor, lr_grads: &[f64]) -> Result<GradStore> {
    let h = Tensor::new(lr_grads, lrs.device())?.to_dtype(lrs.dtype())?;
    Ok((lrs * h)?.sum_all()?.backward()?)
}

/// The server's early stopping: the round with the lowest mean validation loss so far is the
/// best (its weights are the result); training stops once `patience` rounds have passed
/// without a new best (`rnd − best_round ≥ patience`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStopping {
    pub patience: u64,
    best: Option<(u64, f64)>,
}

impl EarlyStopping {
    pub fn new(patience: u64) -> Self {
        Self {
            patience,
            best: None,
        }
    }

    /// Records round `round`'s mean validation loss; true when it is a new best (strictly
    /// lower, so a NaN never is).
    pub fn observe(&mut self, round: u64, loss: f64) -> bool {
        let better = match self.best {
            None => !loss.is_nan(),
            Some((_, b)) => loss < b,
        };
        if better {
            self.best = Some((round, loss));
        }
        better
    }

    /// (round, loss) of the best round so far.
    pub fn best(&self) -> Option<(u64, f64)> {
        self.best
    }

    pub fn should_stop(&self, round: u64) -> bool {
        let best_round = self.best.map_or(0, |b| b.0);
        round.saturating_sub(best_round) >= self.patience
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fedl2p::lr_net::init_lr_net;
    use crate::fedl2p::testutil::TinyLora;
    use candle_core::{DType, Device};

    #[test]
    fn early_stopping_keeps_the_lowest_round_and_waits_patience_rounds() {
        let mut e = EarlyStopping::new(2);
        assert!(e.observe(1, 0.9));
        assert!(!e.should_stop(1));
        assert!(e.observe(2, 0.5));
        assert!(!e.observe(3, 0.5), "equal is not better");
        assert!(!e.should_stop(3));
        assert!(!e.observe(4, f64::NAN));
        assert!(e.should_stop(4));
        assert_eq!(e.best(), Some((2, 0.5)));
    }

    #[test]
    fn streams_cover_every_example_per_pass() {
        let mut s = ExampleStream::new(4, 1);
        let mut first: Vec<usize> = (0..4).map(|_| s.next_index()).collect();
        let second: Vec<usize> = (0..4).map(|_| s.next_index()).collect();
        first.sort();
        assert_eq!(first, vec![0, 1, 2, 3]);
        let mut sorted = second.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3]);
    }

    #[test]
    fn meta_training_moves_the_lr_net_reproducibly() {
        let q = TinyLora::new(6, 4);
        let init = q.init();
        let net_cfg = LrNetConfig {
            input_dim: 4,
            hidden: 8,
            extra_hidden_layers: 1,
            outputs: 2,
        };
        let features = Tensor::new(&[[0.5f32, 1.0, -0.3, 0.8]], &Device::Cpu).unwrap();
        let cfg = MetaConfig {
            outer_steps: 2,
            pairs: 3,
            inner: InnerConfig {
                batch_size: 2,
                ..InnerConfig::default()
            },
            // Large enough to see the post-multipliers move in f32.
            post_lr: 1e-3,
            ..MetaConfig::default()
        };
        let train = |seed: u64| {
            let store = init_lr_net(&net_cfg, 9, &Device::Cpu).unwrap();
            let out = meta_train(&q, &init, &store, &net_cfg, &features, &cfg, seed).unwrap();
            let w: Vec<f32> = store.get("last_layer.bias").unwrap().to_vec1().unwrap();
            let post: f32 = store
                .get("inner_loop_lrs.0")
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0];
            (out, w, post)
        };
        let (a, wa, pa) = train(4);
        let (b, wb, pb) = train(4);
        assert_eq!(a, b);
        assert_eq!((wa.clone(), pa), (wb, pb));
        assert!(a.train_loss.is_finite() && a.val_loss.is_finite() && a.val_loss > 0.0);
        // Adam's first step moves every parameter with a non-zero gradient by ≈ its lr.
        assert!(wa.iter().any(|v| (v - 1.0).abs() > 5e-5), "{wa:?}");
        assert!((pa - 1e-4).abs() > 5e-4, "post-multiplier {pa}");
        let (c, _, _) = train(5);
        assert_ne!(a, c, "the seed reaches the pair draws");
    }
}
