//! Errors of the report module: each names the file, record or field at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: polars::error::PolarsError,
    },
    #[error("{path}: unsupported file type (expected .csv or .parquet)")]
    UnsupportedFormat { path: PathBuf },
    #[error("{path}: missing column `{column}` (found: {found})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        found: String,
    },
    #[error("{path}: row {row}, column `{column}`: {message}")]
    BadValue {
        path: PathBuf,
        /// 1-based data row (the header is not counted).
        row: usize,
        column: String,
        message: String,
    },
    #[error("invalid {what}: {message}")]
    Invalid { what: String, message: String },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: polars::error::PolarsError,
    },
    #[error("cannot draw {path}: {message}")]
    Plot { path: PathBuf, message: String },
}

impl ReportError {
    pub(crate) fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        ReportError::Invalid {
            what: what.into(),
            message: message.into(),
        }
    }
}
