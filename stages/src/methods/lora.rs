//! The LoRA baseline (PAPER_NOTES §4): rank r_b on every linear (BERT: pooler and classifier
//! included), α = 2·r_b, dropout 0, A from a seeded Kaiming-uniform, AdamW.

use candle_core::DType;
use datasets::Example;

use super::{evaluate, step, update_norms, FineTune, Personalized, Result};
use crate::fit::{train_local, LocalSgdConfig};
use crate::peft::lora::{add_lora, merge_into_store};
use crate::peft::{AdapterKind, AdapterSpec};
use crate::rng::derive_seed;
use crate::task::TaskModel;

/// LoRA personalization of `model` (consumed: its store gets the merged adapter) on `train`,
/// evaluated on `test`.
pub fn personalize_lora(
    mut model: TaskModel,
    train: &[Example],
    test: &[Example],
    run: &FineTune,
) -> Result<Personalized> {
    if run.budget == 0 {
        return Err(step("lora")("budget (rank) must be ≥ 1".into()));
    }
    let s = step("lora");
    let modules = model.all_linear();
    let store = model.store_mut();
    store
        .set_trainable(|_| false)
        .map_err(|e| s(e.to_string()))?;
    let base = store.clone();
    add_lora(store, &modules, |_| run.budget, run.init_seed, DType::F32)
        .map_err(|e| s(e.to_string()))?;
    let spec = AdapterSpec {
        kind: AdapterKind::Lora {
            alpha: 2.0 * run.budget as f64,
        },
        dropout: 0.0,
    };
    let net = model.net(model.store(), &spec).map_err(&s)?;
    let cfg = LocalSgdConfig {
        accumulate: run.accumulate,
        ..LocalSgdConfig::epochs(run.lr, 0.0, run.epochs, run.batch_size)
    };
    let train = model.trainable(train).map_err(step("train"))?;
    let batch = |ex: &[Example], idx: &[usize]| model.batch(ex, idx);
    let (losses, _) = train_local(
        &net,
        &batch,
        model.store(),
        &train,
        &cfg,
        run.lr,
        derive_seed(run.seed, &["train".into()]),
    )
    .map_err(step("train"))?;
    drop(net);
    merge_into_store(model.store_mut(), &modules, &spec).map_err(|e| s(e.to_string()))?;
    let predictions = evaluate(&model, model.store(), test, run.batch_size)?;
    let update_norms = update_norms(&base, model.store(), &modules)?;
    Ok(Personalized::new(
        predictions,
        modules.into_iter().map(|m| (m.name, run.budget)).collect(),
        losses,
        update_norms,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::load_base;
    use crate::methods::testutil::{examples, saved_tiny, setup};
    use candle_core::Device;

    fn run(seed: u64) -> FineTune {
        FineTune {
            budget: 2,
            epochs: 2,
            lr: 1e-2,
            batch_size: 4,
            accumulate: 1,
            init_seed: derive_seed(seed, &["lora_init".into()]),
            seed,
        }
    }

    #[test]
    fn lora_adapts_every_linear_and_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let labels = saved_tiny(dir.path());
        let load = || load_base(dir.path(), None, &setup(&labels), &Device::Cpu).unwrap();
        let (train, test) = (examples(16, 0), examples(6, 1));
        let a = personalize_lora(load(), &train, &test, &run(5)).unwrap();
        let b = personalize_lora(load(), &train, &test, &run(5)).unwrap();
        assert_eq!(a, b, "same seed, same result");
        // 1 layer × 6 linears + pooler + classifier (PAPER_NOTES §3 all-linear).
        assert_eq!(a.ranks.len(), 8, "{:?}", a.ranks);
        assert!(a.ranks.iter().any(|(m, _)| m == "classifier"));
        assert!(a.ranks.iter().any(|(m, _)| m.contains("pooler")));
        assert!(a.ranks.iter().all(|(_, r)| *r == 2));
        assert_eq!(a.predictions.len(), 6);
        // (gold, predicted) pairs in test order: the gold side is the test split's labels…
        let pairs = a.predictions.labels().unwrap();
        let gold: Vec<u32> = pairs.iter().map(|p| p.0).collect();
        assert_eq!(
            gold,
            test.iter().map(|e| e.label_id.unwrap()).collect::<Vec<_>>()
        );
        // …and the predicted side is the merged model's own arg-max: a longer fine-tune on the
        // word-separable labels gets every test example right, the untrained base does not.
        let long = FineTune {
            epochs: 30,
            ..run(5)
        };
        let base = evaluate(&load(), load().store(), &test, 4).unwrap();
        let tuned = personalize_lora(load(), &train, &test, &long).unwrap();
        assert_eq!(tuned.correct(), 6, "{:?}", tuned.predictions);
        assert!(base.correct() < 6, "{base:?}");
        // The seed reaches the adapter init / shuffling.
        let other = personalize_lora(load(), &train, &test, &run(6)).unwrap();
        assert!(other.mean_train_loss.is_finite());
        assert_ne!(a.mean_train_loss, other.mean_train_loss);
    }

    /// The generation path end to end: a LoRA on a tiny causal LM trained on completion-only
    /// batches (accumulated) learns its clients' responses, is merged, and greedy decoding
    /// then reproduces them; the same run is bit-reproducible.
    #[test]
    fn lora_on_a_causal_lm_learns_the_responses() {
        use crate::task::causal_lm::tests::tiny_lm;
        use crate::task::TinyLlama;
        let words = ["red", "blue", "green", "gold"];
        let examples: Vec<Example> = words
            .iter()
            .map(|w| Example {
                text_a: format!("Name the colour {w}"),
                text_b: Some(format!("{w} {w}")),
                label_id: None,
                language: "en".into(),
            })
            .collect();
        let build = || -> TaskModel {
            let size = TinyLlama {
                hidden: 32,
                layers: 2,
                heads: 4,
                kv_heads: 2,
                intermediate: 64,
                vocab_size: 420,
                seed: 11,
            };
            let texts = examples
                .iter()
                .map(|e| format!("{} {}", e.text_a, e.text_b.as_ref().unwrap()))
                .collect();
            tiny_lm(size, texts, 6).into()
        };
        // At lr 1e-2 training is at the edge of stability: f32 rounding differences (fused vs
        // composite kernels) grow until the generations differ (2/4 or 0/4 learned). At 3e-3
        // for 80 epochs both learn all four.
        let run = FineTune {
            budget: 8,
            epochs: 80,
            lr: 3e-3,
            batch_size: 2,
            accumulate: 2,
            init_seed: derive_seed(3, &["lora_init".into()]),
            seed: 3,
        };
        let base = build();
        let before = evaluate(&base, base.store(), &examples, 4).unwrap();
        let out = personalize_lora(build(), &examples, &examples, &run).unwrap();
        let texts = out.predictions.texts().unwrap();
        let hits = texts
            .iter()
            .zip(&examples)
            .filter(|(t, e)| t.as_str() == e.text_b.as_deref().unwrap())
            .count();
        assert!(
            hits >= 3,
            "learned {hits}/4: {texts:?} (before: {before:?})"
        );
        assert_ne!(
            Some(texts),
            before.texts(),
            "training changed the generations"
        );
        assert_eq!(out.ranks.len(), 2 * 7, "q,k,v,o,gate,up,down per layer");
        let again = personalize_lora(build(), &examples, &examples, &run).unwrap();
        assert_eq!(out, again);
    }
}
