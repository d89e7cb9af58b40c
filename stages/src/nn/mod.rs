//! Small differentiable building blocks shared by the models and adapters: a plain linear map,
//! layer norm, GELU, attention, a straight-through clamp, and dropout driven by our seeded RNG.
//!
//! candle-nn's fused `layer_norm` and `softmax_last_dim` have no backward pass and its
//! `Dropout` draws from an unseeded RNG, so training code uses these instead; on the CPU they
//! run as the fused kernels of [`fused`].

pub mod dropout;
pub mod fused;
pub mod init;
pub mod ops;

pub use dropout::{DropMask, Dropout, DropoutRng};
pub use init::normal_tensor;
pub use ops::{
    abs_l1, attention, gelu_erf, layer_norm, linear_forward, residual_layer_norm, softmax_last_dim,
    ste_clamp,
};
