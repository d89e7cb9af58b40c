//! Error type of the pipeline library. The binary turns it into one message and an exit code:
//! 2 for bad input (manifest, CLI, data the user pointed at), 1 for failed stages or I/O.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A manifest problem, located at `file:line` where the line is known.
    #[error("{}: {message}", location(file, *line))]
    Manifest {
        file: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("{0}")]
    Usage(String),
    /// The I/O error is shown in the message, not chained as a source, so `{:#}` does not
    /// print it twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("workdir {workdir} is locked by pid {pid} on host {host} (started {since}); if that run is gone, remove {lock}")]
    Locked {
        workdir: PathBuf,
        pid: u32,
        host: String,
        since: String,
        lock: PathBuf,
    },
    #[error("{failed} stage instance(s) failed")]
    StagesFailed { failed: usize },
    #[error("{0}")]
    Other(String),
}

fn location(file: &std::path::Path, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{}", file.display(), l),
        None => file.display().to_string(),
    }
}

impl PipelineError {
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        PipelineError::Io {
            path: path.into(),
            error,
        }
    }

    /// Exit code for the binary: 2 = the user's input is wrong, 1 = the run failed.
    pub fn exit_code(&self) -> i32 {
        match self {
            PipelineError::Manifest { .. } | PipelineError::Usage(_) => 2,
            _ => 1,
        }
    }
}

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// Extension to attach a path to `std::io::Error`s.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| PipelineError::io(path, e))
    }
}

/// A failure while a stage runs. Library errors are kept as their display text (they already
/// name the file, record or client involved).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StageError(pub String);

impl StageError {
    pub fn msg(m: impl Into<String>) -> Self {
        StageError(m.into())
    }
}

macro_rules! stage_error_from {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for StageError {
            fn from(e: $t) -> Self { StageError(e.to_string()) }
        }
    )*};
}
stage_error_from!(
    std::io::Error,
    serde_json::Error,
    PipelineError,
    datasets::DatasetError,
);
