//! `personalize` (PAPER_NOTES §4, §6): one method at one budget on one client of the upstream
//! partition (seen or unseen pool), starting from the single upstream `base/*` model. Writes
//! `predictions.csv`, `result.csv` (the report's classification-result schema) and `ranks.csv`.
//! `report` (PAPER_NOTES §7) turns every upstream `result.csv` into the result tables.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use datasets::{PoolReader, Split};
use serde::Deserialize;
use serde_json::Value;
use stages::base_model::device_from_name;
use stages::personalize::{load_base, personalize_lora, LoraRun, METHODS};

use crate::context::StageContext;
use crate::registry::{typed_params, ParamError, PlanInputs, Registry, StageError, StageKind};
use crate::report::{read::read_classification_results, write_report, ReportInputs};

pub fn register(r: &mut Registry) {
    r.register(Arc::new(PersonalizeKind));
    r.register(Arc::new(ReportKind));
}

// PAPER_NOTES §4: 2 epochs, lr 1e-4; batch 32 and length 128 as the base stages.
fn default_epochs() -> usize {
    2
}
fn default_lr() -> f64 {
    1e-4
}
fn default_batch() -> usize {
    32
}
fn default_max_len() -> usize {
    128
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonalizeParams {
    method: String,
    budget: usize,
    /// Client id (from `matrix: {client: all}`).
    client: u32,
    #[serde(default = "default_epochs")]
    epochs: usize,
    #[serde(default = "default_lr")]
    lr: f64,
    #[serde(default = "default_batch")]
    batch_size: usize,
    #[serde(default = "default_max_len")]
    max_len: usize,
}

/// Partial params for validation before `client` is expanded.
#[derive(Deserialize)]
struct MethodOnly {
    method: String,
}

const POOLS: [&str; 2] = ["seen", "unseen"];

fn partition_dir<'a>(
    inputs: impl Iterator<Item = &'a crate::context::InputArtifact>,
) -> Result<PathBuf, StageError> {
    let parts: Vec<_> = inputs
        .filter(|a| a.kind.starts_with("partition/"))
        .collect();
    match parts.as_slice() {
        [one] => Ok(one.dir.clone()),
        _ => Err(StageError::msg(format!(
            "personalize needs exactly one upstream partition stage, found {}",
            parts.len()
        ))),
    }
}

struct PersonalizeKind;
impl StageKind for PersonalizeKind {
    fn name(&self) -> &'static str {
        "personalize"
    }
    fn version(&self) -> u32 {
        1
    }
    fn describe(&self) -> &'static str {
        "personalize a base model on one client (method lora) and score its test split"
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        let m: MethodOnly = typed_params(params)?;
        if !METHODS.contains(&m.method.as_str()) {
            return Err(ParamError::new(
                Some("method"),
                format!(
                    "unknown method `{}` (supported: {})",
                    m.method,
                    METHODS.join(", ")
                ),
            ));
        }
        // The manifest validates before `client: all` is expanded: check the rest with a
        // stand-in client id.
        let mut params = params.clone();
        if let Some(map) = params.as_object_mut() {
            map.entry("client").or_insert(Value::from(0u32));
        }
        let p: PersonalizeParams = typed_params(&params)?;
        if p.budget == 0 || p.epochs == 0 || p.batch_size == 0 {
            return Err(ParamError::new(
                Some("budget"),
                "`budget`, `epochs` and `batch_size` must be ≥ 1",
            ));
        }
        if !(p.lr > 0.0 && p.lr.is_finite()) {
            return Err(ParamError::new(Some("lr"), "`lr` must be positive"));
        }
        if p.max_len < 4 {
            return Err(ParamError::new(Some("max_len"), "`max_len` must be ≥ 4"));
        }
        Ok(())
    }
    fn expandable_keys(&self) -> &'static [&'static str] {
        &["client"]
    }
    fn expand(&self, key: &str, plan: &PlanInputs<'_>) -> Result<Vec<Value>, StageError> {
        if key != "client" {
            return Err(StageError::msg(format!(
                "personalize cannot expand `{key}`"
            )));
        }
        let dir = partition_dir(plan.inputs.values().flatten())?;
        let mut ids = Vec::new();
        for pool in POOLS {
            let r = PoolReader::open(dir.join(format!("{pool}.parquet")))?;
            ids.extend(r.clients().iter().map(|c| Value::from(c.client_id)));
        }
        Ok(ids)
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: PersonalizeParams = ctx.params()?;
        let part = partition_dir(ctx.inputs_of_kind("partition/").into_iter())?;
        let mut found = None;
        for pool in POOLS {
            let r = PoolReader::open(part.join(format!("{pool}.parquet")))?;
            if let Some(c) = r
                .clients()
                .iter()
                .find(|c| c.client_id == p.client)
                .cloned()
            {
                found = Some((pool, r, c));
                break;
            }
        }
        let (pool, reader, info) = found.ok_or_else(|| {
            StageError::msg(format!(
                "client {} is in neither pool of partition {}",
                p.client,
                part.display()
            ))
        })?;
        let base = ctx.single_input_of_kind("base/")?;
        let base_model = base.kind.trim_start_matches("base/").to_string();
        let state = base
            .dir
            .join("client_state")
            .join(format!("{}.safetensors", p.client));
        let device = device_from_name(ctx.device()).map_err(err)?;
        let model = load_base(
            &base.dir.join("model"),
            state.is_file().then_some(state.as_path()),
            reader.labels(),
            p.max_len,
            &device,
        )
        .map_err(err)?;
        let train = reader.load_client(p.client, Split::Train)?;
        let test = reader.load_client(p.client, Split::Test)?;
        if test.is_empty() {
            return Err(StageError::msg(format!(
                "client {} has no test examples",
                p.client
            )));
        }
        let run = LoraRun {
            budget: p.budget,
            epochs: p.epochs,
            lr: p.lr,
            batch_size: p.batch_size,
            seed: ctx.derive_seed(&["client".into(), u64::from(p.client).into()]),
        };
        let out = personalize_lora(model, &train, &test, &run).map_err(err)?;
        let mut preds = String::from("index,label,predicted\n");
        for (i, (l, y)) in out.predictions.iter().enumerate() {
            writeln!(preds, "{i},{l},{y}").expect("string write");
        }
        let mut ranks = String::from("module,rank\n");
        for (m, r) in &out.ranks {
            writeln!(ranks, "{m},{r}").expect("string write");
        }
        let result = format!(
            "dataset,pool,base_model,method,budget,seed,client_id,language,correct,total\n{},{pool},{base_model},{},{},{},{},{},{},{}\n",
            reader.task().dataset,
            p.method,
            p.budget,
            ctx.run_seed(),
            p.client,
            info.language,
            out.correct(),
            out.predictions.len()
        );
        std::fs::write(ctx.out_dir().join("predictions.csv"), preds)?;
        std::fs::write(ctx.out_dir().join("ranks.csv"), ranks)?;
        std::fs::write(ctx.out_dir().join("result.csv"), result)?;
        ctx.log(&format!(
            "client {} ({pool}, {}): {}/{} correct, mean train loss {}",
            p.client,
            info.language,
            out.correct(),
            out.predictions.len(),
            out.mean_train_loss
        ));
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportParams {}

/// Collects every upstream `personalize` result into `out/tables/` via `report::write_report`.
struct ReportKind;
impl StageKind for ReportKind {
    fn name(&self) -> &'static str {
        "report"
    }
    fn version(&self) -> u32 {
        1
    }
    fn describe(&self) -> &'static str {
        "result tables and plots from every upstream personalize result"
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        typed_params::<ReportParams>(params).map(|_| ())
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let inputs = ctx.inputs_of_kind("personalize");
        if inputs.is_empty() {
            return Err(StageError::msg(format!(
                "stage `{}` needs upstream `personalize` stages",
                ctx.stage()
            )));
        }
        let mut results = Vec::new();
        for a in inputs {
            results.extend(read_classification_results(&a.dir.join("result.csv")).map_err(err)?);
        }
        let dir = ctx.out_dir().join("tables");
        let written = write_report(
            &ReportInputs {
                classification: &results,
                ..ReportInputs::default()
            },
            &Default::default(),
            &dir,
        )
        .map_err(err)?;
        ctx.log(&format!(
            "{} results, {} files",
            results.len(),
            written.len()
        ));
        Ok(())
    }
}

fn err(e: impl std::fmt::Display) -> StageError {
    StageError(e.to_string())
}
