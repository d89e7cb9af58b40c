//! `personalize` over every client of a partition, then `report`: the result tables reach
//! `export --csv`, and an unknown method is refused before anything runs.

use crate::util::{news_fedavg_stages, Sandbox};

const MANIFEST: &str = concat!(
    r#"
name: pers
seed: 5
workdir: wd
"#,
    news_fedavg_stages!(),
    r#"  pers:
    kind: personalize
    needs: [part, fedavg]
    matrix:
      client: all
      method: [METHOD]
      budget: [2]
    params:
      batch_size: 8
      max_len: 32
  report:
    kind: report
    needs: [pers]
"#
);

fn manifest(method: &str) -> String {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/data");
    MANIFEST.replace("DATA", data).replace("METHOD", method)
}

#[test]
fn report_tables_reach_export_csv() {
    let s = Sandbox::new();
    s.write("m.yaml", &manifest("lora"));
    s.run(&["run", "m.yaml", "-q"]).ok();
    s.run(&["export", "m.yaml", "--csv", "csv"]).ok();
    // The report's accuracy of a language is its clients' pooled Σcorrect / Σtotal (PAPER_NOTES
    // §7), recomputed here from every instance's result.csv.
    let mut pooled: std::collections::BTreeMap<(String, String), (u64, u64)> = Default::default();
    for e in std::fs::read_dir(s.path().join("wd/store"))
        .unwrap()
        .flatten()
    {
        let Ok(csv) = std::fs::read_to_string(e.path().join("out/result.csv")) else {
            continue;
        };
        for row in csv.lines().skip(1) {
            let f: Vec<&str> = row.split(',').collect();
            let acc = pooled.entry((f[1].into(), f[7].into())).or_default();
            acc.0 += f[8].parse::<u64>().unwrap();
            acc.1 += f[9].parse::<u64>().unwrap();
        }
    }
    assert_eq!(pooled.len(), 4, "2 languages × 2 pools: {pooled:?}");
    let mut pools = Vec::new();
    for pool in ["seen", "unseen"] {
        let path = s
            .path()
            .join(format!("csv/report__masakhanews_{pool}_fedavg.csv"));
        let csv =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let rows: Vec<&str> = csv.lines().skip(1).collect();
        // One row per language at budget 2, LoRA: the pooled accuracy, one seed, no SD; the
        // only method wins every language.
        assert_eq!(rows.len(), 2, "{csv}");
        for r in &rows {
            let f: Vec<&str> = r.split(',').collect();
            assert_eq!(
                &f[..5],
                &["masakhanews", pool, "fedavg", "2", "lora"],
                "{r}"
            );
            let acc: f64 = f[7].parse().unwrap();
            let (c, t) = pooled[&(pool.to_string(), f[5].to_string())];
            assert!(
                (acc - 100.0 * c as f64 / t as f64).abs() < 1e-9,
                "{r} vs {c}/{t}"
            );
            assert_eq!((f[8], f[9], f[10]), ("", "1", "true"), "{r}");
        }
        pools.push(rows.len());
    }
    assert_eq!(pools, [2, 2]);
}

#[test]
fn unknown_method_is_a_validation_error() {
    let s = Sandbox::new();
    s.write("m.yaml", &manifest("adalora_x"));
    let r = s.run(&["run", "m.yaml", "-q"]);
    let out = format!("{}{}", r.stdout, r.stderr);
    assert_ne!(r.code, Some(0), "{out}");
    assert!(
        out.contains("unknown method `adalora_x`") && out.contains("supported: lora"),
        "{out}"
    );
    // Refused at validation, before any stage ran.
    assert!(!s.path().join("wd/store").is_dir(), "{out}");
}

#[test]
fn zero_budget_is_a_validation_error() {
    let s = Sandbox::new();
    s.write(
        "m.yaml",
        &manifest("lora").replace("budget: [2]", "budget: [0]"),
    );
    let r = s.run(&["run", "m.yaml", "-q"]);
    let out = format!("{}{}", r.stdout, r.stderr);
    assert_ne!(r.code, Some(0), "{out}");
    assert!(out.contains("`budget`") && out.contains("≥ 1"), "{out}");
    assert!(!s.path().join("wd/store").is_dir(), "{out}");
}

/// A method's cache key holds only the upstream stages it reads: retraining the PSG reruns
/// the FedP2EFT personalizations and leaves the LoRA baseline of the same stage cached.
#[test]
fn a_method_is_keyed_only_on_the_upstream_stages_it_reads() {
    let s = Sandbox::new();
    let with_psg = |rounds: u32| {
        manifest("lora, fedp2eft")
            .replace(
                "  pers:\n    kind: personalize\n    needs: [part, fedavg]",
                "  pers:\n    kind: personalize\n    needs: [part, fedavg, psg]",
            )
            .replace(
                "  report:\n",
                &format!(
                    "  psg:\n    kind: psg/fedp2eft\n    needs: [part, fedavg]\n    params: {{rounds: {rounds}, fraction: 0.5, r_max: 4, alpha: 8, batch_size: 8, max_len: 32}}\n  report:\n"
                ),
            )
    };
    s.write("m.yaml", &with_psg(1));
    s.run(&["run", "m.yaml", "-q"]).ok();
    s.write("m.yaml", &with_psg(2));
    let r = s.run(&["run", "m.yaml"]);
    r.ok();
    // 8 clients: the PSG, the 8 FedP2EFT instances and the report rerun; LoRA's 8 are cached.
    assert!(
        r.summary().starts_with("10 executed, 10 cached"),
        "{}",
        r.summary()
    );
}

/// `dtype: bf16` holds (and in base FL trains) the base model's weights in bf16, as the
/// reference's `torch_dtype=bfloat16`; adapters stay f32. A different dtype is a different
/// cache key and gives different results.
#[test]
fn bf16_base_models_train_and_personalize() {
    let s = Sandbox::new();
    let bf16 = manifest("lora")
        .replace(
            "      max_len: 32\n  pers:",
            "      max_len: 32\n      dtype: bf16\n  pers:",
        )
        .replace(
            "      batch_size: 8\n      max_len: 32\n  report:",
            "      batch_size: 8\n      max_len: 32\n      dtype: bf16\n  report:",
        );
    assert_eq!(bf16.matches("dtype: bf16").count(), 2, "{bf16}");
    s.write("m.yaml", &bf16);
    s.run(&["run", "m.yaml", "-q"]).ok();
    let store = s.path().join("wd/store");
    let mut saw_base = false;
    for e in std::fs::read_dir(&store).unwrap().flatten() {
        let meta = std::fs::read_to_string(e.path().join("meta.json")).unwrap();
        if meta.contains("\"kind\": \"base/fedavg\"") {
            let w = stages::params::read_safetensors(
                &e.path().join("out/model/model.safetensors"),
                &candle_core::Device::Cpu,
            )
            .unwrap();
            let q = &w["bert.encoder.layer.0.attention.self.query.weight"];
            assert_eq!(q.dtype(), candle_core::DType::BF16);
            saw_base = true;
        }
    }
    assert!(saw_base);
    let f32_run = Sandbox::new();
    f32_run.write("m.yaml", &manifest("lora"));
    f32_run.run(&["run", "m.yaml", "-q"]).ok();
    let (a, b) = (s.artifacts("wd"), f32_run.artifacts("wd"));
    let results = |m: &std::collections::BTreeMap<String, Vec<u8>>| -> Vec<Vec<u8>> {
        m.iter()
            .filter(|(k, _)| k.ends_with("/result.csv"))
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(results(&a).len(), 8);
    assert_ne!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "dtype is in the keys"
    );
}
