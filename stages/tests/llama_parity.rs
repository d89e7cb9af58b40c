//! Parity of the LLaMA forward, completion-only loss and greedy generation with HF
//! transformers 4.57.6 (fixtures: tests/fixtures/gen/llama_tiny.py).
//!
//! Tolerance: f32, max |ours − HF| / max |HF| ≤ 1e-5 over the whole logits tensor; loss
//! relative error ≤ 1e-5; generated ids exactly equal.

use candle_core::{DType, Device, Tensor};
use stages::generate::{generate_greedy, GreedyConfig};
use stages::model::llama::causal_lm_loss;
use stages::model::llama_io::{load_llama, load_llama_store};
use stages::params::ParamStore;
use stages::peft::layer::ForwardCtx;
use stages::peft::AdapterSpec;
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/llama")
        .join(name)
}

fn golden(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("golden.safetensors"), &Device::Cpu).unwrap()
}

fn rel_err(ours: &Tensor, reference: &Tensor) -> f32 {
    let diff = (ours - reference)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = reference
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    diff / scale
}

fn ids_u32(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

fn check_forward_and_loss(name: &str) {
    let model = load_llama(&fixture(name), DType::F32, &Device::Cpu).unwrap();
    let g = golden(name);
    let logits = model
        .forward(
            &ids_u32(&g["input_ids"]),
            &ids_u32(&g["attention_mask"]),
            &ForwardCtx::eval(),
        )
        .unwrap();
    let err = rel_err(&logits, &g["logits"]);
    assert!(err <= 1e-5, "{name}: logits relative error {err:e} > 1e-5");
    let loss = causal_lm_loss(&logits, &g["labels"]).unwrap();
    let loss = loss.to_scalar::<f32>().unwrap();
    let reference = g["loss"].to_vec1::<f32>().unwrap()[0];
    let lerr = ((loss - reference) / reference).abs();
    eprintln!(
        "{name}: logits relative error {err:e}, loss {loss} vs HF {reference} (relative {lerr:e})"
    );
    assert!(
        lerr <= 1e-5,
        "{name}: loss {loss} vs HF {reference} (relative error {lerr:e})"
    );
}

fn check_generation(name: &str) {
    let model = load_llama(&fixture(name), DType::F32, &Device::Cpu).unwrap();
    let g = golden(name);
    let ids = ids_u32(&g["gen_input_ids"]);
    let mask = ids_u32(&g["gen_attention_mask"]);
    let max_new = g["gen_max_new_tokens"].to_vec1::<i64>().unwrap()[0] as usize;
    let free_cfg = GreedyConfig {
        max_new_tokens: max_new,
        stop_token_ids: vec![],
        pad_token_id: 0,
    };
    let free = generate_greedy(&model, &ids, &mask, &free_cfg).unwrap();
    let want_free: Vec<Vec<i64>> = g["gen_free"].to_vec2().unwrap();
    for (r, (got, want)) in free.iter().zip(&want_free).enumerate() {
        let want: Vec<u32> = want.iter().map(|&x| x as u32).collect();
        assert_eq!(got, &want, "{name}: free generation row {r}");
    }
    let stop = g["gen_stop_token"].to_vec1::<i64>().unwrap()[0] as u32;
    let cfg = GreedyConfig {
        max_new_tokens: max_new,
        stop_token_ids: vec![stop],
        pad_token_id: 0,
    };
    let stopped = generate_greedy(&model, &ids, &mask, &cfg).unwrap();
    let want: Vec<Vec<i64>> = g["gen_stopped"].to_vec2().unwrap();
    let lengths: Vec<i64> = g["gen_lengths"].to_vec1().unwrap();
    assert!(
        lengths.iter().any(|&n| (n as usize) < max_new),
        "{name}: fixture never stops"
    );
    for (r, got) in stopped.iter().enumerate() {
        let want: Vec<u32> = want[r][..lengths[r] as usize]
            .iter()
            .map(|&x| x as u32)
            .collect();
        assert_eq!(got, &want, "{name}: stopped generation row {r}");
    }
}

#[test]
fn plain_rope_untied_forward_and_loss_match_hf() {
    check_forward_and_loss("tiny_plain");
}

#[test]
fn llama3_rope_tied_forward_and_loss_match_hf() {
    check_forward_and_loss("tiny_llama3");
}

#[test]
fn plain_rope_untied_greedy_generation_matches_hf() {
    check_generation("tiny_plain");
}

#[test]
fn llama3_rope_tied_greedy_generation_matches_hf() {
    check_generation("tiny_llama3");
}

/// Loads the fixture model with every weight a `Var`, so the loss can be differentiated.
fn load_trainable(name: &str) -> (stages::model::llama::LlamaForCausalLM, ParamStore) {
    let (cfg, store) =
        load_llama_store(&fixture(name), DType::F32, &Device::Cpu, |_| true).unwrap();
    let model =
        stages::model::llama::LlamaForCausalLM::load(&store, &cfg, &AdapterSpec::NONE).unwrap();
    (model, store)
}

/// Gradients of the completion-only loss match PyTorch autograd (tolerance: max |ours − HF|
/// / max |HF| ≤ 1e-5 per parameter tensor, f32; measured ≤ 7e-7).
fn check_gradients(name: &str) {
    let (model, store) = load_trainable(name);
    let g = golden(name);
    let logits = model
        .forward(
            &ids_u32(&g["input_ids"]),
            &ids_u32(&g["attention_mask"]),
            &ForwardCtx::eval(),
        )
        .unwrap();
    let loss = causal_lm_loss(&logits, &g["labels"]).unwrap();
    let grads = loss.backward().unwrap();
    for (param, key) in [
        ("model.layers.0.self_attn.q_proj.weight", "grad_q_proj_l0"),
        ("model.layers.1.mlp.down_proj.weight", "grad_down_proj_l1"),
        ("model.layers.1.input_layernorm.weight", "grad_norm_l1"),
    ] {
        let grad = grads
            .get(&store.get(param).unwrap())
            .unwrap_or_else(|| panic!("{name}: no gradient for {param}"));
        let err = rel_err(grad, &g[key]);
        eprintln!("{name}: gradient of {param} relative error {err:e}");
        assert!(
            err <= 1e-5,
            "{name}: gradient of {param} relative error {err:e} > 1e-5"
        );
    }
}

#[test]
fn plain_rope_untied_gradients_match_torch() {
    check_gradients("tiny_plain");
}

#[test]
fn llama3_rope_tied_gradients_match_torch() {
    check_gradients("tiny_llama3");
}
