//! Inputs a manifest names are checked before anything runs: a missing, truncated or malformed
//! model directory and client counts the data cannot fill exit 2 with nothing written — not
//! after the partition stage has committed.

use std::path::Path;

use crate::util::Sandbox;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/data");

fn manifest(model: &str, clients: usize) -> String {
    format!(
        r#"name: preflight
seed: 3
workdir: wd
data_root: {DATA}
stages:
  part:
    kind: partition/masakhanews
    params:
      languages: [eng, lin]
      clients_per_language: {clients}
  fedavg:
    kind: base/fedavg
    needs: [part]
    params:
      model: {model}
      rounds: 1
      fraction: 0.5
      batch_size: 8
      max_len: 32
"#
    )
}

const TINY: &str =
    "{tiny: {hidden: 16, layers: 1, heads: 2, intermediate: 32, vocab_size: 120, seed: 1}}";

/// An HF-layout model directory written by `base/pretrained`, copied to `dest`.
fn real_model_dir(s: &Sandbox, dest: &Path) {
    s.write(
        "make.yaml",
        &manifest(TINY, 2)
            .replace("workdir: wd", "workdir: make")
            .replace(
                "  fedavg:\n    kind: base/fedavg",
                "  fedavg:\n    kind: base/pretrained",
            )
            .replace(
                "      rounds: 1\n      fraction: 0.5\n      batch_size: 8\n",
                "",
            ),
    );
    s.run(&["run", "make.yaml"]).ok();
    let model = std::fs::read_dir(s.path().join("make/store"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("out/model"))
        .find(|m| m.join("config.json").is_file())
        .expect("base/pretrained wrote a model");
    std::fs::create_dir_all(dest).unwrap();
    for f in std::fs::read_dir(&model).unwrap().flatten() {
        std::fs::copy(f.path(), dest.join(f.file_name())).unwrap();
    }
}

/// Runs `run` on `text`: exit 2, every fragment in the message, the workdir never created.
fn refused(s: &Sandbox, text: &str, fragments: &[&str]) {
    s.write("m.yaml", text);
    let r = s.run(&["run", "m.yaml"]);
    assert_eq!(r.code, Some(2), "{r:#?}");
    for f in fragments {
        assert!(r.stderr.contains(f), "expected {f:?} in:\n{}", r.stderr);
    }
    assert!(
        !s.path().join("wd").exists(),
        "something was written:\n{}",
        r.stderr
    );
}

#[test]
fn bad_model_directories_are_refused_before_the_partition_runs() {
    let s = Sandbox::new();
    let missing = s.path().join("models/bert-base-multilingual-cased");
    refused(
        &s,
        &manifest(&format!("{{dir: {}}}", missing.display()), 2),
        &[
            "m.yaml:15: stage `fedavg`",
            "not found",
            "google-bert/bert-base-multilingual-cased",
            "pipeline import-model --format pytorch",
        ],
    );

    let good = s.path().join("good");
    real_model_dir(&s, &good);
    let with = |dir: &Path| manifest(&format!("{{dir: {}}}", dir.display()), 2);
    s.write("ok.yaml", &with(&good));
    s.run(&["run", "--dry-run", "ok.yaml"]).ok();

    let cut = s.path().join("cut");
    real_model_dir(&s, &cut);
    let weights = cut.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    refused(
        &s,
        &with(&cut),
        &["m.yaml:15:", "model.safetensors", "truncated"],
    );

    let bad = s.path().join("bad");
    real_model_dir(&s, &bad);
    std::fs::write(bad.join("config.json"), "{\"hidden_size\": ").unwrap();
    refused(
        &s,
        &with(&bad),
        &["m.yaml:15:", "config.json: invalid JSON"],
    );
}

#[test]
fn more_clients_than_a_language_has_rows_is_refused_at_validation() {
    let s = Sandbox::new();
    refused(
        &s,
        &manifest(TINY, 5000),
        &[
            "m.yaml:10: stage `part`",
            "the data cannot fill the clients",
            "more clients than rows",
        ],
    );
}
