//! Input records of the report: what the personalization, scoring and executor stages hand
//! over (per-client accuracy counts, per-sample generation scores, cost of each instance, kept
//! ranks and λ vectors per client), plus the labelled enums that order table rows like the paper.

pub use stages::runs::{BaseModel, Method, Pool, RunKey};

stages::labelled_enum!(
    /// Which part of a method's cost an executor instance measured (paper Table 5).
    Phase {
        FederatedTraining => ("federated_training", "Federated Training"),
        Personalization => ("personalization", "Inference"),
    }
);

/// Test-split accuracy counts of one client (for one language of that client).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationResult {
    pub key: RunKey,
    pub language: String,
    pub correct: u64,
    pub total: u64,
}

/// Scores of one generated answer (one test sample of one client), each in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationScore {
    pub key: RunKey,
    pub language: String,
    pub rouge1: f64,
    pub rouge_l: f64,
    pub meteor: f64,
}

/// Wall time and peak memory of one executor instance. `clients` is how many units of work
/// the instance covered: client-rounds for federated training, clients for personalization.
/// `setup` names the experiment it belongs to (the partition stage), so costs of different
/// datasets and models are never averaged together.
#[derive(Debug, Clone, PartialEq)]
pub struct CostRecord {
    pub setup: String,
    pub method: Method,
    pub phase: Phase,
    pub wall_seconds: f64,
    pub peak_rss_bytes: u64,
    pub clients: u64,
}

/// Kept LoRA rank of one module for one client at one budget (PAPER_NOTES §4). Modules with no
/// kept rank may be left out; they count as rank 0.
#[derive(Debug, Clone, PartialEq)]
pub struct RankRecord {
    pub method: Method,
    pub budget: u32,
    pub client_id: u32,
    pub language: String,
    /// HF module name, e.g. `bert.encoder.layer.3.attention.self.query` or `classifier`.
    pub module: String,
    pub rank: u32,
}

/// The λ vector a client got (PSG output, PAPER_NOTES §5), flattened in module order.
#[derive(Debug, Clone, PartialEq)]
pub struct LambdaVector {
    pub client_id: u32,
    pub language: String,
    pub values: Vec<f64>,
}

/// A run key for test records.
#[cfg(test)]
pub(crate) fn run_key(
    dataset: &str,
    pool: Pool,
    base_model: BaseModel,
    method: Method,
    budget: u32,
    seed: u64,
    client_id: u32,
) -> RunKey {
    RunKey {
        dataset: dataset.into(),
        pool,
        base_model,
        method,
        budget,
        seed,
        client_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_ids_round_trip() {
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), *p);
        }
        assert_eq!(
            "personalization".parse::<Phase>().unwrap(),
            Phase::Personalization
        );
    }
}
