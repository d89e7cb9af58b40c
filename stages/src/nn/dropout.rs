//! Dropout whose masks come from a seeded counter-based generator (STYLE: every draw takes a
//! seed), so a training step is reproducible bit for bit and masks can be drawn inside parallel
//! kernels and redrawn in the backward pass instead of stored. Semantics as `torch.nn.Dropout`
//! in train mode: zero with probability p, scale survivors by 1/(1-p); identity in eval mode.
//!
//! Mask element `i` of a dropout call is kept iff `hash(key, i) < (1-p)·2^32`, where `key` is
//! derived from the step's seed and the call's index within the forward pass (calls happen in
//! the model's fixed forward order). The hash is SplitMix64's finaliser over a Weyl sequence, a
//! counter-based generator that passes BigCrush; each 64-bit output serves two elements.

use std::cell::Cell;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fused;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One dropout call's mask: which elements survive, and the survivors' scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropMask {
    key: u64,
    /// Keep iff the element's 32-bit draw is below this ((1-p)·2^32, exact integer threshold).
    threshold: u64,
    /// 1/(1-p).
    pub scale: f32,
}

impl DropMask {
    fn new(key: u64, p: f32) -> Self {
        Self {
            key,
            threshold: ((1.0 - f64::from(p)) * 4_294_967_296.0) as u64,
            scale: 1.0 / (1.0 - p),
        }
    }

    /// The 32-bit draw of element `i`.
    #[inline]
    fn draw(&self, i: usize) -> u32 {
        let h = mix64(
            self.key
                .wrapping_add(((i >> 1) as u64 + 1).wrapping_mul(GOLDEN)),
        );
        if i & 1 == 0 {
            h as u32
        } else {
            (h >> 32) as u32
        }
    }

    /// The multiplier of element `i`: `scale` if kept, 0 if dropped.
    #[inline]
    pub fn factor(&self, i: usize) -> f32 {
        if u64::from(self.draw(i)) < self.threshold {
            self.scale
        } else {
            0.0
        }
    }

    /// `out[j] = x[j] · factor(start + j)`.
    pub fn apply_at(&self, start: usize, x: &[f32], out: &mut [f32]) {
        for (j, (o, v)) in out.iter_mut().zip(x).enumerate() {
            *o = v * self.factor(start + j);
        }
    }

    /// The multipliers of elements `0..n` (for the composite path on other devices).
    pub fn factors(&self, n: usize) -> Vec<f32> {
        (0..n).map(|i| self.factor(i)).collect()
    }
}

/// The random stream of one forward pass in train mode: a seed and the number of dropout calls
/// made so far. The same seed gives the same masks.
pub struct DropoutRng {
    seed: u64,
    calls: Cell<u64>,
}

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            calls: Cell::new(0),
        }
    }

    /// The mask of the next dropout call with probability `p` (0 < p < 1).
    pub fn next_mask(&self, p: f32) -> DropMask {
        let call = self.calls.get();
        self.calls.set(call + 1);
        DropMask::new(mix64(self.seed ^ mix64(call.wrapping_add(1))), p)
    }
}

/// Dropout with probability `p` of zeroing an element.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    pub p: f32,
}

impl Dropout {
    pub fn new(p: f32) -> Self {
        Self { p }
    }

    /// The mask for this call, or None when dropout is the identity (eval mode, p = 0). Drawing
    /// advances the stream, so call it once per dropout application.
    pub fn mask(&self, rng: Option<&DropoutRng>) -> Option<DropMask> {
        match rng {
            Some(r) if self.p > 0.0 && self.p < 1.0 => Some(r.next_mask(self.p)),
            _ => None,
        }
    }

    /// `rng = None` is eval mode (identity).
    pub fn forward(&self, xs: &Tensor, rng: Option<&DropoutRng>) -> Result<Tensor> {
        if rng.is_some() && self.p >= 1.0 {
            return xs.zeros_like();
        }
        match self.mask(rng) {
            None => Ok(xs.clone()),
            Some(m) => apply_mask(xs, m),
        }
    }
}

/// `xs ⊙ mask` (fused on the CPU; a mask tensor elsewhere, with the same elements).
pub fn apply_mask(xs: &Tensor, mask: DropMask) -> Result<Tensor> {
    if fused::supported(xs) {
        return xs.contiguous()?.apply_op1(DropoutOp(mask));
    }
    let m = Tensor::from_vec(
        mask.factors(xs.elem_count()),
        xs.shape(),
        &candle_core::Device::Cpu,
    )?
    .to_device(xs.device())?
    .to_dtype(xs.dtype())?;
    xs * m
}

struct DropoutOp(DropMask);

/// Elements per parallel task (mask positions are global, so chunking does not change values).
const CHUNK: usize = 1 << 14;

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "fused-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = fused::host_f32(s, l)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (o, v))| self.0.apply_at(c * CHUNK, v, o));
        Ok((fused::storage_like(y, s), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // d(x·m)/dx = m: the same mask, redrawn. Linear, so applying it as a tracked op keeps
        // a graph-carrying gradient differentiable (second order).
        grad.contiguous()?.apply_op1(DropoutOp(self.0)).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn same_seed_same_mask_and_eval_is_identity() {
        let x = Tensor::ones((4, 1000), candle_core::DType::F32, &Device::Cpu).unwrap();
        let d = Dropout::new(0.25);
        let a = d.forward(&x, Some(&DropoutRng::new(7))).unwrap();
        let b = d.forward(&x, Some(&DropoutRng::new(7))).unwrap();
        let c = d.forward(&x, Some(&DropoutRng::new(8))).unwrap();
        let av: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(av, b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_ne!(av, c.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let kept = av.iter().filter(|v| **v > 0.0).count() as f64 / av.len() as f64;
        assert!((kept - 0.75).abs() < 0.03, "kept fraction {kept}");
        assert!(av
            .iter()
            .all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6));
        let e = d.forward(&x, None).unwrap();
        assert_eq!(e.sum_all().unwrap().to_scalar::<f32>().unwrap(), 4000.0);
    }

    #[test]
    fn successive_calls_draw_independent_masks_and_backward_reuses_the_mask() {
        let rng = DropoutRng::new(3);
        let (m1, m2) = (rng.next_mask(0.5), rng.next_mask(0.5));
        let n = 20_000;
        let agree = (0..n)
            .filter(|&i| (m1.factor(i) > 0.0) == (m2.factor(i) > 0.0))
            .count() as f64
            / n as f64;
        // Independent fair masks agree on about half the elements.
        assert!((agree - 0.5).abs() < 0.02, "agreement {agree}");
        let x = candle_core::Var::ones((3, 7), candle_core::DType::F32, &Device::Cpu).unwrap();
        let y = apply_mask(x.as_tensor(), m1).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let gv: Vec<f32> = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(gv, m1.factors(21));
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            m1.factors(21)
        );
    }
}
