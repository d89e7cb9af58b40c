//! Pure compute for the FedP2EFT pipeline: models, PEFT adapters, optimisers, federated
//! learning, the PS generator, personalization and metrics.
//!
//! This crate knows nothing of caching, manifests or artifact paths: every function takes its
//! inputs (tensors, examples, seeds, directories chosen by the caller) and returns values.
//! Every random draw takes a seed derived with [`rng::derive_seed`].

pub mod client_state;
pub mod cpu_threads;
pub mod fedl2p;
/// The device type of every tensor, for callers that only pass devices through.
pub use candle_core::Device;
pub mod fit;
pub mod fl;
pub mod generate;
pub mod import;
pub mod methods;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod optim;
pub mod params;
pub mod peft;
pub mod predict;
pub mod psg;
pub mod rng;
pub mod runs;
pub mod second_order;
pub mod task;
pub mod tokenize;
