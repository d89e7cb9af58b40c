//! Fetching a manifest's inputs, pinned and verified: Hugging Face models by revision into the
//! standard Hub cache (`hub`, `hub_cache`, `model`), pinned dataset files into our cache
//! (`pins`, `dataset`), both through `fetcher` (mirror first, then HTTP with resume in `http`,
//! digests in `digest`), and the manifest's lock file (`lockfile`). `mirror` reads and writes
//! offline mirrors; `config` reads the environment.

pub mod config;
pub mod dataset;
pub mod digest;
pub mod error;
pub mod fetcher;
pub mod http;
pub mod hub;
pub mod hub_cache;
pub mod lockfile;
pub mod mirror;
pub mod model;
pub mod pins;
pub mod progress;

pub use config::FetchConfig;
pub use error::FetchError;
pub use fetcher::Fetcher;
pub use lockfile::{lock_path, LockFile, LockedInput};
