//! Simulated cross-device federated learning (PAPER_NOTES §2): per-round client sampling,
//! sample-count-weighted FedAvg, and the round loop the base-model and PSG stages drive.

pub mod aggregate;
pub mod sampling;

pub use aggregate::{FedAvg, FlError};
pub use sampling::sample_clients;
