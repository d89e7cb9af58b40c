//! Result tables as tidy CSV (one row per budget × method × language × metric, via polars) and
//! writing each table's CSV + Markdown pair into the caller's directory.

use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::files::{commit, ensure_dir, slug, temp_path, write_atomic};
use super::markdown::result_table_markdown;
use super::results::ResultTable;
use super::ReportError;

/// Columns: dataset, pool, base_model, budget, method, language, metric, mean, sd (null with
/// one seed), seeds, best, wins. Missing cells (a method without a language) have no row.
pub fn result_table_frame(table: &ResultTable) -> PolarsResult<DataFrame> {
    let mut budget = Vec::new();
    let mut method = Vec::new();
    let mut language = Vec::new();
    let mut metric = Vec::new();
    let mut mean = Vec::new();
    let mut sd = Vec::new();
    let mut seeds = Vec::new();
    let mut best = Vec::new();
    let mut wins = Vec::new();
    for row in &table.rows {
        for (l, cells) in row.cells.iter().enumerate() {
            for (m, cell) in cells.iter().enumerate() {
                let Some(s) = cell else { continue };
                budget.push(row.budget);
                method.push(row.method.as_str());
                language.push(table.languages[l].as_str());
                metric.push(table.metrics[m].as_str());
                mean.push(s.mean);
                sd.push(s.sd);
                seeds.push(s.seeds as u32);
                best.push(row.best[l][m]);
                wins.push(row.wins as u32);
            }
        }
    }
    let n = budget.len();
    df!(
        "dataset" => vec![table.key.dataset.as_str(); n],
        "pool" => vec![table.key.pool.as_str(); n],
        "base_model" => vec![table.key.base_model.as_str(); n],
        "budget" => budget,
        "method" => method,
        "language" => language,
        "metric" => metric,
        "mean" => mean,
        "sd" => sd,
        "seeds" => seeds,
        "best" => best,
        "wins" => wins,
    )
}

/// Writes `<dataset>_<pool>_<base_model>.csv` and `.md` for every table into `dir` (created if
/// needed) and returns the paths written, in table order.
pub fn write_result_tables(
    tables: &[ResultTable],
    dir: &Path,
) -> Result<Vec<PathBuf>, ReportError> {
    ensure_dir(dir)?;
    let mut written = Vec::new();
    for table in tables {
        let stem = slug(&format!(
            "{}_{}_{}",
            table.key.dataset,
            table.key.pool.as_str(),
            table.key.base_model.as_str()
        ));
        let csv = dir.join(format!("{stem}.csv"));
        let mut frame = result_table_frame(table).map_err(|source| ReportError::Write {
            path: csv.clone(),
            source,
        })?;
        write_csv(&mut frame, &csv)?;
        let md = dir.join(format!("{stem}.md"));
        write_atomic(&md, result_table_markdown(table).as_bytes())?;
        written.push(csv);
        written.push(md);
    }
    Ok(written)
}

pub(crate) fn write_csv(frame: &mut DataFrame, path: &Path) -> Result<(), ReportError> {
    let temp = temp_path(path);
    let file = File::create(&temp).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    CsvWriter::new(file)
        .include_header(true)
        .finish(frame)
        .map_err(|source| ReportError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    commit(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::records::run_key;
    use crate::report::records::{BaseModel, ClassificationResult, Method, Pool};
    use crate::report::results::{classification_tables, TableOptions};

    #[test]
    fn csv_round_trips_through_polars() {
        let rec = |method, seed, lang: &str, correct| ClassificationResult {
            key: run_key("xnli", Pool::Unseen, BaseModel::FedDpaT, method, 8, seed, 7),
            language: lang.into(),
            correct,
            total: 3,
        };
        let recs = vec![
            rec(Method::Lora, 42, "ur", 1),
            rec(Method::Lora, 52, "ur", 2),
            rec(Method::FedP2eft, 42, "ur", 3),
            rec(Method::FedP2eft, 42, "ar", 3),
        ];
        let tables = classification_tables(&recs, &TableOptions::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tables");
        let written = write_result_tables(&tables, &out).unwrap();
        assert_eq!(
            written,
            [
                out.join("xnli_unseen_feddpa_t.csv"),
                out.join("xnli_unseen_feddpa_t.md")
            ]
        );
        let back = CsvReadOptions::default()
            .with_has_header(true)
            .try_into_reader_with_file_path(Some(written[0].clone()))
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(back.height(), 3);
        let expected = result_table_frame(&tables[0]).unwrap();
        assert_eq!(back.get_column_names(), expected.get_column_names());
        let means = |df: &DataFrame| -> Vec<f64> {
            let col = df.column("mean").unwrap().f64().unwrap();
            col.into_no_null_iter().collect()
        };
        let (means, want) = (means(&back), means(&expected));
        assert_eq!(
            means, want,
            "floats must survive the CSV round trip exactly"
        );
        let sd = back.column("sd").unwrap().f64().unwrap();
        // Row order: LoRA ur (2 seeds, SD set), FedP2EFT ar, FedP2EFT ur (1 seed, SD null).
        assert!(sd.get(0).is_some() && sd.get(1).is_none() && sd.get(2).is_none());
        // Nothing but the two outputs is left in the directory (no temporaries).
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
    }
}
