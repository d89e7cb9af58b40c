//! The federated round loop (PAPER_NOTES §2), generic over what a client trains.
//!
//! Each round samples clients with a seed derived from (run seed, "sample", round), trains them
//! one after another from the current global weights (only one client's data and update alive
//! at a time besides the running [`FedAvg`] sum), aggregates, optionally evaluates, and hands a
//! serialisable [`EngineState`] to a callback so the caller can checkpoint it. Resuming from
//! that state ends bit-identical to an uninterrupted run because every draw of round `r` is
//! derived from (seed, r, client), never from a generator carried across rounds.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::aggregate::{FedAvg, FlError};
use super::sampling::sample_clients;
use crate::params::{safetensors_bytes, tensors_from_bytes, ParamError};
use crate::rng::derive_seed;

/// Named tensors in name order.
pub type Weights = BTreeMap<String, Tensor>;

/// Errors of the round loop; client failures name the client and round.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("round {round}: client {client}: {message}")]
    Client {
        round: u64,
        client: u32,
        message: String,
    },
    #[error("round {round}: evaluation: {message}")]
    Eval { round: u64, message: String },
    #[error("round {round}: client {client}: training loss is not finite ({loss})")]
    NonFiniteLoss { round: u64, client: u32, loss: f32 },
    #[error("no clients to sample from")]
    NoClients,
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("checkpoint callback after round {round}: {message}")]
    Callback { round: u64, message: String },
    #[error(transparent)]
    Fl(#[from] FlError),
    #[error(transparent)]
    Param(#[from] ParamError),
}

/// What one client returns after local training.
pub struct ClientUpdate {
    /// The weights to average (same names for every client of a round).
    pub weights: Weights,
    /// FedAvg weight: the client's number of training examples.
    pub n_examples: u64,
    /// Mean training loss over the client's local steps.
    pub mean_loss: f32,
    /// State that stays on the client (DEPT embeddings, FedDPA local adapters), if any.
    pub persistent: Option<Weights>,
    /// Named diagnostics of the client's round (averaged over the round's clients into
    /// [`RoundMetrics::extra`]), e.g. the PSG's regression losses.
    pub extra: BTreeMap<String, f64>,
}

/// Where the engine's calls to a client come from.
pub struct ClientRound<'a> {
    pub round: u64,
    pub client: u32,
    /// Seed for this client's local work in this round (shuffling, dropout).
    pub seed: u64,
    /// The current global weights.
    pub global: &'a Weights,
    /// The client's persistent state from its last participation, if any.
    pub persistent: Option<&'a Weights>,
}

/// Local training of one client; implementations load the client's shard, train, and free it.
pub trait LocalTrainer {
    /// Trains one client from `ctx.global`. Errors are plain messages; the engine adds the
    /// client id and round.
    fn train(&mut self, ctx: ClientRound<'_>) -> Result<ClientUpdate, String>;

    /// Optional evaluation of the new global weights (e.g. accuracy); `None` when not
    /// applicable.
    fn evaluate(&mut self, _round: u64, _global: &Weights) -> Result<Option<f64>, String> {
        Ok(None)
    }
}

/// Round-loop settings (PAPER_NOTES §2: 10% of clients per round).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    pub rounds: u64,
    pub fraction: f64,
    pub min_clients: usize,
    /// Evaluate after every `k` rounds (and after the last); `None` never.
    pub eval_every: Option<u64>,
    pub seed: u64,
}

/// Scalars recorded for one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundMetrics {
    /// 1-based round number.
    pub round: u64,
    /// Unweighted mean over participating clients of their mean local loss.
    pub mean_train_loss: f32,
    pub clients: Vec<u32>,
    pub wall_s: f64,
    pub eval: Option<f64>,
    /// Unweighted means over the round's clients of their [`ClientUpdate::extra`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

/// Everything needed to continue a run: checkpoint this after each round.
#[derive(Debug, Clone)]
pub struct EngineState {
    /// Rounds completed.
    pub round: u64,
    pub global: Weights,
    /// Per-client persistent state, by client id.
    pub persistent: BTreeMap<u32, Weights>,
    pub metrics: Vec<RoundMetrics>,
}

#[derive(Serialize, Deserialize)]
struct StateHeader {
    round: u64,
    metrics: Vec<RoundMetrics>,
    /// The exact bits of every round's `eval` and `extra`: serde_json's default float parsing
    /// can be one ulp off, and a resumed run must see the values it computed (FedL2P stops early
    /// on `eval`; FedP2EFT writes `extra` to diagnostics.csv). Absent in older checkpoints.
    #[serde(default)]
    eval_bits: Vec<Option<u64>>,
    #[serde(default)]
    extra_bits: Vec<BTreeMap<String, u64>>,
}

const MAGIC: &[u8; 8] = b"FLSTATE1";

impl EngineState {
    /// A fresh run starting from `global`.
    pub fn new(global: Weights) -> Self {
        Self {
            round: 0,
            global,
            persistent: BTreeMap::new(),
            metrics: Vec::new(),
        }
    }

    /// `MAGIC | u64 header length | JSON header | safetensors` (global tensors as `g/NAME`,
    /// client state as `c/ID/NAME`). Tensor bytes are exact, so a resumed run is bit-identical.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EngineError> {
        let header = serde_json::to_vec(&StateHeader {
            round: self.round,
            metrics: self.metrics.clone(),
            eval_bits: self
                .metrics
                .iter()
                .map(|m| m.eval.map(f64::to_bits))
                .collect(),
            extra_bits: self
                .metrics
                .iter()
                .map(|m| {
                    m.extra
                        .iter()
                        .map(|(k, v)| (k.clone(), v.to_bits()))
                        .collect()
                })
                .collect(),
        })
        .map_err(|e| EngineError::Checkpoint(e.to_string()))?;
        let mut tensors = HashMap::new();
        for (k, t) in &self.global {
            tensors.insert(format!("g/{k}"), t.clone());
        }
        for (c, w) in &self.persistent {
            for (k, t) in w {
                tensors.insert(format!("c/{c}/{k}"), t.clone());
            }
        }
        let body = safetensors_bytes(&tensors)?;
        let mut out = Vec::with_capacity(16 + header.len() + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self, EngineError> {
        let bad = |m: &str| EngineError::Checkpoint(m.to_string());
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(bad("not an FL engine state (bad magic)"));
        }
        let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
        let body_at = 16usize
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| bad("truncated header"))?;
        let mut header: StateHeader = serde_json::from_slice(&bytes[16..body_at])
            .map_err(|e| EngineError::Checkpoint(format!("header: {e}")))?;
        if header.eval_bits.len() == header.metrics.len() {
            for (m, bits) in header.metrics.iter_mut().zip(&header.eval_bits) {
                m.eval = bits.map(f64::from_bits);
            }
        }
        if header.extra_bits.len() == header.metrics.len() {
            for (m, bits) in header.metrics.iter_mut().zip(&header.extra_bits) {
                for (k, b) in bits {
                    m.extra.insert(k.clone(), f64::from_bits(*b));
                }
            }
        }
        let tensors = tensors_from_bytes(&bytes[body_at..], device)?;
        let mut global = Weights::new();
        let mut persistent: BTreeMap<u32, Weights> = BTreeMap::new();
        for (k, t) in tensors {
            if let Some(name) = k.strip_prefix("g/") {
                global.insert(name.to_string(), t);
            } else if let Some(rest) = k.strip_prefix("c/") {
                let (id, name) = rest
                    .split_once('/')
                    .ok_or_else(|| bad(&format!("tensor `{k}`: no client id")))?;
                let id: u32 = id
                    .parse()
                    .map_err(|_| bad(&format!("tensor `{k}`: bad client id")))?;
                persistent
                    .entry(id)
                    .or_default()
                    .insert(name.to_string(), t);
            } else {
                return Err(bad(&format!("unexpected tensor `{k}`")));
            }
        }
        Ok(Self {
            round: header.round,
            global,
            persistent,
            metrics: header.metrics,
        })
    }
}

/// The seed of the client draw of `round` (1-based).
pub fn sampling_seed(seed: u64, round: u64) -> u64 {
    derive_seed(seed, &["sample".into(), round.into()])
}

/// The seed of `client`'s local work in `round`.
pub fn client_seed(seed: u64, round: u64, client: u32) -> u64 {
    derive_seed(seed, &["client".into(), round.into(), client.into()])
}

/// Runs rounds `state.round + 1 ..= cfg.rounds`, calling `after_round` with the new state
/// after each. Returns the final state. A failing client aborts the run; nothing of that
/// round is aggregated or reported.
pub fn run_rounds<T, F>(
    cfg: &EngineConfig,
    clients: &[u32],
    trainer: &mut T,
    mut state: EngineState,
    mut after_round: F,
) -> Result<EngineState, EngineError>
where
    T: LocalTrainer + ?Sized,
    F: FnMut(&EngineState) -> Result<(), String>,
{
    if clients.is_empty() {
        return Err(EngineError::NoClients);
    }
    while state.round < cfg.rounds {
        let round = state.round + 1;
        let start = Instant::now();
        let sampled = sample_clients(
            clients,
            cfg.fraction,
            cfg.min_clients,
            sampling_seed(cfg.seed, round),
        );
        let mut agg = FedAvg::new(round);
        let mut losses = Vec::with_capacity(sampled.len());
        let mut extra: BTreeMap<String, f64> = BTreeMap::new();
        let mut new_persistent = Vec::new();
        for &client in &sampled {
            let update = trainer
                .train(ClientRound {
                    round,
                    client,
                    seed: client_seed(cfg.seed, round, client),
                    global: &state.global,
                    persistent: state.persistent.get(&client),
                })
                .map_err(|message| EngineError::Client {
                    round,
                    client,
                    message,
                })?;
            if !update.mean_loss.is_finite() {
                return Err(EngineError::NonFiniteLoss {
                    round,
                    client,
                    loss: update.mean_loss,
                });
            }
            agg.add(client, &update.weights, update.n_examples)?;
            losses.push(update.mean_loss);
            for (k, v) in &update.extra {
                *extra.entry(k.clone()).or_default() += v / sampled.len() as f64;
            }
            if let Some(p) = update.persistent {
                new_persistent.push((client, p));
            }
        }
        let global = agg.finish()?;
        let eval = match cfg.eval_every {
            Some(k) if k > 0 && (round % k == 0 || round == cfg.rounds) => trainer
                .evaluate(round, &global)
                .map_err(|message| EngineError::Eval { round, message })?,
            _ => None,
        };
        // Commit the round only now that everything succeeded.
        state.global = global;
        state.persistent.extend(new_persistent);
        state.round = round;
        state.metrics.push(RoundMetrics {
            round,
            mean_train_loss: losses.iter().sum::<f32>() / losses.len() as f32,
            clients: sampled,
            wall_s: start.elapsed().as_secs_f64(),
            eval,
            extra,
        });
        after_round(&state).map_err(|message| EngineError::Callback { round, message })?;
    }
    Ok(state)
}

/// `rounds.csv`: one line per round.
/// Per-round metrics as CSV. Wall time stays out: this is an artifact, and artifacts must be
/// bit-identical across runs of the same manifest (timings live in the instance's meta.json).
pub fn rounds_csv(metrics: &[RoundMetrics]) -> String {
    let mut s = String::from("round,mean_train_loss,n_clients,clients,eval\n");
    for m in metrics {
        let clients: Vec<String> = m.clients.iter().map(u32::to_string).collect();
        s.push_str(&format!(
            "{},{},{},{},{}\n",
            m.round,
            m.mean_train_loss,
            m.clients.len(),
            clients.join(" "),
            m.eval.map(|e| e.to_string()).unwrap_or_default()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    /// A client that moves every weight towards its id and keeps a per-client counter.
    struct Toward {
        fail: Option<(u64, u32)>,
    }

    impl LocalTrainer for Toward {
        fn train(&mut self, ctx: ClientRound<'_>) -> Result<ClientUpdate, String> {
            if self.fail == Some((ctx.round, ctx.client)) {
                return Ok(ClientUpdate {
                    weights: ctx.global.clone(),
                    n_examples: 1,
                    mean_loss: f32::NAN,
                    persistent: None,
                    extra: BTreeMap::new(),
                });
            }
            let mut weights = Weights::new();
            for (k, t) in ctx.global {
                // Seed-dependent noise makes any seed mix-up on resume visible.
                let noise = (ctx.seed % 1000) as f64 * 1e-6;
                let v = ((t * 0.5).unwrap() + (ctx.client as f64 * 0.5 + noise)).unwrap();
                weights.insert(k.clone(), v);
            }
            let count = match ctx.persistent {
                Some(p) => (p["count"].clone() + 1.0).unwrap(),
                None => Tensor::ones(1, DType::F32, &Device::Cpu).unwrap(),
            };
            Ok(ClientUpdate {
                weights,
                n_examples: u64::from(ctx.client) + 1,
                mean_loss: ctx.client as f32,
                persistent: Some([("count".to_string(), count)].into()),
                extra: BTreeMap::new(),
            })
        }
    }

    fn init() -> EngineState {
        EngineState::new(
            [(
                "w".to_string(),
                Tensor::new(&[0.1f32, -0.2, 0.3], &Device::Cpu).unwrap(),
            )]
            .into(),
        )
    }

    fn cfg(rounds: u64) -> EngineConfig {
        EngineConfig {
            rounds,
            fraction: 0.5,
            min_clients: 1,
            eval_every: None,
            seed: 9,
        }
    }

    fn bytes(s: &EngineState) -> Vec<f32> {
        s.global["w"].to_vec1::<f32>().unwrap()
    }

    #[test]
    fn resume_from_serialised_state_is_bit_identical() {
        let clients: Vec<u32> = (0..6).collect();
        let mut t = Toward { fail: None };
        let mut seen = 0;
        let straight = run_rounds(&cfg(5), &clients, &mut t, init(), |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 5);
        let mut saved = None;
        let first = run_rounds(&cfg(2), &clients, &mut t, init(), |s| {
            saved = Some(s.to_bytes().map_err(|e| e.to_string())?);
            Ok(())
        })
        .unwrap();
        assert_eq!(first.round, 2);
        let restored = EngineState::from_bytes(&saved.unwrap(), &Device::Cpu).unwrap();
        assert_eq!(restored.persistent.len(), first.persistent.len());
        let resumed = run_rounds(&cfg(5), &clients, &mut t, restored, |_| Ok(())).unwrap();
        assert_eq!(bytes(&straight), bytes(&resumed));
        assert_eq!(straight.round, 5);
        let clients_of = |s: &EngineState| -> Vec<Vec<u32>> {
            s.metrics.iter().map(|m| m.clients.clone()).collect()
        };
        assert_eq!(clients_of(&straight), clients_of(&resumed));
        for (c, p) in &straight.persistent {
            assert_eq!(
                p["count"].to_vec1::<f32>().unwrap(),
                resumed.persistent[c]["count"].to_vec1::<f32>().unwrap()
            );
        }
        assert!(straight
            .persistent
            .values()
            .any(|p| p["count"].to_vec1::<f32>().unwrap()[0] > 1.0));
    }

    /// Found by the crash campaign: a psg/fedp2eft run resumed after its last round wrote
    /// diagnostics.csv with `regression_l1_last` one ulp off the uninterrupted run's.
    #[test]
    fn extra_metrics_survive_the_checkpoint_bit_for_bit() {
        let mut s = init();
        // serde_json alone parses this back as ...525825.
        let v = 0.012475298451525823f64;
        s.metrics.push(RoundMetrics {
            round: 1,
            mean_train_loss: 0.5,
            clients: vec![1],
            wall_s: 0.0,
            eval: None,
            extra: BTreeMap::from([("regression_l1_last".to_string(), v)]),
        });
        let back = EngineState::from_bytes(&s.to_bytes().unwrap(), &Device::Cpu).unwrap();
        assert_eq!(
            back.metrics[0].extra["regression_l1_last"].to_bits(),
            v.to_bits()
        );
    }

    #[test]
    fn evaluation_values_survive_the_checkpoint_bit_for_bit() {
        let mut s = init();
        // serde_json alone parses this back one ulp off.
        let v = 1.9441486597061157f64;
        s.metrics.push(RoundMetrics {
            round: 1,
            mean_train_loss: 0.5,
            clients: vec![1],
            wall_s: 0.0,
            eval: Some(v),
            extra: BTreeMap::new(),
        });
        let back = EngineState::from_bytes(&s.to_bytes().unwrap(), &Device::Cpu).unwrap();
        assert_eq!(back.metrics[0].eval.map(f64::to_bits), Some(v.to_bits()));
    }

    #[test]
    fn non_finite_loss_fails_naming_client_and_round() {
        let clients: Vec<u32> = (0..4).collect();
        let full = EngineConfig {
            fraction: 1.0,
            ..cfg(3)
        };
        let mut t = Toward { fail: Some((2, 3)) };
        let mut rounds_reported = Vec::new();
        let e = run_rounds(&full, &clients, &mut t, init(), |s| {
            rounds_reported.push(s.round);
            Ok(())
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "round 2: client 3: training loss is not finite (NaN)"
        );
        assert_eq!(rounds_reported, vec![1]);
    }

    #[test]
    fn client_error_and_garbage_checkpoint_are_reported() {
        struct Empty;
        impl LocalTrainer for Empty {
            fn train(&mut self, _: ClientRound<'_>) -> Result<ClientUpdate, String> {
                Err("no training examples".into())
            }
        }
        let e = run_rounds(&cfg(1), &[7], &mut Empty, init(), |_| Ok(())).unwrap_err();
        assert_eq!(e.to_string(), "round 1: client 7: no training examples");
        assert!(EngineState::from_bytes(b"nonsense", &Device::Cpu).is_err());
        assert!(matches!(
            run_rounds(&cfg(1), &[], &mut Empty, init(), |_| Ok(())),
            Err(EngineError::NoClients)
        ));
    }
}
