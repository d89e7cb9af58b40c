//! A FedL2P client round (PAPER_NOTES §6) on a model of either task: split the client's
//! training examples 80/20 into train/val, meta-data of the train part, LoRA of rank r_b on
//! every adapted linear from the run's shared init (as the reference seeds the adapters
//! identically for every client), then `fedl2p::meta::meta_train`; the LR network and
//! post-multipliers go back for FedAvg by train-part size. The client's mean validation loss is
//! reported through [`LocalTrainer::evaluate`] as the round's `eval` (the server's
//! early-stopping signal).

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use datasets::Example;

use super::engine::{ClientRound, ClientUpdate, EngineState, LocalTrainer, Weights};
use super::fedavg_client::ShardLoader;
use super::meta_client::{store_update, trainable_store, FeatureCache};
use super::psg_client::BaseLoader;
use crate::fedl2p::lr_net::LrNetConfig;
use crate::fedl2p::meta::{meta_train, MetaConfig};
use crate::fedl2p::{split_train_val, Fedl2pError, InnerModel, Split};
use crate::methods::fedl2p::lora_adapters;
use crate::nn::DropoutRng;
#[cfg(test)]
use crate::params::ParamStore;
use crate::params::{safetensors_bytes, tensors_from_bytes};
use crate::peft::layer::ForwardCtx;
use crate::rng::derive_seed;
use crate::task::{Net, TaskModel};

/// FedL2P's adapted model as an [`InnerModel`]: LoRA matrices in LR order, batch-mean task
/// losses (classification: per example; causal LM: per response token) on the client's train
/// and validation parts.
pub struct LoraInner<'a> {
    model: &'a TaskModel,
    net: Net,
    params: Vec<Var>,
    train: &'a [Example],
    val: &'a [Example],
}

impl InnerModel for LoraInner<'_> {
    fn params(&self) -> &[Var] {
        &self.params
    }

    fn len(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train.len(),
            Split::Val => self.val.len(),
        }
    }

    fn loss(
        &self,
        split: Split,
        idx: &[usize],
        dropout_seed: u64,
    ) -> crate::fedl2p::Result<Tensor> {
        let examples = match split {
            Split::Train => self.train,
            Split::Val => self.val,
        };
        let batch = self
            .model
            .batch(examples, idx)
            .map_err(Fedl2pError::Model)?;
        let rng = DropoutRng::new(dropout_seed);
        let (sum, n) = self.net.task_loss_sum(&batch, &ForwardCtx::train(&rng))?;
        if n == 0 {
            return Err(Fedl2pError::Model(format!(
                "{split:?} batch {idx:?} has nothing to score"
            )));
        }
        Ok((sum / n as f64)?)
    }
}

/// Settings of a FedL2P round; `paper` is PAPER_NOTES §6.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fedl2pRoundConfig {
    /// r_b: rank of every adapter.
    pub budget: usize,
    pub val_ratio: f64,
    pub net: LrNetConfig,
    pub meta: MetaConfig,
    /// Seed of the adapters' initial A, shared by every client and round.
    pub init_seed: u64,
    /// Seed of the train/val splits (per client: derived with the client id).
    pub split_seed: u64,
}

impl Fedl2pRoundConfig {
    /// `observed` base linears feed the meta-data, `adapted` ones carry LoRA.
    pub fn paper(
        observed: usize,
        adapted: usize,
        budget: usize,
        init_seed: u64,
        split_seed: u64,
    ) -> Self {
        Self {
            budget,
            val_ratio: VAL_RATIO,
            net: LrNetConfig::paper(observed, adapted),
            meta: MetaConfig::default(),
            init_seed,
            split_seed,
        }
    }
}

/// Fraction of a client's training examples held out for the meta-objective [code].
pub const VAL_RATIO: f64 = 0.2;

/// A client's (train, val) parts: the same split in federated training and personalization.
pub fn client_split(
    examples: &[Example],
    val_ratio: f64,
    split_seed: u64,
    client: u32,
) -> Result<(Vec<Example>, Vec<Example>), String> {
    split_train_val(
        examples,
        val_ratio,
        derive_seed(split_seed, &[client.into()]),
    )
    .map_err(|e| e.to_string())
}

/// [`LocalTrainer`] of FedL2P's federated training. Meta-data are cached per client (the base
/// never changes); the validation losses of the current round are kept for `evaluate`.
pub struct Fedl2pClient<'a> {
    base: BaseLoader<'a>,
    shards: ShardLoader<'a>,
    cfg: Fedl2pRoundConfig,
    device: Device,
    features: FeatureCache,
    round: u64,
    val_losses: Vec<f32>,
}

impl<'a> Fedl2pClient<'a> {
    pub fn new(
        base: BaseLoader<'a>,
        shards: ShardLoader<'a>,
        cfg: Fedl2pRoundConfig,
        device: Device,
    ) -> Self {
        Self {
            base,
            shards,
            cfg,
            features: FeatureCache::new(&device),
            device,
            round: 0,
            val_losses: Vec::new(),
        }
    }
}

impl LocalTrainer for Fedl2pClient<'_> {
    fn train(&mut self, ctx: ClientRound<'_>) -> Result<ClientUpdate, String> {
        if ctx.round != self.round {
            self.round = ctx.round;
            self.val_losses.clear();
        }
        let model = (self.base)(ctx.client)?;
        let all = (self.shards)(ctx.client)?;
        let (train, val) = client_split(&all, self.cfg.val_ratio, self.cfg.split_seed, ctx.client)?;
        let feats = self.features.get(ctx.client, &model, &train)?;
        let net_store = trainable_store(ctx.global, &self.device)?;
        let ad = lora_adapters(&model, self.cfg.budget, self.cfg.init_seed)
            .map_err(|e| e.to_string())?;
        let net = model.net(&ad.store, &ad.spec)?;
        let params: Vec<Var> = ad.matrices.iter().map(|(_, v)| v.clone()).collect();
        let init: Vec<Tensor> = params
            .iter()
            .map(|p| p.as_tensor().copy())
            .collect::<candle_core::Result<_>>()
            .map_err(|e| e.to_string())?;
        let (train, val) = (model.trainable(&train)?, model.trainable(&val)?);
        let inner = LoraInner {
            model: &model,
            net,
            params,
            train: &train,
            val: &val,
        };
        let out = meta_train(
            &inner,
            &init,
            &net_store,
            &self.cfg.net,
            &feats,
            &self.cfg.meta,
            ctx.seed,
        )
        .map_err(|e| e.to_string())?;
        self.val_losses.push(out.val_loss);
        store_update(&net_store, train.len(), out.train_loss)
    }

    /// The unweighted mean of this round's client validation losses (`np.mean` in the
    /// reference's server).
    fn evaluate(&mut self, round: u64, _global: &Weights) -> Result<Option<f64>, String> {
        if round != self.round || self.val_losses.is_empty() {
            return Err(format!(
                "no validation losses were reported in round {round}"
            ));
        }
        let sum: f64 = self.val_losses.iter().map(|v| f64::from(*v)).sum();
        Ok(Some(sum / self.val_losses.len() as f64))
    }
}

/// A resumable FedL2P run: the round loop's state plus the weights of the best round so far.
#[derive(Debug, Clone)]
pub struct Fedl2pState {
    pub engine: EngineState,
    pub best: Option<Weights>,
}

const MAGIC: &[u8; 8] = b"FL2PSTA1";

impl Fedl2pState {
    /// `MAGIC | u64 engine length | engine state | safetensors of the best weights (may be
    /// empty)`: exact bytes, so a resumed run is bit-identical.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let engine = self.engine.to_bytes().map_err(|e| e.to_string())?;
        let best = match &self.best {
            Some(w) => {
                let map: HashMap<String, Tensor> =
                    w.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                safetensors_bytes(&map).map_err(|e| e.to_string())?
            }
            None => Vec::new(),
        };
        let mut out = Vec::with_capacity(16 + engine.len() + best.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(engine.len() as u64).to_le_bytes());
        out.extend_from_slice(&engine);
        out.extend_from_slice(&best);
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self, String> {
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err("not a FedL2P state (bad magic)".into());
        }
        let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
        let end = 16usize
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or("truncated FedL2P state")?;
        let engine = EngineState::from_bytes(&bytes[16..end], device).map_err(|e| e.to_string())?;
        let best = if end == bytes.len() {
            None
        } else {
            Some(
                tensors_from_bytes(&bytes[end..], device)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .collect(),
            )
        };
        Ok(Self { engine, best })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fedl2p::inner::InnerConfig;
    use crate::fedl2p::lr_net::init_lr_net;
    use crate::fl::engine::{run_rounds, EngineConfig};
    use crate::methods::all_linear;
    use crate::methods::testutil::{examples, tiny_model};
    use std::sync::Arc;

    fn cfg() -> Fedl2pRoundConfig {
        let m = tiny_model();
        let mut c = Fedl2pRoundConfig::paper(m.observed_linears(), all_linear(&m).len(), 2, 3, 4);
        c.meta.outer_steps = 1;
        c.meta.pairs = 2;
        c.meta.inner = InnerConfig {
            epochs: 1,
            batch_size: 4,
            ..InnerConfig::default()
        };
        c
    }

    fn train(seed: u64, rounds: u64, from: Option<EngineState>) -> EngineState {
        let model = Arc::new(tiny_model());
        let base: BaseLoader<'_> = Box::new(move |_| Ok(model.clone()));
        let shards: ShardLoader<'_> = Box::new(|c| Ok(examples(10 + c as usize, c as usize)));
        let mut client = Fedl2pClient::new(base, shards, cfg(), Device::Cpu);
        let init = init_lr_net(&cfg().net, 1, &Device::Cpu).unwrap();
        let global: Weights = init.export(|_| true).unwrap().into_iter().collect();
        let engine = EngineConfig {
            rounds,
            fraction: 1.0,
            min_clients: 1,
            eval_every: Some(1),
            seed,
        };
        let state = from.unwrap_or_else(|| EngineState::new(global));
        run_rounds(&engine, &[0, 1], &mut client, state, |_| Ok(())).unwrap()
    }

    #[test]
    fn rounds_report_validation_loss_move_the_lr_net_and_resume_exactly() {
        let a = train(3, 2, None);
        assert_eq!(a.metrics.len(), 2);
        assert!(a.metrics.iter().all(|m| m.eval.is_some_and(|v| v > 0.0)));
        let host = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let init = init_lr_net(&cfg().net, 1, &Device::Cpu).unwrap();
        let before = host(&init.get("last_layer.bias").unwrap());
        let after = host(&a.global["last_layer.bias"]);
        let moved = after
            .iter()
            .zip(&before)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(moved > 1e-5, "the LR net should move ({moved})");
        // Round 1, serialised with a best, then round 2: identical to the straight run.
        let one = train(3, 1, None);
        let saved = Fedl2pState {
            engine: one.clone(),
            best: Some(one.global.clone()),
        }
        .to_bytes()
        .unwrap();
        let back = Fedl2pState::from_bytes(&saved, &Device::Cpu).unwrap();
        assert_eq!(back.best.as_ref().map(|b| b.len()), Some(one.global.len()));
        let resumed = train(3, 2, Some(back.engine));
        for (k, t) in &a.global {
            assert_eq!(host(t), host(&resumed.global[k]), "{k}");
        }
        assert_eq!(a.metrics[1].eval, resumed.metrics[1].eval);
        assert!(Fedl2pState::from_bytes(b"garbage!", &Device::Cpu).is_err());
    }
}

#[cfg(test)]
mod causal_lm_tests {
    use super::*;
    use crate::fedl2p::inner::InnerConfig;
    use crate::fedl2p::lr_net::init_lr_net;
    use crate::fl::engine::{run_rounds, EngineConfig};
    use crate::methods::all_linear;
    use crate::methods::fedl2p::{lora_adapters, personalize_fedl2p, Fedl2pRun};
    use crate::task::causal_lm::tests::{ex, tiny};
    use crate::task::Outputs;
    use std::sync::Arc;

    fn tiny_lm() -> TaskModel {
        tiny().into()
    }

    /// The same code trains and applies the LR network on a LLaMA causal LM: the meta-data
    /// include `lm_head`'s input (one linear more than the adapted ones) and the hypergradient
    /// runs through the decoder's second derivatives.
    #[test]
    fn a_round_and_personalization_run_on_a_causal_lm() {
        let m = tiny_lm();
        let (observed, adapted) = (m.observed_linears(), all_linear(&m).len());
        assert_eq!(observed, adapted + 1);
        let mut cfg = Fedl2pRoundConfig::paper(observed, adapted, 2, 3, 4);
        cfg.meta.outer_steps = 1;
        cfg.meta.pairs = 2;
        cfg.meta.inner = InnerConfig {
            epochs: 1,
            batch_size: 2,
            accumulate: 2,
            ..InnerConfig::default()
        };
        let model = Arc::new(m);
        let shared = model.clone();
        let base: BaseLoader<'_> = Box::new(move |_| Ok(shared.clone()));
        let shards: ShardLoader<'_> = Box::new(|_| Ok((0..10).map(ex).collect()));
        let mut client = Fedl2pClient::new(base, shards, cfg, Device::Cpu);
        let init = init_lr_net(&cfg.net, 1, &Device::Cpu).unwrap();
        let global: Weights = init.export(|_| true).unwrap().into_iter().collect();
        let engine = EngineConfig {
            rounds: 1,
            fraction: 1.0,
            min_clients: 1,
            eval_every: Some(1),
            seed: 2,
        };
        let state = run_rounds(&engine, &[0], &mut client, EngineState::new(global), |_| {
            Ok(())
        })
        .unwrap();
        let val = state.metrics[0].eval.unwrap();
        assert!(val.is_finite() && val > 0.0, "{val}");
        let store = ParamStore::from_tensors(
            state.global.into_iter().collect(),
            &Device::Cpu,
            candle_core::DType::F32,
            |_| false,
        )
        .unwrap();
        let run = Fedl2pRun {
            budget: 2,
            epochs: 1,
            batch_size: 2,
            accumulate: 1,
            init_seed: cfg.init_seed,
            seed: 3,
        };
        drop(client);
        let model = Arc::try_unwrap(model).ok().unwrap();
        let train: Vec<Example> = (0..6).map(ex).collect();
        let test: Vec<Example> = (6..8).map(ex).collect();
        let (out, rates) =
            personalize_fedl2p(model, &train, &test, &store, &cfg.net, &run).unwrap();
        assert_eq!(rates.len(), 2 * adapted);
        assert!(matches!(out.predictions, Outputs::Texts(ref t) if t.len() == 2));
    }

    /// Second derivatives through the LLaMA decoder (RoPE, RMSNorm, SwiGLU, f32 softmax) are
    /// exact: H·v of the LoRA loss against central differences of the gradient. f32, ε = 1e-2:
    /// tolerance 2 % of ‖H·v‖ (truncation and rounding of the difference quotient; measured
    /// 0.8 %).
    #[test]
    fn llama_hessian_vector_products_match_finite_differences() {
        use crate::nn::normal_tensor;
        use crate::second_order::{gradients_with_graph, hessian_vector_product};
        let m = tiny_lm();
        let ad = lora_adapters(&m, 2, 7).unwrap();
        for (k, (name, v)) in ad.matrices.iter().enumerate() {
            if name.contains("lora_B") {
                let (r, c) = v.as_tensor().dims2().unwrap();
                let b = normal_tensor(
                    k as u64,
                    (r, c),
                    0.05,
                    &Device::Cpu,
                    candle_core::DType::F32,
                )
                .unwrap();
                v.set(&b).unwrap();
            }
        }
        let net = m.net(&ad.store, &ad.spec).unwrap();
        let params: Vec<Var> = ad.matrices.iter().map(|(_, v)| v.clone()).collect();
        let train = m.trainable(&(0..4).map(ex).collect::<Vec<_>>()).unwrap();
        let inner = LoraInner {
            model: &m,
            net,
            params: params.clone(),
            train: &train,
            val: &train,
        };
        let dir: Vec<Tensor> = params
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let (r, c) = p.as_tensor().dims2().unwrap();
                normal_tensor(
                    100 + k as u64,
                    (r, c),
                    1.0,
                    &Device::Cpu,
                    candle_core::DType::F32,
                )
                .unwrap()
            })
            .collect();
        let loss =
            crate::nn::fused::composite_scope(|| inner.loss(Split::Train, &[0, 1, 2], 0)).unwrap();
        let g = gradients_with_graph(&loss, &params).unwrap();
        let hv = hessian_vector_product(&g, &params, &dir).unwrap();
        let theta: Vec<Tensor> = params
            .iter()
            .map(|p| p.as_tensor().copy().unwrap())
            .collect();
        let grad_at = |step: f64| -> Vec<Tensor> {
            for ((p, t), d) in params.iter().zip(&theta).zip(&dir) {
                p.set(&(t + (d * step).unwrap()).unwrap()).unwrap();
            }
            let grads = inner
                .loss(Split::Train, &[0, 1, 2], 0)
                .unwrap()
                .backward()
                .unwrap();
            params
                .iter()
                .map(|p| grads.get(p.as_tensor()).unwrap().copy().unwrap())
                .collect()
        };
        let eps = 1e-2;
        let (plus, minus) = (grad_at(eps), grad_at(-eps));
        let (mut err, mut norm) = (0f64, 0f64);
        for ((h, a), b) in hv.iter().zip(&plus).zip(&minus) {
            let fd = ((a - b).unwrap() / (2.0 * eps)).unwrap();
            let d: Vec<f32> = (h - &fd).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let f: Vec<f32> = fd.flatten_all().unwrap().to_vec1().unwrap();
            err += d.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>();
            norm += f.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>();
        }
        let rel = (err / norm).sqrt();
        assert!(norm > 1e-6, "degenerate test: ‖FD‖² = {norm}");
        assert!(rel < 2e-2, "‖H·v − FD‖ / ‖FD‖ = {rel:.3e}");
    }
}
