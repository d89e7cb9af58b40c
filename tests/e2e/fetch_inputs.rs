//! `model: {hf: ..}` inputs end to end: `pipeline run` fetches a tiny BERT from a loopback Hub
//! into an empty HF cache and writes the lock; a second run transfers nothing and reuses the
//! store; a file whose digest does not match exits non-zero naming the input and URL, with
//! nothing in the store or cache.

use std::path::Path;

use pipeline::fetch::digest::FileDigests;

use super::server::{Reply, Request, Server};
use super::util::Sandbox;

const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/data");

const MANIFEST: &str = r#"name: hfrun
seed: 1
workdir: WORKDIR
data_root: DATA
stages:
  part:
    kind: partition/masakhanews
    params:
      languages: [eng, lin]
      clients_per_language: 2
      max_train_rows_per_language: 40
      max_test_rows_per_language: 20
  pre:
    kind: base/pretrained
    needs: [part]
    params:
      model: MODEL
      max_len: 32
"#;

fn manifest(wd: &str, model: &str) -> String {
    MANIFEST
        .replace("WORKDIR", wd)
        .replace("DATA", DATA)
        .replace("MODEL", model)
}

/// A tiny BERT in HF layout, made by the pipeline itself (`base/pretrained` of a `tiny` model).
fn tiny_bert(sb: &Sandbox) -> Vec<(String, Vec<u8>)> {
    let tiny =
        "{tiny: {hidden: 16, layers: 1, heads: 2, intermediate: 32, vocab_size: 120, seed: 1}}";
    sb.write("make.yaml", &manifest("wd-make", tiny));
    sb.run(&["run", "make.yaml", "-q"]).ok();
    let files: Vec<(String, Vec<u8>)> = sb
        .artifacts("wd-make")
        .into_iter()
        .filter_map(|(k, v)| {
            let name = k.split_once("/model/")?.1.to_string();
            (!name.contains('/')).then_some((name, v))
        })
        .collect();
    assert!(
        files.iter().any(|(n, _)| n == "model.safetensors"),
        "{files:?}"
    );
    files
}

fn digests(bytes: &[u8]) -> FileDigests {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, bytes).unwrap();
    FileDigests::of(&p).unwrap()
}

/// The Hub's revision API (announcing `announce`'s digests) and `resolve` on one server.
fn hub(files: Vec<(String, Vec<u8>)>, announce: Vec<(String, Vec<u8>)>) -> Server {
    let siblings: Vec<serde_json::Value> = announce
        .iter()
        .map(|(p, b)| {
            let d = digests(b);
            serde_json::json!({"rfilename": p, "size": b.len(), "blobId": d.git_blob,
                "lfs": {"sha256": d.sha256, "size": b.len()}})
        })
        .collect();
    let api = serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string();
    Server::start(move |r: &Request| {
        if r.path.starts_with("/api/models/org/tiny/revision/") {
            return Reply::Json(api.clone());
        }
        let f = r.path.strip_prefix(&format!("/org/tiny/resolve/{COMMIT}/"));
        match f.and_then(|f| files.iter().find(|(n, _)| n == f)) {
            Some((_, b)) => Reply::File(b.clone()),
            None => Reply::Status(404),
        }
    })
}

fn run_against(sb: &Sandbox, server: &Server, cache: &Path, args: &[&str]) -> super::util::Run {
    let out = sb
        .command(args)
        .env("HF_ENDPOINT", &server.base)
        .env("HF_HOME", cache.join("hf"))
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("FEDP2EFT_MIRROR")
        .env("FEDP2EFT_CACHE", cache.join("ours"))
        .output()
        .expect("spawn pipeline");
    super::util::Run::from(out)
}

#[test]
fn an_hf_model_is_fetched_once_locked_and_keyed_by_its_digests() {
    let sb = Sandbox::new();
    let files = tiny_bert(&sb);
    let server = hub(files.clone(), files.clone());
    let cache = sb.path().join("cache");
    sb.write(
        "hfrun.yaml",
        &manifest("wd", "{hf: org/tiny, revision: main}"),
    );

    let first = run_against(&sb, &server, &cache, &["run", "hfrun.yaml", "-q"]);
    first.ok();
    let n = server.requests().len();
    assert_eq!(n, 1 + files.len(), "{:?}", server.requests());
    let snap = cache.join(format!("hf/hub/models--org--tiny/snapshots/{COMMIT}"));
    assert!(snap.join("model.safetensors").is_file());
    let lock = std::fs::read_to_string(sb.path().join("hfrun.lock")).unwrap();
    let sha = digests(
        &files
            .iter()
            .find(|(n, _)| n == "model.safetensors")
            .unwrap()
            .1,
    )
    .sha256;
    assert!(lock.contains(COMMIT) && lock.contains(&sha), "{lock}");
    // The model stage's output is the served model itself (a BERT classifier is copied).
    let made: Vec<_> = sb
        .artifacts("wd")
        .into_iter()
        .filter(|(k, _)| k.ends_with("/model/model.safetensors"))
        .collect();
    assert_eq!(made.len(), 1);

    let second = run_against(&sb, &server, &cache, &["run", "hfrun.yaml", "-q"]);
    assert!(
        second.ok().summary().starts_with("0 executed"),
        "{second:#?}"
    );
    assert_eq!(
        server.requests().len(),
        n,
        "the second run fetched: {:?}",
        server.requests()
    );

    // `pipeline fetch` names what it locked, again without a transfer.
    let f = run_against(&sb, &server, &cache, &["fetch", "hfrun.yaml", "-q"]);
    assert!(
        f.ok()
            .stdout
            .contains(&format!("hf:org/tiny@main -> {COMMIT}")),
        "{f:#?}"
    );
    assert_eq!(server.requests().len(), n);

    // The lock's digests are in the key: another sha256 there makes the model stage stale.
    let before = sb.run(&["status", "hfrun.yaml", "--json"]);
    let lock_path = sb.path().join("hfrun.lock");
    std::fs::write(&lock_path, lock.replace(&sha, &"0".repeat(64))).unwrap();
    let after = sb.run(&["status", "hfrun.yaml", "--json"]);
    let state = |r: &super::util::Run| {
        r.stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["stage"] == "pre")
            .map(|v| (v["state"].to_string(), v["key"].to_string()))
            .unwrap()
    };
    let (s0, k0) = state(before.ok());
    let (s1, k1) = state(after.ok());
    assert_eq!(s0, "\"done\"");
    assert!(s1 != s0 && k1 != k0, "{s1} {k1}");

    // `--mirror-out` writes a mirror; the manifest's `mirror:` then serves a fresh cache
    // without a single request to the Hub.
    std::fs::write(&lock_path, &lock).unwrap();
    let m = run_against(
        &sb,
        &server,
        &cache,
        &["fetch", "hfrun.yaml", "-q", "--mirror-out", "mirror"],
    );
    m.ok();
    let dead = Server::start(|_: &Request| Reply::Status(404));
    let text = manifest("wd", "{hf: org/tiny, revision: main}")
        .replace("seed: 1\n", "seed: 1\nmirror: mirror\n");
    sb.write("hfrun.yaml", &text);
    let fresh = sb.path().join("cache2");
    let r = run_against(&sb, &dead, &fresh, &["run", "hfrun.yaml", "-q"]);
    assert!(r.ok().summary().starts_with("0 executed"), "{r:#?}");
    assert!(dead.requests().is_empty(), "{:?}", dead.requests());
    assert!(fresh
        .join(format!(
            "hf/hub/models--org--tiny/snapshots/{COMMIT}/model.safetensors"
        ))
        .is_file());
}

#[test]
fn a_file_with_the_wrong_digest_stops_the_run_naming_input_and_url() {
    let sb = Sandbox::new();
    let files = tiny_bert(&sb);
    let mut served = files.clone();
    for (n, b) in served.iter_mut() {
        if n == "model.safetensors" {
            b[100] ^= 0xff;
        }
    }
    let server = hub(served, files);
    let cache = sb.path().join("cache");
    sb.write(
        "hfrun.yaml",
        &manifest("wd", "{hf: org/tiny, revision: main}"),
    );
    let r = run_against(&sb, &server, &cache, &["run", "hfrun.yaml", "-q"]);
    assert_ne!(r.code, Some(0), "{r:#?}");
    assert!(
        r.stderr.contains("hf:org/tiny@main")
            && r.stderr.contains(&format!(
                "{}/org/tiny/resolve/{COMMIT}/model.safetensors",
                server.base
            )),
        "{}",
        r.stderr
    );
    assert!(sb.artifacts("wd").is_empty(), "nothing may be in the store");
    assert!(!sb.path().join("hfrun.lock").exists());
    let snap = cache.join(format!("hf/hub/models--org--tiny/snapshots/{COMMIT}"));
    assert!(!snap.join("model.safetensors").exists());
}

#[test]
fn bad_hf_sources_are_located_manifest_errors() {
    let sb = Sandbox::new();
    for (model, want) in [
        ("{hf: org/tiny, revison: main}", "unknown field `revison`"),
        (
            "{hf: org/tiny, revision: 'bad rev'}",
            "revision: \"bad rev\"",
        ),
        ("{hf: notarepo}", "must be ORG/NAME"),
    ] {
        sb.write("bad.yaml", &manifest("wd", model));
        let r = sb.run(&["run", "bad.yaml"]);
        assert_eq!(r.code, Some(2), "{model}: {r:#?}");
        assert!(
            r.stderr.contains("bad.yaml:") && r.stderr.contains(want),
            "{model}: {}",
            r.stderr
        );
        assert!(!sb.path().join("wd").exists());
    }
}

/// Fed-Aya's pinned files as `raw.githubusercontent.com` serves them (bytes from ../shared/data).
fn github_raw() -> Server {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/fed_aya");
    assert!(shared.is_dir(), "{} is missing", shared.display());
    let base = "/rui-ye/FedLLM-Bench/24556797d74a89ff09f0db62d4e10f272ac769a5/";
    Server::start(move |r: &Request| {
        let name = match r.path.strip_prefix(base) {
            Some("LICENSE") => "LICENSE.FedLLM-Bench",
            Some("evaluation/open_ended/aya_evaluation/test_datasets.json") => {
                "aya_test_datasets.json"
            }
            _ => return Reply::Status(404),
        };
        Reply::File(std::fs::read(shared.join(name)).unwrap())
    })
}

const AYA: &str = r#"name: ayarun
seed: 1
workdir: wd
ROOT
stages:
  part:
    kind: partition/aya_test_sets
    params:
      seen_clients: 3
      unseen_clients: 2
"#;

#[test]
fn a_pinned_dataset_is_fetched_without_a_data_root_and_keyed_as_a_local_copy() {
    let sb = Sandbox::new();
    let raw = github_raw();
    let cache = sb.path().join("cache");
    sb.write("ayarun.yaml", &AYA.replace("ROOT", ""));
    let run = |args: &[&str]| {
        let out = sb
            .command(args)
            .env("FEDP2EFT_GITHUB_RAW", &raw.base)
            .env("HF_HOME", cache.join("hf"))
            .env("FEDP2EFT_CACHE", cache.join("ours"))
            .env_remove("FEDP2EFT_MIRROR")
            .env_remove("HF_HUB_OFFLINE")
            .output()
            .unwrap();
        super::util::Run::from(out)
    };
    run(&["run", "ayarun.yaml", "-q"]).ok();
    assert_eq!(raw.requests().len(), 2, "{:?}", raw.requests());
    assert!(cache
        .join("ours/data/fed_aya/aya_test_datasets.json")
        .is_file());
    let lock = std::fs::read_to_string(sb.path().join("ayarun.lock")).unwrap();
    assert!(lock.contains("dataset:fedaya"), "{lock}");
    let again = run(&["run", "ayarun.yaml", "-q"]);
    assert!(again.ok().summary().starts_with("0 executed"), "{again:#?}");
    assert_eq!(raw.requests().len(), 2);

    // The same bytes under a local data root (the override) give the same key.
    let key = |r: &super::util::Run| {
        let line = r.ok().stdout.lines().next().unwrap().to_string();
        serde_json::from_str::<serde_json::Value>(&line).unwrap()["key"].clone()
    };
    let fetched = key(&run(&["status", "ayarun.yaml", "--json"]));
    let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data");
    sb.write(
        "ayarun.yaml",
        &AYA.replace("ROOT", &format!("data_root: {shared}")),
    );
    let local = key(&run(&["status", "ayarun.yaml", "--json"]));
    assert_eq!(fetched, local);
}
