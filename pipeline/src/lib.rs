//! The `pipeline` library: manifest, DAG, content-addressed cache, artifact store, executor and
//! the commands of the `pipeline` binary. It does no tensor math: stage kinds call into the
//! `stages` and `datasets` crates.

pub mod bench;
pub mod commands;
pub mod context;
pub mod dag;
pub mod error;
pub mod executor;
pub mod export;
pub mod export_cost;
pub mod key;
pub mod kinds;
pub mod lock;
pub mod manifest;
pub mod matrix;
pub mod plan;
pub mod progress;
pub mod registry;
pub mod report;
pub mod store;
pub mod timefmt;
pub mod tools;

pub use error::{PipelineError, Result};
