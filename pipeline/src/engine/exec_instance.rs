//! `pipeline exec-instance`: one instance, by key, in a process of its own — what a Slurm job
//! runs on the shared workdir. It plans the manifest as the driver did, finds the instance by
//! its cache key, takes the instance lock (`locks/<key>`: a duplicate job waits for nothing and
//! exits), and runs it through `instance::execute`, the local executor's own path, so the store
//! entry is the one a local run writes. It never takes the workdir lock: the driver holds it.

use super::error::{PipelineError, Result};
use super::instance::execute;
use super::lock::{KeyLock, LockInfo};
use super::manifest::Manifest;
use super::plan::{DigestCache, Plan, State};
use super::progress::StageProgress;
use super::registry::Registry;
use super::store::Store;

/// How `exec-instance` ended.
#[derive(Debug)]
pub enum ExecResult {
    /// Ran and committed.
    Done,
    /// Already in the store (a duplicate or re-attached job): nothing to do.
    AlreadyDone,
    /// Another process holds the instance lock.
    Busy(LockInfo),
    /// Ran and failed; recorded under `failed/<key>/`.
    Failed(String),
}

/// Runs the instance of `manifest` whose key is `key`. `force` replaces a cached entry; its
/// checkpoint is not discarded here (the driver does that once, so retries resume).
pub fn exec_instance(
    manifest: &Manifest,
    registry: &Registry,
    key: &str,
    force: bool,
) -> Result<ExecResult> {
    let store = Store::new(&manifest.workdir);
    let lock = match KeyLock::acquire(&manifest.workdir, key)? {
        Ok(lock) => lock,
        Err(holder) => return Ok(ExecResult::Busy(holder)),
    };
    // Planned under the lock: a job that held it until now may have committed.
    let plan = Plan::build(manifest, registry, &store, &mut DigestCache::default())?;
    let n = plan
        .instances
        .iter()
        .position(|i| i.key.as_deref() == Some(key))
        .ok_or_else(|| {
            PipelineError::Usage(format!(
                "no instance of {} has key {key} (the manifest or an input changed since the \
                 job was submitted)",
                manifest.path.display()
            ))
        })?;
    let inst = &plan.instances[n];
    match inst.state {
        State::Done if !force => return Ok(ExecResult::AlreadyDone),
        State::Waiting => {
            return Err(PipelineError::Other(format!(
                "{}: its inputs are not finished (the driver submits an instance only once they \
                 are)",
                inst.id
            )))
        }
        State::Done | State::Ready | State::Failed => {}
    }
    let outcome = execute(
        manifest,
        registry,
        &store,
        &plan,
        n,
        force,
        false,
        1,
        StageProgress::hidden(),
    );
    drop(lock);
    Ok(match outcome {
        Ok(()) => ExecResult::Done,
        Err(e) => ExecResult::Failed(e),
    })
}
