//! The generation task (Fed-Aya, PAPER_NOTES §1): a LLaMA causal LM with its tokenizer and prompt
//! template, completion-only training batches (loss on the response tokens only, as TRL's
//! `DataCollatorForCompletionOnlyLM` in the reference) and batched greedy generation of a
//! client's test prompts (left padding, batch 8, stop at EOS).
//!
//! Where the model comes from is a [`super::ModelSource`]: an HF-layout LLaMA
//! directory, or a seeded random tiny LLaMA with a byte-level BPE trained on the client texts
//! (CI), so the smoke pipeline runs the real code paths.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use datasets::Example;
use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};
use super::source::{ModelSource, WeightDtype};
use crate::generate::{generate_greedy, GreedyConfig};
use crate::model::hf_layout::{load_tensors, read_config, write_model_dir};
use crate::model::llama::LlamaForCausalLM;
use crate::model::llama_config::{LlamaConfig, TokenIds};
use crate::model::llama_io::{random_llama_weights, resize_vocab};
use crate::params::ParamStore;
use crate::peft::AdapterSpec;
use crate::tokenize::{
    train_byte_level_bpe, BpeSpecials, EncodedBatch, PaddingSide, PromptTemplate, TextTokenizer,
    IGNORE_INDEX,
};

/// Prompt format and lengths of the generation setup (PAPER_NOTES §1: Alpaca for MobileLLaMA,
/// Llama-3 chat for Llama-3.2-Instruct; training sequences ≤ 1024 tokens, ≤ 1024 new tokens).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LmSettings {
    pub prompt: PromptTemplate,
    /// Training sequences are truncated to this many tokens; examples whose prompt alone
    /// reaches it are dropped (the reference filters them out).
    pub max_len: usize,
    /// Greedy generation stops after this many new tokens (or at a stop token).
    pub max_new_tokens: usize,
    /// Dtype of the model's weights.
    #[serde(default)]
    pub dtype: WeightDtype,
}

/// A causal LM ready to train: config, every parameter trainable, the tokenizer (with a pad
/// token) and its `tokenizer.json` text, and the task settings.
pub struct CausalLmModel {
    pub config: LlamaConfig,
    pub store: ParamStore,
    pub tokenizer: TextTokenizer,
    pub tokenizer_json: String,
    pub settings: LmSettings,
    /// Text of the EOS token, appended to Alpaca training texts.
    pub eos: String,
    /// Generation stops at any of these (EOS ids of the config, `<|eot_id|>` for chat).
    pub stop_ids: Vec<u32>,
}

/// A right-padded completion-only batch: `labels` is `IGNORE_INDEX` except on response tokens.
#[derive(Debug, Clone)]
pub struct LmBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub labels: Tensor,
}

fn invalid(e: impl std::fmt::Display) -> ModelError {
    ModelError::Invalid(e.to_string())
}

/// Special tokens of the tiny model's tokenizer.
fn tiny_specials() -> BpeSpecials {
    BpeSpecials {
        extra: vec!["<|eot_id|>".into()],
        ..BpeSpecials::default()
    }
}

/// The pad token of the reference's `get_llm_tokenizer`: the tokenizer's pad token, else its
/// unk token, else none (then a `<pad>` is added). A `tokenizer.json` records no pad role, so
/// a `<pad>` / `[PAD]` token stands for it; the unk token is the one its model names
/// (MobileLLaMA's `<unk>`), or a token named `<unk>`. Llama-3.2 and SmolLM2 have neither.
fn pad_token(raw: &tokenizers::Tokenizer) -> Option<String> {
    use tokenizers::models::ModelWrapper;
    let model_unk = match raw.get_model() {
        ModelWrapper::BPE(m) => m.get_unk_token().clone(),
        ModelWrapper::WordPiece(m) => Some(m.unk_token.clone()),
        ModelWrapper::WordLevel(m) => Some(m.unk_token.clone()),
        ModelWrapper::Unigram(_) => None,
    };
    ["<pad>", "[PAD]"]
        .into_iter()
        .map(str::to_string)
        .chain(model_unk)
        .chain(std::iter::once("<unk>".to_string()))
        .find(|t| raw.token_to_id(t).is_some())
}

/// Builds the causal LM. `train_texts` is only called for a tiny model (its tokenizer is
/// trained on them). A directory's tokenizer pads as [`pad_token`] says; without one it gets a
/// new `<pad>` token and the embeddings grow by one mean row (the reference's
/// `get_llm_tokenizer` + `resize_token_embeddings`).
pub fn build_causal_lm(
    source: &ModelSource,
    settings: LmSettings,
    train_texts: impl FnOnce() -> std::result::Result<Vec<String>, String>,
    device: &Device,
) -> Result<CausalLmModel> {
    if settings.max_len < 8 {
        return Err(invalid(format!(
            "max_len {} is too short for a prompt and a response",
            settings.max_len
        )));
    }
    let (mut config, mut tensors, raw) =
        match source {
            ModelSource::Dir(dir) => {
                let config: LlamaConfig = read_config(dir)?;
                config.validate().map_err(invalid)?;
                let tensors = load_tensors(dir, DType::F32, device)?;
                let path = dir.join("tokenizer.json");
                let raw = tokenizers::Tokenizer::from_file(&path)
                    .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
                (config, tensors, raw)
            }
            ModelSource::TinyLlama(t) => {
                let mut texts = train_texts().map_err(ModelError::Invalid)?;
                // The prompt template's own text is part of every sequence: learn its merges too.
                texts.push(settings.prompt.training_text("", "", ""));
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let specials = tiny_specials();
                let raw = train_byte_level_bpe(&refs, t.vocab_size, &specials)?;
                let id = |tok: &str| raw.token_to_id(tok).ok_or_else(|| invalid(tok));
                let mut config = LlamaConfig::new(
                    raw.get_vocab_size(true),
                    t.hidden,
                    t.intermediate,
                    t.layers,
                    t.heads,
                    t.kv_heads,
                );
                config.max_position_embeddings = settings.max_len + settings.max_new_tokens;
                config.bos_token_id = Some(TokenIds::One(id(&specials.bos)?));
                config.eos_token_id = Some(TokenIds::One(id(&specials.eos)?));
                config.pad_token_id = Some(id(&specials.pad)?);
                config.validate().map_err(invalid)?;
                let tensors = random_llama_weights(&config, t.seed)?
                    .into_iter()
                    .map(|(k, v)| v.to_device(device).map(|v| (k, v)))
                    .collect::<candle_core::Result<_>>()
                    .map_err(invalid)?;
                (config, tensors, raw)
            }
            ModelSource::Hf(h) => return Err(super::classifier::unresolved(h)),
            ModelSource::Tiny(_) => return Err(invalid(
                "`tiny` builds a BERT classifier; a generation dataset needs `tiny_llama` or `dir`",
            )),
        };
    let mut raw = raw;
    let pad = match pad_token(&raw) {
        Some(t) => t,
        None => {
            raw.add_special_tokens(vec![tokenizers::AddedToken::from("<pad>", true)])
                .map_err(invalid)?;
            "<pad>".to_string()
        }
    };
    let mut tokenizer = TextTokenizer::new(raw, &pad)?;
    let vocab = tokenizer.vocab_size();
    if vocab > config.vocab_size {
        resize_vocab(&mut tensors, &mut config, vocab)?;
    }
    tokenizer.set_max_len(settings.max_len)?;
    let tokenizer_json = tokenizer.inner().to_string(false).map_err(invalid)?;
    let eos_ids = config.eos_token_id.as_ref().map(TokenIds::to_vec);
    let eos_id = eos_ids
        .as_ref()
        .and_then(|v| v.first().copied())
        .ok_or_else(|| invalid("config.json has no eos_token_id"))?;
    let eos = tokenizer
        .inner()
        .id_to_token(eos_id)
        .ok_or_else(|| invalid(format!("eos_token_id {eos_id} is not in the tokenizer")))?;
    let mut stop_ids = eos_ids.unwrap_or_default();
    if settings.prompt == PromptTemplate::Llama3Chat {
        if let Some(eot) = tokenizer.token_id("<|eot_id|>") {
            if !stop_ids.contains(&eot) {
                stop_ids.push(eot);
            }
        }
    }
    let store = ParamStore::from_tensors(tensors, device, DType::F32, |_| true).map_err(invalid)?;
    Ok(CausalLmModel {
        config,
        store,
        tokenizer,
        tokenizer_json,
        settings,
        eos,
        stop_ids,
    })
}

impl CausalLmModel {
    /// The model over `store` (this model's weights, or a copy with adapters).
    pub fn net(&self, store: &ParamStore, spec: &AdapterSpec) -> Result<LlamaForCausalLM> {
        LlamaForCausalLM::load(store, &self.config, spec).map_err(invalid)
    }

    /// Whether the chat template's text already holds its BOS (then no special tokens are
    /// added when encoding).
    fn add_special_tokens(&self) -> bool {
        self.settings.prompt == PromptTemplate::Alpaca
    }

    /// The instruction of a generation example (`text_a`).
    fn prompt_of(&self, e: &Example) -> String {
        self.settings.prompt.generation_prompt(&e.text_a)
    }

    /// Completion-only training batch of `examples[order]` (right padding). A response token
    /// is one whose text ends after the generation prompt, which is what the response-marker
    /// search of TRL's collator finds for both templates. As TRL's collator (through
    /// `DataCollatorForLanguageModeling`), a token equal to the pad token is never a label —
    /// e.g. a literal `<unk>` in a response when the pad token is `<unk>` (MobileLLaMA).
    pub fn batch(
        &self,
        examples: &[Example],
        order: &[usize],
    ) -> std::result::Result<LmBatch, String> {
        let mut rows = Vec::with_capacity(order.len());
        let mut labels = Vec::with_capacity(order.len());
        let pad_id = self.tokenizer.pad_id();
        for &i in order {
            let e = &examples[i];
            let response = e
                .text_b
                .as_deref()
                .ok_or_else(|| format!("example #{i} has no response (text_b)"))?;
            let text = self
                .settings
                .prompt
                .training_text(&e.text_a, response, &self.eos);
            let prompt_len = self.prompt_of(e).len();
            let enc = self
                .tokenizer
                .inner()
                .encode(text.as_str(), self.add_special_tokens())
                .map_err(|err| format!("example #{i}: {err}"))?;
            let row_labels: Vec<i64> = enc
                .get_ids()
                .iter()
                .zip(enc.get_offsets())
                .map(|(&id, &(_, end))| {
                    if end > prompt_len && id != pad_id {
                        i64::from(id)
                    } else {
                        IGNORE_INDEX
                    }
                })
                .collect();
            rows.push((enc.get_ids().to_vec(), vec![0; enc.get_ids().len()]));
            labels.push(row_labels);
        }
        let enc = EncodedBatch::pad(rows, self.tokenizer.pad_id(), PaddingSide::Right)
            .map_err(|e| e.to_string())?;
        let width = enc.width();
        let flat: Vec<i64> = labels
            .into_iter()
            .flat_map(|mut l| {
                l.resize(width, IGNORE_INDEX);
                l
            })
            .collect();
        let device = self.store.device();
        let (input_ids, attention_mask, _) = enc.to_tensors(device).map_err(|e| e.to_string())?;
        let labels =
            Tensor::from_vec(flat, (enc.len(), width), device).map_err(|e| e.to_string())?;
        Ok(LmBatch {
            input_ids,
            attention_mask,
            labels,
        })
    }

    /// The generation prompts of `examples[order]` alone, with special tokens, right-padded to
    /// the longest (the reference's meta-data batches, §5); labels are all ignored.
    pub fn prompt_batch(
        &self,
        examples: &[Example],
        order: &[usize],
    ) -> std::result::Result<LmBatch, String> {
        let mut rows = Vec::with_capacity(order.len());
        for &i in order {
            let prompt = self.prompt_of(&examples[i]);
            let enc = self
                .tokenizer
                .inner()
                .encode(prompt.as_str(), true)
                .map_err(|err| format!("example #{i}: {err}"))?;
            rows.push((enc.get_ids().to_vec(), vec![0; enc.get_ids().len()]));
        }
        let enc = EncodedBatch::pad(rows, self.tokenizer.pad_id(), PaddingSide::Right)
            .map_err(|e| e.to_string())?;
        let device = self.store.device();
        let (input_ids, attention_mask, _) = enc.to_tensors(device).map_err(|e| e.to_string())?;
        let labels = Tensor::full(IGNORE_INDEX, (enc.len(), enc.width()), device)
            .map_err(|e| e.to_string())?;
        Ok(LmBatch {
            input_ids,
            attention_mask,
            labels,
        })
    }

    /// Training examples that keep at least one response token after truncation (the reference
    /// drops examples whose prompt alone exceeds the maximum length).
    pub fn trainable_examples(
        &self,
        examples: &[Example],
    ) -> std::result::Result<Vec<Example>, String> {
        let mut out = Vec::with_capacity(examples.len());
        for (i, e) in examples.iter().enumerate() {
            let n = self
                .tokenizer
                .inner()
                .encode(self.prompt_of(e).as_str(), self.add_special_tokens())
                .map_err(|err| format!("example #{i}: {err}"))?
                .get_ids()
                .len();
            if n < self.settings.max_len {
                out.push(e.clone());
            }
        }
        Ok(out)
    }

    /// Greedy generations for `examples` (prompts left-padded in batches of `batch_size`),
    /// decoded without special tokens and stripped, as the reference's evaluation.
    pub fn generate(
        &self,
        net: &LlamaForCausalLM,
        examples: &[Example],
        batch_size: usize,
    ) -> std::result::Result<Vec<String>, String> {
        // Prompts are not truncated at evaluation (the reference's eval tokenizer has no limit).
        let mut tok = self.tokenizer.inner().clone();
        tok.with_truncation(None).map_err(|e| e.to_string())?;
        let cfg = GreedyConfig {
            max_new_tokens: self.settings.max_new_tokens,
            stop_token_ids: self.stop_ids.clone(),
            pad_token_id: self
                .stop_ids
                .first()
                .copied()
                .unwrap_or(self.tokenizer.pad_id()),
        };
        let mut out = Vec::with_capacity(examples.len());
        for chunk in examples.chunks(batch_size.max(1)) {
            let mut rows = Vec::with_capacity(chunk.len());
            for e in chunk {
                let enc = tok
                    .encode(self.prompt_of(e).as_str(), self.add_special_tokens())
                    .map_err(|err| err.to_string())?;
                rows.push((enc.get_ids().to_vec(), vec![0; enc.get_ids().len()]));
            }
            let enc = EncodedBatch::pad(rows, self.tokenizer.pad_id(), PaddingSide::Left)
                .map_err(|e| e.to_string())?;
            let (ids, mask, _) = enc
                .to_tensors(self.store.device())
                .map_err(|e| e.to_string())?;
            for new in generate_greedy(net, &ids, &mask, &cfg).map_err(|e| e.to_string())? {
                let text = self
                    .tokenizer
                    .decode(&new, true)
                    .map_err(|e| e.to_string())?;
                out.push(text.trim().to_string());
            }
        }
        Ok(out)
    }

    /// Writes the model (adapters excluded) into `dir` in HF layout (all or nothing).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let config = serde_json::to_value(&self.config).map_err(invalid)?;
        let tensors = self
            .store
            .export(|n| !crate::peft::is_adapter_param(n))
            .map_err(invalid)?;
        write_model_dir(dir, &config, &tensors, &self.tokenizer_json)?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::task::TinyLlama;

    pub(crate) fn ex(i: usize) -> Example {
        Example {
            text_a: format!("Say hello number {i}"),
            text_b: Some(format!("hello {i}")),
            label_id: None,
            language: "en".into(),
        }
    }

    /// A tiny LLaMA of `size` with a BPE tokenizer trained on `texts` (Alpaca prompts, 128
    /// tokens).
    pub(crate) fn tiny_lm(
        size: TinyLlama,
        texts: Vec<String>,
        max_new_tokens: usize,
    ) -> CausalLmModel {
        let settings = LmSettings {
            prompt: PromptTemplate::Alpaca,
            max_len: 128,
            max_new_tokens,
            dtype: Default::default(),
        };
        build_causal_lm(
            &ModelSource::TinyLlama(size),
            settings,
            || Ok(texts),
            &Device::Cpu,
        )
        .unwrap()
    }

    /// The size of a 1-layer test LLaMA (hidden 16, 2 heads, 1 KV head, vocabulary 400).
    pub(crate) fn one_layer(seed: u64) -> TinyLlama {
        TinyLlama {
            hidden: 16,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            intermediate: 32,
            vocab_size: 400,
            seed,
        }
    }

    /// A 1-layer LLaMA with a BPE tokenizer trained on the `ex` texts.
    pub(crate) fn tiny() -> CausalLmModel {
        let size = one_layer(5);
        let texts = (0..6)
            .map(|i| format!("Say hello number {i} hello {i}"))
            .collect();
        tiny_lm(size, texts, 4)
    }

    #[test]
    fn labels_cover_exactly_the_response_and_eos() {
        let m = tiny();
        let examples: Vec<Example> = (0..3).map(ex).collect();
        let b = m.batch(&examples, &[0, 2]).unwrap();
        let ids: Vec<Vec<u32>> = b.input_ids.to_vec2().unwrap();
        let labels: Vec<Vec<i64>> = b.labels.to_vec2().unwrap();
        for (row, (ids, labels)) in ids.iter().zip(&labels).enumerate() {
            let kept: Vec<u32> = ids
                .iter()
                .zip(labels)
                .filter(|(_, &l)| l != IGNORE_INDEX)
                .map(|(&i, _)| i)
                .collect();
            let i = [0, 2][row];
            let text = m.tokenizer.decode(&kept, false).unwrap();
            assert_eq!(text.trim(), format!("hello {i}</s>"), "row {row}");
        }
        // Right padding: the shorter row (if any) ends with ignored pad positions.
        assert!(labels.iter().all(|l| l.len() == ids[0].len()));
    }

    #[test]
    fn generation_is_deterministic_and_bounded() {
        let m = tiny();
        let net = m.net(&m.store, &AdapterSpec::NONE).unwrap();
        let examples: Vec<Example> = (0..3).map(ex).collect();
        let a = m.generate(&net, &examples, 2).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(
            a,
            m.generate(&net, &examples, 8).unwrap(),
            "batching changes nothing"
        );
    }

    #[test]
    fn saved_model_reloads() {
        let m = tiny();
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path()).unwrap();
        let back = build_causal_lm(
            &ModelSource::Dir(dir.path().to_path_buf()),
            m.settings,
            || Err("not needed".into()),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(back.config, m.config);
        assert_eq!(back.tokenizer.pad_id(), m.tokenizer.pad_id());
        assert_eq!(back.eos, "</s>");
    }
}
