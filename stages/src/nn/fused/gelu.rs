//! Exact (erf) GELU, `0.5·x·(1 + erf(x/√2))`, as candle's `gelu_erf` computes it, with the
//! analytic derivative `0.5·(1 + erf(x/√2)) + x·φ(x)` in one pass instead of candle's chain of
//! full-size temporaries.

use candle_core::cpu::erf::erf_f32;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{host_f32, storage_like, tensor_of, with_host_f32};

const CHUNK: usize = 1 << 14;
/// 1/√(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;

struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "fused-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = host_f32(s, l)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, v)| {
                for (o, &v) in o.iter_mut().zip(v) {
                    *o = (erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * v;
                }
            });
        Ok((storage_like(y, s), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_host_f32(x, |xv| {
            with_host_f32(grad, |g| {
                let mut dx = vec![0f32; xv.len()];
                dx.par_chunks_mut(CHUNK)
                    .zip(xv.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                    .for_each(|(o, (xs, gs))| {
                        for ((o, &v), &gv) in o.iter_mut().zip(xs).zip(gs) {
                            let cdf = 0.5 * (1.0 + erf_f32(v * std::f32::consts::FRAC_1_SQRT_2));
                            let pdf = INV_SQRT_2PI * (-0.5 * v * v).exp();
                            *o = gv * (cdf + v * pdf);
                        }
                    });
                Ok(dx)
            })
        })?;
        tensor_of(dx, x.dims(), x.dtype()).map(Some)
    }
}

/// Exact GELU (f32/bf16 on the CPU).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluOp)
}
