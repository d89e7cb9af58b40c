//! `run --executor slurm` against a real single-node Slurm (`scripts/slurm-test-cluster.sh`):
//! the smoke manifest's store is byte-identical to the local executor's; a failing stage is
//! retried, then reported with its Slurm id and log; a job cancelled mid-stage is resubmitted
//! and resumes from its checkpoint; a wave of one stage is a job array; a driver killed with
//! `kill -9` is re-attached to its running jobs by the next `run`.
//!
//! The cluster is started by the first test that needs it. Where Slurm cannot be installed or
//! started (not root, no packages) these tests say so and pass, unless
//! `FEDP2EFT_SLURM_TESTS=1` — set by `.ci/run` — makes a missing cluster a failure.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::util::{Run, Sandbox};

/// `SLURM_CONF` of the running test cluster, or `None` when there is none and none is required.
fn cluster() -> Option<&'static str> {
    static CONF: OnceLock<Option<String>> = OnceLock::new();
    CONF.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slurm-test-cluster.sh");
        let out = Command::new(script).arg("start").output();
        let conf = match &out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("export SLURM_CONF="))
                .map(str::to_string),
            _ => None,
        };
        if conf.is_none() {
            let why = match &out {
                Ok(o) => String::from_utf8_lossy(&o.stderr).to_string(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var("FEDP2EFT_SLURM_TESTS").as_deref() != Ok("1"),
                "FEDP2EFT_SLURM_TESTS=1 but the Slurm test cluster did not start: {why}"
            );
            eprintln!("skipping the Slurm tests: no test cluster ({why})");
        }
        conf
    })
    .as_deref()
}

/// Flags for a quick driver on the test cluster: 2 CPUs, so jobs ask for 1 CPU each.
const FAST: [&str; 10] = [
    "--executor",
    "slurm",
    "--poll",
    "0.3",
    "--grace",
    "1",
    "--cpus",
    "1",
    "--mem",
    "500M",
];

/// The binary with `args` and the [`FAST`] driver flags, on the test cluster.
fn slurm_command(s: &Sandbox, conf: &str, args: &[&str]) -> Command {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(FAST);
    let mut c = s.command(&all);
    c.env("SLURM_CONF", conf);
    c
}

fn slurm_run(s: &Sandbox, conf: &str, args: &[&str]) -> Run {
    Run::from(
        slurm_command(s, conf, args)
            .output()
            .expect("spawn pipeline"),
    )
}

/// key → output digest of every finished instance.
fn digests(workdir: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(workdir.join("store")).unwrap().flatten() {
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.path().join("meta.json")).unwrap()).unwrap();
        m.insert(
            meta["key"].as_str().unwrap().to_string(),
            meta["output_digest"].as_str().unwrap().to_string(),
        );
    }
    m
}

/// The jobs file the driver keeps: key → record.
fn jobs(workdir: &Path) -> BTreeMap<String, serde_json::Value> {
    let Ok(bytes) = std::fs::read(workdir.join("slurm/jobs.json")) else {
        return BTreeMap::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["jobs"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const LONG: &str = r#"
name: long
seed: 11
workdir: WORKDIR
stages:
  src:
    kind: test/write
    params: {text: "a b"}
  long:
    kind: test/rounds
    needs: [src]
    matrix:
      seed: [0, 1, 2]
    params: {rounds: ROUNDS, sleep_ms: 100}
"#;

fn long(workdir: &str, rounds: u32) -> String {
    LONG.replace("WORKDIR", workdir)
        .replace("ROUNDS", &rounds.to_string())
}

#[test]
fn smoke_manifest_through_slurm_is_byte_identical_to_local() {
    let Some(conf) = cluster() else { return };
    let s = Sandbox::new();
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest = format!("{root}/manifests/smoke.yaml");
    let data = format!("{root}/tests/fixtures/data");
    let r = Run::from(
        slurm_command(&s, conf, &["run", &manifest, "--workdir", "slurm", "-q"])
            .env("FEDP2EFT_DATA", &data)
            .output()
            .unwrap(),
    );
    r.ok();
    assert!(r.summary().ends_with("0 cached, 0 failed"), "{r:#?}");
    let local = Run::from(
        s.command(&["run", &manifest, "--workdir", "local", "-j", "2", "-q"])
            .env("FEDP2EFT_DATA", &data)
            .output()
            .unwrap(),
    );
    local.ok();
    assert_eq!(
        s.artifacts("slurm"),
        s.artifacts("local"),
        "the Slurm store differs from the local one"
    );
    // Every instance ran in a job: each has a record with a Slurm id and a log saying so.
    let recorded = jobs(&s.path().join("slurm"));
    assert_eq!(recorded.len(), digests(&s.path().join("slurm")).len());
    for (key, r) in &recorded {
        let log = std::fs::read_to_string(r["log"].as_str().unwrap()).unwrap();
        assert!(log.contains(&format!("done {key}")), "{key}: {log}");
    }
}

#[test]
fn a_wave_of_one_stage_is_a_job_array_with_the_local_bytes() {
    let Some(conf) = cluster() else { return };
    let s = Sandbox::new();
    let m = s.write("m.yaml", &long("wd", 3));
    slurm_run(&s, conf, &["run", m.to_str().unwrap()]).ok();
    let recorded = jobs(&s.path().join("wd"));
    let array: Vec<&str> = recorded
        .values()
        .filter(|r| r["instance"].as_str().unwrap().starts_with("long["))
        .map(|r| r["job"].as_str().unwrap())
        .collect();
    assert_eq!(array.len(), 3);
    let ids: std::collections::BTreeSet<&str> =
        array.iter().map(|j| j.split('_').next().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one array job for the wave: {array:?}");
    let mut tasks: Vec<&str> = array.iter().map(|j| j.split('_').nth(1).unwrap()).collect();
    tasks.sort();
    assert_eq!(tasks, ["0", "1", "2"]);
    let lm = s.write("l.yaml", &long("local", 3));
    s.run(&["run", lm.to_str().unwrap()]).ok();
    assert_eq!(s.artifacts("wd"), s.artifacts("local"));
}

#[test]
fn a_failing_stage_is_retried_then_reported_with_its_job_and_log() {
    let Some(conf) = cluster() else { return };
    let s = Sandbox::new();
    let m = s.write(
        "m.yaml",
        "name: f\nseed: 1\nworkdir: wd\nstages:\n  bad:\n    kind: test/fail\n",
    );
    let r = slurm_run(&s, conf, &["run", m.to_str().unwrap(), "--retries", "1"]);
    assert_eq!(r.code, Some(1), "{r:#?}");
    assert!(r.stdout.contains("retry   bad"), "{r:#?}");
    let record = jobs(&s.path().join("wd"))
        .into_values()
        .next()
        .expect("a job record");
    assert_eq!(record["attempt"], 2);
    let job = record["job"].as_str().unwrap();
    let log = record["log"].as_str().unwrap();
    assert!(
        r.stderr.contains(&format!("slurm job {job}"))
            && r.stderr.contains("test/fail failed as asked")
            && r.stderr.contains(log),
        "{r:#?}"
    );
    assert!(std::fs::read_to_string(log)
        .unwrap()
        .contains("test/fail failed as asked"));
    assert!(!s.path().join("wd/store").exists() || digests(&s.path().join("wd")).is_empty());
}

#[test]
fn a_job_cancelled_mid_stage_resumes_from_its_checkpoint() {
    let Some(conf) = cluster() else { return };
    let s = Sandbox::new();
    let m = s.write("m.yaml", &long("wd", 40));
    let wd = s.path().join("wd");
    let driver = slurm_command(&s, conf, &["run", m.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Cancel the first array task once it has checkpointed a few rounds.
    let ckpt = || {
        std::fs::read_dir(wd.join("checkpoints"))
            .map(|d| d.flatten().any(|e| e.path().join("state.bin").exists()))
            .unwrap_or(false)
    };
    wait_for("a checkpoint", Duration::from_secs(120), ckpt);
    let (key, job) = jobs(&wd)
        .into_iter()
        .find(|(k, r)| {
            r["instance"].as_str().unwrap().starts_with("long[")
                && wd.join("checkpoints").join(k).join("state.bin").exists()
        })
        .map(|(k, r)| (k, r["job"].as_str().unwrap().to_string()))
        .expect("a checkpointed long instance");
    std::thread::sleep(Duration::from_millis(500));
    let st = Command::new("scancel")
        .arg(&job)
        .env("SLURM_CONF", conf)
        .status()
        .unwrap();
    assert!(st.success());
    let r = Run::from(driver.wait_with_output().unwrap());
    r.ok();
    assert!(r.stdout.contains("retry   long["), "{r:#?}");
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(wd.join("store").join(&key).join("meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["resumed"], true, "{meta}");
    let lm = s.write("l.yaml", &long("local", 40));
    s.run(&["run", lm.to_str().unwrap(), "-j", "3"]).ok();
    assert_eq!(s.artifacts("wd"), s.artifacts("local"));
}

#[test]
fn a_driver_killed_with_kill_9_is_reattached_without_duplicate_jobs() {
    let Some(conf) = cluster() else { return };
    let s = Sandbox::new();
    let m = s.write("m.yaml", &long("wd", 30));
    let wd = s.path().join("wd");
    let mut driver = slurm_command(&s, conf, &["run", m.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the long jobs", Duration::from_secs(120), || {
        jobs(&wd)
            .values()
            .filter(|r| r["instance"].as_str().unwrap().starts_with("long["))
            .count()
            == 3
    });
    driver.kill().unwrap(); // SIGKILL: no cleanup, the jobs keep running
    driver.wait().unwrap();
    let before: BTreeMap<String, String> = jobs(&wd)
        .into_iter()
        .map(|(k, r)| (k, r["job"].as_str().unwrap().to_string()))
        .collect();
    let r = slurm_run(&s, conf, &["run", m.to_str().unwrap()]);
    r.ok();
    let after: BTreeMap<String, String> = jobs(&wd)
        .into_iter()
        .map(|(k, r)| (k, r["job"].as_str().unwrap().to_string()))
        .collect();
    // Jobs still queued or running were attached, not resubmitted; a job that finished while
    // no driver watched is simply cached.
    assert_eq!(before, after, "{r:#?}");
    assert!(
        r.stdout.contains("attach  long[") || r.summary().contains("3 cached"),
        "{r:#?}"
    );
    let lm = s.write("l.yaml", &long("local", 30));
    s.run(&["run", lm.to_str().unwrap(), "-j", "3"]).ok();
    assert_eq!(s.artifacts("wd"), s.artifacts("local"));
}
