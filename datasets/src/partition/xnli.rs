//! XNLI partition (PAPER_NOTES §1, App. A.1): per language, seeded samples of
//! `train_rows_per_pool` train and `test_rows_per_pool` test pairs per pool — independent per
//! language, seen and unseen disjoint — then LDA over the 3 labels.
//!
//! Departure from the authors' code, by the spec: they sample the *same* parallel rows
//! for every language and reuse the seen pool's index partition for the unseen pool; here each
//! (pool, language) is sampled and dealt on its own (the matrix is still shared by default).

use std::collections::BTreeMap;
use std::path::Path;

use rand::seq::SliceRandom;

use crate::config::{XnliConfig, XnliSplit};
use crate::error::{DatasetError, Result};
use crate::example::{Example, PartitionedDataset, Pool, PoolName, TaskKind, TaskSpec};
use crate::lda::{deal_units, DealUnit};
use crate::readers::xnli::{read_split, NliRecord, XNLI_LABELS};
use crate::rng::rng_for;

use super::clients_from_assignment;

/// Partitions XNLI from `dir` (layout per `cfg.format`).
pub fn partition_xnli(dir: &Path, cfg: &XnliConfig, seed: u64) -> Result<PartitionedDataset> {
    cfg.validate()?;
    let mut sources: BTreeMap<XnliSplit, BTreeMap<String, Vec<NliRecord>>> = BTreeMap::new();
    for split in [cfg.train_from, cfg.test_from] {
        if let std::collections::btree_map::Entry::Vacant(slot) = sources.entry(split) {
            slot.insert(read_split(dir, cfg.format, split, &cfg.languages)?);
        }
    }
    let (tr, te) = (cfg.train_rows_per_pool, cfg.test_rows_per_pool);
    // Per pool, per language: (train, test).
    let mut samples: [Vec<(Vec<Example>, Vec<Example>)>; 2] = [Vec::new(), Vec::new()];
    for lang in &cfg.languages {
        let pick = |split: XnliSplit, needed: usize| -> Result<Vec<usize>> {
            let rows = &sources[&split][lang];
            if rows.len() < needed {
                return Err(DatasetError::NotEnoughRows {
                    unit: format!("xnli/{lang}"),
                    needed,
                    available: rows.len(),
                    source_desc: format!("the XNLI {} split", split.as_str()),
                });
            }
            let mut perm: Vec<usize> = (0..rows.len()).collect();
            let mut rng = rng_for(
                seed,
                &[
                    "xnli-sample".into(),
                    lang.as_str().into(),
                    split.as_str().into(),
                ],
            );
            perm.shuffle(&mut rng);
            perm.truncate(needed);
            Ok(perm)
        };
        // Consecutive slices of one permutation per source split keep every sample disjoint,
        // also when train and test come from the same split.
        let (train_idx, test_idx) = if cfg.train_from == cfg.test_from {
            let mut all = pick(cfg.train_from, 2 * tr + 2 * te)?;
            let test = all.split_off(2 * tr);
            (all, test)
        } else {
            (pick(cfg.train_from, 2 * tr)?, pick(cfg.test_from, 2 * te)?)
        };
        let take = |split: XnliSplit, idx: &[usize]| -> Vec<Example> {
            let rows = &sources[&split][lang];
            idx.iter()
                .map(|&i| Example {
                    text_a: rows[i].premise.clone(),
                    text_b: Some(rows[i].hypothesis.clone()),
                    label_id: Some(rows[i].label_id),
                    language: lang.clone(),
                })
                .collect()
        };
        samples[0].push((
            take(cfg.train_from, &train_idx[..tr]),
            take(cfg.test_from, &test_idx[..te]),
        ));
        samples[1].push((
            take(cfg.train_from, &train_idx[tr..]),
            take(cfg.test_from, &test_idx[te..]),
        ));
    }
    drop(sources);
    let k = cfg.clients_per_language;
    let pool_names = [PoolName::Seen, PoolName::Unseen];
    let units: Vec<DealUnit> = pool_names
        .iter()
        .zip(&samples)
        .flat_map(|(pool, langs)| {
            langs
                .iter()
                .zip(&cfg.languages)
                .map(move |((tr, te), lang)| DealUnit {
                    key: format!("xnli/{}/{lang}", pool.as_str()),
                    train_labels: tr.iter().map(|e| e.label_id.unwrap_or(0)).collect(),
                    test_labels: te.iter().map(|e| e.label_id.unwrap_or(0)).collect(),
                    clients: k,
                    min_train_rows: 1,
                })
        })
        .collect();
    let (assignments, redraws) = deal_units(&units, XNLI_LABELS.len(), &cfg.lda(), seed)?;
    let n_lang = cfg.languages.len();
    let pools = pool_names
        .iter()
        .enumerate()
        .map(|(p, pool)| Pool {
            name: *pool,
            clients: cfg
                .languages
                .iter()
                .enumerate()
                .flat_map(|(l, lang)| {
                    let (tr, te) = &samples[p][l];
                    clients_from_assignment(
                        tr,
                        te,
                        &assignments[p * n_lang + l],
                        ((p * n_lang + l) * k) as u32,
                        lang,
                    )
                })
                .collect(),
        })
        .collect();
    Ok(PartitionedDataset {
        task: TaskSpec {
            dataset: "xnli".into(),
            kind: TaskKind::Classification,
            text_columns: vec!["premise".into(), "hypothesis".into()],
            labels: XNLI_LABELS.iter().map(|s| s.to_string()).collect(),
        },
        seed,
        config: serde_json::to_value(cfg).expect("config serializes"),
        pools,
        redraws,
        warnings: Vec::new(),
    })
}
