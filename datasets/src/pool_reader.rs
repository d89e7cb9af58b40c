//! Reads a pool Parquet file for the compute stages: the client list comes from a scan of the
//! three small columns, and [`PoolReader::load_client`] decodes only the row groups holding
//! that client, so a stage never keeps the whole pool in memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, UInt32Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::error::{DatasetError, Result};
use crate::example::{Example, Split, TaskKind, TaskSpec};
use crate::pool_schema::*;

/// One client of a pool file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: u32,
    pub language: String,
    pub n_train: usize,
    pub n_test: usize,
}

/// An open pool file.
#[derive(Debug)]
pub struct PoolReader {
    path: PathBuf,
    task: TaskSpec,
    pool: String,
    clients: Vec<ClientInfo>,
    row_groups: BTreeMap<u32, Vec<usize>>,
}

impl PoolReader {
    /// Opens `path`, reads its metadata and lists its clients.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let builder = builder(&path)?;
        let not_pool = |message: String| DatasetError::NotAPoolFile {
            path: path.clone(),
            message,
        };
        let kv: BTreeMap<String, String> = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .map(|kvs| {
                kvs.iter()
                    .filter_map(|kv| kv.value.clone().map(|v| (kv.key.clone(), v)))
                    .collect()
            })
            .unwrap_or_default();
        let get = |k: &str| {
            kv.get(k)
                .cloned()
                .ok_or_else(|| not_pool(format!("no `{k}` metadata")))
        };
        let kind = match get(META_TASK)?.as_str() {
            "classification" => TaskKind::Classification,
            "generation" => TaskKind::Generation,
            other => return Err(not_pool(format!("unknown task kind `{other}`"))),
        };
        let parse_list = |k: &str| -> Result<Vec<String>> {
            serde_json::from_str(&get(k)?).map_err(|e| not_pool(format!("`{k}`: {e}")))
        };
        let task = TaskSpec {
            dataset: get(META_DATASET)?,
            kind,
            text_columns: parse_list(META_TEXT_COLUMNS)?,
            labels: parse_list(META_LABELS)?,
        };
        if task.text_columns.is_empty() || task.text_columns.len() > 2 {
            return Err(not_pool("expected one or two text columns".into()));
        }
        let pool = get(META_POOL)?;
        let meta = builder.metadata().clone();
        let mask = projection(&builder, &path, &["client_id", "language", "split"])?;
        let reader =
            builder
                .with_projection(mask)
                .build()
                .map_err(|source| DatasetError::Parquet {
                    path: path.clone(),
                    source,
                })?;
        let mut clients: Vec<ClientInfo> = Vec::new();
        let mut index: BTreeMap<u32, usize> = BTreeMap::new();
        // Rows carry their own language; a client's is the dominant one of its train rows, as
        // in the partition summary (Fed-Aya clients mix languages).
        let mut train_languages: Vec<Vec<String>> = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|source| DatasetError::Arrow {
                path: path.clone(),
                source,
            })?;
            let ids = column(&batch, "client_id", &path)?
                .as_primitive_opt::<UInt32Type>()
                .cloned();
            let langs = column(&batch, "language", &path)?
                .as_string_opt::<i32>()
                .cloned();
            let splits = column(&batch, "split", &path)?
                .as_string_opt::<i32>()
                .cloned();
            let (Some(ids), Some(langs), Some(splits)) = (ids, langs, splits) else {
                return Err(not_pool(
                    "client_id/language/split have unexpected types".into(),
                ));
            };
            for i in 0..batch.num_rows() {
                let id = ids.value(i);
                let slot = *index.entry(id).or_insert_with(|| {
                    clients.push(ClientInfo {
                        client_id: id,
                        language: langs.value(i).to_string(),
                        n_train: 0,
                        n_test: 0,
                    });
                    train_languages.push(Vec::new());
                    clients.len() - 1
                });
                match splits.value(i) {
                    "train" => {
                        clients[slot].n_train += 1;
                        train_languages[slot].push(langs.value(i).to_string());
                    }
                    "test" => clients[slot].n_test += 1,
                    other => return Err(not_pool(format!("unknown split `{other}`"))),
                }
            }
        }
        for (c, langs) in clients.iter_mut().zip(&train_languages) {
            if !langs.is_empty() {
                c.language = crate::partition::most_frequent(langs.iter().map(String::as_str));
            }
        }
        // Which row groups hold which client, from the row-group statistics when present.
        let mut row_groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        let id_col = meta
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.name() == "client_id")
            .ok_or_else(|| not_pool("no client_id column".into()))?;
        for (g, rg) in meta.row_groups().iter().enumerate() {
            let range = rg.column(id_col).statistics().and_then(|s| match s {
                parquet::file::statistics::Statistics::Int32(s) => {
                    Some((*s.min_opt()? as u32, *s.max_opt()? as u32))
                }
                _ => None,
            });
            match range {
                Some((lo, hi)) => {
                    for c in &clients {
                        if (lo..=hi).contains(&c.client_id) {
                            row_groups.entry(c.client_id).or_default().push(g);
                        }
                    }
                }
                None => {
                    for c in &clients {
                        row_groups.entry(c.client_id).or_default().push(g);
                    }
                }
            }
        }
        Ok(PoolReader {
            path,
            task,
            pool,
            clients,
            row_groups,
        })
    }

    /// The clients in file order.
    pub fn clients(&self) -> &[ClientInfo] {
        &self.clients
    }

    /// Dataset name, task kind, text columns and label list.
    pub fn task(&self) -> &TaskSpec {
        &self.task
    }

    /// The label list (`label_id` indexes it); empty for generation.
    pub fn labels(&self) -> &[String] {
        &self.task.labels
    }

    /// `seen` or `unseen`.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// One client's examples of `split`, in file order.
    pub fn load_client(&self, client_id: u32, split: Split) -> Result<Vec<Example>> {
        let groups =
            self.row_groups
                .get(&client_id)
                .ok_or_else(|| DatasetError::UnknownClient {
                    path: self.path.clone(),
                    client_id,
                })?;
        let builder = builder(&self.path)?;
        let mut names = vec!["client_id", "language", "split"];
        names.extend(self.task.text_columns.iter().map(String::as_str));
        if self.task.kind == TaskKind::Classification {
            names.push("label_id");
        }
        let mask = projection(&builder, &self.path, &names)?;
        let reader = builder
            .with_projection(mask)
            .with_row_groups(groups.clone())
            .build()
            .map_err(|source| DatasetError::Parquet {
                path: self.path.clone(),
                source,
            })?;
        let bad = |message: String| DatasetError::NotAPoolFile {
            path: self.path.clone(),
            message,
        };
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|source| DatasetError::Arrow {
                path: self.path.clone(),
                source,
            })?;
            let strings = |name: &str| -> Result<arrow::array::StringArray> {
                column(&batch, name, &self.path)?
                    .as_string_opt::<i32>()
                    .cloned()
                    .ok_or_else(|| bad(format!("`{name}` is not a string column")))
            };
            let ids = column(&batch, "client_id", &self.path)?
                .as_primitive_opt::<UInt32Type>()
                .cloned()
                .ok_or_else(|| bad("`client_id` is not UInt32".into()))?;
            let langs = strings("language")?;
            let splits = strings("split")?;
            let text_a = strings(&self.task.text_columns[0])?;
            let text_b = match self.task.text_columns.get(1) {
                Some(c) => Some(strings(c)?),
                None => None,
            };
            let label_ids = match self.task.kind {
                TaskKind::Classification => Some(
                    column(&batch, "label_id", &self.path)?
                        .as_primitive_opt::<Int32Type>()
                        .cloned()
                        .ok_or_else(|| bad("`label_id` is not Int32".into()))?,
                ),
                TaskKind::Generation => None,
            };
            for i in 0..batch.num_rows() {
                if ids.value(i) != client_id || splits.value(i) != split.as_str() {
                    continue;
                }
                let label_id = match &label_ids {
                    Some(l) => {
                        let v = l.value(i);
                        if v < 0 || v as usize >= self.task.labels.len() {
                            return Err(bad(format!("label_id {v} outside the label list")));
                        }
                        Some(v as u32)
                    }
                    None => None,
                };
                out.push(Example {
                    text_a: text_a.value(i).to_string(),
                    text_b: text_b.as_ref().map(|b| b.value(i).to_string()),
                    label_id,
                    language: langs.value(i).to_string(),
                });
            }
        }
        Ok(out)
    }
}

fn builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|e| DatasetError::io(path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| DatasetError::Parquet {
        path: path.into(),
        source,
    })
}

fn projection(
    builder: &ParquetRecordBatchReaderBuilder<File>,
    path: &Path,
    names: &[&str],
) -> Result<ProjectionMask> {
    let schema = builder.parquet_schema();
    let mut leaves = Vec::new();
    for name in names {
        let idx = schema
            .columns()
            .iter()
            .position(|c| c.name() == *name)
            .ok_or_else(|| DatasetError::NotAPoolFile {
                path: path.into(),
                message: format!("no `{name}` column"),
            })?;
        leaves.push(idx);
    }
    Ok(ProjectionMask::leaves(schema, leaves))
}

fn column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a dyn Array> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| DatasetError::NotAPoolFile {
            path: path.into(),
            message: format!("no `{name}` column"),
        })
}
