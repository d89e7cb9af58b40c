//! The BayesTune-based personalization methods and AdaLoRA (PAPER_NOTES §3, §4, §6) on a base
//! classifier: Stage 1 λ learning, global top-k rank selection with fine-tuning of the pruned
//! adapters (FedP2EFT and BayesTune-LoRA share it), and the AdaLoRA baseline. Every function
//! takes the client's base model by value or reference and leaves the caller's weights alone.

pub mod adalora;
pub mod fedl2p;
pub mod ranked;
pub mod stage1;
#[cfg(test)]
pub(crate) mod testutil;

use candle_core::Tensor;
use datasets::Example;

use crate::params::ParamStore;
use crate::peft::{AdapterSpec, LinearShape};
use crate::personalize::{PersonalizeError, Result};
use crate::task::TaskModel;

fn step(step: &'static str) -> impl Fn(String) -> PersonalizeError {
    move |message| PersonalizeError::Step { step, message }
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

/// Batch size of the meta-data pass [code] (PAPER_NOTES §5).
pub const META_BATCH: usize = 4;

/// The client's meta-data (PAPER_NOTES §5): mean/SD of every base linear's input over its
/// train set, in batches of 4, adapters off. Shape (1, 2 × observed linears).
pub fn meta_features(model: &TaskModel, train: &[Example]) -> Result<Tensor> {
    let s = step("meta-data");
    let net = model.net(model.store(), &AdapterSpec::NONE).map_err(&s)?;
    let train = model.trainable(train).map_err(&s)?;
    let idx: Vec<usize> = (0..train.len()).collect();
    let mut batches = Vec::new();
    for chunk in idx.chunks(META_BATCH) {
        batches.push(model.batch(&train, chunk).map_err(&s)?);
    }
    crate::psg::client_features(&net, &batches).map_err(|e| s(e.to_string()))
}
