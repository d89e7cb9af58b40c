//! The in-memory shapes shared by readers, the partitioner, the Parquet writer and the
//! pool reader: one example, a split, and what a dataset's task looks like.

use serde::{Deserialize, Serialize};

/// One example as the compute stages consume it.
///
/// Classification (MasakhaNEWS: `text_a` = headline + " " + text; XNLI: `text_a` = premise,
/// `text_b` = hypothesis) carries `label_id`, an index into the pool's label list.
/// Generation (Fed-Aya: `text_a` = instruction, `text_b` = response) has `label_id = None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub text_a: String,
    pub text_b: Option<String>,
    pub label_id: Option<u32>,
    pub language: String,
}

/// A client's train or test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The value stored in the Parquet `split` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Whether the dataset is labelled (accuracy) or instruction/response (METEOR, ROUGE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Classification,
    Generation,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Classification => "classification",
            TaskKind::Generation => "generation",
        }
    }
}

/// What a partitioned dataset holds: its name, task kind, the Parquet names of its one or
/// two text columns (text_a, then text_b) and, for classification, the label list
/// (`label_id` indexes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub dataset: String,
    pub kind: TaskKind,
    pub text_columns: Vec<String>,
    pub labels: Vec<String>,
}

/// The two client pools of the paper: `Seen` trains the PS generator (or the baselines'
/// federated parts), `Unseen` only evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolName {
    Seen,
    Unseen,
}

impl PoolName {
    /// Both pools, in table order.
    pub const ALL: &'static [PoolName] = &[PoolName::Seen, PoolName::Unseen];

    /// Machine id, as written in files.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolName::Seen => "seen",
            PoolName::Unseen => "unseen",
        }
    }

    /// Name as printed in tables (the paper writes the id).
    pub fn label(self) -> &'static str {
        self.as_str()
    }

    /// File name of the pool inside a partition's output directory.
    pub fn file_name(self) -> &'static str {
        match self {
            PoolName::Seen => "seen.parquet",
            PoolName::Unseen => "unseen.parquet",
        }
    }
}

impl std::str::FromStr for PoolName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "seen" => Ok(PoolName::Seen),
            "unseen" => Ok(PoolName::Unseen),
            other => Err(format!(
                "unknown Pool `{other}` (expected one of: seen, unseen)"
            )),
        }
    }
}

impl std::fmt::Display for PoolName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One client of a pool with its examples.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    /// Unique across both pools of a dataset (seen clients first, as the authors number them).
    pub client_id: u32,
    /// The client's language (for Fed-Aya clients with mixed languages: the most frequent one;
    /// every example still carries its own language).
    pub language: String,
    pub train: Vec<Example>,
    pub test: Vec<Example>,
}

/// One pool of clients.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: PoolName,
    pub clients: Vec<Client>,
}

/// A dataset partitioned into a seen and an unseen pool, ready to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionedDataset {
    pub task: TaskSpec,
    pub seed: u64,
    /// The configuration that produced it, echoed into the summary.
    pub config: serde_json::Value,
    pub pools: Vec<Pool>,
    /// How many times a Dirichlet matrix was re-drawn because a client got no train rows.
    pub redraws: u32,
    /// Non-fatal issues (e.g. languages whose `train.tsv` is missing).
    pub warnings: Vec<String>,
}
