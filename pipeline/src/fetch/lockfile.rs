//! `manifests/<name>.lock`: what every input of a manifest resolved to (source, commit, files with
//! sha256 and size), like `Cargo.lock`. Later fetches take the locked commit and check every file
//! against it, so a changed upstream is an error naming the file, not a silent change of results.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::FetchError;

pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub version: u32,
    /// By input id (`hf:ORG/NAME@REV`, `dataset:NAME`).
    pub inputs: BTreeMap<String, LockedInput>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedInput {
    /// Where it comes from (`https://huggingface.co/ORG/NAME`, `github:OWNER/REPO`).
    pub source: String,
    pub commit: String,
    pub files: Vec<LockedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedFile {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

impl LockedInput {
    pub fn file(&self, path: &str) -> Option<&LockedFile> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// `<manifest dir>/<manifest file stem>.lock`.
pub fn lock_path(manifest: &Path) -> PathBuf {
    let stem = manifest
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("manifest");
    manifest.with_file_name(format!("{stem}.lock"))
}

impl LockFile {
    pub fn empty() -> Self {
        LockFile {
            version: LOCK_VERSION,
            inputs: BTreeMap::new(),
        }
    }

    /// The lock at `path`, `None` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Self>, FetchError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FetchError::io("lock file", path, "reading", &e)),
        };
        let lock: LockFile = serde_json::from_str(&text).map_err(|e| {
            FetchError::new(
                "lock file",
                path.display().to_string(),
                format!("invalid lock file (line {}): {e}", e.line()),
            )
        })?;
        if lock.version != LOCK_VERSION {
            return Err(FetchError::new(
                "lock file",
                path.display().to_string(),
                format!(
                    "lock version {} is not {LOCK_VERSION}; run `pipeline fetch --update`",
                    lock.version
                ),
            ));
        }
        Ok(Some(lock))
    }

    pub fn save(&self, path: &Path) -> Result<(), FetchError> {
        let mut text = serde_json::to_string_pretty(self).expect("serialisable");
        text.push('\n');
        super::hub_cache::write_atomic("lock file", path, text.as_bytes())
    }
}

/// The error for a file whose digest is not the locked one.
pub fn changed(input: &str, url: &str, file: &str, locked: &str, now: &str) -> FetchError {
    FetchError::new(
        input,
        url,
        format!(
            "{file} changed upstream: its sha256 is {now}, the lock file has {locked}; \
             nothing was replaced — run `pipeline fetch --update` to accept the new version"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_the_lock_after_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let p = lock_path(&dir.path().join("masakhanews.yaml"));
        assert_eq!(p, dir.path().join("masakhanews.lock"));
        assert_eq!(LockFile::load(&p).unwrap(), None);
        let mut lock = LockFile::empty();
        lock.inputs.insert(
            "hf:o/n@main".into(),
            LockedInput {
                source: "https://huggingface.co/o/n".into(),
                commit: "c".repeat(40),
                files: vec![LockedFile {
                    path: "config.json".into(),
                    sha256: "0".repeat(64),
                    size: 3,
                }],
            },
        );
        lock.save(&p).unwrap();
        assert_eq!(LockFile::load(&p).unwrap(), Some(lock));
        std::fs::write(&p, "{\"version\": 9, \"inputs\": {}}").unwrap();
        let e = LockFile::load(&p).unwrap_err().to_string();
        assert!(e.contains("lock version 9"), "{e}");
    }
}
