//! The read-mostly commands: status, explain, dag, verify, clean. (`run` is the executor;
//! `export` lives in its own module.)

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::engine::error::{IoContext, Result};
use crate::engine::lock::WorkdirLock;
use crate::engine::manifest::Manifest;
use crate::engine::plan::{DigestCache, Plan, State};
use crate::engine::registry::Registry;
use crate::engine::store::Store;

#[derive(Debug, Clone, Serialize)]
pub struct InstanceStatus {
    pub stage: String,
    pub instance: String,
    /// done | stale | missing | failed | queued | running (a Slurm job, as its driver last saw it)
    pub state: String,
    pub key: Option<String>,
    pub reason: String,
}

pub fn status(manifest: &Manifest, registry: &Registry) -> Result<Vec<InstanceStatus>> {
    let store = Store::new(&manifest.workdir);
    let plan = Plan::build(manifest, registry, &store, &mut DigestCache::default())?;
    let jobs = crate::engine::slurm::jobs::JobsFile::load(&manifest.workdir);
    let mut out = Vec::with_capacity(plan.instances.len());
    for inst in &plan.instances {
        let previous = store.read_index(&inst.id);
        let job = inst
            .key
            .as_ref()
            .and_then(|k| jobs.jobs.get(k))
            .filter(|r| r.state != "ENDED" && inst.state != State::Done);
        let waiting_on = || {
            let names: BTreeSet<&str> = inst
                .deps
                .iter()
                .filter(|&&d| plan.instances[d].state != State::Done)
                .map(|&d| plan.instances[d].stage.as_str())
                .collect();
            names.into_iter().collect::<Vec<_>>().join(", ")
        };
        let (state, reason) = match inst.state {
            _ if job.is_some() => {
                let r = job.expect("checked");
                let what = if r.state == "RUNNING" {
                    "running"
                } else {
                    "queued"
                };
                (
                    what,
                    format!(
                        "slurm job {} {}, attempt {}, log {}",
                        r.job,
                        r.state,
                        r.attempt,
                        r.log.display()
                    ),
                )
            }
            State::Done => ("done", String::new()),
            State::Failed => {
                let key = inst.key.as_deref().expect("failed has key");
                let err = store
                    .read_failed_meta(key)
                    .ok()
                    .and_then(|m| m.error)
                    .unwrap_or_default();
                ("failed", err.lines().next().unwrap_or_default().to_string())
            }
            State::Ready => match (&previous, &inst.components) {
                (Some(prev), Some(now)) if Some(&prev.key) != inst.key.as_ref() => {
                    ("stale", now.diff(&prev.components).join("; "))
                }
                _ => ("missing", "never run".to_string()),
            },
            State::Waiting if inst.pending_expansion => (
                "missing",
                format!(
                    "instances are enumerated once upstream finishes ({})",
                    waiting_on()
                ),
            ),
            State::Waiting => {
                let what = if previous.is_some() {
                    "stale"
                } else {
                    "missing"
                };
                (what, format!("waits for upstream: {}", waiting_on()))
            }
        };
        out.push(InstanceStatus {
            stage: inst.stage.clone(),
            instance: inst.id.clone(),
            state: state.to_string(),
            key: inst.key.clone(),
            reason,
        });
    }
    Ok(out)
}

pub fn print_status(
    out: &mut impl std::io::Write,
    statuses: &[InstanceStatus],
    json: bool,
) -> std::io::Result<()> {
    if json {
        for s in statuses {
            writeln!(
                out,
                "{}",
                serde_json::to_string(s).expect("status serializes")
            )?;
        }
        return Ok(());
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in statuses {
        *counts.entry(s.state.as_str()).or_default() += 1;
        if s.reason.is_empty() {
            writeln!(out, "{:<8} {}", s.state, s.instance)?;
        } else {
            writeln!(out, "{:<8} {}  ({})", s.state, s.instance, s.reason)?;
        }
    }
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    writeln!(out, "{}", summary.join(", "))
}

/// Why each instance of `stage` has the key it has, against its last recorded run.
pub fn explain(manifest: &Manifest, registry: &Registry, stage: &str) -> Result<Vec<String>> {
    crate::engine::executor::check_stage_names(manifest, &[stage.to_string()])?;
    let store = Store::new(&manifest.workdir);
    let plan = Plan::build(manifest, registry, &store, &mut DigestCache::default())?;
    let mut lines = Vec::new();
    for inst in plan.instances.iter().filter(|i| i.stage == stage) {
        let prev = store.read_index(&inst.id);
        match (&inst.components, &inst.key) {
            (Some(now), Some(key)) => {
                lines.push(format!("{} key {key} ({:?})", inst.id, inst.state));
                match prev {
                    Some(p) if &p.key == key => lines.push("  unchanged since its last run".into()),
                    Some(p) => {
                        lines.push(format!("  last run had key {}; changed:", p.key));
                        for why in now.diff(&p.components) {
                            lines.push(format!("  - {why}"));
                        }
                    }
                    None => lines.push("  never run; key components:".into()),
                }
                lines.push(format!(
                    "  kind {} v{}, seed {}, device {}, params {}",
                    now.kind,
                    now.code_version,
                    now.seed,
                    now.device,
                    crate::engine::key::canonical_json(&now.params)
                ));
                for (up, refs) in &now.inputs {
                    for r in refs {
                        lines.push(format!(
                            "  input {up}: {} digest {}",
                            r.instance,
                            &r.digest[..16]
                        ));
                    }
                }
                for (f, d) in &now.external {
                    lines.push(format!("  data {f}: {}", &d[..16]));
                }
            }
            _ => {
                lines.push(format!(
                    "{}: key not computable yet (upstream not finished)",
                    inst.id
                ));
                if let Some(p) = prev {
                    lines.push(format!("  last run had key {}", p.key));
                }
            }
        }
    }
    Ok(lines)
}

pub fn dag(manifest: &Manifest, registry: &Registry, dot: bool) -> Result<String> {
    let store = Store::new(&manifest.workdir);
    let plan = Plan::build(manifest, registry, &store, &mut DigestCache::default())?;
    let mut counts: BTreeMap<String, (usize, usize, bool)> = BTreeMap::new();
    for i in &plan.instances {
        let e = counts.entry(i.stage.clone()).or_default();
        e.0 += 1;
        if i.state == State::Done {
            e.1 += 1;
        }
        e.2 |= i.pending_expansion;
    }
    let label = |s: &str| {
        let (n, d, p) = counts.get(s).copied().unwrap_or_default();
        if p {
            format!("{n}+ instances (expands later), {d} done")
        } else {
            format!("{n} instances, {d} done")
        }
    };
    if dot {
        let labels = manifest
            .stages
            .keys()
            .map(|s| (s.clone(), label(s)))
            .collect();
        return Ok(crate::engine::dag::to_dot(&manifest.stages, &labels));
    }
    let mut out = String::new();
    for stage in &plan.order {
        let spec = &manifest.stages[stage];
        let needs = if spec.needs.is_empty() {
            String::new()
        } else {
            format!(" <- {}", spec.needs.join(", "))
        };
        out.push_str(&format!(
            "{stage} ({}){needs}  [{}]\n",
            spec.kind,
            label(stage)
        ));
    }
    Ok(out)
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub checked: usize,
    pub corrupt: Vec<(String, Vec<String>)>,
}

/// Re-hashes every finished instance of the manifest; damaged ones are moved out of the store.
pub fn verify(manifest: &Manifest, registry: &Registry) -> Result<VerifyReport> {
    let store = Store::new(&manifest.workdir);
    let _lock = WorkdirLock::acquire(&manifest.workdir)?;
    let mut report = VerifyReport::default();
    // Entries whose meta.json is missing or unreadable cannot even be planned around: set them
    // aside first (named by the instance that now plans that key, when there is one).
    crate::engine::repair::tidy_scratch(&manifest.workdir)?;
    let set_aside = crate::engine::repair::set_aside_unsound_entries(&store)?;
    for (file, why) in crate::engine::repair::discard_bad_checkpoints(&store)? {
        report
            .corrupt
            .push((file.display().to_string(), vec![format!("{why} (deleted)")]));
    }
    if !set_aside.is_empty() {
        let plan = Plan::build(manifest, registry, &store, &mut DigestCache::default())?;
        for bad in set_aside {
            let id = plan
                .instances
                .iter()
                .find(|i| i.key.as_deref() == Some(bad.key.as_str()))
                .map(|i| i.id.clone())
                .unwrap_or_else(|| format!("store/{}", bad.key));
            report.checked += 1;
            report.corrupt.push((id, vec![bad.reason]));
        }
    }
    // Verify stage by stage: a damaged upstream changes what downstream keys would be, so
    // re-plan after each invalidation round until everything left is sound.
    let mut checked: BTreeSet<String> = BTreeSet::new();
    loop {
        let plan = Plan::build(manifest, registry, &store, &mut DigestCache::default())?;
        let mut damaged = false;
        for inst in plan.instances.iter().filter(|i| i.state == State::Done) {
            let key = inst.key.as_deref().expect("done has key");
            if !checked.insert(key.to_string()) {
                continue;
            }
            report.checked += 1;
            let problems = match store.verify(key) {
                Ok(p) => p,
                Err(e) => vec![e.to_string()],
            };
            if !problems.is_empty() {
                store.invalidate(key)?;
                report.corrupt.push((inst.id.clone(), problems));
                damaged = true;
            }
        }
        if !damaged {
            break;
        }
    }
    Ok(report)
}

/// Removes the manifest's workdir, or with `unreferenced` only store entries that no instance of
/// the current manifest uses (plus failed attempts, corrupt copies and leftover temp files).
pub fn clean(manifest: &Manifest, registry: &Registry, unreferenced: bool) -> Result<usize> {
    let wd = &manifest.workdir;
    if !wd.exists() {
        return Ok(0);
    }
    let lock = WorkdirLock::acquire(wd)?;
    let store = Store::new(wd);
    if !unreferenced {
        let mut n = 0;
        for entry in std::fs::read_dir(wd).at(wd)?.flatten() {
            if entry.file_name() == "lock" {
                continue;
            }
            let p = entry.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p).at(&p)?;
            } else {
                std::fs::remove_file(&p).at(&p)?;
            }
            n += 1;
        }
        drop(lock);
        let _ = std::fs::remove_dir(wd);
        return Ok(n);
    }
    let plan = Plan::build(manifest, registry, &store, &mut DigestCache::default())?;
    let referenced: BTreeSet<String> = plan
        .instances
        .iter()
        .filter_map(|i| i.key.clone())
        .collect();
    let mut removed = 0;
    for key in store.all_keys()? {
        if !referenced.contains(&key) {
            let p = store.instance_dir(&key);
            std::fs::remove_dir_all(&p).at(&p)?;
            removed += 1;
        }
    }
    for sub in ["failed", "corrupt", "tmp", "checkpoints"] {
        let dir = wd.join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let key = name.split('.').next().unwrap_or_default();
            if sub == "checkpoints" && referenced.contains(key) {
                continue; // an interrupted run's progress is still useful
            }
            let p = e.path();
            std::fs::remove_dir_all(&p).at(&p)?;
            removed += 1;
        }
    }
    Ok(removed)
}
