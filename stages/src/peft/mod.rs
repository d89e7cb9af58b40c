//! Parameter-efficient fine-tuning: LoRA, BayesTune-LoRA, AdaLoRA, rank selection.
//!
//! An adapter lives beside its base linear in [`AdaptedLinear`] (candle style: the layer owns
//! its base weight and its adapter tensors). Adapter tensors are ordinary named parameters in the
//! [`ParamStore`](crate::params::ParamStore) under the module's HF name:
//!
//! | tensor | shape | used by |
//! |---|---|---|
//! | `{module}.lora_A.weight` | (r, in) | all |
//! | `{module}.lora_B.weight` | (out, r) | all |
//! | `{module}.lora_lambda` | (r) | BayesTune-LoRA (λ, PAPER_NOTES §3) |
//! | `{module}.lora_E` | (r, 1) | AdaLoRA (singular values Λ) |
//!
//! A model loads whichever adapter tensors are in the store for each linear, interpreted by the
//! [`AdapterSpec`] it is given; a module without adapter tensors (rank 0) runs no adapter matmul.

pub mod adalora;
pub mod bayestune;
pub mod layer;
pub mod lora;

pub use layer::{AdaptedLinear, AdapterKind, AdapterSpec, LinearShape};

/// Name of a module's LoRA down-projection A (r × in).
pub fn a_name(module: &str) -> String {
    format!("{module}.lora_A.weight")
}

/// Name of a module's LoRA up-projection B (out × r).
pub fn b_name(module: &str) -> String {
    format!("{module}.lora_B.weight")
}

/// Name of a module's BayesTune λ (r).
pub fn lambda_name(module: &str) -> String {
    format!("{module}.lora_lambda")
}

/// Name of a module's AdaLoRA singular values E (r × 1).
pub fn e_name(module: &str) -> String {
    format!("{module}.lora_E")
}

/// True for adapter tensor names (the "train only adapters" predicate).
pub fn is_adapter_param(name: &str) -> bool {
    name.contains(".lora_")
}

/// Errors of adapter set-up and rank selection.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error(transparent)]
    Param(#[from] crate::params::ParamError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, PeftError>;
