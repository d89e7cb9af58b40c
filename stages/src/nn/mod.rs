//! Small differentiable building blocks shared by the models and adapters: a plain linear map,
//! layer norm, a straight-through clamp, and dropout driven by our seeded RNG.
//!
//! candle-nn's fused `layer_norm` and `softmax_last_dim` have no backward pass and its
//! `Dropout` draws from an unseeded RNG, so training code uses these instead.

pub mod dropout;
pub mod ops;

pub use dropout::{Dropout, DropoutRng};
pub use ops::{layer_norm, linear_forward, softmax_last_dim, ste_clamp};
