//! A quirk of the reference's Stage 1 reproduced: λ is a plain tensor, not a module parameter,
//! so the HF Trainer's `model.zero_grad()` never clears it and λ's AdamW group sees the running
//! sum of every step's λ gradient.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use candle_core::Result;

/// Gradients of `vars` summed over every step so far, handed to the optimiser in place of the
/// step's own (the reference's λ in Stage 1, whose `.grad` is never zeroed).
pub struct GradCarry {
    vars: Vec<Var>,
    sums: Vec<Option<Tensor>>,
}

impl GradCarry {
    pub fn new(vars: Vec<Var>) -> Self {
        let sums = vec![None; vars.len()];
        Self { vars, sums }
    }

    /// Adds this step's gradients of the carried vars to their running sums and puts the sums
    /// into `grads`.
    pub(super) fn apply(&mut self, grads: &mut GradStore) -> Result<()> {
        for (v, sum) in self.vars.iter().zip(&mut self.sums) {
            let Some(g) = grads.get(v.as_tensor()) else {
                continue;
            };
            let total = match sum.take() {
                Some(prev) => (prev + g)?,
                None => g.clone(),
            };
            grads.insert(v.as_tensor(), total.clone());
            *sum = Some(total);
        }
        Ok(())
    }
}
