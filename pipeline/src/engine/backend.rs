//! Executor backends: what runs a wave of ready instances. The engine's loop (`executor`)
//! plans, picks the ready instances and hands them to a backend; `Local` runs them on `-j N`
//! threads of this process, `engine::slurm::Slurm` as cluster jobs. Every backend ends an
//! instance through `instance::execute`, so the store's bytes do not depend on the backend.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::instance::{execute, Outcome};
use super::interrupt::Running;
use super::manifest::Manifest;
use super::plan::Plan;
use super::progress::Reporter;
use super::registry::Registry;
use super::run_options::RunOptions;
use super::store::Store;

/// One wave: the ready instances (indices into `plan.instances`) and what running them needs.
#[derive(Clone, Copy)]
pub struct Wave<'a> {
    pub manifest: &'a Manifest,
    pub registry: &'a Registry,
    pub store: &'a Store,
    pub plan: &'a Plan,
    pub runnable: &'a [usize],
    /// Stages whose instances replace their cached entries (`--force`).
    pub forced: &'a BTreeSet<String>,
    pub opts: &'a RunOptions,
    pub reporter: &'a Reporter,
    /// Instance ids executing now, for the SIGINT/SIGTERM message.
    pub running: &'a Running,
}

pub trait Backend {
    /// Runs every instance of the wave to an outcome (or as many as it can before a failure
    /// stops it without `--keep-going`); returns one outcome per instance it ran.
    fn run_wave(&self, wave: &Wave<'_>) -> Vec<(usize, Outcome)>;
}

/// This process's threads: `-j N` instances at once.
pub struct Local;

impl Backend for Local {
    fn run_wave(&self, w: &Wave<'_>) -> Vec<(usize, Outcome)> {
        let Wave {
            manifest,
            registry,
            store,
            plan,
            runnable,
            forced,
            opts,
            reporter,
            running,
        } = *w;
        let queue = Mutex::new(runnable.iter().rev().copied().collect::<Vec<_>>());
        let results = Mutex::new(Vec::new());
        let stop = AtomicBool::new(false);
        let workers = opts.jobs.min(runnable.len()).max(1);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Some(n) = queue.lock().expect("queue lock").pop() else {
                        break;
                    };
                    let inst = &plan.instances[n];
                    running
                        .lock()
                        .expect("running lock")
                        .insert(inst.id.clone());
                    let progress = reporter.instance_started(&inst.id);
                    let t0 = Instant::now();
                    let replace = forced.contains(&inst.stage);
                    let outcome = execute(
                        manifest,
                        registry,
                        store,
                        plan,
                        n,
                        replace,
                        replace,
                        workers,
                        progress.clone(),
                    );
                    running.lock().expect("running lock").remove(&inst.id);
                    let secs = t0.elapsed().as_secs_f64();
                    match &outcome {
                        Ok(()) => reporter.instance_finished(&inst.id, "done", secs, progress),
                        Err(e) => {
                            reporter.instance_finished(&inst.id, "FAILED", secs, progress);
                            reporter.line(&format!("       {}: {e}", inst.id));
                            if !opts.keep_going {
                                stop.store(true, Ordering::SeqCst);
                            }
                        }
                    }
                    results.lock().expect("results lock").push((n, outcome));
                });
            }
        });
        results.into_inner().expect("results lock")
    }
}
