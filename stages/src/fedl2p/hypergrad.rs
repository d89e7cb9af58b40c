//! FedL2P's implicit-function hypergradient ([code] `client_utils.Hypergrad`, after Lorraine
//! et al. 2020), for one (train example, validation example) pair at the inner loop's θ_T:
//!
//! ```text
//! g_V = ∂L_V/∂θ,   g_T = ∂L_T/∂θ (kept differentiable),   H = ∂g_T/∂θ
//! p = Σ_{i=0..k} (I − α·H)^i · g_V                 (α = 0.1, k = 3; no final ·α, as the code)
//! hypergrad = −∂/∂φ ⟨g_T(θ_T(φ)), p⟩ = −(∂θ_T/∂φ)ᵀ · H·p
//! ```
//!
//! θ_T depends on the meta-parameters φ only through the learning rates of the last inner
//! update (`θ_T,j = θ_{T−1},j − lr_j·d_j`, [`super::inner`]), so `∂θ_T,j/∂lr_j = −d_j` and the
//! hypergradient with respect to `lr_j` is `⟨d_j, (H·p)_j⟩`. This module returns those M scalars;
//! [`super::meta`] backpropagates them through `lr = post ⊙ LRNet(x)` — together exactly the
//! reference's `autograd.grad(dloss_train_dparams, meta_params, grad_outputs=p)`, negated.
//! Both losses are divided by the number of accumulated pairs, as in the reference (so H and
//! g_V carry that factor too). The Hessian-vector products are exact
//! ([`crate::second_order`]), not finite differences.

use candle_core::{DType, Tensor};

use super::{Fedl2pError, InnerModel, Result, Split};
use crate::second_order::{gradients_with_graph, hessian_vector_product};

/// Neumann-series settings; [`Default`] is the reference's (`learning_rate` 0.1,
/// `truncate_iter` 3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hypergrad {
    pub lr: f64,
    pub truncate: usize,
}

impl Default for Hypergrad {
    fn default() -> Self {
        Self {
            lr: 0.1,
            truncate: 3,
        }
    }
}

/// One pair's contribution.
#[derive(Debug, Clone)]
pub struct PairHypergrad {
    /// ∂(hypergradient objective)/∂lr_j for every parameter j (what is added to the
    /// learning rates' gradient).
    pub lr_grads: Vec<f64>,
    /// The scaled validation loss `L_V / accumulation` (the reference logs its sum).
    pub val_loss: f64,
}

/// Indices, scaling and dropout seeds of one pair.
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    pub train: usize,
    pub val: usize,
    /// 1 / number of accumulated pairs.
    pub scale: f64,
    pub train_seed: u64,
    pub val_seed: u64,
}

/// `p = Σ_{i=0..k} (I − α·H)^i · v0` from the differentiable gradients `g_t` (H = their
/// Jacobian with respect to the model's parameters).
pub fn neumann_series(
    model: &dyn InnerModel,
    g_t: &[Tensor],
    v0: &[Tensor],
    hg: &Hypergrad,
) -> Result<Vec<Tensor>> {
    let params = model.params();
    let mut v: Vec<Tensor> = v0.to_vec();
    let mut p: Vec<Tensor> = v0.to_vec();
    for _ in 0..hg.truncate {
        let hv = hessian_vector_product(g_t, params, &v)?;
        v = v
            .iter()
            .zip(&hv)
            .map(|(v, h)| v - (h * hg.lr)?)
            .collect::<candle_core::Result<_>>()?;
        p = p
            .iter()
            .zip(&v)
            .map(|(p, v)| p + v)
            .collect::<candle_core::Result<_>>()?;
    }
    Ok(p)
}

/// The hypergradient of one pair with respect to the learning rates, at the model's current
/// parameters θ_T; `direction` is [`super::inner::InnerRun::direction`].
pub fn pair_hypergrad(
    model: &dyn InnerModel,
    direction: &[Tensor],
    pair: &Pair,
    hg: &Hypergrad,
) -> Result<PairHypergrad> {
    let params = model.params();
    if direction.len() != params.len() {
        return Err(Fedl2pError::Input(format!(
            "{} update directions for {} parameters",
            direction.len(),
            params.len()
        )));
    }
    let outer = (model.loss(Split::Val, &[pair.val], pair.val_seed)? * pair.scale)?;
    // Differentiated twice: built from candle's primitives, whose backward rules are graphs.
    let inner = crate::nn::fused::composite_scope(|| {
        model.loss(Split::Train, &[pair.train], pair.train_seed)
    })?;
    let inner = (inner * pair.scale)?;
    let val_loss = scalar(&outer)?;
    let grads = outer.backward()?;
    let g_v: Vec<Tensor> = params
        .iter()
        .map(|p| match grads.get(p.as_tensor()) {
            Some(g) => Ok(g.detach()),
            None => p.as_tensor().zeros_like(),
        })
        .collect::<candle_core::Result<_>>()?;
    drop(grads);
    let g_t = gradients_with_graph(&inner, params)?;
    let p = neumann_series(model, &g_t, &g_v, hg)?;
    let hp = hessian_vector_product(&g_t, params, &p)?;
    let lr_grads = direction
        .iter()
        .zip(&hp)
        .map(|(d, h)| scalar(&(d * h)?.sum_all()?))
        .collect::<Result<_>>()?;
    Ok(PairHypergrad { lr_grads, val_loss })
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fedl2p::inner::{inner_loop, InnerConfig};
    use crate::fedl2p::testutil::TinyLora;

    fn grad_at(
        q: &TinyLora,
        values: &[Tensor],
        split: Split,
        idx: usize,
        scale: f64,
    ) -> Vec<Tensor> {
        let vars: Vec<candle_core::Var> = values
            .iter()
            .map(|v| candle_core::Var::from_tensor(v).unwrap())
            .collect();
        let t: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let loss = (q.loss_at(&t, split, &[idx]) * scale).unwrap();
        let g = loss.backward().unwrap();
        vars.iter()
            .map(|v| g.get(v.as_tensor()).unwrap().clone())
            .collect()
    }

    fn dot(a: &[Tensor], b: &[Tensor]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(a, b)| {
                (a * b)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            })
            .sum()
    }

    fn axpy(a: &[Tensor], s: f64, b: &[Tensor]) -> Vec<Tensor> {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a + (b * s).unwrap()).unwrap())
            .collect()
    }

    /// The hypergradient w.r.t. each lr_j against a central finite difference of
    /// F(lr) = ⟨g_T(θ_{T−1} − lr ⊙ d), p⟩ with p fixed (the quantity the reference
    /// differentiates), and the Neumann vector p against finite-difference Hessian products.
    /// f64; tolerance 1e-6 relative (FD truncation error with ε = 1e-5 is ~1e-10).
    #[test]
    fn lr_hypergradient_matches_finite_differences() {
        let q = TinyLora::new(6, 4);
        let init = q.init();
        let lrs = [0.05, 0.08];
        let cfg = InnerConfig {
            batch_size: 2,
            ..InnerConfig::default()
        };
        let run = inner_loop(&q, &init, &lrs, &cfg, 3).unwrap();
        let theta: Vec<Tensor> = q.params().iter().map(|p| p.as_tensor().detach()).collect();
        let pair = Pair {
            train: 4,
            val: 2,
            scale: 0.5,
            train_seed: 0,
            val_seed: 0,
        };
        let hg = Hypergrad::default();
        let got = pair_hypergrad(&q, &run.direction, &pair, &hg).unwrap();

        // p by finite-difference Hessian products: H·v ≈ (g(θ+εv) − g(θ−εv)) / 2ε.
        let eps = 1e-5;
        let g_t = |th: &[Tensor]| grad_at(&q, th, Split::Train, pair.train, pair.scale);
        let hv_fd = |v: &[Tensor]| -> Vec<Tensor> {
            let plus = g_t(&axpy(&theta, eps, v));
            let minus = g_t(&axpy(&theta, -eps, v));
            plus.iter()
                .zip(&minus)
                .map(|(a, b)| ((a - b).unwrap() / (2.0 * eps)).unwrap())
                .collect()
        };
        let g_v = grad_at(&q, &theta, Split::Val, pair.val, pair.scale);
        let (mut v, mut p) = (g_v.clone(), g_v.clone());
        for _ in 0..hg.truncate {
            v = axpy(&v, -hg.lr, &hv_fd(&v));
            p = axpy(&p, 1.0, &v);
        }
        let theta_prev: Vec<Tensor> = theta
            .iter()
            .zip(&run.direction)
            .zip(&lrs)
            .map(|((t, d), lr)| (t + (d * *lr).unwrap()).unwrap())
            .collect();
        for j in 0..2 {
            let f = |lr_j: f64| -> f64 {
                let th: Vec<Tensor> = (0..2)
                    .map(|i| {
                        let lr = if i == j { lr_j } else { lrs[i] };
                        (&theta_prev[i] - (&run.direction[i] * lr).unwrap()).unwrap()
                    })
                    .collect();
                dot(&g_t(&th), &p)
            };
            let fd = -(f(lrs[j] + eps) - f(lrs[j] - eps)) / (2.0 * eps);
            let rel = (got.lr_grads[j] - fd).abs() / fd.abs().max(1e-12);
            assert!(
                rel < 1e-6,
                "lr {j}: exact {} vs FD {fd} (rel {rel})",
                got.lr_grads[j]
            );
            assert!(fd.abs() > 1e-6, "degenerate test: FD {fd}");
        }
        let want_val = q
            .loss_at(&theta, Split::Val, &[pair.val])
            .to_scalar::<f64>()
            .unwrap()
            * 0.5;
        assert!((got.val_loss - want_val).abs() < 1e-12);
    }

    /// Truncating after 0 terms gives p = g_V: a different value, so the series is used.
    #[test]
    fn truncation_changes_the_result() {
        let q = TinyLora::new(6, 4);
        let init = q.init();
        let run = inner_loop(&q, &init, &[0.05, 0.08], &InnerConfig::default(), 3).unwrap();
        let pair = Pair {
            train: 1,
            val: 0,
            scale: 1.0,
            train_seed: 0,
            val_seed: 0,
        };
        let a = pair_hypergrad(&q, &run.direction, &pair, &Hypergrad::default()).unwrap();
        let b = pair_hypergrad(
            &q,
            &run.direction,
            &pair,
            &Hypergrad {
                lr: 0.1,
                truncate: 0,
            },
        )
        .unwrap();
        assert!((a.lr_grads[0] - b.lr_grads[0]).abs() > 1e-9 * a.lr_grads[0].abs());
    }
}
