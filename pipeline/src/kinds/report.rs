//! `report` (PAPER_NOTES §7): every upstream `personalize` result (accuracy counts, kept ranks,
//! FedP2EFT's λ) and `score` stage's generation scores turned into the result tables, the
//! metric-vs-budget, rank-structure and λ plots under `tables/`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use stages::runs::Method;

use super::artifacts::{LAMBDAS_FILE, RANKS_FILE, RESULT_FILE, SCORES_FILE, TABLES_DIR};
use crate::engine::context::StageContext;
use crate::engine::registry::{typed_params, ParamError, Registry, StageError, StageKind};
use crate::report::read::{
    read_classification_results, read_generation_scores, read_lambda_vectors, read_rank_records,
};
use crate::report::{write_rank_and_lambda_plots, write_report, ReportInputs, ReportOptions};
use crate::report::{LambdaVector, RankRecord};

pub fn register(r: &mut Registry) {
    r.register(Arc::new(ReportKind));
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
            generation.extend(read_generation_scores(&a.dir.join(SCORES_FILE)).map_err(err)?);
        }
        let mut results = Vec::new();
        // Rank records and λ per personalize stage (one base model each): a plot pools clients
        // of one base. Kept ranks and λ do not depend on the fine-tuning seed for FedP2EFT; keep
        // the first instance's per (method, budget, client) so seeds do not count twice.
        let mut groups: BTreeMap<String, PlotGroup> = BTreeMap::new();
        for a in inputs {
            // Classification instances carry their accuracy counts; generation ones are scored
            // by the `score` stage.
            let result_file = a.dir.join(RESULT_FILE);
            if result_file.is_file() {
                results.extend(read_classification_results(&result_file).map_err(err)?);
            }
            let g = groups.entry(a.stage.clone()).or_default();
            let rank_file = a.dir.join(RANKS_FILE);
            let mut is_psg = false;
            if rank_file.is_file() {
                let recs = read_rank_records(&rank_file).map_err(err)?;
                if let Some(r) = recs.first() {
                    is_psg = r.method == Method::FedP2eft;
                    if g.seen_ranks.insert((r.method, r.budget, r.client_id)) {
                        g.ranks.extend(recs);
                    }
                }
            }
            let lambda_file = a.dir.join(LAMBDAS_FILE);
            if is_psg && lambda_file.is_file() {
                for v in read_lambda_vectors(&lambda_file).map_err(err)? {
                    if g.seen_lambdas.insert(v.client_id) {
                        g.lambdas.push(v);
                    }
                }
            }
        }
        let mut opts = ReportOptions::default();
        if let Some(b) = p.rank_budgets {
            opts.rank_budgets = b;
        }
        let dir = ctx.out_dir().join(TABLES_DIR);
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
    seen_ranks: BTreeSet<(Method, u32, u32)>,
    seen_lambdas: BTreeSet<u32>,
}

fn err(e: impl std::fmt::Display) -> StageError {
    StageError(e.to_string())
}
