//! One call that turns every report input into every report output in a directory: result
//! tables, cost table and plots. Validates all inputs before writing anything.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::budget_curve::plot_metric_vs_budget;
use super::cost::{cost_table, write_cost_table};
use super::files::slug;
use super::lambda_distance::{
    language_distance, plot_language_distance, write_language_distance, DistanceMatrix, Norm,
};
use super::rank_structure::{plot_rank_structure, rank_grid};
use super::records::{
    ClassificationResult, CostRecord, GenerationScore, LambdaVector, Method, RankRecord,
};
use super::results::{classification_tables, generation_tables, Metric, TableOptions};
use super::table_csv::write_result_tables;
use super::ReportError;

/// Everything the report stage collects; any part may be empty.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReportInputs<'a> {
    pub classification: &'a [ClassificationResult],
    pub generation: &'a [GenerationScore],
    pub cost: &'a [CostRecord],
    pub ranks: &'a [RankRecord],
    /// λ vectors of one method's clients (FedP2EFT's PSG outputs).
    pub lambdas: &'a [LambdaVector],
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReportOptions {
    pub tables: TableOptions,
    /// Budgets of the rank-structure panels (paper: 2 and 16); budgets without records are
    /// skipped.
    pub rank_budgets: Vec<u32>,
    pub distance_norm: Norm,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            tables: TableOptions::default(),
            rank_budgets: vec![2, 16],
            distance_norm: Norm::L2,
        }
    }
}

/// Writes into `dir`:
/// - `<dataset>_<pool>_<base_model>.{csv,md}` per result table, and
///   `<same>_vs_budget.{svg,png}` (accuracy, or METEOR for generation);
/// - `cost.{csv,md}` if there are cost records;
/// - `rank_structure_<method>.{svg,png}` per method with rank records;
/// - `lambda_distance_<norm>.{csv,svg,png}` if there are λ vectors (the plot only when some
///   language has two clients).
///
/// Returns every path written.
pub fn write_report(
    inputs: &ReportInputs,
    opts: &ReportOptions,
    dir: &Path,
) -> Result<Vec<PathBuf>, ReportError> {
    // Compute (and so validate) everything first.
    let cls = classification_tables(inputs.classification, &opts.tables)?;
    let gen = generation_tables(inputs.generation, &opts.tables)?;
    let cost = cost_table(inputs.cost)?;
    let plots = plan_plots(inputs.ranks, inputs.lambdas, opts)?;
    let mut written = write_result_tables(&cls, dir)?;
    written.extend(write_result_tables(&gen, dir)?);
    for (tables, metric) in [(&cls, Metric::Accuracy), (&gen, Metric::Meteor)] {
        for t in tables {
            let stem = slug(&format!(
                "{}_{}_{}_vs_budget",
                t.key.dataset,
                t.key.pool.as_str(),
                t.key.base_model.as_str()
            ));
            written.extend(plot_metric_vs_budget(t, metric, dir, &stem)?);
        }
    }
    if !cost.is_empty() {
        written.extend(write_cost_table(&cost, dir)?);
    }
    written.extend(write_plots(&plots, inputs.ranks, dir, "")?);
    Ok(written)
}

/// The rank-structure plots (`rank_structure_<method>`) and the λ language distances
/// (`lambda_distance_<norm>`) of one group of clients, file names prefixed by `prefix`. Each
/// plot pools every record given: call once per base model.
pub fn write_rank_and_lambda_plots(
    ranks: &[RankRecord],
    lambdas: &[LambdaVector],
    opts: &ReportOptions,
    dir: &Path,
    prefix: &str,
) -> Result<Vec<PathBuf>, ReportError> {
    let plan = plan_plots(ranks, lambdas, opts)?;
    write_plots(&plan, ranks, dir, prefix)
}

/// What the rank and λ plots of a group will show, validated.
struct PlotPlan {
    rank_plots: Vec<(Method, Vec<u32>)>,
    distance: Option<DistanceMatrix>,
}

fn plan_plots(
    ranks: &[RankRecord],
    lambdas: &[LambdaVector],
    opts: &ReportOptions,
) -> Result<PlotPlan, ReportError> {
    let mut rank_plots: Vec<(Method, Vec<u32>)> = Vec::new();
    for method in Method::ALL {
        let present: BTreeSet<u32> = ranks
            .iter()
            .filter(|r| r.method == *method)
            .map(|r| r.budget)
            .collect();
        let budgets: Vec<u32> = opts
            .rank_budgets
            .iter()
            .copied()
            .filter(|b| present.contains(b))
            .collect();
        if !budgets.is_empty() {
            for &b in &budgets {
                rank_grid(ranks, *method, b)?;
            }
            rank_plots.push((*method, budgets));
        }
    }
    let order = &opts.tables.language_order;
    let distance = if lambdas.is_empty() {
        None
    } else {
        Some(language_distance(lambdas, opts.distance_norm, order)?)
    };

    Ok(PlotPlan {
        rank_plots,
        distance,
    })
}

fn write_plots(
    plan: &PlotPlan,
    ranks: &[RankRecord],
    dir: &Path,
    prefix: &str,
) -> Result<Vec<PathBuf>, ReportError> {
    let mut written = Vec::new();
    for (method, budgets) in &plan.rank_plots {
        let stem = format!("{prefix}rank_structure_{}", method.as_str());
        written.extend(plot_rank_structure(ranks, *method, budgets, dir, &stem)?);
    }
    if let Some(m) = &plan.distance {
        let stem = format!("{prefix}lambda_distance_{}", m.norm.as_str().to_lowercase());
        written.push(write_language_distance(m, dir, &stem)?);
        if m.normalized.iter().flatten().any(|v| v.is_some()) {
            written.extend(plot_language_distance(m, dir, &stem)?);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::records::run_key;
    use crate::report::records::{BaseModel, Phase, Pool};

    #[test]
    fn writes_every_output_and_nothing_on_bad_input() {
        let mut cls = Vec::new();
        for method in [Method::Lora, Method::FedP2eft] {
            for budget in [2, 16] {
                cls.push(ClassificationResult {
                    key: run_key(
                        "xnli",
                        Pool::Seen,
                        BaseModel::DeptSpec,
                        method,
                        budget,
                        42,
                        0,
                    ),
                    language: "ur".into(),
                    correct: if method == Method::Lora { 50 } else { 60 } + budget as u64,
                    total: 100,
                });
            }
        }
        let cost = [CostRecord {
            setup: String::new(),
            method: Method::FedP2eft,
            phase: Phase::Personalization,
            wall_seconds: 4.4,
            peak_rss_bytes: 2_000_000_000,
            clients: 1,
        }];
        let ranks = crate::report::rank_structure::tests::bert_ranks(&[(0, "ur")]);
        let lambdas: Vec<LambdaVector> = (0..4)
            .map(|c| LambdaVector {
                client_id: c,
                language: if c < 2 { "ur" } else { "ar" }.into(),
                values: vec![c as f64, 1.0 + (c % 3) as f64],
            })
            .collect();
        let inputs = ReportInputs {
            classification: &cls,
            cost: &cost,
            ranks: &ranks,
            lambdas: &lambdas,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let written = write_report(&inputs, &ReportOptions::default(), dir.path()).unwrap();
        let names: BTreeSet<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let want = [
            "xnli_seen_dept_spec.csv",
            "xnli_seen_dept_spec.md",
            "xnli_seen_dept_spec_vs_budget.svg",
            "xnli_seen_dept_spec_vs_budget.png",
            "cost.csv",
            "cost.md",
            "rank_structure_fedp2eft.svg",
            "rank_structure_fedp2eft.png",
            "lambda_distance_l2.csv",
            "lambda_distance_l2.svg",
            "lambda_distance_l2.png",
        ];
        assert_eq!(names, want.iter().map(|s| s.to_string()).collect());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), want.len());

        // One bad record anywhere → error, and an empty directory stays empty.
        let mut bad = cls.clone();
        bad[0].correct = 1000;
        let empty = tempfile::tempdir().unwrap();
        let inputs = ReportInputs {
            classification: &bad,
            ranks: &ranks,
            ..Default::default()
        };
        assert!(write_report(&inputs, &ReportOptions::default(), empty.path()).is_err());
        assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    }

    #[test]
    fn grouped_plots_carry_their_prefix() {
        let ranks = crate::report::rank_structure::tests::bert_ranks(&[(0, "ur")]);
        let dir = tempfile::tempdir().unwrap();
        let opts = ReportOptions::default();
        let a = write_rank_and_lambda_plots(&ranks, &[], &opts, dir.path(), "pers_dept_").unwrap();
        let names: Vec<String> = a
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "pers_dept_rank_structure_fedp2eft.svg",
                "pers_dept_rank_structure_fedp2eft.png"
            ]
        );
    }
}
