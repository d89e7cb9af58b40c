//! Personalization of a base model on one client (PAPER_NOTES §4, §6), for both tasks: load the
//! base model (plus the client's own DEPT embeddings or FedDPA-T local adapter), fine-tune a
//! method's adapter on the client's train split, merge it, and produce the client's test outputs
//! (predicted classes, or greedy generations for scoring).
//!
//! This module holds the `lora` baseline — rank r_b on every linear (BERT: pooler and
//! classifier included), α = 2·r_b, dropout 0, A from a seeded Kaiming-uniform, AdamW — and the
//! base loading every method shares; `methods::{adalora, ranked}` hold the others.

use std::path::Path;

use candle_core::{DType, Device};
use datasets::Example;

use crate::base_model::{build_task_model, ModelSource, TaskSetup};
use crate::fl::fedavg_client::{train_local, LocalSgdConfig};
use crate::fl::feddpa_client::DpaConfig;
use crate::params::ParamStore;
use crate::peft::lora::{add_lora, merge_into_store};
use crate::peft::{a_name, is_adapter_param, AdapterKind, AdapterSpec};
use crate::rng::derive_seed;
use crate::task::{Outputs, TaskModel};

/// Errors of one personalization run; each names the file or step.
#[derive(Debug, thiserror::Error)]
pub enum PersonalizeError {
    /// Boxed: the base-model error is large and this one is returned on every path.
    #[error(transparent)]
    Base(Box<crate::base_model::BaseModelError>),
    #[error("{path}: {message}")]
    ClientState { path: String, message: String },
    #[error("{step}: {message}")]
    Step { step: &'static str, message: String },
}

pub type Result<T> = std::result::Result<T, PersonalizeError>;

impl From<crate::base_model::BaseModelError> for PersonalizeError {
    fn from(e: crate::base_model::BaseModelError) -> Self {
        PersonalizeError::Base(Box::new(e))
    }
}

fn step(step: &'static str) -> impl Fn(String) -> PersonalizeError {
    move |message| PersonalizeError::Step { step, message }
}

/// Personalization methods (this module: `lora`; `methods::{adalora, ranked, fedl2p}` the
/// others).
pub const METHODS: &[&str] = &["lora", "adalora", "bayestune_lora", "fedl2p", "fedp2eft"];

/// LoRA fine-tuning settings (PAPER_NOTES §4: 2 epochs, lr 1e-4, AdamW, wd 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraRun {
    /// r_b: the rank of every adapted module.
    pub budget: usize,
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    /// Micro-batches per optimiser step (Fed-Aya: 4 × 4).
    pub accumulate: usize,
    /// Seeds the A init (per module, via `peft::lora::a_seed`), shuffling and dropout.
    pub seed: u64,
}

/// What a run produced: test outputs (in test-split order) and the kept rank per module.
#[derive(Debug, Clone, PartialEq)]
pub struct Personalized {
    pub predictions: Outputs,
    /// (module, rank) for every adapted linear.
    pub ranks: Vec<(String, usize)>,
    pub mean_train_loss: f32,
}

impl Personalized {
    pub fn correct(&self) -> u64 {
        self.predictions.correct()
    }
}

/// Loads the base model from an HF `model_dir` for `setup`, then applies `client_state` when
/// given: plain tensors (DEPT's `*_embeddings*`) replace the base's, and adapter tensors
/// (FedDPA-T's local q/v LoRA, r 8 α 8) are merged into their base weights.
pub fn load_base(
    model_dir: &Path,
    client_state: Option<&Path>,
    setup: &TaskSetup,
    device: &Device,
) -> Result<TaskModel> {
    let mut model = build_task_model(
        &ModelSource::Dir(model_dir.to_path_buf()),
        setup,
        0,
        || Ok(Vec::new()),
        device,
    )?;
    if let Some(path) = client_state {
        let bad = |message: String| PersonalizeError::ClientState {
            path: path.display().to_string(),
            message,
        };
        let tensors =
            crate::params::read_safetensors(path, device).map_err(|e| bad(e.to_string()))?;
        let tensors =
            crate::client_state::expand(tensors, model.store()).map_err(|e| bad(e.to_string()))?;
        let (adapters, plain): (Vec<_>, Vec<_>) =
            tensors.into_iter().partition(|(n, _)| is_adapter_param(n));
        for (name, _) in &plain {
            if !model.store().contains(name) {
                return Err(bad(format!(
                    "tensor `{name}` is not a parameter of the base model"
                )));
            }
        }
        model
            .store_mut()
            .assign(&plain.into_iter().collect())
            .map_err(|e| bad(e.to_string()))?;
        if !adapters.is_empty() {
            for (name, t) in &adapters {
                model
                    .store_mut()
                    .insert(name, t.clone(), false)
                    .map_err(|e| bad(e.to_string()))?;
            }
            let modules: Vec<_> = model
                .all_linear()
                .into_iter()
                .filter(|m| model.store().contains(&a_name(&m.name)))
                .collect();
            merge_into_store(model.store_mut(), &modules, &DpaConfig::paper().spec())
                .map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(model)
}

/// LoRA personalization of `model` (consumed: its store gets the merged adapter) on `train`,
/// evaluated on `test`.
pub fn personalize_lora(
    mut model: TaskModel,
    train: &[Example],
    test: &[Example],
    run: &LoraRun,
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
    add_lora(
        store,
        &modules,
        |_| run.budget,
        derive_seed(run.seed, &["lora_init".into()]),
        DType::F32,
    )
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
    let (loss, _) = train_local(
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
    Ok(Personalized {
        predictions,
        ranks: modules.into_iter().map(|m| (m.name, run.budget)).collect(),
        mean_train_loss: loss,
    })
}

/// Test outputs of `model`'s network over `store` (adapters merged or absent).
pub fn evaluate(
    model: &TaskModel,
    store: &ParamStore,
    examples: &[Example],
    batch_size: usize,
) -> Result<Outputs> {
    model
        .evaluate(store, examples, batch_size)
        .map_err(step("predict"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base_model::{build_classifier, save_classifier, TinyBert};
    use crate::methods::testutil::{examples, max_abs_diff};

    fn saved_tiny(dir: &Path) -> Vec<String> {
        let labels = vec!["sports".to_string(), "politics".to_string()];
        let texts: Vec<String> = examples(20, 0).into_iter().map(|e| e.text_a).collect();
        let m = build_classifier(
            &ModelSource::Tiny(TinyBert {
                hidden: 16,
                layers: 1,
                heads: 2,
                intermediate: 32,
                vocab_size: 60,
                seed: 3,
            }),
            &labels,
            16,
            1,
            || Ok(texts),
            &Device::Cpu,
        )
        .unwrap();
        save_classifier(&m, dir).unwrap();
        labels
    }

    fn setup(labels: &[String]) -> TaskSetup {
        TaskSetup::Classification {
            labels: labels.to_vec(),
            max_len: 16,
        }
    }

    fn run(seed: u64) -> LoraRun {
        LoraRun {
            budget: 2,
            epochs: 2,
            lr: 1e-2,
            batch_size: 4,
            accumulate: 1,
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
        assert_eq!(
            a.predictions
                .labels()
                .unwrap()
                .iter()
                .map(|p| p.0)
                .collect::<Vec<_>>(),
            test.iter().map(|e| e.label_id.unwrap()).collect::<Vec<_>>()
        );
        // The seed reaches the adapter init / shuffling.
        let other = personalize_lora(load(), &train, &test, &run(6)).unwrap();
        assert!(other.mean_train_loss.is_finite());
        assert_ne!(a.mean_train_loss, other.mean_train_loss);
    }

    #[test]
    fn client_state_replaces_embeddings_and_rejects_unknown_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let labels = saved_tiny(dir.path());
        let base = load_base(dir.path(), None, &setup(&labels), &Device::Cpu).unwrap();
        let name = "bert.embeddings.word_embeddings.weight";
        let w = base.store().get(name).unwrap();
        let state = dir.path().join("3.safetensors");
        let zeros = w.zeros_like().unwrap();
        crate::params::write_safetensors(&[(name.to_string(), zeros)].into(), &state).unwrap();
        let m = load_base(dir.path(), Some(&state), &setup(&labels), &Device::Cpu).unwrap();
        let sum: f32 = m
            .store()
            .get(name)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(sum, 0.0);
        let bad = dir.path().join("4.safetensors");
        crate::params::write_safetensors(&[("nope.weight".to_string(), w)].into(), &bad).unwrap();
        let err = load_base(dir.path(), Some(&bad), &setup(&labels), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("4.safetensors") && err.contains("nope.weight"),
            "{err}"
        );
    }

    #[test]
    fn feddpa_client_adapter_is_merged_with_alpha_over_r() {
        let dir = tempfile::tempdir().unwrap();
        let labels = saved_tiny(dir.path());
        let base = load_base(dir.path(), None, &setup(&labels), &Device::Cpu).unwrap();
        let module = "bert.encoder.layer.0.attention.self.query";
        let w = base.store().get(&format!("{module}.weight")).unwrap();
        // FedDPA-T's local adapter: r 8, α 8 → scaling 1, ΔW = B·A.
        let a =
            crate::peft::lora::normal_tensor(1, (8, 16), 0.1, &Device::Cpu, DType::F32).unwrap();
        let b =
            crate::peft::lora::normal_tensor(2, (16, 8), 0.1, &Device::Cpu, DType::F32).unwrap();
        let state = dir.path().join("0.safetensors");
        crate::params::write_safetensors(
            &[
                (a_name(module), a.clone()),
                (crate::peft::b_name(module), b.clone()),
            ]
            .into(),
            &state,
        )
        .unwrap();
        let m = load_base(dir.path(), Some(&state), &setup(&labels), &Device::Cpu).unwrap();
        assert!(
            !m.store().names().any(is_adapter_param),
            "adapter merged away"
        );
        let want = (w + b.matmul(&a).unwrap()).unwrap();
        let got = m.store().get(&format!("{module}.weight")).unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-6, "max |ΔW − B·A| = {diff}");
    }

    /// The generation path end to end: a LoRA on a tiny causal LM trained on completion-only
    /// batches (accumulated) learns its clients' responses, is merged, and greedy decoding
    /// then reproduces them; the same run is bit-reproducible.
    #[test]
    fn lora_on_a_causal_lm_learns_the_responses() {
        use crate::causal_lm::tests::tiny_lm;
        use crate::causal_lm::TinyLlama;
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
        let run = LoraRun {
            budget: 8,
            epochs: 80,
            lr: 3e-3,
            batch_size: 2,
            accumulate: 2,
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
