//! The pool Parquet file's layout, shared by writer and reader.
//!
//! Columns: `client_id` (UInt32, unique across both pools of a dataset), `language`, `split`
//! (`train`/`test`), the task's text columns (`text`; `premise`,`hypothesis`;
//! `instruction`,`response`), and for classification `label` (string) and `label_id` (Int32).
//! Rows are grouped by client (one row group per client: train rows, then test rows).
//! Key-value metadata: the keys below; `labels` and `text_columns` are JSON arrays.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};

use crate::example::{TaskKind, TaskSpec};

pub const META_DATASET: &str = "fedp2eft.dataset";
pub const META_TASK: &str = "fedp2eft.task";
pub const META_LABELS: &str = "fedp2eft.labels";
pub const META_TEXT_COLUMNS: &str = "fedp2eft.text_columns";
pub const META_POOL: &str = "fedp2eft.pool";
pub const META_SEED: &str = "fedp2eft.seed";

pub fn arrow_schema(task: &TaskSpec) -> Arc<Schema> {
    let mut fields = vec![
        Field::new("client_id", DataType::UInt32, false),
        Field::new("language", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
    ];
    for c in &task.text_columns {
        fields.push(Field::new(c, DataType::Utf8, false));
    }
    if task.kind == TaskKind::Classification {
        fields.push(Field::new("label", DataType::Utf8, false));
        fields.push(Field::new("label_id", DataType::Int32, false));
    }
    Arc::new(Schema::new(fields))
}
