//! FedDPA-T client (PAPER_NOTES §2): a shared *global* LoRA and a per-client *local* LoRA (both
//! r = 8, α = 8, dropout 0.05 on query/value [code]); the classifier is shared with the global
//! adapter. Each round [code]: train the global adapter + classifier from the server's values,
//! merge it into the base, then train the client's local adapter on top. Only the global adapter
//! and classifier are sent; the local adapter is the client's persistent state.

use candle_core::DType;
use datasets::Example;

use super::engine::{ClientRound, ClientUpdate, LocalTrainer, Weights};
use super::fedavg_client::{assign, export, ShardLoader};
use crate::fit::{mean_loss, train_local, LocalSgdConfig};
use crate::model::bert::{BertConfig, BertForSequenceClassification};
use crate::params::ParamStore;
use crate::peft::lora::{add_lora, merge_into_store, TargetModules};
use crate::peft::{is_adapter_param, AdapterKind, AdapterSpec, LinearShape};
use crate::rng::derive_seed;
use crate::task::{classifier_batch, Batch, Net};
use crate::tokenize::TextTokenizer;

/// FedDPA-T adapter settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpaConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
}

impl DpaConfig {
    /// r = 8, α = 8 [code], dropout 0.05 (PAPER_NOTES §2).
    pub fn paper() -> Self {
        Self {
            rank: 8,
            alpha: 8.0,
            dropout: 0.05,
        }
    }

    pub fn spec(&self) -> AdapterSpec {
        AdapterSpec {
            kind: AdapterKind::Lora { alpha: self.alpha },
            dropout: self.dropout,
        }
    }
}

fn is_classifier(name: &str) -> bool {
    name.starts_with("classifier.")
}

/// Parameters the server averages: the global adapter and the classifier.
pub fn is_dpa_shared(name: &str) -> bool {
    is_adapter_param(name) || is_classifier(name)
}

/// Adds a fresh LoRA on query/value to `store` (A from `seed`, B = 0).
pub fn add_qv_lora(
    store: &mut ParamStore,
    cfg: &BertConfig,
    num_labels: usize,
    dpa: &DpaConfig,
    seed: u64,
) -> Result<Vec<LinearShape>, String> {
    let targets = TargetModules::Names(vec!["query".into(), "value".into()])
        .select(&cfg.linear_modules(num_labels));
    add_lora(store, &targets, |_| dpa.rank, seed, DType::F32).map_err(|e| e.to_string())?;
    Ok(targets)
}

/// The FedDPA-T client for [`super::engine::run_rounds`].
pub struct FedDpaClient<'a> {
    /// Pretrained base (frozen) plus the initial global adapter and classifier.
    base: ParamStore,
    config: BertConfig,
    num_labels: usize,
    modules: Vec<LinearShape>,
    dpa: DpaConfig,
    tokenizer: TextTokenizer,
    sgd: LocalSgdConfig,
    load: ShardLoader<'a>,
    /// Seed of each client's initial local adapter (stable across rounds).
    local_seed: u64,
}

impl<'a> FedDpaClient<'a> {
    /// `base` holds the pretrained model, its classifier and the initial global q/v adapter
    /// (see [`add_qv_lora`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        base: ParamStore,
        config: BertConfig,
        num_labels: usize,
        dpa: DpaConfig,
        tokenizer: TextTokenizer,
        sgd: LocalSgdConfig,
        load: ShardLoader<'a>,
        local_seed: u64,
    ) -> Self {
        let modules = TargetModules::Names(vec!["query".into(), "value".into()])
            .select(&config.linear_modules(num_labels));
        Self {
            base,
            config,
            num_labels,
            modules,
            dpa,
            tokenizer,
            sgd,
            load,
            local_seed,
        }
    }

    /// The initial global weights (adapter + classifier).
    pub fn shared_weights(&self) -> Result<Weights, String> {
        Ok(self
            .base
            .export(is_dpa_shared)
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect())
    }

    fn phase(&self, store: &ParamStore, examples: &[Example], seed: u64) -> Result<f32, String> {
        let model = BertForSequenceClassification::load(store, &self.config, &self.dpa.spec())
            .map_err(|e| e.to_string())?;
        let (tok, device) = (&self.tokenizer, store.device());
        let batch = |ex: &[Example], idx: &[usize]| {
            classifier_batch(ex, idx, tok, device).map(Batch::Classifier)
        };
        train_local(
            &Net::Bert(model),
            &batch,
            store,
            examples,
            &self.sgd,
            self.sgd.lr,
            seed,
        )
        .map(|(losses, _)| mean_loss(&losses))
    }
}

impl LocalTrainer for FedDpaClient<'_> {
    fn train(&mut self, ctx: ClientRound<'_>) -> Result<ClientUpdate, String> {
        let examples = (self.load)(ctx.client)?;
        if examples.is_empty() {
            return Err("no training examples".into());
        }
        // Phase 1: global adapter + classifier from the server's values. The clone shares the
        // frozen base tensors; trainable ones get fresh storage from `set_trainable`.
        let mut store = self.base.clone();
        store.set_trainable(|_| false).map_err(|e| e.to_string())?;
        store
            .set_trainable(is_dpa_shared)
            .map_err(|e| e.to_string())?;
        assign(&mut store, ctx.global)?;
        let global_loss =
            self.phase(&store, &examples, derive_seed(ctx.seed, &["global".into()]))?;
        let weights = export(&store, is_dpa_shared)?;

        // Phase 2: merge the trained global adapter, then train the local one alone.
        merge_into_store(&mut store, &self.modules, &self.dpa.spec()).map_err(|e| e.to_string())?;
        store.set_trainable(|_| false).map_err(|e| e.to_string())?;
        add_qv_lora(
            &mut store,
            &self.config,
            self.num_labels,
            &self.dpa,
            derive_seed(self.local_seed, &[ctx.client.into()]),
        )?;
        if let Some(local) = ctx.persistent {
            assign(&mut store, local)?;
        }
        let local_loss = self.phase(&store, &examples, derive_seed(ctx.seed, &["local".into()]))?;
        let persistent = export(&store, is_adapter_param)?;
        Ok(ClientUpdate {
            weights,
            n_examples: examples.len() as u64,
            mean_loss: (global_loss + local_loss) / 2.0,
            persistent: Some(persistent),
            extra: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fl::engine::{run_rounds, EngineConfig, EngineState};
    use crate::model::bert::random_init;
    use crate::tokenize::train_wordpiece;
    use candle_core::Device;

    fn shard(c: u32) -> Vec<Example> {
        (0..6)
            .map(|i| Example {
                text_a: format!("team {c} match {i} goal"),
                text_b: None,
                label_id: Some(((i + c as usize) % 2) as u32),
                language: "eng".into(),
            })
            .collect()
    }

    fn client() -> FedDpaClient<'static> {
        let texts: Vec<String> = (0..3).flat_map(shard).map(|e| e.text_a).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tok = TextTokenizer::new(train_wordpiece(&refs, 40).unwrap(), "[PAD]").unwrap();
        let cfg = BertConfig::tiny(tok.vocab_size());
        let mut store = random_init(&cfg, 2, 4, &Device::Cpu, DType::F32).unwrap();
        let dpa = DpaConfig::paper();
        add_qv_lora(&mut store, &cfg, 2, &dpa, 8).unwrap();
        let sgd = LocalSgdConfig::epochs(1e-2, 0.0, 1, 3);
        FedDpaClient::new(store, cfg, 2, dpa, tok, sgd, Box::new(|c| Ok(shard(c))), 99)
    }

    #[test]
    fn only_global_adapter_and_classifier_are_shared_and_resume_is_exact() {
        let cfg = EngineConfig {
            rounds: 3,
            fraction: 0.5,
            min_clients: 1,
            eval_every: None,
            seed: 3,
        };
        let mut a = client();
        let init = a.shared_weights().unwrap();
        assert!(init.keys().all(|k| is_dpa_shared(k)));
        assert_eq!(
            init.len(),
            2 * 2 * 2 + 2,
            "q,v × 2 layers × (A,B) + classifier"
        );
        let straight = run_rounds(
            &cfg,
            &[0, 1, 2],
            &mut a,
            EngineState::new(init.clone()),
            |_| Ok(()),
        )
        .unwrap();
        let b_name = "bert.encoder.layer.0.attention.self.query.lora_B.weight";
        assert_ne!(
            straight.global[b_name].to_vec2::<f32>().unwrap(),
            init[b_name].to_vec2::<f32>().unwrap(),
            "global adapter must train"
        );
        for (id, local) in &straight.persistent {
            assert!(local.keys().all(|k| is_adapter_param(k)), "client {id}");
            assert_ne!(
                local[b_name].to_vec2::<f32>().unwrap(),
                straight.global[b_name].to_vec2::<f32>().unwrap()
            );
        }
        let mut saved = Vec::new();
        let one = EngineConfig {
            rounds: 1,
            ..cfg.clone()
        };
        let mut b = client();
        run_rounds(&one, &[0, 1, 2], &mut b, EngineState::new(init), |s| {
            saved = s.to_bytes().map_err(|e| e.to_string())?;
            Ok(())
        })
        .unwrap();
        let mut c = client();
        let resumed = run_rounds(
            &cfg,
            &[0, 1, 2],
            &mut c,
            EngineState::from_bytes(&saved, &Device::Cpu).unwrap(),
            |_| Ok(()),
        )
        .unwrap();
        for (k, t) in &straight.global {
            assert_eq!(
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                resumed.global[k]
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                "{k}"
            );
        }
        assert_eq!(straight.persistent.len(), resumed.persistent.len());
    }
}
