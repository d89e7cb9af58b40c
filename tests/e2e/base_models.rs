//! The federated `base/*` kinds through the real binary on the fixture data: a `kill -9`
//! mid-training followed by a rerun must end with byte-identical models.

use std::time::Duration;

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

/// Model files and the base stage's `rounds.csv` (which holds no timings, so it must match too).
fn models(s: &Sandbox, wd: &str) -> Vec<(String, Vec<u8>)> {
    s.artifacts(wd)
        .into_iter()
        .filter(|(k, _)| k.contains("/model/") || k.ends_with("/rounds.csv"))
        .collect()
}

#[test]
fn fedavg_killed_mid_training_resumes_bit_identical() {
    let s = Sandbox::new();
    s.write("clean.yaml", &manifest("clean"));
    let t0 = std::time::Instant::now();
    s.run(&["run", "clean.yaml"]).ok();
    let clean_ms = t0.elapsed().as_millis() as u64;
    let reference = models(&s, "clean");
    assert_eq!(reference.len(), 4, "config, weights, tokenizer, rounds.csv");

    let mut resumed_any = false;
    for (trial, pct) in [35u64, 55, 75].into_iter().enumerate() {
        let wd = format!("t{trial}");
        s.write(&format!("{wd}.yaml"), &manifest(&wd));
        let mut child = s
            .command(&["run", &format!("{wd}.yaml"), "-q"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(clean_ms * pct / 100));
        unsafe { libc::kill(child.id() as i32, 9) };
        let _ = child.wait();
        s.run(&["run", &format!("{wd}.yaml")]).ok();
        assert_eq!(
            models(&s, &wd),
            reference,
            "trial {trial} ({pct}% of a clean run)"
        );
        resumed_any |= std::fs::read_dir(s.path().join(&wd).join("store"))
            .unwrap()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path().join("meta.json"))
                    .map(|m| m.contains("\"resumed\": true"))
                    .unwrap_or(false)
            });
    }
    assert!(resumed_any, "no trial resumed from a checkpoint");
}
