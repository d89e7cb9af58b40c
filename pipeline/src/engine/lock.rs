//! Workdir lock: one run at a time per workdir. The lock file holds pid + host; a lock whose
//! process is gone (same host, pid dead or zombie) is stale and taken over.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{IoContext, PipelineError, Result};

#[derive(Debug, Serialize, Deserialize)]
struct LockInfo {
    pid: u32,
    host: String,
    since: String,
}

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
        let info = LockInfo {
            pid: std::process::id(),
            host: hostname(),
            since: super::timefmt::now_rfc3339(),
        };
        let tmp = workdir.join(format!(".lock.{}", info.pid));
        fs::write(
            &tmp,
            serde_json::to_vec(&info).expect("lock info serializes"),
        )
        .at(&tmp)?;
        // hard_link fails if the lock exists: creation with content is atomic.
        for _ in 0..2 {
            match fs::hard_link(&tmp, &path) {
                Ok(()) => {
                    let _ = fs::remove_file(&tmp);
                    return Ok(WorkdirLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder: Option<LockInfo> = fs::read(&path)
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok());
                    let stale = match &holder {
                        Some(h) => h.host == info.host && !pid_alive(h.pid),
                        None => true, // unreadable: written by a crashed, older process
                    };
                    if stale {
                        fs::remove_file(&path).at(&path)?;
                        continue;
                    }
                    let _ = fs::remove_file(&tmp);
                    let h = holder.expect("not stale means readable");
                    return Err(PipelineError::Locked {
                        workdir: workdir.to_path_buf(),
                        pid: h.pid,
                        host: h.host,
                        since: h.since,
                        lock: path,
                    });
                }
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(PipelineError::io(&path, e));
                }
            }
        }
        let _ = fs::remove_file(&tmp);
        Err(PipelineError::Other(format!(
            "could not take the lock {}",
            path.display()
        )))
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
        };
        fs::write(dir.path().join("lock"), serde_json::to_vec(&info).unwrap()).unwrap();
        let _l = WorkdirLock::acquire(dir.path()).unwrap();
    }
}
