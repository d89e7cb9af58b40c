use std::time::Duration;

use crate::util::Sandbox;

const CHAIN: &str = r#"
name: chain
seed: 7
workdir: wd
stages:
  a:
    kind: test/write
    params: {text: alpha}
  b:
    kind: test/write
    needs: [a]
    matrix:
      seed: [1, 2]
    params: {text: beta}
  c:
    kind: test/write
    needs: [b]
    params: {text: gamma}
  side:
    kind: test/write
    params: {text: side}
"#;

#[test]
fn rerun_is_a_no_op_and_status_reports_done() {
    let s = Sandbox::new();
    s.write("m.yaml", CHAIN);
    let r = s.run(&["run", "m.yaml"]);
    r.ok();
    assert_eq!(r.summary(), "5 executed, 0 cached, 0 failed");
    let st = s.run(&["status", "m.yaml", "--json"]);
    st.ok();
    let lines: Vec<serde_json::Value> = st
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for l in &lines {
        assert_eq!(l["state"], "done", "{l}");
        for field in ["stage", "instance", "key", "reason"] {
            assert!(l.get(field).is_some(), "missing {field} in {l}");
        }
    }
    let again = s.run(&["run", "m.yaml"]);
    again.ok();
    assert_eq!(again.summary(), "0 executed, 5 cached, 0 failed");
    // c reads both b instances, which read a: the value shows the whole chain.
    let arts = s.artifacts("wd");
    assert!(arts.values().any(|v| String::from_utf8_lossy(v)
        .contains("gamma seed=7 [b[seed=1]:beta seed=1 [a:alpha seed=7]][b[seed=2]")));
}

#[test]
fn changing_one_param_reruns_only_that_instance_and_its_dependents() {
    let s = Sandbox::new();
    s.write("m.yaml", CHAIN);
    s.run(&["run", "m.yaml"]).ok();
    s.write("m.yaml", &CHAIN.replace("text: beta", "text: BETA"));
    let st = s.run(&["status", "m.yaml"]);
    assert!(
        st.stdout
            .contains("stale    b[seed=1]  (params.text changed: \"beta\" -> \"BETA\")"),
        "{}",
        st.stdout
    );
    assert!(
        st.stdout.contains("stale    c  (waits for upstream: b)"),
        "{}",
        st.stdout
    );
    let ex = s.run(&["explain", "m.yaml", "b"]);
    assert!(ex.stdout.contains("- params.text changed"), "{}", ex.stdout);
    let r = s.run(&["run", "m.yaml"]);
    r.ok();
    // b has two instances, c depends on them; a and side are untouched.
    assert_eq!(r.summary(), "3 executed, 2 cached, 0 failed");
}

#[test]
fn stage_selection_force_and_dry_run() {
    let s = Sandbox::new();
    s.write("m.yaml", CHAIN);
    let dry = s.run(&["run", "m.yaml", "--dry-run"]);
    dry.ok();
    assert!(
        dry.stdout
            .contains("dry run: 2 to run now, 3 after their inputs, 0 cached"),
        "{}",
        dry.stdout
    );
    assert!(!s.path().join("wd").exists(), "dry run wrote a workdir");
    let r = s.run(&["run", "m.yaml", "--stage", "b"]);
    r.ok();
    assert_eq!(r.summary(), "3 executed, 0 cached, 0 failed");
    let r = s.run(&["run", "m.yaml", "--stage", "b", "--force"]);
    r.ok();
    assert_eq!(r.summary(), "2 executed, 1 cached, 0 failed");
    let bad = s.run(&["run", "m.yaml", "--stage", "nope"]);
    assert_eq!(bad.code, Some(2));
    assert!(
        bad.stderr.contains("--stage nope: no such stage"),
        "{}",
        bad.stderr
    );
}

#[test]
fn failures_keep_going_and_leave_nothing_done() {
    let s = Sandbox::new();
    s.write(
        "m.yaml",
        r#"
name: f
seed: 1
workdir: wd
stages:
  bad:
    kind: test/fail
  after_bad:
    kind: test/write
    needs: [bad]
    params: {text: x}
  good:
    kind: test/write
    params: {text: ok}
  boom:
    kind: test/fail
    params: {panic: true}
"#,
    );
    let r = s.run(&["run", "m.yaml", "--keep-going", "-j", "2"]);
    assert_eq!(r.code, Some(1), "{r:#?}");
    assert_eq!(r.summary(), "1 executed, 0 cached, 2 failed");
    assert!(
        r.stdout.contains("1 not run (upstream failed)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("test/fail failed as asked"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("stage panicked: test/fail was asked to panic"),
        "{}",
        r.stderr
    );
    // Failed attempts keep error and log, never a store entry or their partial output.
    let failed: Vec<_> = std::fs::read_dir(s.path().join("wd/failed"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(failed.len(), 2);
    for f in failed {
        let meta = std::fs::read_to_string(f.path().join("meta.json")).unwrap();
        assert!(meta.contains("\"exit_status\": \"failed\""));
        assert!(std::fs::read_to_string(f.path().join("log.txt"))
            .unwrap()
            .contains("about to fail"));
        assert!(!f.path().join("out").exists());
    }
    assert_eq!(s.artifacts("wd").len(), 1);
    let st = s.run(&["status", "m.yaml"]);
    assert!(
        st.stdout
            .contains("failed   bad  (test/fail failed as asked)"),
        "{}",
        st.stdout
    );
    // Without --keep-going the run stops at the first failure.
    s.write(
        "m2.yaml",
        &std::fs::read_to_string(s.path().join("m.yaml"))
            .unwrap()
            .replace("workdir: wd", "workdir: wd2"),
    );
    let r = s.run(&["run", "m2.yaml"]);
    assert_eq!(r.code, Some(1));
}

#[test]
fn truncated_artifact_is_flagged_by_verify_and_recomputed() {
    let s = Sandbox::new();
    s.write("m.yaml", CHAIN);
    s.run(&["run", "m.yaml"]).ok();
    let before = s.artifacts("wd");
    let victim = before.keys().next().unwrap().clone();
    let path = s
        .path()
        .join("wd/store")
        .join(victim.replacen('/', "/out/", 1));
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(3).unwrap();
    let v = s.run(&["verify", "m.yaml"]);
    assert_eq!(v.code, Some(1), "{v:#?}");
    assert!(v.stdout.contains("digest mismatch"), "{}", v.stdout);
    assert!(v.stdout.contains("1 corrupt"), "{}", v.stdout);
    let r = s.run(&["run", "m.yaml"]);
    r.ok();
    assert_eq!(r.summary(), "1 executed, 4 cached, 0 failed");
    assert_eq!(s.artifacts("wd"), before);
    s.run(&["verify", "m.yaml"]).ok();
}

const ROUNDS: &str = r#"
name: rounds
seed: 3
workdir: WORKDIR
stages:
  src:
    kind: test/write
    params: {text: "x y z"}
  fan:
    kind: test/fanout
    needs: [src]
    matrix: {item: all}
    params: {text: f}
  long:
    kind: test/rounds
    needs: [fan]
    matrix:
      seed: [0, 1]
    params: {rounds: 30, sleep_ms: 8}
  tail:
    kind: test/write
    needs: [long]
    params: {text: t}
"#;

#[test]
fn fan_out_from_upstream_outputs() {
    let s = Sandbox::new();
    s.write(
        "m.yaml",
        &ROUNDS
            .replace("WORKDIR", "wd")
            .replace("rounds: 30", "rounds: 2"),
    );
    let st = s.run(&["status", "m.yaml"]);
    assert!(st.stdout.contains("fan[item=*]"), "{}", st.stdout);
    let r = s.run(&["run", "m.yaml", "-j", "2"]);
    r.ok();
    // src + 3 fan instances (x, y, z) + 2 long + tail
    assert_eq!(r.summary(), "7 executed, 0 cached, 0 failed");
    let dag = s.run(&["dag", "m.yaml", "--dot"]);
    assert!(dag.stdout.contains("\"fan\" -> \"long\""), "{}", dag.stdout);
}

/// Kills the run at random moments; every resumed run must end byte-identical to a clean one.
#[test]
fn kill_nine_then_resume_is_bit_identical() {
    let s = Sandbox::new();
    s.write("clean.yaml", &ROUNDS.replace("WORKDIR", "clean"));
    s.run(&["run", "clean.yaml"]).ok();
    let reference = s.artifacts("clean");
    assert_eq!(reference.len(), 1 + 3 + 2 * 2 + 1);

    // Deterministic "random" kill times spread over the run (~0.6 s clean).
    let mut x: u64 = 0x9e37_79b9;
    let mut resumed_any = false;
    for trial in 0..12 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = 30 + x % 650;
        let wd = format!("trial{trial}");
        s.write(&format!("{wd}.yaml"), &ROUNDS.replace("WORKDIR", &wd));
        let mut child = s
            .command(&["run", &format!("{wd}.yaml"), "-q"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        // SIGKILL: no destructor, no cleanup.
        unsafe { libc_kill(child.id() as i32, 9) };
        let _ = child.wait();
        let r = s.run(&["run", &format!("{wd}.yaml")]);
        r.ok();
        let got = s.artifacts(&wd);
        let differing: Vec<String> = reference
            .keys()
            .chain(got.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| reference.get(*k) != got.get(*k))
            .map(|k| {
                let show = |v: Option<&Vec<u8>>| {
                    v.map(|b| String::from_utf8_lossy(&b[..b.len().min(200)]).to_string())
                };
                format!(
                    "{k}: clean {:?} vs resumed {:?}",
                    show(reference.get(k)),
                    show(got.get(k))
                )
            })
            .collect();
        assert!(
            differing.is_empty(),
            "trial {trial} (killed after {delay} ms) differs:\n{}\nresumed run said: {}",
            differing.join("\n"),
            r.stdout
        );
        resumed_any |= std::fs::read_dir(s.path().join(&wd).join("store"))
            .unwrap()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path().join("meta.json"))
                    .unwrap()
                    .contains("\"resumed\": true")
            });
    }
    assert!(
        resumed_any,
        "no trial was killed mid-stage: the checkpoint path was never exercised"
    );
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn a_live_lock_refuses_a_second_run() {
    let s = Sandbox::new();
    s.write("m.yaml", CHAIN);
    std::fs::create_dir_all(s.path().join("wd")).unwrap();
    // pid 1 is alive on every Linux system.
    std::fs::write(
        s.path().join("wd/lock"),
        format!(r#"{{"pid":1,"host":"{}","since":"t"}}"#, hostname()),
    )
    .unwrap();
    let r = s.run(&["run", "m.yaml"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("is locked by pid 1"), "{}", r.stderr);
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn export_writes_polars_readable_csv() {
    let s = Sandbox::new();
    s.write("m.yaml", CHAIN);
    s.run(&["run", "m.yaml"]).ok();
    let e = s.run(&["export", "m.yaml", "--csv", "out"]);
    e.ok();
    let runs = std::fs::read_to_string(s.path().join("out/runs.csv")).unwrap();
    assert!(
        runs.starts_with("stage,instance,kind,key,wall_seconds,peak_rss_mib,start_time,resumed"),
        "{runs}"
    );
    assert_eq!(runs.lines().count(), 6);
}

/// The CI manifest runs end to end on the real-data excerpts shipped in tests/fixtures/data.
#[test]
fn smoke_manifest_runs_and_is_cached() {
    let s = Sandbox::new();
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest = format!("{root}/manifests/smoke.yaml");
    let data = format!("{root}/tests/fixtures/data");
    let run = |args: &[&str]| {
        let out = s
            .command(args)
            .env("FEDP2EFT_DATA", &data)
            .output()
            .unwrap();
        crate::util::Run::from(out)
    };
    let r = run(&["run", &manifest, "--workdir", "wd"]);
    r.ok();
    assert!(
        r.summary().ends_with("0 cached, 0 failed"),
        "{}",
        r.summary()
    );
    let again = run(&["run", &manifest, "--workdir", "wd"]);
    again.ok();
    assert!(
        again.summary().starts_with("0 executed"),
        "{}",
        again.summary()
    );
    // The federated base methods sample the same clients each round (a controlled comparison).
    let mut sampled: Vec<Vec<String>> = Vec::new();
    for e in std::fs::read_dir(s.path().join("wd/store"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("out/model").is_dir())
        // The MasakhaNEWS base stages share a partition (Fed-Aya's has other clients).
        .filter(|e| {
            std::fs::read_to_string(e.path().join("meta.json"))
                .is_ok_and(|m| m.contains("\"stage\": \"base_news"))
        })
    {
        if let Ok(csv) = std::fs::read_to_string(e.path().join("out/rounds.csv")) {
            sampled.push(
                csv.lines()
                    .skip(1)
                    .map(|l| l.split(',').nth(3).unwrap().to_string())
                    .collect(),
            );
        }
    }
    assert!(sampled.len() >= 3, "{sampled:?}");
    assert!(sampled.windows(2).all(|w| w[0] == w[1]), "{sampled:?}");
    let v = run(&["verify", &manifest, "--workdir", "wd"]);
    v.ok();
    // Without --csv, export writes to results/<manifest name>/.
    let e = run(&["export", &manifest, "--workdir", "wd"]);
    e.ok();
    let out = s.path().join("results/smoke");
    assert!(out.join("runs.csv").is_file());
    // The report stage's result tables (every method on the FedAvg base) are exported, with
    // their Markdown and plots.
    for pool in ["seen", "unseen"] {
        let t = out.join(format!("report_news__masakhanews_{pool}_fedavg.csv"));
        let csv = std::fs::read_to_string(&t).unwrap_or_else(|e| panic!("{}: {e}", t.display()));
        for method in ["lora", "adalora", "bayestune_lora", "fedl2p", "fedp2eft"] {
            assert!(
                csv.lines()
                    .skip(1)
                    .any(|l| l.contains(&format!(",{method},"))),
                "{csv}"
            );
        }
        assert!(out
            .join(format!("report_news__masakhanews_{pool}_fedavg.md"))
            .is_file());
    }
    // Three base models under one report: a table per base, rank plots per personalize stage.
    for base in ["dept_spec", "feddpa_t"] {
        assert!(out
            .join(format!("report_news__masakhanews_seen_{base}.csv"))
            .is_file());
    }
    for stage in [
        "personalize_news_fedavg",
        "personalize_news_dept",
        "personalize_news_feddpa",
    ] {
        assert!(out
            .join(format!("report_news__{stage}_rank_structure_fedp2eft.png"))
            .is_file());
    }
    // Fed-Aya: generations scored by ROUGE-1/L and METEOR, one table per pool with every method.
    for pool in ["seen", "unseen"] {
        let t = out.join(format!("report_aya__aya_test_sets_{pool}_fedavg.csv"));
        let csv = std::fs::read_to_string(&t).unwrap_or_else(|e| panic!("{}: {e}", t.display()));
        for metric in ["meteor", "rouge1", "rougeL"] {
            assert!(csv.contains(&format!(",{metric},")), "{csv}");
        }
        for method in ["lora", "adalora", "bayestune_lora", "fedl2p", "fedp2eft"] {
            assert!(
                csv.lines()
                    .skip(1)
                    .any(|l| l.contains(&format!(",{method},"))),
                "{csv}"
            );
        }
    }
    // Table 5, per setup (partition stage): FedP2EFT's and FedL2P's federated training per
    // client-round and every method's inference.
    let cost = std::fs::read_to_string(out.join("cost.csv")).unwrap();
    for setup in ["partition_news", "partition_aya"] {
        for method in ["fedp2eft", "fedl2p"] {
            assert!(
                cost.contains(&format!("{setup},{method},federated_training,")),
                "{cost}"
            );
        }
        for method in ["lora", "adalora", "bayestune_lora", "fedl2p", "fedp2eft"] {
            assert!(
                cost.contains(&format!("{setup},{method},personalization,")),
                "{cost}"
            );
        }
    }
}
