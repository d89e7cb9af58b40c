//! `score` (PAPER_NOTES §7): the generation metrics of every upstream `personalize` instance's
//! greedy generations — ROUGE-1 and ROUGE-L F1 (`rouge_score` 0.1.2 defaults) and METEOR (NLTK
//! `single_meteor_score` with WordNet 3.0) per test sample — written as `scores.csv` in the
//! report's generation-score schema. Scoring is its own stage so metric options never force
//! the models to be trained again, and the WordNet files it reads are part of its cache key.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use stages::metrics::{score_pairs, Metric, RougeTokenizer, ScoreOptions, Wordnet};
use stages::runs::RunKey;

use super::artifacts::{GENERATIONS_FILE, SCORES_FILE};
use crate::engine::context::StageContext;
use crate::engine::registry::{
    typed_params, ParamError, PlanInputs, Registry, StageError, StageKind,
};

pub fn register(r: &mut Registry) {
    r.register(Arc::new(ScoreKind));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreParams {
    /// `rouge_score` (the reference, default) or `multilingual` (meaningful for non-Latin
    /// scripts; not comparable with the paper).
    #[serde(default)]
    rouge_tokenizer: RougeTokenizer,
}

/// One row of an upstream `generations.csv`: the run key, then the example's language, index,
/// greedy generation and reference.
struct GenerationRow {
    key: RunKey,
    language: String,
    index: String,
    prediction: String,
    reference: String,
}

/// The columns after the run key, in file order.
const ROW_COLUMNS: [&str; 4] = ["language", "index", "prediction", "reference"];

fn read_generations(path: &Path) -> Result<Vec<GenerationRow>, StageError> {
    let mut r = csv::Reader::from_path(path).map_err(|e| csv_err(path, e))?;
    let header = r.headers().map_err(|e| csv_err(path, e))?.clone();
    let want: Vec<&str> = RunKey::COLUMNS
        .iter()
        .chain(&ROW_COLUMNS)
        .copied()
        .collect();
    if header.iter().collect::<Vec<_>>() != want {
        return Err(StageError::msg(format!(
            "{}: expected the columns {}, found {}",
            path.display(),
            want.join(","),
            header.iter().collect::<Vec<_>>().join(",")
        )));
    }
    let mut rows = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| csv_err(path, e))?;
        let fields: Vec<&str> = rec.iter().collect();
        let key = RunKey::parse(&fields[..RunKey::COLUMNS.len()])
            .map_err(|e| StageError::msg(format!("{} row {}: {e}", path.display(), i + 2)))?;
        let rest = &fields[RunKey::COLUMNS.len()..];
        rows.push(GenerationRow {
            key,
            language: rest[0].to_string(),
            index: rest[1].to_string(),
            prediction: rest[2].to_string(),
            reference: rest[3].to_string(),
        });
    }
    Ok(rows)
}

struct ScoreKind;
impl StageKind for ScoreKind {
    fn name(&self) -> &'static str {
        "score"
    }
    fn version(&self) -> u32 {
        1
    }
    fn describe(&self) -> &'static str {
        "ROUGE-1/L and METEOR of every upstream personalize instance's generations"
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        typed_params::<ScoreParams>(params).map(|_| ())
    }
    fn external_inputs(&self, _plan: &PlanInputs<'_>) -> Result<Vec<PathBuf>, StageError> {
        let dir = Wordnet::default_dir();
        let files = Wordnet::files(&dir);
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(StageError::msg(format!(
                "METEOR needs WordNet 3.0: {} not found (run scripts/setup.sh, or set {})",
                missing.display(),
                stages::metrics::WORDNET_DIR_ENV
            )));
        }
        Ok(files)
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: ScoreParams = ctx.params()?;
        let mut rows = Vec::new();
        for a in ctx.inputs_of_kind("personalize") {
            let path = a.dir.join(GENERATIONS_FILE);
            if !path.is_file() {
                continue;
            }
            rows.extend(read_generations(&path)?);
        }
        if rows.is_empty() {
            return Err(StageError::msg(format!(
                "stage `{}` found no generations: it needs upstream `personalize` stages on a generation dataset",
                ctx.stage()
            )));
        }
        let wordnet = Wordnet::load_default().map_err(err)?;
        let opts = ScoreOptions {
            wordnet: Some(&wordnet),
            rouge_tokenizer: p.rouge_tokenizer,
            ..ScoreOptions::default()
        };
        let preds: Vec<String> = rows.iter().map(|r| r.prediction.clone()).collect();
        let refs: Vec<String> = rows.iter().map(|r| r.reference.clone()).collect();
        let metrics = [Metric::Rouge1, Metric::RougeL, Metric::Meteor];
        const CHUNK: usize = 256;
        let bar = ctx.progress(rows.len() as u64, "pairs").clone();
        let mut scores = Vec::with_capacity(rows.len());
        for (p, r) in preds.chunks(CHUNK).zip(refs.chunks(CHUNK)) {
            scores.extend(score_pairs(p, r, &metrics, &opts).map_err(err)?);
            bar.set(scores.len() as u64);
        }
        let mut out = format!(
            "{},language,index,rouge1,rougeL,meteor\n",
            RunKey::csv_header()
        );
        for (r, s) in rows.iter().zip(&scores) {
            let get = |m| s.get(m).unwrap_or(f64::NAN);
            writeln!(
                out,
                "{},{},{},{},{},{}",
                r.key,
                r.language,
                r.index,
                get(Metric::Rouge1),
                get(Metric::RougeL),
                get(Metric::Meteor)
            )
            .expect("string write");
        }
        std::fs::write(ctx.out_dir().join(SCORES_FILE), out)?;
        ctx.log(&format!("{} generations scored", rows.len()));
        Ok(())
    }
}

fn csv_err(path: &Path, e: csv::Error) -> StageError {
    StageError::msg(format!("{}: {e}", path.display()))
}

fn err(e: impl std::fmt::Display) -> StageError {
    StageError(e.to_string())
}
