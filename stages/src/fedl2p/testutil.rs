//! A tiny f64 LoRA classifier for FedL2P's tests: logits = x·(W0 + B·A)ᵀ with cross-entropy,
//! A (2×4) and B (3×2) trainable — nonlinear in (A, B), so its Hessian is not constant.

use candle_core::{DType, Device, Tensor, Var};

use super::{InnerModel, Result, Split};
use crate::nn::normal_tensor;

pub struct TinyLora {
    params: Vec<Var>,
    w0: Tensor,
    x: [Tensor; 2],
    y: [Tensor; 2],
    n: [usize; 2],
}

fn normal(seed: u64, shape: (usize, usize), std: f64) -> Tensor {
    normal_tensor(seed, shape, std, &Device::Cpu, DType::F64).unwrap()
}

impl TinyLora {
    pub fn new(n_train: usize, n_val: usize) -> Self {
        let labels = |n: usize, k: u32| -> Tensor {
            Tensor::new(
                (0..n as u32).map(|i| (i * 7 + k) % 3).collect::<Vec<_>>(),
                &Device::Cpu,
            )
            .unwrap()
        };
        Self {
            params: vec![
                Var::from_tensor(&normal(1, (2, 4), 0.5)).unwrap(),
                Var::from_tensor(&normal(2, (3, 2), 0.5)).unwrap(),
            ],
            w0: normal(3, (3, 4), 0.3),
            x: [normal(4, (n_train, 4), 1.0), normal(5, (n_val, 4), 1.0)],
            y: [labels(n_train, 0), labels(n_val, 1)],
            n: [n_train, n_val],
        }
    }

    /// The initial parameter values.
    pub fn init(&self) -> Vec<Tensor> {
        vec![normal(1, (2, 4), 0.5), normal(2, (3, 2), 0.5)]
    }

    /// Loss with the parameters replaced by `values` (for finite differences).
    pub fn loss_at(&self, values: &[Tensor], split: Split, idx: &[usize]) -> Tensor {
        let w = (&self.w0 + values[1].matmul(&values[0]).unwrap()).unwrap();
        self.ce(&w, split, idx)
    }

    fn ce(&self, w: &Tensor, split: Split, idx: &[usize]) -> Tensor {
        let s = usize::from(split == Split::Val);
        let ids = Tensor::new(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            &Device::Cpu,
        )
        .unwrap();
        let x = self.x[s].index_select(&ids, 0).unwrap();
        let y = self.y[s].index_select(&ids, 0).unwrap();
        let logits = x.matmul(&w.t().unwrap()).unwrap();
        candle_nn::loss::cross_entropy(&logits, &y).unwrap()
    }
}

impl InnerModel for TinyLora {
    fn params(&self) -> &[Var] {
        &self.params
    }

    fn len(&self, split: Split) -> usize {
        self.n[usize::from(split == Split::Val)]
    }

    fn loss(&self, split: Split, idx: &[usize], _dropout_seed: u64) -> Result<Tensor> {
        let w = (&self.w0
            + self.params[1]
                .as_tensor()
                .matmul(self.params[0].as_tensor())?)?;
        Ok(self.ce(&w, split, idx))
    }
}
