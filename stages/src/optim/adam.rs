//! Adam / AdamW exactly as PyTorch's single-tensor implementation (the CPU default):
//!
//! ```text
//! Adam:  g ← g + wd·θ                      AdamW: θ ← θ·(1 − lr·wd)
//! t ← t + 1;  m ← m + (1−β1)(g − m);  v ← β2·v + (1−β2)·g²
//! θ ← θ − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + eps)
//! ```
//! Each parameter keeps its own step count (a parameter without gradient is skipped, as in
//! PyTorch). Parameter groups carry their own lr and weight decay (e.g. A,B at 1e-4 and λ at
//! 1e-2, PAPER_NOTES §3). State round-trips through safetensors bit for bit.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use super::{OptimError, Result};

/// Hyperparameters shared by all groups.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// true = AdamW (decoupled decay), false = Adam (L2 added to the gradient).
    pub decoupled_weight_decay: bool,
}

impl AdamConfig {
    /// `torch.optim.AdamW` defaults (betas 0.9/0.999, eps 1e-8).
    pub fn adamw() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            decoupled_weight_decay: true,
        }
    }

    /// `torch.optim.Adam` defaults.
    pub fn adam() -> Self {
        Self {
            decoupled_weight_decay: false,
            ..Self::adamw()
        }
    }
}

/// A set of parameters sharing lr and weight decay.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    pub params: Vec<(String, Var)>,
    pub lr: f64,
    pub weight_decay: f64,
}

#[derive(Debug, Clone)]
struct Moments {
    step: u64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// Adam/AdamW over parameter groups.
#[derive(Debug, Clone)]
pub struct Adam {
    cfg: AdamConfig,
    groups: Vec<ParamGroup>,
    state: HashMap<String, Moments>,
}

impl Adam {
    pub fn new(cfg: AdamConfig, groups: Vec<ParamGroup>) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        for g in &groups {
            for (n, _) in &g.params {
                if !seen.insert(n.clone()) {
                    return Err(OptimError::State(format!(
                        "parameter `{n}` appears in two groups"
                    )));
                }
            }
        }
        Ok(Self {
            cfg,
            groups,
            state: HashMap::new(),
        })
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Sets every group's lr (a schedule's output, or per-group via `set_group_lr`).
    pub fn set_lr(&mut self, lr: f64) {
        for g in &mut self.groups {
            g.lr = lr;
        }
    }

    pub fn set_group_lr(&mut self, group: usize, lr: f64) {
        if let Some(g) = self.groups.get_mut(group) {
            g.lr = lr;
        }
    }

    /// All parameters of all groups.
    pub fn vars(&self) -> Vec<&Var> {
        self.groups
            .iter()
            .flat_map(|g| g.params.iter().map(|(_, v)| v))
            .collect()
    }

    /// One optimiser step using the gradients in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let c = self.cfg;
        for g in &self.groups {
            for (name, var) in &g.params {
                let Some(grad) = grads.get(var.as_tensor()) else {
                    continue;
                };
                let theta = var.as_tensor().detach();
                let mut grad = grad.detach();
                let mut theta_new = theta.clone();
                if g.weight_decay != 0.0 {
                    if c.decoupled_weight_decay {
                        theta_new = (&theta * (1.0 - g.lr * g.weight_decay))?;
                    } else {
                        grad = (grad + (&theta * g.weight_decay)?)?;
                    }
                }
                let st = match self.state.remove(name) {
                    Some(s) => s,
                    None => Moments {
                        step: 0,
                        exp_avg: theta.zeros_like()?,
                        exp_avg_sq: theta.zeros_like()?,
                    },
                };
                let step = st.step + 1;
                // lerp with weight 1−β1 < 0.5: m + w·(g − m), PyTorch's formula for that branch.
                let exp_avg = (&st.exp_avg + ((&grad - &st.exp_avg)? * (1.0 - c.beta1))?)?;
                let exp_avg_sq =
                    ((&st.exp_avg_sq * c.beta2)? + ((&grad * (1.0 - c.beta2))? * &grad)?)?;
                let bc1 = 1.0 - c.beta1.powi(step as i32);
                let bc2 = 1.0 - c.beta2.powi(step as i32);
                let step_size = g.lr / bc1;
                let denom = ((exp_avg_sq.sqrt()? / bc2.sqrt())? + c.eps)?;
                let update = ((&exp_avg / &denom)? * (-step_size))?;
                var.set(&(theta_new + update)?)?;
                self.state.insert(
                    name.clone(),
                    Moments {
                        step,
                        exp_avg,
                        exp_avg_sq,
                    },
                );
            }
        }
        Ok(())
    }

    /// The optimiser state as named tensors: `{param}.exp_avg`, `{param}.exp_avg_sq`,
    /// `{param}.step` (I64 scalar). Group lrs are the caller's (schedule) state.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, s) in &self.state {
            out.insert(format!("{name}.exp_avg"), s.exp_avg.copy()?);
            out.insert(format!("{name}.exp_avg_sq"), s.exp_avg_sq.copy()?);
            out.insert(
                format!("{name}.step"),
                Tensor::new(s.step as i64, &Device::Cpu)?,
            );
        }
        Ok(out)
    }

    /// Restores state saved by [`state_tensors`](Self::state_tensors); every entry must belong
    /// to a parameter of this optimiser with matching shape. Nothing changes on error.
    pub fn load_state_tensors(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let mut state = HashMap::new();
        for g in &self.groups {
            for (name, var) in &g.params {
                let key = format!("{name}.step");
                let Some(step) = tensors.get(&key) else {
                    continue;
                };
                let step = step.to_dtype(DType::I64)?.to_scalar::<i64>()?;
                let get = |suffix: &str| -> Result<Tensor> {
                    let t = tensors
                        .get(&format!("{name}.{suffix}"))
                        .ok_or_else(|| OptimError::State(format!("missing `{name}.{suffix}`")))?;
                    if t.dims() != var.dims() {
                        return Err(OptimError::State(format!(
                            "`{name}.{suffix}` has shape {:?}, parameter has {:?}",
                            t.dims(),
                            var.dims()
                        )));
                    }
                    Ok(t.to_device(var.device())?.to_dtype(var.dtype())?)
                };
                state.insert(
                    name.clone(),
                    Moments {
                        step: u64::try_from(step).map_err(|_| {
                            OptimError::State(format!("negative step for `{name}`"))
                        })?,
                        exp_avg: get("exp_avg")?,
                        exp_avg_sq: get("exp_avg_sq")?,
                    },
                );
            }
        }
        let known = state.len() * 3;
        if known != tensors.len() {
            return Err(OptimError::State(format!(
                "{} state tensors given, {known} belong to this optimiser's parameters",
                tensors.len()
            )));
        }
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{safetensors_bytes, tensors_from_bytes};

    fn quad_loss(v: &Var, w: &Var) -> Tensor {
        let a = (v.as_tensor().sqr().unwrap() * 3.0)
            .unwrap()
            .sum_all()
            .unwrap();
        let b = (w.as_tensor()
            * v.as_tensor().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64)
            .unwrap()
            .exp()
            .unwrap()
            .sum_all()
            .unwrap();
        (a + b).unwrap()
    }

    fn make() -> (Var, Var, Adam) {
        let v = Var::from_slice(&[0.5f32, -1.0, 2.0], 3, &Device::Cpu).unwrap();
        let w = Var::from_slice(&[0.1f32, 0.2], 2, &Device::Cpu).unwrap();
        let opt = Adam::new(
            AdamConfig::adamw(),
            vec![
                ParamGroup {
                    params: vec![("v".into(), v.clone())],
                    lr: 1e-2,
                    weight_decay: 0.1,
                },
                ParamGroup {
                    params: vec![("w".into(), w.clone())],
                    lr: 1e-1,
                    weight_decay: 0.0,
                },
            ],
        )
        .unwrap();
        (v, w, opt)
    }

    #[test]
    fn save_load_step_equals_uninterrupted_bit_for_bit() {
        let (v1, w1, mut o1) = make();
        for _ in 0..3 {
            let g = quad_loss(&v1, &w1).backward().unwrap();
            o1.step(&g).unwrap();
        }
        let bytes = safetensors_bytes(&o1.state_tensors().unwrap()).unwrap();
        let (v2, w2, mut o2) = make();
        v2.set(v1.as_tensor()).unwrap();
        w2.set(w1.as_tensor()).unwrap();
        o2.load_state_tensors(&tensors_from_bytes(&bytes, &Device::Cpu).unwrap())
            .unwrap();
        for _ in 0..2 {
            let g = quad_loss(&v1, &w1).backward().unwrap();
            o1.step(&g).unwrap();
            let g = quad_loss(&v2, &w2).backward().unwrap();
            o2.step(&g).unwrap();
        }
        for (a, b) in [(&v1, &v2), (&w1, &w2)] {
            let a: Vec<u32> = a
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            let b: Vec<u32> = b
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn rejects_foreign_state() {
        let (_, _, mut o) = make();
        let mut m = HashMap::new();
        m.insert(
            "zz.step".to_string(),
            Tensor::new(1i64, &Device::Cpu).unwrap(),
        );
        assert!(o.load_state_tensors(&m).is_err());
    }
}
