//! The personalization methods (PAPER_NOTES §3, §4, §6) on a client's base model, for both
//! tasks: the LoRA baseline, BayesTune Stage 1 λ learning, global top-k rank selection with
//! fine-tuning of the pruned adapters (FedP2EFT and BayesTune-LoRA share it), AdaLoRA and FedL2P's
//! fine-tune; the base loading they share (`client_base`) and the PSG's client meta-data
//! (`meta_data`). Every function takes the client's base model by value or reference and leaves
//! the caller's weights alone.

pub mod adalora;
pub mod client_base;
pub mod fedl2p;
pub mod lora;
pub mod meta_data;
pub mod ranked;
pub mod stage1;
#[cfg(test)]
pub(crate) mod testutil;

use datasets::Example;

pub use client_base::load_base;
pub use lora::personalize_lora;
pub use meta_data::{meta_features, META_BATCH};

use crate::params::ParamStore;
use crate::peft::LinearShape;
use crate::task::{ModelError, Outputs, TaskModel};

/// Errors of one personalization run; each names the file or step.
#[derive(Debug, thiserror::Error)]
pub enum PersonalizeError {
    /// Boxed: the base-model error is large and this one is returned on every path.
    #[error(transparent)]
    Base(Box<ModelError>),
    #[error("{path}: {message}")]
    ClientState { path: String, message: String },
    #[error("{step}: {message}")]
    Step { step: &'static str, message: String },
}

pub type Result<T> = std::result::Result<T, PersonalizeError>;

impl From<ModelError> for PersonalizeError {
    fn from(e: ModelError) -> Self {
        PersonalizeError::Base(Box::new(e))
    }
}

pub(crate) fn step(step: &'static str) -> impl Fn(String) -> PersonalizeError {
    move |message| PersonalizeError::Step { step, message }
}

/// What a run produced: test outputs (in test-split order) and the kept rank per module.
#[derive(Debug, Clone, PartialEq)]
pub struct Personalized {
    pub predictions: Outputs,
    /// (module, rank) for every adapted linear.
    pub ranks: Vec<(String, usize)>,
    pub mean_train_loss: f32,
    /// Total loss of every optimiser step (the client's learning curve).
    pub step_losses: Vec<f32>,
    /// (module, ‖ΔW‖_F) for every adapted linear: the size of the merged update.
    pub update_norms: Vec<(String, f32)>,
}

impl Personalized {
    /// A run's outputs; the mean train loss is that of `step_losses`.
    pub fn new(
        predictions: Outputs,
        ranks: Vec<(String, usize)>,
        step_losses: Vec<f32>,
        update_norms: Vec<(String, f32)>,
    ) -> Self {
        Self {
            predictions,
            ranks,
            mean_train_loss: crate::fit::mean_loss(&step_losses),
            step_losses,
            update_norms,
        }
    }

    pub fn correct(&self) -> u64 {
        self.predictions.correct()
    }
}

/// ‖W_after − W_before‖_F of every module's weight: how far a fine-tune moved the base once
/// its adapter is merged.
pub fn update_norms(
    before: &ParamStore,
    after: &ParamStore,
    modules: &[LinearShape],
) -> Result<Vec<(String, f32)>> {
    let s = step("update norms");
    modules
        .iter()
        .map(|m| {
            let name = format!("{}.weight", m.name);
            let (a, b) = (
                after.get(&name).map_err(|e| s(e.to_string()))?,
                before.get(&name).map_err(|e| s(e.to_string()))?,
            );
            let f32 = candle_core::DType::F32;
            let norm = (|| {
                (a.to_dtype(f32)? - b.to_dtype(f32)?)?
                    .sqr()?
                    .sum_all()?
                    .sqrt()
            })()
            .and_then(|n| n.to_scalar::<f32>())
            .map_err(|e| s(e.to_string()))?;
            Ok((m.name.clone(), norm))
        })
        .collect()
}

/// Settings of a plain adapter fine-tune on one client (LoRA, AdaLoRA; PAPER_NOTES §4, §6:
/// 2 epochs, lr 1e-4, AdaLoRA 1e-3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FineTune {
    /// r_b: the rank of every adapted module (AdaLoRA: the target average rank).
    pub budget: usize,
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    /// Micro-batches per optimiser step (Fed-Aya: 4 × 4).
    pub accumulate: usize,
    /// Seeds the adapters' initial A. The reference seeds torch with the run seed before the
    /// adapters are created, so every client of a run draws the same A.
    pub init_seed: u64,
    /// Seeds shuffling and dropout (the reference's HF Trainer seed).
    pub seed: u64,
}

/// Every linear the methods adapt (PEFT `all-linear`, PAPER_NOTES §3), in module order.
pub fn all_linear(model: &TaskModel) -> Vec<LinearShape> {
    model.all_linear()
}

/// A copy of the model's store with every base parameter frozen (tensors are shared, so this
/// is cheap; adapters added to the copy never touch the caller's store).
pub fn frozen_store(model: &TaskModel) -> Result<ParamStore> {
    let mut store = model.store().clone();
    store
        .set_trainable(|_| false)
        .map_err(|e| step("freeze")(e.to_string()))?;
    Ok(store)
}

/// Test outputs of `model`'s network over `store` (adapters merged or absent).
pub fn evaluate(
    model: &TaskModel,
    store: &ParamStore,
    examples: &[Example],
    batch_size: usize,
) -> Result<Outputs> {
    model
        .evaluate(store, examples, batch_size)
        .map_err(step("predict"))
}
