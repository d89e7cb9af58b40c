//! FedP2EFT end to end on the fixture data: the federated PSG stage resumes bit-identically
//! after `kill -9`, BayesTune's Stage 1 runs once per client whatever the number of budgets,
//! and every BayesTune-based personalization keeps exactly r_b × #modules ranks.

use crate::util::{news_fedavg_stages, Sandbox};

const MANIFEST: &str = concat!(
    r#"
name: psg
seed: 11
workdir: WORKDIR
"#,
    news_fedavg_stages!(),
    r#"  psg:
    kind: psg/fedp2eft
    needs: [part, fedavg]
    params:
      rounds: ROUNDS
      fraction: 0.5
      r_max: 4
      alpha: 8
      batch_size: 8
      max_len: 32
"#
);

const PERSONALIZE: &str = r#"
  stage1:
    kind: lambda/bayestune
    needs: [part, fedavg]
    matrix:
      client: all
    params:
      r_max: 4
      alpha: 8
      batch_size: 8
      max_len: 32
  pers:
    kind: personalize
    needs: [part, fedavg, psg, stage1]
    matrix:
      client: all
      method: [bayestune_lora, fedp2eft]
      budget: [1, 3]
    params:
      batch_size: 8
      max_len: 32
  report:
    kind: report
    needs: [pers]
    params:
      rank_budgets: [1, 3]
"#;

fn manifest(wd: &str, rounds: u32, personalize: bool) -> String {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/data");
    let mut m = MANIFEST
        .replace("WORKDIR", wd)
        .replace("DATA", data)
        .replace("ROUNDS", &rounds.to_string());
    if personalize {
        m.push_str(PERSONALIZE);
    }
    m
}

/// Meta of every finished instance: (kind, out dir).
fn instances(s: &Sandbox, wd: &str) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(s.path().join(wd).join("store"))
        .unwrap()
        .flatten()
    {
        let meta = std::fs::read_to_string(e.path().join("meta.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&meta).unwrap();
        let kind = v["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{meta}"))
            .to_string();
        out.push((kind, e.path().join("out")));
    }
    out
}

#[test]
fn psg_training_killed_mid_run_resumes_bit_identical() {
    let reference = Sandbox::new().assert_resumes_bit_identical(
        |wd| manifest(wd, 8, false),
        |k| k.contains("/psg/") || k.ends_with("/rounds.csv"),
        &[60, 85],
    );
    // PSG weights + config, the base's and the PSG's rounds.csv.
    assert_eq!(
        reference.len(),
        4,
        "{:?}",
        reference.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
}

#[test]
fn stage1_once_per_client_and_exact_rank_budgets() {
    let s = Sandbox::new();
    s.write("m.yaml", &manifest("wd", 2, true));
    s.run(&["run", "m.yaml", "-q"]).ok();
    let all = instances(&s, "wd");
    let count = |k: &str| all.iter().filter(|(kind, _)| kind == k).count();
    // 2 languages × 2 clients × 2 pools = 8 clients; 2 methods × 2 budgets each.
    assert_eq!(count("lambda/bayestune"), 8, "Stage 1 once per client");
    assert_eq!(count("personalize"), 8 * 2 * 2);
    // 1 layer × 6 linears + pooler + classifier = 8 modules.
    for (_, out) in all.iter().filter(|(k, _)| k == "personalize") {
        // The expanded `client` also selects the upstream: one Stage-1 instance, its own.
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.parent().unwrap().join("meta.json")).unwrap(),
        )
        .unwrap();
        let client = meta["params"]["client"].as_u64().unwrap();
        if meta["params"]["method"] == "bayestune_lora" {
            let ups = meta["inputs"]["stage1"].as_array().unwrap();
            assert_eq!(ups.len(), 1, "{meta}");
            assert!(
                ups[0]["instance"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("client={client}]")),
                "{meta}"
            );
        } else {
            // Other methods do not read Stage 1: it is not in their key.
            assert!(meta["inputs"].get("stage1").is_none(), "{meta}");
        }
        let ranks = std::fs::read_to_string(out.join("ranks.csv")).unwrap();
        let rows: Vec<Vec<&str>> = ranks
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect())
            .collect();
        assert_eq!(rows.len(), 8, "{ranks}");
        let budget: usize = rows[0][1].parse().unwrap();
        let total: usize = rows.iter().map(|r| r[5].parse::<usize>().unwrap()).sum();
        assert_eq!(total, budget * 8, "{ranks}");
        let lambdas = std::fs::read_to_string(out.join("lambdas.csv")).unwrap();
        assert_eq!(lambdas.lines().count(), 1 + 8 * 4, "r_max λ per module");
    }
    // One A per run seed (the reference seeds torch before every `get_peft_model`): every
    // FedP2EFT and BayesTune-LoRA personalization restores the A the PSG's Stage 1 and the
    // baseline's Stage 1 trained with — the same draw for all of them.
    let seed_of = |dir: &std::path::Path, file: &str| -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        v["init_seed"]
            .as_u64()
            .unwrap_or_else(|| panic!("{file}: {v}"))
    };
    let psg = all.iter().find(|(k, _)| k == "psg/fedp2eft").unwrap();
    let a = seed_of(&psg.1.join("psg"), "config.json");
    for (kind, out) in &all {
        match kind.as_str() {
            "lambda/bayestune" => assert_eq!(seed_of(out, "stage1.json"), a, "{}", out.display()),
            "personalize" => assert_eq!(seed_of(out, "run.json"), a, "{}", out.display()),
            _ => {}
        }
    }
    let report = all.iter().find(|(k, _)| k == "report").unwrap();
    for f in [
        "rank_structure_fedp2eft.svg",
        "rank_structure_bayestune_lora.svg",
        "lambda_distance_l2.csv",
    ] {
        assert!(report.1.join("tables").join(f).is_file(), "{f}");
    }
}
