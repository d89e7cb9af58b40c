//! The one error type of the metrics module: bad inputs (mismatched lengths, a missing or
//! malformed WordNet) get a message that names the file, line or field at fault.

use std::path::PathBuf;

use super::Metric;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{what}: {left} {left_name} but {right} {right_name}")]
    LengthMismatch {
        what: &'static str,
        left_name: &'static str,
        left: usize,
        right_name: &'static str,
        right: usize,
    },
    #[error(
        "METEOR needs WordNet 3.0: load it once with Wordnet::load and pass it in \
         ScoreOptions::wordnet"
    )]
    WordnetNotGiven,
    #[error(
        "WordNet dir {dir}: missing file {file} (install WordNet 3.0 with \
         scripts/install-wordnet.sh, or point FEDP2EFT_WORDNET at a WordNet dict dir)"
    )]
    WordnetFileMissing { dir: PathBuf, file: &'static str },
    #[error("WordNet file {path}: {source}")]
    WordnetIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("WordNet file {path}, {location}: {message}")]
    WordnetFormat {
        path: PathBuf,
        location: String,
        message: String,
    },
    #[error("tokenizer rule {pattern:?} failed on a text of {chars} characters: {message}")]
    Tokenizer {
        pattern: &'static str,
        chars: usize,
        message: String,
    },
    #[error("metric {0} was not scored: request it in the metrics list")]
    MetricNotScored(Metric),
    #[error("unknown metric {0:?} (expected rouge1, rougeL or meteor)")]
    UnknownMetric(String),
}
