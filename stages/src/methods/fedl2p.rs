//! FedL2P personalization (PAPER_NOTES §6, [code] `FedL2PSeqClsClient.evaluate`), for both
//! tasks: the LoRA baseline's adapters (rank r_b on every adapted linear, α = 2·r_b, A from the
//! run's seeded init, B = 0), fine-tuned with one AdamW learning rate per matrix —
//! `post_j · LRNet(meta-data)_j` from the trained LR network — then merged and evaluated. Also
//! the adapter set-up the federated FedL2P round shares ([`lora_adapters`]).

use candle_core::{DType, Var};
use datasets::Example;

use super::{all_linear, frozen_store, meta_features, step};
use super::{evaluate, update_norms, Personalized, Result};
use crate::fedl2p::lr_net::{LrNet, LrNetConfig};
use crate::fit::{fit_losses, Fit};
use crate::optim::{Adam, AdamConfig, ParamGroup};
use crate::params::ParamStore;
use crate::peft::lora::{add_lora, merge_into_store};
use crate::peft::{a_name, b_name, AdapterKind, AdapterSpec, LinearShape};
use crate::rng::derive_seed;
use crate::task::TaskModel;

/// A model's LoRA adapters for FedL2P: the store (base frozen, adapters trainable), the
/// adapted modules and the adapter matrices in LR-network output order (A then B of every
/// module, module order), with their names.
pub struct LoraAdapters {
    pub store: ParamStore,
    pub modules: Vec<LinearShape>,
    pub matrices: Vec<(String, Var)>,
    pub spec: AdapterSpec,
}

/// Rank-`budget` LoRA on every linear with α = 2·budget (`run_masakha.sh`), dropout 0;
/// A from `init_seed`.
pub fn lora_adapters(model: &TaskModel, budget: usize, init_seed: u64) -> Result<LoraAdapters> {
    let s = step("fedl2p adapters");
    if budget == 0 {
        return Err(s("budget (rank) must be ≥ 1".into()));
    }
    let mut store = frozen_store(model)?;
    let modules = all_linear(model);
    add_lora(&mut store, &modules, |_| budget, init_seed, DType::F32)
        .map_err(|e| s(e.to_string()))?;
    let mut matrices = Vec::with_capacity(2 * modules.len());
    for m in &modules {
        for name in [a_name(&m.name), b_name(&m.name)] {
            let var = match store.param(&name) {
                Some(crate::params::Param::Trainable(v)) => v.clone(),
                _ => return Err(s(format!("adapter `{name}` is not trainable"))),
            };
            matrices.push((name, var));
        }
    }
    Ok(LoraAdapters {
        store,
        modules,
        matrices,
        spec: AdapterSpec {
            kind: AdapterKind::Lora {
                alpha: 2.0 * budget as f64,
            },
            dropout: 0.0,
        },
    })
}

/// One generated learning rate.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnedRate {
    pub module: String,
    /// `A` or `B`.
    pub matrix: &'static str,
    pub lr: f64,
}

/// Fine-tuning settings (PAPER_NOTES §6: 2 epochs, batch 32, AdamW wd 0; rates from the LR
/// net). `init_seed` gives A's init (the one the LR network was meta-trained with) and `seed`
/// the shuffling, exactly as the LoRA baseline takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fedl2pRun {
    pub budget: usize,
    pub epochs: usize,
    pub batch_size: usize,
    /// Micro-batches per optimiser step (Fed-Aya: 4 × 4).
    pub accumulate: usize,
    pub init_seed: u64,
    pub seed: u64,
}

/// The learning rate of every adapter matrix for a client: `post ⊙ LRNet(meta-data of train)`.
pub fn learning_rates(
    model: &TaskModel,
    train: &[Example],
    net_store: &ParamStore,
    net_cfg: &LrNetConfig,
) -> Result<Vec<f64>> {
    let s = step("fedl2p rates");
    let feats = meta_features(model, train)?
        .to_device(net_store.device())
        .map_err(|e| s(e.to_string()))?;
    let net = LrNet::load(net_store, net_cfg).map_err(|e| s(e.to_string()))?;
    net.learning_rates(&feats)
        .and_then(|t| Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?))
        .map_err(|e| s(e.to_string()))
}

/// FedL2P personalization of `model` on `train`, evaluated on `test`; also returns the rates.
pub fn personalize_fedl2p(
    model: TaskModel,
    train: &[Example],
    test: &[Example],
    net_store: &ParamStore,
    net_cfg: &LrNetConfig,
    run: &Fedl2pRun,
) -> Result<(Personalized, Vec<LearnedRate>)> {
    let s = step("fedl2p");
    let lrs = learning_rates(&model, train, net_store, net_cfg)?;
    let mut ad = lora_adapters(&model, run.budget, run.init_seed)?;
    if lrs.len() != ad.matrices.len() {
        return Err(s(format!(
            "the LR network gives {} rates; this model has {} LoRA matrices",
            lrs.len(),
            ad.matrices.len()
        )));
    }
    let groups = ad
        .matrices
        .iter()
        .zip(&lrs)
        .map(|((n, v), lr)| ParamGroup {
            params: vec![(n.clone(), v.clone())],
            lr: *lr,
            weight_decay: 0.0,
        })
        .collect();
    let mut opt = Adam::new(AdamConfig::adamw(), groups).map_err(|e| s(e.to_string()))?;
    let net = model.net(&ad.store, &ad.spec).map_err(&s)?;
    let train = model.trainable(train).map_err(step("train"))?;
    let batch = |ex: &[Example], idx: &[usize]| model.batch(ex, idx);
    let cfg = Fit {
        accumulate: run.accumulate,
        ..Fit::plain(&batch, run.epochs, run.batch_size)
    };
    let losses = fit_losses(
        &net,
        &train,
        &mut opt,
        &cfg,
        derive_seed(run.seed, &["train".into()]),
        |_, _| Ok(()),
    )
    .map_err(step("train"))?;
    drop(net);
    merge_into_store(&mut ad.store, &ad.modules, &ad.spec).map_err(|e| s(e.to_string()))?;
    let rates = ad
        .modules
        .iter()
        .flat_map(|m| [(m.name.clone(), "A"), (m.name.clone(), "B")])
        .zip(&lrs)
        .map(|((module, matrix), lr)| LearnedRate {
            module,
            matrix,
            lr: *lr,
        })
        .collect();
    let ranks = ad
        .modules
        .iter()
        .map(|m| (m.name.clone(), run.budget))
        .collect();
    let predictions = evaluate(&model, &ad.store, test, run.batch_size)?;
    let update_norms = update_norms(model.store(), &ad.store, &ad.modules)?;
    Ok((
        Personalized::new(predictions, ranks, losses, update_norms),
        rates,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fedl2p::lr_net::init_lr_net;
    use crate::methods::testutil::{examples, tiny_model};
    use crate::methods::{personalize_lora, FineTune};
    use candle_core::Tensor;

    fn run(seed: u64) -> Fedl2pRun {
        Fedl2pRun {
            budget: 2,
            epochs: 2,
            batch_size: 4,
            accumulate: 1,
            init_seed: derive_seed(seed, &["lora_init".into()]),
            seed,
        }
    }

    #[test]
    fn one_rate_per_matrix_and_a_uniform_rate_is_the_lora_baseline() {
        let model = tiny_model();
        let linears = all_linear(&model).len();
        let net_cfg = LrNetConfig::paper(model.observed_linears(), linears);
        let mut store = init_lr_net(&net_cfg, 1, &candle_core::Device::Cpu).unwrap();
        // Output layer zero weights, bias 100 and post-multipliers 1e-4: every rate is 1e-2.
        let h = net_cfg.hidden;
        let zero = Tensor::zeros((2 * linears, h), DType::F32, &candle_core::Device::Cpu).unwrap();
        store.insert("last_layer.weight", zero, true).unwrap();
        let b = (Tensor::ones(2 * linears, DType::F32, &candle_core::Device::Cpu).unwrap() * 100.0)
            .unwrap();
        store.insert("last_layer.bias", b, true).unwrap();
        let (train, test) = (examples(12, 0), examples(6, 1));
        let (out, rates) =
            personalize_fedl2p(tiny_model(), &train, &test, &store, &net_cfg, &run(5)).unwrap();
        assert_eq!(rates.len(), 2 * linears);
        assert_eq!((rates[0].matrix, rates[1].matrix), ("A", "B"));
        assert_eq!(rates[0].module, rates[1].module);
        assert!(
            rates.iter().all(|r| (r.lr - 1e-2).abs() < 1e-8),
            "{rates:?}"
        );
        // With every rate equal, FedL2P is the LoRA baseline with that lr (same seeds).
        let lora = personalize_lora(
            tiny_model(),
            &train,
            &test,
            &FineTune {
                budget: 2,
                epochs: 2,
                lr: rates[0].lr,
                batch_size: 4,
                accumulate: 1,
                init_seed: derive_seed(5, &["lora_init".into()]),
                seed: 5,
            },
        )
        .unwrap();
        assert_eq!(out.predictions, lora.predictions);
        assert!((out.mean_train_loss - lora.mean_train_loss).abs() < 1e-5);
        assert!(out.ranks.iter().all(|(_, r)| *r == 2));
        // Zeroing one matrix's post-multiplier (the classifier's B) freezes it.
        let last = 2 * linears - 1;
        store
            .insert(
                &format!("inner_loop_lrs.{last}"),
                Tensor::zeros(1, DType::F32, &candle_core::Device::Cpu).unwrap(),
                true,
            )
            .unwrap();
        let (frozen, rates) =
            personalize_fedl2p(tiny_model(), &train, &test, &store, &net_cfg, &run(5)).unwrap();
        assert_eq!(
            (rates[last].module.as_str(), rates[last].lr),
            ("classifier", 0.0)
        );
        assert_ne!(frozen.mean_train_loss, out.mean_train_loss);
    }
}
