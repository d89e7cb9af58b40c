//! `y = x·Wᵀ + b` for a frozen base weight `W` (out × in), alone or with a whole low-rank
//! adapter branch fused in. The backward pass returns `dx` (skipped when `x` carries no
//! gradient) and the adapter's gradients, and never forms the gradient of the frozen `W`, which
//! candle's matmul backward always computes; the branch's full-size intermediates (`dx` through
//! A, the sum of the two `dx` terms) stay inside the kernel.

use std::borrow::Cow;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{matmul, Mat, MatMut};
use super::{host_f32, storage_like, tensor_of, with_host_f32};
use crate::nn::dropout::DropMask;

const CHUNK: usize = 1 << 14;

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
        super::first_order_only(self.name(), grad)?;
        self.0.grad_input(x, grad)
    }
}

/// The low-rank branch `s·((x ⊙ m)·Aᵀ ⊙ g)·Bᵀ`: A (r × in), per-rank gain g (r), B (out × r),
/// packed as one vector `[A, g, B]` so a single graph input carries all three gradients.
struct AdaptedOp {
    frozen: Frozen,
    rank: usize,
    scale: f64,
    dropout: Option<DropMask>,
}

impl AdaptedOp {
    fn split<'a>(&self, packed: &'a [f32]) -> Result<(&'a [f32], &'a [f32], &'a [f32])> {
        let (r, inp, out) = (self.rank, self.frozen.in_dim(), self.frozen.out_dim());
        if packed.len() != r * inp + r + r * out {
            candle_core::bail!(
                "fused adapted linear: packed adapter of {} values for rank {r}, {inp} → {out}",
                packed.len()
            );
        }
        let (a, rest) = packed.split_at(r * inp);
        let (g, b) = rest.split_at(r);
        Ok((a, g, b))
    }

    /// The adapter input `x ⊙ m` (x itself without dropout).
    fn adapter_input<'a>(&self, x: &'a [f32]) -> Cow<'a, [f32]> {
        match &self.dropout {
            None => Cow::Borrowed(x),
            Some(m) => {
                let mut xd = vec![0f32; x.len()];
                xd.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK))
                    .enumerate()
                    .for_each(|(c, (o, v))| m.apply_at(c * CHUNK, v, o));
                Cow::Owned(xd)
            }
        }
    }

    /// `(x ⊙ m)·Aᵀ` (rows × r).
    fn down(&self, xd: &[f32], a: &[f32], rows: usize) -> Vec<f32> {
        let (r, inp) = (self.rank, self.frozen.in_dim());
        let mut down = vec![0f32; rows * r];
        let mut dst = MatMut::new(&mut down, 0, rows, r, r);
        matmul(
            &mut dst,
            false,
            Mat::new(xd, 0, rows, inp, inp, 1),
            Mat::new(a, 0, r, inp, inp, 1).t(),
            1.0,
            true,
        );
        down
    }
}

impl CustomOp2 for AdaptedOp {
    fn name(&self) -> &'static str {
        "fused-adapted-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sp: &CpuStorage,
        lp: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = self.frozen.out_shape(lx)?;
        let (r, out) = (self.rank, self.frozen.out_dim());
        let x = host_f32(sx, lx)?;
        let packed = host_f32(sp, lp)?;
        let (a, g, b) = self.split(&packed)?;
        let rows = x.len() / self.frozen.in_dim();
        let mut y = self.frozen.forward(&x, rows)?;
        let mut down = self.down(&self.adapter_input(&x), a, rows);
        for row in down.chunks_exact_mut(r) {
            for (d, gv) in row.iter_mut().zip(g) {
                *d *= gv;
            }
        }
        let mut dst = MatMut::new(&mut y, 0, rows, out, out);
        matmul(
            &mut dst,
            true,
            Mat::new(&down, 0, rows, r, r, 1),
            Mat::new(b, 0, out, r, r, 1).t(),
            self.scale as f32,
            true,
        );
        Ok((storage_like(y, sx), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        super::first_order_only(self.name(), grad)?;
        let (r, inp, out) = (self.rank, self.frozen.in_dim(), self.frozen.out_dim());
        let s = self.scale as f32;
        let rows = grad.elem_count() / out;
        let (dx, dpacked) = with_host_f32(x, |xv| {
            with_host_f32(packed, |pv| {
                with_host_f32(grad, |gy| {
                    let (a, g, b) = self.split(pv)?;
                    let xd = self.adapter_input(xv);
                    let down = self.down(&xd, a, rows);
                    // t = dy·B (rows × r)
                    let mut t = vec![0f32; rows * r];
                    let gym = Mat::new(gy, 0, rows, out, out, 1);
                    matmul(
                        &mut MatMut::new(&mut t, 0, rows, r, r),
                        false,
                        gym,
                        Mat::new(b, 0, out, r, r, 1),
                        1.0,
                        true,
                    );
                    let mut dp = vec![0f32; pv.len()];
                    let (da, rest) = dp.split_at_mut(r * inp);
                    let (dg, db) = rest.split_at_mut(r);
                    // dg_k = s·Σ_i t_ik·down_ik, rows in order (deterministic).
                    for (trow, drow) in t.chunks_exact(r).zip(down.chunks_exact(r)) {
                        for ((acc, tv), dv) in dg.iter_mut().zip(trow).zip(drow) {
                            *acc += tv * dv;
                        }
                    }
                    dg.iter_mut().for_each(|v| *v *= s);
                    // dB = s·dyᵀ·(down ⊙ g); then t ← s·t ⊙ g, dA = tᵀ·(x ⊙ m).
                    let mut down_g = down;
                    for row in down_g.chunks_exact_mut(r) {
                        for (d, gv) in row.iter_mut().zip(g) {
                            *d *= gv;
                        }
                    }
                    matmul(
                        &mut MatMut::new(db, 0, out, r, r),
                        false,
                        gym.t(),
                        Mat::new(&down_g, 0, rows, r, r, 1),
                        s,
                        true,
                    );
                    for row in t.chunks_exact_mut(r) {
                        for (tv, gv) in row.iter_mut().zip(g) {
                            *tv *= s * gv;
                        }
                    }
                    let tm = Mat::new(&t, 0, rows, r, r, 1);
                    matmul(
                        &mut MatMut::new(da, 0, r, inp, inp),
                        false,
                        tm.t(),
                        Mat::new(&xd, 0, rows, inp, inp, 1),
                        1.0,
                        true,
                    );
                    let dx = if x.track_op() {
                        // dx = dy·W + (t·A) ⊙ m
                        let mut dx = vec![0f32; rows * inp];
                        let am = Mat::new(a, 0, r, inp, inp, 1);
                        matmul(
                            &mut MatMut::new(&mut dx, 0, rows, inp, inp),
                            false,
                            tm,
                            am,
                            1.0,
                            true,
                        );
                        if let Some(m) = &self.dropout {
                            dx.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
                                for (j, v) in o.iter_mut().enumerate() {
                                    *v *= m.factor(c * CHUNK + j);
                                }
                            });
                        }
                        with_host_f32(&self.frozen.weight, |w| {
                            let wm = Mat::new(w, 0, out, inp, inp, 1);
                            matmul(
                                &mut MatMut::new(&mut dx, 0, rows, inp, inp),
                                true,
                                gym,
                                wm,
                                1.0,
                                true,
                            );
                            Ok(())
                        })?;
                        Some(dx)
                    } else {
                        None
                    };
                    Ok((dx, dp))
                })
            })
        })?;
        let dx = dx.map(|v| tensor_of(v, x.dims(), x.dtype())).transpose()?;
        let dp = packed
            .track_op()
            .then(|| tensor_of(dpacked, packed.dims(), packed.dtype()))
            .transpose()?;
        Ok((dx, dp))
    }
}

/// `x·Wᵀ + b` with `W`, `b` frozen (plain tensors), `x` of shape (…, in). f32/bf16 on CPU.
pub fn frozen_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    x.contiguous()?.apply_op1(FrozenLinearOp(Frozen {
        weight: weight.clone(),
        bias: bias.cloned(),
    }))
}

/// `x·Wᵀ + b + scale·(((x ⊙ m)·Aᵀ) ⊙ g)·Bᵀ` with `W`, `b` frozen: the adapted linear of LoRA
/// (g = 1), BayesTune-LoRA (g = λ) and AdaLoRA (g = E, since `x·(A ⊙ E)ᵀ = (x·Aᵀ) ⊙ Eᵀ`), with
/// adapter-input dropout `m`. A (r × in), g (r), B (out × r) may be trainable; output dtype is
/// `x`'s.
#[allow(clippy::too_many_arguments)]
pub fn adapted_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    a: &Tensor,
    g: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<DropMask>,
) -> Result<Tensor> {
    let rank = a.dim(0)?;
    let dt = a.dtype();
    let packed = Tensor::cat(
        &[
            a.flatten_all()?,
            g.flatten_all()?.to_dtype(dt)?,
            b.flatten_all()?.to_dtype(dt)?,
        ],
        0,
    )?;
    x.contiguous()?.apply_op2(
        &packed,
        AdaptedOp {
            frozen: Frozen {
                weight: weight.clone(),
                bias: bias.cloned(),
            },
            rank,
            scale,
            dropout,
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
