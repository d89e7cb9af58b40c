//! FedL2P (PAPER_NOTES §6, [code] `royson/fedp2eft` `fedl2p_*`): a federated meta-network that
//! gives every LoRA matrix of a client its own fine-tuning learning rate.
//!
//! - [`lr_net`]: the LR network (MLP 2L → 100 → 100 → M, ReLU, clamp [0, 1000]) times one
//!   learnable post-multiplier per matrix; M = 2 × #adapted linears (A and B separately).
//! - [`inner`]: the inner loop, fine-tuning the client's LoRA with those rates through the
//!   reference's AdamW variant (with its quirks); the last step is the one the hypergradient
//!   differentiates.
//! - [`hypergrad`]: the implicit-function hypergradient with a 3-term Neumann series, exactly as
//!   the reference's `Hypergrad` computes it, from exact Hessian-vector products
//!   ([`crate::second_order`]).
//! - [`meta`]: one client's bi-level round (3 outer steps × 16 hypergradient pairs, clipping,
//!   Adam on the LR net and on the post-multipliers) and the server's early stopping.
//!
//! Everything here works on an [`InnerModel`]: the trainable adapter tensors and a loss on
//! examples of the client's train or validation split, so any model (BERT classifier, LLaMA)
//! plugs in through a thin adapter (`fl::fedl2p_client` for BERT).

pub mod hypergrad;
pub mod inner;
pub mod lr_net;
pub mod meta;

use candle_core::{Tensor, Var};
use datasets::Example;
use rand::seq::SliceRandom;

use crate::rng::{derive_seed, rng_from};

/// Errors of FedL2P's computations.
#[derive(Debug, thiserror::Error)]
pub enum Fedl2pError {
    #[error("{0}")]
    Input(String),
    #[error("model: {0}")]
    Model(String),
    #[error(transparent)]
    SecondOrder(#[from] crate::second_order::SecondOrderError),
    #[error(transparent)]
    Optim(#[from] crate::optim::OptimError),
    #[error(transparent)]
    Param(#[from] crate::params::ParamError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Fedl2pError>;

/// Which part of the client's data a loss is computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The 80 % the inner loop fine-tunes on.
    Train,
    /// The 20 % whose loss the meta-network is trained to lower.
    Val,
}

/// What FedL2P needs of a model: its trainable adapter tensors, one per learning rate in the
/// LR network's output order, and a batch-mean training loss that reads their current values.
pub trait InnerModel {
    fn params(&self) -> &[Var];
    /// Number of examples of a split.
    fn len(&self, split: Split) -> usize;
    /// Batch-mean loss on examples `idx` of `split`, in train mode (dropout from `dropout_seed`),
    /// as the reference computes every FedL2P loss with `model.train()`.
    fn loss(&self, split: Split, idx: &[usize], dropout_seed: u64) -> Result<Tensor>;
}

/// The reference's `train_test_split(test_size = ratio)` of a client's training examples:
/// ⌈ratio·n⌉ examples go to validation, the rest train; both in the order of one seeded
/// permutation (our stream, not NumPy's). Fails when either side would be empty.
pub fn split_train_val(
    examples: &[Example],
    val_ratio: f64,
    seed: u64,
) -> Result<(Vec<Example>, Vec<Example>)> {
    if !(val_ratio > 0.0 && val_ratio < 1.0) {
        return Err(Fedl2pError::Input(format!(
            "validation ratio must lie in (0, 1), got {val_ratio}"
        )));
    }
    let n = examples.len();
    let n_val = (val_ratio * n as f64).ceil() as usize;
    if n_val == 0 || n_val >= n {
        return Err(Fedl2pError::Input(format!(
            "{n} training examples cannot be split {:.0}/{:.0} into non-empty train and validation sets",
            100.0 * (1.0 - val_ratio),
            100.0 * val_ratio
        )));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng_from(derive_seed(
        seed,
        &["train_val_split".into()],
    )));
    let val = order[..n_val]
        .iter()
        .map(|&i| examples[i].clone())
        .collect();
    let train = order[n_val..]
        .iter()
        .map(|&i| examples[i].clone())
        .collect();
    Ok((train, val))
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(i: usize) -> Example {
        Example {
            text_a: format!("t{i}"),
            text_b: None,
            label_id: Some(0),
            language: "eng".into(),
        }
    }

    #[test]
    fn split_is_80_20_seeded_and_disjoint() {
        let all: Vec<Example> = (0..11).map(ex).collect();
        let (tr, va) = split_train_val(&all, 0.2, 5).unwrap();
        // ⌈0.2 · 11⌉ = 3 validation examples, as train_test_split.
        assert_eq!((tr.len(), va.len()), (8, 3));
        let mut seen: Vec<&str> = tr.iter().chain(&va).map(|e| e.text_a.as_str()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 11);
        let (tr2, _) = split_train_val(&all, 0.2, 5).unwrap();
        assert_eq!(tr, tr2);
        let (tr3, _) = split_train_val(&all, 0.2, 6).unwrap();
        assert_ne!(tr, tr3);
        let err = split_train_val(&all[..1], 0.2, 5).unwrap_err().to_string();
        assert!(err.contains("1 training examples"), "{err}");
        assert!(split_train_val(&all, 1.0, 5).is_err());
    }
}
