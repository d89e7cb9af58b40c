//! `pipeline bench executor`: the executor's own overhead, measured against the cost of the
//! durable write it must do anyway (write + fsync + rename of a small file), on this machine in
//! this run.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::engine::context::StageContext;
use crate::engine::error::{IoContext, Result};
use crate::engine::executor::{run, RunOptions};
use crate::engine::manifest::Manifest;
use crate::engine::registry::{ParamError, Registry, StageError, StageKind};

/// A stage that writes one small file: what remains is pure executor overhead.
struct Noop;
impl StageKind for Noop {
    fn name(&self) -> &'static str {
        "bench/noop"
    }
    fn version(&self) -> u32 {
        1
    }
    fn describe(&self) -> &'static str {
        "benchmark kind: writes one small file"
    }
    fn validate(&self, _params: &Value) -> Result<(), ParamError> {
        Ok(())
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        std::fs::write(ctx.out_dir().join("v.txt"), ctx.instance())?;
        Ok(())
    }
}

#[derive(Debug)]
pub struct ExecutorBench {
    pub instances: usize,
    pub run_seconds: f64,
    pub per_instance_ms: f64,
    pub baseline_write_ms: f64,
    pub cached_run_seconds: f64,
    pub status_instances: usize,
    pub status_seconds: f64,
}

impl std::fmt::Display for ExecutorBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "executor benchmark ({} no-op instances, -j 1)",
            self.instances
        )?;
        writeln!(
            f,
            "  run:    {:.2} s total, {:.3} ms per instance (goal < 5 ms)",
            self.run_seconds, self.per_instance_ms
        )?;
        writeln!(
            f,
            "  baseline durable write (write+fsync+rename+dir fsync): {:.3} ms; overhead ratio {:.2}x",
            self.baseline_write_ms,
            self.per_instance_ms / self.baseline_write_ms
        )?;
        writeln!(f, "  rerun (all cached): {:.3} s", self.cached_run_seconds)?;
        write!(
            f,
            "  status on {} cached instances: {:.3} s (goal < 1 s)",
            self.status_instances, self.status_seconds
        )
    }
}

fn manifest_text(n: usize) -> String {
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        "name: bench\nseed: 1\nstages:\n  noop:\n    kind: bench/noop\n    matrix:\n      i: [{}]\n",
        items.join(", ")
    )
}

pub fn executor(instances: usize, status_instances: usize) -> Result<ExecutorBench> {
    let dir = std::env::temp_dir().join(format!("pipeline-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).at(&dir)?;
    let mut registry = Registry::new();
    registry.register(Arc::new(Noop));
    let opts = RunOptions::default();

    // Baseline: the durable write every instance needs at minimum, timed just before and just
    // after the run; fsync latency on a shared disk drifts, so the lower of the two is used.
    let base_dir = dir.join("baseline");
    std::fs::create_dir_all(&base_dir).at(&base_dir)?;
    let durable_write_ms = || -> Result<f64> {
        let reps = 100;
        let t = Instant::now();
        for i in 0..reps {
            crate::engine::store::write_bytes_synced(&base_dir.join(format!("{i}.txt")), b"noop")?;
        }
        Ok(t.elapsed().as_secs_f64() * 1e3 / reps as f64)
    };
    let baseline_before = durable_write_ms()?;

    let load = |n: usize, wd: &str| -> Result<Manifest> {
        let path = dir.join(format!("{wd}.yaml"));
        std::fs::write(&path, manifest_text(n)).at(&path)?;
        Manifest::load(&path, &registry, Some(&dir.join(wd)))
    };
    let m = load(instances, "run")?;
    let t = Instant::now();
    let s = run(&m, &registry, &opts)?;
    let run_seconds = t.elapsed().as_secs_f64();
    let baseline_write_ms = baseline_before.min(durable_write_ms()?);
    assert_eq!(s.executed, instances, "bench instances all run");
    let t = Instant::now();
    run(&m, &registry, &opts)?;
    let cached_run_seconds = t.elapsed().as_secs_f64();

    let big = if status_instances == instances {
        m
    } else {
        let big = load(status_instances, "status")?;
        run(&big, &registry, &opts)?;
        big
    };
    let t = Instant::now();
    let statuses = crate::cli::commands::status(&big, &registry)?;
    let status_seconds = t.elapsed().as_secs_f64();
    assert!(statuses.iter().all(|s| s.state == "done"));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExecutorBench {
        instances,
        run_seconds,
        per_instance_ms: run_seconds * 1e3 / instances as f64,
        baseline_write_ms,
        cached_run_seconds,
        status_instances,
        status_seconds,
    })
}
