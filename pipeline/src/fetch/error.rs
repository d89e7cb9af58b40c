//! The one error every fetch path returns: which input, which URL or path, what went wrong.

use std::fmt;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// The manifest input, e.g. `model google-bert/bert-base-multilingual-cased@main`.
    pub input: String,
    /// The URL (or local path) the failure is about.
    pub location: String,
    pub message: String,
}

impl FetchError {
    pub fn new(input: &str, location: impl Into<String>, message: impl Into<String>) -> Self {
        FetchError {
            input: input.to_string(),
            location: location.into(),
            message: message.into(),
        }
    }

    /// An I/O failure on a cache or mirror path (read-only or full disk, missing directory).
    pub fn io(input: &str, path: &Path, what: &str, e: &std::io::Error) -> Self {
        Self::new(input, path.display().to_string(), format!("{what}: {e}"))
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.input, self.location, self.message)
    }
}

impl std::error::Error for FetchError {}
