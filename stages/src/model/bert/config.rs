//! HF `BertConfig` (config.json) and the module layout it implies.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{BertError, Result};
use crate::peft::LinearShape;

fn default_act() -> String {
    "gelu".into()
}
fn default_pos() -> String {
    "absolute".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_init() -> f64 {
    0.02
}

/// Serde mirror of HF `BertConfig` (config.json); unknown fields are kept for round trips.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub hidden_dropout_prob: f32,
    #[serde(default)]
    pub attention_probs_dropout_prob: f32,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "default_pos")]
    pub position_embedding_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl BertConfig {
    /// A small config for tests and CI fixtures.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 64,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
            classifier_dropout: None,
            id2label: None,
            extra: [("model_type".to_string(), serde_json::Value::from("bert"))]
                .into_iter()
                .collect(),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| BertError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|source| BertError::Config {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub(super) fn validate(&self) -> Result<()> {
        if self.hidden_act != "gelu" {
            return Err(BertError::Unsupported(format!(
                "hidden_act `{}` (only the exact erf \"gelu\")",
                self.hidden_act
            )));
        }
        if self.position_embedding_type != "absolute" {
            return Err(BertError::Unsupported(format!(
                "position_embedding_type `{}`",
                self.position_embedding_type
            )));
        }
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(BertError::Unsupported(format!(
                "hidden_size {} not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Ok(())
    }

    /// Number of labels from `id2label` (HF default 2 when absent).
    pub fn num_labels(&self) -> usize {
        self.id2label.as_ref().map_or(2, BTreeMap::len)
    }

    /// Every linear of `BertForSequenceClassification` in module (forward) order: per layer
    /// query, key, value, attention.output.dense, intermediate.dense, output.dense; then
    /// pooler, classifier. This order defines λ layout and top-k tie-breaking.
    pub fn linear_modules(&self, num_labels: usize) -> Vec<LinearShape> {
        let h = self.hidden_size;
        let i = self.intermediate_size;
        let mut out = Vec::with_capacity(self.num_hidden_layers * 6 + 2);
        let mut push = |name: String, in_dim, out_dim| {
            out.push(LinearShape {
                name,
                in_dim,
                out_dim,
            })
        };
        for l in 0..self.num_hidden_layers {
            let p = format!("bert.encoder.layer.{l}");
            push(format!("{p}.attention.self.query"), h, h);
            push(format!("{p}.attention.self.key"), h, h);
            push(format!("{p}.attention.self.value"), h, h);
            push(format!("{p}.attention.output.dense"), h, h);
            push(format!("{p}.intermediate.dense"), h, i);
            push(format!("{p}.output.dense"), i, h);
        }
        push("bert.pooler.dense".into(), h, h);
        push("classifier".into(), h, num_labels);
        out
    }

    /// Names and shapes of every BERT parameter except the linears (embeddings, layer norms).
    pub(super) fn non_linear_params(&self) -> Vec<(String, Vec<usize>, Init)> {
        let h = self.hidden_size;
        let mut v = vec![
            (
                "bert.embeddings.word_embeddings.weight".into(),
                vec![self.vocab_size, h],
                Init::Embedding {
                    padding_idx: Some(self.pad_token_id),
                },
            ),
            (
                "bert.embeddings.position_embeddings.weight".into(),
                vec![self.max_position_embeddings, h],
                Init::Embedding { padding_idx: None },
            ),
            (
                "bert.embeddings.token_type_embeddings.weight".into(),
                vec![self.type_vocab_size, h],
                Init::Embedding { padding_idx: None },
            ),
            (
                "bert.embeddings.LayerNorm.weight".into(),
                vec![h],
                Init::Ones,
            ),
            (
                "bert.embeddings.LayerNorm.bias".into(),
                vec![h],
                Init::Zeros,
            ),
        ];
        for l in 0..self.num_hidden_layers {
            for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
                v.push((
                    format!("bert.encoder.layer.{l}.{ln}.weight"),
                    vec![h],
                    Init::Ones,
                ));
                v.push((
                    format!("bert.encoder.layer.{l}.{ln}.bias"),
                    vec![h],
                    Init::Zeros,
                ));
            }
        }
        v
    }
}

pub(super) enum Init {
    Embedding { padding_idx: Option<usize> },
    Ones,
    Zeros,
}
