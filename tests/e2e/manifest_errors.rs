use crate::util::Sandbox;

/// (manifest text, expected fragment of the message, expected line if the error has one)
const CASES: &[(&str, &str, Option<usize>)] = &[
    ("", "manifest is empty", None),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: \"unterminated\n", "found unexpected end of stream", Some(6)),
    ("name: x\nseeed: 1\nstages: {}\n", "unknown field `seeed`", Some(2)),
    ("name: x\nstages:\n  a: {kind: test/write, params: {text: t}}\n", "missing field `seed`", None),
    ("name: x\nseed: -4\nstages:\n  a: {kind: test/write, params: {text: t}}\n", "seed", Some(2)),
    ("name: x\nseed: 1\ndevice: gpu\nstages:\n  a: {kind: test/write, params: {text: t}}\n", "field `device`: \"gpu\" is not one of cpu, auto, cuda:N", Some(3)),
    ("name: x\nseed: 1\nstages: {}\n", "at least one stage", Some(3)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/nope\n", "unknown kind `test/nope`; known kinds: ", Some(5)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/write\n    needs: [zzz]\n    params: {text: t}\n", "needs `zzz`, which is not a stage", Some(6)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/write\n    needs: [b]\n    params: {text: t}\n  b:\n    kind: test/write\n    needs: [a]\n    params: {text: t}\n", "the stages form a cycle: a -> b -> a", Some(4)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/write\n    needs: [a]\n", "stage `a` needs itself", Some(6)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/write\n    parms: {text: t}\n", "unknown field `parms`", Some(6)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/write\n    params: [1, 2]\n", "`params` must be a mapping", Some(6)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/write\n    params:\n      txt: t\n", "unknown field `txt`", Some(7)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/write\n    params: {text: t}\n    matrix:\n      budget: []\n", "matrix `budget` is an empty list", Some(8)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/write\n    params: {text: t}\n    matrix:\n      seed: [1, x]\n", "matrix `seed` values must be non-negative integers", Some(8)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/write\n    params: {text: t}\n    matrix:\n      client: all\n", "matrix key `client: all` is not supported by kind `test/write`", Some(8)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/write\n    params: {text: t}\n    matrix:\n      text: [a, b]\n", "`text` is set both in `params` and in `matrix`", Some(8)),
    ("name: x\nseed: 1\nstages:\n  a/b:\n    kind: test/write\n    params: {text: t}\n", "stage name \"a/b\"", Some(4)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/rounds\n    params:\n      rounds: 0\n", "`rounds` must be at least 1", Some(7)),
    ("name: my run\nseed: 1\nstages:\n  a: {kind: test/write, params: {text: t}}\n", "field `name`", Some(1)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/write\n    params: {text: t}\n    matrix:\n      budget: [2, 2]\n", "lists 2 twice", Some(8)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/write\n    params: {text: t}\n  a:\n    kind: test/write\n    params: {text: u}\n", "key `a` appears twice in one mapping (first at line 5)", Some(7)),
    ("name: x\nseed: 1\nseed: 2\nstages:\n  a: {kind: test/write, params: {text: t}}\n", "key `seed` appears twice in one mapping (first at line 3)", Some(3)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/rounds\n    params:\n      rounds: 2\n      sleep_ms: 1\n      rounds: 5\n", "key `rounds` appears twice in one mapping (first at line 8)", Some(9)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/write\n    params: {text: t}\n    matrix:\n      budget: [1]\n      budget: [2]\n", "key `budget` appears twice in one mapping (first at line 9)", Some(9)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/write\n    params: {text: t, item: {k: 1, k: 2}}\n", "key `k` appears twice in one mapping (first at line 7)", Some(6)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/rounds\n    params:\n      rounds: 2\n      sleep_ms: soon\n", "field `sleep_ms`: invalid type: string \"soon\"", Some(8)),
    ("name: x\nseed: 1\ndevice: cuda:0\nstages:\n  a: {kind: test/write, params: {text: t}}\n", "no CUDA support", Some(3)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/write\n    params: {text: t}\n    resources: {cpus: 2, mem: 8GB}\n", "field `resources`: `mem` \"8GB\" is not a size", Some(7)),
    ("name: x\nseed: 1\nstages:\n  a:\n    kind: test/write\n    params: {text: t}\n    resources: {cores: 2}\n", "field `resources`: unknown field `cores`", Some(7)),
];

#[test]
fn malformed_manifests_exit_2_naming_the_problem_and_write_nothing() {
    assert!(CASES.len() >= 15);
    for (n, (text, fragment, line)) in CASES.iter().enumerate() {
        let s = Sandbox::new();
        let file = format!("bad{n}.yaml");
        // Prepending `workdir:` keeps every case's output inside the sandbox; it shifts lines by one.
        let (body, shift) = if text.is_empty() {
            (String::new(), 0)
        } else {
            (format!("workdir: wd\n{text}"), 1)
        };
        s.write(&file, &body);
        for cmd in ["run", "status"] {
            let r = s.run(&[cmd, &file]);
            assert_eq!(r.code, Some(2), "case {n} ({cmd}): {r:#?}");
            assert!(
                r.stderr.contains(fragment),
                "case {n}: expected {fragment:?} in:\n{}",
                r.stderr
            );
            let at = match line {
                Some(l) => format!("{file}:{}", l + shift),
                None => file.clone(),
            };
            assert!(
                r.stderr.contains(&at),
                "case {n}: expected location {at:?} in:\n{}",
                r.stderr
            );
            assert!(
                !s.path().join("wd").exists(),
                "case {n}: something was written"
            );
        }
    }
}

#[test]
fn missing_manifest_and_bad_cli_exit_2() {
    let s = Sandbox::new();
    let r = s.run(&["run", "nope.yaml"]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains("nope.yaml: cannot read manifest"),
        "{}",
        r.stderr
    );
    let r = s.run(&["run"]);
    assert_eq!(r.code, Some(2));
    let r = s.run(&["frobnicate"]);
    assert_eq!(r.code, Some(2));
}

#[test]
fn every_command_has_help() {
    let s = Sandbox::new();
    for cmd in [
        "run", "fetch", "status", "explain", "dag", "verify", "export", "clean", "kinds",
    ] {
        let r = s.run(&[cmd, "--help"]);
        r.ok();
        assert!(r.stdout.contains("Usage: pipeline"), "{cmd}: {}", r.stdout);
    }
    let fetch = s.run(&["fetch", "--help"]);
    assert!(
        fetch.stdout.contains("--update") && fetch.stdout.contains("--mirror-out <DIR>"),
        "{}",
        fetch.stdout
    );
}

#[test]
fn unknown_kind_lists_every_registered_kind() {
    let s = Sandbox::new();
    s.write(
        "m.yaml",
        "name: x\nseed: 1\nstages:\n  a:\n    kind: nope\n",
    );
    let r = s.run(&["run", "m.yaml"]);
    assert_eq!(r.code, Some(2));
    let kinds = s.run(&["kinds"]);
    kinds.ok();
    let names: Vec<&str> = kinds
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    assert!(
        r.stderr
            .contains(&format!("known kinds: {}", names.join(", "))),
        "{}",
        r.stderr
    );
}

#[test]
fn a_workdir_that_is_a_file_exits_2_naming_it() {
    let s = Sandbox::new();
    s.write("file", "not a directory");
    s.write(
        "m.yaml",
        "name: x\nseed: 1\nstages:\n  a: {kind: test/write, params: {text: t}}\n",
    );
    for workdir in ["file", "file/sub"] {
        for cmd in ["run", "status"] {
            let r = s.run(&[cmd, "m.yaml", "--workdir", workdir]);
            assert_eq!(r.code, Some(2), "{cmd} --workdir {workdir}: {r:#?}");
            assert!(
                r.stderr.contains("--workdir: workdir")
                    && r.stderr.contains("file is a file, not a directory"),
                "{}",
                r.stderr
            );
        }
    }
    s.write(
        "w.yaml",
        "name: x\nseed: 1\nworkdir: file\nstages:\n  a: {kind: test/write, params: {text: t}}\n",
    );
    let r = s.run(&["run", "w.yaml"]);
    assert_eq!(r.code, Some(2), "{r:#?}");
    assert!(
        r.stderr.contains("w.yaml:3: field `workdir`"),
        "{}",
        r.stderr
    );
}

/// `pipeline status … | head`: the reader goes away before the output is written.
#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let s = Sandbox::new();
    s.write(
        "m.yaml",
        "name: x\nseed: 1\nworkdir: wd\nstages:\n  a: {kind: test/write, params: {text: t}}\n",
    );
    for args in [
        &["status", "m.yaml"][..],
        &["status", "--json", "m.yaml"],
        &["kinds"],
        &["run", "--dry-run", "m.yaml"],
    ] {
        let mut child = s
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    // A run whose stdout closes still finishes its work.
    let mut child = s
        .command(&["run", "m.yaml"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait().unwrap();
    assert_eq!(
        s.run(&["status", "m.yaml"]).stdout.lines().last(),
        Some("1 done")
    );
}
