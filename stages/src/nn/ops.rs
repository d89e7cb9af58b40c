//! Differentiable tensor operations: fused CPU kernels ([`super::fused`]) where they apply, else
//! graphs of candle primitives (which all have gradients).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, MetalStorage, Shape};
use candle_core::{DType, Result, Tensor, D};

use super::dropout::{apply_mask, DropMask};
use super::fused;

/// `x · Wᵀ + b` for `x` of shape (…, in) and `W` of shape (out, in), as `torch.nn.Linear`.
/// Leading dimensions are flattened so one 2-D GEMM runs with `Wᵀ` as a strided view (no copy).
/// A weight outside autograd (frozen base, merged weight) goes through [`FrozenRhsMatmul`]
/// (where the fused kernels do not apply: other devices, second-order graphs).
pub fn linear_forward(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = xs.dims().to_vec();
    let in_dim = *dims
        .last()
        .expect("linear input has at least one dimension");
    let rows = xs.elem_count() / in_dim.max(1);
    let x2 = xs.reshape((rows, in_dim))?;
    let mut y = if weight.track_op() {
        x2.matmul(&weight.t()?)?
    } else {
        x2.apply_op2(weight, FrozenRhsMatmul)?
    };
    if let Some(b) = bias {
        y = y.broadcast_add(b)?;
    }
    let mut out_dims = dims;
    *out_dims.last_mut().expect("non-empty") = weight.dim(0)?;
    y.reshape(out_dims)
}

/// `x · Wᵀ` (x: rows × in, W: out × in) whose backward pass returns only ∂/∂x = g · W.
/// candle's matmul backward also forms ∂/∂W for a weight that no gradient is asked of: for a
/// frozen base under LoRA that is a third of every training step's FLOPs (and a weight-sized
/// gradient buffer per linear). The forward runs the very GEMM of `x.matmul(&w.t())` (same
/// layouts), so values are bit-identical to the plain path; its backward is itself a candle
/// matmul, so second-order gradients (FedL2P's Hessian-vector products) pass through it.
struct FrozenRhsMatmul;

impl FrozenRhsMatmul {
    fn fwd<S: BackendStorage>(x: &S, xl: &Layout, w: &S, wl: &Layout) -> Result<(S, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (n, k2) = wl.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("linear: input has {k} features, weight expects {k2}");
        }
        let y = x.matmul(w, (1, m, n, k), xl, &wl.transpose(0, 1)?)?;
        Ok((y, Shape::from((m, n))))
    }
}

impl CustomOp2 for FrozenRhsMatmul {
    fn name(&self) -> &'static str {
        "frozen-rhs-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Self::fwd(x, xl, w, wl)
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        Self::fwd(x, xl, w, wl)
    }

    fn metal_fwd(
        &self,
        x: &MetalStorage,
        xl: &Layout,
        w: &MetalStorage,
        wl: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        Self::fwd(x, xl, w, wl)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), None))
    }
}

/// `torch.nn.LayerNorm` over the last dimension (biased variance, eps inside the sqrt).
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if fused::supported(xs) {
        return fused::norm::layer_norm(xs, &Tensor::cat(&[weight, bias], 0)?, eps);
    }
    layer_norm_composite(xs, weight, bias, eps)
}

/// [`layer_norm`] as a graph of candle primitives (other devices; the fused kernel's reference).
pub fn layer_norm_composite(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centered = xs.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// BERT's post-LN residual block output `LayerNorm(dropout(a) + residual)`.
pub fn residual_layer_norm(
    a: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    dropout: Option<DropMask>,
) -> Result<Tensor> {
    if fused::supported(a) && a.dtype() == residual.dtype() {
        let wb = Tensor::cat(&[weight, bias], 0)?;
        return fused::norm::residual_layer_norm(a, residual, &wb, eps, dropout);
    }
    let a = match dropout {
        Some(m) => apply_mask(a, m)?,
        None => a.clone(),
    };
    layer_norm_composite(&(a + residual)?, weight, bias, eps)
}

/// Exact (erf) GELU.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    if fused::supported(xs) {
        return fused::gelu::gelu_erf(xs);
    }
    xs.gelu_erf()
}

/// HF BERT eager self-attention on q, k, v of shape (B, S, H) with `heads` heads:
/// `dropout(softmax(q·kᵀ/√dh + ext))·v`, where `ext` (B, S) is the additive key mask
/// ((1 − mask)·finfo.min). Returns the context (B, S, H).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    ext: &Tensor,
    heads: usize,
    dropout: Option<DropMask>,
) -> Result<Tensor> {
    let (b, s, h) = q.dims3()?;
    let scale = 1.0 / ((h / heads.max(1)) as f64).sqrt();
    if fused::supported(q) && q.dtype() == k.dtype() && q.dtype() == v.dtype() {
        let mask = ext.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        return fused::attention::attention(q, k, v, heads, scale, Arc::new(mask), dropout);
    }
    let dh = h / heads;
    let split = |t: &Tensor| -> Result<Tensor> {
        t.reshape((b, s, heads, dh))?.transpose(1, 2)?.contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let ext = ext.to_dtype(q.dtype())?.reshape((b, 1, 1, s))?;
    let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&ext)?;
    let probs = softmax_last_dim(&scores)?;
    let probs = match dropout {
        Some(m) => apply_mask(&probs, m)?,
        None => probs,
    };
    probs
        .matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, s, h))
}

/// Softmax over the last dimension with max subtraction; differentiable (candle-nn's fused
/// `softmax_last_dim` has no backward).
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(xs, D::Minus1)
}

/// Clamp to [lo, hi] in the forward pass with a straight-through (identity) gradient, like the
/// reference's `ClampSTE` (PAPER_NOTES §3, §5). Written as `x + detach(clamp(x) − x)`: where no
/// clamping happens the added term is exactly 0, so the value is bit-exact; where it clamps the
/// value may differ from `lo`/`hi` by one rounding (≤ 1 ulp of the bound).
pub fn ste_clamp(xs: &Tensor, lo: f64, hi: f64) -> Result<Tensor> {
    let clamped = xs.clamp(lo, hi)?;
    let delta = (clamped - xs)?.detach();
    xs + delta
}

/// |x| whose gradient is PyTorch's `sgn(x)`: 0 where x = 0. candle's `abs` backward gives +1
/// there, which at B = 0 (every BayesTune start) turns the Laplace prior's (100/N)/λ̃ into a
/// gradient on every B entry: Adam then moves all entries by exactly lr, Σ_i |B_ij| is the same
/// for every rank j, and Stage 1's λ come out as one value (the e5 run's first diagnosis).
/// The forward is bit-identical to `abs` (x · ±1, and 0 · 0 = 0).
pub fn abs_l1(xs: &Tensor) -> Result<Tensor> {
    xs * xs.sign()?.detach()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn abs_l1_has_torch_subgradient_at_zero() {
        let x = Var::from_slice(&[-2f32, 0.0, 3.0], 3, &Device::Cpu).unwrap();
        let y = abs_l1(x.as_tensor()).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), vec![2.0, 0.0, 3.0]);
        let g = y.sum_all().unwrap().backward().unwrap();
        let gv: Vec<f32> = g.get(x.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(gv, vec![-1.0, 0.0, 1.0]); // torch.abs backward: sgn(x)
    }

    #[test]
    fn frozen_weight_linear_equals_plain_matmul_and_skips_its_gradient() {
        use crate::nn::normal_tensor;
        let dev = Device::Cpu;
        let f32 = candle_core::DType::F32;
        let x = Var::from_tensor(&normal_tensor(1, (6, 5), 1.0, &dev, f32).unwrap()).unwrap();
        let w = normal_tensor(2, (3, 5), 1.0, &dev, f32).unwrap();
        let b = normal_tensor(3, (1, 3), 1.0, &dev, f32)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let xs = x.as_tensor().reshape((2, 3, 5)).unwrap();
        let y = linear_forward(&xs, &w, Some(&b)).unwrap();
        let plain = xs
            .reshape((6, 5))
            .unwrap()
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap()
            .reshape((2, 3, 3))
            .unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&y), flat(&plain), "same GEMM, same bits");
        let up = normal_tensor(4, (2, 9), 1.0, &dev, f32)
            .unwrap()
            .reshape((2, 3, 3));
        let loss = |t: &Tensor| (t * up.as_ref().unwrap()).unwrap().sum_all().unwrap();
        let g = loss(&y).backward().unwrap();
        let gp = loss(&plain).backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap();
        let gxp = gp.get(x.as_tensor()).unwrap();
        let e = (gx - gxp).unwrap().abs().unwrap().max_all().unwrap();
        assert!(e.to_scalar::<f32>().unwrap() < 1e-6);
        assert!(
            g.get(&w).is_none(),
            "no gradient formed for the frozen weight"
        );
        // A trainable weight keeps the plain path and gets its gradient.
        let wv = Var::from_tensor(&w).unwrap();
        let gw = loss(&linear_forward(&xs, wv.as_tensor(), Some(&b)).unwrap())
            .backward()
            .unwrap();
        assert!(gw.get(wv.as_tensor()).is_some());
    }

    #[test]
    fn ste_clamp_passes_gradient_through() {
        let x = Var::from_slice(&[1e-6f32, 0.5, 2000.0], 3, &Device::Cpu).unwrap();
        let y = ste_clamp(x.as_tensor(), 1e-4, 1000.0).unwrap();
        let v: Vec<f32> = y.to_vec1().unwrap();
        assert!((v[0] - 1e-4).abs() < 1e-10 && v[1] == 0.5 && v[2] == 1000.0);
        let g = (y * 3.0).unwrap().sum_all().unwrap().backward().unwrap();
        let gv: Vec<f32> = g.get(x.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(gv, vec![3.0, 3.0, 3.0]);
    }

    #[test]
    fn layer_norm_normalises() {
        let x = Tensor::new(&[[1f32, 2.0, 3.0, 6.0]], &Device::Cpu).unwrap();
        let w = Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let y: Vec<f32> = layer_norm(&x, &w, &b, 0.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mean: f32 = y.iter().sum::<f32>() / 4.0;
        let var: f32 = y.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
    }
}
