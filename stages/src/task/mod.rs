//! The two tasks of the paper behind one interface, so every personalization method (LoRA,
//! AdaLoRA, BayesTune-LoRA, FedP2EFT, FedL2P) and the PSG meta-data run unchanged on a BERT
//! classifier (XNLI, MasakhaNEWS: accuracy) and on a LLaMA causal LM (Fed-Aya: generations
//! scored by METEOR / ROUGE).
//!
//! A [`TaskModel`] is a base model plus its tokenizer; [`TaskModel::net`] builds the network over
//! any store (the base weights, or a copy with adapter tensors), [`TaskModel::batch`] tokenises
//! training examples, and [`TaskModel::evaluate`] produces the test outputs.

pub mod causal_lm;
pub mod classifier;
pub mod error;
pub mod source;

use std::path::Path;

use candle_core::{DType, Device, Result as CResult, Tensor};
use datasets::Example;

pub use causal_lm::{build_causal_lm, CausalLmModel, LmBatch, LmSettings};
pub use classifier::{
    build_classifier, classifier_batch, save_classifier, ClassifierBatch, ClassifierModel,
};
pub use error::{ModelError, Result};
pub use source::{
    device_from_name, HfLocked, HfModel, ModelSource, TinyBert, TinyLlama, WeightDtype,
};

use crate::model::bert::{BertForSequenceClassification, BertInput};
use crate::model::llama::{causal_lm_loss_sum, llama_linear_modules, LlamaForCausalLM};
use crate::params::ParamStore;
use crate::peft::layer::ForwardCtx;
use crate::peft::lora::TargetModules;
use crate::peft::{AdaptedLinear, AdapterSpec, LinearShape};

/// A base model of either task, every parameter in `store`.
// Both variants hold a tokenizer (~2 kB); they differ by a few hundred bytes, boxing gains nothing.
#[allow(clippy::large_enum_variant)]
pub enum TaskModel {
    Classifier(ClassifierModel),
    CausalLm(CausalLmModel),
}

/// A built network (adapters interpreted by the spec it was built with).
pub enum Net {
    Bert(BertForSequenceClassification),
    Llama(LlamaForCausalLM),
}

/// A tokenised training batch of either task.
pub enum Batch {
    Classifier(ClassifierBatch),
    CausalLm(LmBatch),
}

/// What a model produced on a client's test split, in test order.
#[derive(Debug, Clone, PartialEq)]
pub enum Outputs {
    /// (label, predicted class) per example.
    Labels(Vec<(u32, u32)>),
    /// Greedy generation per example.
    Texts(Vec<String>),
}

impl Outputs {
    pub fn len(&self) -> usize {
        match self {
            Outputs::Labels(v) => v.len(),
            Outputs::Texts(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Correctly classified examples (0 for generations).
    pub fn correct(&self) -> u64 {
        match self {
            Outputs::Labels(v) => v.iter().filter(|(l, p)| l == p).count() as u64,
            Outputs::Texts(_) => 0,
        }
    }

    pub fn labels(&self) -> Option<&[(u32, u32)]> {
        match self {
            Outputs::Labels(v) => Some(v),
            Outputs::Texts(_) => None,
        }
    }

    pub fn texts(&self) -> Option<&[String]> {
        match self {
            Outputs::Texts(v) => Some(v),
            Outputs::Labels(_) => None,
        }
    }
}

impl From<ClassifierModel> for TaskModel {
    fn from(m: ClassifierModel) -> Self {
        TaskModel::Classifier(m)
    }
}

impl From<CausalLmModel> for TaskModel {
    fn from(m: CausalLmModel) -> Self {
        TaskModel::CausalLm(m)
    }
}

impl TaskModel {
    pub fn store(&self) -> &ParamStore {
        match self {
            TaskModel::Classifier(m) => &m.store,
            TaskModel::CausalLm(m) => &m.store,
        }
    }

    pub fn store_mut(&mut self) -> &mut ParamStore {
        match self {
            TaskModel::Classifier(m) => &mut m.store,
            TaskModel::CausalLm(m) => &mut m.store,
        }
    }

    /// Every linear the methods adapt (PEFT `all-linear`, PAPER_NOTES §3), in module order:
    /// for BERT every linear incl. pooler and classifier; for LLaMA the decoder linears.
    pub fn all_linear(&self) -> Vec<LinearShape> {
        match self {
            TaskModel::Classifier(m) => {
                TargetModules::AllLinear.select(&m.config.linear_modules(m.config.num_labels()))
            }
            TaskModel::CausalLm(m) => llama_linear_modules(&m.config),
        }
    }

    /// Base linears whose inputs make up the PSG meta-data (2 features each, §5): every
    /// `nn.Linear` outside the adapters, i.e. the adapted ones plus LLaMA's `lm_head`.
    pub fn observed_linears(&self) -> usize {
        match self {
            TaskModel::Classifier(_) => self.all_linear().len(),
            TaskModel::CausalLm(_) => self.all_linear().len() + 1,
        }
    }

    /// The network over `store` with adapters read by `spec`.
    pub fn net(&self, store: &ParamStore, spec: &AdapterSpec) -> std::result::Result<Net, String> {
        match self {
            TaskModel::Classifier(m) => BertForSequenceClassification::load(store, &m.config, spec)
                .map(Net::Bert)
                .map_err(|e| e.to_string()),
            TaskModel::CausalLm(m) => m
                .net(store, spec)
                .map(Net::Llama)
                .map_err(|e| e.to_string()),
        }
    }

    /// Tokenises `examples[order]` into one right-padded training batch.
    pub fn batch(
        &self,
        examples: &[Example],
        order: &[usize],
    ) -> std::result::Result<Batch, String> {
        match self {
            TaskModel::Classifier(m) => {
                classifier_batch(examples, order, &m.tokenizer, m.store.device())
                    .map(Batch::Classifier)
            }
            TaskModel::CausalLm(m) => m.batch(examples, order).map(Batch::CausalLm),
        }
    }

    /// A batch of the PSG meta-data pass (§5), as the reference tokenises it: classification
    /// inputs padded to `max_len` (`padding="max_length"`); for the causal LM the generation
    /// prompt alone (`template.format(instruction, "", "")[:-1]`), with special tokens,
    /// right-padded to the longest.
    pub fn meta_batch(
        &self,
        examples: &[Example],
        order: &[usize],
    ) -> std::result::Result<Batch, String> {
        match self {
            TaskModel::Classifier(m) => classifier::classifier_batch_padded_to(
                examples,
                order,
                &m.tokenizer,
                m.store.device(),
                m.max_len,
            )
            .map(Batch::Classifier),
            TaskModel::CausalLm(m) => m.prompt_batch(examples, order).map(Batch::CausalLm),
        }
    }

    /// The examples a method trains on (causal LM: those whose prompt fits `max_len`).
    pub fn trainable(&self, examples: &[Example]) -> std::result::Result<Vec<Example>, String> {
        match self {
            TaskModel::Classifier(_) => Ok(examples.to_vec()),
            TaskModel::CausalLm(m) => m.trainable_examples(examples),
        }
    }

    /// Test outputs of the model over `store` (adapters merged or absent), in batches of
    /// `batch_size` (classification) or 8 (generation, PAPER_NOTES §1).
    pub fn evaluate(
        &self,
        store: &ParamStore,
        test: &[Example],
        batch_size: usize,
    ) -> std::result::Result<Outputs, String> {
        let net = self.net(store, &AdapterSpec::NONE)?;
        match (self, &net) {
            (TaskModel::Classifier(m), Net::Bert(bert)) => {
                let idx: Vec<usize> = (0..test.len()).collect();
                let mut out = Vec::with_capacity(test.len());
                for chunk in idx.chunks(batch_size.max(1)) {
                    let b = classifier_batch(test, chunk, &m.tokenizer, store.device())?;
                    let pred = classifier::predict(bert, &b.input).map_err(|e| e.to_string())?;
                    let gold = b.labels.to_vec1::<u32>().map_err(|e| e.to_string())?;
                    out.extend(gold.into_iter().zip(pred));
                }
                Ok(Outputs::Labels(out))
            }
            (TaskModel::CausalLm(m), Net::Llama(llama)) => m
                .generate(llama, test, GENERATION_BATCH)
                .map(Outputs::Texts),
            _ => unreachable!("net() builds the network of the model's own task"),
        }
    }

    /// The same task model over another store (tokenizer and config shared).
    pub fn with_store(&self, store: ParamStore) -> TaskModel {
        match self {
            TaskModel::Classifier(m) => TaskModel::Classifier(ClassifierModel {
                config: m.config.clone(),
                max_len: m.max_len,
                store,
                tokenizer: m.tokenizer.clone(),
                tokenizer_json: m.tokenizer_json.clone(),
            }),
            TaskModel::CausalLm(m) => TaskModel::CausalLm(CausalLmModel {
                config: m.config.clone(),
                store,
                tokenizer: m.tokenizer.clone(),
                tokenizer_json: m.tokenizer_json.clone(),
                settings: m.settings,
                eos: m.eos.clone(),
                stop_ids: m.stop_ids.clone(),
            }),
        }
    }
}

/// What a base model is built for: a classifier over `labels` (XNLI, MasakhaNEWS) or a causal LM
/// (Fed-Aya).
#[derive(Debug, Clone, PartialEq)]
pub enum TaskSetup {
    Classification {
        labels: Vec<String>,
        max_len: usize,
        dtype: WeightDtype,
    },
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
            return Err(ModelError::Invalid(format!(
                "{}: model_type {found:?}, but this dataset needs a {want:?} model",
                dir.join("config.json").display()
            )));
        }
    }
    let (mut model, dtype) = match setup {
        TaskSetup::Classification {
            labels,
            max_len,
            dtype,
        } => (
            build_classifier(source, labels, *max_len, head_seed, train_texts, device)?.into(),
            *dtype,
        ),
        TaskSetup::Generation(settings) => (
            TaskModel::from(build_causal_lm(source, *settings, train_texts, device)?),
            settings.dtype,
        ),
    };
    // Built in f32 (a fresh head and pooler drawn as f32, as HF's init), then held in `dtype`.
    model
        .store_mut()
        .cast(dtype.dtype())
        .map_err(|e| ModelError::Invalid(e.to_string()))?;
    Ok(model)
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
    std::fs::create_dir_all(out).map_err(|source| ModelError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        let from = src.join(name);
        let to = out.join(name);
        if !from.is_file() {
            return Err(ModelError::Invalid(format!(
                "{} is missing (expected an HF-layout model directory)",
                from.display()
            )));
        }
        // Hub cache snapshots are symlinks into `blobs/`: link the blob, not the (relative)
        // symlink, which would dangle in `out`.
        let from = std::fs::canonicalize(&from).unwrap_or(from);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|source| ModelError::Io {
                path: to.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Evaluation batch of the generation setup (PAPER_NOTES §1).
pub const GENERATION_BATCH: usize = 8;

impl Net {
    /// Summed task loss of a batch and the number of items it sums over: classification CE
    /// over examples, causal-LM CE over response tokens. A step divides by the items of its
    /// whole accumulation group, so accumulated micro-batches equal one large batch.
    pub fn task_loss_sum(&self, batch: &Batch, ctx: &ForwardCtx<'_>) -> CResult<(Tensor, usize)> {
        match (self, batch) {
            (Net::Bert(m), Batch::Classifier(b)) => {
                let logits = m.forward(&b.input, ctx)?;
                let n = b.labels.dim(0)?;
                // Cross-entropy in f32 whatever the model's dtype (as PyTorch's bf16 autocast).
                let logp = candle_nn::ops::log_softmax(
                    &logits.to_dtype(candle_core::DType::F32)?,
                    candle_core::D::Minus1,
                )?;
                let picked = logp.gather(&b.labels.unsqueeze(1)?, 1)?;
                Ok((picked.sum_all()?.neg()?, n))
            }
            (Net::Llama(m), Batch::CausalLm(b)) => {
                let logits = m.forward(&b.input_ids, &b.attention_mask, ctx)?;
                causal_lm_loss_sum(&logits, &b.labels)
            }
            _ => candle_core::bail!("batch of the other task"),
        }
    }

    /// Every adapted linear in module order.
    pub fn linears(&self) -> Vec<&AdaptedLinear> {
        match self {
            Net::Bert(m) => m.linears(),
            Net::Llama(m) => m.linears(),
        }
    }

    /// Eval-mode forward of a batch for its side effects on `ctx`'s input observer (PSG
    /// meta-data, §5).
    pub fn observe(&self, batch: &Batch, ctx: &ForwardCtx<'_>) -> CResult<()> {
        match (self, batch) {
            (Net::Bert(m), Batch::Classifier(b)) => m.forward(&b.input, ctx).map(|_| ()),
            (Net::Llama(m), Batch::CausalLm(b)) => {
                m.forward(&b.input_ids, &b.attention_mask, ctx).map(|_| ())
            }
            _ => candle_core::bail!("batch of the other task"),
        }
    }
}

/// Names of the linears whose inputs the meta-data observe, in order.
pub fn observed_names(net: &Net) -> Vec<String> {
    let mut names: Vec<String> = net.linears().iter().map(|l| l.name().to_string()).collect();
    if let Net::Llama(_) = net {
        names.push(crate::model::llama::LM_HEAD.to_string());
    }
    names
}

/// `BertInput` of a classification batch (for callers that only classify).
pub fn bert_input(batch: &Batch) -> Option<&BertInput> {
    match batch {
        Batch::Classifier(b) => Some(&b.input),
        Batch::CausalLm(_) => None,
    }
}

/// A scalar tensor's value as f32.
pub fn scalar(t: &Tensor) -> CResult<f32> {
    t.to_dtype(DType::F32)?.to_scalar::<f32>()
}
