//! End-to-end tests of the `pipeline` binary: caching, invalidation, resumption after
//! `kill -9`, verification, and manifest errors.

mod base_models;
mod executor;
mod fedl2p;
mod fetch_inputs;
mod integrity;
mod manifest_errors;
mod personalize;
mod preflight;
mod psg;
#[path = "../fetch/server.rs"]
#[allow(dead_code)] // the loopback Hub of tests/fetch; these tests need only part of it
mod server;
mod slurm;
mod tools;
mod util;
