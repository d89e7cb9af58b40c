//! Workdir lock: one run at a time per workdir. The lock file holds pid + host; a lock whose
//! process is gone (same host, pid dead or zombie) is stale and taken over. Instance locks
//! (`locks/<key>`) use the same file format for instances run outside the driver's process.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{IoContext, PipelineError, Result};

/// Held for the duration of a run; removes the lock file when dropped.
#[derive(Debug)]
pub struct WorkdirLock {
    path: PathBuf,
}

impl WorkdirLock {
    /// The lock file, for a signal handler that must release it without unwinding.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn acquire(workdir: &Path) -> Result<Self> {
        fs::create_dir_all(workdir).at(workdir)?;
        let path = workdir.join("lock");
        match take(&path)? {
            Ok(()) => Ok(WorkdirLock { path }),
            Err(h) => Err(PipelineError::Locked {
                workdir: workdir.to_path_buf(),
                pid: h.pid,
                host: h.host,
                since: h.since,
                lock: path,
            }),
        }
    }
}

/// Who holds a lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub pid: u32,
    pub host: String,
    pub since: String,
    /// The Slurm job (`JOBID` or `ARRAYJOBID_TASK`) of an instance lock taken inside a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

impl LockInfo {
    fn ours() -> Self {
        LockInfo {
            pid: std::process::id(),
            host: hostname(),
            since: super::timefmt::now_rfc3339(),
            job: slurm_job_id(),
        }
    }

    /// Whether the holder is known to be gone: same host and its pid dead (a holder on another
    /// host is only known gone to whoever knows its job ended: the Slurm driver).
    fn stale(&self) -> bool {
        self.host == hostname() && !pid_alive(self.pid)
    }
}

/// This process's Slurm job id, if it runs inside one.
pub fn slurm_job_id() -> Option<String> {
    let array = std::env::var("SLURM_ARRAY_JOB_ID").ok();
    let task = std::env::var("SLURM_ARRAY_TASK_ID").ok();
    match (array, task) {
        (Some(a), Some(t)) => Some(format!("{a}_{t}")),
        _ => std::env::var("SLURM_JOB_ID").ok(),
    }
}

/// Creates the lock file at `path` holding our [`LockInfo`], taking over a stale one; on a live
/// holder returns its info.
fn take(path: &Path) -> Result<std::result::Result<(), LockInfo>> {
    let info = LockInfo::ours();
    let dir = path.parent().expect("lock path has a parent");
    let name = path
        .file_name()
        .expect("lock path has a name")
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}", info.pid));
    fs::write(
        &tmp,
        serde_json::to_vec(&info).expect("lock info serializes"),
    )
    .at(&tmp)?;
    // hard_link fails if the lock exists: creation with content is atomic.
    for _ in 0..2 {
        match fs::hard_link(&tmp, path) {
            Ok(()) => {
                let _ = fs::remove_file(&tmp);
                return Ok(Ok(()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = read_holder(path);
                match holder {
                    // Unreadable: written by a crashed, older process.
                    None => fs::remove_file(path).at(path)?,
                    Some(h) if h.stale() => fs::remove_file(path).at(path)?,
                    Some(h) => {
                        let _ = fs::remove_file(&tmp);
                        return Ok(Err(h));
                    }
                }
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(PipelineError::io(path, e));
            }
        }
    }
    let _ = fs::remove_file(&tmp);
    Err(PipelineError::Other(format!(
        "could not take the lock {}",
        path.display()
    )))
}

/// The holder recorded in a lock file, if it is readable.
pub fn read_holder(path: &Path) -> Option<LockInfo> {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// `workdir/locks/<key>`: held by whoever executes that instance outside the driver's process
/// (`pipeline exec-instance` in a Slurm job), so a duplicate job of one instance never runs it
/// twice at once.
#[derive(Debug)]
pub struct KeyLock {
    path: PathBuf,
}

/// Where the instance lock of `key` lives.
pub fn key_lock_path(workdir: &Path, key: &str) -> PathBuf {
    workdir.join("locks").join(key)
}

impl KeyLock {
    /// Takes the instance lock, or returns who holds it.
    pub fn acquire(workdir: &Path, key: &str) -> Result<std::result::Result<Self, LockInfo>> {
        let path = key_lock_path(workdir, key);
        let dir = path.parent().expect("key lock has a parent");
        fs::create_dir_all(dir).at(dir)?;
        Ok(take(&path)?.map(|()| KeyLock { path }))
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Drop for WorkdirLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether a process exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid_t, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => true,
    }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_and_stale_lock_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let l = WorkdirLock::acquire(dir.path()).unwrap();
        match WorkdirLock::acquire(dir.path()) {
            Err(PipelineError::Locked { pid, .. }) => assert_eq!(pid, std::process::id()),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(l);
        // A lock left by a dead process on this host is stale.
        let info = LockInfo {
            pid: 999_999_999,
            host: hostname(),
            since: "x".into(),
            job: None,
        };
        fs::write(dir.path().join("lock"), serde_json::to_vec(&info).unwrap()).unwrap();
        let _l = WorkdirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn an_instance_lock_is_held_once() {
        let dir = tempfile::tempdir().unwrap();
        let held = KeyLock::acquire(dir.path(), "k1").unwrap().unwrap();
        let other = KeyLock::acquire(dir.path(), "k1").unwrap().unwrap_err();
        assert_eq!(other.pid, std::process::id());
        assert!(KeyLock::acquire(dir.path(), "k2").unwrap().is_ok());
        drop(held);
        assert!(!key_lock_path(dir.path(), "k1").exists());
        assert!(KeyLock::acquire(dir.path(), "k1").unwrap().is_ok());
    }
}
