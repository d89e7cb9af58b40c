//! The seed of shuffling and dropout in a client's fine-tune. Every fine-tune of the reference
//! runs through an HF `Trainer`, whose `__init__` calls `set_seed(args.seed)` with the
//! `TrainingArguments` default 42, which the reference never changes (transformers 4.44.2
//! `trainer.py` 404, `training_args.py` 1022). So a client's data order and dropout masks are the
//! same for every run seed: the run seed reaches a personalization only through the adapters'
//! initial A and the upstream federated stages — which is why many of the paper's SDs are 0.00.
//! The kinds that fine-tune one client take it as the parameter `trainer_seed` (default 42).

use stages::rng::derive_seed;

/// The reference's `TrainingArguments.seed`.
pub const REFERENCE_TRAINER_SEED: u64 = 42;

pub fn default_trainer_seed() -> u64 {
    REFERENCE_TRAINER_SEED
}

/// The shuffling/dropout seed of `client`'s fine-tune in stage kind `kind`, independent of the
/// run seed.
pub fn client_train_seed(trainer_seed: u64, kind: &str, client: u32) -> u64 {
    derive_seed(
        trainer_seed,
        &[kind.into(), "client".into(), u64::from(client).into()],
    )
}
