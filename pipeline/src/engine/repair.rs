//! Setting aside workdir state a run would otherwise trust blindly or trip over: store entries
//! whose `meta.json` is missing, unreadable or names another key (moved to `corrupt/`, so the
//! instance is recomputed and its dependents follow their keys), and junk in `tmp/` and
//! `index/` (removed: both only ever hold this program's own scratch and hints).
//!
//! Runs under the workdir lock, at the start of `run` and of `verify`.

use std::fs;
use std::path::Path;

use super::error::{IoContext, Result};
use super::store::{read_meta_at, remove_any, Store};

/// A store entry set aside: its key (directory name), why, and where it went.
#[derive(Debug, Clone)]
pub struct SetAside {
    pub key: String,
    pub reason: String,
}

/// Moves every unsound store entry to `corrupt/`; returns what was moved.
pub fn set_aside_unsound_entries(store: &Store) -> Result<Vec<SetAside>> {
    let root = store.store_root();
    let Ok(entries) = fs::read_dir(&root) else {
        return Ok(Vec::new());
    };
    let mut moved = Vec::new();
    for e in entries.flatten() {
        let key = e.file_name().to_string_lossy().to_string();
        let Some(reason) = unsound(&e.path(), &key) else {
            continue;
        };
        store.invalidate(&key)?;
        moved.push(SetAside { key, reason });
    }
    moved.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(moved)
}

/// Why a store entry cannot be trusted as a finished instance, if it cannot.
pub fn unsound(dir: &Path, key: &str) -> Option<String> {
    if !dir.is_dir() {
        return Some("not a directory".into());
    }
    let meta = dir.join("meta.json");
    if !meta.exists() {
        return Some("meta.json is missing".into());
    }
    match read_meta_at(&meta) {
        Err(e) => Some(e.to_string()),
        Ok(m) if m.key != key => Some(format!("meta.json names key {}", m.key)),
        Ok(_) => None,
    }
}

/// Makes `tmp/` and `index/` usable: a plain file where the directory belongs is removed, and
/// inside `index/` anything but a `<hash>.json` file (a killed write's temp file, a stray
/// directory) is removed. `tmp/` entries are handled by `Store::clean_stale_attempts`.
pub fn tidy_scratch(workdir: &Path) -> Result<()> {
    for sub in ["tmp", "index"] {
        let p = workdir.join(sub);
        if p.exists() && !p.is_dir() {
            fs::remove_file(&p).at(&p)?;
        }
    }
    let index = workdir.join("index");
    let Ok(entries) = fs::read_dir(&index) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        let is_entry = p.is_file()
            && name.len() == 24 + 5
            && name.ends_with(".json")
            && name[..24].bytes().all(|b| b.is_ascii_hexdigit());
        if !is_entry {
            remove_any(&p)?;
        }
    }
    Ok(())
}

/// Deletes every checkpoint whose header check fails for its key (`engine::checkpoint`);
/// returns the files removed and why. A resume would discard them too: this lets `verify`
/// report them.
pub fn discard_bad_checkpoints(store: &Store) -> Result<Vec<(std::path::PathBuf, String)>> {
    let root = store.workdir.join("checkpoints");
    let Ok(entries) = fs::read_dir(&root) else {
        return Ok(Vec::new());
    };
    let mut bad = Vec::new();
    for e in entries.flatten() {
        let key = e.file_name().to_string_lossy().to_string();
        let file = e.path().join("state.bin");
        let Ok(bytes) = fs::read(&file) else {
            continue;
        };
        if let Err(why) = super::checkpoint::decode(&key, &bytes) {
            fs::remove_file(&file).at(&file)?;
            bad.push((file, why));
        }
    }
    bad.sort();
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_corrupt_and_foreign_meta_are_unsound() {
        let wd = tempfile::tempdir().unwrap();
        let store = Store::new(wd.path());
        let mk = |k: &str, meta: Option<&str>| {
            let d = store.instance_dir(k);
            fs::create_dir_all(d.join("out")).unwrap();
            if let Some(m) = meta {
                fs::write(d.join("meta.json"), m).unwrap();
            }
        };
        mk("nometa", None);
        mk("garbage", Some("{not json"));
        fs::write(store.store_root().join("plainfile"), "x").unwrap();
        let moved = set_aside_unsound_entries(&store).unwrap();
        let keys: Vec<&str> = moved.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, ["garbage", "nometa", "plainfile"]);
        assert!(moved[1].reason.contains("missing"), "{:?}", moved[1]);
        assert!(
            moved[0].reason.contains("unreadable meta.json"),
            "{:?}",
            moved[0]
        );
        assert_eq!(fs::read_dir(store.store_root()).unwrap().count(), 0);
        assert_eq!(fs::read_dir(wd.path().join("corrupt")).unwrap().count(), 3);
    }

    #[test]
    fn junk_in_index_and_a_file_for_tmp_are_removed() {
        let wd = tempfile::tempdir().unwrap();
        let index = wd.path().join("index");
        fs::create_dir_all(index.join("somedir")).unwrap();
        let good = index.join(format!("{}.json", "a".repeat(24)));
        fs::write(&good, "{}").unwrap();
        fs::write(index.join("junk.txt"), "x").unwrap();
        fs::write(wd.path().join("tmp"), "not a dir").unwrap();
        tidy_scratch(wd.path()).unwrap();
        let left: Vec<_> = fs::read_dir(&index).unwrap().flatten().collect();
        assert_eq!(left.len(), 1);
        assert!(good.is_file());
        assert!(!wd.path().join("tmp").exists());
    }
}
