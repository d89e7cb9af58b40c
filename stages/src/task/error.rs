//! Errors building, loading or saving a task model; each names the file or step.

use std::path::PathBuf;

use crate::model::bert::BertError;
use crate::model::hf_layout::HfLayoutError;
use crate::tokenize::TokenizeError;

/// Errors building, loading or saving a model; each names the file or step.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Bert(#[from] BertError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error(transparent)]
    Layout(#[from] HfLayoutError),
    #[error(transparent)]
    Llama(#[from] crate::model::llama_io::LlamaIoError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model: {0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;
