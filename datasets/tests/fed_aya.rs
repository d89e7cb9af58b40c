//! Fed-Aya partitions: the 38-client schema on a synthetic file (the real
//! `aya_38c_25k.json` is not obtainable here) and the real test sets as a small dataset.

mod common;

use std::collections::BTreeSet;
use std::fs;

use common::fixtures;
use datasets::*;
use serde_json::json;

/// 38 clients whose keys are deliberately not in sorted order; client i has 5 + i rows,
/// plus two rows in a language outside the paper's eight.
fn write_clients_file(path: &std::path::Path) {
    let langs = ["ar", "en", "es", "fr", "pt", "ru", "te", "zh"];
    let mut body = String::from("{");
    for i in 0..38 {
        let rows: Vec<_> = (0..5 + i)
            .map(|j| {
                json!({
                    "instruction": format!("instruction {i}-{j}"),
                    "response": format!("response {i}-{j}"),
                    "language": langs[(i + j / 4) % 8],
                    "annotator_id": format!("annot-{i}"),
                })
            })
            .chain((0..2).map(
                |j| json!({"instruction": format!("x {i}-{j}"), "response": "y", "language": "de"}),
            ))
            .collect();
        if i > 0 {
            body.push(',');
        }
        // Keys z37 … z00 would sort backwards; key order in the file is 0, 1, … 37.
        body.push_str(&format!(
            "\"z{:02}\": {}",
            37 - i,
            serde_json::to_string(&rows).unwrap()
        ));
    }
    body.push('}');
    fs::write(path, body).unwrap();
}

#[test]
fn fed_aya_clients_follow_file_order_and_split_80_20() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("aya_38c.json");
    write_clients_file(&path);
    let ds = partition_fed_aya(&path, &FedAyaConfig::default(), 42).unwrap();
    assert_eq!(ds.task.kind, TaskKind::Generation);
    let unseen: Vec<u32> = ds.pools[1].clients.iter().map(|c| c.client_id).collect();
    assert_eq!(unseen, [21, 22, 23, 24, 25, 26, 27, 34]);
    assert_eq!(ds.pools[0].clients.len(), 30);
    for c in ds.pools.iter().flat_map(|p| &p.clients) {
        let n = 5 + c.client_id as usize; // the "de" rows are filtered out
        let n_test = (n as f64 * 0.2).ceil() as usize;
        assert_eq!(
            (c.train.len(), c.test.len()),
            (n - n_test, n_test),
            "client {}",
            c.client_id
        );
        let all: BTreeSet<_> = c
            .train
            .iter()
            .chain(&c.test)
            .map(|e| e.text_a.clone())
            .collect();
        let want: BTreeSet<_> = (0..n)
            .map(|j| format!("instruction {}-{j}", c.client_id))
            .collect();
        assert_eq!(all, want);
        assert!(c
            .train
            .iter()
            .all(|e| e.text_b.as_deref().unwrap().starts_with("response")));
    }
    let other = partition_fed_aya(&path, &FedAyaConfig::default(), 43).unwrap();
    assert_ne!(
        ds.pools[0].clients[10].test,
        other.pools[0].clients[10].test
    );

    let out = tmp.path().join("out");
    write_partition(&ds, &out).unwrap();
    let reader = PoolReader::open(out.join("unseen.parquet")).unwrap();
    assert!(reader.labels().is_empty());
    assert_eq!(reader.task().text_columns, ["instruction", "response"]);
    let c34 = reader.load_client(34, Split::Test).unwrap();
    assert_eq!(c34, ds.pools[1].clients[7].test);
    assert_eq!(c34[0].label_id, None);

    let bad = FedAyaConfig {
        unseen_clients: vec![38],
        ..FedAyaConfig::default()
    };
    assert!(partition_fed_aya(&path, &bad, 42)
        .unwrap_err()
        .to_string()
        .contains("38"));
}

#[test]
fn aya_test_sets_become_a_small_generation_dataset() {
    let path = fixtures().join("fed_aya/aya_test_datasets.json");
    let cfg = AyaTestSetsConfig::default();
    let ds = partition_aya_test_sets(&path, &cfg, 42).unwrap();
    assert_eq!(
        (ds.pools[0].clients.len(), ds.pools[1].clients.len()),
        (8, 4)
    );
    let clients: Vec<&Client> = ds.pools.iter().flat_map(|p| &p.clients).collect();
    let rows: usize = clients.iter().map(|c| c.train.len() + c.test.len()).sum();
    assert_eq!(rows, 160);
    assert!(clients
        .iter()
        .all(|c| !c.train.is_empty() && !c.test.is_empty()));
    let instructions: BTreeSet<_> = clients
        .iter()
        .flat_map(|c| c.train.iter().chain(&c.test))
        .map(|e| (e.language.clone(), e.text_a.clone()))
        .collect();
    assert_eq!(instructions.len(), 160, "every pair in exactly one client");
    let ids: Vec<u32> = clients.iter().map(|c| c.client_id).collect();
    assert_eq!(ids, (0..12).collect::<Vec<u32>>());
    // LDA over language with α = 0.5 makes clients language-skewed: most clients' dominant
    // language covers more than the uniform 1/8 of their rows.
    let skewed = clients
        .iter()
        .filter(|c| {
            let n = c.train.len() + c.test.len();
            let top = c
                .train
                .iter()
                .chain(&c.test)
                .filter(|e| e.language == c.language)
                .count();
            top * 8 > n * 2
        })
        .count();
    assert!(skewed >= 9, "{skewed}");
}

/// Rows of a Fed-Aya client mix languages: the pool file reports each client's dominant train
/// language — the summary's — not the language of whichever row comes first.
#[test]
fn pool_reader_reports_each_clients_dominant_language() {
    let path = fixtures().join("fed_aya/aya_test_datasets.json");
    let ds = partition_aya_test_sets(&path, &AyaTestSetsConfig::default(), 42).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_partition(&ds, tmp.path()).unwrap();
    let mut mixed = 0;
    for (pool, file) in ds.pools.iter().zip(["seen.parquet", "unseen.parquet"]) {
        let reader = PoolReader::open(tmp.path().join(file)).unwrap();
        for (c, info) in pool.clients.iter().zip(reader.clients()) {
            assert_eq!(info.client_id, c.client_id);
            assert_eq!(info.language, c.language, "client {}", c.client_id);
            let first = reader.load_client(c.client_id, Split::Train).unwrap()[0]
                .language
                .clone();
            mixed += usize::from(first != c.language);
        }
    }
    assert!(mixed > 0, "some client's first row is not in its language");
}
