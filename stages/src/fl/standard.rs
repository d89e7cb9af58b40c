//! Federated training of the base models (PAPER_NOTES §2): Standard FL (FedAvg; full
//! fine-tuning of a BERT, or a federated LoRA merged into a LLaMA at the end), DEPT(SPEC)
//! (embeddings kept on the clients) and FedDPA-T (a global q/v LoRA plus each client's local
//! one), and saving the clients' private parameters.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor};

use super::engine::{run_rounds, EngineConfig, EngineError, EngineState, LocalTrainer, Weights};
use super::fedavg_client::{FedAvgClient, LocalPredicate, ShardLoader};
use super::feddpa_client::{add_qv_lora, DpaConfig, FedDpaClient};
use crate::fit::LocalSgdConfig;
use crate::params::ParamStore;
use crate::peft::lora::{add_lora, merge_into_store, TargetModules};
use crate::peft::{AdapterKind, AdapterSpec};
use crate::rng::derive_seed;
use crate::task::{ModelError, TaskModel};

/// Errors of a federated base-model run: the model's, or the round loop's. Boxed: both are
/// large and this is returned on every path.
#[derive(Debug, thiserror::Error)]
pub enum StandardFlError {
    #[error(transparent)]
    Model(Box<ModelError>),
    #[error(transparent)]
    Engine(Box<EngineError>),
}

impl From<ModelError> for StandardFlError {
    fn from(e: ModelError) -> Self {
        StandardFlError::Model(Box::new(e))
    }
}

impl From<EngineError> for StandardFlError {
    fn from(e: EngineError) -> Self {
        StandardFlError::Engine(Box::new(e))
    }
}

pub type Result<T> = std::result::Result<T, StandardFlError>;

fn invalid(e: String) -> StandardFlError {
    ModelError::Invalid(e).into()
}

/// The LoRA a causal LM is federated with (PAPER_NOTES §2: r 16, α 32, dropout 0.05 on all
/// linears [code], q,v as an option); the trained adapter is merged into the saved model.
#[derive(Debug, Clone, PartialEq)]
pub struct FedLora {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub targets: TargetModules,
    /// Seeds the adapters' A (shared by every client: the server's initial adapter).
    pub seed: u64,
}

/// Round-loop and local-optimiser settings of one Standard-FL run.
#[derive(Debug, Clone, PartialEq)]
pub struct FedAvgRun {
    pub engine: EngineConfig,
    pub sgd: LocalSgdConfig,
    /// Where `engine.eval_every` measures the global model's accuracy (Standard FL and DEPT;
    /// FedDPA-T does not evaluate).
    pub eval_examples: Vec<datasets::Example>,
    /// Federate a LoRA instead of fine-tuning every weight (the causal-LM setup).
    pub lora: Option<FedLora>,
}

/// Standard FL (FedAvg) of `model` over `clients`, starting from `resume` if given;
/// `after_round` receives the state after every round (checkpoint it). Every weight is
/// fine-tuned, or, with `run.lora`, only a LoRA that is merged into the weights at the end.
/// Parameters matching `keep_local` stay on the clients (DEPT). Returns the final state; the
/// trained global weights are also written back into `model`'s store.
pub fn train_fedavg(
    model: &mut TaskModel,
    clients: &[u32],
    load: ShardLoader<'_>,
    run: &FedAvgRun,
    keep_local: Option<LocalPredicate>,
    resume: Option<EngineState>,
    after_round: impl FnMut(&EngineState) -> std::result::Result<(), String>,
) -> Result<EngineState> {
    // The client trains the store's own `Var`s in place; client-local parameters are put back
    // to their starting values afterwards so the saved model is the global one.
    let initial_local = match &keep_local {
        Some(p) => Some(
            model
                .store()
                .export(|n| p(n))
                .map_err(|e| invalid(e.to_string()))?,
        ),
        None => None,
    };
    let (spec, lora_modules) = match &run.lora {
        None => (AdapterSpec::NONE, Vec::new()),
        Some(l) => {
            let modules = l.targets.select(&model.all_linear());
            let store = model.store_mut();
            store
                .set_trainable(|_| false)
                .map_err(|e| invalid(e.to_string()))?;
            add_lora(store, &modules, |_| l.rank, l.seed, DType::F32)
                .map_err(|e| invalid(e.to_string()))?;
            let spec = AdapterSpec {
                kind: AdapterKind::Lora { alpha: l.alpha },
                dropout: l.dropout,
            };
            (spec, modules)
        }
    };
    let net = model.net(model.store(), &spec).map_err(invalid)?;
    let task = model.with_store(model.store().clone());
    let mut client = FedAvgClient::new(task, net, run.sgd, load, keep_local).map_err(invalid)?;
    if run.engine.eval_every.is_some() && !run.eval_examples.is_empty() {
        client = client.with_eval(run.eval_examples.clone(), run.sgd.batch_size);
    }
    let state = match resume {
        Some(s) => s,
        None => EngineState::new(client.shared_weights().map_err(invalid)?),
    };
    let (done, map) = rounds(&run.engine, clients, &mut client, state, after_round)?;
    let store = model.store_mut();
    store.assign(&map).map_err(|e| invalid(e.to_string()))?;
    if let Some(local) = initial_local {
        store.assign(&local).map_err(|e| invalid(e.to_string()))?;
    }
    if run.lora.is_some() {
        merge_into_store(store, &lora_modules, &spec).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(done)
}

/// The round loop from `state`, and the final global weights by name.
fn rounds(
    engine: &EngineConfig,
    clients: &[u32],
    client: &mut impl LocalTrainer,
    state: EngineState,
    after_round: impl FnMut(&EngineState) -> std::result::Result<(), String>,
) -> Result<(EngineState, HashMap<String, Tensor>)> {
    let done = run_rounds(engine, clients, client, state, after_round)?;
    let map = done
        .global
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((done, map))
}

/// FedDPA-T (PAPER_NOTES §2) of `model`: adds the global q/v LoRA (A from `adapter_seed`),
/// runs the rounds with [`FedDpaClient`], then merges the trained global adapter and classifier
/// into `model.store` (so `model` is pretrained + global). The returned state's `persistent`
/// holds each client's local adapter.
#[allow(clippy::too_many_arguments)]
pub fn train_feddpa(
    model: &mut TaskModel,
    clients: &[u32],
    load: ShardLoader<'_>,
    run: &FedAvgRun,
    dpa: &DpaConfig,
    adapter_seed: u64,
    resume: Option<EngineState>,
    after_round: impl FnMut(&EngineState) -> std::result::Result<(), String>,
) -> Result<EngineState> {
    let TaskModel::Classifier(model) = model else {
        return Err(invalid(
            "FedDPA-T is defined for the classification setups (BERT)".into(),
        ));
    };
    let num_labels = model.config.num_labels();
    let mut base = model.store.clone();
    base.set_trainable(|_| false)
        .map_err(|e| invalid(e.to_string()))?;
    let modules =
        add_qv_lora(&mut base, &model.config, num_labels, dpa, adapter_seed).map_err(invalid)?;
    let mut client = FedDpaClient::new(
        base.clone(),
        model.config.clone(),
        num_labels,
        *dpa,
        model.tokenizer.clone(),
        run.sgd,
        load,
        derive_seed(adapter_seed, &["local".into()]),
    );
    let state = match resume {
        Some(s) => s,
        None => EngineState::new(client.shared_weights().map_err(invalid)?),
    };
    let (done, map) = rounds(&run.engine, clients, &mut client, state, after_round)?;
    base.assign(&map).map_err(|e| invalid(e.to_string()))?;
    merge_into_store(&mut base, &modules, &dpa.spec()).map_err(|e| invalid(e.to_string()))?;
    model.store = base;
    Ok(done)
}

/// Writes each client's persistent tensors to `dir/<client id>.safetensors` (DEPT: only the
/// client's `*_embeddings*` tensors), compactly: matrices as the rows that differ from
/// `shared` (the saved base model), see `client_state`.
pub fn save_client_states(
    states: &BTreeMap<u32, Weights>,
    shared: &ParamStore,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for (client, w) in states {
        let map: HashMap<String, candle_core::Tensor> =
            w.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let map = crate::client_state::compact(&map, shared)
            .map_err(|e| ModelError::Invalid(format!("client {client}: {e}")))?;
        crate::params::write_safetensors(&map, &dir.join(format!("{client}.safetensors")))
            .map_err(|e| ModelError::Invalid(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peft::lora::TargetModules;
    use crate::task::{build_classifier, copy_model_dir, save_classifier, ModelSource, TinyBert};
    use candle_core::Device;
    use datasets::Example;

    fn texts() -> std::result::Result<Vec<String>, String> {
        Ok((0..20)
            .map(|i| format!("the match {i} was won by the home team"))
            .collect())
    }

    fn tiny() -> ModelSource {
        ModelSource::Tiny(TinyBert {
            hidden: 16,
            layers: 1,
            heads: 2,
            intermediate: 32,
            vocab_size: 50,
            seed: 3,
        })
    }

    #[test]
    fn tiny_model_trains_saves_and_reloads() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut m: TaskModel = build_classifier(&tiny(), &labels, 16, 1, texts, &Device::Cpu)
            .unwrap()
            .into();
        let load: ShardLoader = Box::new(|c| {
            Ok((0..4)
                .map(|i| Example {
                    text_a: format!("home team {c} {i}"),
                    text_b: None,
                    label_id: Some((i % 3) as u32),
                    language: "eng".into(),
                })
                .collect())
        });
        let engine = EngineConfig {
            rounds: 2,
            fraction: 1.0,
            min_clients: 1,
            eval_every: None,
            seed: 1,
        };
        let sgd = LocalSgdConfig::epochs(1e-3, 0.0, 1, 2);
        let before = m.store().export(|_| true).unwrap();
        let mut rounds = 0;
        let run = FedAvgRun {
            engine,
            sgd,
            eval_examples: Vec::new(),
            lora: None,
        };
        let st = train_fedavg(&mut m, &[0, 1], load, &run, None, None, |_| {
            rounds += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((rounds, st.round), (2, 2));
        let after = m.store().export(|_| true).unwrap();
        let w = "classifier.weight";
        assert_ne!(
            before[w].to_vec2::<f32>().unwrap(),
            after[w].to_vec2::<f32>().unwrap()
        );
        // DEPT: embeddings stay on the clients and the saved model keeps the starting ones.
        let emb = "bert.embeddings.word_embeddings.weight";
        let mut d: TaskModel = build_classifier(&tiny(), &labels, 16, 1, texts, &Device::Cpu)
            .unwrap()
            .into();
        let emb0 = d.store().get(emb).unwrap().to_vec2::<f32>().unwrap();
        let load2: ShardLoader = Box::new(|c| {
            Ok((0..4)
                .map(|i| Example {
                    text_a: format!("home team {c} {i}"),
                    text_b: None,
                    label_id: Some((i % 3) as u32),
                    language: "eng".into(),
                })
                .collect())
        });
        let local: crate::fl::fedavg_client::LocalPredicate =
            Box::new(|n| n.contains("_embeddings"));
        let st = train_fedavg(&mut d, &[0, 1], load2, &run, Some(local), None, |_| Ok(())).unwrap();
        assert_eq!(d.store().get(emb).unwrap().to_vec2::<f32>().unwrap(), emb0);
        assert_eq!(st.persistent.len(), 2);
        assert_ne!(st.persistent[&0][emb].to_vec2::<f32>().unwrap(), emb0);
        assert!(!st.global.contains_key(emb));
        let dir = tempfile::tempdir().unwrap();
        save_client_states(&st.persistent, d.store(), &dir.path().join("clients")).unwrap();
        let back0 = crate::params::read_safetensors(
            &dir.path().join("clients/0.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        // Word, position, token-type embeddings: each as changed rows + their values.
        assert!(back0.keys().all(|k| k.contains("_embeddings")) && back0.len() == 6);
        let rows = back0[&format!("{emb}.__rows")].dims1().unwrap();
        assert!(
            rows > 0 && rows < emb0.len(),
            "{rows} of {} rows stored",
            emb0.len()
        );
        let full = crate::client_state::expand(back0, d.store()).unwrap();
        assert_eq!(
            full[emb].to_vec2::<f32>().unwrap(),
            st.persistent[&0][emb].to_vec2::<f32>().unwrap(),
            "compact client state expands to the trained embeddings exactly"
        );

        let out = dir.path().join("model");
        let TaskModel::Classifier(m) = m else {
            unreachable!()
        };
        save_classifier(&m, &out).unwrap();
        let back = build_classifier(
            &ModelSource::Dir(out.clone()),
            &labels,
            16,
            9,
            || Err("not needed".into()),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(back.config.num_labels(), 3);
        assert_eq!(
            back.store.get(w).unwrap().to_vec2::<f32>().unwrap(),
            after[w].to_vec2::<f32>().unwrap(),
            "saved head must be reloaded, not re-initialised"
        );
        // A bare `BertModel` checkpoint (no `bert.` prefix) with a pre-training head loads
        // into the same classifier names; the head is dropped.
        let bare = dir.path().join("bare");
        std::fs::create_dir_all(&bare).unwrap();
        std::fs::copy(out.join("config.json"), bare.join("config.json")).unwrap();
        std::fs::copy(out.join("tokenizer.json"), bare.join("tokenizer.json")).unwrap();
        let mut tensors: HashMap<String, candle_core::Tensor> = m
            .store
            .export(|n| n.starts_with("bert."))
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.trim_start_matches("bert.").to_string(), v))
            .collect();
        tensors.insert(
            "cls.predictions.bias".into(),
            candle_core::Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
        );
        crate::params::write_safetensors(&tensors, &bare.join("model.safetensors")).unwrap();
        let from_bare = build_classifier(
            &ModelSource::Dir(bare),
            &labels,
            16,
            9,
            || Err("not needed".into()),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(from_bare.store.len(), m.store.len());
        let q = "bert.encoder.layer.0.attention.self.query.weight";
        assert_eq!(
            from_bare.store.get(q).unwrap().to_vec2::<f32>().unwrap(),
            m.store.get(q).unwrap().to_vec2::<f32>().unwrap()
        );

        let copy = dir.path().join("copy");
        copy_model_dir(&out, &copy).unwrap();
        assert!(copy.join("tokenizer.json").is_file());
        let e = copy_model_dir(dir.path(), &dir.path().join("x")).unwrap_err();
        assert!(e.to_string().contains("config.json is missing"), "{e}");
    }

    /// The causal-LM setup of Standard FL: only the LoRA is averaged (and checkpointed), each
    /// round trains a fixed number of accumulated steps at the round's cosine lr, and the
    /// trained adapter ends merged into the saved weights.
    #[test]
    fn llama_fedavg_averages_only_the_lora_and_merges_it() {
        use crate::fit::RoundLr;
        use crate::task::causal_lm::tests::{one_layer, tiny_lm};
        let shard = |c: u32| -> Vec<Example> {
            (0..6)
                .map(|i| Example {
                    text_a: format!("Say {c} {i}"),
                    text_b: Some(format!("ok {i}")),
                    label_id: None,
                    language: "en".into(),
                })
                .collect()
        };
        let build = || -> TaskModel {
            let size = one_layer(2);
            let texts = (0..2).flat_map(shard).map(|e| e.text_a).collect();
            tiny_lm(size, texts, 2).into()
        };
        let sgd = LocalSgdConfig {
            accumulate: 2,
            max_steps: Some(2),
            round_lr: RoundLr::Cosine {
                rounds: 2,
                min_lr: 1e-6,
            },
            ..LocalSgdConfig::epochs(1e-2, 0.0, 1, 2)
        };
        assert_eq!(
            sgd.lr_at(2),
            1e-6,
            "cosine reaches min_lr at the last round"
        );
        assert!((sgd.lr_at(1) - (1e-6 + 0.5 * (1e-2 - 1e-6))).abs() < 1e-15);
        let run = FedAvgRun {
            engine: EngineConfig {
                rounds: 2,
                fraction: 1.0,
                min_clients: 1,
                eval_every: None,
                seed: 4,
            },
            sgd,
            eval_examples: Vec::new(),
            lora: Some(FedLora {
                rank: 2,
                alpha: 4.0,
                dropout: 0.05,
                targets: TargetModules::AllLinear,
                seed: 9,
            }),
        };
        let mut m = build();
        let before = m.store().export(|_| true).unwrap();
        let load: ShardLoader = Box::new(|c| Ok(shard(c)));
        let st = train_fedavg(&mut m, &[0, 1], load, &run, None, None, |_| Ok(())).unwrap();
        assert!(!st.global.is_empty());
        assert!(
            st.global.keys().all(|k| crate::peft::is_adapter_param(k)),
            "only the LoRA is federated: {:?}",
            st.global.keys().collect::<Vec<_>>()
        );
        // 2 steps × batch 2 × accumulation 2 = 4 of each client's 6 examples per round.
        assert_eq!(st.metrics.len(), 2);
        let after = m.store().export(|_| true).unwrap();
        assert_eq!(before.len(), after.len(), "adapters merged away");
        let q = "model.layers.0.self_attn.q_proj.weight";
        assert_ne!(
            before[q].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            after[q].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let emb = "model.embed_tokens.weight";
        assert_eq!(
            before[emb].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            after[emb].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "base weights outside the adapted linears never change"
        );
        let mut again = build();
        let load: ShardLoader = Box::new(|c| Ok(shard(c)));
        train_fedavg(&mut again, &[0, 1], load, &run, None, None, |_| Ok(())).unwrap();
        assert_eq!(
            again
                .store()
                .get(q)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            after[q].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "reproducible"
        );
    }
}
