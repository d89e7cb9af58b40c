//! The commands of the `pipeline` binary besides `run`: status, explain, dag, verify, clean
//! (`commands`), export of tables and costs, the tools (`score`, `predict`, `import-model`) and
//! the executor benchmark. `main.rs` parses the command line and calls these.

pub mod bench;
pub mod commands;
pub mod export;
pub mod export_cost;
pub mod tools;
