//! Seed derivation: every random draw in the project comes from a seed derived from
//! (manifest seed, stage, round, client, purpose), so runs are reproducible bit for bit.
//!
//! The derivation itself lives in the lowest crate (`datasets::rng`) so that partitioning and
//! compute share one definition.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use datasets::rng::{derive_seed, SeedPart};

/// The project's random generator: ChaCha8 is portable and fully specified, so the same seed
/// gives the same stream on every platform and crate version pinned in Cargo.lock.
pub fn rng_from(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}
