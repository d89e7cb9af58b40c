//! Running any model directory (imported, base, or personalized-and-merged) on examples: logits
//! and predicted labels for BERT classifiers, greedy generations for LLaMA causal LMs. This is
//! what `pipeline predict` calls, so outside checks reach exactly the forward pass the stages use.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::generate::{generate_greedy, GreedyConfig};
use crate::model::bert::{load_pretrained, BertForSequenceClassification, BertInput};
use crate::model::llama_io::load_llama;
use crate::peft::layer::ForwardCtx;
use crate::peft::AdapterSpec;
use crate::tokenize::{PaddingSide, TextTokenizer};

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("{path}: {message}")]
    Model { path: String, message: String },
    #[error("example {index}: {message}")]
    Input { index: usize, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// One input example, as read from JSONL (`text`, or `text_a`/`text_b`, or `prompt`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictExample {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub text_a: Option<String>,
    #[serde(default)]
    pub text_b: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Prediction {
    Class {
        logits: Vec<f32>,
        label: usize,
        label_name: Option<String>,
    },
    Generation {
        generation: String,
        token_ids: Vec<u32>,
    },
}

#[derive(Debug, Clone)]
pub struct PredictOptions {
    pub max_len: usize,
    pub batch_size: usize,
    pub max_new_tokens: usize,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions {
            max_len: 128,
            batch_size: 8,
            max_new_tokens: 64,
        }
    }
}

fn model_err(path: &Path, e: impl std::fmt::Display) -> PredictError {
    PredictError::Model {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Runs the model in `dir` (HF layout) on `examples`, dispatching on `config.json`'s `model_type`.
pub fn predict_dir(
    dir: &Path,
    examples: &[PredictExample],
    opts: &PredictOptions,
) -> Result<Vec<Prediction>, PredictError> {
    let config_path = dir.join("config.json");
    let config: serde_json::Value = std::fs::read(&config_path)
        .map_err(|e| model_err(&config_path, e))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| model_err(&config_path, e)))?;
    match config.get("model_type").and_then(|v| v.as_str()) {
        Some("bert") => classify(dir, examples, opts),
        Some("llama") => generate(dir, examples, opts),
        other => Err(model_err(
            &config_path,
            format!("model_type {other:?} is not supported (bert, llama)"),
        )),
    }
}

fn classify(
    dir: &Path,
    examples: &[PredictExample],
    opts: &PredictOptions,
) -> Result<Vec<Prediction>, PredictError> {
    let dev = Device::Cpu;
    let (cfg, store) =
        load_pretrained(dir, &dev, DType::F32, |_| false).map_err(|e| model_err(dir, e))?;
    let model = BertForSequenceClassification::load(&store, &cfg, &AdapterSpec::NONE)
        .map_err(|e| model_err(dir, format!("not a sequence classifier: {e}")))?;
    let mut tok = TextTokenizer::from_file(&dir.join("tokenizer.json"), "[PAD]")
        .map_err(|e| model_err(&dir.join("tokenizer.json"), e))?;
    tok.set_max_len(opts.max_len)
        .map_err(|e| model_err(dir, e))?;
    let mut out = Vec::with_capacity(examples.len());
    for (start, chunk) in examples.chunks(opts.batch_size.max(1)).enumerate() {
        let base = start * opts.batch_size.max(1);
        let mut pairs = Vec::with_capacity(chunk.len());
        let mut singles = Vec::with_capacity(chunk.len());
        for (i, ex) in chunk.iter().enumerate() {
            match (&ex.text, &ex.text_a, &ex.text_b) {
                (Some(t), None, None) => singles.push(t.as_str()),
                (None, Some(a), Some(b)) => pairs.push((a.as_str(), b.as_str())),
                (None, Some(a), None) => singles.push(a.as_str()),
                _ => {
                    return Err(PredictError::Input {
                        index: base + i,
                        message: "a classifier needs `text`, or `text_a` with optional `text_b`"
                            .into(),
                    })
                }
            }
        }
        if !pairs.is_empty() && !singles.is_empty() {
            return Err(PredictError::Input {
                index: base,
                message: "mix of single texts and pairs in one file".into(),
            });
        }
        let enc = if pairs.is_empty() {
            tok.encode_batch(&singles, PaddingSide::Right)
        } else {
            tok.encode_pair_batch(&pairs, PaddingSide::Right)
        }
        .map_err(|e| PredictError::Input {
            index: base,
            message: e.to_string(),
        })?;
        let (ids, mask, types) = enc.to_tensors(&dev).map_err(|e| model_err(dir, e))?;
        let input = BertInput {
            input_ids: ids,
            attention_mask: mask,
            token_type_ids: types,
        };
        let logits: Vec<Vec<f32>> = model.forward(&input, &ForwardCtx::eval())?.to_vec2()?;
        for row in logits {
            let label = argmax(&row);
            let label_name = cfg
                .id2label
                .as_ref()
                .and_then(|m| m.get(&label.to_string()).cloned());
            out.push(Prediction::Class {
                logits: row,
                label,
                label_name,
            });
        }
    }
    Ok(out)
}

fn generate(
    dir: &Path,
    examples: &[PredictExample],
    opts: &PredictOptions,
) -> Result<Vec<Prediction>, PredictError> {
    let dev = Device::Cpu;
    let model = load_llama(dir, DType::F32, &dev).map_err(|e| model_err(dir, e))?;
    let tok_path = dir.join("tokenizer.json");
    let raw = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| model_err(&tok_path, e))?;
    let stop: Vec<u32> = model
        .config()
        .eos_token_id
        .as_ref()
        .map(|t| t.to_vec())
        .unwrap_or_default();
    // Left padding needs a pad token; models without one pad with EOS, as HF does.
    let pad = ["<pad>", "[PAD]"]
        .into_iter()
        .find(|t| raw.token_to_id(t).is_some())
        .map(str::to_string)
        .or_else(|| stop.first().and_then(|&id| raw.id_to_token(id)))
        .ok_or_else(|| model_err(&tok_path, "no pad token and no EOS to pad with"))?;
    let tok = TextTokenizer::new(raw, &pad).map_err(|e| model_err(&tok_path, e))?;
    let greedy = GreedyConfig {
        max_new_tokens: opts.max_new_tokens,
        stop_token_ids: stop,
        pad_token_id: tok.pad_id(),
    };
    let mut out = Vec::with_capacity(examples.len());
    for (start, chunk) in examples.chunks(opts.batch_size.max(1)).enumerate() {
        let base = start * opts.batch_size.max(1);
        let prompts: Vec<&str> = chunk
            .iter()
            .enumerate()
            .map(|(i, ex)| {
                ex.prompt.as_deref().ok_or_else(|| PredictError::Input {
                    index: base + i,
                    message: "a causal LM needs `prompt`".into(),
                })
            })
            .collect::<Result<_, _>>()?;
        let enc =
            tok.encode_batch(&prompts, PaddingSide::Left)
                .map_err(|e| PredictError::Input {
                    index: base,
                    message: e.to_string(),
                })?;
        let (ids, mask, _) = enc.to_tensors(&dev).map_err(|e| model_err(dir, e))?;
        for token_ids in generate_greedy(&model, &ids, &mask, &greedy)? {
            let generation = tok
                .decode(&token_ids, true)
                .map_err(|e| model_err(dir, e))?;
            out.push(Prediction::Generation {
                generation,
                token_ids,
            });
        }
    }
    Ok(out)
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// Tensor helper for callers that already hold logits.
pub fn argmax_rows(logits: &Tensor) -> candle_core::Result<Vec<usize>> {
    Ok(logits.to_vec2::<f32>()?.iter().map(|r| argmax(r)).collect())
}
