//! The federated `base/*` kinds through the real binary on the fixture data: a `kill -9`
//! mid-training followed by a rerun must end with byte-identical models.

use crate::util::Sandbox;

const MANIFEST: &str = r#"
name: base
seed: 3
workdir: WORKDIR
data_root: DATA
stages:
  part:
    kind: partition/masakhanews
    params:
      languages: [eng, lin]
      clients_per_language: 2
  fedavg:
    kind: base/fedavg
    needs: [part]
    params:
      model: {tiny: {hidden: 16, layers: 1, heads: 2, intermediate: 32, vocab_size: 120, seed: 1}}
      rounds: 12
      fraction: 0.5
      batch_size: 8
      max_len: 32
"#;

fn manifest(wd: &str) -> String {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/data");
    MANIFEST.replace("WORKDIR", wd).replace("DATA", data)
}

#[test]
fn fedavg_killed_mid_training_resumes_bit_identical() {
    // Model files and the base stage's `rounds.csv` (which holds no timings, so it must match
    // too).
    let reference = Sandbox::new().assert_resumes_bit_identical(
        manifest,
        |k| k.contains("/model/") || k.ends_with("/rounds.csv"),
        &[35, 55, 75],
    );
    assert_eq!(reference.len(), 4, "config, weights, tokenizer, rounds.csv");
}

/// `frozen` keeps the named parameters at their starting values (the same tiny model
/// `base/pretrained` saves untrained) while everything else trains; a name that matches no
/// parameter is an error naming it.
#[test]
fn frozen_parameters_keep_their_starting_values() {
    let s = Sandbox::new();
    let with = |frozen: &str| {
        manifest("wd").replace(
            "      rounds: 12\n",
            &format!("      rounds: 1\n      frozen: [{frozen}]\n"),
        ) + r#"  start:
    kind: base/pretrained
    needs: [part]
    params:
      model: {tiny: {hidden: 16, layers: 1, heads: 2, intermediate: 32, vocab_size: 120, seed: 1}}
      max_len: 32
"#
    };
    s.write("m.yaml", &with("word_embeddings"));
    s.run(&["run", "m.yaml", "-q"]).ok();
    let weights = |kind: &str| {
        let store = s.path().join("wd/store");
        let dir = std::fs::read_dir(&store)
            .unwrap()
            .flatten()
            .find(|e| {
                std::fs::read_to_string(e.path().join("meta.json"))
                    .is_ok_and(|m| m.contains(&format!("\"kind\": \"{kind}\"")))
            })
            .unwrap_or_else(|| panic!("no {kind} instance"));
        stages::params::read_safetensors(
            &dir.path().join("out/model/model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (trained, start) = (weights("base/fedavg"), weights("base/pretrained"));
    let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let emb = "bert.embeddings.word_embeddings.weight";
    assert_eq!(flat(&trained[emb]), flat(&start[emb]), "frozen");
    let q = "bert.encoder.layer.0.attention.self.query.weight";
    assert_ne!(flat(&trained[q]), flat(&start[q]), "trained");
    s.write("m.yaml", &with("word_embedings"));
    let r = s.run(&["run", "m.yaml", "-q"]);
    let out = format!("{}{}", r.stdout, r.stderr);
    assert_ne!(r.code, Some(0), "{out}");
    assert!(out.contains("`word_embedings`"), "{out}");
}
