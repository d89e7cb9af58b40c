//! The client meta-data the PS generator reads (PAPER_NOTES §5).

use candle_core::Tensor;
use datasets::Example;

use super::{step, Result};
use crate::peft::AdapterSpec;
use crate::task::TaskModel;

/// Batch size of the meta-data pass [code] (PAPER_NOTES §5).
pub const META_BATCH: usize = 4;

/// The client's meta-data (PAPER_NOTES §5): mean/SD of every base linear's input over its
/// train set, in batches of 4 tokenised as the reference does ([`TaskModel::meta_batch`]:
/// padded to `max_len`, or the prompts alone), adapters off. Shape (1, 2 × observed linears).
pub fn meta_features(model: &TaskModel, train: &[Example]) -> Result<Tensor> {
    let s = step("meta-data");
    let net = model.net(model.store(), &AdapterSpec::NONE).map_err(&s)?;
    let train = model.trainable(train).map_err(&s)?;
    let idx: Vec<usize> = (0..train.len()).collect();
    let mut batches = Vec::new();
    for chunk in idx.chunks(META_BATCH) {
        batches.push(model.meta_batch(&train, chunk).map_err(&s)?);
    }
    crate::psg::client_features(&net, &batches).map_err(|e| s(e.to_string()))
}
