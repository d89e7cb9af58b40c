//! Learning-rate schedules with PyTorch semantics.

/// `torch.optim.lr_scheduler.CosineAnnealingLR` with its recursive (chainable) update, so the
/// sequence of lrs matches PyTorch's floats, not just the closed form.
#[derive(Debug, Clone, PartialEq)]
pub struct CosineAnnealingLr {
    base_lr: f64,
    eta_min: f64,
    t_max: u64,
    last_epoch: u64,
    lr: f64,
}

impl CosineAnnealingLr {
    /// Starts at epoch 0 with lr = base_lr (as constructing the PyTorch scheduler does).
    pub fn new(base_lr: f64, t_max: u64, eta_min: f64) -> Self {
        Self {
            base_lr,
            eta_min,
            t_max: t_max.max(1),
            last_epoch: 0,
            lr: base_lr,
        }
    }

    /// Current lr.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    pub fn epoch(&self) -> u64 {
        self.last_epoch
    }

    /// Advances one step (`scheduler.step()`) and returns the new lr.
    pub fn step(&mut self) -> f64 {
        use std::f64::consts::PI;
        self.last_epoch += 1;
        let e = self.last_epoch as f64;
        let t = self.t_max as f64;
        let (lr, base, min) = (self.lr, self.base_lr, self.eta_min);
        self.lr = if (self.last_epoch - 1 + self.t_max) % (2 * self.t_max) == 0 {
            // (last_epoch − 1 − T_max) % (2 T_max) == 0 in Python's modulo.
            lr + (base - min) * (1.0 - (PI / t).cos()) / 2.0
        } else {
            (1.0 + (PI * e / t).cos()) / (1.0 + (PI * (e - 1.0) / t).cos()) * (lr - min) + min
        };
        self.lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_closed_form_closely() {
        let mut s = CosineAnnealingLr::new(2e-5, 10, 1e-6);
        for e in 1..=10u64 {
            let lr = s.step();
            let closed =
                1e-6 + (2e-5 - 1e-6) * (1.0 + (std::f64::consts::PI * e as f64 / 10.0).cos()) / 2.0;
            assert!((lr - closed).abs() < 1e-15, "epoch {e}: {lr} vs {closed}");
        }
    }
}
