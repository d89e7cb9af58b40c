//! File names of the artifacts one kind writes and another reads, in one place so producer and
//! consumer cannot drift apart (ARCHITECTURE.md describes each file's content).

/// `base/*`: the model in HF layout.
pub const MODEL_DIR: &str = "model";
/// `base/*`: per-client private parameters (`<client id>.safetensors`).
pub const CLIENT_STATE_DIR: &str = "client_state";
/// `base/*` (generation): the prompt template the model was trained with, inside [`MODEL_DIR`].
pub const TASK_FILE: &str = "task.json";
/// Federated kinds: per-round metrics.
pub const ROUNDS_FILE: &str = "rounds.csv";

/// `psg/fedp2eft`: the PS generator's folder (`model.safetensors` + `config.json`).
pub const PSG_DIR: &str = "psg";
/// `psg/fedl2p`: the LR network's folder (`model.safetensors` + `config.json`).
pub const LR_NET_DIR: &str = "lr_net";
/// Weights inside [`PSG_DIR`] / [`LR_NET_DIR`].
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Settings inside [`PSG_DIR`] / [`LR_NET_DIR`].
pub const CONFIG_FILE: &str = "config.json";
/// `lambda/bayestune`: raw λ per module.
pub const LAMBDA_FILE: &str = "lambda.safetensors";
/// `lambda/bayestune`: the adapter record of its Stage 1.
pub const STAGE1_FILE: &str = "stage1.json";

/// `personalize` (classification): accuracy counts under the run key (the report reads it).
pub const RESULT_FILE: &str = "result.csv";
/// `personalize` (classification): label and prediction per test example.
pub const PREDICTIONS_FILE: &str = "predictions.csv";
/// `personalize` (generation): per test example the run key, the example's language, the
/// greedy generation and the reference response (read by `score`).
pub const GENERATIONS_FILE: &str = "generations.csv";
/// `personalize`: kept rank per module.
pub const RANKS_FILE: &str = "ranks.csv";
/// `personalize` (BayesTune methods): the λ ranks were selected from.
pub const LAMBDAS_FILE: &str = "lambdas.csv";
/// `personalize`: the seeds the run used (`init_seed` of A, `train_seed`).
pub const RUN_FILE: &str = "run.json";
/// `personalize`: the total loss of every optimiser step of the fine-tune.
pub const CURVE_FILE: &str = "curve.csv";
/// `personalize`: ‖ΔW‖_F of every adapted module once its adapter is merged.
pub const UPDATES_FILE: &str = "updates.csv";
/// `psg/fedp2eft`: per round, the PSG's λ against the Stage-1 λ learned from it.
pub const DIAGNOSTICS_FILE: &str = "diagnostics.csv";
/// `personalize` (FedL2P): learning rate per LoRA matrix.
pub const LRS_FILE: &str = "lrs.csv";

/// `score`: per-sample generation scores (the report's generation schema).
pub const SCORES_FILE: &str = "scores.csv";
/// `report`: the tables and plots.
pub const TABLES_DIR: &str = "tables";
