//! The generic engine: manifest (parse, validate), matrix fan-out, the stage DAG, the plan of
//! instances and their cache keys, the content-addressed store, the workdir lock, what a stage
//! sees while it runs, the stage-kind registry and the executor. It knows no stage kind and no
//! report: kinds plug in through [`registry::StageKind`].

pub mod backend;
pub mod checkpoint;
pub mod context;
pub mod dag;
pub mod error;
pub mod exec_instance;
pub mod executor;
pub mod instance;
pub mod interrupt;
pub mod key;
pub mod kind_params;
pub mod lock;
pub mod manifest;
pub mod matrix;
pub mod plan;
pub mod preflight;
pub mod progress;
pub mod registry;
pub mod repair;
pub mod resources;
pub mod run_options;
pub mod slurm;
pub mod spec;
pub mod store;
pub mod timefmt;
pub mod yaml_keys;
