//! `import::pytorch` on checkpoints written by transformers' `save_pretrained(
//! safe_serialization=False)` (fixtures: tests/fixtures/gen/pytorch_checkpoints.py, from the
//! committed tiny models). The imported tensors must equal the source model's exactly (f32, and
//! f16 as torch rounds it: both round to nearest even), buffers are dropped by name, and the
//! result loads with the ordinary loaders.

use candle_core::{DType, Device, Tensor};
use stages::import::pytorch::{import_pytorch_dir, PytorchImportError};
use stages::model::bert::load_pretrained;
use stages::model::llama_io::load_llama;
use std::collections::HashMap;
use std::path::PathBuf;

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

fn tokenizer() -> PathBuf {
    repo("tests/fixtures/llama/lora/tokenizer.json")
}

fn tensors(path: &std::path::Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    let t = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    t.to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Every tensor of `got` equals `want` converted to `dtype`, bit for bit, and the names agree.
fn assert_same_tensors(
    got: &HashMap<String, Tensor>,
    want: &HashMap<String, Tensor>,
    dtype: DType,
) {
    let mut gn: Vec<&String> = got.keys().collect();
    let mut wn: Vec<&String> = want.keys().collect();
    gn.sort();
    wn.sort();
    assert_eq!(gn, wn, "tensor names");
    for (name, w) in want {
        let g = &got[name];
        assert_eq!(g.dtype(), dtype, "{name}");
        assert_eq!(g.dims(), w.dims(), "{name}");
        let w = w.to_dtype(dtype).unwrap();
        assert_eq!(bits(g), bits(&w), "{name}");
    }
}

#[test]
fn a_sharded_f16_llama_checkpoint_imports_exactly() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("llama");
    let src = repo("tests/fixtures/pytorch/llama_f16_sharded");
    let r = import_pytorch_dir(&src, Some(&tokenizer()), &dir).unwrap();
    assert_eq!(r.shard_count, 2);
    assert_eq!(
        r.dropped,
        vec!["model.layers.0.self_attn.rotary_emb.inv_freq".to_string()]
    );
    let want = tensors(&repo("tests/fixtures/llama/tiny_plain/model.safetensors"));
    let got = tensors(&dir.join("model.safetensors"));
    assert_same_tensors(&got, &want, DType::F16);
    assert_eq!(r.tensor_count, want.len());
    assert_eq!(
        std::fs::read(dir.join("tokenizer.json")).unwrap(),
        std::fs::read(tokenizer()).unwrap()
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "llama");
    load_llama(&dir, DType::F32, &Device::Cpu).unwrap();
}

#[test]
fn a_bert_checkpoint_imports_exactly_and_needs_a_tokenizer() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("bert");
    let src = repo("tests/fixtures/pytorch/bert_f32");
    // No tokenizer.json beside the checkpoint and none given: refused, nothing written.
    let e = import_pytorch_dir(&src, None, &dir).unwrap_err();
    assert!(matches!(e, PytorchImportError::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    assert!(!dir.exists());
    // The loader points a user with a .bin at the importer.
    let e = load_pretrained(&src, &Device::Cpu, DType::F32, |_| false).unwrap_err();
    assert!(
        e.to_string().contains("import-model --format pytorch"),
        "{e}"
    );

    let r = import_pytorch_dir(&src, Some(&tokenizer()), &dir).unwrap();
    assert_eq!(r.shard_count, 1);
    assert_eq!(r.dropped, vec!["bert.embeddings.position_ids".to_string()]);
    let want = tensors(&repo(
        "stages/tests/fixtures/core/bert_tiny/model.safetensors",
    ));
    assert_same_tensors(&tensors(&dir.join("model.safetensors")), &want, DType::F32);
    load_pretrained(&dir, &Device::Cpu, DType::F32, |_| false).unwrap();
}

#[test]
fn a_directory_without_a_checkpoint_is_named() {
    let out = tempfile::tempdir().unwrap();
    let src = repo("tests/fixtures/llama/tiny_plain");
    let e = import_pytorch_dir(&src, Some(&tokenizer()), &out.path().join("x")).unwrap_err();
    assert!(e.to_string().contains("no pytorch_model.bin"), "{e}");
    assert!(e.to_string().contains("tiny_plain"), "{e}");
}
