//! The crate's error type. Every variant that comes from user input names the file and,
//! where one exists, the record (1-based, header excluded) so a user can find the bad line.

use std::path::PathBuf;

/// Errors from reading, partitioning and writing datasets.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `expected` names the format, so a JSON file is not reported in TSV terms.
    #[error("{path}: file is empty (expected {expected})")]
    EmptyFile {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{path}: missing column `{column}` in the header (found: {found})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        found: String,
    },
    #[error("{path}: record {record} (line {line}): {message}")]
    BadRecord {
        path: PathBuf,
        record: u64,
        line: u64,
        message: String,
    },
    #[error("{path}: record {record} (line {line}): unknown label `{label}` (known: {known})")]
    UnknownLabel {
        path: PathBuf,
        record: u64,
        line: u64,
        label: String,
        known: String,
    },
    #[error("{path}: invalid JSON: {message}")]
    BadJson { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{path}: not a pool file written by this crate: {message}")]
    NotAPoolFile { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(
        "{unit}: cannot split {rows} {split} rows among {clients} clients (more clients than rows)"
    )]
    MoreClientsThanRows {
        unit: String,
        split: &'static str,
        rows: usize,
        clients: usize,
    },
    #[error("{unit}: {needed} rows needed but only {available} available in {source_desc}")]
    NotEnoughRows {
        unit: String,
        needed: usize,
        available: usize,
        source_desc: String,
    },
    #[error("LDA partition of {unit} left a client without train rows after {attempts} draws of the Dirichlet matrix; raise alpha or lower the client count")]
    PartitionImpossible { unit: String, attempts: u32 },
    #[error("client {client_id} is not in pool file {path}")]
    UnknownClient { path: PathBuf, client_id: u32 },
}

pub type Result<T, E = DatasetError> = std::result::Result<T, E>;

impl DatasetError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DatasetError::Io {
            path: path.into(),
            source,
        }
    }
}
