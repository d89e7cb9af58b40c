//! Base models for the classification setups (PAPER_NOTES §2): where the starting BERT comes
//! from (an HF-layout directory, or a random tiny BERT with a WordPiece tokenizer trained on the
//! client texts, for CI), Standard-FL training of it, and writing the result in HF layout.
//!
//! The caller chooses every path and seed; this module only computes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::causal_lm::{build_causal_lm, LmSettings};
use crate::fl::engine::{run_rounds, EngineConfig, EngineError, EngineState};
use crate::fl::fedavg_client::{FedAvgClient, LocalSgdConfig, ShardLoader};
use crate::fl::feddpa_client::{add_qv_lora, DpaConfig, FedDpaClient};
use crate::model::bert::BertError;
use crate::model::bert::{ensure_classifier, load_pretrained, random_init, BertConfig};
use crate::model::hf_layout::{write_model_dir, HfLayoutError};
use crate::params::ParamStore;
use crate::peft::lora::merge_into_store;
use crate::peft::lora::{add_lora, TargetModules};
use crate::peft::AdapterKind;
use crate::peft::AdapterSpec;
use crate::rng::derive_seed;
use crate::task::TaskModel;
use crate::tokenize::{train_wordpiece, TextTokenizer, TokenizeError};

/// Errors building, training or saving a base model; each names the file or step.
#[derive(Debug, thiserror::Error)]
pub enum BaseModelError {
    #[error(transparent)]
    Bert(#[from] BertError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error(transparent)]
    Layout(#[from] HfLayoutError),
    #[error(transparent)]
    Llama(#[from] crate::model::llama_io::LlamaIoError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model: {0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, BaseModelError>;

/// A random tiny BERT for CI (real code paths, seconds to train).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TinyBert {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vocab_size: usize,
    pub seed: u64,
}

/// Where the starting model comes from: `{dir: PATH}` (BERT or LLaMA, by `config.json`'s
/// `model_type`), `{tiny: {...}}` (BERT classifier) or `{tiny_llama: {...}}` (causal LM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSource {
    Dir(PathBuf),
    Tiny(TinyBert),
    TinyLlama(crate::causal_lm::TinyLlama),
}

impl ModelSource {
    /// Files read from outside the workdir (their digests belong in a cache key).
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            ModelSource::Dir(d) => ["config.json", "model.safetensors", "tokenizer.json"]
                .iter()
                .map(|f| d.join(f))
                .collect(),
            ModelSource::Tiny(_) | ModelSource::TinyLlama(_) => Vec::new(),
        }
    }
}

/// A classifier ready to train: config (with `id2label`), every parameter trainable, the
/// tokenizer and its `tokenizer.json` text (saved unchanged with the model).
pub struct ClassifierModel {
    pub config: BertConfig,
    pub store: ParamStore,
    pub tokenizer: TextTokenizer,
    pub tokenizer_json: String,
}

/// `"cpu"`, `"cuda"` or `"cuda:N"` → a candle device.
pub fn device_from_name(name: &str) -> Result<Device> {
    let cuda = |i| Device::new_cuda(i).map_err(|e| BaseModelError::Invalid(e.to_string()));
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(BaseModelError::Invalid(format!(
                "unknown device {other:?} (cpu, cuda, cuda:N)"
            ))),
        },
    }
}

/// Builds the classifier for `labels`. `train_texts` is only called for a tiny model (its
/// tokenizer is trained on them). A directory's model gets a fresh head (HF init, `head_seed`)
/// unless it already has one with `labels.len()` outputs.
pub fn build_classifier(
    source: &ModelSource,
    labels: &[String],
    max_len: usize,
    head_seed: u64,
    train_texts: impl FnOnce() -> std::result::Result<Vec<String>, String>,
    device: &Device,
) -> Result<ClassifierModel> {
    if labels.len() < 2 {
        return Err(BaseModelError::Invalid(format!(
            "a classifier needs at least 2 labels, got {}",
            labels.len()
        )));
    }
    let (mut config, mut store, tokenizer_json) = match source {
        ModelSource::Dir(dir) => {
            let (cfg, store) = load_pretrained(dir, device, DType::F32, |_| true)?;
            let mut store = classifier_params(store)?;
            ensure_classifier(&mut store, &cfg, labels.len(), head_seed, DType::F32)?;
            let path = dir.join("tokenizer.json");
            let json = std::fs::read_to_string(&path)
                .map_err(|source| BaseModelError::Io { path, source })?;
            (cfg, store, json)
        }
        ModelSource::Tiny(t) => {
            let texts = train_texts().map_err(BaseModelError::Invalid)?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let tok = train_wordpiece(&refs, t.vocab_size)?;
            let json = tok
                .to_string(false)
                .map_err(|e| BaseModelError::Invalid(format!("tokenizer.json: {e}")))?;
            let mut cfg = BertConfig::tiny(tok.get_vocab_size(true));
            cfg.hidden_size = t.hidden;
            cfg.num_hidden_layers = t.layers;
            cfg.num_attention_heads = t.heads;
            cfg.intermediate_size = t.intermediate;
            cfg.max_position_embeddings = max_len.max(8);
            let store = random_init(&cfg, labels.len(), t.seed, device, DType::F32)?;
            (cfg, store, json)
        }
        ModelSource::TinyLlama(_) => {
            return Err(BaseModelError::Invalid(
                "`tiny_llama` builds a causal LM; a classification dataset needs `tiny` or a BERT `dir`"
                    .into(),
            ))
        }
    };
    store
        .set_trainable(|_| true)
        .map_err(|e| BaseModelError::Invalid(e.to_string()))?;
    config.id2label = Some(
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone()))
            .collect::<BTreeMap<_, _>>(),
    );
    let label2id: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), serde_json::Value::from(i)))
        .collect();
    config
        .extra
        .insert("label2id".into(), serde_json::Value::Object(label2id));
    if max_len > config.max_position_embeddings {
        return Err(BaseModelError::Invalid(format!(
            "max_len {max_len} exceeds the model's max_position_embeddings {}",
            config.max_position_embeddings
        )));
    }
    let inner = <tokenizers::Tokenizer as std::str::FromStr>::from_str(&tokenizer_json)
        .map_err(|e| BaseModelError::Invalid(format!("tokenizer.json: {e}")))?;
    let mut tokenizer = TextTokenizer::new(inner, "[PAD]")?;
    tokenizer.set_max_len(max_len)?;
    Ok(ClassifierModel {
        config,
        store,
        tokenizer,
        tokenizer_json,
    })
}

/// What a base model is built for: a classifier over `labels` (XNLI, MasakhaNEWS) or a causal LM
/// (Fed-Aya).
#[derive(Debug, Clone, PartialEq)]
pub enum TaskSetup {
    Classification { labels: Vec<String>, max_len: usize },
    Generation(LmSettings),
}

/// Builds the base model of `setup` from `source` (see [`build_classifier`] and
/// [`build_causal_lm`]); a directory's `model_type` must match the task.
pub fn build_task_model(
    source: &ModelSource,
    setup: &TaskSetup,
    head_seed: u64,
    train_texts: impl FnOnce() -> std::result::Result<Vec<String>, String>,
    device: &Device,
) -> Result<TaskModel> {
    if let ModelSource::Dir(dir) = source {
        let want = match setup {
            TaskSetup::Classification { .. } => "bert",
            TaskSetup::Generation(_) => "llama",
        };
        let cfg: serde_json::Value = crate::model::hf_layout::read_config(dir)?;
        let found = cfg.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        if found != want {
            return Err(BaseModelError::Invalid(format!(
                "{}: model_type {found:?}, but this dataset needs a {want:?} model",
                dir.join("config.json").display()
            )));
        }
    }
    match setup {
        TaskSetup::Classification { labels, max_len } => {
            build_classifier(source, labels, *max_len, head_seed, train_texts, device)
                .map(TaskModel::from)
        }
        TaskSetup::Generation(settings) => {
            build_causal_lm(source, *settings, train_texts, device).map(TaskModel::from)
        }
    }
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

/// Keeps what `BertForSequenceClassification` uses, under its HF names, as transformers'
/// `from_pretrained` does: a bare `BertModel` checkpoint (names without `bert.`, e.g.
/// sentence-transformers) gets the prefix; pre-training heads (`cls.*`) and the
/// `position_ids` buffer are dropped.
fn classifier_params(store: ParamStore) -> Result<ParamStore> {
    let bare = !store.names().any(|n| n.starts_with("bert."));
    let mut out = ParamStore::new(store.device());
    for (name, p) in store.iter() {
        let body = ["embeddings.", "encoder.", "pooler."];
        let name = if bare && body.iter().any(|b| name.starts_with(b)) {
            format!("bert.{name}")
        } else {
            name.to_string()
        };
        let keep = (name.starts_with("bert.") || name.starts_with("classifier."))
            && !name.ends_with("position_ids");
        if keep {
            out.insert(&name, p.tensor().clone(), p.is_trainable())
                .map_err(|e| BaseModelError::Invalid(e.to_string()))?;
        }
    }
    Ok(out)
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
    keep_local: Option<crate::fl::fedavg_client::LocalPredicate>,
    resume: Option<EngineState>,
    after_round: impl FnMut(&EngineState) -> std::result::Result<(), String>,
) -> Result<EngineState> {
    let invalid = |e: String| BaseModelError::Invalid(e);
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
    let done = run_rounds(&run.engine, clients, &mut client, state, after_round)?;
    let map: HashMap<_, _> = done
        .global
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
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
    let invalid = |e: String| BaseModelError::Invalid(e);
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
    let done = run_rounds(&run.engine, clients, &mut client, state, after_round)?;
    let map: HashMap<_, _> = done
        .global
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    base.assign(&map).map_err(|e| invalid(e.to_string()))?;
    merge_into_store(&mut base, &modules, &dpa.spec()).map_err(|e| invalid(e.to_string()))?;
    model.store = base;
    Ok(done)
}

/// Writes each client's persistent tensors to `dir/<client id>.safetensors` (DEPT: only the
/// client's `*_embeddings*` tensors), compactly: matrices as the rows that differ from
/// `shared` (the saved base model), see `client_state`.
pub fn save_client_states(
    states: &BTreeMap<u32, crate::fl::Weights>,
    shared: &ParamStore,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| BaseModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for (client, w) in states {
        let map: HashMap<String, candle_core::Tensor> =
            w.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let map = crate::client_state::compact(&map, shared)
            .map_err(|e| BaseModelError::Invalid(format!("client {client}: {e}")))?;
        crate::params::write_safetensors(&map, &dir.join(format!("{client}.safetensors")))
            .map_err(|e| BaseModelError::Invalid(e.to_string()))?;
    }
    Ok(())
}

/// Writes `model` into `dir` in HF layout (all or nothing).
pub fn save_classifier(model: &ClassifierModel, dir: &Path) -> Result<()> {
    let config = serde_json::to_value(&model.config)
        .map_err(|e| BaseModelError::Invalid(format!("config.json: {e}")))?;
    let tensors = model
        .store
        .export(|n| !crate::peft::is_adapter_param(n))
        .map_err(|e| BaseModelError::Invalid(e.to_string()))?;
    write_model_dir(dir, &config, &tensors, &model.tokenizer_json)?;
    Ok(())
}

/// Writes either task's model into `dir` in HF layout (all or nothing).
pub fn save_task_model(model: &TaskModel, dir: &Path) -> Result<()> {
    match model {
        TaskModel::Classifier(m) => save_classifier(m, dir),
        TaskModel::CausalLm(m) => m.save(dir),
    }
}

/// Copies an HF model directory's `config.json`, `model.safetensors` and `tokenizer.json` into
/// `out` (hard links where the file system allows, copies otherwise).
pub fn copy_model_dir(src: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|source| BaseModelError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        let from = src.join(name);
        let to = out.join(name);
        if !from.is_file() {
            return Err(BaseModelError::Invalid(format!(
                "{} is missing (expected an HF-layout model directory)",
                from.display()
            )));
        }
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|source| BaseModelError::Io {
                path: to.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peft::lora::TargetModules;
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
        use crate::causal_lm::{build_causal_lm, LmSettings, TinyLlama};
        use crate::fl::fedavg_client::RoundLr;
        use crate::tokenize::PromptTemplate;
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
            let texts = || Ok((0..2).flat_map(shard).map(|e| e.text_a).collect());
            build_causal_lm(
                &ModelSource::TinyLlama(TinyLlama {
                    hidden: 16,
                    layers: 1,
                    heads: 2,
                    kv_heads: 1,
                    intermediate: 32,
                    vocab_size: 400,
                    seed: 2,
                }),
                LmSettings {
                    prompt: PromptTemplate::Alpaca,
                    max_len: 128,
                    max_new_tokens: 2,
                },
                texts,
                &Device::Cpu,
            )
            .unwrap()
            .into()
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
