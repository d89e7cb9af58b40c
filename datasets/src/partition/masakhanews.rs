//! MasakhaNEWS partition (PAPER_NOTES §1): per language, train = train + dev and test = test,
//! each shuffled (seeded) and split in half — first half seen, second unseen, as the
//! authors' `shuffled[:n // 2]` — then LDA over the 7 topics with equal client counts.

use std::path::Path;

use crate::config::MasakhaNewsConfig;
use crate::error::Result;
use crate::example::{Example, PartitionedDataset, Pool, PoolName, TaskKind, TaskSpec};
use crate::lda::{deal_units, DealUnit};
use crate::readers::masakhanews::{read_language, NewsRecord, MASAKHANEWS_LABELS};
use crate::rng::rng_for;

use super::{clients_from_assignment, shuffled_capped};

/// Partitions MasakhaNEWS from `dir` (the directory holding `<lang>/{train,dev,test}.tsv`).
/// Languages without `train.tsv` use dev alone as train; they are named in the warnings.
pub fn partition_masakhanews(
    dir: &Path,
    cfg: &MasakhaNewsConfig,
    seed: u64,
) -> Result<PartitionedDataset> {
    cfg.validate()?;
    let to_examples = |rows: Vec<NewsRecord>, lang: &str| -> Vec<Example> {
        rows.into_iter()
            .map(|r| Example {
                text_a: r.text,
                text_b: None,
                label_id: Some(r.label_id),
                language: lang.to_string(),
            })
            .collect()
    };
    let mut missing_train = Vec::new();
    // Per pool, per language: (train, test).
    let mut halves: [Vec<(Vec<Example>, Vec<Example>)>; 2] = [Vec::new(), Vec::new()];
    for lang in &cfg.languages {
        let data = read_language(dir, lang)?;
        if data.train_missing {
            missing_train.push(lang.clone());
        }
        let mut rng = rng_for(
            seed,
            &["masakhanews-pool-split".into(), lang.as_str().into()],
        );
        let mut train = shuffled_capped(
            to_examples(data.train, lang),
            cfg.max_train_rows_per_language,
            &mut rng,
        );
        let mut test = shuffled_capped(
            to_examples(data.test, lang),
            cfg.max_test_rows_per_language,
            &mut rng,
        );
        let unseen_train = train.split_off(train.len() / 2);
        let unseen_test = test.split_off(test.len() / 2);
        halves[0].push((train, test));
        halves[1].push((unseen_train, unseen_test));
    }
    let k = cfg.clients_per_language;
    let pool_names = [PoolName::Seen, PoolName::Unseen];
    let units: Vec<DealUnit> = pool_names
        .iter()
        .zip(&halves)
        .flat_map(|(pool, langs)| {
            langs
                .iter()
                .zip(&cfg.languages)
                .map(move |((tr, te), lang)| DealUnit {
                    key: format!("masakhanews/{}/{lang}", pool.as_str()),
                    train_labels: tr.iter().map(|e| e.label_id.unwrap_or(0)).collect(),
                    test_labels: te.iter().map(|e| e.label_id.unwrap_or(0)).collect(),
                    clients: k,
                    min_train_rows: 1,
                })
        })
        .collect();
    let (assignments, redraws) = deal_units(&units, MASAKHANEWS_LABELS.len(), &cfg.lda(), seed)?;
    let n_lang = cfg.languages.len();
    let mut pools = Vec::new();
    for (p, pool) in pool_names.iter().enumerate() {
        let mut clients = Vec::new();
        for (l, lang) in cfg.languages.iter().enumerate() {
            let (tr, te) = &halves[p][l];
            let first_id = ((p * n_lang + l) * k) as u32;
            clients.extend(clients_from_assignment(
                tr,
                te,
                &assignments[p * n_lang + l],
                first_id,
                lang,
            ));
        }
        pools.push(Pool {
            name: *pool,
            clients,
        });
    }
    let mut warnings = Vec::new();
    if !missing_train.is_empty() {
        warnings.push(format!(
            "masakhanews: train.tsv missing for {}; their dev split alone is the train split",
            missing_train.join(", ")
        ));
    }
    Ok(PartitionedDataset {
        task: TaskSpec {
            dataset: "masakhanews".into(),
            kind: TaskKind::Classification,
            text_columns: vec!["text".into()],
            labels: MASAKHANEWS_LABELS.iter().map(|s| s.to_string()).collect(),
        },
        seed,
        config: serde_json::to_value(cfg).expect("config serializes"),
        pools,
        redraws,
        warnings,
    })
}
