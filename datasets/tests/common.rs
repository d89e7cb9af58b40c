//! Helpers shared by the integration tests: fixture paths and small partition configs.

#![allow(dead_code)]

use std::path::PathBuf;

use datasets::{MasakhaNewsConfig, XnliConfig};

/// `tests/fixtures/data` at the workspace root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data")
}

pub fn small_masakha() -> MasakhaNewsConfig {
    serde_json::from_value(serde_json::json!({
        "languages": ["eng", "lin"],
        "clients_per_language": 3,
    }))
    .unwrap()
}

pub fn small_xnli() -> XnliConfig {
    serde_json::from_value(serde_json::json!({
        "languages": ["en", "de", "zh"],
        "clients_per_language": 4,
        "train_rows_per_pool": 40,
        "test_rows_per_pool": 12,
    }))
    .unwrap()
}
