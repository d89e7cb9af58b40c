//! The AdaLoRA baseline (PAPER_NOTES §6, PEFT `AdaLoraModel`): SVD-form adapters of initial
//! rank 1.5·r_b on every linear, AdamW lr 1e-3, orthogonal regulariser 0.1, and the rank
//! allocator masking triplets down to r_b × #modules after every optimiser step (ΔT = 1,
//! tinit 10 %, tfinal 30 % of the steps), then merge and evaluate.

use candle_core::DType;
use datasets::Example;

use super::{all_linear, frozen_store, step};
use super::{evaluate, update_norms, FineTune, Personalized, Result};
use crate::fit::Regulariser;
use crate::fit::{fit_losses, total_steps, Fit};
use crate::optim::{Adam, AdamConfig, ParamGroup};
use crate::peft::adalora::{add_adalora, AdaLoraConfig, RankAllocator};
use crate::peft::lora::merge_into_store;
use crate::task::TaskModel;

/// AdaLoRA personalization of `model` on `train` (§6 settings in `run`), evaluated on `test`.
pub fn personalize_adalora(
    model: TaskModel,
    train: &[Example],
    test: &[Example],
    run: &FineTune,
) -> Result<Personalized> {
    personalize_adalora_traced(model, train, test, run).map(|(out, _)| out)
}

/// [`personalize_adalora`], also returning the rank budget the allocator set after every
/// optimiser step.
pub fn personalize_adalora_traced(
    model: TaskModel,
    train: &[Example],
    test: &[Example],
    run: &FineTune,
) -> Result<(Personalized, Vec<usize>)> {
    let s = step("adalora");
    if run.budget < 2 {
        // init_r = ⌊1.5·r_b⌋ must exceed r_b for the allocator to have anything to prune.
        return Err(s(format!("budget {} must be ≥ 2", run.budget)));
    }
    let train = &model.trainable(train).map_err(&s)?;
    let batch = |ex: &[Example], idx: &[usize]| model.batch(ex, idx);
    let plain = Fit {
        accumulate: run.accumulate,
        ..Fit::plain(&batch, run.epochs, run.batch_size)
    };
    let steps = total_steps(train.len(), &plain);
    let cfg = AdaLoraConfig::for_budget(run.budget, steps);
    let modules = all_linear(&model);
    let mut store = frozen_store(&model)?;
    let base = store.clone();
    add_adalora(&mut store, &modules, cfg.init_r, run.init_seed, DType::F32)
        .map_err(|e| s(e.to_string()))?;
    let mut allocator = RankAllocator::new(cfg, &store, &modules).map_err(|e| s(e.to_string()))?;
    let spec = cfg.spec();
    let net = model.net(&store, &spec).map_err(&s)?;
    let mut opt = Adam::new(
        AdamConfig::adamw(),
        vec![ParamGroup {
            params: store.trainable(),
            lr: run.lr,
            weight_decay: 0.0,
        }],
    )
    .map_err(|e| s(e.to_string()))?;
    // The allocator masks E in place: E is a `Var`, so a clone of the store shares its storage
    // and the model (and the regulariser's borrow of `store`) see every update.
    let mut masks = store.clone();
    let fit_cfg = Fit {
        reg: Regulariser::AdaLoraOrth {
            store: &store,
            modules: &modules,
            weight: cfg.orth_reg_weight,
        },
        ..plain
    };
    let mut budgets = Vec::new();
    let losses = fit_losses(&net, train, &mut opt, &fit_cfg, run.seed, |step, grads| {
        // HF's AdaLoRA callback runs in `on_optimizer_step`, before `global_step += 1`
        // (transformers 4.44.2 `trainer.py` 2341–2352): PEFT sees steps 0, 1, …, T − 1.
        let budget = allocator
            .update_and_allocate(&mut masks, grads, step - 1)
            .map_err(|e| e.to_string())?;
        budgets.push(budget);
        Ok(())
    })
    .map_err(&s)?;
    drop(net);
    // Kept rank per module: the allocator's final pattern (all of init_r if it never masked).
    let pattern: std::collections::HashMap<&str, usize> = match allocator.rank_pattern() {
        Some(p) => allocator
            .modules()
            .iter()
            .zip(p)
            .map(|(m, keep)| (m.name.as_str(), keep.iter().filter(|k| **k).count()))
            .collect(),
        None => modules
            .iter()
            .map(|m| (m.name.as_str(), cfg.init_r))
            .collect(),
    };
    let ranks = modules
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                pattern.get(m.name.as_str()).copied().unwrap_or(0),
            )
        })
        .collect();
    merge_into_store(&mut store, &modules, &spec).map_err(|e| s(e.to_string()))?;
    let predictions = evaluate(&model, &store, test, run.batch_size)?;
    let update_norms = update_norms(&base, &store, &modules)?;
    Ok((
        Personalized::new(predictions, ranks, losses, update_norms),
        budgets,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testutil::{examples, tiny_model};

    #[test]
    fn ends_at_the_target_budget_and_is_reproducible() {
        let (train, test) = (examples(16, 0), examples(6, 1));
        let run = FineTune {
            budget: 2,
            epochs: 2,
            lr: 1e-3,
            batch_size: 4,
            accumulate: 1,
            init_seed: crate::rng::derive_seed(5, &["adalora_init".into()]),
            seed: 5,
        };
        // 8 steps: tinit 0, tfinal 2 → the final pattern is fixed at step 6.
        let a = personalize_adalora(tiny_model(), &train, &test, &run).unwrap();
        assert_eq!(a.ranks.len(), 8);
        assert_eq!(
            a.ranks.iter().map(|r| r.1).sum::<usize>(),
            2 * 8,
            "{:?}",
            a.ranks
        );
        assert!(
            a.ranks.iter().all(|r| r.1 <= 3),
            "init_r = 3 caps every module"
        );
        assert_eq!(a.predictions.len(), 6);
        let b = personalize_adalora(tiny_model(), &train, &test, &run).unwrap();
        assert_eq!(a, b);
        assert!(
            personalize_adalora(tiny_model(), &train, &test, &FineTune { budget: 1, ..run })
                .is_err()
        );
    }
}
