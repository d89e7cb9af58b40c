//! The artifact store under a workdir:
//!
//! ```text
//! <workdir>/store/<key>/        finished instance: meta.json, log.txt, out/ (the artifacts)
//! <workdir>/failed/<key>/       last failed attempt: meta.json with the error, log.txt
//! <workdir>/tmp/<key>.<pid>.<n> an attempt in progress (renamed into store/ when done)
//! <workdir>/checkpoints/<key>/  mid-stage checkpoints of a long stage (removed when done)
//! <workdir>/index/<id>.json     last key computed for each instance id (status / explain)
//! <workdir>/corrupt/            instances `verify` found damaged
//! ```
//!
//! An instance is done exactly when `store/<key>/meta.json` exists; both appear in one rename of
//! a fully written, fsync'd directory, so a crash never leaves a half-written instance that
//! counts as done.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::error::{IoContext, PipelineError, Result};
use super::key::{file_digest, KeyComponents};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDigest {
    pub blake3: String,
    pub bytes: u64,
}

/// `meta.json` of a stage instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub key: String,
    pub stage: String,
    pub instance: String,
    /// Everything the key was computed from (kind, code version, params, seed, device,
    /// input and data-file digests).
    #[serde(flatten)]
    pub components: KeyComponents,
    /// Artifact path (relative to `out/`) → digest.
    pub outputs: BTreeMap<String, FileDigest>,
    /// Digest over all outputs: what dependents' keys see.
    pub output_digest: String,
    pub start_time: String,
    pub end_time: String,
    pub wall_seconds: f64,
    /// High-water mark of resident memory (bytes) of the process that ran the stage.
    pub peak_rss_bytes: u64,
    pub host: String,
    pub pid: u32,
    /// `ok` or `failed`.
    pub exit_status: String,
    pub error: Option<String>,
    /// Whether the stage continued from a checkpoint of an interrupted attempt.
    pub resumed: bool,
}

/// Last key computed for an instance id, so `status` can say why an instance is stale.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexEntry {
    pub instance: String,
    pub key: String,
    pub components: KeyComponents,
}

#[derive(Debug, Clone)]
pub struct Store {
    pub workdir: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    pub fn new(workdir: &Path) -> Self {
        Store {
            workdir: workdir.to_path_buf(),
        }
    }

    pub fn store_root(&self) -> PathBuf {
        self.workdir.join("store")
    }

    pub fn instance_dir(&self, key: &str) -> PathBuf {
        self.store_root().join(key)
    }

    pub fn out_dir(&self, key: &str) -> PathBuf {
        self.instance_dir(key).join("out")
    }

    pub fn failed_dir(&self, key: &str) -> PathBuf {
        self.workdir.join("failed").join(key)
    }

    pub fn checkpoint_dir(&self, key: &str) -> PathBuf {
        self.workdir.join("checkpoints").join(key)
    }

    fn index_path(&self, instance: &str) -> PathBuf {
        let h = blake3::hash(instance.as_bytes()).to_hex();
        self.workdir
            .join("index")
            .join(format!("{}.json", &h[..24]))
    }

    pub fn is_done(&self, key: &str) -> bool {
        self.instance_dir(key).join("meta.json").is_file()
    }

    pub fn is_failed(&self, key: &str) -> bool {
        self.failed_dir(key).join("meta.json").is_file()
    }

    pub fn read_meta(&self, key: &str) -> Result<Meta> {
        read_meta_at(&self.instance_dir(key).join("meta.json"))
    }

    pub fn read_failed_meta(&self, key: &str) -> Result<Meta> {
        read_meta_at(&self.failed_dir(key).join("meta.json"))
    }

    /// A fresh temporary directory for an attempt at `key`, with an `out/` inside.
    pub fn new_attempt(&self, key: &str) -> Result<PathBuf> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .workdir
            .join("tmp")
            .join(format!("{key}.{}.{n}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).at(&dir)?;
        }
        fs::create_dir_all(dir.join("out")).at(&dir)?;
        Ok(dir)
    }

    /// Digests every file under `attempt/out`, writes meta.json, fsyncs and renames the attempt
    /// into the store. With `replace`, an existing entry (a forced rerun) is swapped out.
    pub fn commit(&self, attempt: &Path, meta: &mut Meta, replace: bool) -> Result<()> {
        let out = attempt.join("out");
        meta.outputs = digest_tree(&out)?;
        meta.output_digest = tree_digest(&meta.outputs);
        let bytes =
            serde_json::to_vec_pretty(meta).map_err(|e| PipelineError::Other(e.to_string()))?;
        let meta_path = attempt.join("meta.json");
        fs::write(&meta_path, bytes).at(&meta_path)?;
        // One fsync per file and directory, then the rename publishes the whole instance.
        sync_tree(attempt)?;
        let dest = self.instance_dir(&meta.key);
        fs::create_dir_all(self.store_root()).at(self.store_root())?;
        if dest.exists() && self.read_meta(&meta.key).is_err() {
            // A damaged entry (no or unreadable meta.json) is not "another process finished
            // first": set it aside, or the instance would never be marked done.
            self.invalidate(&meta.key)?;
        }
        if dest.exists() {
            if !replace {
                // Another process finished the same key first; its result is equally valid.
                fs::remove_dir_all(attempt).at(attempt)?;
                return Ok(());
            }
            let trash = self.workdir.join("tmp").join(format!(
                "replaced.{}.{}",
                meta.key,
                TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            fs::rename(&dest, &trash).at(&dest)?;
            fs::rename(attempt, &dest).at(&dest)?;
            fs::remove_dir_all(&trash).at(&trash)?;
        } else {
            fs::rename(attempt, &dest).at(&dest)?;
        }
        sync_dir(&self.store_root())?;
        let failed = self.failed_dir(&meta.key);
        if failed.exists() {
            fs::remove_dir_all(&failed).at(&failed)?;
        }
        let ckpt = self.checkpoint_dir(&meta.key);
        if ckpt.exists() {
            fs::remove_dir_all(&ckpt).at(&ckpt)?;
        }
        Ok(())
    }

    /// Deletes the checkpoint of `key` (a forced rerun starts from scratch).
    pub fn discard_checkpoint(&self, key: &str) -> Result<()> {
        let dir = self.checkpoint_dir(key);
        if dir.exists() {
            remove_any(&dir)?;
        }
        Ok(())
    }

    /// Keeps a failed attempt's log and error under `failed/<key>`; its outputs are discarded.
    pub fn record_failure(&self, attempt: &Path, meta: &Meta) -> Result<()> {
        let dest = self.failed_dir(&meta.key);
        if dest.exists() {
            fs::remove_dir_all(&dest).at(&dest)?;
        }
        fs::create_dir_all(&dest).at(&dest)?;
        write_json_synced(&dest.join("meta.json"), meta)?;
        let log = attempt.join("log.txt");
        if log.exists() {
            fs::copy(&log, dest.join("log.txt")).at(&log)?;
        }
        fs::remove_dir_all(attempt).at(attempt)?;
        Ok(())
    }

    /// Removes attempts left by processes that are gone (killed runs).
    pub fn clean_stale_attempts(&self) -> Result<()> {
        let tmp = self.workdir.join("tmp");
        let Ok(entries) = fs::read_dir(&tmp) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let pid = name.split('.').nth(1).and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| p == std::process::id() || super::lock::pid_alive(p));
            // An instance lock means a job (perhaps on another host, where this pid means
            // nothing) owns the attempt; the Slurm driver removes locks of jobs that ended.
            let key = name.split('.').next().unwrap_or_default();
            let owned = !key.is_empty() && super::lock::key_lock_path(&self.workdir, key).exists();
            if (!alive && !owned) || name.starts_with("replaced.") {
                // Anything not ours (a stray file included) goes: tmp/ is private scratch.
                remove_any(&e.path())?;
            }
        }
        Ok(())
    }

    /// The index only informs `status`/`explain`; it is replaced atomically but not fsync'd.
    pub fn write_index(&self, entry: &IndexEntry) -> Result<()> {
        let path = self.index_path(&entry.instance);
        let bytes =
            serde_json::to_vec_pretty(entry).map_err(|e| PipelineError::Other(e.to_string()))?;
        let dir = path.parent().expect("index path has a parent");
        fs::create_dir_all(dir).at(dir)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, bytes).at(&tmp)?;
        fs::rename(&tmp, &path).at(&path)
    }

    pub fn read_index(&self, instance: &str) -> Option<IndexEntry> {
        let text = fs::read_to_string(self.index_path(instance)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Keys of every finished instance in the store.
    pub fn all_keys(&self) -> Result<Vec<String>> {
        let root = self.store_root();
        let Ok(entries) = fs::read_dir(&root) else {
            return Ok(Vec::new());
        };
        let mut keys: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("meta.json").is_file())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Re-hashes a finished instance's artifacts; returns the problems found.
    pub fn verify(&self, key: &str) -> Result<Vec<String>> {
        let meta = self.read_meta(key)?;
        let out = self.out_dir(key);
        let mut problems = Vec::new();
        let actual = digest_tree(&out)?;
        for (path, expected) in &meta.outputs {
            match actual.get(path) {
                None => problems.push(format!("{path}: missing")),
                Some(d) if d != expected => problems.push(format!(
                    "{path}: digest mismatch ({} bytes, expected {})",
                    d.bytes, expected.bytes
                )),
                _ => {}
            }
        }
        for path in actual.keys() {
            if !meta.outputs.contains_key(path) {
                problems.push(format!("{path}: not recorded in meta.json"));
            }
        }
        Ok(problems)
    }

    /// Moves a damaged instance out of the store so the next run recomputes it.
    pub fn invalidate(&self, key: &str) -> Result<PathBuf> {
        let corrupt = self.workdir.join("corrupt");
        fs::create_dir_all(&corrupt).at(&corrupt)?;
        let dest = corrupt.join(format!(
            "{key}.{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let src = self.instance_dir(key);
        fs::rename(&src, &dest).at(&src)?;
        Ok(dest)
    }
}

pub(crate) fn read_meta_at(path: &Path) -> Result<Meta> {
    let text = fs::read_to_string(path).at(path)?;
    serde_json::from_str(&text).map_err(|e| PipelineError::Corrupt {
        path: path.to_path_buf(),
        message: format!("unreadable meta.json: {e}"),
    })
}

/// Digests of every regular file below `root`, keyed by `/`-separated relative path.
pub fn digest_tree(root: &Path) -> Result<BTreeMap<String, FileDigest>> {
    let mut out = BTreeMap::new();
    if !root.exists() {
        return Ok(out);
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            let p = e.path();
            let ft = e.file_type().at(&p)?;
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let rel = p
                    .strip_prefix(root)
                    .expect("below root")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().to_string())
                    .collect::<Vec<_>>()
                    .join("/");
                let (blake3, bytes) = file_digest(&p).at(&p)?;
                out.insert(rel, FileDigest { blake3, bytes });
            }
        }
    }
    Ok(out)
}

pub fn tree_digest(outputs: &BTreeMap<String, FileDigest>) -> String {
    let mut h = blake3::Hasher::new();
    for (path, d) in outputs {
        h.update(path.as_bytes());
        h.update(b"\0");
        h.update(d.blake3.as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}

/// Removes a file, link or directory tree.
pub fn remove_any(p: &Path) -> Result<()> {
    if p.is_dir() && !p.is_symlink() {
        fs::remove_dir_all(p).at(p)
    } else {
        fs::remove_file(p).at(p)
    }
}

/// Writes JSON to a temp file, fsyncs it and renames it over `path`.
pub fn write_json_synced<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes =
        serde_json::to_vec_pretty(value).map_err(|e| PipelineError::Other(e.to_string()))?;
    write_bytes_synced(path, &bytes)
}

/// Atomic replace: temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_bytes_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).at(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}.{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    {
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
    }
    fs::rename(&tmp, path).at(path)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

/// fsyncs every file and directory below `root` (before the rename that publishes it).
fn sync_tree(root: &Path) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            let p = e.path();
            if e.file_type().at(&p)?.is_dir() {
                stack.push(p);
            } else if e.file_name() != "log.txt" {
                // The log is diagnostics, not an artifact: losing its tail to a crash is fine.
                File::open(&p).and_then(|f| f.sync_all()).at(&p)?;
            }
        }
        sync_dir(&dir)?;
    }
    Ok(())
}
