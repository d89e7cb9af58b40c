//! FedL2P end to end on the fixture data: the federated LR-net stage resumes bit-identically
//! after `kill -9`, stops early after `patience` rounds without improvement, and personalization
//! reads the LR network of its own budget and writes one learning rate per LoRA matrix.

use crate::util::{news_fedavg_stages, Sandbox};

const MANIFEST: &str = concat!(
    r#"
name: fedl2p
seed: 5
workdir: WORKDIR
"#,
    news_fedavg_stages!(),
    r#"  fedl2p:
    kind: psg/fedl2p
    needs: [part, fedavg]
    matrix:
      budget: [1, 3]
    params:
      rounds: ROUNDS
      patience: PATIENCE
      fraction: 0.5
      outer_steps: 2
      pairs: 2
      batch_size: 4
      max_len: 32
"#
);

const PERSONALIZE: &str = r#"
  pers:
    kind: personalize
    needs: [part, fedavg, fedl2p]
    matrix:
      client: all
      method: [lora, fedl2p]
      budget: [1, 3]
    params:
      batch_size: 8
      max_len: 32
  report:
    kind: report
    needs: [pers]
"#;

fn manifest(wd: &str, rounds: u32, patience: u32, personalize: bool) -> String {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/data");
    let mut m = MANIFEST
        .replace("WORKDIR", wd)
        .replace("DATA", data)
        .replace("ROUNDS", &rounds.to_string())
        .replace("PATIENCE", &patience.to_string());
    if personalize {
        m.push_str(PERSONALIZE);
    }
    m
}

fn meta_of(out: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.parent().unwrap().join("meta.json")).unwrap())
        .unwrap()
}

/// (meta, out dir) of every finished instance of `kind`.
fn instances(s: &Sandbox, wd: &str, kind: &str) -> Vec<(serde_json::Value, std::path::PathBuf)> {
    std::fs::read_dir(s.path().join(wd).join("store"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("out"))
        .map(|out| (meta_of(&out), out))
        .filter(|(m, _)| m["kind"] == kind)
        .collect()
}

#[test]
fn fedl2p_training_killed_mid_run_resumes_bit_identical() {
    let reference = Sandbox::new().assert_resumes_bit_identical(
        // Enough rounds that the two FedL2P instances dominate the run, so the kills land in
        // them even on a loaded machine.
        |wd| manifest(wd, 10, 50, false),
        |k| k.contains("/lr_net/") || k.ends_with("/rounds.csv"),
        &[40, 65, 85],
    );
    // Two budgets × (weights, config, rounds.csv) + the base's rounds.csv.
    assert_eq!(
        reference.len(),
        7,
        "{:?}",
        reference.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
}

#[test]
fn early_stopping_and_one_rate_per_matrix_of_the_matching_budget() {
    let s = Sandbox::new();
    s.write("m.yaml", &manifest("wd", 8, 1, true));
    s.run(&["run", "m.yaml", "-q"]).ok();
    let trained = instances(&s, "wd", "psg/fedl2p");
    assert_eq!(trained.len(), 2);
    for (meta, out) in &trained {
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("lr_net/config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["budget"], meta["params"]["budget"]);
        let (best, ran) = (
            cfg["best_round"].as_u64().unwrap(),
            cfg["rounds_run"].as_u64().unwrap(),
        );
        let rounds = std::fs::read_to_string(out.join("rounds.csv")).unwrap();
        let val: Vec<f64> = rounds
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
            .collect();
        assert_eq!(val.len() as u64, ran, "{rounds}");
        // The best round has the lowest validation loss; with patience 1 the run stops the
        // round after the last improvement (or at the round limit).
        let lowest = val.iter().cloned().fold(f64::INFINITY, f64::min);
        assert_eq!(val[best as usize - 1], lowest, "{rounds}");
        assert!(
            ran == 8 || ran == best + 1,
            "best {best}, ran {ran}:\n{rounds}"
        );
    }
    let pers = instances(&s, "wd", "personalize");
    // 8 clients × 2 methods × 2 budgets.
    assert_eq!(pers.len(), 32);
    for (meta, out) in pers
        .iter()
        .filter(|(m, _)| m["params"]["method"] == "fedl2p")
    {
        let budget = meta["params"]["budget"].as_u64().unwrap();
        let ups = meta["inputs"]["fedl2p"].as_array().unwrap();
        assert_eq!(ups.len(), 1, "{meta}");
        assert!(
            ups[0]["instance"]
                .as_str()
                .unwrap()
                .contains(&format!("budget={budget}]")),
            "{meta}"
        );
        let lrs = std::fs::read_to_string(out.join("lrs.csv")).unwrap();
        let rows: Vec<Vec<&str>> = lrs
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect())
            .collect();
        // 1 layer × 6 linears + pooler + classifier, A and B each.
        assert_eq!(rows.len(), 16, "{lrs}");
        assert!(rows.iter().all(|r| {
            let lr: f64 = r[2].parse().unwrap();
            (r[1] == "A" || r[1] == "B") && lr.is_finite() && lr >= 0.0
        }));
        let ranks = std::fs::read_to_string(out.join("ranks.csv")).unwrap();
        assert!(ranks
            .lines()
            .skip(1)
            .all(|l| l.ends_with(&format!(",{budget}"))));
    }
    let report = &instances(&s, "wd", "report")[0].1;
    let table = std::fs::read_dir(report.join("tables"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with("seen_fedavg.md"))
        .unwrap();
    let md = std::fs::read_to_string(table.path()).unwrap();
    assert!(md.contains("FedL2P"), "{md}");
}

#[test]
fn personalization_with_another_budgets_lr_net_fails_clearly() {
    let s = Sandbox::new();
    let m = manifest("wd", 1, 50, true)
        .replace(
            "    matrix:\n      budget: [1, 3]\n    params:\n      rounds",
            "    params:\n      budget: 1\n      rounds",
        )
        .replace(
            "method: [lora, fedl2p]\n      budget: [1, 3]",
            "method: [fedl2p]\n      budget: [3]",
        );
    s.write("m.yaml", &m);
    let r = s.run(&["run", "m.yaml", "-q"]);
    assert_eq!(r.code, Some(1), "{r:#?}");
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("budget 1") && all.contains("budget 3"),
        "{all}"
    );
}
