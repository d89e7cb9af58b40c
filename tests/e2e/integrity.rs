//! The state a run trusts without re-deriving it — checkpoints, `meta.json`, the scratch
//! directories — damaged by hand: each case is detected and repaired, never resumed from or
//! stuck on.

use std::path::PathBuf;

use crate::util::Sandbox;

/// A checkpointed stage between two cheap ones.
const LONG: &str = r#"
name: integrity
seed: 5
workdir: wd
stages:
  src:
    kind: test/write
    params: {text: src}
  long:
    kind: test/rounds
    needs: [src]
    params: {rounds: 6, width: 4}
  tail:
    kind: test/write
    needs: [long]
    params: {text: t}
"#;

fn key_of(s: &Sandbox, instance: &str) -> String {
    let st = s.run(&["status", "m.yaml", "--json"]);
    st.ok();
    st.stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["instance"] == instance)
        .and_then(|l| l["key"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no key for {instance}: {}", st.stdout))
}

fn checkpoint_file(s: &Sandbox, key: &str) -> PathBuf {
    let p = s.path().join("wd/checkpoints").join(key).join("state.bin");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    p
}

/// A well-formed but wrong state (what a bit flip inside an unguarded state looks like): the
/// run must not resume from it.
const FORGED_STATE: &str = r#"{"next_round":5,"rng_seed":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"rng_word_pos":0,"acc_bits":[0,0,0,0],"log":["0,1"]}"#;

#[test]
fn a_damaged_checkpoint_is_discarded_with_a_warning_and_the_stage_restarts() {
    let s = Sandbox::new();
    s.write("m.yaml", LONG);
    s.run(&["run", "m.yaml"]).ok();
    let reference = s.artifacts("wd");
    let key = key_of(&s, "long");
    std::fs::remove_dir_all(s.path().join("wd/store").join(&key)).unwrap();
    let ckpt = checkpoint_file(&s, &key);
    std::fs::write(&ckpt, FORGED_STATE).unwrap();
    let r = s.run(&["run", "m.yaml"]);
    r.ok();
    assert!(
        r.stderr.contains("discarding checkpoint") && r.stderr.contains(&key),
        "{r:#?}"
    );
    assert_eq!(s.artifacts("wd"), reference, "resumed from a forged state");
    let meta =
        std::fs::read_to_string(s.path().join("wd/store").join(&key).join("meta.json")).unwrap();
    assert!(meta.contains("\"resumed\": false"), "{meta}");
}

#[test]
fn force_discards_checkpoints_even_damaged_ones() {
    let s = Sandbox::new();
    s.write("m.yaml", LONG);
    s.run(&["run", "m.yaml"]).ok();
    let reference = s.artifacts("wd");
    let key = key_of(&s, "long");
    std::fs::write(checkpoint_file(&s, &key), b"FP2ECKPT\xff\xff").unwrap();
    let r = s.run(&["run", "m.yaml", "--stage", "long", "--force"]);
    r.ok();
    assert_eq!(s.artifacts("wd"), reference);
    assert!(!s.path().join("wd/checkpoints").join(&key).exists());
}

#[test]
fn verify_reports_a_damaged_checkpoint() {
    let s = Sandbox::new();
    s.write("m.yaml", LONG);
    s.run(&["run", "m.yaml"]).ok();
    let key = key_of(&s, "long");
    let ckpt = checkpoint_file(&s, &key);
    std::fs::write(&ckpt, FORGED_STATE).unwrap();
    let v = s.run(&["verify", "m.yaml"]);
    assert_eq!(v.code, Some(1), "{v:#?}");
    assert!(v.stdout.contains("state.bin"), "{}", v.stdout);
    assert!(!ckpt.exists());
}

#[test]
fn a_deleted_meta_json_is_detected_and_the_instance_recomputed() {
    let s = Sandbox::new();
    s.write("m.yaml", LONG);
    s.run(&["run", "m.yaml"]).ok();
    let reference = s.artifacts("wd");
    let key = key_of(&s, "src");
    let meta = s.path().join("wd/store").join(&key).join("meta.json");
    std::fs::remove_file(&meta).unwrap();
    let r = s.run(&["run", "m.yaml"]);
    r.ok();
    assert!(r.stderr.contains("meta.json is missing"), "{r:#?}");
    // src recomputes to the same bytes, so its dependents keep their keys.
    assert_eq!(r.summary(), "1 executed, 2 cached, 0 failed");
    assert!(meta.is_file());
    assert_eq!(s.artifacts("wd"), reference);
    s.run(&["verify", "m.yaml"]).ok();
}

#[test]
fn a_corrupt_meta_json_is_found_by_verify_and_by_run() {
    let s = Sandbox::new();
    s.write("m.yaml", LONG);
    s.run(&["run", "m.yaml"]).ok();
    let reference = s.artifacts("wd");
    let key = key_of(&s, "long");
    let meta = s.path().join("wd/store").join(&key).join("meta.json");
    std::fs::write(&meta, "{\"key\": tru").unwrap();
    let v = s.run(&["verify", "m.yaml"]);
    assert_eq!(v.code, Some(1), "{v:#?}");
    assert!(v.stdout.contains("corrupt long"), "{}", v.stdout);
    let r = s.run(&["run", "m.yaml"]);
    r.ok();
    assert_eq!(r.summary(), "1 executed, 2 cached, 0 failed");
    assert_eq!(s.artifacts("wd"), reference);

    // The same damage met by `run` directly.
    std::fs::write(&meta, "not json").unwrap();
    let r = s.run(&["run", "m.yaml"]);
    r.ok();
    assert!(r.stderr.contains("set aside in corrupt/"), "{r:#?}");
    assert_eq!(s.artifacts("wd"), reference);
    s.run(&["verify", "m.yaml"]).ok();
}

#[test]
fn junk_in_tmp_and_index_is_cleaned() {
    let s = Sandbox::new();
    s.write("m.yaml", LONG);
    s.run(&["run", "m.yaml"]).ok();
    let reference = s.artifacts("wd");
    s.write("wd/tmp/stray-file", "junk");
    s.write("wd/index/notes.txt", "junk");
    std::fs::create_dir_all(s.path().join("wd/index/a-dir")).unwrap();
    let key = key_of(&s, "tail");
    std::fs::remove_dir_all(s.path().join("wd/store").join(&key)).unwrap();
    let r = s.run(&["run", "m.yaml"]);
    r.ok();
    assert_eq!(s.artifacts("wd"), reference);
    assert!(!s.path().join("wd/tmp/stray-file").exists());
    assert!(!s.path().join("wd/index/a-dir").exists());
    s.run(&["status", "m.yaml"]).ok();
}

/// SIGTERM and SIGINT mid-stage: the run says what it interrupted and that a rerun resumes,
/// releases the lock and exits 128 + signal; the rerun continues from the checkpoint.
#[test]
fn sigterm_and_sigint_are_reported_release_the_lock_and_resume() {
    use std::io::BufRead;
    let s = Sandbox::new();
    for (signal, name, code) in [
        (libc::SIGTERM, "SIGTERM", 143),
        (libc::SIGINT, "SIGINT", 130),
    ] {
        let wd = format!("wd-{name}");
        let yaml = format!("{name}.yaml");
        s.write(
            &yaml,
            &format!("name: x\nseed: 1\nworkdir: {wd}\nstages:\n  slow:\n    kind: test/rounds\n    params: {{rounds: 40, sleep_ms: 50}}\n"),
        );
        let mut child = s
            .command(&["run", &yaml])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("start  slow"), "{line}");
        let checkpoints = s.path().join(&wd).join("checkpoints");
        let t0 = std::time::Instant::now();
        while std::fs::read_dir(&checkpoints).map_or(true, |d| d.count() == 0) {
            assert!(t0.elapsed().as_secs() < 20, "no checkpoint was written");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("{name}: run stopped; interrupted slow."))
                && stderr.contains("again resumes the interrupted ones"),
            "{stderr}"
        );
        assert!(
            !s.path().join(&wd).join("lock").exists(),
            "{name}: lock kept"
        );
        s.run(&["run", &yaml]).ok();
        let resumed = std::fs::read_dir(s.path().join(&wd).join("store"))
            .unwrap()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path().join("meta.json"))
                    .is_ok_and(|m| m.contains("\"resumed\": true"))
            });
        assert!(
            resumed,
            "{name}: the rerun did not resume from the checkpoint"
        );
    }
}
