//! The frozen base models of finished `base/*` instances, kept in memory across the instances
//! of one `pipeline run` that read them (every personalization and Stage 1 of a base loads the
//! same `model/`: for multilingual-e5 that is 470 MB of weights and a 17 MB tokenizer each
//! time). Keyed by the base's `model/` directory — a store path, so immutable — with the task
//! setup and device; a consumer gets a cheap clone whose tensors share storage with the cached
//! ones. Every consumer freezes the base before training (methods add their own adapters), and
//! turning a frozen tensor trainable copies it, so nothing writes into the cached storage.
//! Bounded by `FEDP2EFT_BASE_CACHE_MB` (default 4096; 0 disables it), least recently used
//! first out.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use stages::task::{TaskModel, TaskSetup};

use crate::engine::registry::StageError;

/// Environment variable bounding the cache, in MiB.
pub const BASE_CACHE_ENV: &str = "FEDP2EFT_BASE_CACHE_MB";

struct Entry {
    key: (PathBuf, String, String),
    model: Arc<TaskModel>,
    bytes: usize,
}

fn cache() -> &'static Mutex<Vec<Entry>> {
    static CACHE: OnceLock<Mutex<Vec<Entry>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(Vec::new()))
}

fn bound_bytes() -> usize {
    std::env::var(BASE_CACHE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(4096)
        << 20
}

fn model_bytes(model: &TaskModel) -> usize {
    model
        .store()
        .iter()
        .map(|(_, p)| p.tensor().elem_count() * p.tensor().dtype().size_in_bytes())
        .sum()
}

/// A frozen copy of the base at `dir` for `setup`, loaded with `load` unless cached.
pub fn frozen_base(
    dir: &Path,
    setup: &TaskSetup,
    device: &str,
    load: impl FnOnce() -> Result<TaskModel, StageError>,
) -> Result<TaskModel, StageError> {
    let key = (dir.to_path_buf(), format!("{setup:?}"), device.to_string());
    let hit = {
        let mut entries = cache().lock().unwrap_or_else(|e| e.into_inner());
        let at = entries.iter().position(|e| e.key == key);
        at.map(|i| {
            // Most recently used last.
            let e = entries.remove(i);
            let model = e.model.clone();
            entries.push(e);
            model
        })
    };
    if let Some(model) = hit {
        return Ok(model.with_store(model.store().clone()));
    }
    let mut model = load()?;
    model
        .store_mut()
        .set_trainable(|_| false)
        .map_err(|e| StageError(e.to_string()))?;
    let bound = bound_bytes();
    let bytes = model_bytes(&model);
    if bytes <= bound {
        let mut entries = cache().lock().unwrap_or_else(|e| e.into_inner());
        while entries.iter().map(|e| e.bytes).sum::<usize>() + bytes > bound {
            entries.remove(0);
        }
        let model = Arc::new(model.with_store(model.store().clone()));
        entries.push(Entry { key, model, bytes });
    }
    Ok(model)
}
