//! The "Results" half of the pipeline (PAPER_NOTES §7): per-language result tables with
//! mean ± SD over seeds and Wins, the cost table (paper Table 5), and the analysis plots
//! (rank structures, Fig. 6–15; λ language distances, Fig. 4–5; accuracy vs budget).
//!
//! Pure functions of their records: they turn stage outputs (CSV/Parquet read by [`read`], or
//! structs built by the caller) into files in a directory the caller chooses. Nothing here knows
//! about the cache, the manifest or where stages keep their outputs.

mod budget_curve;
mod client_sizes;
mod cost;
mod error;
mod files;
mod lambda_distance;
mod markdown;
mod rank_structure;
pub mod read;
mod records;
mod render;
mod results;
mod stats;
mod table_csv;
mod write_all;

pub use budget_curve::{budget_curves, plot_metric_vs_budget, BudgetCurve};
pub use client_sizes::{plot_client_sizes, PoolSizes};
pub use cost::{cost_table, write_cost_table, CostRow};
pub use error::ReportError;
pub use lambda_distance::{
    language_distance, plot_language_distance, write_language_distance, DistanceMatrix, Norm,
};
pub use markdown::result_table_markdown;
pub use rank_structure::{plot_rank_structure, rank_grid, RankGrid};
pub use records::{
    BaseModel, ClassificationResult, CostRecord, GenerationScore, LambdaVector, Method, Phase,
    Pool, RankRecord,
};
pub use results::{
    classification_tables, generation_tables, Metric, ResultRow, ResultTable, Summary, TableKey,
    TableOptions, TIE_TOLERANCE,
};
pub use stats::{mean, sample_sd};
pub use table_csv::{result_table_frame, write_result_tables};
pub use write_all::{write_rank_and_lambda_plots, write_report, ReportInputs, ReportOptions};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::records::run_key;
    use std::path::Path;

    fn classification_csv(dir: &Path) -> std::path::PathBuf {
        let mut csv = String::from(
            "dataset,pool,base_model,method,budget,seed,client_id,language,correct,total\n",
        );
        for (mi, method) in ["lora", "fedp2eft"].iter().enumerate() {
            for seed in [42, 52, 62] {
                for (ci, lang) in ["tir", "tir", "eng"].iter().enumerate() {
                    let correct = 20 + 10 * mi + (seed as usize % 5) + ci;
                    csv.push_str(&format!(
                        "masakhanews,seen,fedavg,{method},2,{seed},{ci},{lang},{correct},50\n"
                    ));
                }
            }
        }
        let path = dir.join("accuracy.csv");
        std::fs::write(&path, csv).unwrap();
        path
    }

    #[test]
    fn csv_in_tables_out() {
        let dir = tempfile::tempdir().unwrap();
        let recs = read::read_classification_results(&classification_csv(dir.path())).unwrap();
        let tables = classification_tables(&recs, &TableOptions::default()).unwrap();
        let out = dir.path().join("results");
        let written = write_result_tables(&tables, &out).unwrap();
        let md = std::fs::read_to_string(&written[1]).unwrap();
        assert!(
            md.contains("| 2 | LoRA |") && md.contains("|  | FedP2EFT | **"),
            "{md}"
        );
        assert!(
            md.contains("| 2 |\n"),
            "FedP2EFT should win both languages:\n{md}"
        );
    }

    /// Renders every output from hand-built inputs into `$REPORT_DEMO_DIR` (default: a
    /// `fedp2eft-report-demo` folder in the temp dir) for looking at by eye.
    #[test]
    #[ignore = "writes demo files for manual inspection"]
    fn render_demo_outputs() {
        let out = std::env::var_os("REPORT_DEMO_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("fedp2eft-report-demo"));
        let dir = tempfile::tempdir().unwrap();
        let recs = read::read_classification_results(&classification_csv(dir.path())).unwrap();
        let tables = classification_tables(&recs, &TableOptions::default()).unwrap();
        write_result_tables(&tables, &out).unwrap();

        // Accuracy vs budget: 16 languages, 4 budgets, 5 methods, 3 seeds.
        let langs = [
            "eng", "som", "run", "fra", "lin", "ibo", "amh", "hau", "pcm", "swa", "orm", "xho",
            "yor", "sna", "lug", "tir",
        ];
        let mut recs = Vec::new();
        for (mi, method) in Method::ALL.iter().enumerate() {
            for (bi, budget) in [2u32, 4, 8, 16].into_iter().enumerate() {
                for seed in [42u64, 52, 62] {
                    for (li, lang) in langs.iter().enumerate() {
                        let lift = if *method == Method::FedP2eft { 8 } else { mi };
                        recs.push(ClassificationResult {
                            key: run_key(
                                "masakhanews",
                                Pool::Seen,
                                BaseModel::FedAvg,
                                *method,
                                budget,
                                seed,
                                li as u32,
                            ),
                            language: lang.to_string(),
                            correct: (150 + 7 * li + 3 * lift + 2 * bi + (seed as usize % 4))
                                as u64,
                            total: 300,
                        });
                    }
                }
            }
        }
        let opts = TableOptions {
            language_order: langs.iter().map(|s| s.to_string()).collect(),
        };
        let tables = classification_tables(&recs, &opts).unwrap();
        write_result_tables(&tables, &out).unwrap();
        plot_metric_vs_budget(&tables[0], Metric::Accuracy, &out, "accuracy_vs_budget").unwrap();

        let ranks = rank_structure::tests::bert_ranks(&[(0, "eng"), (1, "tir"), (2, "amh")]);
        plot_rank_structure(&ranks, Method::FedP2eft, &[2, 16], &out, "rank_structure").unwrap();

        let xnli = [
            "bg", "hi", "es", "el", "vi", "tr", "de", "ur", "en", "zh", "th", "sw", "ar", "fr",
            "ru",
        ];
        let mut vecs = Vec::new();
        for (li, lang) in xnli.iter().enumerate() {
            for c in 0..4 {
                let values = (0..128)
                    .map(|k| 1.0 + (li % 4) as f64 + 0.05 * ((k * 7 + c * 13 + li * 5) % 11) as f64)
                    .collect();
                vecs.push(LambdaVector {
                    client_id: (4 * li + c) as u32,
                    language: lang.to_string(),
                    values,
                });
            }
        }
        let order: Vec<String> = xnli.iter().map(|s| s.to_string()).collect();
        let m = language_distance(&vecs, Norm::L2, &order).unwrap();
        write_language_distance(&m, &out, "lambda_distance").unwrap();
        plot_language_distance(&m, &out, "lambda_distance").unwrap();

        let cost = cost_table(&[
            CostRecord {
                setup: String::new(),
                method: Method::FedP2eft,
                phase: Phase::FederatedTraining,
                wall_seconds: 100.8,
                peak_rss_bytes: 3_090_000_000,
                clients: 30,
            },
            CostRecord {
                setup: String::new(),
                method: Method::Lora,
                phase: Phase::Personalization,
                wall_seconds: 3.16,
                peak_rss_bytes: 2_690_000_000,
                clients: 1,
            },
        ])
        .unwrap();
        write_cost_table(&cost, &out).unwrap();
        eprintln!("demo outputs in {}", out.display());
    }
}
