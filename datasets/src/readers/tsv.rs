//! Shared TSV plumbing: opening a tab-separated file with the csv crate, locating header
//! columns by name, and turning csv errors into [`DatasetError`]s with positions.

use std::fs::File;
use std::path::Path;

use crate::error::{DatasetError, Result};

/// Opens `path` as a TSV with a header row. `quoted`: whether `"` starts a quoted field
/// (MasakhaNEWS) or is an ordinary character (XNLI, whose text contains bare quotes).
pub(crate) fn open(path: &Path, quoted: bool) -> Result<csv::Reader<File>> {
    let file = File::open(path).map_err(|e| DatasetError::io(path, e))?;
    let len = file
        .metadata()
        .map_err(|e| DatasetError::io(path, e))?
        .len();
    if len == 0 {
        return Err(DatasetError::EmptyFile {
            path: path.into(),
            expected: "a header and at least one record",
        });
    }
    Ok(csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .quote(b'"')
        .quoting(quoted)
        .has_headers(true)
        .flexible(false)
        .from_reader(file))
}

/// Indices of `wanted` columns in the header, or a `MissingColumn` error.
pub(crate) fn columns<const N: usize>(
    reader: &mut csv::Reader<File>,
    path: &Path,
    wanted: [&str; N],
) -> Result<[usize; N]> {
    let header = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let mut out = [0; N];
    for (slot, name) in out.iter_mut().zip(wanted) {
        *slot = header
            .iter()
            .position(|h| h.trim_start_matches('\u{feff}') == name)
            .ok_or_else(|| DatasetError::MissingColumn {
                path: path.into(),
                column: name.into(),
                found: header.iter().collect::<Vec<_>>().join(", "),
            })?;
    }
    Ok(out)
}

/// A csv error as a `BadRecord` (record numbers are 1-based over data rows; the header is
/// record 0 in the csv crate's count).
pub(crate) fn csv_error(path: &Path, e: csv::Error) -> DatasetError {
    let (record, line) = e
        .position()
        .map(|p| (p.record(), p.line()))
        .unwrap_or((0, 0));
    match e.kind() {
        csv::ErrorKind::Io(_) => DatasetError::Io {
            path: path.into(),
            source: std::io::Error::other(e.to_string()),
        },
        csv::ErrorKind::Utf8 { err, .. } => DatasetError::BadRecord {
            path: path.into(),
            record,
            line,
            message: format!("invalid UTF-8 in field {}", err.field() + 1),
        },
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => DatasetError::BadRecord {
            path: path.into(),
            record,
            line,
            message: format!("expected {expected_len} fields, found {len}"),
        },
        _ => DatasetError::BadRecord {
            path: path.into(),
            record,
            line,
            message: e.to_string(),
        },
    }
}

/// (record, line) of a successfully read record, for errors about its content.
pub(crate) fn position(record: &csv::StringRecord) -> (u64, u64) {
    record
        .position()
        .map(|p| (p.record(), p.line()))
        .unwrap_or((0, 0))
}
