//! Writing output files all-or-nothing: content goes to a hidden temporary beside the target
//! and is renamed into place, so a failed run never leaves a half-written table or image.

use std::fs;
use std::path::{Path, PathBuf};

use super::ReportError;

pub(crate) fn ensure_dir(dir: &Path) -> Result<(), ReportError> {
    fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Temporary path for `target`; keeps the extension last because the PNG encoder picks the
/// image format from it.
pub(crate) fn temp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) => (s.to_string(), format!(".{e}")),
        None => (name.clone(), String::new()),
    };
    target.with_file_name(format!(".{stem}.partial{ext}"))
}

pub(crate) fn commit(temp: &Path, target: &Path) -> Result<(), ReportError> {
    fs::rename(temp, target).map_err(|source| ReportError::Io {
        path: target.to_path_buf(),
        source,
    })
}

pub(crate) fn write_atomic(target: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let temp = temp_path(target);
    fs::write(&temp, bytes).map_err(|source| ReportError::Io {
        path: target.to_path_buf(),
        source,
    })?;
    commit(&temp, target)
}

/// Lower-case file-name-safe form of a label (`masakhanews`, `feddpa_t`).
pub(crate) fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    while out.contains("__") {
        out = out.replace("__", "_");
    }
    out.trim_matches('_').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_path_keeps_extension_last() {
        assert_eq!(
            temp_path(Path::new("/x/fig.png")),
            PathBuf::from("/x/.fig.partial.png")
        );
        assert_eq!(slug("Fed-Aya (Llama)"), "fed_aya_llama");
    }
}
