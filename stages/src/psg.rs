//! The personalized-strategy generator (PSG) of FedP2EFT (PAPER_NOTES §5): an MLP from a
//! client's meta-data (interleaved mean/SD of every adapted linear's input, 2L values) to the
//! BayesTune λ of every rank (L × r_max), and its summed-L1 regression step.
//!
//! `Linear(2L → 4L) → PReLU → Linear(4L → L·r_max) → clamp[1e-4, 1000]` with a straight-through
//! gradient; parameter names follow the reference (`first_layer.0`, `first_layer.1` = PReLU,
//! `last_layer`) so weights are interchangeable with it.

use candle_core::{DType, Device, Result as CResult, Tensor};

use crate::nn::{abs_l1, linear_forward, ste_clamp};
use crate::optim::{Adam, AdamConfig, OptimError, ParamGroup};
use crate::params::{ParamError, ParamStore};
use crate::peft::bayestune::{LAMBDA_MAX, LAMBDA_MIN};
use crate::rng::derive_seed;

/// Errors of PSG set-up and training.
#[derive(Debug, thiserror::Error)]
pub enum PsgError {
    #[error("PSG input: {0}")]
    Input(String),
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, PsgError>;

/// Sizes of the PSG: meta-data of `observed` base linears (2 values each) → λ of `modules`
/// adapted linears with rank `r_max` each. BERT observes exactly its adapted linears; a causal
/// LM also observes `lm_head`, which is never adapted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PsgConfig {
    pub observed: usize,
    pub modules: usize,
    pub r_max: usize,
}

impl PsgConfig {
    pub fn input_dim(&self) -> usize {
        2 * self.observed
    }

    /// Hidden width = 2 × input dim [code] (PAPER_NOTES §5).
    pub fn hidden_dim(&self) -> usize {
        2 * self.input_dim()
    }

    pub fn output_dim(&self) -> usize {
        self.modules * self.r_max
    }
}

/// Xavier-normal gain of the reference init (initial λ ≈ bias = 1e-4).
pub const INIT_GAIN: f64 = 1e-6;
/// Bias fill of the reference init.
pub const INIT_BIAS: f64 = 1e-4;
/// `torch.nn.PReLU()` initial slope.
pub const PRELU_INIT: f64 = 0.25;
/// Regression steps per round and Adam lr [code].
pub const REGRESSION_STEPS: usize = 10;
pub const REGRESSION_LR: f64 = 1e-4;

/// A freshly initialised PSG (all parameters trainable): weights Xavier-normal with gain 1e-6
/// (std = gain·√(2/(fan_in+fan_out))) from our seeded RNG, biases 1e-4, PReLU slope 0.25.
pub fn init_psg(cfg: &PsgConfig, seed: u64, device: &Device) -> Result<ParamStore> {
    let mut store = ParamStore::new(device);
    let layers = [
        ("first_layer.0", cfg.input_dim(), cfg.hidden_dim()),
        ("last_layer", cfg.hidden_dim(), cfg.output_dim()),
    ];
    for (name, fan_in, fan_out) in layers {
        let std = INIT_GAIN * (2.0 / (fan_in + fan_out) as f64).sqrt();
        let w = crate::nn::normal_tensor(
            derive_seed(seed, &["psg".into(), name.into()]),
            (fan_out, fan_in),
            std,
            device,
            DType::F32,
        )
        .map_err(|e| PsgError::Input(e.to_string()))?;
        store.insert(&format!("{name}.weight"), w, true)?;
        let b = (Tensor::ones(fan_out, DType::F32, device)? * INIT_BIAS)?;
        store.insert(&format!("{name}.bias"), b, true)?;
    }
    let prelu = (Tensor::ones(1, DType::F32, device)? * PRELU_INIT)?;
    store.insert("first_layer.1.weight", prelu, true)?;
    Ok(store)
}

/// The PSG network over tensors of a store.
pub struct Psg {
    w1: Tensor,
    b1: Tensor,
    slope: Tensor,
    w2: Tensor,
    b2: Tensor,
}

impl Psg {
    pub fn load(store: &ParamStore, cfg: &PsgConfig) -> Result<Self> {
        let (i, h, o) = (cfg.input_dim(), cfg.hidden_dim(), cfg.output_dim());
        Ok(Self {
            w1: store.get_shaped("first_layer.0.weight", &[h, i])?,
            b1: store.get_shaped("first_layer.0.bias", &[h])?,
            slope: store.get_shaped("first_layer.1.weight", &[1])?,
            w2: store.get_shaped("last_layer.weight", &[o, h])?,
            b2: store.get_shaped("last_layer.bias", &[o])?,
        })
    }

    /// λ for a batch of feature vectors (n, 2L) → (n, L·r_max), STE-clamped to [1e-4, 1000].
    pub fn forward(&self, features: &Tensor) -> CResult<Tensor> {
        let h = linear_forward(features, &self.w1, Some(&self.b1))?;
        // PReLU: max(0, x) + a·min(0, x).
        let h = (h.relu()? + h.minimum(0f64)?.broadcast_mul(&self.slope)?)?;
        let out = linear_forward(&h, &self.w2, Some(&self.b2))?;
        ste_clamp(&out, LAMBDA_MIN, LAMBDA_MAX)
    }
}

/// A trained PSG saved as safetensors (frozen parameters, f32).
pub fn load_psg(path: &std::path::Path, device: &Device) -> Result<ParamStore> {
    ParamStore::load_safetensors(path, device, DType::F32, |_| false)
        .map_err(|e| PsgError::Input(format!("{}: {e}", path.display())))
}

/// Σ |PSG(x) − λ_target| (summed L1, §5).
pub fn regression_loss(pred: &Tensor, target: &Tensor) -> CResult<Tensor> {
    abs_l1(&(pred - target)?)?.sum_all()
}

/// Stage 2 of a FedP2EFT client round: `steps` Adam steps (lr `lr`) of the summed-L1
/// regression of PSG(features) onto the trained λ. Returns the loss before each step.
pub fn regress(
    store: &ParamStore,
    cfg: &PsgConfig,
    features: &Tensor,
    target: &Tensor,
    steps: usize,
    lr: f64,
) -> Result<Vec<f32>> {
    let features = features.reshape((1, cfg.input_dim()))?;
    let target = target.reshape((1, cfg.output_dim()))?;
    let psg = Psg::load(store, cfg)?;
    let mut opt = Adam::new(
        AdamConfig::adam(),
        vec![ParamGroup {
            params: store.trainable(),
            lr,
            weight_decay: 0.0,
        }],
    )?;
    let mut losses = Vec::with_capacity(steps);
    for _ in 0..steps {
        let loss = regression_loss(&psg.forward(&features)?, &target)?;
        losses.push(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        opt.step(&loss.backward()?)?;
    }
    Ok(losses)
}

/// Running mean/variance of one linear's inputs, combined per batch exactly as the reference's
/// `update_mean_and_var` (unbiased; a batch of one element keeps the previous variance).
#[derive(Debug, Clone, Copy, Default)]
struct RunningStats {
    mean: f64,
    var: f64,
    n: f64,
}

impl RunningStats {
    fn update(&mut self, m_y: f64, v_y: f64, m: f64) {
        let (m_x, v_x, n) = (self.mean, self.var, self.n);
        if m != 1.0 {
            let var1 = ((n - 1.0) * v_x + (m - 1.0) * v_y) / (n + m - 1.0);
            let var2 = (n * m * (m_x - m_y).powi(2)) / ((n + m) * (n + m - 1.0));
            self.var = var1 + var2;
        }
        self.mean = (n * m_x + m * m_y) / (n + m);
        self.n = n + m;
    }
}

/// Epsilon inside the SD of the client meta-data (§5).
pub const FEATURE_EPS: f64 = 1e-5;

/// Client meta-data (§5): runs `batches` through `net` in eval mode (build it with adapters
/// off, `AdapterSpec::NONE`; the reference uses batches of 4) and returns, for every base linear
/// in module order (LLaMA: then `lm_head`), [μ_l, σ_l] of all elements of its input (padding
/// included), interleaved: shape (1, 2L). σ = √(unbiased var + 1e-5). Per-batch mean/var are f32 (candle), combined
/// across batches in f64.
pub fn client_features(net: &crate::task::Net, batches: &[crate::task::Batch]) -> Result<Tensor> {
    use std::cell::RefCell;
    let names = crate::task::observed_names(net);
    let stats = RefCell::new(vec![RunningStats::default(); names.len()]);
    let index: std::collections::HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let observe = |name: &str, x: &Tensor| -> CResult<()> {
        let x = x.to_dtype(DType::F32)?.flatten_all()?;
        let n = x.elem_count();
        let mean = x.mean_all()?;
        let var = if n > 1 {
            (x.broadcast_sub(&mean)?.sqr()?.sum_all()? / (n - 1) as f64)?.to_scalar::<f32>()?
        } else {
            f32::NAN
        };
        let mean = mean.to_scalar::<f32>()?;
        if let Some(&i) = index.get(name) {
            stats.borrow_mut()[i].update(f64::from(mean), f64::from(var), n as f64);
        }
        Ok(())
    };
    let ctx = crate::peft::layer::ForwardCtx {
        dropout: None,
        observe_input: Some(&observe),
    };
    if batches.is_empty() {
        return Err(PsgError::Input("client has no training batches".into()));
    }
    for b in batches {
        net.observe(b, &ctx)?;
    }
    let mut feats = Vec::with_capacity(2 * names.len());
    for s in stats.borrow().iter() {
        feats.push(s.mean as f32);
        feats.push((s.var + FEATURE_EPS).sqrt() as f32);
    }
    let len = feats.len();
    Ok(Tensor::from_vec(feats, (1, len), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn running_stats_match_a_single_pass() {
        let data: Vec<f64> = (0..10).map(|i| (i as f64).sin() * 3.0 + 1.0).collect();
        let mut s = super::RunningStats::default();
        for chunk in data.chunks(4) {
            let m = chunk.iter().sum::<f64>() / chunk.len() as f64;
            let v = chunk.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (chunk.len() - 1) as f64;
            s.update(m, v, chunk.len() as f64);
        }
        let m = data.iter().sum::<f64>() / 10.0;
        let v = data.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 9.0;
        assert!((s.mean - m).abs() < 1e-12 && (s.var - v).abs() < 1e-12);
    }

    use super::*;

    #[test]
    fn initial_output_is_about_lambda_min() {
        let cfg = PsgConfig {
            observed: 5,
            modules: 5,
            r_max: 4,
        };
        let store = init_psg(&cfg, 3, &Device::Cpu).unwrap();
        let psg = Psg::load(&store, &cfg).unwrap();
        let x = Tensor::ones((1, 10), DType::F32, &Device::Cpu).unwrap();
        let y: Vec<f32> = psg
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y.len(), 20);
        assert!(y.iter().all(|v| (v - 1e-4).abs() < 1e-6));
        let target = (Tensor::ones((1, 20), DType::F32, &Device::Cpu).unwrap() * 0.5).unwrap();
        let losses = regress(&store, &cfg, &x, &target, 10, 1e-3).unwrap();
        assert!(losses[9] < losses[0], "{losses:?}");
    }
}
