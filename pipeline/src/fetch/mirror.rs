//! Offline mirrors (`FEDP2EFT_MIRROR=DIR` or the manifest's `mirror:`): the same files, tried
//! before the network, laid out as `DIR/models/ORG--NAME/<commit>/<file>` and `DIR/data/<path>`.
//! `pipeline fetch --mirror-out DIR` writes one for an air-gapped cluster.

use std::path::{Path, PathBuf};

use super::error::FetchError;

pub fn model_file(dir: &Path, repo: &str, commit: &str, file: &str) -> PathBuf {
    dir.join("models")
        .join(repo.replace('/', "--"))
        .join(commit)
        .join(file)
}

pub fn data_file(dir: &Path, path: &str) -> PathBuf {
    dir.join("data").join(path)
}

/// Copies `src` to `dst` through a temporary file (a mirror is never left half-written).
pub fn copy_into(input: &str, src: &Path, dst: &Path) -> Result<(), FetchError> {
    let dir = dst.parent().expect("mirror path has a parent");
    std::fs::create_dir_all(dir).map_err(|e| FetchError::io(input, dir, "creating", &e))?;
    let tmp = dir.join(format!(".mirror.{}.tmp", std::process::id()));
    let copy = || -> std::io::Result<()> {
        std::fs::copy(src, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dst)
    };
    copy().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        FetchError::io(input, dst, "writing the mirror", &e)
    })
}
