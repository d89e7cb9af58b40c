//! Markdown rendering of result tables in the paper's layout: rows budget × method, columns
//! languages, then Wins; the best cell(s) per budget and language in bold.

use super::results::{Metric, ResultTable, Summary};

/// Placeholder for a method with no result for a language.
const MISSING: &str = "–";

/// The table as Markdown (title line, one header row, one row per budget × method).
///
/// Classification cells read `63.48 ± 1.20` (accuracy in %, sample SD over seeds); with a single
/// seed the SD is undefined and the cell shows the mean alone (`63.48`). Generation cells read
/// `0.2354/0.1383/0.1344` (METEOR/ROUGE-1/ROUGE-L means, as in the paper; the SDs are in the
/// CSV), each part bold where it is best.
pub fn result_table_markdown(table: &ResultTable) -> String {
    let generation = table.metrics.len() > 1;
    let seeds = seed_range(table);
    let what = if generation {
        let names: Vec<_> = table.metrics.iter().map(|m| m.label()).collect();
        format!("{} (mean over {seeds})", names.join("/"))
    } else {
        format!("accuracy (%), mean ± sample SD over {seeds}")
    };
    let mut out = format!(
        "### {} — {} pool — {}: {}\n\n",
        table.key.dataset,
        table.key.pool.label(),
        table.key.base_model.label(),
        what
    );
    out.push_str("| Budget | Approach |");
    for l in &table.languages {
        out.push_str(&format!(" {l} |"));
    }
    out.push_str(" Wins |\n|---:|---|");
    for _ in &table.languages {
        out.push_str("---:|");
    }
    out.push_str("---:|\n");

    let mut last_budget = None;
    for row in &table.rows {
        let budget = if last_budget == Some(row.budget) {
            String::new()
        } else {
            row.budget.to_string()
        };
        last_budget = Some(row.budget);
        out.push_str(&format!("| {budget} | {} |", row.method.label()));
        for (cells, best) in row.cells.iter().zip(&row.best) {
            let parts: Vec<String> = cells
                .iter()
                .zip(best)
                .zip(&table.metrics)
                .map(|((cell, &is_best), &metric)| match cell {
                    None => MISSING.to_string(),
                    Some(s) => bold_if(format_cell(s, metric, generation), is_best),
                })
                .collect();
            let text = if parts.iter().all(|p| p == MISSING) {
                MISSING.to_string()
            } else {
                parts.join("/")
            };
            out.push_str(&format!(" {text} |"));
        }
        out.push_str(&format!(" {} |\n", row.wins));
    }
    out
}

fn format_cell(s: &Summary, metric: Metric, generation: bool) -> String {
    let decimals = if metric == Metric::Accuracy { 2 } else { 4 };
    match (generation, s.sd) {
        (false, Some(sd)) => format!("{:.*} ± {:.*}", decimals, s.mean, decimals, sd),
        _ => format!("{:.*}", decimals, s.mean),
    }
}

fn bold_if(text: String, bold: bool) -> String {
    if bold {
        format!("**{text}**")
    } else {
        text
    }
}

/// "3 seeds", "1 seed" or "1–3 seeds" when cells differ.
fn seed_range(table: &ResultTable) -> String {
    let counts = table
        .rows
        .iter()
        .flat_map(|r| r.cells.iter().flatten().flatten().map(|s| s.seeds));
    let (lo, hi) = counts.fold((usize::MAX, 0), |(lo, hi), n| (lo.min(n), hi.max(n)));
    match (lo, hi) {
        (_, 0) => "0 seeds".to_string(),
        (1, 1) => "1 seed".to_string(),
        (a, b) if a == b => format!("{a} seeds"),
        (a, b) => format!("{a}–{b} seeds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::records::run_key;
    use crate::report::records::{BaseModel, ClassificationResult, GenerationScore, Method, Pool};
    use crate::report::results::{classification_tables, generation_tables, TableOptions};

    /// A MasakhaNEWS result of client 1 with 400 test samples.
    fn cls(
        method: Method,
        budget: u32,
        seed: u64,
        lang: &str,
        correct: u64,
    ) -> ClassificationResult {
        crate::report::results::tests::cls(method, budget, seed, 1, lang, correct, 400)
    }

    #[test]
    fn classification_markdown_snapshot() {
        let mut recs = Vec::new();
        for (seed, p2, lora) in [(42, 250, 180), (52, 255, 179), (62, 259, 181)] {
            recs.push(cls(Method::FedP2eft, 2, seed, "tir", p2));
            recs.push(cls(Method::Lora, 2, seed, "tir", lora));
            recs.push(cls(Method::FedP2eft, 2, seed, "eng", 360));
            recs.push(cls(Method::Lora, 2, seed, "eng", 360));
        }
        // Budget 16: LoRA only, one seed, and no tir result.
        recs.push(cls(Method::Lora, 16, 42, "eng", 370));
        let opts = TableOptions {
            language_order: vec!["tir".into(), "eng".into()],
        };
        let md = result_table_markdown(&classification_tables(&recs, &opts).unwrap()[0]);
        let expected = "\
### masakhanews — seen pool — Standard FL: accuracy (%), mean ± sample SD over 1–3 seeds

| Budget | Approach | tir | eng | Wins |
|---:|---|---:|---:|---:|
| 2 | LoRA | 45.00 ± 0.25 | **90.00 ± 0.00** | 1 |
|  | FedP2EFT | **63.67 ± 1.13** | **90.00 ± 0.00** | 2 |
| 16 | LoRA | – | **92.50** | 1 |
";
        assert_eq!(md, expected, "\n{md}");
    }

    #[test]
    fn generation_markdown_bolds_each_metric() {
        let g = |method, m, r1, rl| GenerationScore {
            key: run_key(
                "fed_aya",
                Pool::Unseen,
                BaseModel::Pretrained,
                method,
                2,
                42,
                0,
            ),
            language: "te".into(),
            rouge1: r1,
            rouge_l: rl,
            meteor: m,
        };
        let recs = vec![
            g(Method::Lora, 0.2354, 0.1383, 0.1344),
            g(Method::FedP2eft, 0.2434, 0.1440, 0.1300),
        ];
        let md =
            result_table_markdown(&generation_tables(&recs, &TableOptions::default()).unwrap()[0]);
        assert!(
            md.contains("| 2 | LoRA | 0.2354/0.1383/**0.1344** | 0 |"),
            "{md}"
        );
        assert!(
            md.contains("|  | FedP2EFT | **0.2434**/**0.1440**/0.1300 | 1 |"),
            "{md}"
        );
        assert!(
            md.contains("METEOR/ROUGE-1/ROUGE-L (mean over 1 seed)"),
            "{md}"
        );
    }
}
