//! MasakhaNEWS reader: `<dir>/<lang>/{train,dev,test}.tsv` (header `category headline text
//! url`, CSV-quoted, multi-line `text`) and `<lang>/labels.txt`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{DatasetError, Result};
use crate::readers::tsv;

/// The 7 topics (PAPER_NOTES §1), in the order of HF `masakhane/masakhanews`' ClassLabel;
/// `label_id` indexes this list for every language. A language's `labels.txt` lists the
/// subset it uses.
pub const MASAKHANEWS_LABELS: [&str; 7] = [
    "business",
    "entertainment",
    "health",
    "politics",
    "religion",
    "sports",
    "technology",
];

/// One news record: `text` = headline + " " + text (App. A.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewsRecord {
    pub text: String,
    pub label_id: u32,
}

/// A language's `labels.txt`: one category per line, each one of [`MASAKHANEWS_LABELS`].
pub fn read_labels(path: &Path) -> Result<Vec<String>> {
    let bytes = fs::read(path).map_err(|e| DatasetError::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| DatasetError::BadRecord {
        path: path.into(),
        record: 0,
        line: 0,
        message: format!("invalid UTF-8: {e}"),
    })?;
    let mut labels = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() {
            continue;
        }
        if !MASAKHANEWS_LABELS.contains(&l) {
            return Err(DatasetError::UnknownLabel {
                path: path.into(),
                record: i as u64 + 1,
                line: i as u64 + 1,
                label: l.into(),
                known: MASAKHANEWS_LABELS.join(", "),
            });
        }
        labels.push(l.to_string());
    }
    if labels.is_empty() {
        return Err(DatasetError::EmptyFile {
            path: path.into(),
            expected: "one label per line",
        });
    }
    Ok(labels)
}

/// Reads one split file; every `category` must be in `allowed` (the language's labels.txt).
pub fn read_split(path: &Path, allowed: &[String]) -> Result<Vec<NewsRecord>> {
    let mut reader = tsv::open(path, true)?;
    let [c_cat, c_head, c_text] =
        tsv::columns(&mut reader, path, ["category", "headline", "text"])?;
    let mut out = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| tsv::csv_error(path, e))?;
        let category = &rec[c_cat];
        if !allowed.iter().any(|a| a == category) {
            let (record, line) = tsv::position(&rec);
            return Err(DatasetError::UnknownLabel {
                path: path.into(),
                record,
                line,
                label: category.into(),
                known: allowed.join(", "),
            });
        }
        let label_id = MASAKHANEWS_LABELS
            .iter()
            .position(|l| *l == category)
            .expect("labels.txt entries are checked against MASAKHANEWS_LABELS")
            as u32;
        out.push(NewsRecord {
            text: format!("{} {}", &rec[c_head], &rec[c_text]),
            label_id,
        });
    }
    if out.is_empty() {
        return Err(DatasetError::EmptyFile {
            path: path.into(),
            expected: "a header and at least one record",
        });
    }
    Ok(out)
}

/// A language's rows: train (= train + dev, or dev alone when train.tsv is absent) and test.
#[derive(Debug, Clone)]
pub struct LanguageData {
    pub train: Vec<NewsRecord>,
    pub test: Vec<NewsRecord>,
    /// True when `train.tsv` was absent and dev alone became train.
    pub train_missing: bool,
}

/// Reads `<dir>/<lang>/`: train + dev as train (paper App. A.1), test as test.
pub fn read_language(dir: &Path, lang: &str) -> Result<LanguageData> {
    let base: PathBuf = dir.join(lang);
    let labels = read_labels(&base.join("labels.txt"))?;
    let train_path = base.join("train.tsv");
    let train_missing = !train_path.exists();
    let mut train = if train_missing {
        Vec::new()
    } else {
        read_split(&train_path, &labels)?
    };
    train.extend(read_split(&base.join("dev.tsv"), &labels)?);
    let test = read_split(&base.join("test.tsv"), &labels)?;
    Ok(LanguageData {
        train,
        test,
        train_missing,
    })
}
