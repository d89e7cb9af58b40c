//! `partition/*` stage kinds: read a dataset below the data root, LDA-partition it into the
//! seen and unseen client pools, write Parquet shards + summary (datasets crate), and draw the
//! client-size histogram.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datasets::{
    AyaTestSetsConfig, DatasetError, FedAyaConfig, MasakhaNewsConfig, PartitionedDataset,
    XnliConfig, XnliFormat,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::engine::context::StageContext;
use crate::engine::registry::{
    typed_params, ParamError, PlanInputs, Registry, StageError, StageKind,
};
use crate::report::{plot_client_sizes, PoolSizes};

pub fn register(r: &mut Registry) {
    r.register(Arc::new(Partition::<MasakhaNewsConfig>::new(
        "partition/masakhanews",
        "MasakhaNEWS → LDA client pools (Parquet)",
    )));
    r.register(Arc::new(Partition::<XnliConfig>::new(
        "partition/xnli",
        "XNLI → LDA client pools (Parquet)",
    )));
    r.register(Arc::new(Partition::<FedAyaFile>::new(
        "partition/fedaya",
        "Fed-Aya 38-client file → seen/unseen client pools (Parquet)",
    )));
    r.register(Arc::new(Partition::<AyaTestSetsConfig>::new(
        "partition/aya_test_sets",
        "real Fed-Aya test sets → LDA-over-language client pools (Parquet)",
    )));
}

/// A dataset the partition kinds know how to read.
trait PartitionSource: DeserializeOwned + Send + Sync {
    fn check(&self) -> Result<(), String>;
    /// Files below the data root that the partition reads (their digests enter the key).
    fn files(&self, root: &Path) -> Vec<PathBuf>;
    fn partition(&self, root: &Path, seed: u64) -> datasets::Result<PartitionedDataset>;
}

impl PartitionSource for MasakhaNewsConfig {
    fn check(&self) -> Result<(), String> {
        self.validate().map_err(|e| e.to_string())
    }
    fn files(&self, root: &Path) -> Vec<PathBuf> {
        self.languages
            .iter()
            .flat_map(|l| {
                ["train.tsv", "dev.tsv", "test.tsv", "labels.txt"]
                    .map(|f| root.join("masakhanews").join(l).join(f))
            })
            .filter(|p| p.is_file())
            .collect()
    }
    fn partition(&self, root: &Path, seed: u64) -> datasets::Result<PartitionedDataset> {
        datasets::partition_masakhanews(&root.join("masakhanews"), self, seed)
    }
}

impl PartitionSource for XnliConfig {
    fn check(&self) -> Result<(), String> {
        self.validate().map_err(|e| e.to_string())
    }
    fn files(&self, root: &Path) -> Vec<PathBuf> {
        let dir = root.join("xnli");
        match self.format {
            XnliFormat::PerLanguageTsv => self
                .languages
                .iter()
                .flat_map(|l| {
                    [self.train_from, self.test_from]
                        .map(|s| dir.join(s.as_str()).join(format!("{l}.tsv")))
                })
                .filter(|p| p.is_file())
                .collect(),
            _ => files_below(&dir),
        }
    }
    fn partition(&self, root: &Path, seed: u64) -> datasets::Result<PartitionedDataset> {
        datasets::partition_xnli(&root.join("xnli"), self, seed)
    }
}

/// Fed-Aya's 38-client file: `file` (relative to the data root) plus the dataset's config.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FedAyaFile {
    #[serde(default = "default_aya_file")]
    file: PathBuf,
    #[serde(default)]
    languages: Option<Vec<String>>,
    #[serde(default)]
    unseen_clients: Option<Vec<usize>>,
    #[serde(default)]
    test_fraction: Option<f64>,
    #[serde(default)]
    max_rows_per_client: Option<usize>,
}

fn default_aya_file() -> PathBuf {
    PathBuf::from("fed_aya/aya_38c_25k.json")
}

impl FedAyaFile {
    fn config(&self) -> FedAyaConfig {
        let mut c = FedAyaConfig::default();
        if let Some(l) = &self.languages {
            c.languages = l.clone();
        }
        if let Some(u) = &self.unseen_clients {
            c.unseen_clients = u.clone();
        }
        if let Some(f) = self.test_fraction {
            c.test_fraction = f;
        }
        c.max_rows_per_client = self.max_rows_per_client;
        c
    }
}

impl PartitionSource for FedAyaFile {
    fn check(&self) -> Result<(), String> {
        self.config().validate().map_err(|e| e.to_string())
    }
    fn files(&self, root: &Path) -> Vec<PathBuf> {
        vec![root.join(&self.file)]
    }
    fn partition(&self, root: &Path, seed: u64) -> datasets::Result<PartitionedDataset> {
        datasets::partition_fed_aya(&root.join(&self.file), &self.config(), seed)
    }
}

impl PartitionSource for AyaTestSetsConfig {
    fn check(&self) -> Result<(), String> {
        self.validate().map_err(|e| e.to_string())
    }
    fn files(&self, root: &Path) -> Vec<PathBuf> {
        vec![root.join("fed_aya/aya_test_datasets.json")]
    }
    fn partition(&self, root: &Path, seed: u64) -> datasets::Result<PartitionedDataset> {
        datasets::partition_aya_test_sets(&root.join("fed_aya/aya_test_datasets.json"), self, seed)
    }
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

struct Partition<C> {
    name: &'static str,
    describe: &'static str,
    _config: std::marker::PhantomData<fn() -> C>,
}

impl<C> Partition<C> {
    fn new(name: &'static str, describe: &'static str) -> Self {
        Partition {
            name,
            describe,
            _config: std::marker::PhantomData,
        }
    }
}

impl<C: PartitionSource + 'static> StageKind for Partition<C> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn version(&self) -> u32 {
        1
    }
    fn describe(&self) -> &'static str {
        self.describe
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        let c: C = typed_params(params)?;
        c.check().map_err(|m| ParamError::new(None, m))
    }
    fn external_inputs(&self, plan: &PlanInputs<'_>) -> Result<Vec<PathBuf>, StageError> {
        let Some(root) = plan.data_root else {
            return Err(StageError::msg(format!(
                "kind `{}` reads raw data but no data root is set: add `data_root:` to the manifest, set {} or run `pipeline fetch MANIFEST` (pinned datasets)",
                self.name,
                crate::engine::spec::DATA_ROOT_ENV
            )));
        };
        let c: C = typed_params(plan.params).map_err(|e| StageError(e.message))?;
        let files = c.files(root);
        if files.is_empty() {
            return Err(StageError::msg(format!(
                "no input files for `{}` below the data root {}",
                self.name,
                root.display()
            )));
        }
        Ok(files)
    }
    /// Reads and deals the data as the run will (in memory, nothing written), so unreadable
    /// files and client counts the data cannot fill are refused before anything runs.
    fn check_inputs(&self, params: &Value, data_root: Option<&Path>) -> Result<(), ParamError> {
        // A missing data root is reported with the cache key's external inputs.
        let Some(root) = data_root else {
            return Ok(());
        };
        let c: C = typed_params(params)?;
        match c.partition(root, 0) {
            Ok(_) => Ok(()),
            // Whether the Dirichlet draws leave a client empty depends on the run's seed.
            Err(DatasetError::PartitionImpossible { .. }) => Ok(()),
            Err(e @ DatasetError::MoreClientsThanRows { .. }) => {
                let field = ["clients_per_language", "max_rows_per_client"]
                    .into_iter()
                    .find(|f| params.get(f).is_some());
                Err(ParamError::new(
                    field,
                    format!("the data cannot fill the clients: {e}"),
                ))
            }
            Err(e) => Err(ParamError::new(None, e.to_string())),
        }
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let c: C = ctx.params()?;
        let root = ctx.data_root()?.to_path_buf();
        let seed = ctx.derive_seed(&["lda".into()]);
        let ds = c.partition(&root, seed)?;
        let summary = datasets::write_partition(&ds, ctx.out_dir())?;
        let s = serde_json::to_string(&summary)?;
        ctx.log(&format!("partition summary: {s}"));
        let pools: Vec<PoolSizes> = ds
            .pools
            .iter()
            .map(|pool| PoolSizes {
                pool: pool.name.as_str().to_string(),
                sizes: pool.clients.iter().map(|c| c.train.len()).collect(),
            })
            .collect();
        let title = format!("{}: client sizes", self.name);
        plot_client_sizes(&title, &pools, ctx.out_dir(), "client_sizes")
            .map_err(|e| StageError::msg(format!("drawing the client-size histogram: {e}")))?;
        Ok(())
    }
}
