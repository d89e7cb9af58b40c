//! A pinned dataset: every file of `pins/<name>.tsv` into `$FEDP2EFT_CACHE/data/<path>` (the
//! layout of a data root), from the mirror or the GitHub commit it is pinned to, each verified
//! before it is renamed into place.

use std::path::PathBuf;

use super::digest::FileDigests;
use super::error::FetchError;
use super::fetcher::{Fetcher, Wanted};
use super::lockfile::{LockedFile, LockedInput};
use super::{mirror, pins};

pub fn input_id(name: &str) -> String {
    format!("dataset:{name}")
}

/// What a fetched dataset resolved to; `root` is a data root holding it.
#[derive(Debug, Clone)]
pub struct FetchedDataset {
    pub lock: LockedInput,
    pub root: PathBuf,
}

impl Fetcher {
    pub fn dataset(
        &mut self,
        name: &str,
        locked: Option<&LockedInput>,
    ) -> Result<FetchedDataset, FetchError> {
        let input = input_id(name);
        let input = input.as_str();
        let files = pins::dataset(name).ok_or_else(|| {
            FetchError::new(
                input,
                "-",
                format!("unknown dataset (pinned: {})", pins::DATASETS.join(", ")),
            )
        })?;
        let locked = locked.filter(|_| !self.cfg.update);
        let root = self.cfg.data_cache.clone();
        let mut out = Vec::new();
        let mut commits = std::collections::BTreeSet::new();
        for f in &files {
            let dest = root.join(&f.path);
            let lock_file = locked.and_then(|l| l.file(&f.path));
            let url = f.upstream.as_ref().map(|(repo, commit, src)| {
                format!("{}/{repo}/{commit}/{src}", self.cfg.github_raw)
            });
            if let Some((repo, commit, _)) = &f.upstream {
                commits.insert(format!("github:{repo}@{commit}"));
            }
            let present = match lock_file {
                Some(lf) => std::fs::metadata(&dest).is_ok_and(|m| m.len() == lf.size),
                None => FileDigests::of(&dest).is_ok_and(|d| d.mismatch(&f.expected).is_none()),
            };
            let record = if present {
                match lock_file {
                    Some(lf) => lf.clone(),
                    None => {
                        let d = FileDigests::of(&dest)
                            .map_err(|e| FetchError::io(input, &dest, "reading", &e))?;
                        LockedFile {
                            path: f.path.clone(),
                            sha256: d.sha256,
                            size: d.size,
                        }
                    }
                }
            } else {
                let dir = dest.parent().expect("pinned path has a folder");
                std::fs::create_dir_all(dir).map_err(|e| {
                    FetchError::io(input, dir, "cannot create the cache folder", &e)
                })?;
                let part = dest.with_file_name(format!(
                    "{}.incomplete",
                    dest.file_name().and_then(|n| n.to_str()).unwrap_or("file")
                ));
                let w = Wanted {
                    input,
                    file: &f.path,
                    url,
                    mirror: self
                        .cfg
                        .mirror
                        .as_ref()
                        .map(|m| mirror::data_file(m, &f.path)),
                    expected: Some(&f.expected),
                    locked: lock_file.map(|l| l.sha256.as_str()),
                    size: f.size,
                };
                let d = self.obtain(&w, &part)?;
                std::fs::rename(&part, &dest).map_err(|e| {
                    FetchError::io(input, &dest, "moving the download into place", &e)
                })?;
                LockedFile {
                    path: f.path.clone(),
                    sha256: d.sha256,
                    size: d.size,
                }
            };
            if let Some(m) = &self.cfg.mirror_out {
                mirror::copy_into(input, &dest, &mirror::data_file(m, &f.path))?;
            }
            out.push(record);
        }
        let source = if commits.is_empty() {
            "mirror".to_string()
        } else {
            commits.into_iter().collect::<Vec<_>>().join(" ")
        };
        let commit = source
            .split_whitespace()
            .filter_map(|s| s.rsplit('@').next())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(FetchedDataset {
            lock: LockedInput {
                source,
                commit,
                files: out,
            },
            root,
        })
    }
}
