//! `psg/fedl2p` (PAPER_NOTES §6): FedL2P's federated training of the LR network for one
//! budget on the seen pool — each sampled client meta-trains the LR network on its 80/20
//! split, the server averages by train-part size, and training stops early once 50 rounds
//! pass without a lower mean validation loss; the best round's weights are the result. Writes
//! `lr_net/model.safetensors` (reference parameter names), `lr_net/config.json` and
//! `rounds.csv`; checkpoints every round.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use datasets::TaskKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stages::fedl2p::hypergrad::Hypergrad;
use stages::fedl2p::inner::InnerConfig;
use stages::fedl2p::lr_net::{init_lr_net, load_lr_net, LrNetConfig};
use stages::fedl2p::meta::{EarlyStopping, MetaConfig};
use stages::fl::fedl2p_client::{Fedl2pClient, Fedl2pRoundConfig, Fedl2pState};
use stages::fl::{run_rounds, EngineConfig, EngineState, RoundMetrics};
use stages::params::{write_safetensors, ParamStore};
use stages::task::device_from_name;
use stages::task::WeightDtype;
use stages::Device;

use super::client_base::{BaseArtifact, SeenPool};
use super::task::TaskOptions;
use crate::engine::context::StageContext;
use crate::engine::registry::{
    require_positive, typed_params, ParamError, Registry, StageError, StageKind,
};

pub fn register(r: &mut Registry) {
    r.register(Arc::new(Fedl2pKind));
}

// PAPER_NOTES §6 [code] defaults (configs/*/…_fedl2p.yaml).
fn d_rounds() -> u64 {
    200
}
fn d_patience() -> u64 {
    50
}
fn d_val_ratio() -> f64 {
    stages::fl::fedl2p_client::VAL_RATIO
}
fn d_outer_steps() -> usize {
    MetaConfig::default().outer_steps
}
fn d_pairs() -> usize {
    MetaConfig::default().pairs
}
fn d_neumann_terms() -> usize {
    Hypergrad::default().truncate
}
fn d_neumann_lr() -> f64 {
    Hypergrad::default().lr
}
fn d_lr_net_lr() -> f64 {
    MetaConfig::default().lr_net_lr
}
fn d_post_lr() -> f64 {
    MetaConfig::default().post_lr
}
fn d_clip() -> f64 {
    1.0
}
fn d_epochs() -> usize {
    InnerConfig::default().epochs
}
fn d_fraction() -> f64 {
    0.1
}
fn d_min_clients() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fedl2pParams {
    /// r_b: the LoRA rank every module gets (usually a `matrix` key).
    budget: usize,
    #[serde(default = "d_rounds")]
    rounds: u64,
    #[serde(default = "d_fraction")]
    fraction: f64,
    #[serde(default = "d_min_clients")]
    min_clients: usize,
    /// Rounds without a lower mean validation loss before stopping.
    #[serde(default = "d_patience")]
    patience: u64,
    #[serde(default = "d_val_ratio")]
    val_ratio: f64,
    #[serde(default = "d_outer_steps")]
    outer_steps: usize,
    /// Hypergradient (train, val) pairs per outer step (`outer_loop_grad_accum`).
    #[serde(default = "d_pairs")]
    pairs: usize,
    #[serde(default = "d_neumann_terms")]
    neumann_terms: usize,
    #[serde(default = "d_neumann_lr")]
    neumann_lr: f64,
    #[serde(default = "d_lr_net_lr")]
    lr_net_lr: f64,
    #[serde(default = "d_post_lr")]
    post_lr: f64,
    /// Gradient-norm clip of the inner loop and of the meta-gradients (`max_grad_norm`).
    #[serde(default = "d_clip")]
    clip_norm: f64,
    #[serde(default = "d_epochs")]
    epochs: usize,
    // The `TaskOptions` fields (defaults per task, `kinds::task`): the inner loop's batch and
    // accumulation, the model's sequence length.
    #[serde(default)]
    max_len: Option<usize>,
    #[serde(default)]
    batch_size: Option<usize>,
    #[serde(default)]
    accumulate: Option<usize>,
    #[serde(default)]
    max_new_tokens: Option<usize>,
    #[serde(default)]
    dtype: Option<WeightDtype>,
}

impl Fedl2pParams {
    fn check(&self) -> Result<(), ParamError> {
        self.task().check()?;
        for (name, v) in [
            ("budget", self.budget),
            ("min_clients", self.min_clients),
            ("outer_steps", self.outer_steps),
            ("pairs", self.pairs),
            ("epochs", self.epochs),
        ] {
            if v == 0 {
                return Err(ParamError::new(Some(name), format!("`{name}` must be ≥ 1")));
            }
        }
        if self.rounds == 0 || self.patience == 0 {
            let name = if self.rounds == 0 {
                "rounds"
            } else {
                "patience"
            };
            return Err(ParamError::new(Some(name), format!("`{name}` must be ≥ 1")));
        }
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(ParamError::new(
                Some("fraction"),
                "`fraction` must be in (0, 1]",
            ));
        }
        if !(self.val_ratio > 0.0 && self.val_ratio < 1.0) {
            return Err(ParamError::new(
                Some("val_ratio"),
                "`val_ratio` must be in (0, 1)",
            ));
        }
        require_positive(&[
            ("neumann_lr", self.neumann_lr),
            ("lr_net_lr", self.lr_net_lr),
            ("post_lr", self.post_lr),
            ("clip_norm", self.clip_norm),
        ])
    }

    fn task(&self) -> TaskOptions {
        TaskOptions {
            max_len: self.max_len,
            batch_size: self.batch_size,
            accumulate: self.accumulate,
            max_new_tokens: self.max_new_tokens,
            dtype: self.dtype,
        }
    }

    fn round_config(
        &self,
        kind: TaskKind,
        (observed, adapted): (usize, usize),
        init_seed: u64,
        split_seed: u64,
    ) -> Fedl2pRoundConfig {
        let mut c = Fedl2pRoundConfig::paper(observed, adapted, self.budget, init_seed, split_seed);
        c.val_ratio = self.val_ratio;
        c.meta = MetaConfig {
            outer_steps: self.outer_steps,
            pairs: self.pairs,
            hypergrad: Hypergrad {
                lr: self.neumann_lr,
                truncate: self.neumann_terms,
            },
            inner: InnerConfig {
                epochs: self.epochs,
                batch_size: self.task().batch_size(kind),
                accumulate: self.task().accumulate(kind),
                clip_norm: self.clip_norm,
                ..InnerConfig::default()
            },
            lr_net_lr: self.lr_net_lr,
            post_lr: self.post_lr,
            meta_clip: self.clip_norm,
        };
        c
    }
}

/// `lr_net/config.json`: what personalization needs to rebuild the network, the adapters and
/// the clients' train/val split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LrNetMeta {
    /// Adapted linears L (the network gives 2L rates).
    pub modules: usize,
    pub budget: usize,
    pub input_dim: usize,
    pub hidden: usize,
    pub extra_hidden_layers: usize,
    pub val_ratio: f64,
    /// Seed of every client's train/val split (with the client id).
    pub split_seed: u64,
    /// Seed of the LoRA's initial A the network was meta-trained with (personalization draws
    /// the same A, as the reference's per-run torch seed does).
    pub init_seed: u64,
    /// The round whose weights these are, and how many rounds ran.
    pub best_round: u64,
    pub rounds_run: u64,
}

impl LrNetMeta {
    pub fn net_config(&self) -> LrNetConfig {
        LrNetConfig {
            input_dim: self.input_dim,
            hidden: self.hidden,
            extra_hidden_layers: self.extra_hidden_layers,
            outputs: 2 * self.modules,
        }
    }
}

struct Fedl2pKind;
impl StageKind for Fedl2pKind {
    fn name(&self) -> &'static str {
        "psg/fedl2p"
    }
    fn version(&self) -> u32 {
        // 2: A from the shared LoRA seed (recorded), fine-tunes clipped at 1.0.
        2
    }
    fn default_resources(&self) -> crate::engine::resources::Resources {
        // Model training across rounds: the longest kinds.
        crate::engine::resources::Resources::new(4, "16G", "2-00:00:00")
    }
    fn describe(&self) -> &'static str {
        "FedL2P: federated bi-level training of the per-matrix learning-rate network for one budget"
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        typed_params::<Fedl2pParams>(params)?.check()
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: Fedl2pParams = ctx.params()?;
        let device = device_from_name(ctx.device()).map_err(err)?;
        let base = BaseArtifact::of(ctx)?;
        let seen = SeenPool::open(ctx, &base, &p.task())?;
        let loader = base.loader(&seen.setup, &device)?;
        let sizes = seen.linears(&loader)?;
        let split_seed = ctx.derive_seed(&["train_val_split".into()]);
        // The LoRA baseline's A (shared seed): the reference seeds torch with the run seed
        // before every `get_peft_model`, so LoRA and FedL2P at one budget start from one A.
        let init_seed = ctx.shared_seed(&["lora_init".into()]);
        let cfg = p.round_config(seen.kind, sizes, init_seed, split_seed);
        let mut state = match ctx.resume() {
            Some(bytes) => Fedl2pState::from_bytes(&bytes, &device).map_err(StageError)?,
            None => {
                let init = init_lr_net(&cfg.net, ctx.derive_seed(&["lr_net_init".into()]), &device)
                    .map_err(err)?;
                Fedl2pState {
                    engine: EngineState::new(
                        init.export(|_| true).map_err(err)?.into_iter().collect(),
                    ),
                    best: None,
                }
            }
        };
        let engine = EngineConfig {
            rounds: p.rounds,
            fraction: p.fraction,
            min_clients: p.min_clients,
            // Every round reports the clients' mean validation loss (the early-stopping signal).
            eval_every: Some(1),
            // Shared with the other federated kinds of the same seed: FedP2EFT and FedL2P see the
            // same clients each round.
            seed: ctx.shared_seed(&["psg_fl".into()]),
        };
        let mut early = EarlyStopping::new(p.patience);
        for m in &state.engine.metrics {
            early.observe(m.round, m.eval.unwrap_or(f64::NAN));
        }
        let shards = seen.train_shards();
        let mut client = Fedl2pClient::new(loader, shards, cfg, device.clone());
        let bar = ctx.progress(p.rounds, "rounds").clone();
        bar.set(state.engine.round);
        while state.engine.round < p.rounds
            && !(state.engine.round > 0 && early.should_stop(state.engine.round))
        {
            // One round at a time, so early stopping can end the loop between rounds.
            let one = EngineConfig {
                rounds: state.engine.round + 1,
                ..engine.clone()
            };
            let next = run_rounds(&one, &seen.clients, &mut client, state.engine, |_| Ok(()))
                .map_err(err)?;
            let last = next.metrics.last().expect("one round ran");
            let best = if early.observe(last.round, last.eval.unwrap_or(f64::NAN)) {
                Some(next.global.clone())
            } else {
                state.best
            };
            state = Fedl2pState { engine: next, best };
            ctx.checkpoint(&state.to_bytes().map_err(StageError)?)?;
            bar.set(state.engine.round);
        }
        let (best_round, best_loss) = early
            .best()
            .ok_or_else(|| StageError::msg("no round produced a finite mean validation loss"))?;
        let best = state
            .best
            .as_ref()
            .ok_or_else(|| StageError::msg("the best round's weights are missing"))?;
        let dir = ctx.out_dir().join("lr_net");
        std::fs::create_dir_all(&dir)?;
        let map: HashMap<_, _> = best.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        write_safetensors(&map, &dir.join("model.safetensors")).map_err(err)?;
        let meta = LrNetMeta {
            modules: sizes.1,
            budget: p.budget,
            input_dim: cfg.net.input_dim,
            hidden: cfg.net.hidden,
            extra_hidden_layers: cfg.net.extra_hidden_layers,
            val_ratio: p.val_ratio,
            split_seed,
            init_seed,
            best_round,
            rounds_run: state.engine.round,
        };
        let text = serde_json::to_string_pretty(&meta).map_err(err)?;
        std::fs::write(dir.join("config.json"), text + "\n")?;
        std::fs::write(
            ctx.out_dir().join("rounds.csv"),
            rounds_csv(&state.engine.metrics),
        )?;
        ctx.log(&format!(
            "budget {}: {} rounds, best round {best_round} (mean validation loss {best_loss})",
            p.budget, state.engine.round
        ));
        Ok(())
    }
}

/// `rounds.csv`: per round the clients' mean inner-loop loss, their mean validation loss and
/// who took part (`n_clients` is what the cost table counts).
fn rounds_csv(metrics: &[RoundMetrics]) -> String {
    let mut s = String::from("round,mean_train_loss,mean_val_loss,n_clients,clients\n");
    for m in metrics {
        let clients: Vec<String> = m.clients.iter().map(u32::to_string).collect();
        writeln!(
            s,
            "{},{},{},{},{}",
            m.round,
            m.mean_train_loss,
            m.eval.map(|e| e.to_string()).unwrap_or_default(),
            m.clients.len(),
            clients.join(" ")
        )
        .expect("string write");
    }
    s
}

/// The trained LR network of an upstream `psg/fedl2p` instance.
pub fn read_lr_net(dir: &Path, device: &Device) -> Result<(ParamStore, LrNetMeta), StageError> {
    let path = dir.join("lr_net").join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| StageError::msg(format!("{}: {e}", path.display())))?;
    let meta: LrNetMeta = serde_json::from_str(&text)
        .map_err(|e| StageError::msg(format!("{}: {e}", path.display())))?;
    let weights = dir.join("lr_net").join("model.safetensors");
    let store = load_lr_net(&weights, device).map_err(err)?;
    Ok((store, meta))
}

fn err(e: impl std::fmt::Display) -> StageError {
    StageError(e.to_string())
}
