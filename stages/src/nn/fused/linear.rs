//! `y = x·Wᵀ + b (+ s·down·Bᵀ)` for a frozen base weight `W` (out × in): the base linear of an
//! adapted layer fused with the up-projection of its low-rank branch. The backward pass returns
//! `dx = dy·W` (skipped when `x` carries no gradient), `d down = s·dy·B` and `dB = s·dyᵀ·down`,
//! and never forms the gradient of the frozen `W`, which candle's matmul backward always does.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::gemm::{matmul, Mat, MatMut};
use super::{host_f32, storage_like, with_host_f32};

/// The frozen part: weight (out × in) and optional bias (out).
#[derive(Clone)]
struct Frozen {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Frozen {
    fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Output shape for an input of shape `x` (…, in).
    fn out_shape(&self, x: &Layout) -> Result<Shape> {
        let mut dims = x.dims().to_vec();
        match dims.last_mut() {
            Some(d) if *d == self.in_dim() => *d = self.out_dim(),
            _ => candle_core::bail!(
                "fused linear: input {:?} does not end in {}",
                x.dims(),
                self.in_dim()
            ),
        }
        Ok(Shape::from(dims))
    }

    /// `bias` broadcast over `rows`, then `+= x·Wᵀ`.
    fn forward(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let (out, inp) = (self.out_dim(), self.in_dim());
        let mut y = match &self.bias {
            Some(b) => with_host_f32(b, |b| Ok(b.repeat(rows)))?,
            None => vec![0f32; rows * out],
        };
        with_host_f32(&self.weight, |w| {
            let mut dst = MatMut::new(&mut y, 0, rows, out, out);
            // Wᵀ as a strided view of the row-major (out × in) weight.
            let wt = Mat::new(w, 0, out, inp, inp, 1).t();
            matmul(
                &mut dst,
                self.bias.is_some(),
                Mat::new(x, 0, rows, inp, inp, 1),
                wt,
                1.0,
                true,
            );
            Ok(())
        })?;
        Ok(y)
    }

    /// `dy·W` reshaped like `x`, or None when `x` needs no gradient.
    fn grad_input(&self, x: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let rows = grad.elem_count() / self.out_dim();
        let w = self.weight.to_dtype(grad.dtype())?;
        let dx = grad.reshape((rows, self.out_dim()))?.matmul(&w)?;
        Ok(Some(dx.reshape(x.shape())?))
    }
}

struct FrozenLinearOp(Frozen);

impl CustomOp1 for FrozenLinearOp {
    fn name(&self) -> &'static str {
        "fused-frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = self.0.out_shape(l)?;
        let x = host_f32(s, l)?;
        let rows = x.len() / self.0.in_dim();
        let y = self.0.forward(&x, rows)?;
        Ok((storage_like(y, s), shape))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        self.0.grad_input(x, grad)
    }
}

struct FrozenLowRankOp {
    frozen: Frozen,
    scale: f64,
}

impl CustomOp3 for FrozenLowRankOp {
    fn name(&self) -> &'static str {
        "fused-frozen-linear-low-rank"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sd: &CpuStorage,
        ld: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = self.frozen.out_shape(lx)?;
        let out = self.frozen.out_dim();
        let x = host_f32(sx, lx)?;
        let rows = x.len() / self.frozen.in_dim();
        let r = ld.dims().last().copied().unwrap_or(0);
        if lb.dims() != [out, r] || ld.shape().elem_count() != rows * r {
            candle_core::bail!(
                "fused low-rank linear: down {:?} / B {:?} do not fit rows {rows}, out {out}",
                ld.dims(),
                lb.dims()
            );
        }
        let mut y = self.frozen.forward(&x, rows)?;
        let down = host_f32(sd, ld)?;
        let b = host_f32(sb, lb)?;
        let mut dst = MatMut::new(&mut y, 0, rows, out, out);
        matmul(
            &mut dst,
            true,
            Mat::new(&down, 0, rows, r, r, 1),
            Mat::new(&b, 0, out, r, r, 1).t(),
            self.scale as f32,
            true,
        );
        Ok((storage_like(y, sx), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        down: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = self.frozen.grad_input(x, grad)?;
        let out = self.frozen.out_dim();
        let r = b.dim(1)?;
        let rows = grad.elem_count() / out;
        let g = grad.reshape((rows, out))?.to_dtype(b.dtype())?;
        let d2 = down.reshape((rows, r))?.to_dtype(b.dtype())?;
        let d_down = (g.matmul(b)? * self.scale)?
            .reshape(down.shape())?
            .to_dtype(down.dtype())?;
        let d_b = (g.t()?.matmul(&d2)? * self.scale)?;
        Ok((dx, Some(d_down), Some(d_b)))
    }
}

/// `x·Wᵀ + b` with `W`, `b` frozen (plain tensors), `x` of shape (…, in). f32/bf16 on CPU.
pub fn frozen_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    x.contiguous()?.apply_op1(FrozenLinearOp(Frozen {
        weight: weight.clone(),
        bias: bias.cloned(),
    }))
}

/// `x·Wᵀ + b + scale·down·Bᵀ` with `W`, `b` frozen; `down` (…, r) and `B` (out × r) may be
/// trainable and get gradients. Output dtype is `x`'s.
pub fn frozen_linear_low_rank(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    down: &Tensor,
    b: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &down.contiguous()?,
        &b.contiguous()?,
        FrozenLowRankOp {
            frozen: Frozen {
                weight: weight.clone(),
                bias: bias.cloned(),
            },
            scale,
        },
    )
}

/// Whether the fused frozen linear applies: CPU f32/bf16 input and a weight (and bias) that is
/// not trained.
pub fn applies(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    super::supported(x)
        && super::supported(weight)
        && !weight.track_op()
        && bias.is_none_or(|b| !b.track_op())
        && x.dtype() != DType::F64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::linear_forward;
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        crate::peft::lora::normal_tensor(
            seed,
            (shape.iter().product::<usize>(), 1),
            1.0,
            &Device::Cpu,
            DType::F32,
        )
        .unwrap()
        .reshape(shape)
        .unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Fused vs composite graph: forward and every gradient within 1e-5 absolute (values O(1),
    /// differences are f32 summation-order rounding).
    #[test]
    fn fused_low_rank_linear_matches_composite_graph() {
        let (rows, inp, out, r) = (37, 24, 20, 4);
        let w = randn(&[out, inp], 1);
        let bias = randn(&[out], 2);
        let x = Var::from_tensor(&randn(&[rows / 37, 37, inp], 3)).unwrap();
        let down = Var::from_tensor(&randn(&[1, rows, r], 4)).unwrap();
        let b = Var::from_tensor(&randn(&[out, r], 5)).unwrap();
        let probe = randn(&[1, rows, out], 6);
        let fused = frozen_linear_low_rank(
            x.as_tensor(),
            &w,
            Some(&bias),
            down.as_tensor(),
            b.as_tensor(),
            0.5,
        )
        .unwrap();
        let composite = (linear_forward(x.as_tensor(), &w, Some(&bias)).unwrap()
            + (linear_forward(down.as_tensor(), b.as_tensor(), None).unwrap() * 0.5).unwrap())
        .unwrap();
        assert!(max_abs_diff(&fused, &composite) < 1e-5);
        let gf = (fused * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = (composite * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &down, &b] {
            let (a, c) = (
                gf.get(v.as_tensor()).unwrap(),
                gc.get(v.as_tensor()).unwrap(),
            );
            assert!(
                max_abs_diff(a, c) < 1e-5,
                "gradient differs by {}",
                max_abs_diff(a, c)
            );
        }
        let plain = frozen_linear(x.as_tensor(), &w, None).unwrap();
        let want = linear_forward(x.as_tensor(), &w, None).unwrap();
        assert!(max_abs_diff(&plain, &want) < 1e-5);
    }
}
