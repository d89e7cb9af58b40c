//! Runs a plan: waves of ready instances handed to an executor backend (`backend::Local`'s
//! `-j N` threads or `slurm::Slurm`'s cluster jobs), each instance in its own temporary
//! directory that is committed to the store only when the stage succeeds.

use std::collections::BTreeSet;

use super::backend::{Backend, Local, Wave};
use super::error::{PipelineError, Result};
use super::lock::WorkdirLock;
use super::manifest::Manifest;
use super::plan::{DigestCache, Plan, State};
use super::progress::Reporter;
use super::registry::Registry;
pub use super::run_options::{Executor, RunOptions};
use super::slurm::Slurm;
use super::store::Store;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub executed: usize,
    pub cached: usize,
    pub failed: usize,
    /// Selected instances that could not run because something upstream failed.
    pub blocked: usize,
    /// Instance ids executed, in completion order.
    pub executed_ids: Vec<String>,
    pub failures: Vec<(String, String)>,
}

impl RunSummary {
    pub fn line(&self) -> String {
        format!(
            "{} executed, {} cached, {} failed",
            self.executed, self.cached, self.failed
        )
    }
}

/// Checks `--stage` names against the manifest.
pub fn check_stage_names(manifest: &Manifest, stages: &[String]) -> Result<()> {
    for s in stages {
        if !manifest.stages.contains_key(s) {
            return Err(PipelineError::Usage(format!(
                "--stage {s}: no such stage in {} (stages: {})",
                manifest.path.display(),
                manifest
                    .stages
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

pub fn run(manifest: &Manifest, registry: &Registry, opts: &RunOptions) -> Result<RunSummary> {
    check_stage_names(manifest, &opts.stages)?;
    if opts.jobs == 0 {
        return Err(PipelineError::Usage("-j must be at least 1".into()));
    }
    let targets: Vec<String> = if opts.stages.is_empty() {
        manifest.stages.keys().cloned().collect()
    } else {
        opts.stages.clone()
    };
    let selected = Plan::closure(manifest, &targets);
    let forced: BTreeSet<String> = if !opts.force {
        BTreeSet::new()
    } else if opts.stages.is_empty() {
        selected.clone()
    } else {
        opts.stages.iter().cloned().collect()
    };
    let store = Store::new(&manifest.workdir);
    let mut cache = DigestCache::default();

    if opts.dry_run {
        let plan = Plan::build(manifest, registry, &store, &mut cache)?;
        super::preflight::check(manifest, registry, &plan, &selected, &forced)?;
        // A closed stdout (`--dry-run | head`) only cuts the listing short.
        let _ = print_dry_run(&mut std::io::stdout().lock(), &plan, &selected, &forced);
        return Ok(RunSummary::default());
    }

    // Inputs are checked before the lock is taken, so a refused run writes nothing. A store that
    // needs repair (done under the lock, below) may not plan yet; it is checked after the repair.
    let planned = Plan::build(manifest, registry, &store, &mut cache).ok();
    if let Some(plan) = &planned {
        super::preflight::check(manifest, registry, plan, &selected, &forced)?;
    }
    let lock = WorkdirLock::acquire(&manifest.workdir)?;
    let running = super::interrupt::Running::default();
    let _interrupt = super::interrupt::install(lock.path().to_path_buf(), running.clone())
        .map_err(|e| PipelineError::Other(format!("cannot watch for SIGINT/SIGTERM: {e}")))?;
    super::repair::tidy_scratch(&manifest.workdir)?;
    store.clean_stale_attempts()?;
    for bad in super::repair::set_aside_unsound_entries(&store)? {
        eprintln!(
            "warning: store entry {} set aside in corrupt/ ({}); it is recomputed",
            bad.key, bad.reason
        );
    }

    if planned.is_none() {
        let plan = Plan::build(manifest, registry, &store, &mut cache)?;
        super::preflight::check(manifest, registry, &plan, &selected, &forced)?;
    }

    let backend: Box<dyn Backend> = match &opts.executor {
        Executor::Local => Box::new(Local),
        Executor::Slurm(o) => Box::new(Slurm::new(manifest, o.clone())?),
    };
    let mut summary = RunSummary::default();
    let mut attempted: BTreeSet<String> = BTreeSet::new();
    let reporter = Reporter::new(0, opts.quiet);
    loop {
        let plan = Plan::build(manifest, registry, &store, &mut cache)?;
        let todo_total = plan
            .instances
            .iter()
            .filter(|i| selected.contains(&i.stage))
            .count() as u64;
        reporter.set_total(todo_total);
        let runnable: Vec<usize> = plan
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| selected.contains(&i.stage) && !i.pending_expansion)
            .filter(|(_, i)| {
                let key = match &i.key {
                    Some(k) => k,
                    None => return false,
                };
                if attempted.contains(key) {
                    return false;
                }
                match i.state {
                    State::Ready | State::Failed => true,
                    State::Done => forced.contains(&i.stage),
                    State::Waiting => false,
                }
            })
            .map(|(n, _)| n)
            .collect();
        if runnable.is_empty() {
            break;
        }
        for &n in &runnable {
            attempted.insert(plan.instances[n].key.clone().expect("runnable has key"));
        }
        let outcomes = backend.run_wave(&Wave {
            manifest,
            registry,
            store: &store,
            plan: &plan,
            runnable: &runnable,
            forced: &forced,
            opts,
            reporter: &reporter,
            running: &running,
        });
        let mut wave_failed = false;
        for (n, outcome) in outcomes {
            let id = plan.instances[n].id.clone();
            match outcome {
                Ok(()) => {
                    summary.executed += 1;
                    summary.executed_ids.push(id);
                }
                Err(e) => {
                    summary.failed += 1;
                    summary.failures.push((id, e));
                    wave_failed = true;
                }
            }
        }
        if wave_failed && !opts.keep_going {
            break;
        }
    }
    reporter.finish();

    let plan = Plan::build(manifest, registry, &store, &mut cache)?;
    let executed: BTreeSet<&String> = summary.executed_ids.iter().collect();
    for inst in plan
        .instances
        .iter()
        .filter(|i| selected.contains(&i.stage))
    {
        match inst.state {
            State::Done if !executed.contains(&inst.id) => summary.cached += 1,
            State::Done | State::Failed => {}
            State::Ready | State::Waiting => summary.blocked += 1,
        }
    }
    Ok(summary)
}

fn print_dry_run(
    out: &mut impl std::io::Write,
    plan: &Plan,
    selected: &BTreeSet<String>,
    forced: &BTreeSet<String>,
) -> std::io::Result<()> {
    let (mut run, mut cached, mut later) = (0, 0, 0);
    for inst in plan
        .instances
        .iter()
        .filter(|i| selected.contains(&i.stage))
    {
        let what = match inst.state {
            State::Done if forced.contains(&inst.stage) => {
                run += 1;
                "would rerun (forced)"
            }
            State::Done => {
                cached += 1;
                "cached"
            }
            State::Ready | State::Failed => {
                run += 1;
                "would run"
            }
            State::Waiting => {
                later += 1;
                "would run after its inputs"
            }
        };
        writeln!(out, "{what:<26} {}", inst.id)?;
    }
    writeln!(
        out,
        "dry run: {run} to run now, {later} after their inputs, {cached} cached"
    )
}
