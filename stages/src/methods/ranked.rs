//! Rank selection and fine-tuning (PAPER_NOTES §4), shared by FedP2EFT (λ from the PSG) and
//! BayesTune-LoRA (λ from its own Stage 1): global top-k λ with k = r_b × #modules, keep those
//! rows of the *seeded initial* A (B = 0), drop modules with no kept rank, freeze λ at the
//! selected values, fine-tune A and B, merge, predict.

use candle_core::{DType, Tensor};
use datasets::Example;

use super::{all_linear, frozen_store, step};
use super::{evaluate, update_norms, Personalized, Result};
use crate::fit::{fit_losses, Fit};
use crate::optim::{Adam, AdamConfig, ParamGroup};
use crate::params::ParamStore;
use crate::peft::bayestune::{
    add_bayestune, prune_to_selection, set_lambdas_flat, top_k_ranks, BayesTuneConfig,
};
use crate::peft::lora::merge_into_store;
use crate::peft::LinearShape;
use crate::task::TaskModel;

/// Fine-tuning settings of the selected adapters (§4: 2 epochs, lr 1e-4, AdamW wd 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankedRun {
    /// r_b: the average rank per module; k = r_b × #modules ranks are kept in total.
    pub budget: usize,
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    /// Micro-batches per optimiser step (Fed-Aya: 4 × 4).
    pub accumulate: usize,
    /// r_max, α (s = α / r_max stays fixed after pruning) and dropout of the adapters.
    pub bayestune: BayesTuneConfig,
    /// Seed of the initial A (restored rows come from it).
    pub init_seed: u64,
    /// Shuffling and dropout.
    pub seed: u64,
}

/// The pruned adapters before fine-tuning: the store (base frozen, kept A rows / B = 0
/// trainable, λ frozen), the modules and the kept rank indices per module.
pub struct Selection {
    pub store: ParamStore,
    pub modules: Vec<LinearShape>,
    pub kept: Vec<Vec<usize>>,
}

/// Steps 1–3 of §4 on a copy of `model`'s weights. `lambdas` holds r_max values per module in
/// module order (`methods::all_linear`).
pub fn select(model: &TaskModel, lambdas: &[Vec<f32>], run: &RankedRun) -> Result<Selection> {
    let s = step("rank selection");
    let modules = all_linear(model);
    let r_max = run.bayestune.r_max;
    if lambdas.len() != modules.len() || lambdas.iter().any(|l| l.len() != r_max) {
        return Err(s(format!(
            "λ has {} modules × {:?} ranks; the model has {} modules × r_max {r_max}",
            lambdas.len(),
            lambdas
                .iter()
                .map(Vec::len)
                .collect::<std::collections::BTreeSet<_>>(),
            modules.len()
        )));
    }
    if run.budget == 0 || run.budget > r_max {
        return Err(s(format!("budget {} must lie in 1..={r_max}", run.budget)));
    }
    let kept = top_k_ranks(lambdas, run.budget * modules.len()).map_err(|e| s(e.to_string()))?;
    let mut store = frozen_store(model)?;
    add_bayestune(
        &mut store,
        &modules,
        &run.bayestune,
        run.init_seed,
        DType::F32,
    )
    .map_err(|e| s(e.to_string()))?;
    let flat: Vec<f32> = lambdas.iter().flatten().copied().collect();
    let n = flat.len();
    let flat = Tensor::from_vec(flat, n, store.device()).map_err(|e| s(e.to_string()))?;
    set_lambdas_flat(&mut store, &modules, &flat).map_err(|e| s(e.to_string()))?;
    prune_to_selection(
        &mut store,
        &modules,
        &kept,
        &run.bayestune,
        run.init_seed,
        DType::F32,
    )
    .map_err(|e| s(e.to_string()))?;
    Ok(Selection {
        store,
        modules,
        kept,
    })
}

/// Step 4 of §4: fine-tunes the selection's A and B (λ stays frozen); returns every step's
/// loss.
pub fn fine_tune(
    model: &TaskModel,
    sel: &Selection,
    train: &[Example],
    run: &RankedRun,
) -> Result<Vec<f32>> {
    let ft = step("fine-tune");
    let net = model.net(&sel.store, &run.bayestune.spec()).map_err(&ft)?;
    let mut opt = Adam::new(
        AdamConfig::adamw(),
        vec![ParamGroup {
            params: sel.store.trainable(),
            lr: run.lr,
            weight_decay: 0.0,
        }],
    )
    .map_err(|e| ft(e.to_string()))?;
    let train = model.trainable(train).map_err(&ft)?;
    let batch = |ex: &[Example], idx: &[usize]| model.batch(ex, idx);
    let cfg = Fit {
        accumulate: run.accumulate,
        ..Fit::plain(&batch, run.epochs, run.batch_size)
    };
    fit_losses(&net, &train, &mut opt, &cfg, run.seed, |_, _| Ok(())).map_err(ft)
}

/// Selects, fine-tunes, merges and evaluates on `test`.
pub fn personalize_ranked(
    model: TaskModel,
    train: &[Example],
    test: &[Example],
    lambdas: &[Vec<f32>],
    run: &RankedRun,
) -> Result<Personalized> {
    let mut sel = select(&model, lambdas, run)?;
    let losses = fine_tune(&model, &sel, train, run)?;
    merge_into_store(&mut sel.store, &sel.modules, &run.bayestune.spec())
        .map_err(|e| step("merge")(e.to_string()))?;
    let ranks = sel
        .modules
        .iter()
        .zip(&sel.kept)
        .map(|(m, k)| (m.name.clone(), k.len()))
        .collect();
    let predictions = evaluate(&model, &sel.store, test, run.batch_size)?;
    let update_norms = update_norms(model.store(), &sel.store, &sel.modules)?;
    Ok(Personalized::new(predictions, ranks, losses, update_norms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testutil::max_abs_diff;
    use crate::methods::testutil::{examples, tiny_model};
    use crate::peft::layer::ForwardCtx;
    use crate::peft::{a_name, lambda_name, AdapterSpec};
    use crate::task::{bert_input, Net};

    fn run(budget: usize) -> RankedRun {
        RankedRun {
            budget,
            epochs: 2,
            lr: 1e-2,
            batch_size: 4,
            accumulate: 1,
            bayestune: BayesTuneConfig {
                r_max: 4,
                alpha: 8.0,
                ..BayesTuneConfig::default()
            },
            init_seed: 9,
            seed: 4,
        }
    }

    /// λ that concentrates on the first three modules, with ties at the clamp floor elsewhere.
    fn lambdas() -> Vec<Vec<f32>> {
        (0..8)
            .map(|m| match m {
                0 => vec![5.0, 4.0, 3.0, 2.0],
                1 => vec![1.0, 6.0, 1e-4, 0.5],
                2 => vec![1e-4, 1e-4, 7.0, 1e-4],
                _ => vec![1e-4; 4],
            })
            .collect()
    }

    fn value(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn keeps_exactly_budget_times_modules_ranks_and_drops_empty_modules() {
        let model = tiny_model();
        let sel = select(&model, &lambdas(), &run(1)).unwrap();
        let kept: Vec<usize> = sel.kept.iter().map(Vec::len).collect();
        // k = 1 × 8: the 8 largest λ are 7, 6, 5, 4, 3, 2, 1 and 0.5.
        assert_eq!(kept.iter().sum::<usize>(), 8);
        assert_eq!(kept, vec![4, 3, 1, 0, 0, 0, 0, 0]);
        assert_eq!(sel.kept[1], vec![0, 1, 3]);
        // Budget 2: 16 ranks; after the 8 values above 1e-4 the 7 ties are broken by module
        // order, then rank index (our rule; PAPER_NOTES §4).
        let sel2 = select(&model, &lambdas(), &run(2)).unwrap();
        let kept2: Vec<usize> = sel2.kept.iter().map(Vec::len).collect();
        assert_eq!(kept2.iter().sum::<usize>(), 16);
        assert_eq!(kept2, vec![4, 4, 4, 4, 0, 0, 0, 0]);
        let net = model.net(&sel.store, &run(1).bayestune.spec()).unwrap();
        for (l, k) in net.linears().iter().zip(&kept) {
            assert_eq!(l.has_adapter(), *k > 0, "{}", l.name());
            assert_eq!(l.rank(), *k, "{}", l.name());
        }
        // Kept A rows are the seeded initial rows, λ the selected values.
        let m0 = &sel.modules[1];
        let a0 = crate::peft::lora::kaiming_uniform_a(
            crate::peft::lora::a_seed(9, &m0.name),
            4,
            m0.in_dim,
            &candle_core::Device::Cpu,
            DType::F32,
        )
        .unwrap();
        let rows = Tensor::new(&[0u32, 1, 3], &candle_core::Device::Cpu).unwrap();
        let want = a0.index_select(&rows, 0).unwrap();
        assert_eq!(
            value(&sel.store.get(&a_name(&m0.name)).unwrap()),
            value(&want)
        );
        assert_eq!(
            value(&sel.store.get(&lambda_name(&m0.name)).unwrap()),
            vec![1.0, 6.0, 0.5]
        );
    }

    #[test]
    fn lambda_stays_frozen_and_merged_equals_unmerged() {
        let model = tiny_model();
        let r = run(1);
        let mut sel = select(&model, &lambdas(), &r).unwrap();
        let names: Vec<String> = sel.modules.iter().map(|m| m.name.clone()).collect();
        let lam_before: Vec<_> = names
            .iter()
            .filter(|n| sel.store.contains(&lambda_name(n)))
            .map(|n| value(&sel.store.get(&lambda_name(n)).unwrap()))
            .collect();
        let a_before = value(&sel.store.get(&a_name(&names[0])).unwrap());
        fine_tune(&model, &sel, &examples(12, 0), &r).unwrap();
        let lam_after: Vec<_> = names
            .iter()
            .filter(|n| sel.store.contains(&lambda_name(n)))
            .map(|n| value(&sel.store.get(&lambda_name(n)).unwrap()))
            .collect();
        assert_eq!(
            lam_before, lam_after,
            "λ must not change during fine-tuning"
        );
        assert_ne!(
            a_before,
            value(&sel.store.get(&a_name(&names[0])).unwrap()),
            "A trains"
        );

        let batch = model.batch(&examples(5, 1), &[0, 1, 2, 3, 4]).unwrap();
        let logits = |store: &ParamStore, spec: &AdapterSpec| {
            let Net::Bert(net) = model.net(store, spec).unwrap() else {
                unreachable!("a classifier")
            };
            net.forward(bert_input(&batch).unwrap(), &ForwardCtx::eval())
                .unwrap()
        };
        let unmerged = logits(&sel.store, &r.bayestune.spec());
        merge_into_store(&mut sel.store, &sel.modules, &r.bayestune.spec()).unwrap();
        let merged = logits(&sel.store, &AdapterSpec::NONE);
        let d = max_abs_diff(&unmerged, &merged);
        assert!(d <= 1e-5, "merged vs unmerged logits differ by {d}");
    }

    #[test]
    fn without_training_the_merged_model_predicts_like_the_base() {
        let test = examples(9, 1);
        let m = tiny_model();
        let base = evaluate(&m, m.store(), &test, 4).unwrap();
        let r = RankedRun {
            epochs: 0,
            ..run(2)
        };
        let out = personalize_ranked(tiny_model(), &examples(4, 0), &test, &lambdas(), &r).unwrap();
        assert_eq!(out.predictions, base, "B = 0 merges to the base weights");
    }

    #[test]
    fn end_to_end_is_reproducible() {
        let (train, test) = (examples(12, 0), examples(6, 1));
        let a = personalize_ranked(tiny_model(), &train, &test, &lambdas(), &run(2)).unwrap();
        let b = personalize_ranked(tiny_model(), &train, &test, &lambdas(), &run(2)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.predictions.len(), 6);
        assert_eq!(a.ranks.iter().map(|r| r.1).sum::<usize>(), 16);
        let err =
            personalize_ranked(tiny_model(), &train, &test, &lambdas()[..7], &run(2)).unwrap_err();
        assert!(err.to_string().contains("7 modules"), "{err}");
    }
}
