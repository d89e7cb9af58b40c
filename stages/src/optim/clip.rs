//! Gradient-norm clipping with `torch.nn.utils.clip_grad_norm_` semantics: total 2-norm over
//! the given parameters' gradients, coef = max_norm / (norm + 1e-6) clamped to 1, every
//! gradient multiplied by coef (in place in the `GradStore`).

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use super::Result;

/// Clips the gradients of `vars` in `grads`; returns the total norm before clipping.
/// Parameters without gradient are ignored (as PyTorch ignores `grad is None`).
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[&Var], max_norm: f64) -> Result<f64> {
    let present: Vec<(&Var, Tensor)> = vars
        .iter()
        .filter_map(|v| grads.get(v.as_tensor()).map(|g| (*v, g.clone())))
        .collect();
    let mut tensors: Vec<Tensor> = present.iter().map(|(_, g)| g.clone()).collect();
    let total = clip_by_total_norm(&mut tensors, max_norm)?;
    for ((v, _), g) in present.into_iter().zip(tensors) {
        grads.insert(v.as_tensor(), g);
    }
    Ok(total)
}

/// The same clipping on a list of gradient tensors (replaced by their scaled values): the
/// reference's FedL2P inner loop clips its accumulated gradients this way.
pub fn clip_by_total_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    // Per-tensor 2-norms, then the 2-norm of those (PyTorch's order of reduction), in f32.
    let mut sq = 0f32;
    for g in grads.iter() {
        let n = g
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .sqrt()?
            .to_scalar::<f32>()?;
        sq += n * n;
    }
    let total = sq.sqrt();
    let coef = (max_norm as f32 / (total + 1e-6)).min(1.0);
    for g in grads.iter_mut() {
        *g = (&*g * f64::from(coef))?;
    }
    Ok(f64::from(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn clips_to_max_norm_and_leaves_small_gradients() {
        let a = Var::from_slice(&[1f32, 1.0], 2, &Device::Cpu).unwrap();
        let b = Var::from_slice(&[1f32], 1, &Device::Cpu).unwrap();
        // grad a = (3, 4), grad b = (12): total norm 13.
        let loss = ((a.as_tensor() * Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            + (b.as_tensor() * 12.0).unwrap().sum_all().unwrap())
        .unwrap();
        let mut g = loss.backward().unwrap();
        let n = clip_grad_norm(&mut g, &[&a, &b], 1.0).unwrap();
        assert!((n - 13.0).abs() < 1e-5);
        let ga: Vec<f32> = g.get(a.as_tensor()).unwrap().to_vec1().unwrap();
        assert!((ga[0] - 3.0 / 13.0).abs() < 1e-6);
        let n2 = clip_grad_norm(&mut g, &[&a, &b], 5.0).unwrap();
        assert!((n2 - 1.0).abs() < 1e-5);
        let ga2: Vec<f32> = g.get(a.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(ga, ga2);
    }
}
