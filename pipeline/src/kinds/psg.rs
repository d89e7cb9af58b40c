//! `psg/fedp2eft` (PAPER_NOTES §5): federated training of the PS generator on the seen pool —
//! each sampled client runs Stage 1 BayesTune-LoRA from λ = PSG(meta-data), regresses the PSG
//! onto the trained λ, and the server averages the PSG by sample count. Writes
//! `psg/model.safetensors`, `psg/config.json` and `rounds.csv`; checkpoints every round.
//!
//! `lambda/bayestune` (PAPER_NOTES §6): the BayesTune-LoRA baseline's Stage 1 on one client,
//! once for all budgets. Writes `lambda.safetensors` (one tensor of r_max raw λ per module)
//! and `stage1.json`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use datasets::{Split, TaskKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stages::base_model::device_from_name;
use stages::fl::psg_client::{PsgClient, PsgRun};
use stages::fl::{rounds_csv, run_rounds, EngineConfig, EngineState, Weights};
use stages::methods::all_linear;
use stages::methods::stage1::{
    read_lambdas, train_stage1, write_lambdas, LambdaInit, Stage1Config,
};
use stages::params::{write_safetensors, ParamStore};
use stages::peft::bayestune::BayesTuneConfig;
use stages::psg::{init_psg, load_psg, PsgConfig};
use stages::Device;

use super::client_base::{all_clients, find_client, partition_dir, BaseArtifact, SeenPool};
use super::task::TaskOptions;
use crate::context::StageContext;
use crate::registry::{
    require_positive, typed_params, ParamError, PlanInputs, Registry, StageError, StageKind,
};

pub fn register(r: &mut Registry) {
    r.register(Arc::new(FedP2eftKind));
    r.register(Arc::new(Stage1Kind));
}

/// Stage-1 settings shared by both kinds (PAPER_NOTES §3 defaults; sequence length, batch and
/// accumulation default per task, see `kinds::task`).
#[derive(Debug, Clone, Deserialize)]
struct Stage1Params {
    #[serde(default = "d_epochs")]
    epochs: usize,
    // The `TaskOptions` fields, spelled out: serde cannot reject unknown fields through two
    // levels of `flatten`.
    #[serde(default)]
    max_len: Option<usize>,
    #[serde(default)]
    batch_size: Option<usize>,
    #[serde(default)]
    accumulate: Option<usize>,
    #[serde(default)]
    max_new_tokens: Option<usize>,
    #[serde(default = "d_r_max")]
    r_max: usize,
    #[serde(default = "d_alpha")]
    alpha: f64,
    #[serde(default = "d_lr_adapter")]
    lr_adapter: f64,
    #[serde(default = "d_lr_lambda")]
    lr_lambda: f64,
    #[serde(default = "d_clip")]
    clip_norm: f64,
}

fn d_epochs() -> usize {
    2
}
fn d_r_max() -> usize {
    32
}
fn d_alpha() -> f64 {
    64.0
}
fn d_lr_adapter() -> f64 {
    1e-4
}
fn d_lr_lambda() -> f64 {
    1e-2
}
fn d_clip() -> f64 {
    1.0
}
fn d_rounds() -> u64 {
    150
}
fn d_fraction() -> f64 {
    0.1
}
fn d_min_clients() -> usize {
    1
}
fn d_reg_steps() -> usize {
    stages::psg::REGRESSION_STEPS
}
fn d_reg_lr() -> f64 {
    stages::psg::REGRESSION_LR
}

impl Stage1Params {
    fn task(&self) -> TaskOptions {
        TaskOptions {
            max_len: self.max_len,
            batch_size: self.batch_size,
            accumulate: self.accumulate,
            max_new_tokens: self.max_new_tokens,
        }
    }

    fn check(&self) -> Result<(), ParamError> {
        if self.epochs == 0 || self.r_max == 0 {
            return Err(ParamError::new(
                Some("epochs"),
                "`epochs` and `r_max` must be ≥ 1",
            ));
        }
        self.task().check()?;
        require_positive(&[
            ("alpha", self.alpha),
            ("lr_adapter", self.lr_adapter),
            ("lr_lambda", self.lr_lambda),
            ("clip_norm", self.clip_norm),
        ])
    }

    fn config(&self, kind: TaskKind) -> Stage1Config {
        Stage1Config {
            bayestune: BayesTuneConfig {
                r_max: self.r_max,
                alpha: self.alpha,
                ..BayesTuneConfig::default()
            },
            epochs: self.epochs,
            batch_size: self.task().batch_size(kind),
            accumulate: self.task().accumulate(kind),
            lr_adapter: self.lr_adapter,
            lr_lambda: self.lr_lambda,
            clip_norm: self.clip_norm,
        }
    }
}

/// `psg/config.json` and `stage1.json`: what personalization needs to rebuild the adapters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdapterMeta {
    /// Adapted linears (PSG: L).
    pub modules: usize,
    /// Base linears the PSG's meta-data observe (BERT: = modules; LLaMA: + lm_head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<usize>,
    pub r_max: usize,
    pub alpha: f64,
    /// Seed of the adapters' initial A (Stage 1 only; pruning restores rows of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_seed: Option<u64>,
}

impl AdapterMeta {
    pub fn read(path: &Path) -> Result<Self, StageError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StageError::msg(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| StageError::msg(format!("{}: {e}", path.display())))
    }

    fn write(&self, path: &Path) -> Result<(), StageError> {
        let text = serde_json::to_string_pretty(self).map_err(err)?;
        std::fs::write(path, text + "\n")?;
        Ok(())
    }

    pub fn bayestune(&self) -> BayesTuneConfig {
        BayesTuneConfig {
            r_max: self.r_max,
            alpha: self.alpha,
            ..BayesTuneConfig::default()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PsgParams {
    #[serde(default = "d_rounds")]
    rounds: u64,
    #[serde(default = "d_fraction")]
    fraction: f64,
    #[serde(default = "d_min_clients")]
    min_clients: usize,
    #[serde(default = "d_reg_steps")]
    regression_steps: usize,
    #[serde(default = "d_reg_lr")]
    regression_lr: f64,
    #[serde(flatten)]
    stage1: Stage1Params,
}

struct FedP2eftKind;
impl StageKind for FedP2eftKind {
    fn name(&self) -> &'static str {
        "psg/fedp2eft"
    }
    fn version(&self) -> u32 {
        2
    }
    fn describe(&self) -> &'static str {
        "FedP2EFT: federated training of the PS generator (Stage 1 BayesTune + Stage 2 regression)"
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        let p: PsgParams = typed_params(params)?;
        p.stage1.check()?;
        if p.rounds == 0 || p.regression_steps == 0 {
            return Err(ParamError::new(
                Some("rounds"),
                "`rounds` and `regression_steps` must be ≥ 1",
            ));
        }
        if !(p.fraction > 0.0 && p.fraction <= 1.0) {
            return Err(ParamError::new(
                Some("fraction"),
                "`fraction` must be in (0, 1]",
            ));
        }
        if !(p.regression_lr > 0.0 && p.regression_lr.is_finite()) {
            return Err(ParamError::new(
                Some("regression_lr"),
                "`regression_lr` must be positive",
            ));
        }
        Ok(())
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: PsgParams = ctx.params()?;
        let device = device_from_name(ctx.device()).map_err(err)?;
        let base = BaseArtifact::of(ctx)?;
        let seen = SeenPool::open(ctx, &base, &p.stage1.task())?;
        let loader = base.loader(&seen.setup, &device)?;
        let (observed, modules) = seen.linears(&loader)?;
        let mut run = PsgRun::paper(
            observed,
            modules,
            ctx.derive_seed(&["bayestune_init".into()]),
        );
        run.stage1 = p.stage1.config(seen.kind);
        run.psg.r_max = p.stage1.r_max;
        run.regression_steps = p.regression_steps;
        run.regression_lr = p.regression_lr;
        let state = match ctx.resume() {
            Some(bytes) => EngineState::from_bytes(&bytes, &device).map_err(err)?,
            None => {
                let init = init_psg(&run.psg, ctx.derive_seed(&["psg_init".into()]), &device)
                    .map_err(err)?;
                EngineState::new(init.export(|_| true).map_err(err)?.into_iter().collect())
            }
        };
        let engine = EngineConfig {
            rounds: p.rounds,
            fraction: p.fraction,
            min_clients: p.min_clients,
            eval_every: None,
            // Shared with the other federated kinds of the same seed: FedP2EFT and FedL2P see the
            // same clients each round.
            seed: ctx.shared_seed(&["psg_fl".into()]),
        };
        let shards = seen.train_shards();
        let mut client = PsgClient::new(loader, shards, run, device.clone());
        let bar = ctx.progress(p.rounds, "rounds").clone();
        bar.set(state.round);
        let ctx_ref = &*ctx;
        let state = run_rounds(&engine, &seen.clients, &mut client, state, |s| {
            ctx_ref
                .checkpoint(&s.to_bytes().map_err(|e| e.to_string())?)
                .map_err(|e| e.0)?;
            bar.set(s.round);
            Ok(())
        })
        .map_err(err)?;
        let dir = ctx.out_dir().join("psg");
        std::fs::create_dir_all(&dir)?;
        write_weights(&state.global, &dir.join("model.safetensors"))?;
        AdapterMeta {
            modules,
            observed: (observed != modules).then_some(observed),
            r_max: run.psg.r_max,
            alpha: p.stage1.alpha,
            init_seed: None,
        }
        .write(&dir.join("config.json"))?;
        std::fs::write(ctx.out_dir().join("rounds.csv"), rounds_csv(&state.metrics))?;
        if let Some(last) = state.metrics.last() {
            ctx.log(&format!(
                "{} rounds; last: clients {:?}, mean Stage-1 loss {}",
                state.round, last.clients, last.mean_train_loss
            ));
        }
        Ok(())
    }
}

fn write_weights(w: &Weights, path: &Path) -> Result<(), StageError> {
    let map: HashMap<_, _> = w.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    write_safetensors(&map, path).map_err(err)
}

/// The trained PSG of an upstream `psg/fedp2eft` instance.
pub fn read_psg(
    dir: &Path,
    device: &Device,
) -> Result<(ParamStore, PsgConfig, AdapterMeta), StageError> {
    let meta = AdapterMeta::read(&dir.join("psg").join("config.json"))?;
    let store = load_psg(&dir.join("psg").join("model.safetensors"), device).map_err(err)?;
    let cfg = PsgConfig {
        observed: meta.observed.unwrap_or(meta.modules),
        modules: meta.modules,
        r_max: meta.r_max,
    };
    Ok((store, cfg, meta))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stage1KindParams {
    client: u32,
    #[serde(flatten)]
    stage1: Stage1Params,
}

struct Stage1Kind;
impl StageKind for Stage1Kind {
    fn name(&self) -> &'static str {
        "lambda/bayestune"
    }
    fn version(&self) -> u32 {
        2
    }
    fn describe(&self) -> &'static str {
        "BayesTune-LoRA Stage 1 on one client (λ init 1e-4), once for all budgets"
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        let mut params = params.clone();
        if let Some(map) = params.as_object_mut() {
            map.entry("client").or_insert(Value::from(0u32));
        }
        typed_params::<Stage1KindParams>(&params)?.stage1.check()
    }
    fn expandable_keys(&self) -> &'static [&'static str] {
        &["client"]
    }
    fn expand(&self, key: &str, plan: &PlanInputs<'_>) -> Result<Vec<Value>, StageError> {
        if key != "client" {
            return Err(StageError::msg(format!(
                "lambda/bayestune cannot expand `{key}`"
            )));
        }
        let dir = partition_dir(plan.inputs.values().flatten())?;
        Ok(all_clients(&dir)?.into_iter().map(Value::from).collect())
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: Stage1KindParams = ctx.params()?;
        let device = device_from_name(ctx.device()).map_err(err)?;
        let part = partition_dir(ctx.inputs_of_kind("partition/").into_iter())?;
        let shard = find_client(&part, p.client)?;
        let base = BaseArtifact::of(ctx)?;
        let setup = p.stage1.task().setup(&shard.reader, base.prompt()?);
        let model = base.load(p.client, &setup, &device)?;
        let train = shard.reader.load_client(p.client, Split::Train)?;
        let init_seed = ctx.derive_seed(&["bayestune_init".into()]);
        let seed = ctx.derive_seed(&["client".into(), u64::from(p.client).into()]);
        let cfg = p.stage1.config(shard.reader.task().kind);
        let out = train_stage1(&model, &train, &cfg, &LambdaInit::Constant, init_seed, seed)
            .map_err(err)?;
        let modules = all_linear(&model);
        write_lambdas(
            &ctx.out_dir().join("lambda.safetensors"),
            &modules,
            &out.lambdas,
        )
        .map_err(err)?;
        AdapterMeta {
            modules: modules.len(),
            observed: None,
            r_max: cfg.bayestune.r_max,
            alpha: cfg.bayestune.alpha,
            init_seed: Some(init_seed),
        }
        .write(&ctx.out_dir().join("stage1.json"))?;
        ctx.log(&format!(
            "client {} ({}): Stage 1 over {} examples, mean loss {}",
            p.client,
            shard.pool,
            train.len(),
            out.mean_loss
        ));
        Ok(())
    }
}

/// λ per module (module order of `modules`) from an upstream `lambda/bayestune` instance.
pub fn read_stage1(
    dir: &Path,
    modules: &[stages::peft::LinearShape],
) -> Result<(Vec<Vec<f32>>, AdapterMeta), StageError> {
    let meta = AdapterMeta::read(&dir.join("stage1.json"))?;
    let lambdas = read_lambdas(&dir.join("lambda.safetensors"), modules).map_err(err)?;
    Ok((lambdas, meta))
}

fn err(e: impl std::fmt::Display) -> StageError {
    StageError(e.to_string())
}
