//! BERT encoder with a sequence-classification head (mBERT architecture, HF
//! `BertForSequenceClassification`): word/position/type embeddings, post-LN blocks, exact erf
//! GELU, tanh pooler and a linear classifier; the pooler-less encoder alone ([`BertEncoder`],
//! HF `BertModel` hidden states) with e5's mean pooling for sentence embeddings. Parameter
//! names follow the HF checkpoint; every linear is an [`AdaptedLinear`] so LoRA-family adapters
//! in the store are picked up.

mod classifier;
mod config;
mod encoder;
mod weights;

pub use classifier::{cross_entropy, predictions, BertForSequenceClassification};
pub use config::BertConfig;
pub use encoder::{mean_pool_normalized, BertEncoder, BertInput};
pub use weights::{
    ensure_classifier, ensure_pooler, load_pretrained, random_init, save_pretrained,
};

use crate::params::ParamError;

/// Errors loading or saving a BERT model; each names the file or field concerned.
#[derive(Debug, thiserror::Error)]
pub enum BertError {
    #[error("reading {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("parsing BERT config {path}: {source}")]
    Config {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
    #[error("unsupported BERT config: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, BertError>;
