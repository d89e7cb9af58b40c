//! Tiny classifier and separable examples for the methods' tests.

use candle_core::{Device, Tensor};
use datasets::Example;

use crate::base_model::{build_classifier, ModelSource, TinyBert};
use crate::task::TaskModel;

/// `n` two-class examples whose label is readable from the words (offset shifts the labels).
pub fn examples(n: usize, offset: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let label = ((i + offset) % 2) as u32;
            let word = if label == 0 {
                "goal match team"
            } else {
                "vote party law"
            };
            Example {
                text_a: format!("{word} {i}"),
                text_b: None,
                label_id: Some(label),
                language: "eng".into(),
            }
        })
        .collect()
}

/// A 1-layer BERT (8 linears: 6 in the layer + pooler + classifier), all weights trainable
/// as `personalize::load_base` returns them.
pub fn tiny_model() -> TaskModel {
    let labels = vec!["sports".to_string(), "politics".to_string()];
    let texts: Vec<String> = examples(20, 0).into_iter().map(|e| e.text_a).collect();
    build_classifier(
        &ModelSource::Tiny(TinyBert {
            hidden: 16,
            layers: 1,
            heads: 2,
            intermediate: 32,
            vocab_size: 60,
            seed: 3,
        }),
        &labels,
        16,
        1,
        || Ok(texts),
        &Device::Cpu,
    )
    .expect("tiny model")
    .into()
}

/// max |a − b| over all elements (f32).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .expect("same-shaped f32 tensors")
}
