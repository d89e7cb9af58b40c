//! `base/*` stage kinds (PAPER_NOTES §2): the base model every personalization method starts
//! from. `base/fedavg` runs Standard FL on the seen pool of the upstream partition — full
//! fine-tuning of a BERT classifier, or a LoRA (r 16, α 32, merged at the end) on a LLaMA for
//! generation datasets; `base/pretrained` is the model off the shelf. Both write `model/` in HF
//! layout (config.json, model.safetensors, tokenizer.json; generation models add `task.json`
//! with their prompt template); FedAvg also writes `rounds.csv`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datasets::{PoolReader, Split, TaskKind};
use serde::Deserialize;
use serde_json::Value;
use stages::fit::{LocalSgdConfig, RoundLr};
use stages::fl::fedavg_client::ShardLoader;
use stages::fl::feddpa_client::DpaConfig;
use stages::fl::standard::{save_client_states, train_fedavg, train_feddpa, FedAvgRun, FedLora};
use stages::fl::{rounds_csv, EngineConfig, EngineState};
use stages::peft::lora::TargetModules;
use stages::task::{
    build_task_model, copy_model_dir, device_from_name, save_task_model, ModelSource, TaskModel,
};
use stages::tokenize::PromptTemplate;

use super::task::{write_task_file, TaskOptions};

use crate::engine::context::StageContext;
use crate::engine::registry::{
    typed_params, ParamError, PlanInputs, Registry, StageError, StageKind,
};

pub fn register(r: &mut Registry) {
    r.register(Arc::new(FedAvgKind {
        name: "base/fedavg",
        describe: "Standard FL (FedAvg) on the seen pool: BERT full fine-tuning, LLaMA LoRA",
        keep_local: None,
    }));
    r.register(Arc::new(FedAvgKind {
        name: "base/dept_spec",
        describe: "DEPT(SPEC): FedAvg with per-client embeddings (`*_embeddings*` stay local)",
        keep_local: Some(is_dept_local),
    }));
    r.register(Arc::new(PretrainedKind));
    r.register(Arc::new(FedDpaKind));
}

// Paper defaults (PAPER_NOTES §2, App. A.3). BERT: 100 rounds, 10% of clients, lr 5e-5, AdamW
// wd 0, 2 local epochs. LLaMA: 200 rounds, lr 2e-5 → 1e-6 cosine over rounds, 10 local steps of
// 4 × 4, LoRA r 16 α 32 dropout 0.05 on all linears [code]. Batch and lengths: `kinds::task`.
fn default_fraction() -> f64 {
    0.1
}
fn default_min_clients() -> usize {
    1
}
fn default_epochs() -> usize {
    2
}
fn default_prompt() -> PromptTemplate {
    PromptTemplate::Alpaca
}

/// The LoRA a base model is federated with; `targets` = last module-name components
/// (e.g. `[q_proj, v_proj]`), all linears when absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoraParams {
    #[serde(default = "lora_rank")]
    rank: usize,
    #[serde(default = "lora_alpha")]
    alpha: f64,
    #[serde(default = "lora_dropout")]
    dropout: f32,
    #[serde(default)]
    targets: Option<Vec<String>>,
}
fn lora_rank() -> usize {
    16
}
fn lora_alpha() -> f64 {
    32.0
}
fn lora_dropout() -> f32 {
    0.05
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FedAvgParams {
    model: ModelSource,
    #[serde(default)]
    rounds: Option<u64>,
    #[serde(default = "default_fraction")]
    fraction: f64,
    #[serde(default = "default_min_clients")]
    min_clients: usize,
    #[serde(default)]
    lr: Option<f64>,
    /// Cosine decay of the round lr to this value (generation default 1e-6); constant if absent
    /// for classification.
    #[serde(default)]
    min_lr: Option<f64>,
    #[serde(default)]
    weight_decay: f64,
    #[serde(default = "default_epochs")]
    local_epochs: usize,
    /// Fixed local steps per round instead of epochs (generation default 10).
    #[serde(default)]
    local_steps: Option<usize>,
    /// Federate a LoRA instead of every weight (generation default: the paper's LoRA).
    #[serde(default)]
    lora: Option<LoraParams>,
    /// Parameters kept at their pretrained values (names containing any of these), e.g.
    /// `[word_embeddings]`: a compute saving for large vocabularies, not the paper's setting
    /// (full fine-tuning); frozen weights are neither trained nor averaged.
    #[serde(default)]
    frozen: Vec<String>,
    #[serde(default = "default_prompt")]
    prompt: PromptTemplate,
    #[serde(flatten)]
    task: TaskOptions,
    /// Accuracy of the global model on the seen clients' test splits every k rounds (and after
    /// the last), in `rounds.csv`'s `eval` column; off by default (classification only).
    #[serde(default)]
    eval_every: Option<u64>,
}

impl FedAvgParams {
    fn rounds(&self, kind: TaskKind) -> u64 {
        self.rounds.unwrap_or(match kind {
            TaskKind::Classification => 100,
            TaskKind::Generation => 200,
        })
    }

    fn lr(&self, kind: TaskKind) -> f64 {
        self.lr.unwrap_or(match kind {
            TaskKind::Classification => 5e-5,
            TaskKind::Generation => 2e-5,
        })
    }

    fn lora(&self, kind: TaskKind, seed: u64) -> Option<FedLora> {
        let p = match (&self.lora, kind) {
            (Some(p), _) => p.clone(),
            (None, TaskKind::Generation) => LoraParams {
                rank: lora_rank(),
                alpha: lora_alpha(),
                dropout: lora_dropout(),
                targets: None,
            },
            (None, TaskKind::Classification) => return None,
        };
        Some(FedLora {
            rank: p.rank,
            alpha: p.alpha,
            dropout: p.dropout,
            targets: match p.targets {
                Some(t) => TargetModules::Names(t),
                None => TargetModules::AllLinear,
            },
            seed,
        })
    }

    fn sgd(&self, kind: TaskKind) -> LocalSgdConfig {
        let (min_lr, steps) = match kind {
            TaskKind::Classification => (self.min_lr, self.local_steps),
            TaskKind::Generation => (
                Some(self.min_lr.unwrap_or(1e-6)),
                Some(self.local_steps.unwrap_or(10)),
            ),
        };
        LocalSgdConfig {
            accumulate: self.task.accumulate(kind),
            max_steps: steps,
            round_lr: match min_lr {
                Some(min_lr) => RoundLr::Cosine {
                    rounds: self.rounds(kind),
                    min_lr,
                },
                None => RoundLr::Constant,
            },
            ..LocalSgdConfig::epochs(
                self.lr(kind),
                self.weight_decay,
                self.local_epochs,
                self.task.batch_size(kind),
            )
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PretrainedParams {
    model: ModelSource,
    #[serde(default = "default_prompt")]
    prompt: PromptTemplate,
    #[serde(flatten)]
    task: TaskOptions,
}

fn check_model(m: &ModelSource, task: &TaskOptions) -> Result<(), ParamError> {
    super::model_dir::check_source(m)?;
    task.check()
}

/// The seen pool of the single upstream partition.
fn seen_pool(ctx: &StageContext) -> Result<PoolReader, StageError> {
    let part = ctx.single_input_of_kind("partition/")?;
    Ok(PoolReader::open(part.dir.join("seen.parquet"))?)
}

/// Every seen client's training texts (text_a, and text_b when present), for the tiny
/// tokenizer.
fn train_texts(pool: &PoolReader) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for c in pool.clients() {
        for e in pool
            .load_client(c.client_id, Split::Train)
            .map_err(|e| e.to_string())?
        {
            out.push(e.text_a);
            out.extend(e.text_b);
        }
    }
    Ok(out)
}

/// DEPT(SPEC) and FedDPA-T are defined for the classification setups only (PAPER_NOTES §2).
fn require_classification(ctx: &StageContext, kind: &str) -> Result<(), StageError> {
    let pool = seen_pool(ctx)?;
    if pool.task().kind != TaskKind::Classification {
        return Err(StageError::msg(format!(
            "{kind} is defined for classification datasets; `{}` is a generation dataset",
            pool.task().dataset
        )));
    }
    Ok(())
}

/// DEPT(SPEC) keeps every parameter whose name contains `_embeddings` (word, position,
/// token type) on the client [code] (PAPER_NOTES §2).
fn is_dept_local(name: &str) -> bool {
    name.contains("_embeddings")
}

/// Full fine-tuning with FedAvg; with `keep_local`, the matching parameters stay per client
/// and are written to `client_state/<client id>.safetensors` (only those tensors), while
/// `model/` holds the global weights with the starting values of the local ones.
struct FedAvgKind {
    name: &'static str,
    describe: &'static str,
    keep_local: Option<fn(&str) -> bool>,
}
impl StageKind for FedAvgKind {
    fn name(&self) -> &'static str {
        self.name
    }
    fn version(&self) -> u32 {
        // 3: every client's local training clips the gradient norm at 1.0 (HF Trainer default).
        3
    }
    fn default_resources(&self) -> crate::engine::resources::Resources {
        // Model training across rounds: the longest kinds.
        crate::engine::resources::Resources::new(4, "16G", "2-00:00:00")
    }
    fn describe(&self) -> &'static str {
        self.describe
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        let p: FedAvgParams = typed_params(params)?;
        check_model(&p.model, &p.task)?;
        if p.rounds == Some(0) || p.local_steps == Some(0) {
            return Err(ParamError::new(
                Some("rounds"),
                "`rounds` and `local_steps` must be ≥ 1",
            ));
        }
        if !(p.fraction > 0.0 && p.fraction <= 1.0) {
            return Err(ParamError::new(
                Some("fraction"),
                "`fraction` must be in (0, 1]",
            ));
        }
        if p.local_epochs == 0 {
            return Err(ParamError::new(
                Some("local_epochs"),
                "`local_epochs` must be ≥ 1",
            ));
        }
        let positive = |v: Option<f64>| v.is_none_or(|v| v > 0.0 && v.is_finite());
        if !positive(p.lr) || !positive(p.min_lr) || p.weight_decay < 0.0 {
            return Err(ParamError::new(
                Some("lr"),
                "`lr` and `min_lr` must be positive and `weight_decay` ≥ 0",
            ));
        }
        if let Some(l) = &p.lora {
            if l.rank == 0 || l.alpha.is_nan() || l.alpha <= 0.0 || !(0.0..1.0).contains(&l.dropout)
            {
                return Err(ParamError::new(
                    Some("lora"),
                    "`lora.rank` must be ≥ 1, `lora.alpha` > 0 and `lora.dropout` in [0, 1)",
                ));
            }
        }
        Ok(())
    }
    fn external_inputs(&self, plan: &PlanInputs<'_>) -> Result<Vec<PathBuf>, StageError> {
        let p: FedAvgParams = typed_params(plan.params).map_err(|e| StageError(e.message))?;
        super::model_dir::files(&p.model)
    }
    fn check_inputs(&self, params: &Value, _: Option<&Path>) -> Result<(), ParamError> {
        super::model_dir::check(&typed_params::<FedAvgParams>(params)?.model)
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: FedAvgParams = ctx.params()?;
        let keep_local = self.keep_local;
        if keep_local.is_some() {
            require_classification(ctx, self.name)?;
        }
        run_federated(
            ctx,
            &p,
            keep_local.is_some(),
            |model, clients, load, run, resume, after| {
                let keep = keep_local
                    .map(|f| -> stages::fl::fedavg_client::LocalPredicate { Box::new(f) });
                train_fedavg(model, clients, load, run, keep, resume, after).map_err(err)
            },
        )
    }
}

/// FedDPA-T: `model/` = pretrained + merged global adapter + shared classifier;
/// `client_state/<client id>.safetensors` = that client's local q/v adapter (PEFT names), to be
/// applied on top (the paper's personalization base, PAPER_NOTES §2).
struct FedDpaKind;
impl StageKind for FedDpaKind {
    fn name(&self) -> &'static str {
        "base/feddpa_t"
    }
    fn version(&self) -> u32 {
        // 3: every client's local training clips the gradient norm at 1.0 (HF Trainer default).
        3
    }
    fn default_resources(&self) -> crate::engine::resources::Resources {
        // Model training across rounds: the longest kinds.
        crate::engine::resources::Resources::new(4, "16G", "2-00:00:00")
    }
    fn describe(&self) -> &'static str {
        "FedDPA-T: global + per-client local LoRA (r8 α8, q,v) on a BERT classifier"
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        FedAvgKind {
            name: "base/feddpa_t",
            describe: "",
            keep_local: None,
        }
        .validate(params)
    }
    fn external_inputs(&self, plan: &PlanInputs<'_>) -> Result<Vec<PathBuf>, StageError> {
        let p: FedAvgParams = typed_params(plan.params).map_err(|e| StageError(e.message))?;
        super::model_dir::files(&p.model)
    }
    fn check_inputs(&self, params: &Value, _: Option<&Path>) -> Result<(), ParamError> {
        super::model_dir::check(&typed_params::<FedAvgParams>(params)?.model)
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: FedAvgParams = ctx.params()?;
        require_classification(ctx, "base/feddpa_t")?;
        let adapter_seed = ctx.derive_seed(&["lora".into()]);
        run_federated(ctx, &p, true, |model, clients, load, run, resume, after| {
            train_feddpa(
                model,
                clients,
                load,
                run,
                &DpaConfig::paper(),
                adapter_seed,
                resume,
                after,
            )
            .map_err(err)
        })
    }
}

/// What the federated base kinds share: build the model and client list, stream seen-pool
/// shards, checkpoint after every round, then save `model/`, the clients' private state (when the
/// method keeps any) and `rounds.csv`.
fn run_federated(
    ctx: &mut StageContext,
    p: &FedAvgParams,
    save_client_state: bool,
    train: impl FnOnce(
        &mut TaskModel,
        &[u32],
        ShardLoader<'_>,
        &FedAvgRun,
        Option<EngineState>,
        &mut dyn FnMut(&EngineState) -> Result<(), String>,
    ) -> Result<EngineState, StageError>,
) -> Result<(), StageError> {
    let pool = seen_pool(ctx)?;
    let kind = pool.task().kind;
    let (mut model, clients, run, resume) = prepare(ctx, p, &pool)?;
    let rounds = run.engine.rounds;
    let bar = ctx.progress(rounds, "rounds").clone();
    bar.set(resume.as_ref().map_or(0, |s| s.round));
    let pool_ref = &pool;
    let load: ShardLoader<'_> = Box::new(move |c: u32| {
        pool_ref
            .load_client(c, Split::Train)
            .map_err(|e| e.to_string())
    });
    let ctx_ref = &*ctx;
    let mut after_round = |s: &EngineState| -> Result<(), String> {
        let bytes = s.to_bytes().map_err(|e| e.to_string())?;
        ctx_ref.checkpoint(&bytes).map_err(|e| e.0)?;
        bar.set(s.round);
        Ok(())
    };
    let state = train(&mut model, &clients, load, &run, resume, &mut after_round)?;
    let model_dir = ctx.out_dir().join("model");
    save_task_model(&model, &model_dir).map_err(err)?;
    if kind == TaskKind::Generation {
        write_task_file(&model_dir, p.prompt)?;
    }
    if save_client_state {
        save_client_states(
            &state.persistent,
            model.store(),
            &ctx.out_dir().join("client_state"),
        )
        .map_err(err)?;
    }
    std::fs::write(ctx.out_dir().join("rounds.csv"), rounds_csv(&state.metrics))?;
    if let Some(last) = state.metrics.last() {
        ctx.log(&format!(
            "{} rounds; last round: clients {:?}, mean train loss {}",
            state.round, last.clients, last.mean_train_loss
        ));
    }
    Ok(())
}

/// Model, seen clients, round settings and any checkpoint for a federated base stage.
fn prepare(
    ctx: &mut StageContext,
    p: &FedAvgParams,
    pool: &PoolReader,
) -> Result<(TaskModel, Vec<u32>, FedAvgRun, Option<EngineState>), StageError> {
    let device = device_from_name(ctx.device()).map_err(err)?;
    let kind = pool.task().kind;
    let setup = p.task.setup(pool, p.prompt);
    let head_seed = ctx.shared_seed(&["classifier".into()]);
    let source = super::model_dir::local(&p.model)?;
    let mut model =
        build_task_model(&source, &setup, head_seed, || train_texts(pool), &device).map_err(err)?;
    if let Some(f) = p
        .frozen
        .iter()
        .find(|f| !model.store().names().any(|n| n.contains(f.as_str())))
    {
        return Err(StageError::msg(format!(
            "`frozen`: no parameter of the model has `{f}` in its name"
        )));
    }
    if !p.frozen.is_empty() {
        model
            .store_mut()
            .set_trainable(|n| !p.frozen.iter().any(|f| n.contains(f.as_str())))
            .map_err(err)?;
    }
    if kind == TaskKind::Generation && p.eval_every.is_some() {
        return Err(StageError::msg(
            "`eval_every` measures accuracy: only for classification datasets",
        ));
    }
    let run = FedAvgRun {
        engine: EngineConfig {
            rounds: p.rounds(kind),
            fraction: p.fraction,
            min_clients: p.min_clients,
            eval_every: p.eval_every,
            seed: ctx.shared_seed(&["fl".into()]),
        },
        sgd: p.sgd(kind),
        eval_examples: match p.eval_every {
            Some(_) => {
                let mut all = Vec::new();
                for c in pool.clients() {
                    all.extend(pool.load_client(c.client_id, Split::Test)?);
                }
                all
            }
            None => Vec::new(),
        },
        lora: p.lora(kind, ctx.shared_seed(&["lora".into()])),
    };
    let resume = match ctx.resume() {
        Some(bytes) => Some(EngineState::from_bytes(&bytes, &device).map_err(err)?),
        None => None,
    };
    let clients: Vec<u32> = pool.clients().iter().map(|c| c.client_id).collect();
    Ok((model, clients, run, resume))
}

struct PretrainedKind;
impl StageKind for PretrainedKind {
    fn name(&self) -> &'static str {
        "base/pretrained"
    }
    fn version(&self) -> u32 {
        2
    }
    fn default_resources(&self) -> crate::engine::resources::Resources {
        // Model training across rounds: the longest kinds.
        crate::engine::resources::Resources::new(4, "16G", "2-00:00:00")
    }
    fn describe(&self) -> &'static str {
        "the pretrained model off the shelf, in HF layout"
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        let p: PretrainedParams = typed_params(params)?;
        check_model(&p.model, &p.task)
    }
    fn external_inputs(&self, plan: &PlanInputs<'_>) -> Result<Vec<PathBuf>, StageError> {
        let p: PretrainedParams = typed_params(plan.params).map_err(|e| StageError(e.message))?;
        super::model_dir::files(&p.model)
    }
    fn check_inputs(&self, params: &Value, _: Option<&Path>) -> Result<(), ParamError> {
        super::model_dir::check(&typed_params::<PretrainedParams>(params)?.model)
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: PretrainedParams = ctx.params()?;
        let out = ctx.out_dir().join("model");
        let pool = seen_pool(ctx)?;
        let kind = pool.task().kind;
        match &super::model_dir::local(&p.model)? {
            ModelSource::Dir(dir) if kind == TaskKind::Classification => {
                copy_model_dir(dir, &out).map_err(err)?
            }
            // A tiny model needs the partition for its labels and tokenizer texts; a causal LM
            // may gain a pad token (and an embedding row), so it is rebuilt and saved.
            source => {
                let device = device_from_name(ctx.device()).map_err(err)?;
                let setup = p.task.setup(&pool, p.prompt);
                let head_seed = ctx.shared_seed(&["classifier".into()]);
                let model =
                    build_task_model(source, &setup, head_seed, || train_texts(&pool), &device)
                        .map_err(err)?;
                save_task_model(&model, &out).map_err(err)?;
            }
        }
        if kind == TaskKind::Generation {
            write_task_file(&out, p.prompt)?;
        }
        Ok(())
    }
}

fn err(e: impl std::fmt::Display) -> StageError {
    StageError(e.to_string())
}
