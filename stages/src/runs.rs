//! The vocabulary of a run, shared by the stages that produce results and the report that reads
//! them: which base model, which personalization method, which client pool, and the key that
//! names one personalization run in every output row (`dataset, pool, base_model, method,
//! budget, seed, client_id`).

use std::fmt;

pub use datasets::PoolName as Pool;

/// An enum whose variants have a stable machine id (used in files and manifests) and a paper
/// label (used in tables and plots). The declaration order is the row order of the paper's
/// tables. `FromStr` names the unknown id and lists the known ones.
#[macro_export]
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

        impl std::str::FromStr for $name {
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

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

labelled_enum!(
    /// How the base model that gets personalized was obtained (PAPER_NOTES §2); the id is the
    /// `base/*` stage kind without its prefix.
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

impl BaseModel {
    /// The base model a `base/*` stage kind produces.
    pub fn of_kind(kind: &str) -> Option<Self> {
        kind.strip_prefix("base/")?.parse().ok()
    }
}

impl Method {
    /// Whether the method selects ranks from λ (BayesTune-LoRA from its own Stage 1, FedP2EFT
    /// from the PS generator) and so writes the λ it selected from.
    pub fn selects_ranks_from_lambda(self) -> bool {
        matches!(self, Method::BayesTuneLora | Method::FedP2eft)
    }
}

/// Which personalization run an output row belongs to: the report's key columns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunKey {
    pub dataset: String,
    pub pool: Pool,
    pub base_model: BaseModel,
    pub method: Method,
    /// The rank budget r_b.
    pub budget: u32,
    pub seed: u64,
    pub client_id: u32,
}

impl RunKey {
    /// The key columns, in file order.
    pub const COLUMNS: [&'static str; 7] = [
        "dataset",
        "pool",
        "base_model",
        "method",
        "budget",
        "seed",
        "client_id",
    ];

    /// The key's header line (no trailing comma).
    pub fn csv_header() -> String {
        Self::COLUMNS.join(",")
    }

    /// The key from its fields in [`RunKey::COLUMNS`] order; the error names the bad field.
    pub fn parse(fields: &[&str]) -> Result<Self, String> {
        let [dataset, pool, base_model, method, budget, seed, client_id] = fields else {
            return Err(format!(
                "expected the {} run-key fields ({}), got {}",
                Self::COLUMNS.len(),
                Self::COLUMNS.join(", "),
                fields.len()
            ));
        };
        let num = |name: &str, v: &str| -> Result<u64, String> {
            v.trim()
                .parse()
                .map_err(|_| format!("`{name}` must be a non-negative integer, got `{v}`"))
        };
        let small = |name: &str, v: &str| -> Result<u32, String> {
            u32::try_from(num(name, v)?).map_err(|_| format!("`{name}` is too large: `{v}`"))
        };
        Ok(Self {
            dataset: dataset.to_string(),
            pool: pool.parse()?,
            base_model: base_model.parse()?,
            method: method.parse()?,
            budget: small("budget", budget)?,
            seed: num("seed", seed)?,
            client_id: small("client_id", client_id)?,
        })
    }
}

/// The key's CSV fields (no trailing comma), in [`RunKey::COLUMNS`] order. The dataset name is
/// a stage-chosen identifier without commas or quotes.
impl fmt::Display for RunKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{},{},{},{},{}",
            self.dataset,
            self.pool,
            self.base_model,
            self.method,
            self.budget,
            self.seed,
            self.client_id
        )
    }
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
            BaseModel::of_kind("base/dept_spec"),
            Some(BaseModel::DeptSpec)
        );
        assert_eq!(BaseModel::of_kind("psg/fedp2eft"), None);
    }

    #[test]
    fn method_order_is_the_papers_row_order() {
        let labels: Vec<_> = Method::ALL.iter().map(|m| m.label()).collect();
        assert_eq!(
            labels,
            ["LoRA", "AdaLoRA", "BayesTune-LoRA", "FedL2P", "FedP2EFT"]
        );
    }

    #[test]
    fn key_fields_follow_the_header() {
        let key = RunKey {
            dataset: "masakhanews".into(),
            pool: Pool::Seen,
            base_model: BaseModel::FedAvg,
            method: Method::FedP2eft,
            budget: 4,
            seed: 42,
            client_id: 17,
        };
        assert_eq!(
            RunKey::csv_header(),
            "dataset,pool,base_model,method,budget,seed,client_id"
        );
        assert_eq!(key.to_string(), "masakhanews,seen,fedavg,fedp2eft,4,42,17");
        let line = key.to_string();
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(RunKey::parse(&fields).unwrap(), key);
        let bad: Vec<&str> = "x,seen,fedavg,lora,2,42,-1".split(',').collect();
        let e = RunKey::parse(&bad).unwrap_err();
        assert!(e.contains("client_id") && e.contains("-1"), "{e}");
        assert!(RunKey::parse(&fields[..3]).unwrap_err().contains("got 3"));
    }
}
