//! Tiny classifier and separable examples for the methods' tests.

use candle_core::{Device, Tensor};
use datasets::Example;

use std::path::Path;

use crate::task::{
    build_classifier, save_classifier, ClassifierModel, ModelSource, TaskModel, TaskSetup, TinyBert,
};

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

/// A 1-layer BERT (8 linears: 6 in the layer + pooler + classifier) over labels `sports`,
/// `politics`, all weights trainable.
pub fn tiny_classifier() -> ClassifierModel {
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
}

/// [`tiny_classifier`] as `methods::load_base` returns a base.
pub fn tiny_model() -> TaskModel {
    tiny_classifier().into()
}

/// Saves [`tiny_classifier`] into `dir` in HF layout; returns its labels.
pub fn saved_tiny(dir: &Path) -> Vec<String> {
    let m = tiny_classifier();
    save_classifier(&m, dir).expect("save tiny model");
    m.config
        .id2label
        .as_ref()
        .expect("labels")
        .values()
        .cloned()
        .collect()
}

/// The classification setup of [`saved_tiny`]'s model.
pub fn setup(labels: &[String]) -> TaskSetup {
    TaskSetup::Classification {
        labels: labels.to_vec(),
        max_len: 16,
        dtype: Default::default(),
    }
}

/// max |a − b| over all elements (f32).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .expect("same-shaped f32 tensors")
}
