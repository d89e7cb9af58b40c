//! XNLI readers for three layouts (see [`XnliFormat`]): per-language TSV (the layout of
//! `../shared/data/xnli`), the original XNLI-1.0 TSVs, and a JSON-lines export of Hugging
//! Face `xnli/all_languages`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{XnliFormat, XnliSplit};
use crate::error::{DatasetError, Result};
use crate::readers::tsv;

pub mod hf_parquet;
mod record;

pub use record::{NliRecord, XNLI_LABELS};

fn label_id(path: &Path, record: u64, line: u64, label: &str) -> Result<u32> {
    XNLI_LABELS
        .iter()
        .position(|l| *l == label)
        .map(|i| i as u32)
        .ok_or_else(|| DatasetError::UnknownLabel {
            path: path.into(),
            record,
            line,
            label: label.into(),
            known: XNLI_LABELS.join(", "),
        })
}

/// Reads `split` for each of `languages`, keyed by language.
pub fn read_split(
    dir: &Path,
    format: XnliFormat,
    split: XnliSplit,
    languages: &[String],
) -> Result<BTreeMap<String, Vec<NliRecord>>> {
    match format {
        XnliFormat::PerLanguageTsv => languages
            .iter()
            .map(|l| {
                let path = dir.join(split.as_str()).join(format!("{l}.tsv"));
                Ok((l.clone(), read_per_language_tsv(&path)?))
            })
            .collect(),
        XnliFormat::Xnli10 => {
            if split == XnliSplit::Train {
                return Err(DatasetError::Config(
                    "xnli: the XNLI-1.0 format has no train split; use train_from: test or dev"
                        .into(),
                ));
            }
            read_xnli10(&dir.join(format!("xnli.{}.tsv", split.as_str())), languages)
        }
        XnliFormat::HfAllLanguagesJsonl => {
            let name = hf_split_name(split);
            read_hf_jsonl(&dir.join(format!("{name}.jsonl")), languages)
        }
        XnliFormat::HfAllLanguagesParquet => {
            let path = dir.join(format!("{}.parquet", hf_split_name(split)));
            let out = hf_parquet::read_hf_parquet(&path, languages)?;
            check_languages_present(&path, &out)?;
            Ok(out)
        }
    }
}

/// HF's split names (`dev` is `validation` there).
fn hf_split_name(split: XnliSplit) -> &'static str {
    match split {
        XnliSplit::Train => "train",
        XnliSplit::Dev => "validation",
        XnliSplit::Test => "test",
    }
}

/// `premise hypothesis label` with a header; no quoting (XNLI text has bare `"`).
pub fn read_per_language_tsv(path: &Path) -> Result<Vec<NliRecord>> {
    let mut reader = tsv::open(path, false)?;
    let [c_p, c_h, c_l] = tsv::columns(&mut reader, path, ["premise", "hypothesis", "label"])?;
    let mut out = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| tsv::csv_error(path, e))?;
        let (record, line) = tsv::position(&rec);
        out.push(NliRecord {
            premise: rec[c_p].to_string(),
            hypothesis: rec[c_h].to_string(),
            label_id: label_id(path, record, line, &rec[c_l])?,
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

/// XNLI-1.0 `xnli.{dev,test}.tsv`: all languages in one file; rows of other languages skipped.
pub fn read_xnli10(path: &Path, languages: &[String]) -> Result<BTreeMap<String, Vec<NliRecord>>> {
    let mut reader = tsv::open(path, false)?;
    // The release's rows have more fields than some parsers expect; only these four matter.
    let [c_lang, c_gold, c_s1, c_s2] = tsv::columns(
        &mut reader,
        path,
        ["language", "gold_label", "sentence1", "sentence2"],
    )?;
    let mut out: BTreeMap<String, Vec<NliRecord>> =
        languages.iter().map(|l| (l.clone(), Vec::new())).collect();
    for rec in reader.records() {
        let rec = rec.map_err(|e| tsv::csv_error(path, e))?;
        let Some(rows) = out.get_mut(&rec[c_lang]) else {
            continue;
        };
        let (record, line) = tsv::position(&rec);
        rows.push(NliRecord {
            premise: rec[c_s1].to_string(),
            hypothesis: rec[c_s2].to_string(),
            label_id: label_id(path, record, line, &rec[c_gold])?,
        });
    }
    check_languages_present(path, &out)?;
    Ok(out)
}

fn check_languages_present(path: &Path, out: &BTreeMap<String, Vec<NliRecord>>) -> Result<()> {
    if let Some((lang, _)) = out.iter().find(|(_, rows)| rows.is_empty()) {
        return Err(DatasetError::BadRecord {
            path: path.into(),
            record: 0,
            line: 0,
            message: format!("no rows for language `{lang}`"),
        });
    }
    Ok(())
}

#[derive(Deserialize)]
struct HfHypothesis {
    language: Vec<String>,
    translation: Vec<String>,
}

#[derive(Deserialize)]
struct HfRow {
    premise: BTreeMap<String, String>,
    hypothesis: HfHypothesis,
    label: i64,
}

/// HF `xnli/all_languages` exported as JSON lines (`Dataset.to_json`): one parallel row per
/// line, premise keyed by language, hypothesis as parallel `language`/`translation` lists.
pub fn read_hf_jsonl(
    path: &Path,
    languages: &[String],
) -> Result<BTreeMap<String, Vec<NliRecord>>> {
    let file = File::open(path).map_err(|e| DatasetError::io(path, e))?;
    let reader = BufReader::new(file);
    let mut out: BTreeMap<String, Vec<NliRecord>> =
        languages.iter().map(|l| (l.clone(), Vec::new())).collect();
    let mut record = 0u64;
    let bad = |record: u64, line: u64, message: String| DatasetError::BadRecord {
        path: PathBuf::from(path),
        record,
        line,
        message,
    };
    for (i, line) in reader.split(b'\n').enumerate() {
        let line_no = i as u64 + 1;
        let bytes = line.map_err(|e| DatasetError::io(path, e))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| bad(record + 1, line_no, format!("invalid UTF-8: {e}")))?;
        if text.trim().is_empty() {
            continue;
        }
        record += 1;
        let row: HfRow = serde_json::from_str(text)
            .map_err(|e| bad(record, line_no, format!("invalid JSON: {e}")))?;
        let label = usize::try_from(row.label)
            .ok()
            .filter(|&l| l < XNLI_LABELS.len())
            .ok_or_else(|| DatasetError::UnknownLabel {
                path: path.into(),
                record,
                line: line_no,
                label: row.label.to_string(),
                known: "0 (entailment), 1 (neutral), 2 (contradiction)".into(),
            })? as u32;
        if row.hypothesis.language.len() != row.hypothesis.translation.len() {
            return Err(bad(
                record,
                line_no,
                "hypothesis.language and hypothesis.translation differ in length".into(),
            ));
        }
        for (lang, rows) in out.iter_mut() {
            let premise = row
                .premise
                .get(lang)
                .ok_or_else(|| bad(record, line_no, format!("premise has no `{lang}`")))?;
            let pos = row
                .hypothesis
                .language
                .iter()
                .position(|l| l == lang)
                .ok_or_else(|| bad(record, line_no, format!("hypothesis has no `{lang}`")))?;
            rows.push(NliRecord {
                premise: premise.clone(),
                hypothesis: row.hypothesis.translation[pos].clone(),
                label_id: label,
            });
        }
    }
    if record == 0 {
        return Err(DatasetError::EmptyFile {
            path: path.into(),
            expected: "JSON lines, one parallel row per line",
        });
    }
    check_languages_present(path, &out)?;
    Ok(out)
}
