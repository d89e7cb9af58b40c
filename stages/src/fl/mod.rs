//! Simulated cross-device federated learning (PAPER_NOTES §2): per-round client sampling,
//! sample-count-weighted FedAvg, the round loop the base-model and PSG stages drive, its clients
//! (Standard FL, DEPT, FedDPA-T, FedP2EFT's PSG, FedL2P), and the base-model runs (`standard`).

pub mod aggregate;
pub mod engine;
pub mod fedavg_client;
pub mod feddpa_client;
pub mod fedl2p_client;
pub mod meta_client;
pub mod psg_client;
pub mod sampling;
pub mod standard;

pub use aggregate::{FedAvg, FlError};
pub use engine::{
    rounds_csv, run_rounds, ClientRound, ClientUpdate, EngineConfig, EngineError, EngineState,
    LocalTrainer, RoundMetrics, Weights,
};
pub use fedavg_client::FedAvgClient;
pub use sampling::sample_clients;
