//! `scripts/setup.sh`: its steps run in order, each named, timed and skipped when its `check`
//! says its outputs are in place, so a set-up interrupted or failed at one step resumes there;
//! the shipped steps put the cheap essential ones before the only one that builds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `scripts/setup.sh` over the steps in `steps`, with `$STATE` for the fake steps' files.
fn setup(steps: &Path, state: &Path) -> Output {
    Command::new("bash")
        .arg(root().join("scripts/setup.sh"))
        .env("FEDP2EFT_SETUP_STEPS", steps)
        .env("STATE", state)
        .output()
        .expect("bash")
}

/// A step NAME whose output is `$STATE/NAME`; its `run` also counts itself in `$STATE/NAME.runs`
/// and first runs `extra`.
fn write_step(dir: &Path, file: &str, name: &str, extra: &str) {
    let text = format!(
        "#!/usr/bin/env bash\n# setup-step: {name}: writes {name}\nset -e\n\
         case \"$1\" in\n  check) [ -f \"$STATE/{name}\" ] ;;\n  \
         run) echo x >> \"$STATE/{name}.runs\"; {extra}\n       touch \"$STATE/{name}\" ;;\nesac\n"
    );
    std::fs::write(dir.join(file), text).unwrap();
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn runs(state: &Path, name: &str) -> usize {
    std::fs::read_to_string(state.join(format!("{name}.runs")))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// The line saying `step` is done ends with its duration, `(N.N s)`.
fn assert_timed(out: &str, step: &str) {
    let line = out
        .lines()
        .find(|l| l.contains(&format!("{step}: done (")))
        .unwrap_or_else(|| panic!("no done line for {step}:\n{out}"));
    let secs = line.rsplit_once('(').unwrap().1.strip_suffix(" s)");
    assert!(secs.is_some_and(|s| s.parse::<f64>().is_ok()), "{line}");
}

#[test]
fn steps_run_in_order_timed_and_a_rerun_resumes_at_the_failed_step() {
    let tmp = tempfile::tempdir().unwrap();
    let (steps, state) = (tmp.path().join("steps"), tmp.path().join("state"));
    std::fs::create_dir_all(&steps).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    write_step(&steps, "1-alpha.sh", "alpha", "");
    write_step(
        &steps,
        "2-beta.sh",
        "beta",
        "[ -f \"$STATE/allow\" ] || exit 3",
    );
    write_step(&steps, "3-gamma.sh", "gamma", "");

    let out = setup(&steps, &state);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("[setup 1/3] alpha: writes alpha ..."), "{t}");
    assert!(t.contains("[setup 1/3] alpha: done ("), "{t}");
    assert!(
        t.contains("[setup 2/3] beta: FAILED (exit 3) after "),
        "{t}"
    );
    assert!(
        t.contains("rerun scripts/setup.sh to retry from this step"),
        "{t}"
    );
    assert_timed(&t, "alpha");
    assert_eq!(
        runs(&state, "gamma"),
        0,
        "a step after the failure ran:\n{t}"
    );

    std::fs::write(state.join("allow"), "").unwrap();
    let out = setup(&steps, &state);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("[setup 1/3] alpha: writes alpha: already done ("),
        "{t}"
    );
    assert!(t.contains("[setup 2/3] beta: done ("), "{t}");
    assert!(t.contains("[setup 3/3] gamma: done ("), "{t}");
    assert!(t.contains("setup: all 3 steps done ("), "{t}");
    assert_timed(&t, "gamma");
    assert_eq!(
        (
            runs(&state, "alpha"),
            runs(&state, "beta"),
            runs(&state, "gamma")
        ),
        (1, 2, 1),
        "{t}"
    );

    let t = text(&setup(&steps, &state));
    assert_eq!(t.matches("already done").count(), 3, "{t}");
    assert_eq!(runs(&state, "gamma"), 1, "{t}");
}

#[test]
fn a_step_that_ends_without_its_outputs_fails_the_set_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (steps, state) = (tmp.path().join("steps"), tmp.path().join("state"));
    std::fs::create_dir_all(&steps).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    // Exits 0 but writes nothing its check would find.
    write_step(&steps, "1-hollow.sh", "hollow", "exit 0");
    let out = setup(&steps, &state);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("hollow: FAILED: the step ended but its outputs are incomplete"),
        "{t}"
    );
}

/// The shipped steps, in the order set-up runs them, by their `# setup-step:` names.
fn shipped_steps() -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("scripts/setup.d"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let body = std::fs::read_to_string(f).unwrap();
            let line = body
                .lines()
                .find_map(|l| l.strip_prefix("# setup-step: "))
                .unwrap_or_else(|| {
                    panic!("{} has no '# setup-step: NAME: WHAT' line", f.display())
                });
            (line.split(':').next().unwrap().to_string(), body)
        })
        .collect()
}

#[test]
fn shipped_steps_put_wordnet_and_the_downloads_before_the_build() {
    let steps = shipped_steps();
    let names: Vec<&str> = steps.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "toolchain",
            "fonts",
            "wordnet",
            "model-wheels",
            "import-models"
        ]
    );
    // Only the last step compiles: the scripts the others run never call cargo.
    let scripts = root().join("scripts");
    for (name, body) in &steps[..steps.len() - 1] {
        let mut all = body.clone();
        for called in ["install-wordnet.sh", "fetch-models.sh"] {
            if body.contains(called) {
                all += &std::fs::read_to_string(scripts.join(called)).unwrap();
            }
        }
        assert!(
            !all.lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains("cargo run")),
            "step {name} builds"
        );
    }
    assert!(std::fs::read_to_string(scripts.join("import-models.sh"))
        .unwrap()
        .contains("cargo run"));
}

/// The WordNet step checks its outputs' contents, not just that the step once ran: an NLTK data
/// dir with a cut file is found incomplete and the next `run` repairs it. Needs WordNet in
/// /usr/share/wordnet (set-up's own step installs it).
#[test]
fn the_wordnet_step_finds_and_repairs_an_incomplete_nltk_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let nltk = tmp.path().join("nltk_data");
    let step = |mode: &str| {
        Command::new("bash")
            .arg(root().join("scripts/setup.d/3-wordnet.sh"))
            .arg(mode)
            .env("FEDP2EFT_NLTK_DATA", &nltk)
            .env_remove("FEDP2EFT_WORDNET")
            .output()
            .unwrap()
    };
    assert!(
        !step("check").status.success(),
        "an empty NLTK dir passed the check"
    );
    let out = step("run");
    assert!(out.status.success(), "{}", text(&out));
    assert!(step("check").status.success());

    let data = nltk.join("corpora/wordnet/data.noun");
    let bytes = std::fs::read(&data).unwrap();
    std::fs::write(&data, &bytes[..bytes.len() / 2]).unwrap();
    assert!(
        !step("check").status.success(),
        "a cut data.noun passed the check"
    );
    let out = step("run");
    assert!(out.status.success(), "{}", text(&out));
    assert!(step("check").status.success());
    assert_eq!(std::fs::read(&data).unwrap(), bytes);
}
