//! The Hugging Face Hub cache layout, shared with `huggingface_hub`:
//! `<hub>/models--ORG--NAME/{blobs/<digest>, snapshots/<commit>/<file> -> ../../blobs/<digest>,
//! refs/<revision>}`. A model a user downloaded with Python is found here as is, and ours is
//! usable by Python tools. `<hub>` is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`.

use std::path::{Path, PathBuf};

use super::error::FetchError;

#[derive(Debug, Clone)]
pub struct HubCache {
    pub root: PathBuf,
}

/// `$HF_HOME`, else `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    if let Some(h) = std::env::var_os("HF_HOME") {
        return PathBuf::from(h);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("huggingface")
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(input: &str, path: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| FetchError::io(input, dir, "creating", &e))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        FetchError::io(input, path, "writing", &e)
    })
}

impl HubCache {
    pub fn from_env() -> Self {
        let root = std::env::var_os("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home().join("hub"));
        HubCache { root }
    }

    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    pub fn snapshot(&self, repo: &str, commit: &str) -> PathBuf {
        self.repo_dir(repo).join("snapshots").join(commit)
    }

    /// Where a blob is downloaded to before it is verified (`huggingface_hub`'s name for it).
    pub fn part_path(&self, repo: &str, blob: &str) -> PathBuf {
        self.repo_dir(repo)
            .join("blobs")
            .join(format!("{blob}.incomplete"))
    }

    /// The commit a branch or tag points to, as last resolved.
    pub fn read_ref(&self, repo: &str, revision: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.repo_dir(repo).join("refs").join(revision)).ok()?;
        Some(text.trim().to_string()).filter(|c| !c.is_empty())
    }

    pub fn write_ref(
        &self,
        input: &str,
        repo: &str,
        revision: &str,
        commit: &str,
    ) -> Result<(), FetchError> {
        if revision == commit {
            return Ok(());
        }
        let path = self.repo_dir(repo).join("refs").join(revision);
        write_atomic(input, &path, commit.as_bytes())
    }

    /// Moves a verified download into `blobs/<blob>` and links `snapshots/<commit>/<file>` to it.
    pub fn install(
        &self,
        input: &str,
        repo: &str,
        commit: &str,
        file: &str,
        part: &Path,
        blob: &str,
    ) -> Result<PathBuf, FetchError> {
        let blob_path = self.repo_dir(repo).join("blobs").join(blob);
        std::fs::rename(part, &blob_path)
            .map_err(|e| FetchError::io(input, &blob_path, "moving the download into place", &e))?;
        let link = self.snapshot(repo, commit).join(file);
        let dir = link.parent().expect("snapshot file has a parent");
        std::fs::create_dir_all(dir).map_err(|e| FetchError::io(input, dir, "creating", &e))?;
        // Relative, as huggingface_hub writes it: one `..` per directory below the repo folder.
        let depth = file.matches('/').count() + 2;
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(blob);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)
            .map_err(|e| FetchError::io(input, &link, "linking the snapshot file", &e))?;
        Ok(link)
    }

    /// Prepares `blobs/` for a download (an error here is a read-only or full cache).
    pub fn ensure_blobs(&self, input: &str, repo: &str) -> Result<(), FetchError> {
        let dir = self.repo_dir(repo).join("blobs");
        std::fs::create_dir_all(&dir)
            .map_err(|e| FetchError::io(input, &dir, "cannot create the cache folder", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_huggingface_hub() {
        let dir = tempfile::tempdir().unwrap();
        let c = HubCache {
            root: dir.path().to_path_buf(),
        };
        let repo = "org/name";
        c.ensure_blobs("t", repo).unwrap();
        let part = c.part_path(repo, "abc");
        std::fs::write(&part, b"x").unwrap();
        let link = c
            .install("t", repo, "c0ffee", "sub/f.json", &part, "abc")
            .unwrap();
        assert_eq!(
            link,
            dir.path()
                .join("models--org--name/snapshots/c0ffee/sub/f.json")
        );
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            PathBuf::from("../../../blobs/abc")
        );
        assert_eq!(std::fs::read(&link).unwrap(), b"x");
        c.write_ref("t", repo, "main", "c0ffee").unwrap();
        assert_eq!(c.read_ref(repo, "main").as_deref(), Some("c0ffee"));
    }
}
