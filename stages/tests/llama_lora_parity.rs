//! LoRA and BayesTune-LoRA on LLaMA against PEFT 0.17.1 (and the reference's BayesTune layer),
//! and the completion-only batches of `causal_lm` against TRL 0.10.1's
//! `DataCollatorForCompletionOnlyLM` — the reference's collator — on Fed-Aya Alpaca texts.
//! Fixtures: tests/fixtures/gen/llama_lora.py (torch 2.9.1, transformers 4.57.6; CPU f32).
//!
//! Tolerances (f32): logits (a vocabulary slice), loss and merged weights max |ours − ref| /
//! max |ref| ≤ 1e-5; gradients max |ours − ref| / max |ref| ≤ 1e-5 per adapter tensor; kept
//! examples, token ids, attention masks, labels, greedy ids and decoded texts exactly equal.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use datasets::Example;
use serde_json::Value;
use stages::generate::{generate_greedy, GreedyConfig};
use stages::model::llama::{causal_lm_loss, llama_linear_modules};
use stages::params::ParamStore;
use stages::peft::bayestune::{prior_penalty, BayesTuneConfig};
use stages::peft::layer::ForwardCtx;
use stages::peft::lora::{merge_into_store, TargetModules};
use stages::peft::{is_adapter_param, AdapterKind, AdapterSpec, LinearShape};
use stages::task::{build_causal_lm, CausalLmModel, LmBatch, LmSettings, ModelSource};
use stages::tokenize::{EncodedBatch, PaddingSide, PromptTemplate};

#[allow(dead_code)] // this test uses only some of the shared measures
mod common;
use common::scale_err;

const TOL: f64 = 1e-5;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama/lora")
}

fn golden() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("golden.safetensors"), &Device::Cpu).unwrap()
}

fn collator() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("collator.json")).unwrap()).unwrap()
}

fn examples(pairs: &Value) -> Vec<Example> {
    pairs
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Example {
            text_a: p[0].as_str().unwrap().to_string(),
            text_b: Some(p[1].as_str().unwrap().to_string()),
            label_id: None,
            language: "en".into(),
        })
        .collect()
}

fn rows<T: serde::de::DeserializeOwned>(v: &Value) -> Vec<Vec<T>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn model(fx: &Value) -> CausalLmModel {
    let settings = LmSettings {
        prompt: PromptTemplate::Alpaca,
        max_len: fx["max_len"].as_u64().unwrap() as usize,
        max_new_tokens: fx["max_new_tokens"].as_u64().unwrap() as usize,
        dtype: Default::default(),
    };
    build_causal_lm(
        &ModelSource::Dir(dir()),
        settings,
        || Err("not a tiny model".into()),
        &Device::Cpu,
    )
    .unwrap()
}

/// Our training examples and batch of the fixture pairs (the reference's prompt filter, then
/// one right-padded completion-only batch).
fn our_batch(m: &CausalLmModel, fx: &Value) -> LmBatch {
    let all = examples(&fx["pairs"]);
    let kept = m.trainable_examples(&all).unwrap();
    let order: Vec<usize> = (0..kept.len()).collect();
    m.batch(&kept, &order).unwrap()
}

#[test]
fn completion_only_batch_matches_trl_collator() {
    let fx = collator();
    let m = model(&fx);
    assert_eq!(
        m.tokenizer.pad_id(),
        m.tokenizer.token_id("<unk>").unwrap(),
        "no pad token: the reference pads with the unk token"
    );
    let all = examples(&fx["pairs"]);
    let kept = m.trainable_examples(&all).unwrap();
    let want: Vec<usize> = serde_json::from_value(fx["kept"].clone()).unwrap();
    let want: Vec<&Example> = want.iter().map(|&i| &all[i]).collect();
    assert_eq!(
        kept.iter().collect::<Vec<_>>(),
        want,
        "prompt-length filter"
    );
    let b = our_batch(&m, &fx);
    assert_eq!(
        b.input_ids.to_vec2::<u32>().unwrap(),
        rows::<u32>(&fx["input_ids"]),
        "input ids (truncation, BOS, EOS text)"
    );
    assert_eq!(
        b.attention_mask.to_vec2::<u32>().unwrap(),
        rows::<u32>(&fx["attention_mask"])
    );
    assert_eq!(
        b.labels.to_vec2::<i64>().unwrap(),
        rows::<i64>(&fx["labels"]),
        "labels (response marker, truncated response, <unk> = pad tokens ignored)"
    );
}

/// One adapter variant of the fixture: its store, spec and the modules carrying adapters.
struct Variant {
    spec: AdapterSpec,
    modules: Vec<LinearShape>,
    store: ParamStore,
}

fn variant(m: &CausalLmModel, g: &HashMap<String, Tensor>, name: &'static str) -> Variant {
    let all = llama_linear_modules(&m.config);
    let (spec, targets) = match name {
        "lora_all" => (
            AdapterSpec {
                kind: AdapterKind::Lora { alpha: 8.0 },
                dropout: 0.0,
            },
            TargetModules::AllLinear,
        ),
        "lora_qv" => (
            AdapterSpec {
                kind: AdapterKind::Lora { alpha: 16.0 },
                dropout: 0.0,
            },
            TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
        ),
        "bt_all" => (
            BayesTuneConfig {
                r_max: 4,
                alpha: 8.0,
                lambda_init: 1e-4,
                dropout: 0.0,
            }
            .spec(),
            TargetModules::AllLinear,
        ),
        _ => unreachable!(),
    };
    let modules = targets.select(&all);
    let mut store = m.store.clone();
    store.set_trainable(|_| false).unwrap();
    let prefix = format!("{name}.init.");
    for (k, t) in g {
        if let Some(param) = k.strip_prefix(&prefix) {
            store.insert(param, t.clone(), true).unwrap();
        }
    }
    Variant {
        spec,
        modules,
        store,
    }
}

fn check_variant(name: &'static str) {
    let fx = collator();
    let g = golden();
    let m = model(&fx);
    let v = variant(&m, &g, name);
    if name != "bt_all" {
        // PEFT's module selection (`all-linear` for a causal LM excludes lm_head) is ours.
        let peft: BTreeSet<String> =
            serde_json::from_value(fx[&format!("{name}.modules")].clone()).unwrap();
        let ours: BTreeSet<String> = v.modules.iter().map(|m| m.name.clone()).collect();
        assert_eq!(ours, peft, "{name}: adapted modules");
    }
    let b = our_batch(&m, &fx);
    let net = m.net(&v.store, &v.spec).unwrap();
    let logits = net
        .forward(&b.input_ids, &b.attention_mask, &ForwardCtx::eval())
        .unwrap();
    let want = &g[&format!("{name}.logits_head")];
    let head = logits.i((.., .., ..want.dim(2).unwrap())).unwrap();
    let e = scale_err(&head, want);
    assert!(e <= TOL, "{name}: logits relative error {e:.2e}");
    let mut loss = causal_lm_loss(&logits, &b.labels).unwrap();
    if name == "bt_all" {
        let n = g["bt_all.n_train"].to_vec1::<i64>().unwrap()[0] as usize;
        loss = (loss + prior_penalty(&v.store, &v.modules, n).unwrap()).unwrap();
    }
    let le = scale_err(&loss.reshape(1).unwrap(), &g[&format!("{name}.loss")]);
    assert!(le <= TOL, "{name}: loss relative error {le:.2e}");
    let grads = loss.backward().unwrap();
    let mut worst = 0f64;
    let mut n = 0;
    for (param, var) in v.store.trainable() {
        assert!(is_adapter_param(&param));
        let want = &g[&format!("{name}.grad.{param}")];
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for {param}"));
        let e = scale_err(got, want);
        assert!(
            e <= TOL,
            "{name}: gradient of {param} relative error {e:.2e}"
        );
        worst = worst.max(e);
        n += 1;
    }
    let per_module = if name == "bt_all" { 3 } else { 2 };
    assert_eq!(n, per_module * v.modules.len(), "{name}: adapter tensors");
    eprintln!("{name}: logits {e:.2e}, loss {le:.2e}, worst of {n} adapter gradients {worst:.2e}");

    // merge_and_unload, then greedy generation of the merged model.
    let mut merged = v.store.clone();
    assert_eq!(
        merge_into_store(&mut merged, &v.modules, &v.spec).unwrap(),
        v.modules.len()
    );
    assert!(!merged.names().any(is_adapter_param));
    let key = g
        .keys()
        .find(|k| k.starts_with(&format!("{name}.merged.")))
        .unwrap();
    let param = key.strip_prefix(&format!("{name}.merged.")).unwrap();
    let me = scale_err(&merged.get(param).unwrap(), &g[key]);
    assert!(me <= TOL, "{name}: merged {param} relative error {me:.2e}");
    check_generation(&m, &merged, &fx, &g, name);
}

/// Left-padded Alpaca prompts as the reference's evaluation tokenizes them, greedy ids up to
/// EOS, and the decoded, stripped texts of `CausalLmModel::generate`.
fn check_generation(
    m: &CausalLmModel,
    merged: &ParamStore,
    fx: &Value,
    g: &HashMap<String, Tensor>,
    name: &str,
) {
    let instructions: Vec<String> = serde_json::from_value(fx["gen_instructions"].clone()).unwrap();
    let rows_ids: Vec<(Vec<u32>, Vec<u32>)> = instructions
        .iter()
        .map(|i| {
            let ids = m
                .tokenizer
                .encode_ids(&PromptTemplate::Alpaca.generation_prompt(i), true)
                .unwrap();
            let n = ids.len();
            (ids, vec![0; n])
        })
        .collect();
    let enc = EncodedBatch::pad(rows_ids, m.tokenizer.pad_id(), PaddingSide::Left).unwrap();
    let (ids, mask, _) = enc.to_tensors(&Device::Cpu).unwrap();
    assert_eq!(
        ids.to_vec2::<u32>().unwrap(),
        g["gen_input_ids"]
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec2::<u32>()
            .unwrap(),
        "left-padded prompts"
    );
    assert_eq!(
        mask.to_vec2::<u32>().unwrap(),
        g["gen_attention_mask"]
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec2::<u32>()
            .unwrap()
    );
    let net = m.net(merged, &AdapterSpec::NONE).unwrap();
    let cfg = GreedyConfig {
        max_new_tokens: m.settings.max_new_tokens,
        stop_token_ids: m.stop_ids.clone(),
        pad_token_id: m.stop_ids[0],
    };
    let ours = generate_greedy(&net, &ids, &mask, &cfg).unwrap();
    let want: Vec<Vec<i64>> = g[&format!("{name}.gen_ids")].to_vec2().unwrap();
    for (r, (got, want)) in ours.iter().zip(&want).enumerate() {
        let mut want: Vec<u32> = want.iter().map(|&x| x as u32).collect();
        if let Some(p) = want.iter().position(|t| m.stop_ids.contains(t)) {
            want.truncate(p + 1);
        }
        assert_eq!(got, &want, "{name}: greedy ids of prompt {r}");
    }
    let test: Vec<Example> = instructions
        .iter()
        .map(|i| Example {
            text_a: i.clone(),
            text_b: Some(String::new()),
            label_id: None,
            language: "en".into(),
        })
        .collect();
    let texts = m.generate(&net, &test, 8).unwrap();
    let want: Vec<String> =
        serde_json::from_value(fx[&format!("{name}.gen_texts")].clone()).unwrap();
    assert_eq!(texts, want, "{name}: decoded generations");
}

#[test]
fn lora_all_linear_matches_peft() {
    check_variant("lora_all");
}

#[test]
fn lora_q_v_matches_peft() {
    check_variant("lora_qv");
}

#[test]
fn bayestune_lora_matches_reference_layer() {
    check_variant("bt_all");
}
