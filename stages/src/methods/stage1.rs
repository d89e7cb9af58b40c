//! Stage 1 of BayesTune-LoRA (PAPER_NOTES §3): rank-r_max adapters with a per-rank λ on every
//! linear, trained with CE + (100·L_B + 0.01·L_λ)/N by AdamW (lr 1e-4 for A and B, 1e-2 for λ,
//! weight decay 0, constant lr, 2 epochs), gradient-norm clipping 1.0 over A and B only. As in
//! the reference, λ's gradient is never zeroed between steps: λ is a plain tensor the HF
//! Trainer's `model.zero_grad()` does not reach (`btlora/layer.py` `fedbt_update_bts`), so its
//! AdamW group steps with the running sum of all λ gradients so far.
//! FedP2EFT runs it in every PSG round with λ initialised from the PSG; the BayesTune-LoRA
//! baseline runs it once per client from λ = 1e-4.

use candle_core::{DType, Tensor, Var};
use datasets::Example;

use super::Result;
use super::{all_linear, frozen_store, step};
use crate::fit::{fit, Fit};
use crate::fit::{Clip, Regulariser};
use crate::optim::{Adam, AdamConfig, ParamGroup};
use crate::peft::bayestune::{add_bayestune, lambdas, set_lambdas_flat, BayesTuneConfig};
use crate::peft::is_adapter_param;
use crate::task::TaskModel;

/// Stage-1 settings; [`Default`] is PAPER_NOTES §3.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage1Config {
    pub bayestune: BayesTuneConfig,
    pub epochs: usize,
    pub batch_size: usize,
    /// Micro-batches per optimiser step (Fed-Aya: 4 × 4).
    pub accumulate: usize,
    pub lr_adapter: f64,
    pub lr_lambda: f64,
    pub clip_norm: f64,
}

impl Default for Stage1Config {
    fn default() -> Self {
        Self {
            bayestune: BayesTuneConfig::default(),
            epochs: 2,
            batch_size: 32,
            accumulate: 1,
            lr_adapter: 1e-4,
            lr_lambda: 1e-2,
            clip_norm: 1.0,
        }
    }
}

/// Where λ starts: the constant `bayestune.lambda_init`, or a PSG output laid out module by
/// module (L × r_max values).
#[derive(Debug, Clone)]
pub enum LambdaInit {
    Constant,
    Flat(Tensor),
}

/// Trained λ per module (module order, raw: not clamped) and the mean training loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage1Out {
    pub lambdas: Vec<Vec<f32>>,
    pub mean_loss: f32,
}

impl Stage1Out {
    /// λ of every module concatenated (the PSG regression target, §5).
    pub fn flat(&self) -> Vec<f32> {
        self.lambdas.iter().flatten().copied().collect()
    }
}

/// Runs Stage 1 on `train` from the client's base `model` (left unchanged). The adapters' A
/// is drawn from `init_seed` (PAPER_NOTES §3 [code]: the run seed, the same for every client,
/// so pruning can restore it later); shuffling and dropout draw from `seed`.
pub fn train_stage1(
    model: &TaskModel,
    train: &[Example],
    cfg: &Stage1Config,
    init: &LambdaInit,
    init_seed: u64,
    seed: u64,
) -> Result<Stage1Out> {
    let s = step("bayestune stage 1");
    let mut store = frozen_store(model)?;
    let modules = all_linear(model);
    add_bayestune(&mut store, &modules, &cfg.bayestune, init_seed, DType::F32)
        .map_err(|e| s(e.to_string()))?;
    if let LambdaInit::Flat(t) = init {
        set_lambdas_flat(&mut store, &modules, t).map_err(|e| s(e.to_string()))?;
    }
    let net = model.net(&store, &cfg.bayestune.spec()).map_err(&s)?;
    let train = &model.trainable(train).map_err(&s)?;
    type Named = Vec<(String, Var)>;
    let (lam, ab): (Named, Named) = store
        .trainable()
        .into_iter()
        .filter(|(n, _)| is_adapter_param(n))
        .partition(|(n, _)| n.ends_with(".lora_lambda"));
    let clip_vars: Vec<&Var> = ab.iter().map(|(_, v)| v).collect();
    let lam_vars: Vec<Var> = lam.iter().map(|(_, v)| v.clone()).collect();
    let clip = Clip {
        vars: &clip_vars,
        max_norm: cfg.clip_norm,
    };
    let mut opt = Adam::new(
        AdamConfig::adamw(),
        vec![
            ParamGroup {
                params: ab.clone(),
                lr: cfg.lr_adapter,
                weight_decay: 0.0,
            },
            ParamGroup {
                params: lam,
                lr: cfg.lr_lambda,
                weight_decay: 0.0,
            },
        ],
    )
    .map_err(|e| s(e.to_string()))?;
    let batch = |ex: &[Example], idx: &[usize]| model.batch(ex, idx);
    let fit_cfg = Fit {
        accumulate: cfg.accumulate,
        reg: Regulariser::BayesTune {
            store: &store,
            modules: &modules,
            n_train: train.len(),
        },
        clip: Some(&clip),
        carry: &lam_vars,
        ..Fit::plain(&batch, cfg.epochs, cfg.batch_size)
    };
    let mean_loss = fit(&net, train, &mut opt, &fit_cfg, seed, |_, _| Ok(())).map_err(&s)?;
    let mut out = Vec::with_capacity(modules.len());
    for t in lambdas(&store, &modules).map_err(|e| s(e.to_string()))? {
        out.push(
            t.to_dtype(DType::F32)
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| s(e.to_string()))?,
        );
    }
    Ok(Stage1Out {
        lambdas: out,
        mean_loss,
    })
}

/// Writes λ per module as one safetensors file (tensor name = module name, r values each).
pub fn write_lambdas(
    path: &std::path::Path,
    modules: &[crate::peft::LinearShape],
    lambdas: &[Vec<f32>],
) -> Result<()> {
    let s = step("write λ");
    let mut map = std::collections::HashMap::new();
    for (m, l) in modules.iter().zip(lambdas) {
        let t = Tensor::from_vec(l.clone(), l.len(), &candle_core::Device::Cpu)
            .map_err(|e| s(e.to_string()))?;
        map.insert(m.name.clone(), t);
    }
    crate::params::write_safetensors(&map, path).map_err(|e| s(format!("{}: {e}", path.display())))
}

/// Reads what [`write_lambdas`] wrote, in the order of `modules`.
pub fn read_lambdas(
    path: &std::path::Path,
    modules: &[crate::peft::LinearShape],
) -> Result<Vec<Vec<f32>>> {
    let s = step("read λ");
    let tensors = crate::params::read_safetensors(path, &candle_core::Device::Cpu)
        .map_err(|e| s(format!("{}: {e}", path.display())))?;
    let mut out = Vec::with_capacity(modules.len());
    for m in modules {
        let t = tensors
            .get(&m.name)
            .ok_or_else(|| s(format!("{}: no λ for module `{}`", path.display(), m.name)))?;
        out.push(
            t.to_dtype(DType::F32)
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| s(format!("{}: `{}`: {e}", path.display(), m.name)))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testutil::max_abs_diff;
    use crate::methods::testutil::{examples, tiny_model};

    fn cfg() -> Stage1Config {
        Stage1Config {
            bayestune: BayesTuneConfig {
                r_max: 4,
                alpha: 8.0,
                ..BayesTuneConfig::default()
            },
            batch_size: 4,
            ..Stage1Config::default()
        }
    }

    #[test]
    fn learns_lambda_reproducibly_and_leaves_the_base_alone() {
        let model = tiny_model();
        let before = model.store().export(|_| true).unwrap();
        let train = examples(12, 0);
        let a = train_stage1(&model, &train, &cfg(), &LambdaInit::Constant, 1, 2).unwrap();
        assert_eq!(a.lambdas.len(), 8, "one λ vector per linear");
        assert!(a.lambdas.iter().all(|l| l.len() == 4));
        // lr 1e-2 on λ over 6 steps moves it away from the 1e-4 init.
        assert!(
            a.flat().iter().any(|v| (v - 1e-4).abs() > 1e-3),
            "{:?}",
            a.lambdas
        );
        assert!(a.mean_loss.is_finite());
        let b = train_stage1(&model, &train, &cfg(), &LambdaInit::Constant, 1, 2).unwrap();
        assert_eq!(a, b, "same seeds, same λ");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lambda.safetensors");
        let mods = all_linear(&model);
        write_lambdas(&path, &mods, &a.lambdas).unwrap();
        assert_eq!(
            read_lambdas(&path, &mods).unwrap(),
            a.lambdas,
            "exact round trip"
        );
        let c = train_stage1(&model, &train, &cfg(), &LambdaInit::Constant, 1, 3).unwrap();
        assert_ne!(a, c, "the shuffling seed matters");
        for (k, v) in model.store().export(|_| true).unwrap() {
            let d = max_abs_diff(&v, &before[&k]);
            assert_eq!(d, 0.0, "base parameter {k} changed");
        }
    }

    #[test]
    fn starts_from_a_given_lambda() {
        let model = tiny_model();
        let train = examples(4, 0);
        let init = Tensor::new(&[0.5f32; 32], &candle_core::Device::Cpu).unwrap();
        let mut c = cfg();
        c.epochs = 0;
        let out = train_stage1(&model, &train, &c, &LambdaInit::Flat(init), 1, 2).unwrap();
        assert!(out.flat().iter().all(|v| *v == 0.5), "{:?}", out.lambdas);
        let bad = Tensor::new(&[0.5f32; 31], &candle_core::Device::Cpu).unwrap();
        let err = train_stage1(&model, &train, &c, &LambdaInit::Flat(bad), 1, 2).unwrap_err();
        assert!(err.to_string().contains("31"), "{err}");
    }
}
