//! End-to-end tests of the `pipeline` binary: caching, invalidation, resumption after
//! `kill -9`, verification, and manifest errors.

mod base_models;
mod executor;
mod fedl2p;
mod integrity;
mod manifest_errors;
mod personalize;
mod preflight;
mod psg;
mod slurm;
mod tools;
mod util;
