//! One instance, start to finish, on whichever backend runs it: a fresh attempt directory, the
//! kind's `run`, then an atomic commit into the store or a recorded failure. The local thread
//! pool calls it in-process; a Slurm job calls it through `pipeline exec-instance`
//! (`engine::exec_instance`), so both backends write the same bytes.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use super::context::StageContext;
use super::lock::hostname;
use super::manifest::Manifest;
use super::plan::Plan;
use super::progress::StageProgress;
use super::registry::Registry;
use super::store::{IndexEntry, Meta, Store};

/// How an instance ended: committed, or the error it failed with.
pub type Outcome = std::result::Result<(), String>;

/// Runs one instance to completion (committed) or failure (recorded); never panics. `replace`
/// swaps out an existing store entry (`--force`); `fresh` discards its checkpoint first.
#[allow(clippy::too_many_arguments)]
pub fn execute(
    manifest: &Manifest,
    registry: &Registry,
    store: &Store,
    plan: &Plan,
    n: usize,
    replace: bool,
    fresh: bool,
    workers: usize,
    progress: StageProgress,
) -> Outcome {
    let inst = &plan.instances[n];
    let key = inst.key.clone().expect("runnable has key");
    let comps = inst.components.clone().expect("runnable has components");
    let kind = registry.get(&inst.kind).expect("validated");
    if fresh {
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

/// Resets the kernel's peak-RSS counter so the next reading is this instance's own peak. First
/// hands the heap memory earlier instances freed back to the OS: glibc keeps it resident in its
/// arenas (FedL2P's worker threads' among them), and every later instance would report it.
pub fn reset_peak_rss() {
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
