//! Dataset readers, LDA partitioning and Parquet I/O for the FedP2EFT pipeline.
//!
//! What it does: read MasakhaNEWS, XNLI and Fed-Aya from their real on-disk formats
//! ([`readers`]), form the paper's seen/unseen client pools with a seeded LDA partition
//! ([`partition`], [`lda`]), write them as plain Parquet plus a JSON summary and a CSV of
//! client sizes ([`write_partition`]), and read one client at a time back for the compute
//! stages ([`PoolReader`]).
//!
//! What it does not do: resolve paths (the caller passes the dataset directory or file),
//! cache, tokenize, or log. Every random draw derives from the seed the caller passes.
//!
//! ```no_run
//! use datasets::{partition_xnli, write_partition, PoolReader, Split, XnliConfig};
//! # fn main() -> Result<(), datasets::DatasetError> {
//! let ds = partition_xnli("data/xnli".as_ref(), &XnliConfig::default(), 42)?;
//! let summary = write_partition(&ds, "out/xnli".as_ref())?;
//! let pool = PoolReader::open("out/xnli/seen.parquet")?;
//! let first = &pool.clients()[0];
//! let train = pool.load_client(first.client_id, Split::Train)?;
//! # Ok(()) }
//! ```

pub mod config;
pub mod error;
pub mod example;
pub mod lda;
pub mod partition;
pub mod pool_reader;
pub mod pool_schema;
pub mod pool_writer;
pub mod readers;
pub mod rng;
pub mod summary;

pub use config::{
    AyaTestSetsConfig, DealingRule, FedAyaConfig, LdaParams, MasakhaNewsConfig, MatrixSharing,
    XnliConfig, XnliFormat, XnliSplit,
};
pub use error::{DatasetError, Result};
pub use example::{Client, Example, PartitionedDataset, Pool, PoolName, Split, TaskKind, TaskSpec};
pub use partition::{
    partition_aya_test_sets, partition_fed_aya, partition_masakhanews, partition_xnli,
};
pub use pool_reader::{ClientInfo, PoolReader};
pub use pool_writer::write_partition;
pub use summary::{ClientSummary, PartitionSummary, PoolSummary};
