//! The local training of Standard FL and DEPT(SPEC) (PAPER_NOTES §2), for both tasks: a client
//! copies the global weights into one model kept for the whole run (memory stays flat), creates
//! a fresh AdamW optimiser as a Flower client does, trains its shard and returns its weights.
//! BERT classifiers are fully fine-tuned for `epochs` passes; a LLaMA trains a LoRA for a fixed
//! number of steps on a per-round subset of its shard, with the round's lr from a cosine
//! schedule over rounds (2e-5 → 1e-6) and gradient accumulation (4 × 4).
//!
//! Only trainable parameters are averaged (all of them for full fine-tuning, the adapters for
//! LoRA). Parameters matching `keep_local` (DEPT: `*_embeddings*`) never leave the client: they
//! start from the pretrained values and come back as the client's persistent state.

use datasets::Example;

use super::engine::{ClientRound, ClientUpdate, LocalTrainer, Weights};
use crate::fit::{mean_loss, train_local, LocalSgdConfig};
use crate::params::ParamStore;
use crate::task::{Net, TaskModel};

/// Loads a client's training examples by id.
pub type ShardLoader<'a> = Box<dyn Fn(u32) -> Result<Vec<Example>, String> + 'a>;

/// Predicate naming the parameters kept on the client.
pub type LocalPredicate = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Standard-FL client for [`super::engine::run_rounds`].
pub struct FedAvgClient<'a> {
    task: TaskModel,
    net: Net,
    cfg: LocalSgdConfig,
    load: ShardLoader<'a>,
    keep_local: Option<LocalPredicate>,
    initial_local: Weights,
    eval: Option<(Vec<Example>, usize)>,
}

impl<'a> FedAvgClient<'a> {
    /// `net` must be built over `task`'s store, whose trainable parameters are trained.
    pub fn new(
        task: TaskModel,
        net: Net,
        cfg: LocalSgdConfig,
        load: ShardLoader<'a>,
        keep_local: Option<LocalPredicate>,
    ) -> Result<Self, String> {
        let initial_local = match &keep_local {
            Some(p) => export(task.store(), p)?,
            None => Weights::new(),
        };
        Ok(Self {
            task,
            net,
            cfg,
            load,
            keep_local,
            initial_local,
            eval: None,
        })
    }

    /// Examples on which [`LocalTrainer::evaluate`] measures the global model's accuracy
    /// (client-local parameters at their starting values), in batches of `batch_size`.
    pub fn with_eval(mut self, examples: Vec<Example>, batch_size: usize) -> Self {
        self.eval = Some((examples, batch_size.max(1)));
        self
    }

    /// The weights the server averages: the trainable parameters not kept local.
    pub fn shared_weights(&self) -> Result<Weights, String> {
        let local = &self.keep_local;
        let store = self.task.store();
        export(store, |n| {
            store.is_trainable(n) && !local.as_ref().is_some_and(|p| p(n))
        })
    }
}

/// The parameters of `store` selected by name, as the weights a client sends.
pub(crate) fn export(store: &ParamStore, select: impl Fn(&str) -> bool) -> Result<Weights, String> {
    Ok(store
        .export(select)
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect())
}

/// Copies `w` into the store's parameters of the same names.
pub(crate) fn assign(store: &mut ParamStore, w: &Weights) -> Result<(), String> {
    let map = w.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    store.assign(&map).map_err(|e| e.to_string())
}

/// Share of `examples` whose arg-max prediction equals the label (eval mode, no dropout).
pub fn accuracy(task: &TaskModel, examples: &[Example], batch_size: usize) -> Result<f64, String> {
    if examples.is_empty() {
        return Err("no evaluation examples".into());
    }
    let out = task.evaluate(task.store(), examples, batch_size)?;
    if out.labels().is_none() {
        return Err("accuracy needs a classification model".into());
    }
    Ok(out.correct() as f64 / examples.len() as f64)
}

impl LocalTrainer for FedAvgClient<'_> {
    fn evaluate(&mut self, _round: u64, global: &Weights) -> Result<Option<f64>, String> {
        let Some((examples, batch_size)) = &self.eval else {
            return Ok(None);
        };
        assign(self.task.store_mut(), global)?;
        if self.keep_local.is_some() {
            assign(self.task.store_mut(), &self.initial_local)?;
        }
        accuracy(&self.task, examples, *batch_size).map(Some)
    }

    fn train(&mut self, ctx: ClientRound<'_>) -> Result<ClientUpdate, String> {
        let examples = (self.load)(ctx.client)?;
        if examples.is_empty() {
            return Err("no training examples".into());
        }
        assign(self.task.store_mut(), ctx.global)?;
        if self.keep_local.is_some() {
            let local = ctx.persistent.unwrap_or(&self.initial_local);
            assign(self.task.store_mut(), local)?;
        }
        let examples = self.task.trainable(&examples)?;
        let task = &self.task;
        let batch = |ex: &[Example], idx: &[usize]| task.batch(ex, idx);
        let (losses, used) = train_local(
            &self.net,
            &batch,
            self.task.store(),
            &examples,
            &self.cfg,
            self.cfg.lr_at(ctx.round),
            ctx.seed,
        )?;
        let persistent = match &self.keep_local {
            Some(p) => Some(export(self.task.store(), p)?),
            None => None,
        };
        Ok(ClientUpdate {
            weights: self.shared_weights()?,
            // FedAvg weight: the examples trained on (the round's subset with `max_steps`).
            n_examples: used as u64,
            mean_loss: mean_loss(&losses),
            persistent,
            extra: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::RoundLr;
    use crate::fl::engine::{client_seed, run_rounds, EngineConfig, EngineState};
    use crate::model::bert::{random_init, BertConfig};
    use crate::peft::AdapterSpec;
    use crate::task::ClassifierModel;
    use crate::tokenize::{train_wordpiece, TextTokenizer};
    use candle_core::{DType, Device};

    fn shard(client: u32, n: usize) -> Vec<Example> {
        let words = [
            "sun", "rain", "goal", "vote", "bank", "song", "film", "team",
        ];
        (0..n)
            .map(|i| Example {
                text_a: format!(
                    "{} {} news {}",
                    words[(i + client as usize) % 8],
                    words[(i * 3) % 8],
                    i
                ),
                text_b: None,
                label_id: Some(((i + client as usize) % 3) as u32),
                language: "eng".into(),
            })
            .collect()
    }

    struct Setup {
        task: TaskModel,
        net: Net,
    }

    fn setup() -> Setup {
        let texts: Vec<String> = (0..3).flat_map(|c| shard(c, 8)).map(|e| e.text_a).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tok = TextTokenizer::new(train_wordpiece(&refs, 60).unwrap(), "[PAD]").unwrap();
        let config = BertConfig::tiny(tok.vocab_size());
        let mut store = random_init(&config, 3, 17, &Device::Cpu, DType::F32).unwrap();
        store.set_trainable(|_| true).unwrap();
        let task = TaskModel::Classifier(ClassifierModel {
            config,
            max_len: 512,
            store,
            tokenizer: tok,
            tokenizer_json: String::new(),
        });
        let net = task.net(task.store(), &AdapterSpec::NONE).unwrap();
        Setup { task, net }
    }

    const SGD: LocalSgdConfig = LocalSgdConfig {
        lr: 1e-3,
        weight_decay: 0.0,
        epochs: 2,
        batch_size: 3,
        accumulate: 1,
        max_steps: None,
        round_lr: RoundLr::Constant,
    };

    fn client(s: Setup, local: Option<LocalPredicate>) -> FedAvgClient<'static> {
        FedAvgClient::new(s.task, s.net, SGD, Box::new(|c| Ok(shard(c, 8))), local).unwrap()
    }

    fn engine(rounds: u64) -> EngineConfig {
        EngineConfig {
            rounds,
            fraction: 1.0,
            min_clients: 1,
            eval_every: None,
            seed: 5,
        }
    }

    fn flat(w: &Weights) -> Vec<f32> {
        w.values()
            .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    /// One client, full participation: FedAvg must equal plain local training on that client
    /// with the same seeds, round after round (8 examples: ×8 then ×1/8 is exact in f32).
    #[test]
    fn one_client_fedavg_equals_centralized_training() {
        let mut c = client(setup(), None);
        let init = c.shared_weights().unwrap();
        let fl = run_rounds(
            &engine(2),
            &[2],
            &mut c,
            EngineState::new(init.clone()),
            |_| Ok(()),
        )
        .unwrap();

        let s = setup();
        let data = shard(2, 8);
        let mut losses = Vec::new();
        let batch = |ex: &[Example], idx: &[usize]| s.task.batch(ex, idx);
        for round in 1..=2 {
            let (l, _) = train_local(
                &s.net,
                &batch,
                s.task.store(),
                &data,
                &SGD,
                SGD.lr,
                client_seed(5, round, 2),
            )
            .unwrap();
            losses.push(mean_loss(&l));
        }
        let central: Weights = s
            .task
            .store()
            .export(|_| true)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(flat(&fl.global), flat(&central));
        assert_ne!(
            flat(&init),
            flat(&central),
            "training must move the weights"
        );
        let fl_losses: Vec<f32> = fl.metrics.iter().map(|m| m.mean_train_loss).collect();
        assert_eq!(fl_losses, losses);
    }

    #[test]
    fn evaluation_every_k_rounds_reports_accuracy() {
        let c = client(setup(), None).with_eval(shard(0, 8), 3);
        let mut c = c;
        let init = c.shared_weights().unwrap();
        let cfg = EngineConfig {
            eval_every: Some(2),
            ..engine(3)
        };
        let st = run_rounds(&cfg, &[0, 1], &mut c, EngineState::new(init), |_| Ok(())).unwrap();
        let evals: Vec<Option<f64>> = st.metrics.iter().map(|m| m.eval).collect();
        assert!(evals[0].is_none());
        // Round 2 (every k) and round 3 (last) are evaluated; accuracy is a multiple of 1/8.
        for e in [evals[1], evals[2]] {
            let a = e.expect("evaluated");
            assert!((0.0..=1.0).contains(&a) && (a * 8.0).fract() == 0.0, "{a}");
        }
        // The same numbers come from evaluating the final global weights directly.
        let again = c.evaluate(3, &st.global).unwrap().unwrap();
        assert_eq!(Some(again), evals[2]);
    }

    #[test]
    fn checkpoint_resume_is_bit_identical_with_local_embeddings() {
        let local = || -> Option<LocalPredicate> { Some(Box::new(|n| n.contains("_embeddings"))) };
        let clients = [0u32, 1, 2];
        let cfg = EngineConfig {
            fraction: 0.5,
            ..engine(3)
        };
        let mut a = client(setup(), local());
        let init = a.shared_weights().unwrap();
        assert!(init.keys().all(|k| !k.contains("_embeddings")));
        let straight = run_rounds(
            &cfg,
            &clients,
            &mut a,
            EngineState::new(init.clone()),
            |_| Ok(()),
        )
        .unwrap();

        let mut b = client(setup(), local());
        let mut saved = Vec::new();
        let partial = EngineConfig {
            rounds: 1,
            ..cfg.clone()
        };
        run_rounds(&partial, &clients, &mut b, EngineState::new(init), |s| {
            saved = s.to_bytes().map_err(|e| e.to_string())?;
            Ok(())
        })
        .unwrap();
        let mut c = client(setup(), local());
        let restored = EngineState::from_bytes(&saved, &Device::Cpu).unwrap();
        let resumed = run_rounds(&cfg, &clients, &mut c, restored, |_| Ok(())).unwrap();
        assert_eq!(flat(&straight.global), flat(&resumed.global));
        assert!(!straight.persistent.is_empty());
        assert_eq!(
            straight.persistent.keys().collect::<Vec<_>>(),
            resumed.persistent.keys().collect::<Vec<_>>()
        );
        for (id, w) in &straight.persistent {
            assert!(w.keys().all(|k| k.contains("_embeddings")));
            assert_eq!(flat(w), flat(&resumed.persistent[id]));
        }
    }

    #[test]
    fn empty_shard_and_missing_label_fail_with_client_and_round() {
        let s = setup();
        let mut c = FedAvgClient::new(
            s.task,
            s.net,
            SGD,
            Box::new(|c| {
                if c == 1 {
                    Ok(Vec::new())
                } else {
                    let mut v = shard(c, 4);
                    v[2].label_id = None;
                    Ok(v)
                }
            }),
            None,
        )
        .unwrap();
        let init = c.shared_weights().unwrap();
        let e = run_rounds(
            &engine(1),
            &[1],
            &mut c,
            EngineState::new(init.clone()),
            |_| Ok(()),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "round 1: client 1: no training examples");
        let e =
            run_rounds(&engine(1), &[0], &mut c, EngineState::new(init), |_| Ok(())).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("round 1: client 0: example #2 has no label_id"),
            "{e}"
        );
    }
}
