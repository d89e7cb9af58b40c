//! `personalize` (PAPER_NOTES §4, §6): one method at one budget on one client of the upstream
//! partition (seen or unseen pool), starting from the single upstream `base/*` model. Writes
//! `predictions.csv`, `result.csv` (the report's classification-result schema) and `ranks.csv`
//! (FedL2P also `lrs.csv`).
//! `report` (PAPER_NOTES §7) turns every upstream `result.csv` into the result tables.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use datasets::{Example, Split, TaskKind};
use serde::Deserialize;
use serde_json::Value;
use stages::base_model::device_from_name;
use stages::fl::psg_client::psg_lambdas;
use stages::methods::adalora::{personalize_adalora, AdaLoraRun};
use stages::methods::all_linear;
use stages::methods::fedl2p::Fedl2pRun;
use stages::methods::ranked::{personalize_ranked, RankedRun};
use stages::peft::bayestune::{LAMBDA_MAX, LAMBDA_MIN};
use stages::personalize::{personalize_lora, LoraRun, Personalized, METHODS};
use stages::rng::derive_seed;
use stages::task::{Outputs, TaskModel};
use stages::Device;

use super::client_base::{all_clients, find_client, partition_dir, BaseArtifact};
use super::psg::{read_psg, read_stage1, AdapterMeta};
use super::task::TaskOptions;
use crate::context::{InputArtifact, StageContext};
use crate::registry::{typed_params, ParamError, PlanInputs, Registry, StageError, StageKind};
use crate::report::read::{
    read_classification_results, read_generation_scores, read_lambda_vectors, read_rank_records,
};
use crate::report::{write_rank_and_lambda_plots, write_report, ReportInputs, ReportOptions};
use crate::report::{LambdaVector, Method, RankRecord};

pub fn register(r: &mut Registry) {
    r.register(Arc::new(PersonalizeKind));
    r.register(Arc::new(ReportKind));
}

// PAPER_NOTES §4, §6: 2 epochs; lr 1e-4 (AdaLoRA 1e-3); batch, accumulation and lengths per task
// (`kinds::task`).
fn default_epochs() -> usize {
    2
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
    /// Default per method: 1e-3 for AdaLoRA, 1e-4 otherwise.
    #[serde(default)]
    lr: Option<f64>,
    #[serde(flatten)]
    task: TaskOptions,
}

impl PersonalizeParams {
    fn lr(&self) -> f64 {
        self.lr
            .unwrap_or(if self.method == "adalora" { 1e-3 } else { 1e-4 })
    }
}

/// Partial params for validation before `client` is expanded.
#[derive(Deserialize)]
struct MethodOnly {
    method: String,
}

struct PersonalizeKind;
impl StageKind for PersonalizeKind {
    fn name(&self) -> &'static str {
        "personalize"
    }
    fn version(&self) -> u32 {
        // 4: ranks.csv names a client's dominant train language (was its first row's).
        4
    }
    fn describe(&self) -> &'static str {
        "personalize a base model on one client (lora, adalora, bayestune_lora, fedl2p, fedp2eft) and score its test split"
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
        if p.budget == 0 || p.epochs == 0 {
            return Err(ParamError::new(
                Some("budget"),
                "`budget` and `epochs` must be ≥ 1",
            ));
        }
        p.task.check()?;
        if p.method == "adalora" && p.budget < 2 {
            return Err(ParamError::new(
                Some("budget"),
                "AdaLoRA needs `budget` ≥ 2 (initial rank ⌊1.5·r_b⌋ must exceed r_b)",
            ));
        }
        if !(p.lr() > 0.0 && p.lr().is_finite()) {
            return Err(ParamError::new(Some("lr"), "`lr` must be positive"));
        }
        Ok(())
    }
    fn reads_input(&self, params: &Value, upstream_kind: &str) -> bool {
        // Each method reads only its own federated/Stage-1 upstream (plus partition and base).
        let method = params.get("method").and_then(Value::as_str);
        match upstream_kind {
            "psg/fedp2eft" => method == Some("fedp2eft"),
            "psg/fedl2p" => method == Some("fedl2p"),
            "lambda/bayestune" => method == Some("bayestune_lora"),
            _ => true,
        }
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
        Ok(all_clients(&dir)?.into_iter().map(Value::from).collect())
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: PersonalizeParams = ctx.params()?;
        let part = partition_dir(ctx.inputs_of_kind("partition/").into_iter())?;
        let shard = find_client(&part, p.client)?;
        let base = BaseArtifact::of(ctx)?;
        let device = device_from_name(ctx.device()).map_err(err)?;
        let setup = p.task.setup(&shard.reader, base.prompt()?);
        let model = base.load(p.client, &setup, &device)?;
        let train = shard.reader.load_client(p.client, Split::Train)?;
        let test = shard.reader.load_client(p.client, Split::Test)?;
        if test.is_empty() {
            return Err(StageError::msg(format!(
                "client {} has no test examples",
                p.client
            )));
        }
        let seed = ctx.derive_seed(&["client".into(), u64::from(p.client).into()]);
        let kind = shard.reader.task().kind;
        let (out, lambdas) = run_method(ctx, &p, kind, model, &train, &test, seed, &device)?;
        let lang = &shard.info.language;
        let run = RunKey {
            dataset: &shard.reader.task().dataset,
            pool: shard.pool,
            base_model: &base.method,
            method: &p.method,
            budget: p.budget,
            seed: ctx.run_seed(),
            client: p.client,
        };
        let mut ranks = String::from("method,budget,client_id,language,module,rank\n");
        for (m, r) in &out.ranks {
            writeln!(
                ranks,
                "{},{},{},{lang},{m},{r}",
                p.method, p.budget, p.client
            )
            .expect("string write");
        }
        std::fs::write(ctx.out_dir().join("ranks.csv"), ranks)?;
        match &out.predictions {
            Outputs::Labels(labels) => {
                let mut preds = String::from("index,label,predicted\n");
                for (i, (l, y)) in labels.iter().enumerate() {
                    writeln!(preds, "{i},{l},{y}").expect("string write");
                }
                std::fs::write(ctx.out_dir().join("predictions.csv"), preds)?;
                let result = format!(
                    "{},language,correct,total\n{},{lang},{},{}\n",
                    RunKey::HEADER,
                    run.csv(),
                    out.correct(),
                    labels.len()
                );
                std::fs::write(ctx.out_dir().join("result.csv"), result)?;
                ctx.log(&format!(
                    "client {} ({}, {lang}): {}/{} correct, mean train loss {}",
                    p.client,
                    shard.pool,
                    out.correct(),
                    labels.len(),
                    out.mean_train_loss
                ));
            }
            Outputs::Texts(texts) => {
                write_generations(&ctx.out_dir().join(GENERATIONS_FILE), &run, &test, texts)?;
                ctx.log(&format!(
                    "client {} ({}, {lang}): {} generations, mean train loss {}",
                    p.client,
                    shard.pool,
                    texts.len(),
                    out.mean_train_loss
                ));
            }
        }
        if let Some(l) = lambdas {
            let mut csv = String::from("client_id,language,position,lambda\n");
            for (i, v) in l.iter().flatten().enumerate() {
                writeln!(csv, "{},{lang},{i},{v}", p.client).expect("string write");
            }
            std::fs::write(ctx.out_dir().join("lambdas.csv"), csv)?;
        }
        Ok(())
    }
}

/// Which run an output row belongs to (the report's key columns).
struct RunKey<'a> {
    dataset: &'a str,
    pool: &'a str,
    base_model: &'a str,
    method: &'a str,
    budget: usize,
    seed: u64,
    client: u32,
}

impl RunKey<'_> {
    const HEADER: &'static str = "dataset,pool,base_model,method,budget,seed,client_id";

    fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{}",
            self.dataset,
            self.pool,
            self.base_model,
            self.method,
            self.budget,
            self.seed,
            self.client
        )
    }
}

/// Per test example of a generation client: the run key, the example's own language, the
/// greedy generation and the reference response (read by `score`).
pub const GENERATIONS_FILE: &str = "generations.csv";

fn write_generations(
    path: &std::path::Path,
    run: &RunKey<'_>,
    test: &[Example],
    texts: &[String],
) -> Result<(), StageError> {
    let mut w = csv::Writer::from_path(path).map_err(err)?;
    let mut header: Vec<&str> = RunKey::HEADER.split(',').collect();
    header.extend(["language", "index", "prediction", "reference"]);
    w.write_record(&header).map_err(err)?;
    let key = run.csv();
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

/// λ per module (r_max values each) that ranks were selected from.
type Lambdas = Vec<Vec<f32>>;

/// Runs `p.method`; also returns the λ the ranks were selected from (BayesTune methods).
#[allow(clippy::too_many_arguments)]
fn run_method(
    ctx: &StageContext,
    p: &PersonalizeParams,
    kind: TaskKind,
    model: TaskModel,
    train: &[Example],
    test: &[Example],
    seed: u64,
    device: &Device,
) -> Result<(Personalized, Option<Lambdas>), StageError> {
    let ranked = |lambdas: Vec<Vec<f32>>, meta: &AdapterMeta, init_seed: u64, model| {
        let run = RankedRun {
            budget: p.budget,
            epochs: p.epochs,
            lr: p.lr(),
            batch_size: p.task.batch_size(kind),
            accumulate: p.task.accumulate(kind),
            bayestune: meta.bayestune(),
            init_seed,
            seed,
        };
        personalize_ranked(model, train, test, &lambdas, &run)
            .map(|out| (out, Some(lambdas)))
            .map_err(err)
    };
    match p.method.as_str() {
        "lora" => {
            let run = LoraRun {
                budget: p.budget,
                epochs: p.epochs,
                lr: p.lr(),
                batch_size: p.task.batch_size(kind),
                accumulate: p.task.accumulate(kind),
                seed,
            };
            Ok((
                personalize_lora(model, train, test, &run).map_err(err)?,
                None,
            ))
        }
        "adalora" => {
            let run = AdaLoraRun {
                budget: p.budget,
                epochs: p.epochs,
                lr: p.lr(),
                batch_size: p.task.batch_size(kind),
                accumulate: p.task.accumulate(kind),
                seed,
            };
            Ok((
                personalize_adalora(model, train, test, &run).map_err(err)?,
                None,
            ))
        }
        "fedp2eft" => {
            let up = upstream(ctx, "psg/fedp2eft", p.client)?;
            let (psg, cfg, meta) = read_psg(&up.dir, device)?;
            let lambdas = psg_lambdas(&psg, &cfg, &model, train).map_err(StageError)?;
            if lambdas.len() != all_linear(&model).len() {
                return Err(StageError::msg(format!(
                    "the PSG of {} gives λ for {} modules; this base model has {}",
                    up.instance,
                    lambdas.len(),
                    all_linear(&model).len()
                )));
            }
            // The adapters' A is this run's own seeded draw (§4: restored, never re-drawn).
            let init_seed = derive_seed(seed, &["bayestune_init".into()]);
            ranked(lambdas, &meta, init_seed, model)
        }
        "fedl2p" => {
            let up = upstream(ctx, "psg/fedl2p", p.client)?;
            let run = Fedl2pRun {
                budget: p.budget,
                epochs: p.epochs,
                batch_size: p.task.batch_size(kind),
                accumulate: p.task.accumulate(kind),
                seed,
            };
            let out =
                super::fedl2p::personalize(ctx, up, p.client, &run, model, train, test, device)?;
            Ok((out, None))
        }
        "bayestune_lora" => {
            let up = upstream(ctx, "lambda/bayestune", p.client)?;
            let (mut lambdas, meta) = read_stage1(&up.dir, &all_linear(&model))?;
            // §3: after the baseline's Stage 1, λ is hard-clamped to [1e-4, 1000].
            for v in lambdas.iter_mut().flatten() {
                *v = v.clamp(LAMBDA_MIN as f32, LAMBDA_MAX as f32);
            }
            let init_seed = meta.init_seed.ok_or_else(|| {
                StageError::msg(format!("{}: stage1.json has no init_seed", up.instance))
            })?;
            ranked(lambdas, &meta, init_seed, model)
        }
        other => Err(StageError::msg(format!("unknown method `{other}`"))),
    }
}

/// The upstream instance of `kind` this client's run reads: the single one, or the one whose
/// `client` matrix value is this client.
fn upstream<'a>(
    ctx: &'a StageContext,
    kind: &str,
    client: u32,
) -> Result<&'a InputArtifact, StageError> {
    let all = ctx.inputs_of_kind(kind);
    let of_client: Vec<_> = all
        .iter()
        .copied()
        .filter(|a| a.combo.get("client").and_then(Value::as_u64) == Some(u64::from(client)))
        .collect();
    match (all.as_slice(), of_client.as_slice()) {
        (_, [one]) | ([one], []) => Ok(one),
        _ => Err(StageError::msg(format!(
            "method needs one upstream `{kind}` instance for client {client}, found {} (add the stage to `needs`)",
            all.len()
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportParams {
    /// Budgets of the rank-structure plots (paper Fig. 6–15: 2 and 16).
    #[serde(default)]
    rank_budgets: Option<Vec<u32>>,
}

/// Collects every upstream `personalize` result (accuracy, kept ranks, FedP2EFT's λ) into
/// `out/tables/` via `report::write_report`.
struct ReportKind;
impl StageKind for ReportKind {
    fn name(&self) -> &'static str {
        "report"
    }
    fn version(&self) -> u32 {
        4
    }
    fn describe(&self) -> &'static str {
        "result tables and plots from every upstream personalize result (and score stage)"
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        typed_params::<ReportParams>(params).map(|_| ())
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: ReportParams = ctx.params()?;
        let inputs = ctx.inputs_of_kind("personalize");
        if inputs.is_empty() {
            return Err(StageError::msg(format!(
                "stage `{}` needs upstream `personalize` stages (and a `score` stage for generation datasets)",
                ctx.stage()
            )));
        }
        let mut generation = Vec::new();
        for a in ctx.inputs_of_kind("score") {
            generation.extend(
                read_generation_scores(&a.dir.join(super::score::SCORES_FILE)).map_err(err)?,
            );
        }
        let mut results = Vec::new();
        // Rank records and λ per personalize stage (one base model each): a plot pools clients
        // of one base. Kept ranks and λ do not depend on the fine-tuning seed for FedP2EFT; keep
        // the first instance's per (method, budget, client) so seeds do not count twice.
        let mut groups: BTreeMap<String, PlotGroup> = BTreeMap::new();
        for a in inputs {
            // Classification instances carry their accuracy counts; generation ones are scored
            // by the `score` stage.
            let result_file = a.dir.join("result.csv");
            if result_file.is_file() {
                results.extend(read_classification_results(&result_file).map_err(err)?);
            }
            let g = groups.entry(a.stage.clone()).or_default();
            let rank_file = a.dir.join("ranks.csv");
            let mut is_psg = false;
            if rank_file.is_file() {
                let recs = read_rank_records(&rank_file).map_err(err)?;
                if let Some(r) = recs.first() {
                    is_psg = r.method == Method::FedP2eft;
                    if g.seen_ranks
                        .insert((r.method, r.budget, r.client_id.clone()))
                    {
                        g.ranks.extend(recs);
                    }
                }
            }
            let lambda_file = a.dir.join("lambdas.csv");
            if is_psg && lambda_file.is_file() {
                for v in read_lambda_vectors(&lambda_file).map_err(err)? {
                    if g.seen_lambdas.insert(v.client_id.clone()) {
                        g.lambdas.push(v);
                    }
                }
            }
        }
        let mut opts = ReportOptions::default();
        if let Some(b) = p.rank_budgets {
            opts.rank_budgets = b;
        }
        let dir = ctx.out_dir().join("tables");
        let mut written = write_report(
            &ReportInputs {
                classification: &results,
                generation: &generation,
                ..ReportInputs::default()
            },
            &opts,
            &dir,
        )
        .map_err(err)?;
        // One personalize stage: plain file names; several: each stage's plots prefixed by it.
        let single = groups.len() == 1;
        for (stage, g) in &groups {
            let prefix = if single {
                String::new()
            } else {
                format!("{stage}_")
            };
            written.extend(
                write_rank_and_lambda_plots(&g.ranks, &g.lambdas, &opts, &dir, &prefix)
                    .map_err(err)?,
            );
        }
        let (ranks, lambdas) = groups
            .values()
            .fold((0, 0), |(r, l), g| (r + g.ranks.len(), l + g.lambdas.len()));
        ctx.log(&format!(
            "{} classification results, {} generation scores, {} rank records, {} λ vectors, {} files",
            results.len(),
            generation.len(),
            ranks,
            lambdas,
            written.len()
        ));
        Ok(())
    }
}

/// The rank records and λ vectors of one personalize stage.
#[derive(Default)]
struct PlotGroup {
    ranks: Vec<RankRecord>,
    lambdas: Vec<LambdaVector>,
    seen_ranks: BTreeSet<(Method, u32, String)>,
    seen_lambdas: BTreeSet<String>,
}

fn err(e: impl std::fmt::Display) -> StageError {
    StageError(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattened_task_options_keep_unknown_fields_rejected() {
        let ok = serde_json::json!({"method": "lora", "budget": 2, "client": 0, "max_len": 64});
        let p: PersonalizeParams = typed_params(&ok).unwrap();
        assert_eq!(p.task.max_len, Some(64));
        let bad = serde_json::json!({"method": "lora", "budget": 2, "client": 0, "max_lne": 64});
        let e = typed_params::<PersonalizeParams>(&bad)
            .err()
            .expect("rejected");
        assert!(e.message.contains("max_lne"), "{}", e.message);
    }
}
