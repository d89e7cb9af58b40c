//! Optimisers (Adam, AdamW with parameter groups), gradient clipping and lr schedules, with
//! PyTorch semantics (`torch.optim.Adam/AdamW` single-tensor path, `clip_grad_norm_`,
//! `CosineAnnealingLR`) so results match the reference implementation.

pub mod adam;
pub mod clip;
pub mod schedule;

pub use adam::{Adam, AdamConfig, ParamGroup};
pub use clip::{clip_by_total_norm, clip_grad_norm};
pub use schedule::CosineAnnealingLr;

/// Errors of optimiser set-up and state restore.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("optimiser state: {0}")]
    State(String),
    #[error(transparent)]
    Param(#[from] crate::params::ParamError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, OptimError>;
