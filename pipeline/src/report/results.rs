//! Result tables (PAPER_NOTES §7): per language and seed, pool the clients (classification:
//! Σcorrect / Σtotal; generation: mean of per-sample scores), then summarise over seeds as
//! mean ± sample SD and count Wins per budget.

use std::collections::{BTreeMap, BTreeSet};

use super::records::{BaseModel, ClassificationResult, GenerationScore, Method, Pool};
use super::stats::{mean, sample_sd};
use super::ReportError;

/// Two means closer than this (in table units: percent for accuracy, [0, 1] for generation
/// scores) count as a tie for "best". Identical counts give bit-identical means; the tolerance
/// only absorbs summation-order rounding (≈1e-14), far below the printed precision.
pub const TIE_TOLERANCE: f64 = 1e-9;

/// One table of the paper: a dataset, a client pool and a base model.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableKey {
    pub dataset: String,
    pub pool: Pool,
    pub base_model: BaseModel,
}

/// A quantity shown in a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Accuracy in percent (the paper's unit).
    Accuracy,
    Meteor,
    Rouge1,
    RougeL,
}

impl Metric {
    /// Generation metrics in the order the paper prints them (METEOR/ROUGE-1/ROUGE-L).
    pub const GENERATION: [Metric; 3] = [Metric::Meteor, Metric::Rouge1, Metric::RougeL];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::Meteor => "meteor",
            Metric::Rouge1 => "rouge1",
            Metric::RougeL => "rougeL",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Metric::Accuracy => "Accuracy (%)",
            Metric::Meteor => "METEOR",
            Metric::Rouge1 => "ROUGE-1",
            Metric::RougeL => "ROUGE-L",
        }
    }
}

/// Mean and spread of one cell over seeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub mean: f64,
    /// Sample SD (n − 1); `None` when only one seed was run.
    pub sd: Option<f64>,
    pub seeds: usize,
}

/// One row: a method at a budget.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    pub budget: u32,
    pub method: Method,
    /// `cells[language][metric]`, indexed like `ResultTable::{languages, metrics}`; `None`
    /// where the method has no result for that language.
    pub cells: Vec<Vec<Option<Summary>>>,
    /// `best[language][metric]`: this method's mean is the best (ties included) among the
    /// methods of the same budget.
    pub best: Vec<Vec<bool>>,
    /// Languages won: classification, best accuracy; generation, best in ≥ 2 of 3 metrics.
    pub wins: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResultTable {
    pub key: TableKey,
    pub metrics: Vec<Metric>,
    pub languages: Vec<String>,
    /// Sorted by budget, then method in the paper's order.
    pub rows: Vec<ResultRow>,
}

/// How to lay out tables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableOptions {
    /// Column order of languages (e.g. the paper's). Languages not listed follow, sorted;
    /// listed languages absent from a table are skipped. Empty: all sorted.
    pub language_order: Vec<String>,
}

impl TableOptions {
    fn order(&self, present: &BTreeSet<String>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for l in &self.language_order {
            if present.contains(l) && !out.contains(l) {
                out.push(l.clone());
            }
        }
        for l in present {
            if !out.contains(l) {
                out.push(l.clone());
            }
        }
        out
    }
}

/// A table's summaries before layout: (budget, method) → language → one per metric.
type RowsByBudgetMethod = BTreeMap<(u32, Method), BTreeMap<String, Vec<Summary>>>;

/// Key of one cell's per-seed values.
type CellKey = (TableKey, u32, Method, String);

/// Classification tables, one per (dataset, pool, base model), sorted by that key.
///
/// Per seed, a language's accuracy pools its clients — Σcorrect / Σtotal, not the mean of client
/// accuracies (PAPER_NOTES §7, from the authors' code).
pub fn classification_tables(
    records: &[ClassificationResult],
    opts: &TableOptions,
) -> Result<Vec<ResultTable>, ReportError> {
    let mut pooled: BTreeMap<(CellKey, u64), (u64, u64)> = BTreeMap::new();
    let mut clients_seen = BTreeSet::new();
    for (i, r) in records.iter().enumerate() {
        let what = || {
            format!(
                "classification result #{} (client `{}`)",
                i + 1,
                r.key.client_id
            )
        };
        if r.correct > r.total {
            return Err(ReportError::invalid(
                what(),
                format!("correct = {} exceeds total = {}", r.correct, r.total),
            ));
        }
        let key = table_key(&r.key.dataset, r.key.pool, r.key.base_model);
        let cell: CellKey = (key, r.key.budget, r.key.method, r.language.clone());
        if !clients_seen.insert((cell.clone(), r.key.seed, r.key.client_id)) {
            return Err(ReportError::invalid(
                what(),
                format!(
                    "duplicate record for {} {} {} budget {} seed {} language `{}`",
                    r.key.dataset, r.key.pool, r.key.method, r.key.budget, r.key.seed, r.language
                ),
            ));
        }
        let acc = pooled.entry((cell, r.key.seed)).or_insert((0, 0));
        acc.0 += r.correct;
        acc.1 += r.total;
    }
    let mut per_seed: BTreeMap<CellKey, Vec<Vec<f64>>> = BTreeMap::new();
    for ((cell, seed), (correct, total)) in pooled {
        if total == 0 {
            return Err(ReportError::invalid(
                "classification results",
                format!(
                    "language `{}` of {} {} {} budget {} seed {} has no test samples",
                    cell.3, cell.0.dataset, cell.0.pool, cell.2, cell.1, seed
                ),
            ));
        }
        let acc = 100.0 * correct as f64 / total as f64;
        per_seed.entry(cell).or_insert_with(|| vec![Vec::new()])[0].push(acc);
    }
    Ok(build_tables(per_seed, &[Metric::Accuracy], opts))
}

/// Generation tables (METEOR, ROUGE-1, ROUGE-L), one per (dataset, pool, base model).
///
/// Per seed, a language's score is the mean of its per-sample scores over all its clients.
pub fn generation_tables(
    records: &[GenerationScore],
    opts: &TableOptions,
) -> Result<Vec<ResultTable>, ReportError> {
    // Per (cell, seed): sums of METEOR, ROUGE-1, ROUGE-L and the sample count.
    let mut sums: BTreeMap<(CellKey, u64), ([f64; 3], usize)> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        for (name, v) in [
            ("meteor", r.meteor),
            ("rouge1", r.rouge1),
            ("rougeL", r.rouge_l),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(ReportError::invalid(
                    format!("generation score #{} (client `{}`)", i + 1, r.key.client_id),
                    format!("{name} = {v} is not in [0, 1]"),
                ));
            }
        }
        let key = table_key(&r.key.dataset, r.key.pool, r.key.base_model);
        let cell: CellKey = (key, r.key.budget, r.key.method, r.language.clone());
        let acc = sums.entry((cell, r.key.seed)).or_insert(([0.0; 3], 0));
        acc.0[0] += r.meteor;
        acc.0[1] += r.rouge1;
        acc.0[2] += r.rouge_l;
        acc.1 += 1;
    }
    let mut per_seed: BTreeMap<CellKey, Vec<Vec<f64>>> = BTreeMap::new();
    for ((cell, _seed), (s, n)) in sums {
        let entry = per_seed.entry(cell).or_insert_with(|| vec![Vec::new(); 3]);
        for (m, total) in s.iter().enumerate() {
            entry[m].push(total / n as f64);
        }
    }
    Ok(build_tables(per_seed, &Metric::GENERATION, opts))
}

fn table_key(dataset: &str, pool: Pool, base_model: BaseModel) -> TableKey {
    TableKey {
        dataset: dataset.to_string(),
        pool,
        base_model,
    }
}

/// Summarise per-seed values (`values[metric]`, seeds ascending) into tables and mark bests.
fn build_tables(
    per_seed: BTreeMap<CellKey, Vec<Vec<f64>>>,
    metrics: &[Metric],
    opts: &TableOptions,
) -> Vec<ResultTable> {
    let mut by_table: BTreeMap<TableKey, RowsByBudgetMethod> = BTreeMap::new();
    for ((key, budget, method, language), values) in per_seed {
        let summaries = values
            .iter()
            .map(|v| Summary {
                mean: mean(v).expect("every cell has at least one seed"),
                sd: sample_sd(v),
                seeds: v.len(),
            })
            .collect();
        by_table
            .entry(key)
            .or_default()
            .entry((budget, method))
            .or_default()
            .insert(language, summaries);
    }

    by_table
        .into_iter()
        .map(|(key, rows)| {
            let present: BTreeSet<String> = rows
                .values()
                .flat_map(|cells| cells.keys().cloned())
                .collect();
            let languages = opts.order(&present);
            let mut rows: Vec<ResultRow> = rows
                .into_iter()
                .map(|((budget, method), cells)| ResultRow {
                    budget,
                    method,
                    cells: languages
                        .iter()
                        .map(|l| match cells.get(l) {
                            Some(s) => s.iter().copied().map(Some).collect(),
                            None => vec![None; metrics.len()],
                        })
                        .collect(),
                    best: vec![vec![false; metrics.len()]; languages.len()],
                    wins: 0,
                })
                .collect();
            mark_best_and_wins(&mut rows, languages.len(), metrics.len());
            ResultTable {
                key,
                metrics: metrics.to_vec(),
                languages,
                rows,
            }
        })
        .collect()
}

/// Within each budget, flag the best mean per (language, metric) — all tied methods — and count
/// Wins: a language is won when the method is best in a majority of the metrics (the only
/// metric for classification; ≥ 2 of 3 for generation, as in the paper).
fn mark_best_and_wins(rows: &mut [ResultRow], n_languages: usize, n_metrics: usize) {
    let budgets: BTreeSet<u32> = rows.iter().map(|r| r.budget).collect();
    let needed = n_metrics / 2 + 1;
    for budget in budgets {
        let idx: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].budget == budget)
            .collect();
        for l in 0..n_languages {
            for m in 0..n_metrics {
                let best = idx
                    .iter()
                    .filter_map(|&i| rows[i].cells[l][m].map(|s| s.mean))
                    .fold(f64::NEG_INFINITY, f64::max);
                for &i in &idx {
                    if let Some(s) = rows[i].cells[l][m] {
                        rows[i].best[l][m] = s.mean >= best - TIE_TOLERANCE;
                    }
                }
            }
        }
        for &i in &idx {
            rows[i].wins = rows[i]
                .best
                .iter()
                .filter(|b| b.iter().filter(|&&x| x).count() >= needed)
                .count();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::records::run_key;

    pub(crate) fn cls(
        method: Method,
        budget: u32,
        seed: u64,
        client: u32,
        lang: &str,
        correct: u64,
        total: u64,
    ) -> ClassificationResult {
        ClassificationResult {
            key: run_key(
                "masakhanews",
                Pool::Seen,
                BaseModel::FedAvg,
                method,
                budget,
                seed,
                client,
            ),
            language: lang.into(),
            correct,
            total,
        }
    }

    fn row(t: &ResultTable, budget: u32, method: Method) -> &ResultRow {
        t.rows
            .iter()
            .find(|r| r.budget == budget && r.method == method)
            .unwrap()
    }

    fn lang(t: &ResultTable, l: &str) -> usize {
        t.languages.iter().position(|x| x == l).unwrap()
    }

    #[test]
    fn language_accuracy_pools_counts_not_client_accuracies() {
        // Client a: 1/1 = 100 %, client b: 1/9 ≈ 11 %. Pooled = 2/10 = 20 %, whereas the mean
        // of client accuracies would be ≈ 55.6 %.
        let recs = vec![
            cls(Method::Lora, 2, 42, 0, "amh", 1, 1),
            cls(Method::Lora, 2, 42, 1, "amh", 1, 9),
        ];
        let t = &classification_tables(&recs, &TableOptions::default()).unwrap()[0];
        let s = row(t, 2, Method::Lora).cells[0][0].unwrap();
        assert_eq!(s.mean, 20.0);
        assert_eq!(s.seeds, 1);
        assert_eq!(s.sd, None);
    }

    #[test]
    fn mean_and_sample_sd_over_seeds() {
        // Seeds give 60 %, 70 %, 80 % → mean 70, SD (n−1) = 10.
        let recs = vec![
            cls(Method::FedP2eft, 4, 42, 0, "eng", 6, 10),
            cls(Method::FedP2eft, 4, 52, 0, "eng", 7, 10),
            cls(Method::FedP2eft, 4, 62, 0, "eng", 8, 10),
        ];
        let t = &classification_tables(&recs, &TableOptions::default()).unwrap()[0];
        let s = row(t, 4, Method::FedP2eft).cells[0][0].unwrap();
        assert!((s.mean - 70.0).abs() < 1e-12, "{}", s.mean);
        assert!((s.sd.unwrap() - 10.0).abs() < 1e-12, "{:?}", s.sd);
        assert_eq!(s.seeds, 3);
    }

    #[test]
    fn wins_count_ties_for_all_and_skip_missing_languages() {
        let recs = vec![
            // eng: LoRA and FedP2EFT tie at 90 %, AdaLoRA lower.
            cls(Method::Lora, 2, 42, 0, "eng", 9, 10),
            cls(Method::FedP2eft, 2, 42, 0, "eng", 9, 10),
            cls(Method::AdaLora, 2, 42, 0, "eng", 8, 10),
            // tir: FedP2EFT best; LoRA has no tir result at all.
            cls(Method::FedP2eft, 2, 42, 1, "tir", 6, 10),
            cls(Method::AdaLora, 2, 42, 1, "tir", 5, 10),
            // amh: only LoRA has a result → it wins amh.
            cls(Method::Lora, 2, 42, 2, "amh", 1, 10),
            // another budget does not compete with budget 2.
            cls(Method::AdaLora, 16, 42, 0, "eng", 10, 10),
        ];
        let t = &classification_tables(&recs, &TableOptions::default()).unwrap()[0];
        assert_eq!(t.languages, ["amh", "eng", "tir"]);
        let lora = row(t, 2, Method::Lora);
        let p2 = row(t, 2, Method::FedP2eft);
        let ada = row(t, 2, Method::AdaLora);
        assert_eq!(lora.cells[lang(t, "tir")][0], None);
        assert!(!lora.best[lang(t, "tir")][0]);
        assert!(lora.best[lang(t, "eng")][0] && p2.best[lang(t, "eng")][0]);
        assert!(!ada.best[lang(t, "eng")][0]);
        assert_eq!((lora.wins, p2.wins, ada.wins), (2, 2, 0));
        assert_eq!(row(t, 16, Method::AdaLora).wins, 1);
    }

    #[test]
    fn rows_follow_budget_then_paper_method_order_and_tables_split_by_key() {
        let mut recs = vec![
            cls(Method::FedP2eft, 16, 42, 0, "eng", 9, 10),
            cls(Method::Lora, 16, 42, 0, "eng", 9, 10),
            cls(Method::FedL2p, 2, 42, 0, "eng", 9, 10),
        ];
        let mut unseen = cls(Method::Lora, 2, 42, 25, "eng", 1, 2);
        unseen.key.pool = Pool::Unseen;
        recs.push(unseen);
        let tables = classification_tables(&recs, &TableOptions::default()).unwrap();
        assert_eq!(tables.len(), 2);
        assert_eq!(tables[0].key.pool, Pool::Seen);
        let order: Vec<_> = tables[0]
            .rows
            .iter()
            .map(|r| (r.budget, r.method))
            .collect();
        assert_eq!(
            order,
            [
                (2, Method::FedL2p),
                (16, Method::Lora),
                (16, Method::FedP2eft)
            ]
        );
    }

    #[test]
    fn language_order_option_puts_listed_languages_first() {
        let recs = vec![
            cls(Method::Lora, 2, 42, 0, "amh", 1, 2),
            cls(Method::Lora, 2, 42, 1, "eng", 1, 2),
            cls(Method::Lora, 2, 42, 2, "som", 1, 2),
        ];
        let opts = TableOptions {
            language_order: vec!["som".into(), "xho".into(), "eng".into()],
        };
        let t = &classification_tables(&recs, &opts).unwrap()[0];
        assert_eq!(t.languages, ["som", "eng", "amh"]);
    }

    #[test]
    fn bad_counts_and_duplicates_are_rejected() {
        let err = classification_tables(
            &[cls(Method::Lora, 2, 42, 0, "eng", 11, 10)],
            &TableOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("exceeds total"), "{err}");
        let dup = cls(Method::Lora, 2, 42, 0, "eng", 1, 10);
        let err = classification_tables(&[dup.clone(), dup], &TableOptions::default()).unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
        let err = classification_tables(
            &[cls(Method::Lora, 2, 42, 0, "eng", 0, 0)],
            &TableOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no test samples"), "{err}");
    }

    fn gen(method: Method, seed: u64, lang: &str, m: f64, r1: f64, rl: f64) -> GenerationScore {
        GenerationScore {
            key: run_key(
                "fed_aya",
                Pool::Seen,
                BaseModel::Pretrained,
                method,
                2,
                seed,
                0,
            ),
            language: lang.into(),
            rouge1: r1,
            rouge_l: rl,
            meteor: m,
        }
    }

    #[test]
    fn generation_averages_samples_then_seeds_and_wins_need_two_of_three() {
        let recs = vec![
            // LoRA te, seed 42: two samples → METEOR (0.2 + 0.4) / 2 = 0.3.
            gen(Method::Lora, 42, "te", 0.2, 0.5, 0.5),
            gen(Method::Lora, 42, "te", 0.4, 0.5, 0.5),
            // seed 52: one sample, METEOR 0.5 → mean over seeds 0.4, SD √0.02.
            gen(Method::Lora, 52, "te", 0.5, 0.5, 0.5),
            // FedP2EFT te: better METEOR only (1 of 3) → no win; LoRA best in 2 of 3.
            gen(Method::FedP2eft, 42, "te", 0.9, 0.1, 0.1),
            // ar: FedP2EFT better in METEOR and ROUGE-L, ties ROUGE-1 → both best in R-1.
            gen(Method::Lora, 42, "ar", 0.1, 0.3, 0.1),
            gen(Method::FedP2eft, 42, "ar", 0.2, 0.3, 0.2),
        ];
        let t = &generation_tables(&recs, &TableOptions::default()).unwrap()[0];
        assert_eq!(t.metrics, Metric::GENERATION);
        let lora = row(t, 2, Method::Lora);
        let p2 = row(t, 2, Method::FedP2eft);
        let te = lang(t, "te");
        let meteor = lora.cells[te][0].unwrap();
        assert!((meteor.mean - 0.4).abs() < 1e-12, "{}", meteor.mean);
        assert!((meteor.sd.unwrap() - 0.02f64.sqrt()).abs() < 1e-12);
        assert_eq!(lora.best[te], [false, true, true]);
        assert_eq!(p2.best[te], [true, false, false]);
        let ar = lang(t, "ar");
        assert_eq!(lora.best[ar], [false, true, false]);
        assert_eq!(p2.best[ar], [true, true, true]);
        assert_eq!((lora.wins, p2.wins), (1, 1));
    }

    #[test]
    fn out_of_range_scores_are_rejected() {
        let err = generation_tables(
            &[gen(Method::Lora, 42, "te", 1.5, 0.1, 0.1)],
            &TableOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("meteor = 1.5"), "{err}");
    }
}
