//! SIGINT and SIGTERM during `run`. Stages are plain compute loops with no cancellation points,
//! so the run ends at once, as after `kill -9` (commits are atomic renames and checkpoints are
//! checked on resume, so nothing is half-trusted), but first says which instances were
//! interrupted, that a rerun resumes them, and releases the workdir lock. Exit status 128 + the
//! signal number (130 for SIGINT, 143 for SIGTERM), the shell's convention.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

/// Instance ids being executed right now, kept by the executor.
pub type Running = Arc<Mutex<BTreeSet<String>>>;

/// What a backend must undo before the process exits on a signal (the Slurm backend cancels
/// its jobs).
type Cleanup = Box<dyn Fn() + Send + Sync>;

fn cleanup() -> &'static Mutex<Option<Cleanup>> {
    static CLEANUP: OnceLock<Mutex<Option<Cleanup>>> = OnceLock::new();
    CLEANUP.get_or_init(|| Mutex::new(None))
}

/// Sets the action run on SIGINT/SIGTERM before the lock is released (replacing an earlier one).
pub fn set_cleanup(f: Cleanup) {
    *cleanup().lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
}

/// Catches the signals while alive; dropping it stops the watcher thread.
pub struct InterruptGuard {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

/// Starts watching for SIGINT/SIGTERM; on one, reports `running`, removes `lock` and exits.
pub fn install(lock: PathBuf, running: Running) -> std::io::Result<InterruptGuard> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let handle = signals.handle();
    let thread = std::thread::spawn(move || {
        // `forever` ends when the guard closes the handle.
        if let Some(signal) = signals.forever().next() {
            let ids: Vec<String> = match running.lock() {
                Ok(r) => r.iter().cloned().collect(),
                Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
            };
            eprintln!("{}", message(signal, &ids));
            if let Some(f) = cleanup().lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                f();
            }
            let _ = std::fs::remove_file(&lock);
            std::process::exit(128 + signal);
        }
    });
    Ok(InterruptGuard {
        handle,
        thread: Some(thread),
    })
}

fn message(signal: i32, running: &[String]) -> String {
    let name = if signal == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    let what = if running.is_empty() {
        "no instance was running".to_string()
    } else {
        format!("interrupted {}", running.join(", "))
    };
    format!(
        "{name}: run stopped; {what}. Finished instances are kept; running the same command \
         again resumes the interrupted ones from their last checkpoint."
    )
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_the_signal_and_the_instances() {
        let m = message(SIGTERM, &["a[x=1]".into(), "b".into()]);
        assert!(
            m.starts_with("SIGTERM: run stopped; interrupted a[x=1], b."),
            "{m}"
        );
        assert!(message(SIGINT, &[]).contains("no instance was running"));
    }
}
