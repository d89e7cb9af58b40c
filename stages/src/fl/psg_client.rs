//! A FedP2EFT client round (PAPER_NOTES §5): λ₀ = PSG(meta-data) → Stage 1 BayesTune-LoRA on
//! the client's train set from λ₀ → Stage 2: ten Adam steps of summed-L1 regression of the PSG
//! onto the trained (unclamped) λ → the PSG weights go back for FedAvg by sample count.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

#[cfg(test)]
use super::engine::Weights;
use super::engine::{ClientRound, ClientUpdate, LocalTrainer};
use super::fedavg_client::ShardLoader;
use super::meta_client::{store_update, trainable_store, FeatureCache};
use crate::methods::meta_features;
use crate::methods::stage1::{train_stage1, LambdaInit, Stage1Config};
use crate::params::ParamStore;
use crate::psg::{regress, Psg, PsgConfig};
use crate::task::{TaskModel, WeightDtype};

/// Settings of a PSG round; [`PsgRun::paper`] is PAPER_NOTES §5.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PsgRun {
    pub psg: PsgConfig,
    pub stage1: Stage1Config,
    pub regression_steps: usize,
    pub regression_lr: f64,
    /// Seed of the adapters' initial A in Stage 1: the run seed, shared by every client and
    /// round as in the reference (which seeds before creating the adapters).
    pub init_seed: u64,
    /// Precision of the PSG's λ output (the reference casts the PSG to the model's bf16).
    pub lambda_dtype: WeightDtype,
}

impl PsgRun {
    /// `observed` base linears feed the meta-data; `modules` are adapted.
    pub fn paper(observed: usize, modules: usize, init_seed: u64) -> Self {
        let stage1 = Stage1Config::default();
        Self {
            psg: PsgConfig {
                observed,
                modules,
                r_max: stage1.bayestune.r_max,
            },
            stage1,
            regression_steps: crate::psg::REGRESSION_STEPS,
            regression_lr: crate::psg::REGRESSION_LR,
            init_seed,
            lambda_dtype: WeightDtype::F32,
        }
    }
}

/// A client's base model by id: the shared base, or the client's own (DEPT, FedDPA-T).
pub type BaseLoader<'a> = Box<dyn Fn(u32) -> Result<Arc<TaskModel>, String> + 'a>;

/// [`LocalTrainer`] of the federated PSG training. Meta-data are cached per client: the base
/// model never changes during PSG training, so they are the same every round.
pub struct PsgClient<'a> {
    base: BaseLoader<'a>,
    shards: ShardLoader<'a>,
    run: PsgRun,
    device: Device,
    features: FeatureCache,
}

impl<'a> PsgClient<'a> {
    pub fn new(base: BaseLoader<'a>, shards: ShardLoader<'a>, run: PsgRun, device: Device) -> Self {
        Self {
            base,
            shards,
            run,
            features: FeatureCache::new(&device),
            device,
        }
    }
}

impl LocalTrainer for PsgClient<'_> {
    fn train(&mut self, ctx: ClientRound<'_>) -> Result<ClientUpdate, String> {
        let model = (self.base)(ctx.client)?;
        let train = (self.shards)(ctx.client)?;
        if train.is_empty() {
            return Err("no training examples".into());
        }
        let feats = self.features.get(ctx.client, &model, &train)?;
        let store = trainable_store(ctx.global, &self.device)?;
        let psg = Psg::load(&store, &self.run.psg).map_err(|e| e.to_string())?;
        let lambda0 = psg
            .forward(&feats)
            .and_then(|l| self.run.lambda_dtype.round(&l.detach().flatten_all()?))
            .map_err(|e| e.to_string())?;
        let s1 = train_stage1(
            &model,
            &train,
            &self.run.stage1,
            &LambdaInit::Flat(lambda0.clone()),
            self.run.init_seed,
            ctx.seed,
        )
        .map_err(|e| e.to_string())?;
        let flat = s1.flat();
        let n = flat.len();
        let target = Tensor::from_vec(flat, n, &self.device).map_err(|e| e.to_string())?;
        let losses = regress(
            &store,
            &self.run.psg,
            &feats,
            &target,
            self.run.regression_steps,
            self.run.regression_lr,
        )
        .map_err(|e| format!("PSG regression: {e}"))?;
        let mut update = store_update(&store, train.len(), s1.mean_loss)?;
        // How far the PSG's λ₀ is from the λ Stage 1 learned from it (mean |Δ| per element),
        // before and after this round's regression, and the scale of both.
        let per = |l: f32| f64::from(l) / n as f64;
        let mean = |t: &Tensor| -> Result<f64, String> {
            t.mean_all()
                .and_then(|m| m.to_dtype(DType::F64)?.to_scalar::<f64>())
                .map_err(|e| e.to_string())
        };
        let psg_mean = mean(&lambda0)?;
        let target_mean = mean(&target)?;
        let first = losses.first().copied().map(per).unwrap_or(f64::NAN);
        let last = losses.last().copied().map(per).unwrap_or(f64::NAN);
        update.extra = [
            ("psg_lambda_mean", psg_mean),
            ("stage1_lambda_mean", target_mean),
            ("regression_l1_first", first),
            ("regression_l1_last", last),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(update)
    }
}

/// λ = PSG(meta-data of `model` on `train`), laid out module by module (r_max per module):
/// what FedP2EFT personalization selects ranks from (§5 end).
pub fn psg_lambdas(
    psg_store: &ParamStore,
    cfg: &PsgConfig,
    model: &TaskModel,
    train: &[datasets::Example],
    dtype: WeightDtype,
) -> Result<Vec<Vec<f32>>, String> {
    let feats = meta_features(model, train)
        .map_err(|e| e.to_string())?
        .to_device(psg_store.device())
        .map_err(|e| e.to_string())?;
    let psg = Psg::load(psg_store, cfg).map_err(|e| e.to_string())?;
    let flat: Vec<f32> = psg
        .forward(&feats)
        .and_then(|l| dtype.round(&l.flatten_all()?)?.to_vec1::<f32>())
        .map_err(|e| e.to_string())?;
    Ok(flat.chunks(cfg.r_max).map(<[f32]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fl::engine::{run_rounds, EngineConfig, EngineState};
    use crate::methods::testutil::max_abs_diff;
    use crate::methods::testutil::{examples, tiny_model};
    use crate::peft::bayestune::BayesTuneConfig;
    use crate::psg::init_psg;

    fn run() -> PsgRun {
        let mut r = PsgRun::paper(8, 8, 7);
        r.psg.r_max = 4;
        r.stage1.bayestune = BayesTuneConfig {
            r_max: 4,
            alpha: 8.0,
            ..BayesTuneConfig::default()
        };
        r.stage1.batch_size = 4;
        r.regression_lr = 1e-2;
        r
    }

    fn train(seed: u64) -> EngineState {
        let model = Arc::new(tiny_model());
        let base: BaseLoader<'_> = Box::new(move |_| Ok(model.clone()));
        let shards: ShardLoader<'_> = Box::new(|c| Ok(examples(8 + c as usize, c as usize)));
        let mut client = PsgClient::new(base, shards, run(), Device::Cpu);
        let init = init_psg(&run().psg, 1, &Device::Cpu).unwrap();
        let global: Weights = init.export(|_| true).unwrap().into_iter().collect();
        let cfg = EngineConfig {
            rounds: 2,
            fraction: 1.0,
            min_clients: 1,
            eval_every: None,
            seed,
        };
        run_rounds(
            &cfg,
            &[0, 1, 2],
            &mut client,
            EngineState::new(global),
            |_| Ok(()),
        )
        .unwrap()
    }

    #[test]
    fn rounds_move_the_psg_and_are_reproducible() {
        let a = train(3);
        let b = train(3);
        let losses = |s: &EngineState| -> Vec<(f32, Vec<u32>)> {
            s.metrics
                .iter()
                .map(|m| (m.mean_train_loss, m.clients.clone()))
                .collect()
        };
        assert_eq!(losses(&a), losses(&b));
        for (k, t) in &a.global {
            let d = max_abs_diff(t, &b.global[k]);
            assert_eq!(d, 0.0, "{k} differs between identical runs");
        }
        let init = init_psg(&run().psg, 1, &Device::Cpu).unwrap();
        let moved = max_abs_diff(
            &a.global["last_layer.bias"],
            &init.get("last_layer.bias").unwrap(),
        );
        assert!(moved > 1e-3, "the regression should move the PSG ({moved})");
        // The trained PSG gives every module r_max values.
        let store = ParamStore::from_tensors(
            a.global.clone().into_iter().collect(),
            &Device::Cpu,
            candle_core::DType::F32,
            |_| false,
        )
        .unwrap();
        let l = psg_lambdas(
            &store,
            &run().psg,
            &tiny_model(),
            &examples(6, 0),
            WeightDtype::F32,
        )
        .unwrap();
        assert_eq!(l.len(), 8);
        assert!(l
            .iter()
            .all(|v| v.len() == 4 && v.iter().all(|x| (1e-4..=1000.0).contains(x))));
        // With a bf16 model the λ are bf16 values (the reference's PSG runs in bf16).
        let b = psg_lambdas(
            &store,
            &run().psg,
            &tiny_model(),
            &examples(6, 0),
            WeightDtype::Bf16,
        )
        .unwrap();
        for (x, y) in l.iter().flatten().zip(b.iter().flatten()) {
            assert_eq!(*y, half::bf16::from_f32(*y).to_f32(), "{y} is a bf16 value");
            assert!((x - y).abs() <= x.abs() / 128.0, "{x} vs {y}");
        }
    }
}
