//! Writes a [`PartitionedDataset`] to an output directory: `seen.parquet`, `unseen.parquet`,
//! `summary.json` and `client_sizes.csv`. All files are first written to a staging directory
//! beside the output and moved in only when every write succeeded, so an error leaves the
//! output directory untouched.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Builder, RecordBatch, StringBuilder, UInt32Builder};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::error::{DatasetError, Result};
use crate::example::{Client, PartitionedDataset, Pool, Split, TaskKind, TaskSpec};
use crate::pool_schema::*;
use crate::summary::PartitionSummary;

/// Writes `ds` into `out_dir` (created if absent) and returns the summary it wrote.
pub fn write_partition(ds: &PartitionedDataset, out_dir: &Path) -> Result<PartitionSummary> {
    let summary = PartitionSummary::from_dataset(ds);
    let name = out_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let parent = out_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| DatasetError::io(parent, e))?;
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| DatasetError::io(&staging, e))?;
    }
    fs::create_dir(&staging).map_err(|e| DatasetError::io(&staging, e))?;
    let result =
        write_all(ds, &summary, &staging).and_then(|files| publish(&staging, out_dir, &files));
    if staging.exists() {
        let _ = fs::remove_dir_all(&staging);
    }
    result.map(|_| summary)
}

fn write_all(
    ds: &PartitionedDataset,
    summary: &PartitionSummary,
    dir: &Path,
) -> Result<Vec<&'static str>> {
    let mut files = Vec::new();
    for pool in &ds.pools {
        write_pool(&ds.task, ds.seed, pool, &dir.join(pool.name.file_name()))?;
        files.push(pool.name.file_name());
    }
    let json = serde_json::to_string_pretty(summary).expect("summary serializes") + "\n";
    write_bytes(&dir.join("summary.json"), json.as_bytes())?;
    files.push("summary.json");
    write_bytes(
        &dir.join("client_sizes.csv"),
        summary.client_sizes_csv().as_bytes(),
    )?;
    files.push("client_sizes.csv");
    Ok(files)
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| DatasetError::io(path, e))
}

/// Moves the staged files into `out_dir`: a single directory rename when `out_dir` does not
/// exist (or is empty), otherwise file by file (replacing earlier outputs of the same names).
fn publish(staging: &Path, out_dir: &Path, files: &[&str]) -> Result<()> {
    let is_empty_dir = fs::read_dir(out_dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if is_empty_dir {
        fs::remove_dir(out_dir).map_err(|e| DatasetError::io(out_dir, e))?;
    }
    if !out_dir.exists() {
        return fs::rename(staging, out_dir).map_err(|e| DatasetError::io(out_dir, e));
    }
    for f in files {
        let to: PathBuf = out_dir.join(f);
        fs::rename(staging.join(f), &to).map_err(|e| DatasetError::io(&to, e))?;
    }
    Ok(())
}

/// Writes one pool: one row group per client, train rows then test rows.
pub fn write_pool(task: &TaskSpec, seed: u64, pool: &Pool, path: &Path) -> Result<()> {
    let schema = arrow_schema(task);
    let pq = |source| DatasetError::Parquet {
        path: path.into(),
        source,
    };
    let meta = vec![
        KeyValue::new(META_DATASET.into(), task.dataset.clone()),
        KeyValue::new(META_TASK.into(), task.kind.as_str().to_string()),
        KeyValue::new(
            META_LABELS.into(),
            serde_json::to_string(&task.labels).expect("labels serialize"),
        ),
        KeyValue::new(
            META_TEXT_COLUMNS.into(),
            serde_json::to_string(&task.text_columns).expect("columns serialize"),
        ),
        KeyValue::new(META_POOL.into(), pool.name.as_str().to_string()),
        KeyValue::new(META_SEED.into(), seed.to_string()),
    ];
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(meta))
        .build();
    let file = File::create(path).map_err(|e| DatasetError::io(path, e))?;
    let mut writer =
        ArrowWriter::try_new(BufWriter::new(file), schema.clone(), Some(props)).map_err(pq)?;
    for client in &pool.clients {
        let batch =
            client_batch(task, client, schema.clone()).map_err(|source| DatasetError::Arrow {
                path: path.into(),
                source,
            })?;
        writer.write(&batch).map_err(pq)?;
        writer.flush().map_err(pq)?;
    }
    let mut inner = writer.into_inner().map_err(pq)?;
    inner.flush().map_err(|e| DatasetError::io(path, e))?;
    Ok(())
}

fn client_batch(
    task: &TaskSpec,
    client: &Client,
    schema: Arc<arrow::datatypes::Schema>,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let rows: Vec<(Split, &crate::example::Example)> = client
        .train
        .iter()
        .map(|e| (Split::Train, e))
        .chain(client.test.iter().map(|e| (Split::Test, e)))
        .collect();
    let mut ids = UInt32Builder::with_capacity(rows.len());
    let mut lang = StringBuilder::new();
    let mut split = StringBuilder::new();
    let mut text_a = StringBuilder::new();
    let mut text_b = StringBuilder::new();
    let mut label = StringBuilder::new();
    let mut label_id = Int32Builder::with_capacity(rows.len());
    for (s, e) in &rows {
        ids.append_value(client.client_id);
        lang.append_value(&e.language);
        split.append_value(s.as_str());
        text_a.append_value(&e.text_a);
        if task.text_columns.len() > 1 {
            text_b.append_value(e.text_b.as_deref().unwrap_or(""));
        }
        if task.kind == TaskKind::Classification {
            let id = e.label_id.unwrap_or(0);
            label.append_value(&task.labels[id as usize]);
            label_id.append_value(id as i32);
        }
    }
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(ids.finish()),
        Arc::new(lang.finish()),
        Arc::new(split.finish()),
        Arc::new(text_a.finish()),
    ];
    if task.text_columns.len() > 1 {
        cols.push(Arc::new(text_b.finish()));
    }
    if task.kind == TaskKind::Classification {
        cols.push(Arc::new(label.finish()));
        cols.push(Arc::new(label_id.finish()));
    }
    RecordBatch::try_new(schema, cols)
}
