//! Runs a plan: waves of ready instances on `-j N` worker threads, each instance in its own
//! temporary directory that is committed to the store only when the stage succeeds.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::context::StageContext;
use super::error::{PipelineError, Result};
use super::lock::{hostname, WorkdirLock};
use super::manifest::Manifest;
use super::plan::{DigestCache, Plan, State};
use super::progress::Reporter;
use super::registry::Registry;
use super::store::{IndexEntry, Meta, Store};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub jobs: usize,
    pub keep_going: bool,
    /// `--stage`: run these stages and what they need (empty = all).
    pub stages: Vec<String>,
    /// Recompute the `--stage` stages (or everything) even if cached.
    pub force: bool,
    pub dry_run: bool,
    pub quiet: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: 1,
            keep_going: false,
            stages: Vec::new(),
            force: false,
            dry_run: false,
            quiet: true,
        }
    }
}

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
        let outcomes = run_wave(
            manifest, registry, &store, &plan, &runnable, &forced, opts, &reporter, &running,
        );
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

type Outcome = std::result::Result<(), String>;

#[allow(clippy::too_many_arguments)]
fn run_wave(
    manifest: &Manifest,
    registry: &Registry,
    store: &Store,
    plan: &Plan,
    runnable: &[usize],
    forced: &BTreeSet<String>,
    opts: &RunOptions,
    reporter: &Reporter,
    running: &super::interrupt::Running,
) -> Vec<(usize, Outcome)> {
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

/// Runs one instance to completion (committed) or failure (recorded); never panics.
#[allow(clippy::too_many_arguments)]
fn execute(
    manifest: &Manifest,
    registry: &Registry,
    store: &Store,
    plan: &Plan,
    n: usize,
    replace: bool,
    workers: usize,
    progress: super::progress::StageProgress,
) -> Outcome {
    let inst = &plan.instances[n];
    let key = inst.key.clone().expect("runnable has key");
    let comps = inst.components.clone().expect("runnable has components");
    let kind = registry.get(&inst.kind).expect("validated");
    if replace {
        // `--force` means from scratch: an interrupted attempt's progress is not reused.
        store.discard_checkpoint(&key).map_err(|e| e.to_string())?;
    }
    let attempt = store.new_attempt(&key).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(attempt.join("log.txt")).ok();
    if workers == 1 {
        reset_peak_rss();
    }
    let start_time = super::timefmt::now_rfc3339();
    let t0 = Instant::now();
    let mut ctx = StageContext {
        stage: inst.stage.clone(),
        kind: inst.kind.clone(),
        instance: inst.id.clone(),
        key: key.clone(),
        combo: inst.combo.clone(),
        params: inst.params.clone(),
        run_seed: inst.run_seed,
        device: comps.device.clone(),
        data_root: manifest.data_root.clone(),
        inputs: plan.inputs_of(n, store),
        out_dir: attempt.join("out"),
        checkpoint_dir: store.checkpoint_dir(&key),
        log,
        progress,
        resumed: false,
    };
    ctx.log(&format!("running {} ({}) key {key}", inst.id, inst.kind));
    let result = match catch_unwind(AssertUnwindSafe(|| kind.run(&mut ctx))) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(panic) => Err(format!(
            "stage panicked: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into())
        )),
    };
    if let Err(e) = &result {
        ctx.log(&format!("error: {e}"));
    }
    let resumed = ctx.resumed;
    drop(ctx);
    let mut meta = Meta {
        key: key.clone(),
        stage: inst.stage.clone(),
        instance: inst.id.clone(),
        components: comps.clone(),
        outputs: Default::default(),
        output_digest: String::new(),
        start_time,
        end_time: super::timefmt::now_rfc3339(),
        wall_seconds: t0.elapsed().as_secs_f64(),
        peak_rss_bytes: peak_rss_bytes(),
        host: hostname(),
        pid: std::process::id(),
        exit_status: if result.is_ok() { "ok" } else { "failed" }.into(),
        error: result.as_ref().err().cloned(),
        resumed,
    };
    match result {
        Ok(()) => {
            store
                .commit(&attempt, &mut meta, replace)
                .map_err(|e| e.to_string())?;
            store
                .write_index(&IndexEntry {
                    instance: inst.id.clone(),
                    key,
                    components: comps,
                })
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        Err(e) => {
            store
                .record_failure(&attempt, &meta)
                .map_err(|re| format!("{e} (and recording the failure failed: {re})"))?;
            Err(e)
        }
    }
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

/// Resets the kernel's peak-RSS counter so the next reading is this instance's own peak. First
/// hands the heap memory earlier instances freed back to the OS: glibc keeps it resident in its
/// arenas (FedL2P's worker threads' among them), and every later instance would report it.
fn reset_peak_rss() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
