//! Input records of the report: what the personalization, scoring and executor stages hand
//! over (per-client accuracy counts, per-sample generation scores, cost of each instance, kept
//! ranks and λ vectors per client), plus the labelled enums that order table rows like the paper.

use std::fmt;
use std::str::FromStr;

/// An enum whose variants have a stable machine id (used in files) and a paper label (used in
/// tables and plots). The declaration order is the row order of the paper's tables.
macro_rules! labelled_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => ($id:literal, $label:literal)),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every variant, in table order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Machine id, as written in input and output files.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $id),+ }
            }

            /// Name as printed in the paper's tables and figures.
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.trim() {
                    $($id => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} `{}` (expected one of: {})",
                        stringify!($name),
                        other,
                        [$($id),+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

labelled_enum!(
    /// Client pool (PAPER_NOTES §1): seen clients take part in federated training, unseen do not.
    Pool {
        Seen => ("seen", "seen"),
        Unseen => ("unseen", "unseen"),
    }
);

labelled_enum!(
    /// How the base model that gets personalized was obtained (PAPER_NOTES §2).
    BaseModel {
        FedAvg => ("fedavg", "Standard FL"),
        FedDpaT => ("feddpa_t", "FedDPA-T"),
        DeptSpec => ("dept_spec", "DEPT(SPEC)"),
        Pretrained => ("pretrained", "Off-the-shelf"),
    }
);

labelled_enum!(
    /// Personalization method; declaration order = the paper's row order within a budget.
    Method {
        Lora => ("lora", "LoRA"),
        AdaLora => ("adalora", "AdaLoRA"),
        BayesTuneLora => ("bayestune_lora", "BayesTune-LoRA"),
        FedL2p => ("fedl2p", "FedL2P"),
        FedP2eft => ("fedp2eft", "FedP2EFT"),
    }
);

labelled_enum!(
    /// Which part of a method's cost an executor instance measured (paper Table 5).
    Phase {
        FederatedTraining => ("federated_training", "Federated Training"),
        Personalization => ("personalization", "Inference"),
    }
);

/// Test-split accuracy counts of one client (for one language of that client).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationResult {
    pub dataset: String,
    pub pool: Pool,
    pub base_model: BaseModel,
    pub method: Method,
    pub budget: u32,
    pub seed: u64,
    pub client_id: String,
    pub language: String,
    pub correct: u64,
    pub total: u64,
}

/// Scores of one generated answer (one test sample of one client), each in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationScore {
    pub dataset: String,
    pub pool: Pool,
    pub base_model: BaseModel,
    pub method: Method,
    pub budget: u32,
    pub seed: u64,
    pub client_id: String,
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
    pub client_id: String,
    pub language: String,
    /// HF module name, e.g. `bert.encoder.layer.3.attention.self.query` or `classifier`.
    pub module: String,
    pub rank: u32,
}

/// The λ vector a client got (PSG output, PAPER_NOTES §5), flattened in module order.
#[derive(Debug, Clone, PartialEq)]
pub struct LambdaVector {
    pub client_id: String,
    pub language: String,
    pub values: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unknown_ids_are_named() {
        for m in Method::ALL {
            assert_eq!(m.as_str().parse::<Method>().unwrap(), *m);
        }
        let err = "lorax".parse::<Method>().unwrap_err();
        assert!(
            err.contains("`lorax`") && err.contains("bayestune_lora"),
            "{err}"
        );
        assert_eq!("unseen".parse::<Pool>().unwrap(), Pool::Unseen);
        assert_eq!(
            "personalization".parse::<Phase>().unwrap(),
            Phase::Personalization
        );
    }

    #[test]
    fn method_order_is_the_papers_row_order() {
        let labels: Vec<_> = Method::ALL.iter().map(|m| m.label()).collect();
        assert_eq!(
            labels,
            ["LoRA", "AdaLoRA", "BayesTune-LoRA", "FedL2P", "FedP2EFT"]
        );
    }
}
