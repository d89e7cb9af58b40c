//! Tokenization from HF `tokenizer.json`: single texts and text pairs, truncation, right
//! padding (training) or left padding (generation), completion-only labels, prompt templates,
//! and deterministic tokenizer training for CI.
//!
//! Padding is done here rather than by the `tokenizers` padding config so that the side and the
//! pad id are explicit at every call site (training pads right, generation pads left:
//! PAPER_NOTES §1).

mod batch;
mod template;
mod train;

pub use batch::{completion_only_labels, EncodedBatch, PaddingSide, IGNORE_INDEX};
pub use template::{alpaca_prompt, llama3_chat_prompt, PromptTemplate, ALPACA_RESPONSE_MARKER};
pub use train::{train_byte_level_bpe, train_wordpiece, BpeSpecials};

use std::path::Path;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Errors of tokenizer loading, encoding and training.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("cannot load tokenizer {path}: {message}")]
    Load { path: String, message: String },
    #[error("tokenizer has no token {token:?} (needed as {role})")]
    MissingToken { token: String, role: &'static str },
    #[error("tokenizing text #{index}: {message}")]
    Encode { index: usize, message: String },
    #[error("training tokenizer: {0}")]
    Train(String),
    #[error("empty batch: nothing to encode")]
    EmptyBatch,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A `tokenizer.json` tokenizer with a chosen pad token and optional truncation.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: u32,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, using `pad_token` (e.g. `[PAD]`, `<pad>`) for padding.
    pub fn from_file(path: &Path, pad_token: &str) -> Result<Self, TokenizeError> {
        let inner = Tokenizer::from_file(path).map_err(|e| TokenizeError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::new(inner, pad_token)
    }

    /// Wraps an already built tokenizer; `pad_token` must be in its vocabulary. Padding and
    /// truncation stored in the `tokenizer.json` are dropped (as transformers does unless asked):
    /// padding happens in [`EncodedBatch::pad`], truncation only after [`Self::set_max_len`].
    pub fn new(mut inner: Tokenizer, pad_token: &str) -> Result<Self, TokenizeError> {
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| TokenizeError::Train(e.to_string()))?;
        let pad_id = inner
            .token_to_id(pad_token)
            .ok_or_else(|| TokenizeError::MissingToken {
                token: pad_token.to_string(),
                role: "pad token",
            })?;
        Ok(Self { inner, pad_id })
    }

    /// Adds `token` as a special token if absent (the Llama-3 recipe adds `<pad>`,
    /// PAPER_NOTES §1) and makes it the pad token. Returns the new vocabulary size: the model's
    /// embeddings must be resized to it.
    pub fn add_pad_token(&mut self, token: &str) -> Result<usize, TokenizeError> {
        if self.inner.token_to_id(token).is_none() {
            self.inner
                .add_special_tokens(vec![tokenizers::AddedToken::from(token.to_string(), true)])
                .map_err(|e| TokenizeError::Train(e.to_string()))?;
        }
        self.pad_id = self
            .inner
            .token_to_id(token)
            .ok_or_else(|| TokenizeError::MissingToken {
                token: token.to_string(),
                role: "pad token",
            })?;
        Ok(self.inner.get_vocab_size(true))
    }

    /// Truncates every later encoding to `max_len` tokens (special tokens included), removing
    /// from the longer sequence of a pair first — HF `truncation="longest_first"`.
    pub fn set_max_len(&mut self, max_len: usize) -> Result<(), TokenizeError> {
        self.inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| TokenizeError::Train(e.to_string()))?;
        Ok(())
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Token ids of one text, with the tokenizer's special tokens if `add_special_tokens`.
    pub fn encode_ids(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, TokenizeError> {
        let enc =
            self.inner
                .encode(text, add_special_tokens)
                .map_err(|e| TokenizeError::Encode {
                    index: 0,
                    message: e.to_string(),
                })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text (special tokens skipped if asked).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizeError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizeError::Encode {
                index: 0,
                message: e.to_string(),
            })
    }

    /// Encodes single texts (with special tokens) and pads them on `side`.
    pub fn encode_batch(
        &self,
        texts: &[&str],
        side: PaddingSide,
    ) -> Result<EncodedBatch, TokenizeError> {
        let mut rows = Vec::with_capacity(texts.len());
        for (index, text) in texts.iter().enumerate() {
            let enc = self
                .inner
                .encode(*text, true)
                .map_err(|e| TokenizeError::Encode {
                    index,
                    message: e.to_string(),
                })?;
            rows.push((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()));
        }
        EncodedBatch::pad(rows, self.pad_id, side)
    }

    /// Encodes text pairs — for BERT `[CLS] a [SEP] b [SEP]` with token type ids 0/1 — and pads.
    pub fn encode_pair_batch(
        &self,
        pairs: &[(&str, &str)],
        side: PaddingSide,
    ) -> Result<EncodedBatch, TokenizeError> {
        let mut rows = Vec::with_capacity(pairs.len());
        for (index, (a, b)) in pairs.iter().enumerate() {
            let enc = self
                .inner
                .encode((*a, *b), true)
                .map_err(|e| TokenizeError::Encode {
                    index,
                    message: e.to_string(),
                })?;
            rows.push((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()));
        }
        EncodedBatch::pad(rows, self.pad_id, side)
    }
}
