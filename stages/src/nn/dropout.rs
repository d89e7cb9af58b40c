//! Dropout whose masks come from our seeded ChaCha stream (STYLE: every draw takes a seed), so
//! a training step is reproducible bit for bit. Semantics as `torch.nn.Dropout` in train mode:
//! zero with probability p, scale survivors by 1/(1-p); identity in eval mode.

use std::cell::RefCell;

use candle_core::{Result, Tensor};
use rand::RngCore;
use rand_chacha::ChaCha8Rng;

use crate::rng::rng_from;

/// The random stream of one forward pass in train mode. Masks are drawn in call order, which is
/// fixed by the model's forward, so the same seed gives the same masks.
pub struct DropoutRng(RefCell<ChaCha8Rng>);

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        Self(RefCell::new(rng_from(seed)))
    }

    /// A keep-mask scaled by 1/(1-p), as f32 values on the host.
    fn mask(&self, n: usize, p: f32) -> Vec<f32> {
        let keep_scale = 1.0 / (1.0 - p);
        // Keep when u < (1-p)·2^32: an exact integer threshold, no float draw per element.
        let threshold = ((1.0 - f64::from(p)) * 4_294_967_296.0) as u64;
        let mut rng = self.0.borrow_mut();
        (0..n)
            .map(|_| {
                if u64::from(rng.next_u32()) < threshold {
                    keep_scale
                } else {
                    0.0
                }
            })
            .collect()
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

    /// `rng = None` is eval mode (identity).
    pub fn forward(&self, xs: &Tensor, rng: Option<&DropoutRng>) -> Result<Tensor> {
        let Some(rng) = rng else {
            return Ok(xs.clone());
        };
        if self.p <= 0.0 {
            return Ok(xs.clone());
        }
        if self.p >= 1.0 {
            return xs.zeros_like();
        }
        let mask = Tensor::from_vec(rng.mask(xs.elem_count(), self.p), xs.shape(), xs.device())?
            .to_dtype(xs.dtype())?;
        xs * mask
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
}
