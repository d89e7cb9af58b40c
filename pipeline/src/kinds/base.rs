//! `base/*` stage kinds (PAPER_NOTES §2): the base model every personalization method starts
//! from. `base/fedavg` trains BERT classification with Standard FL on the seen pool of the
//! upstream partition; `base/pretrained` is the model off the shelf. Both write `model/` in HF
//! layout (config.json, model.safetensors, tokenizer.json); FedAvg also writes `rounds.csv`.

use std::path::PathBuf;
use std::sync::Arc;

use datasets::{PoolReader, Split};
use serde::Deserialize;
use serde_json::Value;
use stages::base_model::{
    build_classifier, copy_model_dir, device_from_name, save_classifier, save_client_states,
    train_fedavg, train_feddpa, ClassifierModel, FedAvgRun, ModelSource,
};
use stages::fl::classifier_client::ShardLoader;
use stages::fl::feddpa_client::DpaConfig;
use stages::fl::{rounds_csv, EngineConfig, EngineState, LocalSgdConfig};

use crate::context::StageContext;
use crate::registry::{typed_params, ParamError, PlanInputs, Registry, StageError, StageKind};

pub fn register(r: &mut Registry) {
    r.register(Arc::new(FedAvgKind {
        name: "base/fedavg",
        describe: "Standard FL (FedAvg, full fine-tuning) of a BERT classifier on the seen pool",
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

// Paper defaults (PAPER_NOTES §2, App. A.3): 100 rounds, 10% of clients, lr 5e-5, AdamW wd 0,
// 2 local epochs, batch 32, sequence length 128 (XNLI; MasakhaNEWS sets 256).
fn default_rounds() -> u64 {
    100
}
fn default_fraction() -> f64 {
    0.1
}
fn default_min_clients() -> usize {
    1
}
fn default_lr() -> f64 {
    5e-5
}
fn default_epochs() -> usize {
    2
}
fn default_batch() -> usize {
    32
}
fn default_max_len() -> usize {
    128
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FedAvgParams {
    model: ModelSource,
    #[serde(default = "default_rounds")]
    rounds: u64,
    #[serde(default = "default_fraction")]
    fraction: f64,
    #[serde(default = "default_min_clients")]
    min_clients: usize,
    #[serde(default = "default_lr")]
    lr: f64,
    #[serde(default)]
    weight_decay: f64,
    #[serde(default = "default_epochs")]
    local_epochs: usize,
    #[serde(default = "default_batch")]
    batch_size: usize,
    #[serde(default = "default_max_len")]
    max_len: usize,
    /// Accuracy of the global model on the seen clients' test splits every k rounds (and after
    /// the last), in `rounds.csv`'s `eval` column; off by default.
    #[serde(default)]
    eval_every: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PretrainedParams {
    model: ModelSource,
    #[serde(default = "default_max_len")]
    max_len: usize,
}

fn check_model(m: &ModelSource, max_len: usize) -> Result<(), ParamError> {
    if let ModelSource::Tiny(t) = m {
        if t.hidden == 0 || t.heads == 0 || t.hidden % t.heads != 0 {
            return Err(ParamError::new(
                Some("model"),
                format!(
                    "tiny.hidden ({}) must be a positive multiple of tiny.heads ({})",
                    t.hidden, t.heads
                ),
            ));
        }
        if t.layers == 0 || t.intermediate == 0 || t.vocab_size < 10 {
            return Err(ParamError::new(
                Some("model"),
                "tiny.layers and tiny.intermediate must be ≥ 1 and tiny.vocab_size ≥ 10",
            ));
        }
    }
    if max_len < 4 {
        return Err(ParamError::new(Some("max_len"), "`max_len` must be ≥ 4"));
    }
    Ok(())
}

fn model_files(m: &ModelSource) -> Result<Vec<PathBuf>, StageError> {
    let files = m.files();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(StageError::msg(format!(
            "model file {} not found (model.dir must be an HF-layout directory)",
            missing.display()
        )));
    }
    Ok(files)
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

fn classification_labels(pool: &PoolReader) -> Result<Vec<String>, StageError> {
    if pool.task().kind != datasets::TaskKind::Classification {
        return Err(StageError::msg(format!(
            "dataset `{}` is not a classification task; the BERT base kinds need one",
            pool.task().dataset
        )));
    }
    Ok(pool.labels().to_vec())
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
        1
    }
    fn describe(&self) -> &'static str {
        self.describe
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        let p: FedAvgParams = typed_params(params)?;
        check_model(&p.model, p.max_len)?;
        if p.rounds == 0 {
            return Err(ParamError::new(Some("rounds"), "`rounds` must be ≥ 1"));
        }
        if !(p.fraction > 0.0 && p.fraction <= 1.0) {
            return Err(ParamError::new(
                Some("fraction"),
                "`fraction` must be in (0, 1]",
            ));
        }
        if p.batch_size == 0 || p.local_epochs == 0 {
            return Err(ParamError::new(
                Some("batch_size"),
                "`batch_size` and `local_epochs` must be ≥ 1",
            ));
        }
        if !(p.lr > 0.0 && p.lr.is_finite()) || p.weight_decay < 0.0 {
            return Err(ParamError::new(
                Some("lr"),
                "`lr` must be positive and `weight_decay` ≥ 0",
            ));
        }
        Ok(())
    }
    fn external_inputs(&self, plan: &PlanInputs<'_>) -> Result<Vec<PathBuf>, StageError> {
        let p: FedAvgParams = typed_params(plan.params).map_err(|e| StageError(e.message))?;
        model_files(&p.model)
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: FedAvgParams = ctx.params()?;
        let keep_local = self.keep_local;
        run_federated(
            ctx,
            &p,
            keep_local.is_some(),
            |model, clients, load, run, resume, after| {
                let keep = keep_local
                    .map(|f| -> stages::fl::classifier_client::LocalPredicate { Box::new(f) });
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
        1
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
        model_files(&p.model)
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: FedAvgParams = ctx.params()?;
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
        &mut ClassifierModel,
        &[u32],
        ShardLoader<'_>,
        &FedAvgRun,
        Option<EngineState>,
        &mut dyn FnMut(&EngineState) -> Result<(), String>,
    ) -> Result<EngineState, StageError>,
) -> Result<(), StageError> {
    let (mut model, clients, run, resume) = prepare(ctx, p)?;
    let pool = seen_pool(ctx)?;
    let bar = ctx.progress(p.rounds, "rounds").clone();
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
    save_classifier(&model, &ctx.out_dir().join("model")).map_err(err)?;
    if save_client_state {
        save_client_states(
            &state.persistent,
            &model.store,
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
) -> Result<(ClassifierModel, Vec<u32>, FedAvgRun, Option<EngineState>), StageError> {
    let device = device_from_name(ctx.device()).map_err(err)?;
    let pool = seen_pool(ctx)?;
    let labels = classification_labels(&pool)?;
    let head_seed = ctx.shared_seed(&["classifier".into()]);
    let model = build_classifier(
        &p.model,
        &labels,
        p.max_len,
        head_seed,
        || train_texts(&pool),
        &device,
    )
    .map_err(err)?;
    let run = FedAvgRun {
        engine: EngineConfig {
            rounds: p.rounds,
            fraction: p.fraction,
            min_clients: p.min_clients,
            eval_every: p.eval_every,
            seed: ctx.shared_seed(&["fl".into()]),
        },
        sgd: LocalSgdConfig {
            lr: p.lr,
            weight_decay: p.weight_decay,
            epochs: p.local_epochs,
            batch_size: p.batch_size,
        },
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
        1
    }
    fn describe(&self) -> &'static str {
        "the pretrained model off the shelf, in HF layout"
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        let p: PretrainedParams = typed_params(params)?;
        check_model(&p.model, p.max_len)
    }
    fn external_inputs(&self, plan: &PlanInputs<'_>) -> Result<Vec<PathBuf>, StageError> {
        let p: PretrainedParams = typed_params(plan.params).map_err(|e| StageError(e.message))?;
        model_files(&p.model)
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: PretrainedParams = ctx.params()?;
        let out = ctx.out_dir().join("model");
        match &p.model {
            ModelSource::Dir(dir) => copy_model_dir(dir, &out).map_err(err),
            // A tiny model needs the partition for its labels and tokenizer texts.
            tiny @ ModelSource::Tiny(_) => {
                let device = device_from_name(ctx.device()).map_err(err)?;
                let pool = seen_pool(ctx)?;
                let labels = classification_labels(&pool)?;
                let head_seed = ctx.shared_seed(&["classifier".into()]);
                let model = build_classifier(
                    tiny,
                    &labels,
                    p.max_len,
                    head_seed,
                    || train_texts(&pool),
                    &device,
                )
                .map_err(err)?;
                save_classifier(&model, &out).map_err(err)
            }
        }
    }
}

fn err(e: impl std::fmt::Display) -> StageError {
    StageError(e.to_string())
}
