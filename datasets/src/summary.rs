//! The partition summary (`summary.json`) and the client-size table (`client_sizes.csv`,
//! the input of the lead's histogram plot).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::example::{Example, PartitionedDataset, TaskKind};
use crate::lda::label_entropy;

/// One client's row counts. `train_counts`/`test_counts` are keyed by label name for
/// classification and by language for generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientSummary {
    pub client_id: u32,
    pub language: String,
    pub n_train: usize,
    pub n_test: usize,
    pub train_counts: BTreeMap<String, usize>,
    pub test_counts: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolSummary {
    pub pool: String,
    pub n_clients: usize,
    pub n_train: usize,
    pub n_test: usize,
    /// Mean over clients of the Shannon entropy (nats) of their train label histogram
    /// (classification) — the label-skew measure; 0 for generation.
    pub mean_train_label_entropy: f64,
    pub clients: Vec<ClientSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionSummary {
    pub dataset: String,
    pub task: TaskKind,
    pub labels: Vec<String>,
    pub seed: u64,
    pub config: serde_json::Value,
    /// `client_id` is unique across both pools of the dataset.
    pub client_id_scope: String,
    pub redraws: u32,
    pub warnings: Vec<String>,
    pub pools: Vec<PoolSummary>,
}

fn counts(rows: &[Example], labels: &[String], kind: TaskKind) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in rows {
        let key = match (kind, e.label_id) {
            (TaskKind::Classification, Some(id)) => labels[id as usize].clone(),
            _ => e.language.clone(),
        };
        *out.entry(key).or_default() += 1;
    }
    out
}

impl PartitionSummary {
    pub fn from_dataset(ds: &PartitionedDataset) -> Self {
        let kind = ds.task.kind;
        let pools = ds
            .pools
            .iter()
            .map(|p| {
                let clients: Vec<ClientSummary> = p
                    .clients
                    .iter()
                    .map(|c| ClientSummary {
                        client_id: c.client_id,
                        language: c.language.clone(),
                        n_train: c.train.len(),
                        n_test: c.test.len(),
                        train_counts: counts(&c.train, &ds.task.labels, kind),
                        test_counts: counts(&c.test, &ds.task.labels, kind),
                    })
                    .collect();
                let entropy = if kind == TaskKind::Classification && !clients.is_empty() {
                    clients
                        .iter()
                        .map(|c| {
                            label_entropy(&c.train_counts.values().copied().collect::<Vec<_>>())
                        })
                        .sum::<f64>()
                        / clients.len() as f64
                } else {
                    0.0
                };
                PoolSummary {
                    pool: p.name.as_str().into(),
                    n_clients: clients.len(),
                    n_train: clients.iter().map(|c| c.n_train).sum(),
                    n_test: clients.iter().map(|c| c.n_test).sum(),
                    mean_train_label_entropy: entropy,
                    clients,
                }
            })
            .collect();
        PartitionSummary {
            dataset: ds.task.dataset.clone(),
            task: kind,
            labels: ds.task.labels.clone(),
            seed: ds.seed,
            config: ds.config.clone(),
            client_id_scope: "unique across both pools of the dataset".into(),
            redraws: ds.redraws,
            warnings: ds.warnings.clone(),
            pools,
        }
    }

    /// `pool,client_id,language,n_train,n_test`, one line per client.
    pub fn client_sizes_csv(&self) -> String {
        let mut s = String::from("pool,client_id,language,n_train,n_test\n");
        for p in &self.pools {
            for c in &p.clients {
                s.push_str(&format!(
                    "{},{},{},{},{}\n",
                    p.pool, c.client_id, c.language, c.n_train, c.n_test
                ));
            }
        }
        s
    }
}
