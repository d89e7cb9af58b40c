//! Training details the reference gets from its stack (HF Trainer 4.44.2, PEFT 0.12.0), checked
//! against fixtures written by that stack (`fixtures/gen/gen_reference_training.py`):
//! gradient clipping at 1.0 in every fine-tune, λ's never-zeroed gradient in Stage 1, AdaLoRA's
//! 0-based steps, the PSG meta-data on `padding="max_length"` batches, and `torch.topk`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use datasets::Example;
use stages::fit::{fit, Clip, Fit, Regulariser, REFERENCE_MAX_GRAD_NORM};
use stages::methods::adalora::personalize_adalora_traced;
use stages::methods::{all_linear, meta_features, FineTune};
use stages::optim::{Adam, AdamConfig, ParamGroup};
use stages::params::read_safetensors;
use stages::peft::{bayestune, AdapterKind, AdapterSpec};
use stages::task::{build_classifier, ModelSource, TaskModel};

use common::{assert_scaled, scale_err};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference")
        .join(name)
}

fn load(name: &str) -> HashMap<String, Tensor> {
    read_safetensors(&fixture(name), &Device::Cpu).unwrap()
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// `examples` of a fixture's JSON: `[text, label]` pairs.
fn examples(v: &serde_json::Value) -> Vec<Example> {
    v["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Example {
            text_a: e[0].as_str().unwrap().into(),
            text_b: None,
            label_id: Some(e[1].as_u64().unwrap() as u32),
            language: "x".into(),
        })
        .collect()
}

/// The fixture's HF-layout tiny BERT (labels a, b, c; inputs truncated/padded to 16 tokens).
fn model(dir: &str) -> TaskModel {
    let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    build_classifier(
        &ModelSource::Dir(fixture(dir)),
        &labels,
        16,
        0,
        || Err("not a tiny model".into()),
        &Device::Cpu,
    )
    .unwrap()
    .into()
}

/// A copy of the model's store with every base weight frozen and the fixture's adapter tensors
/// added as trainable `Var`s.
fn with_adapters(model: &TaskModel, init: &HashMap<String, Tensor>) -> stages::params::ParamStore {
    let mut store = model.store().clone();
    store.set_trainable(|_| false).unwrap();
    for (name, t) in init {
        store.insert(name, t.clone(), true).unwrap();
    }
    store
}

fn vars(store: &stages::params::ParamStore, pred: impl Fn(&str) -> bool) -> Vec<(String, Var)> {
    store
        .trainable()
        .into_iter()
        .filter(|(n, _)| pred(n))
        .collect()
}

/// The reference's meta-data: per linear, mean and SD of its input over the client's batches of
/// 4, tokenised with `padding="max_length"` so pad positions count (PAPER_NOTES §5). Tolerance
/// 1e-5 of each feature's scale (f32 statistics; ours combine batches in f64).
#[test]
fn meta_data_match_the_reference_on_max_length_batches() {
    let m = model("bert_meta");
    let spec = json("meta.json");
    let got = meta_features(&m, &examples(&spec)).unwrap();
    let want = &load("meta.safetensors")["features"];
    assert_eq!(got.dims(), want.dims());
    let (g, w) = (common::host(&got), common::host(want));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "feature {i} ({}): {a} vs reference {b}",
            spec["linears"][i / 2]
        );
    }
}

/// Two HF-Trainer steps of a LoRA fine-tune (r 2, α 4, every linear, lr 1e-2, batch = the whole
/// shard) with pre-clip gradient norms 30 and 18: the Trainer clips both to 1.0, so Adam's second
/// step sees rescaled gradients. `Fit::plain` clips the same way; without clipping the result
/// is measurably different (checked too, so the fixture keeps testing what it is for).
#[test]
fn fine_tunes_clip_the_gradient_norm_like_the_hf_trainer() {
    let m = model("bert_lora");
    let spec = json("lora_trainer.json");
    let train = examples(&spec);
    let want = load("lora_trainer.safetensors");
    let run = |max_grad_norm: Option<f64>, epochs: usize| {
        let store = with_adapters(&m, &load("lora_init.safetensors"));
        let adapter = AdapterSpec {
            kind: AdapterKind::Lora { alpha: 4.0 },
            dropout: 0.0,
        };
        let net = m.net(&store, &adapter).unwrap();
        let mut opt = Adam::new(
            AdamConfig::adamw(),
            vec![ParamGroup {
                params: store.trainable(),
                lr: 1e-2,
                weight_decay: 0.0,
            }],
        )
        .unwrap();
        let batch = |ex: &[Example], idx: &[usize]| m.batch(ex, idx);
        let cfg = Fit {
            max_grad_norm,
            ..Fit::plain(&batch, epochs, 8)
        };
        fit(&net, &train, &mut opt, &cfg, 0, |_, _| Ok(())).unwrap();
        store
    };
    let one = run(Some(REFERENCE_MAX_GRAD_NORM), 1);
    for (name, v) in vars(&one, |_| true) {
        assert_scaled(&name, v.as_tensor(), &want[&format!("step1.{name}")], 1e-5);
    }
    let clipped = run(Some(REFERENCE_MAX_GRAD_NORM), 2);
    let unclipped = run(None, 2);
    let mut worst_unclipped = 0f64;
    for (name, v) in vars(&clipped, |_| true) {
        let w = &want[&format!("step2.{name}")];
        assert_scaled(&name, v.as_tensor(), w, 1e-5);
        let u = unclipped.get(&name).unwrap();
        worst_unclipped = worst_unclipped.max(scale_err(&u, w));
    }
    assert!(
        worst_unclipped > 1e-3,
        "without clipping the fixture must not be met ({worst_unclipped:e})"
    );
}

/// Three HF-Trainer steps of the reference's BayesTune Stage 1 (A, B clipped at 1.0; λ a plain
/// tensor in its own AdamW group): `model.zero_grad()` never clears λ's gradient, so each step
/// hands AdamW the running sum. Stage 1's `fit` configuration (`carry` = the λ vars)
/// reproduces A, B and λ; stepping λ with its fresh gradient does not.
#[test]
fn stage1_lambda_gradients_accumulate_like_the_reference() {
    let m = model("bert_bt");
    let spec = json("bt_trainer.json");
    let train = examples(&spec);
    let want = load("bt_trainer.safetensors");
    let modules = all_linear(&m);
    let run = |carry_lambda: bool| {
        let store = with_adapters(&m, &load("bt_init.safetensors"));
        let adapter = AdapterSpec {
            kind: AdapterKind::BayesTune { scaling: 2.0 },
            dropout: 0.0,
        };
        let net = m.net(&store, &adapter).unwrap();
        let lam = vars(&store, |n| n.ends_with(".lora_lambda"));
        let ab = vars(&store, |n| !n.ends_with(".lora_lambda"));
        let ab_refs: Vec<&Var> = ab.iter().map(|(_, v)| v).collect();
        let lam_vars: Vec<Var> = lam.iter().map(|(_, v)| v.clone()).collect();
        let clip = Clip {
            vars: &ab_refs,
            max_norm: 1.0,
        };
        let mut opt = Adam::new(
            AdamConfig::adamw(),
            vec![
                ParamGroup {
                    params: ab.clone(),
                    lr: 1e-3,
                    weight_decay: 0.0,
                },
                ParamGroup {
                    params: lam.clone(),
                    lr: 1e-2,
                    weight_decay: 0.0,
                },
            ],
        )
        .unwrap();
        let batch = |ex: &[Example], idx: &[usize]| m.batch(ex, idx);
        let cfg = Fit {
            reg: Regulariser::BayesTune {
                store: &store,
                modules: &modules,
                n_train: train.len(),
            },
            clip: Some(&clip),
            carry: if carry_lambda { &lam_vars } else { &[] },
            ..Fit::plain(&batch, 3, train.len())
        };
        fit(&net, &train, &mut opt, &cfg, 0, |_, _| Ok(())).unwrap();
        store
    };
    let ours = run(true);
    let fresh = run(false);
    let mut worst_fresh = 0f64;
    for (name, v) in vars(&ours, |_| true) {
        let w = &want[&format!("step3.{name}")];
        assert_scaled(&name, v.as_tensor(), w, 2e-5);
        if name.ends_with(".lora_lambda") {
            worst_fresh = worst_fresh.max(scale_err(&fresh.get(&name).unwrap(), w));
        }
    }
    assert!(
        worst_fresh > 1e-4,
        "λ stepped with fresh gradients must not match ({worst_fresh:e})"
    );
}

/// PEFT's AdaLoRA budget after every optimiser step when the reference's callback drives it
/// from the HF Trainer (`update_and_allocate(state.global_step)`, steps 0 … T−1): 8 linears,
/// init_r 3 → target 2, T = 10 (tinit 1, tfinal 3).
#[test]
fn adalora_follows_the_trainer_s_step_count() {
    let m = model("bert_lora");
    let train = examples(&json("lora_trainer.json"));
    let mut train10 = train.clone();
    train10.extend(train.into_iter().take(2));
    let run = FineTune {
        budget: 2,
        epochs: 2,
        lr: 1e-3,
        batch_size: 2,
        accumulate: 1,
        init_seed: 1,
        seed: 2,
    };
    let test = train10[..2].to_vec();
    let (_, budgets) = personalize_adalora_traced(m, &train10, &test, &run).unwrap();
    let want: Vec<i64> = load("adalora_budgets.safetensors")["budgets"]
        .to_vec1()
        .unwrap();
    let want: Vec<usize> = want.into_iter().map(|b| b as usize).collect();
    assert_eq!(budgets, want);
}

/// Rank selection is the reference's `torch.topk(λ, r_b / r_max · |λ|, sorted=False)` over the
/// module-major flat λ (tie-free values; our tie-break rule is a unit test in `peft::bayestune`).
#[test]
fn top_k_selection_matches_torch_topk() {
    let f = load("topk.safetensors");
    let lam: Vec<Vec<f32>> = f["lambda"].to_vec2().unwrap();
    let keep: Vec<Vec<f32>> = f["keep"].to_vec2().unwrap();
    let k = f["k"].to_scalar::<i64>().unwrap() as usize;
    let kept = bayestune::top_k_ranks(&lam, k).unwrap();
    for (mi, row) in keep.iter().enumerate() {
        let want: Vec<usize> = (0..row.len()).filter(|&j| row[j] == 1.0).collect();
        assert_eq!(kept[mi], want, "module {mi}");
    }
}
