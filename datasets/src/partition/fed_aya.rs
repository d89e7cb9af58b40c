//! Fed-Aya partitions: the real 38-client file (clients are annotators, no LDA) and the
//! small real test sets dealt into synthetic clients by LDA over language.

use std::path::Path;

use rand::seq::SliceRandom;

use crate::config::{AyaTestSetsConfig, FedAyaConfig};
use crate::error::{DatasetError, Result};
use crate::example::{Client, Example, PartitionedDataset, Pool, PoolName, TaskKind, TaskSpec};
use crate::lda::{deal_units, DealUnit};
use crate::readers::fed_aya::{read_clients_file, read_test_sets, AyaRecord};
use crate::rng::rng_for;

use super::{dominant_language, shuffled_capped, test_rows};

fn generation_task(dataset: &str) -> TaskSpec {
    TaskSpec {
        dataset: dataset.into(),
        kind: TaskKind::Generation,
        text_columns: vec!["instruction".into(), "response".into()],
        labels: Vec::new(),
    }
}

fn to_example(r: AyaRecord) -> Example {
    Example {
        text_a: r.instruction,
        text_b: Some(r.response),
        label_id: None,
        language: r.language,
    }
}

/// Seeded per-client train/test split: shuffle, the first ceil(f·n) rows are test
/// (HF `train_test_split(test_size=f, seed)` sizes; its permutation is NumPy's, not ours).
fn split_client(
    client_id: u32,
    mut rows: Vec<Example>,
    fraction: f64,
    seed: u64,
    what: &str,
) -> Result<Client> {
    let n_test = test_rows(rows.len(), fraction);
    if rows.len() < 2 || n_test >= rows.len() {
        return Err(DatasetError::NotEnoughRows {
            unit: format!("{what} client {client_id}"),
            needed: 2,
            available: rows.len(),
            source_desc: "its rows (one train and one test row are needed)".into(),
        });
    }
    let mut rng = rng_for(seed, &["aya-train-test".into(), client_id.into()]);
    rows.shuffle(&mut rng);
    let train = rows.split_off(n_test);
    Ok(Client {
        client_id,
        language: dominant_language(&train),
        train,
        test: rows,
    })
}

/// Partitions FedLLM-Bench's client file at `path`: rows outside `cfg.languages` dropped,
/// client id = index in the file's key order, unseen pool = `cfg.unseen_clients`.
/// Tested only on small files in the real schema (the real file is not available here).
pub fn partition_fed_aya(path: &Path, cfg: &FedAyaConfig, seed: u64) -> Result<PartitionedDataset> {
    cfg.validate()?;
    let clients = read_clients_file(path, &cfg.languages)?;
    for (i, &u) in cfg.unseen_clients.iter().enumerate() {
        if u >= clients.len() {
            return Err(DatasetError::Config(format!(
                "fed_aya: unseen client index {u} but {} has only {} clients",
                path.display(),
                clients.len()
            )));
        }
        if cfg.unseen_clients[..i].contains(&u) {
            return Err(DatasetError::Config(format!(
                "fed_aya: unseen client index {u} listed twice"
            )));
        }
    }
    let mut seen = Vec::new();
    let mut unseen = Vec::new();
    for (idx, client) in clients.into_iter().enumerate() {
        let mut rng = rng_for(seed, &["aya-cap".into(), idx.into()]);
        let rows: Vec<Example> = client.records.into_iter().map(to_example).collect();
        let rows = match cfg.max_rows_per_client {
            Some(cap) => shuffled_capped(rows, Some(cap), &mut rng),
            None => rows,
        };
        let what = format!("fed_aya (`{}` in {})", client.key, path.display());
        let c = split_client(idx as u32, rows, cfg.test_fraction, seed, &what)?;
        if cfg.unseen_clients.contains(&idx) {
            unseen.push(c);
        } else {
            seen.push(c);
        }
    }
    Ok(PartitionedDataset {
        task: generation_task("fed_aya"),
        seed,
        config: serde_json::to_value(cfg).expect("config serializes"),
        pools: vec![
            Pool {
                name: PoolName::Seen,
                clients: seen,
            },
            Pool {
                name: PoolName::Unseen,
                clients: unseen,
            },
        ],
        redraws: 0,
        warnings: Vec::new(),
    })
}

/// Partitions the real Fed-Aya test sets (`aya_test_datasets.json` at `path`) into
/// `seen_clients + unseen_clients` clients by LDA with language as the label (every client
/// gets ≥ 2 pairs so both of its splits are non-empty), then splits each client train/test.
pub fn partition_aya_test_sets(
    path: &Path,
    cfg: &AyaTestSetsConfig,
    seed: u64,
) -> Result<PartitionedDataset> {
    cfg.validate()?;
    let rows: Vec<Example> = read_test_sets(path)?
        .into_iter()
        .filter(|r| cfg.languages.contains(&r.language))
        .map(to_example)
        .collect();
    let k = cfg.seen_clients + cfg.unseen_clients;
    let unit = DealUnit {
        key: "aya_test_sets".into(),
        train_labels: rows
            .iter()
            .map(|r| {
                cfg.languages
                    .iter()
                    .position(|l| *l == r.language)
                    .unwrap_or(0) as u32
            })
            .collect(),
        test_labels: Vec::new(),
        clients: k,
        min_train_rows: 2,
    };
    let (assignments, redraws) = deal_units(&[unit], cfg.languages.len(), &cfg.lda(), seed)?;
    let mut pools = vec![
        Pool {
            name: PoolName::Seen,
            clients: Vec::new(),
        },
        Pool {
            name: PoolName::Unseen,
            clients: Vec::new(),
        },
    ];
    for (c, idx) in assignments[0].train.iter().enumerate() {
        let client_rows = idx.iter().map(|&i| rows[i].clone()).collect();
        let client = split_client(
            c as u32,
            client_rows,
            cfg.test_fraction,
            seed,
            "aya_test_sets",
        )?;
        pools[usize::from(c >= cfg.seen_clients)]
            .clients
            .push(client);
    }
    Ok(PartitionedDataset {
        task: generation_task("aya_test_sets"),
        seed,
        config: serde_json::to_value(cfg).expect("config serializes"),
        pools,
        redraws,
        warnings: Vec::new(),
    })
}
