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
