//! A `model: {hf: ORG/NAME, revision: REV}` input: the commit and file list from the Hub (or the
//! lock, or the cache when offline), missing files into the Hub cache, and the directory the
//! model kinds read — the snapshot, or its import when the repo has only `pytorch_model.bin`.

use std::path::PathBuf;

use super::digest::{Expected, FileDigests};
use super::error::FetchError;
use super::fetcher::{Fetcher, Wanted};
use super::hub::{self, RepoFile};
use super::lockfile::{LockedFile, LockedInput};
use super::mirror;

/// What a fetched model resolved to.
#[derive(Debug, Clone)]
pub struct FetchedModel {
    pub lock: LockedInput,
    /// The HF-layout directory for `model: {dir: ...}`.
    pub dir: PathBuf,
    pub snapshot: PathBuf,
}

pub fn input_id(repo: &str, revision: &str) -> String {
    format!("hf:{repo}@{revision}")
}

/// The files of a snapshot already on disk (offline without a lock).
fn snapshot_files(dir: &std::path::Path) -> Vec<RepoFile> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    let files: Vec<RepoFile> = names
        .into_iter()
        .map(|path| RepoFile {
            path,
            size: None,
            expected: None,
        })
        .collect();
    hub::wanted(&files)
}

impl Fetcher {
    pub fn model(
        &mut self,
        repo: &str,
        revision: &str,
        locked: Option<&LockedInput>,
    ) -> Result<FetchedModel, FetchError> {
        let input = input_id(repo, revision);
        let input = input.as_str();
        let endpoint = self.cfg.endpoint.clone();
        let cache = self.cfg.hub.clone();
        let locked = locked.filter(|_| !self.cfg.update);

        // The commit and file list: the lock's, else the Hub's; offline, the cache's.
        let known_commit = locked
            .map(|l| l.commit.clone())
            .or_else(|| hub::is_commit(revision).then(|| revision.to_string()));
        let in_cache = |commit: &str, files: &[LockedFile]| {
            files.iter().all(|f| {
                std::fs::metadata(cache.snapshot(repo, commit).join(&f.path))
                    .is_ok_and(|m| m.len() == f.size)
            })
        };
        // With a mirror, the lock's file list is enough: the mirror serves them, the Hub (whose
        // file list is asked only to see that the lock still holds) is left alone.
        let (commit, files) = match (locked, known_commit) {
            (Some(l), _) if in_cache(&l.commit, &l.files) || self.cfg.mirror.is_some() => (
                l.commit.clone(),
                l.files.iter().map(locked_repo_file).collect(),
            ),
            _ if self.cfg.offline => {
                let commit = hub::is_commit(revision)
                    .then(|| revision.to_string())
                    .or_else(|| locked.map(|l| l.commit.clone()))
                    .or_else(|| cache.read_ref(repo, revision))
                    .ok_or_else(|| {
                        FetchError::new(
                            input,
                            cache.repo_dir(repo).display().to_string(),
                            format!(
                                "HF_HUB_OFFLINE=1 and revision `{revision}` is not in the cache"
                            ),
                        )
                    })?;
                let files = match locked {
                    Some(l) => l.files.iter().map(locked_repo_file).collect(),
                    None => snapshot_files(&cache.snapshot(repo, &commit)),
                };
                (commit, files)
            }
            (_, commit) => {
                let rev = commit.as_deref().unwrap_or(revision);
                let http_input = input.to_string();
                let info =
                    hub::revision_info(self.http(&http_input)?, &endpoint, input, repo, rev)?;
                (info.commit.clone(), hub::wanted(&info.files))
            }
        };
        if files.is_empty() {
            return Err(FetchError::new(
                input,
                hub::revision_url(&endpoint, repo, &commit),
                "the revision has no model files (config.json, *.safetensors, pytorch_model.bin)",
            ));
        }
        if let Some(l) = locked {
            if let Some(gone) = l
                .files
                .iter()
                .find(|f| !files.iter().any(|g| g.path == f.path))
            {
                return Err(FetchError::new(
                    input,
                    hub::revision_url(&endpoint, repo, &commit),
                    format!("{} is in the lock file but no longer upstream; run `pipeline fetch --update`", gone.path),
                ));
            }
        }

        let snapshot = cache.snapshot(repo, &commit);
        let mut out = Vec::new();
        for f in &files {
            let link = snapshot.join(&f.path);
            let lock_file = locked.and_then(|l| l.file(&f.path));
            let record = if link.is_file() {
                match lock_file {
                    Some(lf) => lf.clone(),
                    None => {
                        let d = FileDigests::of(&link)
                            .map_err(|e| FetchError::io(input, &link, "reading", &e))?;
                        LockedFile {
                            path: f.path.clone(),
                            sha256: d.sha256,
                            size: d.size,
                        }
                    }
                }
            } else {
                cache.ensure_blobs(input, repo)?;
                let blob = match &f.expected {
                    Some(Expected::Sha256(h)) | Some(Expected::GitBlob(h)) => h.clone(),
                    None => lock_file
                        .map(|l| l.sha256.clone())
                        .unwrap_or_else(|| format!("{commit}-{}", f.path.replace('/', "-"))),
                };
                let part = cache.part_path(repo, &blob);
                let w = Wanted {
                    input,
                    file: &f.path,
                    url: Some(hub::resolve_url(&endpoint, repo, &commit, &f.path)),
                    mirror: self
                        .cfg
                        .mirror
                        .as_ref()
                        .map(|m| mirror::model_file(m, repo, &commit, &f.path)),
                    expected: f.expected.as_ref(),
                    locked: lock_file.map(|l| l.sha256.as_str()),
                    size: f.size,
                };
                let d = self.obtain(&w, &part)?;
                cache.install(input, repo, &commit, &f.path, &part, &blob)?;
                LockedFile {
                    path: f.path.clone(),
                    sha256: d.sha256,
                    size: d.size,
                }
            };
            if let Some(dir) = &self.cfg.mirror_out {
                mirror::copy_into(
                    input,
                    &link,
                    &mirror::model_file(dir, repo, &commit, &f.path),
                )?;
            }
            out.push(record);
        }
        if !self.cfg.offline {
            cache.write_ref(input, repo, revision, &commit)?;
        }
        let dir = self.model_dir(input, repo, &commit, &snapshot, &out)?;
        Ok(FetchedModel {
            lock: LockedInput {
                source: format!("{endpoint}/{repo}"),
                commit,
                files: out,
            },
            dir,
            snapshot,
        })
    }

    /// The snapshot itself, or — for a repo with only a PyTorch checkpoint — its import (made
    /// once, all-or-nothing, beside our other caches).
    fn model_dir(
        &self,
        input: &str,
        repo: &str,
        commit: &str,
        snapshot: &std::path::Path,
        files: &[LockedFile],
    ) -> Result<PathBuf, FetchError> {
        let has = |p: &str| files.iter().any(|f| f.path.starts_with(p));
        if has("model") && files.iter().any(|f| f.path.ends_with(".safetensors"))
            || !has("pytorch_model")
        {
            return Ok(snapshot.to_path_buf());
        }
        let out = imported_dir(&self.cfg, repo, commit);
        if out.join("model.safetensors").is_file() {
            return Ok(out);
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| FetchError::io(input, parent, "creating", &e))?;
        }
        stages::import::pytorch::import_pytorch_dir(snapshot, None, &out).map_err(|e| {
            FetchError::new(
                input,
                snapshot.display().to_string(),
                format!("importing the PyTorch checkpoint: {e}"),
            )
        })?;
        Ok(out)
    }
}

/// Where the import of a PyTorch-only repo at `commit` lives.
pub fn imported_dir(cfg: &super::FetchConfig, repo: &str, commit: &str) -> PathBuf {
    cfg.imported.join(repo.replace('/', "--")).join(commit)
}

/// The directory a fetched model is read from, found without the network: its import when the
/// snapshot has no safetensors weights and one was made, else the snapshot.
pub fn local_dir(cfg: &super::FetchConfig, repo: &str, commit: &str) -> PathBuf {
    let snapshot = cfg.hub.snapshot(repo, commit);
    let imported = imported_dir(cfg, repo, commit);
    if !snapshot.join("model.safetensors").is_file() && imported.join("model.safetensors").is_file()
    {
        return imported;
    }
    snapshot
}

fn locked_repo_file(f: &LockedFile) -> RepoFile {
    RepoFile {
        path: f.path.clone(),
        size: Some(f.size),
        expected: Some(Expected::Sha256(f.sha256.clone())),
    }
}
