//! Scaled dot-product attention of HF BERT's eager path, fused per (batch, head):
//! `ctx = dropout(softmax(scale·Q·Kᵀ + mask))·V`, with Q, K, V and ctx in the (B, S, H) layout
//! the linears produce (head j = columns j·dh..(j+1)·dh, read through strided views: no
//! transposes, no copies). The backward pass recomputes the probabilities (and redraws the
//! dropout mask) per head instead of keeping a (B, heads, S, S) tensor alive:
//! `dV = Pdᵀ·dO`, `dP = (dO·Vᵀ) ⊙ M`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))·scale`, `dQ = dS·K`,
//! `dK = dSᵀ·Q`.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{matmul, Mat, MatMut};
use super::{host_f32, storage_like, tensor_of, with_host_f32};
use crate::nn::dropout::DropMask;

struct AttentionOp {
    heads: usize,
    scale: f64,
    /// Additive mask per (batch, key position), e.g. 0 or `finfo.min`.
    mask: Arc<Vec<f32>>,
    dropout: Option<DropMask>,
}

/// A raw pointer that parallel tasks use to write disjoint blocks of one output buffer.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint (batch, head) column blocks; see the uses below.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer `off` elements in (a method, so closures capture the Sync wrapper rather
    /// than its raw-pointer field).
    fn at(self, off: usize) -> *mut f32 {
        self.0.wrapping_add(off)
    }
}

impl AttentionOp {
    fn dims(&self, l: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (b, s, h) = l.shape().dims3()?;
        if self.heads == 0 || h % self.heads != 0 || self.mask.len() != b * s {
            candle_core::bail!(
                "fused attention: hidden {h} / heads {} / mask {} for batch {b} × seq {s}",
                self.heads,
                self.mask.len()
            );
        }
        Ok((b, s, h, h / self.heads))
    }

    /// Probabilities P (s × s, row-major) of one (batch, head), into `p`.
    fn probs(
        &self,
        q: &[f32],
        k: &[f32],
        bi: usize,
        j: usize,
        dims: (usize, usize, usize),
        p: &mut [f32],
    ) {
        let (s, h, dh) = dims;
        let base = bi * s * h + j * dh;
        let mut dst = MatMut::new(p, 0, s, s, s);
        let qm = Mat::new(q, base, s, dh, h, 1);
        let kt = Mat::new(k, base, s, dh, h, 1).t();
        matmul(&mut dst, false, qm, kt, self.scale as f32, false);
        let mask = &self.mask[bi * s..(bi + 1) * s];
        for row in p.chunks_exact_mut(s) {
            let mut max = f32::NEG_INFINITY;
            for (v, m) in row.iter_mut().zip(mask) {
                *v += m;
                max = max.max(*v);
            }
            let mut sum = 0f32;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            for v in row.iter_mut() {
                *v /= sum;
            }
        }
    }

    /// Dropout multipliers of one (batch, head) block, element (i, t) at global index
    /// ((bi·heads + j)·s + i)·s + t, as the composite graph's (B, heads, S, S) tensor.
    fn drop_block(&self, task: usize, s: usize, p: &[f32], out: &mut [f32]) {
        match &self.dropout {
            Some(m) => m.apply_at(task * s * s, p, out),
            None => out.copy_from_slice(p),
        }
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, s, h, dh) = self.dims(lq)?;
        if lk.dims() != lq.dims() || lv.dims() != lq.dims() {
            candle_core::bail!("fused attention: q/k/v shapes differ");
        }
        let (q, k, v) = (host_f32(sq, lq)?, host_f32(sk, lk)?, host_f32(sv, lv)?);
        let mut out = vec![0f32; b * s * h];
        let shared = SharedOut(out.as_mut_ptr());
        (0..b * self.heads).into_par_iter().for_each_init(
            || (vec![0f32; s * s], vec![0f32; s * s]),
            |(p, pd), task| {
                let (bi, j) = (task / self.heads, task % self.heads);
                self.probs(&q, &k, bi, j, (s, h, dh), p);
                self.drop_block(task, s, p, pd);
                let base = bi * s * h + j * dh;
                // SAFETY: task (bi, j) is the only writer of rows bi·s.., columns j·dh.. of out,
                // which lie inside the b·s·h buffer.
                let mut dst = unsafe { MatMut::from_raw(shared.at(base), s, dh, h) };
                matmul(
                    &mut dst,
                    false,
                    Mat::new(pd, 0, s, s, s, 1),
                    Mat::new(&v, base, s, dh, h, 1),
                    1.0,
                    false,
                );
            },
        );
        Ok((storage_like(out, sq), lq.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        super::first_order_only(self.name(), grad)?;
        let (b, s, h, dh) = self.dims(q.layout())?;
        let n = b * s * h;
        let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let outs = (
            SharedOut(dq.as_mut_ptr()),
            SharedOut(dk.as_mut_ptr()),
            SharedOut(dv.as_mut_ptr()),
        );
        let scale = self.scale as f32;
        with_host_f32(q, |q| {
            with_host_f32(k, |k| {
                with_host_f32(v, |v| {
                    with_host_f32(grad, |g| {
                        (0..b * self.heads).into_par_iter().for_each_init(
                            || (vec![0f32; s * s], vec![0f32; s * s], vec![0f32; s * s]),
                            |(p, pd, dp), task| {
                                let (bi, j) = (task / self.heads, task % self.heads);
                                let base = bi * s * h + j * dh;
                                self.probs(q, k, bi, j, (s, h, dh), p);
                                self.drop_block(task, s, p, pd);
                                let go = Mat::new(g, base, s, dh, h, 1);
                                // SAFETY: as in the forward pass, task (bi, j) alone writes its
                                // column block of dq, dk, dv.
                                let mut dvm =
                                    unsafe { MatMut::from_raw(outs.2.at(base), s, dh, h) };
                                matmul(
                                    &mut dvm,
                                    false,
                                    Mat::new(pd, 0, s, s, s, 1).t(),
                                    go,
                                    1.0,
                                    false,
                                );
                                let mut dpm = MatMut::new(dp, 0, s, s, s);
                                matmul(
                                    &mut dpm,
                                    false,
                                    go,
                                    Mat::new(v, base, s, dh, h, 1).t(),
                                    1.0,
                                    false,
                                );
                                if let Some(m) = &self.dropout {
                                    let start = task * s * s;
                                    for (i, x) in dp.iter_mut().enumerate() {
                                        *x *= m.factor(start + i);
                                    }
                                }
                                for (prow, drow) in p.chunks_exact(s).zip(dp.chunks_exact_mut(s)) {
                                    let dot: f32 =
                                        prow.iter().zip(drow.iter()).map(|(a, b)| a * b).sum();
                                    for (d, pv) in drow.iter_mut().zip(prow) {
                                        *d = pv * (*d - dot) * scale;
                                    }
                                }
                                let ds = Mat::new(dp, 0, s, s, s, 1);
                                let mut dqm =
                                    unsafe { MatMut::from_raw(outs.0.at(base), s, dh, h) };
                                matmul(
                                    &mut dqm,
                                    false,
                                    ds,
                                    Mat::new(k, base, s, dh, h, 1),
                                    1.0,
                                    false,
                                );
                                let mut dkm =
                                    unsafe { MatMut::from_raw(outs.1.at(base), s, dh, h) };
                                matmul(
                                    &mut dkm,
                                    false,
                                    ds.t(),
                                    Mat::new(q, base, s, dh, h, 1),
                                    1.0,
                                    false,
                                );
                            },
                        );
                        Ok(())
                    })
                })
            })
        })?;
        let dims = q.dims();
        let grad_of = |v: Vec<f32>, t: &Tensor| -> Result<Option<Tensor>> {
            t.track_op()
                .then(|| tensor_of(v, dims, t.dtype()))
                .transpose()
        };
        Ok((grad_of(dq, q)?, grad_of(dk, k)?, grad_of(dv, v)?))
    }
}

/// Fused attention over q, k, v of shape (B, S, H) with `heads` heads, additive key mask
/// (B·S values) and optional dropout on the probabilities. Returns the context (B, S, H).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    mask: Arc<Vec<f32>>,
    dropout: Option<DropMask>,
) -> Result<Tensor> {
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        AttentionOp {
            heads,
            scale,
            mask,
            dropout,
        },
    )
}
