//! Seeded initialisers shared by the models, the PS generator and FedL2P's LR network.

use candle_core::{DType, Device, Result, Tensor};

use crate::rng::rng_from;

/// Normal(0, std) tensor from our seeded stream (Box–Muller via `rand_distr`).
pub fn normal_tensor(
    seed: u64,
    shape: (usize, usize),
    std: f64,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    use rand_distr::{Distribution, Normal};
    let normal = Normal::new(0.0f64, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let mut rng = rng_from(seed);
    let v: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| normal.sample(&mut rng) as f32)
        .collect();
    Tensor::from_vec(v, shape, device)?.to_dtype(dtype)
}
