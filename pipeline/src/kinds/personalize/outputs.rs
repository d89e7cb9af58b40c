//! What a personalization run writes: kept ranks, test predictions and the accuracy counts (or
//! the greedy generations, for scoring), and the λ a BayesTune method selected ranks from. Every
//! row that the report or `score` reads starts with the run key.

use std::fmt::Write as _;
use std::path::Path;

use datasets::Example;
use stages::methods::Personalized;
use stages::runs::RunKey;
use stages::task::Outputs;

use super::err;
use crate::engine::context::StageContext;
use crate::engine::registry::StageError;
use crate::kinds::artifacts::{
    CURVE_FILE, GENERATIONS_FILE, LAMBDAS_FILE, PREDICTIONS_FILE, RANKS_FILE, RESULT_FILE,
    RUN_FILE, UPDATES_FILE,
};

/// Writes every output of the run `key` on the client whose language is `lang`.
pub(super) fn write(
    ctx: &mut StageContext,
    key: &RunKey,
    lang: &str,
    out: &Personalized,
    lambdas: Option<&[Vec<f32>]>,
    test: &[Example],
) -> Result<(), StageError> {
    let dir = ctx.out_dir().to_path_buf();
    let mut ranks = String::from("method,budget,client_id,language,module,rank\n");
    for (m, r) in &out.ranks {
        writeln!(
            ranks,
            "{},{},{},{lang},{m},{r}",
            key.method, key.budget, key.client_id
        )
        .expect("string write");
    }
    std::fs::write(dir.join(RANKS_FILE), ranks)?;
    let mut curve = String::from("step,loss\n");
    for (i, l) in out.step_losses.iter().enumerate() {
        writeln!(curve, "{},{l}", i + 1).expect("string write");
    }
    std::fs::write(dir.join(CURVE_FILE), curve)?;
    let mut updates = String::from("module,update_norm\n");
    for (m, n) in &out.update_norms {
        writeln!(updates, "{m},{n}").expect("string write");
    }
    std::fs::write(dir.join(UPDATES_FILE), updates)?;
    match &out.predictions {
        Outputs::Labels(labels) => {
            let mut preds = String::from("index,label,predicted\n");
            for (i, (l, y)) in labels.iter().enumerate() {
                writeln!(preds, "{i},{l},{y}").expect("string write");
            }
            std::fs::write(dir.join(PREDICTIONS_FILE), preds)?;
            let result = format!(
                "{},language,correct,total\n{key},{lang},{},{}\n",
                RunKey::csv_header(),
                out.correct(),
                labels.len()
            );
            std::fs::write(dir.join(RESULT_FILE), result)?;
            ctx.log(&format!(
                "client {} ({}, {lang}): {}/{} correct, mean train loss {}",
                key.client_id,
                key.pool,
                out.correct(),
                labels.len(),
                out.mean_train_loss
            ));
        }
        Outputs::Texts(texts) => {
            write_generations(&dir.join(GENERATIONS_FILE), key, test, texts)?;
            ctx.log(&format!(
                "client {} ({}, {lang}): {} generations, mean train loss {}",
                key.client_id,
                key.pool,
                texts.len(),
                out.mean_train_loss
            ));
        }
    }
    if let Some(l) = lambdas {
        let mut csv = String::from("client_id,language,position,lambda\n");
        for (i, v) in l.iter().flatten().enumerate() {
            writeln!(csv, "{},{lang},{i},{v}", key.client_id).expect("string write");
        }
        std::fs::write(dir.join(LAMBDAS_FILE), csv)?;
    }
    Ok(())
}

/// `run.json`: the seeds of the run (the adapters' initial A, shuffling and dropout), so a
/// reader can check which A a method restored.
pub(super) fn write_seeds(
    ctx: &StageContext,
    init_seed: u64,
    train_seed: u64,
) -> Result<(), StageError> {
    let json = serde_json::json!({"init_seed": init_seed, "train_seed": train_seed});
    let text = serde_json::to_string_pretty(&json).map_err(err)?;
    std::fs::write(ctx.out_dir().join(RUN_FILE), text + "\n")?;
    Ok(())
}

/// One row per test example: the run key, the example's own language, the greedy generation and
/// the reference response.
fn write_generations(
    path: &Path,
    key: &RunKey,
    test: &[Example],
    texts: &[String],
) -> Result<(), StageError> {
    let mut w = csv::Writer::from_path(path).map_err(err)?;
    let mut header: Vec<&str> = RunKey::COLUMNS.to_vec();
    header.extend(["language", "index", "prediction", "reference"]);
    w.write_record(&header).map_err(err)?;
    let key = key.to_string();
    let key: Vec<&str> = key.split(',').collect();
    for (i, (e, pred)) in test.iter().zip(texts).enumerate() {
        let reference = e.text_b.as_deref().unwrap_or("").trim();
        let index = i.to_string();
        let mut row = key.clone();
        row.extend([
            e.language.as_str(),
            index.as_str(),
            pred.as_str(),
            reference,
        ]);
        w.write_record(&row).map_err(err)?;
    }
    w.flush()?;
    Ok(())
}
