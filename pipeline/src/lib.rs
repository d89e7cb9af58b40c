//! The `pipeline` library: the generic engine (manifest, DAG, content-addressed cache, artifact
//! store, executor), the stage kinds of the paper, the report (tables and plots) and the
//! commands of the `pipeline` binary. It does no tensor math: stage kinds call into the `stages`
//! and `datasets` crates.

pub mod cli;
pub mod engine;
pub mod fetch;
pub mod kinds;
pub mod report;

pub use engine::error::{PipelineError, Result};
