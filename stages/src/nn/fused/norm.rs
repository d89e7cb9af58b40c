//! `torch.nn.LayerNorm` over the last dimension (biased variance, eps inside the sqrt), alone or
//! as BERT's post-LN residual `LayerNorm(dropout(a) + residual)`, as one op. The backward pass
//! recomputes the row statistics from the input:
//! `dz = rstd·(g·w − mean(g·w) − x̂·mean(g·w·x̂))`, `dw = Σ g·x̂`, `db = Σ g`, `da = dz ⊙ mask`,
//! `d residual = dz`. Weight and bias travel as one (2·H) tensor `[w, b]`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{host_f32, storage_like, tensor_of, with_host_f32, ROW_CHUNK};
use crate::nn::dropout::DropMask;

#[derive(Clone, Copy)]
struct Norm {
    eps: f64,
    dropout: Option<DropMask>,
}

impl Norm {
    /// z = a⊙m (+ r) of row `row` into `z`.
    fn input_row(&self, a: &[f32], r: Option<&[f32]>, row: usize, z: &mut [f32]) {
        let h = z.len();
        let span = row * h..(row + 1) * h;
        match self.dropout {
            Some(m) => m.apply_at(row * h, &a[span.clone()], z),
            None => z.copy_from_slice(&a[span.clone()]),
        }
        if let Some(r) = r {
            for (zv, rv) in z.iter_mut().zip(&r[span]) {
                *zv += rv;
            }
        }
    }

    /// (mean, 1/sqrt(var + eps)) of one row, two-pass.
    fn stats(&self, z: &[f32]) -> (f32, f32) {
        let n = z.len() as f32;
        let mean = z.iter().sum::<f32>() / n;
        let var = z.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        (mean, 1.0 / (var + self.eps as f32).sqrt())
    }

    fn forward(&self, a: &[f32], r: Option<&[f32]>, wb: &[f32]) -> Vec<f32> {
        let h = wb.len() / 2;
        let (w, b) = wb.split_at(h);
        let mut y = vec![0f32; a.len()];
        y.par_chunks_mut(h * ROW_CHUNK)
            .enumerate()
            .for_each(|(c, out)| {
                for (i, yrow) in out.chunks_exact_mut(h).enumerate() {
                    self.input_row(a, r, c * ROW_CHUNK + i, yrow);
                    let (mean, rstd) = self.stats(yrow);
                    for ((v, wv), bv) in yrow.iter_mut().zip(w).zip(b) {
                        *v = (*v - mean) * rstd * wv + bv;
                    }
                }
            });
        y
    }

    /// (dz (·mask for a), d residual, d[w, b]) of the whole batch.
    fn backward(
        &self,
        a: &[f32],
        r: Option<&[f32]>,
        wb: &[f32],
        g: &[f32],
    ) -> (Vec<f32>, Option<Vec<f32>>, Vec<f32>) {
        let h = wb.len() / 2;
        let w = &wb[..h];
        let mut dz = vec![0f32; a.len()];
        // Per-chunk partial [dw, db], summed in chunk order below (deterministic).
        let partials: Vec<Vec<f32>> = dz
            .par_chunks_mut(h * ROW_CHUNK)
            .enumerate()
            .map(|(c, out)| {
                let mut part = vec![0f32; 2 * h];
                let mut xh = vec![0f32; h];
                for (i, drow) in out.chunks_exact_mut(h).enumerate() {
                    let row = c * ROW_CHUNK + i;
                    self.input_row(a, r, row, &mut xh);
                    let (mean, rstd) = self.stats(&xh);
                    let grow = &g[row * h..(row + 1) * h];
                    let (mut s1, mut s2) = (0f32, 0f32);
                    for ((x, gv), wv) in xh.iter_mut().zip(grow).zip(w) {
                        *x = (*x - mean) * rstd;
                        let gw = gv * wv;
                        s1 += gw;
                        s2 += gw * *x;
                    }
                    let (m1, m2) = (s1 / h as f32, s2 / h as f32);
                    for (k, ((d, x), gv)) in drow.iter_mut().zip(&xh).zip(grow).enumerate() {
                        *d = rstd * (gv * w[k] - m1 - x * m2);
                        part[k] += gv * x;
                        part[h + k] += gv;
                    }
                }
                part
            })
            .collect();
        let mut dwb = vec![0f32; 2 * h];
        for p in &partials {
            for (acc, v) in dwb.iter_mut().zip(p) {
                *acc += v;
            }
        }
        let d_res = r.map(|_| dz.clone());
        if let Some(m) = self.dropout {
            dz.par_chunks_mut(h * ROW_CHUNK)
                .enumerate()
                .for_each(|(c, out)| {
                    let start = c * h * ROW_CHUNK;
                    for (i, v) in out.iter_mut().enumerate() {
                        *v *= m.factor(start + i);
                    }
                });
        }
        (dz, d_res, dwb)
    }

    fn check(&self, l: &Layout, wb: &Layout) -> Result<()> {
        let h = l.dims().last().copied().unwrap_or(0);
        if wb.dims() != [2 * h] {
            candle_core::bail!("fused layer norm: [w, b] {:?} for rows of {h}", wb.dims());
        }
        Ok(())
    }
}

struct LayerNormOp(Norm);

impl CustomOp2 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.0.check(lx, lw)?;
        let y = self.0.forward(&host_f32(sx, lx)?, None, &host_f32(sw, lw)?);
        Ok((storage_like(y, sx), lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        super::first_order_only(self.name(), grad)?;
        let (dx, _, dwb) = with_host_f32(x, |xv| {
            with_host_f32(wb, |w| {
                with_host_f32(grad, |g| Ok(self.0.backward(xv, None, w, g)))
            })
        })?;
        Ok((
            x.track_op()
                .then(|| tensor_of(dx, x.dims(), x.dtype()))
                .transpose()?,
            wb.track_op()
                .then(|| tensor_of(dwb, wb.dims(), wb.dtype()))
                .transpose()?,
        ))
    }
}

struct ResidualLayerNormOp(Norm);

impl CustomOp3 for ResidualLayerNormOp {
    fn name(&self) -> &'static str {
        "fused-residual-layer-norm"
    }

    fn cpu_fwd(
        &self,
        sa: &CpuStorage,
        la: &Layout,
        sr: &CpuStorage,
        lr: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.0.check(la, lw)?;
        if la.dims() != lr.dims() {
            candle_core::bail!(
                "fused layer norm: residual {:?} vs input {:?}",
                lr.dims(),
                la.dims()
            );
        }
        let y = self.0.forward(
            &host_f32(sa, la)?,
            Some(&host_f32(sr, lr)?),
            &host_f32(sw, lw)?,
        );
        Ok((storage_like(y, sa), la.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        r: &Tensor,
        wb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        super::first_order_only(self.name(), grad)?;
        let (da, dr, dwb) = with_host_f32(a, |av| {
            with_host_f32(r, |rv| {
                with_host_f32(wb, |w| {
                    with_host_f32(grad, |g| Ok(self.0.backward(av, Some(rv), w, g)))
                })
            })
        })?;
        let dr = dr.unwrap_or_default();
        Ok((
            a.track_op()
                .then(|| tensor_of(da, a.dims(), a.dtype()))
                .transpose()?,
            r.track_op()
                .then(|| tensor_of(dr, r.dims(), r.dtype()))
                .transpose()?,
            wb.track_op()
                .then(|| tensor_of(dwb, wb.dims(), wb.dtype()))
                .transpose()?,
        ))
    }
}

/// `LayerNorm(x)` with `wb = [w, b]` (2·H).
pub fn layer_norm(x: &Tensor, wb: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&wb.contiguous()?, LayerNormOp(Norm { eps, dropout: None }))
}

/// `LayerNorm(a ⊙ mask + residual)` with `wb = [w, b]` (2·H).
pub fn residual_layer_norm(
    a: &Tensor,
    residual: &Tensor,
    wb: &Tensor,
    eps: f64,
    dropout: Option<DropMask>,
) -> Result<Tensor> {
    a.contiguous()?.apply_op3(
        &residual.contiguous()?,
        &wb.contiguous()?,
        ResidualLayerNormOp(Norm { eps, dropout }),
    )
}
