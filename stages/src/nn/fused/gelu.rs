//! Exact (erf) GELU, `0.5·x·(1 + erf(x/√2))`, with the analytic derivative
//! `0.5·(1 + erf(x/√2)) + x·φ(x)` in one pass instead of candle's chain of full-size
//! temporaries. erf is Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7), the approximation
//! PyTorch's vectorised CPU `erf` uses; its `exp(−x²/2)` is also φ's, so the backward pass
//! needs one exponential per element.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{host_f32, storage_like, tensor_of, with_host_f32};

const CHUNK: usize = 1 << 14;
/// 1/√(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// (erf(v/√2), exp(−v²/2)) by A&S 7.1.26.
#[inline]
fn erf_and_gauss(v: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let u = (v * std::f32::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / (1.0 + P * u);
    let poly = ((((A[4] * t + A[3]) * t + A[2]) * t + A[1]) * t + A[0]) * t;
    let g = (-0.5 * v * v).exp();
    let e = 1.0 - poly * g;
    (if v < 0.0 { -e } else { e }, g)
}

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
                    *o = (erf_and_gauss(v).0 + 1.) * 0.5 * v;
                }
            });
        Ok((storage_like(y, s), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        super::first_order_only(self.name(), grad)?;
        let dx = with_host_f32(x, |xv| {
            with_host_f32(grad, |g| {
                let mut dx = vec![0f32; xv.len()];
                dx.par_chunks_mut(CHUNK)
                    .zip(xv.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                    .for_each(|(o, (xs, gs))| {
                        for ((o, &v), &gv) in o.iter_mut().zip(xs).zip(gs) {
                            let (erf, gauss) = erf_and_gauss(v);
                            let cdf = 0.5 * (1.0 + erf);
                            let pdf = INV_SQRT_2PI * gauss;
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
