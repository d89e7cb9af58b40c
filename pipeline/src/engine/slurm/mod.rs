//! The Slurm backend: each ready instance becomes a cluster job (a wave's instances of one
//! stage a job array) running `pipeline exec-instance` on the shared workdir, which commits into
//! the store exactly as the local executor does. Slurm schedules; the driver only submits,
//! polls one `squeue` per interval for all its jobs, and reads each outcome from the store —
//! the one place a job's success is atomic and visible — never from a job's exit code alone.
//!
//! Faults: a job that leaves the queue without a store outcome (cancelled, timed out,
//! preempted, node failure, out of memory) is resubmitted up to `retries` times and resumes
//! from its checkpoint; a failed stage is retried likewise, then reported with its Slurm id and
//! log. A job's outcome may become visible a little after it leaves the queue on a network
//! filesystem, so a job is only declared lost after `grace`. The driver records its jobs
//! (`jobs.rs`) so that after `kill -9` a new driver re-attaches to those still queued or running,
//! and SIGINT/SIGTERM cancel them (`scancel`).

pub mod commands;
pub mod jobs;
pub mod script;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::backend::{Backend, Wave};
use super::error::{PipelineError, Result};
use super::instance::Outcome;
use super::lock::{key_lock_path, pid_alive, read_holder, LockInfo};
use super::manifest::Manifest;
use super::progress::StageProgress;
use super::resources::Resources;
pub use super::run_options::SlurmOptions;
use super::store::Store;
use jobs::{JobRecord, JobsFile};
use script::JobScript;

pub struct Slurm {
    exe: PathBuf,
    manifest: PathBuf,
    workdir: PathBuf,
    cwd: PathBuf,
    /// Every job of this workdir carries this name; `squeue --name` finds exactly them.
    job_name: String,
    opts: SlurmOptions,
    /// Jobs queued or running, for `scancel` on SIGINT/SIGTERM.
    outstanding: Arc<Mutex<BTreeSet<String>>>,
}

fn absolute(p: &Path, what: &str) -> Result<PathBuf> {
    std::fs::canonicalize(p)
        .map_err(|e| PipelineError::Other(format!("{what} {}: {e}", p.display())))
}

impl Slurm {
    pub fn new(manifest: &Manifest, opts: SlurmOptions) -> Result<Self> {
        commands::available()
            .map_err(|e| PipelineError::Usage(format!("--executor slurm: {e}")))?;
        if opts.max_jobs == 0 {
            return Err(PipelineError::Usage("--max-jobs must be at least 1".into()));
        }
        opts.resources
            .check()
            .map_err(|e| PipelineError::Usage(format!("--executor slurm: {e}")))?;
        let exe = std::env::current_exe()
            .map_err(|e| PipelineError::Other(format!("cannot find this executable: {e}")))?;
        let workdir = absolute(&manifest.workdir, "workdir")?;
        let digest = blake3::hash(workdir.to_string_lossy().as_bytes()).to_hex();
        let outstanding: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let on_signal = Arc::clone(&outstanding);
        super::interrupt::set_cleanup(Box::new(move || {
            let jobs: Vec<String> = match on_signal.lock() {
                Ok(j) => j.iter().cloned().collect(),
                Err(p) => p.into_inner().iter().cloned().collect(),
            };
            if jobs.is_empty() {
                return;
            }
            match commands::scancel(&jobs) {
                Ok(()) => eprintln!("cancelled slurm jobs {}", jobs.join(" ")),
                Err(e) => eprintln!("warning: cancelling slurm jobs {}: {e}", jobs.join(" ")),
            }
        }));
        Ok(Slurm {
            exe,
            manifest: absolute(&manifest.path, "manifest")?,
            cwd: std::env::current_dir()
                .map_err(|e| PipelineError::Other(format!("current directory: {e}")))?,
            job_name: format!("fedp2eft-{}", &digest[..12]),
            workdir,
            opts,
            outstanding,
        })
    }

    fn resources(&self, w: &Wave<'_>, stage: &str) -> Resources {
        let spec = &w.manifest.stages[stage];
        let default = w
            .registry
            .get(&spec.kind)
            .map(|k| k.default_resources())
            .unwrap_or_default();
        default
            .overridden_by(&spec.resources)
            .overridden_by(&self.opts.resources)
    }

    /// Submits `tasks` (one stage) as one job or one array; sets their job ids.
    fn submit(&self, w: &Wave<'_>, tasks: &mut [&mut Task], records: &mut JobsFile) -> Outcome {
        let stage = tasks[0].stage.clone();
        let keys: Vec<String> = tasks.iter().map(|t| t.key.clone()).collect();
        let force = tasks[0].force;
        let dir = self.workdir.join("slurm");
        let (scripts, logs) = (dir.join("scripts"), dir.join("logs"));
        for d in [&scripts, &logs] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let script = scripts.join(format!("{stage}-{}.sh", &keys[0]));
        let text = JobScript {
            exe: &self.exe,
            manifest: &self.manifest,
            workdir: &self.workdir,
            keys: &keys,
            force,
        }
        .text();
        std::fs::write(&script, text).map_err(|e| format!("{}: {e}", script.display()))?;
        let array = keys.len() > 1;
        let mut args = vec![
            format!("--job-name={}", self.job_name),
            format!("--chdir={}", self.cwd.display()),
            format!(
                "--output={}",
                logs.join(if array { "%A_%a.out" } else { "%j.out" })
                    .display()
            ),
        ];
        if array {
            args.push(format!("--array=0-{}", keys.len() - 1));
        }
        if let Some(p) = &self.opts.partition {
            args.push(format!("--partition={p}"));
        }
        if let Some(a) = &self.opts.account {
            args.push(format!("--account={a}"));
        }
        args.extend(self.resources(w, &stage).sbatch_args());
        let id = commands::sbatch(&script, &args)?;
        let submitted = super::timefmt::now_rfc3339();
        for (i, t) in tasks.iter_mut().enumerate() {
            let job = if array {
                format!("{id}_{i}")
            } else {
                id.clone()
            };
            t.attempts += 1;
            t.gone_since = None;
            t.prior_done = start_of(w.store.read_meta(&t.key).ok());
            t.prior_failed = start_of(w.store.read_failed_meta(&t.key).ok());
            records.jobs.insert(
                t.key.clone(),
                JobRecord {
                    instance: t.id.clone(),
                    job: job.clone(),
                    state: "SUBMITTED".into(),
                    attempt: t.attempts,
                    submitted: submitted.clone(),
                    log: logs.join(format!("{job}.out")),
                },
            );
            self.outstanding
                .lock()
                .expect("outstanding lock")
                .insert(job.clone());
            t.job = Some(job);
        }
        Ok(())
    }

    /// The store's word on a task whose job left the queue: committed, failed, or nothing yet.
    fn outcome_of(&self, store: &Store, t: &Task) -> Option<Outcome> {
        // A forced instance is done only once its old entry has been replaced.
        let done = start_of(store.read_meta(&t.key).ok());
        if done.is_some() && (!t.force || done != t.prior_done) {
            return Some(Ok(()));
        }
        let failed = store.read_failed_meta(&t.key).ok();
        let failed_start = start_of(failed.clone());
        if failed_start.is_some() && failed_start != t.prior_failed {
            let e = failed
                .and_then(|m| m.error)
                .unwrap_or_else(|| "failed".into());
            return Some(Err(e));
        }
        None
    }

    /// Whether another live process (a duplicate job) holds the task's instance lock.
    fn held_elsewhere(&self, t: &Task, queue: &BTreeMap<String, String>) -> bool {
        read_holder(&key_lock_path(&self.workdir, &t.key)).is_some_and(|h| {
            holder_busy(
                &h,
                t.job.as_deref(),
                queue,
                &super::lock::hostname(),
                pid_alive,
            )
        })
    }

    /// Removes the instance lock a job of ours left behind (a killed job never drops it).
    fn clear_lock_of(&self, t: &Task) {
        let p = key_lock_path(&self.workdir, &t.key);
        if read_holder(&p).is_some_and(|h| h.job.is_some() && h.job == t.job) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Whether the instance lock's holder `h` is a live process other than our job `ours`: another
/// job still in the queue, or a jobless `exec-instance` (started by hand) alive on this host.
fn holder_busy(
    h: &LockInfo,
    ours: Option<&str>,
    queue: &BTreeMap<String, String>,
    this_host: &str,
    alive: impl Fn(u32) -> bool,
) -> bool {
    match &h.job {
        Some(j) => Some(j.as_str()) != ours && queue.contains_key(j),
        None => h.host == this_host && alive(h.pid),
    }
}

fn start_of(meta: Option<super::store::Meta>) -> Option<String> {
    meta.map(|m| format!("{} {} {}", m.start_time, m.host, m.pid))
}

struct Task {
    n: usize,
    key: String,
    id: String,
    stage: String,
    force: bool,
    attempts: u32,
    job: Option<String>,
    /// Store entries (start, host, pid) from before the current submission.
    prior_done: Option<String>,
    prior_failed: Option<String>,
    gone_since: Option<Instant>,
    started: Option<(Instant, StageProgress)>,
    finished: bool,
}

impl Backend for Slurm {
    fn run_wave(&self, w: &Wave<'_>) -> Vec<(usize, Outcome)> {
        let mut records = JobsFile::load(&self.workdir);
        let queue0 = commands::squeue(&self.job_name).unwrap_or_default();
        let mut tasks: Vec<Task> = w
            .runnable
            .iter()
            .map(|&n| {
                let inst = &w.plan.instances[n];
                let key = inst.key.clone().expect("runnable has key");
                Task {
                    n,
                    force: w.forced.contains(&inst.stage),
                    id: inst.id.clone(),
                    stage: inst.stage.clone(),
                    key,
                    attempts: 0,
                    job: None,
                    prior_done: None,
                    prior_failed: None,
                    gone_since: None,
                    started: None,
                    finished: false,
                }
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks.iter_mut() {
            if let Some(r) = records.jobs.get(&t.key) {
                if queue0.contains_key(&r.job) {
                    // A job of an earlier driver of this workdir is still queued or running.
                    w.reporter
                        .line(&format!("attach  {} (slurm job {})", t.id, r.job));
                    t.job = Some(r.job.clone());
                    t.attempts = r.attempt;
                    self.outstanding
                        .lock()
                        .expect("outstanding lock")
                        .insert(r.job.clone());
                    continue;
                }
            }
            if t.force {
                // `--force` means from scratch, once; retries resume from the checkpoint.
                if let Err(e) = w.store.discard_checkpoint(&t.key) {
                    t.finished = true;
                    results.push((t.n, Err(e.to_string())));
                }
            }
        }
        let mut stop = false;
        loop {
            if !stop {
                let busy = tasks
                    .iter()
                    .filter(|t| !t.finished && t.job.is_some())
                    .count();
                let mut capacity = self.opts.max_jobs.saturating_sub(busy);
                let mut by_stage: BTreeMap<String, Vec<&mut Task>> = BTreeMap::new();
                for t in tasks.iter_mut().filter(|t| !t.finished && t.job.is_none()) {
                    by_stage.entry(t.stage.clone()).or_default().push(t);
                }
                for (_, mut group) in by_stage {
                    while !group.is_empty() && capacity > 0 {
                        let take = group.len().min(capacity);
                        let mut chunk: Vec<&mut Task> = group.drain(..take).collect();
                        capacity -= take;
                        if let Err(e) = self.submit(w, &mut chunk, &mut records) {
                            for t in chunk {
                                t.finished = true;
                                w.reporter.line(&format!("       {}: {e}", t.id));
                                results.push((t.n, Err(e.clone())));
                            }
                            stop = !w.opts.keep_going;
                        }
                    }
                }
            }
            if let Err(e) = records.save(&self.workdir) {
                w.reporter.line(&format!(
                    "warning: {}: {e}",
                    jobs::path(&self.workdir).display()
                ));
            }
            if tasks
                .iter()
                .all(|t| t.finished || (stop && t.job.is_none()))
            {
                break;
            }
            std::thread::sleep(self.opts.poll);
            let queue = match commands::squeue(&self.job_name) {
                Ok(q) => q,
                Err(e) => {
                    // A busy controller answers later; the jobs are not lost meanwhile.
                    w.reporter.line(&format!("warning: {e}"));
                    continue;
                }
            };
            for t in tasks.iter_mut().filter(|t| !t.finished && t.job.is_some()) {
                let job = t.job.clone().expect("filtered");
                if let Some(state) = queue.get(&job) {
                    t.gone_since = None;
                    if let Some(r) = records.jobs.get_mut(&t.key) {
                        r.state = state.clone();
                    }
                    if state == "RUNNING" && t.started.is_none() {
                        w.running.lock().expect("running lock").insert(t.id.clone());
                        let p = w
                            .reporter
                            .instance_started(&format!("{} (slurm {job})", t.id));
                        t.started = Some((Instant::now(), p));
                    }
                    continue;
                }
                let outcome = match self.outcome_of(w.store, t) {
                    Some(o) => o,
                    None => {
                        let since = *t.gone_since.get_or_insert_with(Instant::now);
                        if since.elapsed() < self.opts.grace || self.held_elsewhere(t, &queue) {
                            continue;
                        }
                        let state = commands::final_state(&job)
                            .unwrap_or_else(|| "gone from the queue".into());
                        Err(format!("ended without committing ({state})"))
                    }
                };
                self.outstanding
                    .lock()
                    .expect("outstanding lock")
                    .remove(&job);
                if let Some(r) = records.jobs.get_mut(&t.key) {
                    r.state = "ENDED".into();
                }
                let log = self.workdir.join("slurm/logs").join(format!("{job}.out"));
                match outcome {
                    Err(e) if t.attempts <= self.opts.retries && !stop => {
                        w.reporter.line(&format!(
                            "retry   {} (slurm job {job}: {e}; attempt {} of {})",
                            t.id,
                            t.attempts + 1,
                            self.opts.retries + 1
                        ));
                        self.clear_lock_of(t);
                        t.job = None;
                    }
                    outcome => {
                        self.clear_lock_of(t);
                        t.finished = true;
                        w.running.lock().expect("running lock").remove(&t.id);
                        let (secs, progress) = match t.started.take() {
                            Some((t0, p)) => (t0.elapsed().as_secs_f64(), p),
                            None => (0.0, w.reporter.instance_started(&t.id)),
                        };
                        let outcome = outcome
                            .map_err(|e| format!("slurm job {job}: {e} (log {})", log.display()));
                        match &outcome {
                            Ok(()) => w.reporter.instance_finished(&t.id, "done", secs, progress),
                            Err(e) => {
                                w.reporter
                                    .instance_finished(&t.id, "FAILED", secs, progress);
                                w.reporter.line(&format!("       {}: {e}", t.id));
                                stop = stop || !w.opts.keep_going;
                            }
                        }
                        results.push((t.n, outcome));
                    }
                }
            }
        }
        if let Err(e) = records.save(&self.workdir) {
            w.reporter.line(&format!(
                "warning: {}: {e}",
                jobs::path(&self.workdir).display()
            ));
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(job: Option<&str>, host: &str) -> LockInfo {
        LockInfo {
            pid: 7,
            host: host.into(),
            since: String::new(),
            job: job.map(str::to_string),
        }
    }

    #[test]
    fn a_jobless_live_holder_on_this_host_is_busy() {
        let queue = BTreeMap::new();
        let h = holder(None, "n1");
        assert!(holder_busy(&h, Some("12"), &queue, "n1", |_| true));
        assert!(!holder_busy(&h, Some("12"), &queue, "n1", |_| false));
        assert!(!holder_busy(&h, Some("12"), &queue, "n2", |_| true));
    }

    #[test]
    fn a_job_holder_is_busy_only_if_it_is_another_queued_job() {
        let queue = BTreeMap::from([("13".to_string(), "RUNNING".to_string())]);
        assert!(holder_busy(
            &holder(Some("13"), "n1"),
            Some("12"),
            &queue,
            "n1",
            |_| true
        ));
        assert!(!holder_busy(
            &holder(Some("14"), "n1"),
            Some("12"),
            &queue,
            "n1",
            |_| true
        ));
        assert!(!holder_busy(
            &holder(Some("12"), "n1"),
            Some("12"),
            &queue,
            "n1",
            |_| true
        ));
    }
}
