//! `psg/fedp2eft` (PAPER_NOTES §5): federated training of the PS generator on the seen pool —
//! each sampled client runs Stage 1 BayesTune-LoRA from λ = PSG(meta-data), regresses the PSG
//! onto the trained λ, and the server averages the PSG by sample count. Writes
//! `psg/model.safetensors`, `psg/config.json` and `rounds.csv`; checkpoints every round.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use stages::fl::psg_client::{PsgClient, PsgRun};
use stages::fl::{rounds_csv, run_rounds, EngineConfig, EngineState, RoundMetrics, Weights};
use stages::params::{write_safetensors, ParamStore};
use stages::psg::{init_psg, load_psg, PsgConfig};
use stages::task::device_from_name;
use stages::Device;

use super::artifacts::DIAGNOSTICS_FILE;
use super::client_base::{BaseArtifact, SeenPool};
use super::stage1::{AdapterMeta, Stage1Params};
use crate::engine::context::StageContext;
use crate::engine::registry::{typed_params, ParamError, Registry, StageError, StageKind};

pub fn register(r: &mut Registry) {
    r.register(Arc::new(FedP2eftKind));
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
        // 3: shared, recorded A seed; λ gradients summed over steps as the reference's Stage 1.
        // 4: diagnostics.csv (the PSG's λ against the Stage-1 λ, per round).
        // 5: the Laplace prior's (and the L1 regression's) gradient at 0 is torch's 0.
        5
    }
    fn default_resources(&self) -> crate::engine::resources::Resources {
        // Model training across rounds: the longest kinds.
        crate::engine::resources::Resources::new(4, "16G", "2-00:00:00")
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
        // One A for every client, round and personalization of this run seed, shared with the
        // BayesTune-LoRA baseline's Stage 1 (the reference seeds torch with the run seed before
        // every `get_peft_model`); recorded so personalization restores exactly this A.
        let init_seed = ctx.shared_seed(&["bayestune_init".into()]);
        let mut run = PsgRun::paper(observed, modules, init_seed);
        run.stage1 = p.stage1.config(seen.kind);
        run.lambda_dtype = p.stage1.task().dtype.unwrap_or_default();
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
            init_seed: Some(init_seed),
        }
        .write(&dir.join("config.json"))?;
        std::fs::write(ctx.out_dir().join("rounds.csv"), rounds_csv(&state.metrics))?;
        std::fs::write(
            ctx.out_dir().join(DIAGNOSTICS_FILE),
            diagnostics_csv(&state.metrics),
        )?;
        if let Some(last) = state.metrics.last() {
            ctx.log(&format!(
                "{} rounds; last: clients {:?}, mean Stage-1 loss {}",
                state.round, last.clients, last.mean_train_loss
            ));
        }
        Ok(())
    }
}

/// Per round the clients' means of the PSG client's diagnostics (`stages::fl::psg_client`):
/// the PSG's λ₀ and the Stage-1 λ learned from it, and the regression's per-element L1 before
/// and after its steps.
fn diagnostics_csv(metrics: &[RoundMetrics]) -> String {
    let keys: Vec<&String> = metrics
        .first()
        .map(|m| m.extra.keys().collect())
        .unwrap_or_default();
    let mut s = String::from("round");
    for k in &keys {
        s.push(',');
        s.push_str(k);
    }
    s.push('\n');
    for m in metrics {
        s.push_str(&m.round.to_string());
        for k in &keys {
            s.push_str(&format!(
                ",{}",
                m.extra.get(*k).copied().unwrap_or(f64::NAN)
            ));
        }
        s.push('\n');
    }
    s
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

fn err(e: impl std::fmt::Display) -> StageError {
    StageError(e.to_string())
}
