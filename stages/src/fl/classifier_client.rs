//! A federated client that fine-tunes a BERT sequence classifier on its shard: the local
//! training of Standard FL and DEPT(SPEC) (PAPER_NOTES §2). Each round it copies the global
//! weights into one model kept for the whole run (memory stays flat), creates a fresh AdamW
//! optimiser as a Flower client does, runs `epochs` shuffled passes and returns its weights.
//!
//! Parameters matching `keep_local` (DEPT: `*_embeddings*`) never leave the client: they start
//! from the pretrained values and come back as the client's persistent state.

use candle_core::{Device, Tensor};
use datasets::Example;

use super::engine::{ClientRound, ClientUpdate, LocalTrainer, Weights};
use crate::fit::Fit;
use crate::model::bert::{BertForSequenceClassification, BertInput};
use crate::optim::{Adam, AdamConfig, ParamGroup};
use crate::params::ParamStore;
use crate::tokenize::{PaddingSide, TextTokenizer};
use crate::train::{ClassifierBatch, Regulariser};

/// Local optimisation settings (PAPER_NOTES §2: AdamW, lr 5e-5, wd 0, 2 epochs, batch 32).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalSgdConfig {
    pub lr: f64,
    pub weight_decay: f64,
    pub epochs: usize,
    pub batch_size: usize,
}

/// Tokenises `examples[order]` into one classification batch (pairs when `text_b` is set),
/// right-padded to the longest row.
pub fn classifier_batch(
    examples: &[Example],
    order: &[usize],
    tokenizer: &TextTokenizer,
    device: &Device,
) -> Result<ClassifierBatch, String> {
    let mut labels = Vec::with_capacity(order.len());
    for &i in order {
        labels.push(
            examples[i]
                .label_id
                .ok_or_else(|| format!("example #{i} has no label_id"))?,
        );
    }
    let enc = if order.iter().all(|&i| examples[i].text_b.is_some()) {
        let pairs: Vec<(&str, &str)> = order
            .iter()
            .map(|&i| {
                let e = &examples[i];
                (e.text_a.as_str(), e.text_b.as_deref().unwrap_or(""))
            })
            .collect();
        tokenizer.encode_pair_batch(&pairs, PaddingSide::Right)
    } else {
        let texts: Vec<&str> = order.iter().map(|&i| examples[i].text_a.as_str()).collect();
        tokenizer.encode_batch(&texts, PaddingSide::Right)
    }
    .map_err(|e| e.to_string())?;
    let (input_ids, attention_mask, token_type_ids) =
        enc.to_tensors(device).map_err(|e| e.to_string())?;
    let labels = Tensor::new(labels, device).map_err(|e| e.to_string())?;
    Ok(ClassifierBatch {
        input: BertInput {
            input_ids,
            attention_mask,
            token_type_ids,
        },
        labels,
    })
}

/// `epochs` shuffled passes of AdamW over `examples` with a fresh optimiser on the store's
/// trainable parameters; returns the mean loss over steps. Shuffling and dropout draw from
/// seeds derived from `seed`, so the same call is bit-reproducible.
pub fn train_local(
    model: &BertForSequenceClassification,
    store: &ParamStore,
    examples: &[Example],
    tokenizer: &TextTokenizer,
    cfg: &LocalSgdConfig,
    seed: u64,
) -> Result<f32, String> {
    let mut opt = Adam::new(
        AdamConfig::adamw(),
        vec![ParamGroup {
            params: store.trainable(),
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
        }],
    )
    .map_err(|e| e.to_string())?;
    let fit = Fit {
        tokenizer,
        device: store.device(),
        epochs: cfg.epochs,
        batch_size: cfg.batch_size,
        reg: Regulariser::None,
        clip: None,
    };
    crate::fit::fit(model, examples, &mut opt, &fit, seed, |_, _| Ok(()))
}

/// Loads a client's training examples by id.
pub type ShardLoader<'a> = Box<dyn Fn(u32) -> Result<Vec<Example>, String> + 'a>;

/// Predicate naming the parameters kept on the client.
pub type LocalPredicate = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Full fine-tuning client for [`super::engine::run_rounds`].
pub struct ClassifierClient<'a> {
    store: ParamStore,
    model: BertForSequenceClassification,
    tokenizer: TextTokenizer,
    cfg: LocalSgdConfig,
    load: ShardLoader<'a>,
    keep_local: Option<LocalPredicate>,
    initial_local: Weights,
    eval: Option<(Vec<Example>, usize)>,
}

impl<'a> ClassifierClient<'a> {
    /// `store` must hold every parameter as trainable and `model` be built from it.
    pub fn new(
        store: ParamStore,
        model: BertForSequenceClassification,
        tokenizer: TextTokenizer,
        cfg: LocalSgdConfig,
        load: ShardLoader<'a>,
        keep_local: Option<LocalPredicate>,
    ) -> Result<Self, String> {
        let initial_local = match &keep_local {
            Some(p) => export(&store, p)?,
            None => Weights::new(),
        };
        Ok(Self {
            store,
            model,
            tokenizer,
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

    /// The weights the server averages: everything not kept local.
    pub fn shared_weights(&self) -> Result<Weights, String> {
        let local = &self.keep_local;
        export(&self.store, |n| !local.as_ref().is_some_and(|p| p(n)))
    }
}

fn export(store: &ParamStore, select: impl Fn(&str) -> bool) -> Result<Weights, String> {
    Ok(store
        .export(select)
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect())
}

fn assign(store: &mut ParamStore, w: &Weights) -> Result<(), String> {
    let map = w.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    store.assign(&map).map_err(|e| e.to_string())
}

/// Share of `examples` whose arg-max prediction equals the label (eval mode, no dropout).
pub fn accuracy(
    model: &BertForSequenceClassification,
    examples: &[Example],
    tokenizer: &TextTokenizer,
    batch_size: usize,
    device: &Device,
) -> Result<f64, String> {
    if examples.is_empty() {
        return Err("no evaluation examples".into());
    }
    let mut correct = 0usize;
    let idx: Vec<usize> = (0..examples.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let batch = classifier_batch(examples, chunk, tokenizer, device)?;
        let pred = crate::train::predict(model, &batch.input).map_err(|e| e.to_string())?;
        let gold = batch.labels.to_vec1::<u32>().map_err(|e| e.to_string())?;
        correct += pred.iter().zip(&gold).filter(|(p, g)| p == g).count();
    }
    Ok(correct as f64 / examples.len() as f64)
}

impl LocalTrainer for ClassifierClient<'_> {
    fn evaluate(&mut self, _round: u64, global: &Weights) -> Result<Option<f64>, String> {
        let Some((examples, batch_size)) = &self.eval else {
            return Ok(None);
        };
        assign(&mut self.store, global)?;
        if self.keep_local.is_some() {
            assign(&mut self.store, &self.initial_local)?;
        }
        let device = self.store.device().clone();
        accuracy(&self.model, examples, &self.tokenizer, *batch_size, &device).map(Some)
    }

    fn train(&mut self, ctx: ClientRound<'_>) -> Result<ClientUpdate, String> {
        let examples = (self.load)(ctx.client)?;
        if examples.is_empty() {
            return Err("no training examples".into());
        }
        assign(&mut self.store, ctx.global)?;
        if self.keep_local.is_some() {
            let local = ctx.persistent.unwrap_or(&self.initial_local);
            assign(&mut self.store, local)?;
        }
        let mean_loss = train_local(
            &self.model,
            &self.store,
            &examples,
            &self.tokenizer,
            &self.cfg,
            ctx.seed,
        )?;
        let persistent = match &self.keep_local {
            Some(p) => Some(export(&self.store, p)?),
            None => None,
        };
        Ok(ClientUpdate {
            weights: self.shared_weights()?,
            n_examples: examples.len() as u64,
            mean_loss,
            persistent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fl::engine::{client_seed, run_rounds, EngineConfig, EngineState};
    use crate::model::bert::{random_init, BertConfig};
    use crate::peft::AdapterSpec;
    use crate::tokenize::train_wordpiece;
    use candle_core::DType;

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
        store: ParamStore,
        model: BertForSequenceClassification,
        tok: TextTokenizer,
    }

    fn setup() -> Setup {
        let texts: Vec<String> = (0..3).flat_map(|c| shard(c, 8)).map(|e| e.text_a).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tok = TextTokenizer::new(train_wordpiece(&refs, 60).unwrap(), "[PAD]").unwrap();
        let cfg = BertConfig::tiny(tok.vocab_size());
        let mut store = random_init(&cfg, 3, 17, &Device::Cpu, DType::F32).unwrap();
        store.set_trainable(|_| true).unwrap();
        let model = BertForSequenceClassification::load(&store, &cfg, &AdapterSpec::NONE).unwrap();
        Setup { store, model, tok }
    }

    const SGD: LocalSgdConfig = LocalSgdConfig {
        lr: 1e-3,
        weight_decay: 0.0,
        epochs: 2,
        batch_size: 3,
    };

    fn client(s: Setup, local: Option<LocalPredicate>) -> ClassifierClient<'static> {
        ClassifierClient::new(
            s.store,
            s.model,
            s.tok,
            SGD,
            Box::new(|c| Ok(shard(c, 8))),
            local,
        )
        .unwrap()
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
        for round in 1..=2 {
            let l = train_local(
                &s.model,
                &s.store,
                &data,
                &s.tok,
                &SGD,
                client_seed(5, round, 2),
            )
            .unwrap();
            losses.push(l);
        }
        let central: Weights = s.store.export(|_| true).unwrap().into_iter().collect();
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
        let mut c = ClassifierClient::new(
            s.store,
            s.model,
            s.tok,
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
