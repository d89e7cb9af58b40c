//! Helpers for driving the real `pipeline` binary in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The data root and first two stages shared by the FL manifests of these tests: MasakhaNEWS
/// eng + lin with two clients each (fixture data, `DATA` replaced by the test), and one FedAvg
/// round of a tiny BERT. A literal, for `concat!` after a manifest's `name`/`seed`/`workdir`.
macro_rules! news_fedavg_stages {
    () => {
        r#"data_root: DATA
stages:
  part:
    kind: partition/masakhanews
    params:
      languages: [eng, lin]
      clients_per_language: 2
      max_train_rows_per_language: 40
      max_test_rows_per_language: 20
  fedavg:
    kind: base/fedavg
    needs: [part]
    params:
      model: {tiny: {hidden: 16, layers: 1, heads: 2, intermediate: 32, vocab_size: 120, seed: 1}}
      rounds: 1
      fraction: 0.5
      batch_size: 8
      max_len: 32
"#
    };
}
pub(crate) use news_fedavg_stages;

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pipeline")
}

impl Sandbox {
    pub fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A command for the binary, run inside the sandbox with the test kinds enabled.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .current_dir(self.path())
            .env("PIPELINE_TEST_KINDS", "1")
            .env_remove("FEDP2EFT_DATA");
        c
    }

    /// The resumption check: runs `manifest(workdir)` once cleanly, then for each percentage
    /// starts a fresh run, kills it with SIGKILL (no destructor, no cleanup) after that share
    /// of the clean run's wall time and runs it again to the end. The artifacts `keep` selects
    /// must be byte-identical to the clean run's each time, and at least one trial must have
    /// resumed from a checkpoint. Returns the clean run's selected artifacts.
    pub fn assert_resumes_bit_identical(
        &self,
        manifest: impl Fn(&str) -> String,
        keep: impl Fn(&str) -> bool,
        percentages: &[u64],
    ) -> Vec<(String, Vec<u8>)> {
        let selected = |wd: &str| -> Vec<(String, Vec<u8>)> {
            self.artifacts(wd)
                .into_iter()
                .filter(|(k, _)| keep(k))
                .collect()
        };
        self.write("clean.yaml", &manifest("clean"));
        let t0 = std::time::Instant::now();
        self.run(&["run", "clean.yaml"]).ok();
        let clean_ms = t0.elapsed().as_millis() as u64;
        let reference = selected("clean");
        let mut resumed_any = false;
        // The timed trials, then — if load skewed the clock so none of them resumed — one
        // killed as soon as a checkpoint exists (`None`), which must resume.
        let timed = percentages.iter().map(|&p| Some(p));
        for (trial, pct) in timed.chain([None]).enumerate() {
            if pct.is_none() && resumed_any {
                break;
            }
            let wd = format!("t{trial}");
            let yaml = format!("{wd}.yaml");
            self.write(&yaml, &manifest(&wd));
            let mut child = self
                .command(&["run", &yaml, "-q"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            match pct {
                Some(pct) => {
                    std::thread::sleep(std::time::Duration::from_millis(clean_ms * pct / 100))
                }
                None => self.wait_for_checkpoint(&wd, &mut child),
            }
            unsafe { libc::kill(child.id() as i32, 9) };
            let _ = child.wait();
            self.run(&["run", &yaml]).ok();
            assert_eq!(
                selected(&wd),
                reference,
                "trial {trial} ({pct:?}% of a clean run)"
            );
            resumed_any |= std::fs::read_dir(self.path().join(&wd).join("store"))
                .unwrap()
                .flatten()
                .any(|e| {
                    std::fs::read_to_string(e.path().join("meta.json"))
                        .is_ok_and(|m| m.contains("\"resumed\": true"))
                });
        }
        assert!(resumed_any, "no trial resumed from a checkpoint");
        reference
    }

    /// Polls `wd/checkpoints/` until a `state.bin` exists or `child` exits.
    fn wait_for_checkpoint(&self, wd: &str, child: &mut std::process::Child) {
        let dir = self.path().join(wd).join("checkpoints");
        loop {
            let written = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.path().join("state.bin").exists());
            if written || child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().expect("spawn pipeline");
        Run::from(out)
    }

    /// `store/` of a workdir: key → (relative path → bytes) of every artifact under `out/`.
    pub fn artifacts(&self, workdir: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut map = std::collections::BTreeMap::new();
        let store = self.path().join(workdir).join("store");
        let Ok(entries) = std::fs::read_dir(&store) else {
            return map;
        };
        for e in entries.flatten() {
            let key = e.file_name().to_string_lossy().to_string();
            collect(&e.path().join("out"), &e.path().join("out"), &key, &mut map);
        }
        map
    }
}

fn collect(
    root: &Path,
    dir: &Path,
    key: &str,
    map: &mut std::collections::BTreeMap<String, Vec<u8>>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(root, &p, key, map);
        } else {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            map.insert(format!("{key}/{rel}"), std::fs::read(&p).unwrap());
        }
    }
}

#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).to_string(),
            stderr: String::from_utf8_lossy(&o.stderr).to_string(),
        }
    }
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "expected success:\n{self:#?}");
        self
    }

    /// The run's closing summary line.
    pub fn summary(&self) -> &str {
        self.stdout
            .lines()
            .rev()
            .find(|l| l.contains(" executed, "))
            .unwrap_or_else(|| panic!("no summary line:\n{self:#?}"))
    }
}
