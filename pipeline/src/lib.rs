//! Manifest, DAG, content-addressed cache, executor and CLI.

pub mod report;
