//! The classification task (XNLI, MasakhaNEWS; PAPER_NOTES §1): a BERT sequence classifier with
//! its WordPiece tokenizer, built from an HF-layout directory (a fresh head when the checkpoint
//! has none with the right number of labels) or as a seeded random tiny BERT for CI; tokenised
//! batches; arg-max predictions; saving in HF layout.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use datasets::Example;

use super::error::{ModelError, Result};
use super::source::{HfModel, ModelSource};
use crate::model::bert::{
    ensure_classifier, ensure_pooler, load_pretrained, predictions, random_init, BertConfig,
    BertForSequenceClassification, BertInput,
};
use crate::model::hf_layout::write_model_dir;
use crate::params::ParamStore;
use crate::peft::layer::ForwardCtx;
use crate::tokenize::{train_wordpiece, PaddingSide, TextTokenizer};

/// The pipeline resolves `hf:` sources to their snapshot directory before a stage runs.
pub(crate) fn unresolved(h: &HfModel) -> ModelError {
    ModelError::Invalid(format!(
        "model {}@{} was not resolved to a directory (the pipeline fetches it first)",
        h.hf, h.revision
    ))
}

/// A classifier ready to train: config (with `id2label`), every parameter trainable, the
/// tokenizer and its `tokenizer.json` text (saved unchanged with the model).
pub struct ClassifierModel {
    pub config: BertConfig,
    /// Inputs are truncated to this many tokens (and padded to it for the meta-data).
    pub max_len: usize,
    pub store: ParamStore,
    pub tokenizer: TextTokenizer,
    pub tokenizer_json: String,
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
        return Err(ModelError::Invalid(format!(
            "a classifier needs at least 2 labels, got {}",
            labels.len()
        )));
    }
    let (mut config, mut store, tokenizer_json) = match source {
        ModelSource::Dir(dir) => {
            let (cfg, store) = load_pretrained(dir, device, DType::F32, |_| true)?;
            let mut store = classifier_params(store)?;
            ensure_pooler(&mut store, &cfg, head_seed, DType::F32)?;
            ensure_classifier(&mut store, &cfg, labels.len(), head_seed, DType::F32)?;
            let path = dir.join("tokenizer.json");
            let json = std::fs::read_to_string(&path)
                .map_err(|source| ModelError::Io { path, source })?;
            (cfg, store, json)
        }
        ModelSource::Tiny(t) => {
            let texts = train_texts().map_err(ModelError::Invalid)?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let tok = train_wordpiece(&refs, t.vocab_size)?;
            let json = tok
                .to_string(false)
                .map_err(|e| ModelError::Invalid(format!("tokenizer.json: {e}")))?;
            let mut cfg = BertConfig::tiny(tok.get_vocab_size(true));
            cfg.hidden_size = t.hidden;
            cfg.num_hidden_layers = t.layers;
            cfg.num_attention_heads = t.heads;
            cfg.intermediate_size = t.intermediate;
            cfg.max_position_embeddings = max_len.max(8);
            let store = random_init(&cfg, labels.len(), t.seed, device, DType::F32)?;
            (cfg, store, json)
        }
        ModelSource::Hf(h) => return Err(unresolved(h)),
        ModelSource::TinyLlama(_) => {
            return Err(ModelError::Invalid(
                "`tiny_llama` builds a causal LM; a classification dataset needs `tiny` or a BERT `dir`"
                    .into(),
            ))
        }
    };
    store
        .set_trainable(|_| true)
        .map_err(|e| ModelError::Invalid(e.to_string()))?;
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
        return Err(ModelError::Invalid(format!(
            "max_len {max_len} exceeds the model's max_position_embeddings {}",
            config.max_position_embeddings
        )));
    }
    let inner = <tokenizers::Tokenizer as std::str::FromStr>::from_str(&tokenizer_json)
        .map_err(|e| ModelError::Invalid(format!("tokenizer.json: {e}")))?;
    // BERT WordPiece vocabularies pad with `[PAD]`; XLM-R's SentencePiece one (multilingual-e5)
    // with `<pad>`.
    let pad = ["[PAD]", "<pad>"]
        .into_iter()
        .find(|t| inner.token_to_id(t).is_some())
        .unwrap_or("[PAD]");
    let mut tokenizer = TextTokenizer::new(inner, pad)?;
    tokenizer.set_max_len(max_len)?;
    Ok(ClassifierModel {
        config,
        max_len,
        store,
        tokenizer,
        tokenizer_json,
    })
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
                .map_err(|e| ModelError::Invalid(e.to_string()))?;
        }
    }
    Ok(out)
}

/// Writes `model` into `dir` in HF layout (all or nothing).
pub fn save_classifier(model: &ClassifierModel, dir: &Path) -> Result<()> {
    let config = serde_json::to_value(&model.config)
        .map_err(|e| ModelError::Invalid(format!("config.json: {e}")))?;
    let tensors = model
        .store
        .export(|n| !crate::peft::is_adapter_param(n))
        .map_err(|e| ModelError::Invalid(e.to_string()))?;
    write_model_dir(dir, &config, &tensors, &model.tokenizer_json)?;
    Ok(())
}

/// A tokenised classification batch; `labels` are u32 class ids (B).
#[derive(Debug, Clone)]
pub struct ClassifierBatch {
    pub input: BertInput,
    pub labels: Tensor,
}

/// Tokenises `examples[order]` into one classification batch (pairs when `text_b` is set),
/// right-padded to the longest row.
pub fn classifier_batch(
    examples: &[Example],
    order: &[usize],
    tokenizer: &TextTokenizer,
    device: &Device,
) -> std::result::Result<ClassifierBatch, String> {
    padded_batch(examples, order, tokenizer, device, None)
}

/// [`classifier_batch`] with every row right-padded to `width` tokens: the reference tokenises
/// its classification datasets with `padding="max_length"`, so the batches its PSG meta-data
/// pass sees are `max_length` wide and the pad positions enter the statistics (§5).
pub fn classifier_batch_padded_to(
    examples: &[Example],
    order: &[usize],
    tokenizer: &TextTokenizer,
    device: &Device,
    width: usize,
) -> std::result::Result<ClassifierBatch, String> {
    padded_batch(examples, order, tokenizer, device, Some(width))
}

fn padded_batch(
    examples: &[Example],
    order: &[usize],
    tokenizer: &TextTokenizer,
    device: &Device,
    width: Option<usize>,
) -> std::result::Result<ClassifierBatch, String> {
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
    let mut enc = enc;
    if let Some(w) = width {
        enc.pad_right_to(w, tokenizer.pad_id());
    }
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

/// Eval-mode predictions (arg-max class per example).
pub fn predict(
    model: &BertForSequenceClassification,
    input: &BertInput,
) -> candle_core::Result<Vec<u32>> {
    predictions(&model.forward(input, &ForwardCtx::eval())?)
}
