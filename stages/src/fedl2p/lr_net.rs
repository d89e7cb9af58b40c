//! FedL2P's LR network ([code] `ClampLRNet` with `num_hl = 1`, `weights_init(m, 0.1, 1.0)`):
//! `Linear(in → 100) → ReLU → Linear(100 → 100) → ReLU → Linear(100 → M)`, clamped to
//! [0, 1000] with a straight-through gradient, times a learnable per-matrix post-multiplier
//! (`inner_loop_lrs`, init 1e-4). The input is the client meta-data of PAPER_NOTES §5 (mean and
//! SD of every base linear's input — the reference's `fedl2p_precompute_feats_stats` is the
//! function FedP2EFT's PSG uses too, so `methods::meta_features` is reused unchanged; computed
//! with the LoRA attached, whose B = 0 leaves those inputs as the base model's).
//!
//! Parameter names follow the reference's `state_dict` (`first_layer.0`, `hl_0.0`,
//! `last_layer`) and `nn.ParameterList` (`inner_loop_lrs.{j}`, one scalar each).

use candle_core::{DType, Device, Tensor, Var};

use super::{Fedl2pError, Result};
use crate::nn::{linear_forward, ste_clamp};
use crate::params::ParamStore;
use crate::rng::derive_seed;

/// Hidden width [code].
pub const HIDDEN: usize = 100;
/// Hidden layers after the first ([code] `num_hl = 1`: two hidden layers in all).
pub const EXTRA_HIDDEN_LAYERS: usize = 1;
/// Upper clamp of the LR-net output [code] (`max_limit = 1000`; lower limit 0).
pub const MAX_OUTPUT: f64 = 1000.0;
/// Xavier-normal gain and bias fill of the init [code].
pub const INIT_GAIN: f64 = 0.1;
pub const INIT_BIAS: f64 = 1.0;
/// Initial post-multiplier (`inner_loop_lr`) [code].
pub const INIT_POST_LR: f64 = 1e-4;
/// Name prefix of the post-multipliers.
pub const POST_PREFIX: &str = "inner_loop_lrs.";

/// Sizes of the LR network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LrNetConfig {
    /// 2 × #base linears (mean and SD per linear).
    pub input_dim: usize,
    pub hidden: usize,
    pub extra_hidden_layers: usize,
    /// One learning rate per adapter matrix.
    pub outputs: usize,
}

impl LrNetConfig {
    /// The reference's network: `observed` base linears feed the meta-data (mean and SD each;
    /// a causal LM's `lm_head` too) and `adapted` ones carry LoRA (A and B: two rates each).
    pub fn paper(observed: usize, adapted: usize) -> Self {
        Self {
            input_dim: 2 * observed,
            hidden: HIDDEN,
            extra_hidden_layers: EXTRA_HIDDEN_LAYERS,
            outputs: 2 * adapted,
        }
    }

    /// (name, fan_in, fan_out) of every linear layer, in forward order.
    fn layers(&self) -> Vec<(String, usize, usize)> {
        let mut v = vec![("first_layer.0".to_string(), self.input_dim, self.hidden)];
        for i in 0..self.extra_hidden_layers {
            v.push((format!("hl_{i}.0"), self.hidden, self.hidden));
        }
        v.push(("last_layer".to_string(), self.hidden, self.outputs));
        v
    }
}

/// Name of post-multiplier `j`.
pub fn post_name(j: usize) -> String {
    format!("{POST_PREFIX}{j}")
}

/// True for the post-multipliers (optimised with their own Adam lr, clipped separately).
pub fn is_post_multiplier(name: &str) -> bool {
    name.starts_with(POST_PREFIX)
}

/// A fresh, trainable LR network + post-multipliers: weights Xavier-normal with gain 0.1
/// (std = 0.1·√(2/(fan_in+fan_out))) from our seeded stream, biases 1, multipliers 1e-4.
pub fn init_lr_net(cfg: &LrNetConfig, seed: u64, device: &Device) -> Result<ParamStore> {
    if cfg.input_dim == 0 || cfg.hidden == 0 || cfg.outputs == 0 {
        return Err(Fedl2pError::Input(format!("empty LR network {cfg:?}")));
    }
    let mut store = ParamStore::new(device);
    for (name, fan_in, fan_out) in cfg.layers() {
        let std = INIT_GAIN * (2.0 / (fan_in + fan_out) as f64).sqrt();
        let w = crate::nn::normal_tensor(
            derive_seed(seed, &["lr_net".into(), name.as_str().into()]),
            (fan_out, fan_in),
            std,
            device,
            DType::F32,
        )
        .map_err(|e| Fedl2pError::Input(e.to_string()))?;
        store.insert(&format!("{name}.weight"), w, true)?;
        let b = (Tensor::ones(fan_out, DType::F32, device)? * INIT_BIAS)?;
        store.insert(&format!("{name}.bias"), b, true)?;
    }
    for j in 0..cfg.outputs {
        let p = (Tensor::ones(1, DType::F32, device)? * INIT_POST_LR)?;
        store.insert(&post_name(j), p, true)?;
    }
    Ok(store)
}

/// The LR network over the tensors of a store.
pub struct LrNet {
    layers: Vec<(Tensor, Tensor)>,
    post: Vec<Tensor>,
}

impl LrNet {
    pub fn load(store: &ParamStore, cfg: &LrNetConfig) -> Result<Self> {
        let mut layers = Vec::new();
        for (name, fan_in, fan_out) in cfg.layers() {
            layers.push((
                store.get_shaped(&format!("{name}.weight"), &[fan_out, fan_in])?,
                store.get_shaped(&format!("{name}.bias"), &[fan_out])?,
            ));
        }
        let post = (0..cfg.outputs)
            .map(|j| store.get_shaped(&post_name(j), &[1]))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self { layers, post })
    }

    /// The clamped network output (M) for one feature vector (1, in) or (in).
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let mut h = features.flatten_all()?.unsqueeze(0)?;
        let last = self.layers.len() - 1;
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = linear_forward(&h, w, Some(b))?;
            if i < last {
                h = h.relu()?;
            }
        }
        Ok(ste_clamp(&h, 0.0, MAX_OUTPUT)?.squeeze(0)?)
    }

    /// The effective learning rates (M): post-multiplier ⊙ clamped output.
    pub fn learning_rates(&self, features: &Tensor) -> Result<Tensor> {
        let post = Tensor::cat(&self.post, 0)?;
        Ok((post * self.forward(features)?)?)
    }
}

/// A trained LR network saved as safetensors (frozen parameters, f32).
pub fn load_lr_net(path: &std::path::Path, device: &Device) -> Result<ParamStore> {
    ParamStore::load_safetensors(path, device, DType::F32, |_| false)
        .map_err(|e| Fedl2pError::Input(format!("{}: {e}", path.display())))
}

/// Named trainable tensors.
pub type NamedVars = Vec<(String, Var)>;

/// The store's trainable parameters split into (network, post-multipliers).
pub fn meta_params(store: &ParamStore) -> (NamedVars, NamedVars) {
    store
        .trainable()
        .into_iter()
        .partition(|(n, _)| !is_post_multiplier(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_rates_are_about_the_post_multiplier() {
        let cfg = LrNetConfig::paper(5, 5);
        let store = init_lr_net(&cfg, 3, &Device::Cpu).unwrap();
        // 3 layers × (weight, bias) + 10 multipliers.
        assert_eq!(store.len(), 16);
        let (net, post) = meta_params(&store);
        assert_eq!((net.len(), post.len()), (6, 10));
        let net = LrNet::load(&store, &cfg).unwrap();
        let x = Tensor::ones((1, 10), DType::F32, &Device::Cpu).unwrap();
        let out: Vec<f32> = net.forward(&x).unwrap().to_vec1().unwrap();
        // Bias 1 everywhere and small weights: outputs ≈ 1 (gain 0.1 keeps the spread small).
        assert!(out.iter().all(|v| (v - 1.0).abs() < 0.5), "{out:?}");
        let lrs: Vec<f32> = net.learning_rates(&x).unwrap().to_vec1().unwrap();
        for (l, o) in lrs.iter().zip(&out) {
            assert!((l - 1e-4 * o).abs() < 1e-10);
        }
        let other = init_lr_net(&cfg, 4, &Device::Cpu).unwrap();
        assert_ne!(
            LrNet::load(&other, &cfg)
                .unwrap()
                .forward(&x)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            out
        );
    }

    #[test]
    fn output_is_clamped_at_zero_with_straight_through_gradient() {
        let cfg = LrNetConfig {
            input_dim: 2,
            hidden: 3,
            extra_hidden_layers: 1,
            outputs: 2,
        };
        let mut store = init_lr_net(&cfg, 1, &Device::Cpu).unwrap();
        // A last-layer bias of −5 drives output 0 below the clamp.
        let b = Tensor::new(&[-5f32, 1.0], &Device::Cpu).unwrap();
        store.insert("last_layer.bias", b, true).unwrap();
        let net = LrNet::load(&store, &cfg).unwrap();
        let x = Tensor::new(&[[0.5f32, -0.5]], &Device::Cpu).unwrap();
        let lrs = net.learning_rates(&x).unwrap();
        let v: Vec<f32> = lrs.to_vec1().unwrap();
        assert_eq!(v[0], 0.0);
        assert!(v[1] > 0.0);
        let g = lrs.sum_all().unwrap().backward().unwrap();
        let bias = store.param("last_layer.bias").unwrap().tensor().clone();
        let gb: Vec<f32> = g.get(&bias).unwrap().to_vec1().unwrap();
        // d lr_0 / d bias_0 = post_0 = 1e-4 despite the clamp.
        assert!((gb[0] - 1e-4).abs() < 1e-10, "{gb:?}");
    }
}
