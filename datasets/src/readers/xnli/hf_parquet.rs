//! HF `xnli/all_languages` as Parquet (the hub's own export, `{train,validation,test}.parquet`
//! or a `Dataset.to_parquet` file): `premise` struct {lang: string}, `hypothesis` struct
//! {language: list<string>, translation: list<string>}, `label` int.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray, ListArray, StringArray, StructArray};
use arrow::datatypes::{DataType, Int32Type, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::record::{NliRecord, XNLI_LABELS};
use crate::error::{DatasetError, Result};

fn bad(path: &Path, record: u64, message: String) -> DatasetError {
    DatasetError::BadRecord {
        path: path.into(),
        record,
        line: 0,
        message,
    }
}

fn missing(path: &Path, column: &str, found: String) -> DatasetError {
    DatasetError::MissingColumn {
        path: path.into(),
        column: column.into(),
        found,
    }
}

fn strings<'a>(path: &Path, a: &'a dyn Array, what: &str) -> Result<&'a StringArray> {
    a.as_string_opt::<i32>().ok_or_else(|| {
        bad(
            path,
            0,
            format!("`{what}` is {:?}, expected string", a.data_type()),
        )
    })
}

/// Reads `path`, one batch at a time, into per-language records.
pub fn read_hf_parquet(
    path: &Path,
    languages: &[String],
) -> Result<BTreeMap<String, Vec<NliRecord>>> {
    let file = File::open(path).map_err(|e| DatasetError::io(path, e))?;
    if file
        .metadata()
        .map_err(|e| DatasetError::io(path, e))?
        .len()
        == 0
    {
        return Err(DatasetError::EmptyFile {
            path: path.into(),
            expected: "a Parquet file with at least one row",
        });
    }
    let pq = |source| DatasetError::Parquet {
        path: path.into(),
        source,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(pq)?
        .build()
        .map_err(pq)?;
    let mut out: BTreeMap<String, Vec<NliRecord>> =
        languages.iter().map(|l| (l.clone(), Vec::new())).collect();
    let mut record = 0u64;
    for batch in reader {
        let batch = batch.map_err(|source| DatasetError::Arrow {
            path: path.into(),
            source,
        })?;
        let found = || {
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| missing(path, name, found()))
        };
        let premise: &StructArray = col("premise")?
            .as_struct_opt()
            .ok_or_else(|| bad(path, 0, "`premise` is not a struct".into()))?;
        let hypothesis: &StructArray = col("hypothesis")?
            .as_struct_opt()
            .ok_or_else(|| bad(path, 0, "`hypothesis` is not a struct".into()))?;
        let label = col("label")?;
        let labels: Vec<i64> = match label.data_type() {
            DataType::Int64 => label
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.unwrap_or(-1))
                .collect(),
            DataType::Int32 => label
                .as_primitive::<Int32Type>()
                .iter()
                .map(|v| v.map(i64::from).unwrap_or(-1))
                .collect(),
            other => {
                return Err(bad(
                    path,
                    0,
                    format!("`label` is {other:?}, expected an integer"),
                ))
            }
        };
        let h_lang: &ListArray = hypothesis
            .column_by_name("language")
            .and_then(|c| c.as_list_opt::<i32>())
            .ok_or_else(|| missing(path, "hypothesis.language", found()))?;
        let h_text: &ListArray = hypothesis
            .column_by_name("translation")
            .and_then(|c| c.as_list_opt::<i32>())
            .ok_or_else(|| missing(path, "hypothesis.translation", found()))?;
        let mut premises = Vec::new();
        for l in languages {
            let c = premise
                .column_by_name(l)
                .ok_or_else(|| missing(path, &format!("premise.{l}"), found()))?;
            premises.push(strings(path, c.as_ref(), &format!("premise.{l}"))?);
        }
        for (i, &raw_label) in labels.iter().enumerate() {
            record += 1;
            let label_id = usize::try_from(raw_label)
                .ok()
                .filter(|&l| l < XNLI_LABELS.len())
                .ok_or_else(|| DatasetError::UnknownLabel {
                    path: path.into(),
                    record,
                    line: 0,
                    label: raw_label.to_string(),
                    known: "0 (entailment), 1 (neutral), 2 (contradiction)".into(),
                })? as u32;
            let langs_i = h_lang.value(i);
            let texts_i = h_text.value(i);
            let langs_i = strings(path, langs_i.as_ref(), "hypothesis.language")?;
            let texts_i = strings(path, texts_i.as_ref(), "hypothesis.translation")?;
            for (l, lang) in languages.iter().enumerate() {
                let pos = (0..langs_i.len())
                    .find(|&j| langs_i.value(j) == lang)
                    .filter(|&j| j < texts_i.len())
                    .ok_or_else(|| bad(path, record, format!("hypothesis has no `{lang}`")))?;
                out.get_mut(lang).expect("initialised").push(NliRecord {
                    premise: premises[l].value(i).to_string(),
                    hypothesis: texts_i.value(pos).to_string(),
                    label_id,
                });
            }
        }
    }
    if record == 0 {
        return Err(DatasetError::EmptyFile {
            path: path.into(),
            expected: "a Parquet file with at least one row",
        });
    }
    Ok(out)
}
