//! The fetcher against a loopback Hub and CDN started by each test: downloads into the Hub cache
//! layout, resume, redirects, and every fault (wrong digest, 404, 401, hang, changed upstream,
//! unwritable cache) as an error naming the input and URL with nothing half-written.

mod server;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipeline::fetch::digest::FileDigests;
use pipeline::fetch::hub_cache::HubCache;
use pipeline::fetch::lockfile::LockedInput;
use pipeline::fetch::{FetchConfig, FetchError, Fetcher};
use server::{Reply, Request, Server};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn digests(bytes: &[u8]) -> FileDigests {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, bytes).unwrap();
    FileDigests::of(&p).unwrap()
}

/// A fake model repo: `(path, bytes, is LFS)`.
#[derive(Clone)]
struct Repo(Vec<(&'static str, Vec<u8>, bool)>);

impl Repo {
    fn tiny() -> Self {
        let weights: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        Repo(vec![
            ("config.json", br#"{"model_type":"bert"}"#.to_vec(), false),
            ("model.safetensors", weights, true),
            ("tf_model.h5", b"not wanted".to_vec(), true),
        ])
    }

    fn api(&self) -> String {
        let siblings: Vec<serde_json::Value> = self
            .0
            .iter()
            .map(|(p, b, lfs)| {
                let d = digests(b);
                if *lfs {
                    serde_json::json!({"rfilename": p, "size": b.len(), "blobId": d.git_blob,
                        "lfs": {"sha256": d.sha256, "size": b.len()}})
                } else {
                    serde_json::json!({"rfilename": p, "size": b.len(), "blobId": d.git_blob})
                }
            })
            .collect();
        serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string()
    }

    fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.0
            .iter()
            .find(|(p, _, _)| *p == path)
            .map(|(_, b, _)| b.clone())
    }
}

/// A Hub whose `resolve` redirects to a separate CDN server, as huggingface.co does.
struct Hub {
    hub: Server,
    cdn: Server,
}

fn hub_route(repo: Repo, cdn: String) -> impl Fn(&Request) -> Reply + Send + Sync {
    let api = repo.api();
    move |r: &Request| {
        if r.path.starts_with("/api/models/org/tiny/revision/") {
            return Reply::Json(api.clone());
        }
        match r.path.strip_prefix(&format!("/org/tiny/resolve/{COMMIT}/")) {
            Some(f) => Reply::Redirect(format!("{cdn}/{f}")),
            None => Reply::Status(404),
        }
    }
}

fn cdn_route(repo: Repo) -> impl Fn(&Request) -> Reply + Send + Sync {
    move |r: &Request| match repo.file(r.path.trim_start_matches('/')) {
        Some(b) => Reply::File(b),
        None => Reply::Status(404),
    }
}

impl Hub {
    fn start(repo: Repo) -> Hub {
        let cdn = Server::start(cdn_route(repo.clone()));
        let hub = Server::start(hub_route(repo, cdn.base.clone()));
        Hub { hub, cdn }
    }
}

fn config(endpoint: &str, dir: &Path) -> FetchConfig {
    FetchConfig {
        endpoint: endpoint.to_string(),
        github_raw: endpoint.to_string(),
        hub: HubCache {
            root: dir.join("hub"),
        },
        data_cache: dir.join("data"),
        imported: dir.join("imported"),
        offline: false,
        token: None,
        mirror: None,
        timeout: Duration::from_secs(2),
        update: false,
        mirror_out: None,
        quiet: true,
    }
}

fn fetch(
    cfg: &FetchConfig,
    locked: Option<&LockedInput>,
) -> Result<(LockedInput, usize), FetchError> {
    let mut f = Fetcher::new(cfg.clone());
    let m = f.model("org/tiny", "main", locked)?;
    Ok((m.lock, f.transferred.len()))
}

/// No blob, snapshot file or partial download in the cache.
fn assert_nothing_cached(dir: &Path) {
    let repo = dir.join("hub/models--org--tiny");
    for sub in ["blobs", "snapshots"] {
        let entries: Vec<_> = walk(&repo.join(sub));
        assert!(entries.is_empty(), "{sub}: {entries:?}");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn model_lands_in_the_hub_cache_layout_and_a_second_fetch_transfers_nothing() {
    let repo = Repo::tiny();
    let hub = Hub::start(repo.clone());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&hub.hub.base, dir.path());
    let (lock, n) = fetch(&cfg, None).unwrap();
    assert_eq!(n, 2, "config.json and model.safetensors, not tf_model.h5");
    assert_eq!(lock.commit, COMMIT);
    let snap = dir
        .path()
        .join("hub/models--org--tiny/snapshots")
        .join(COMMIT);
    let weights = snap.join("model.safetensors");
    assert!(weights.is_symlink());
    assert_eq!(
        std::fs::read(&weights).unwrap(),
        repo.file("model.safetensors").unwrap()
    );
    let sha = digests(&repo.file("model.safetensors").unwrap()).sha256;
    assert!(dir
        .path()
        .join("hub/models--org--tiny/blobs")
        .join(&sha)
        .is_file());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("hub/models--org--tiny/refs/main")).unwrap(),
        COMMIT
    );
    assert_eq!(lock.file("model.safetensors").unwrap().sha256, sha);
    // The files came from the CDN host the Hub redirected to.
    assert!(hub
        .cdn
        .requests()
        .iter()
        .any(|r| r.path == "/model.safetensors"));

    let before = hub.hub.requests().len() + hub.cdn.requests().len();
    let (again, n) = fetch(&cfg, Some(&lock)).unwrap();
    assert_eq!((n, again), (0, lock));
    assert_eq!(
        hub.hub.requests().len() + hub.cdn.requests().len(),
        before,
        "no request at all"
    );

    // Offline, the cache alone serves it, also without a lock.
    let offline = FetchConfig {
        offline: true,
        endpoint: "http://127.0.0.1:9".into(),
        ..cfg
    };
    let (off, n) = fetch(&offline, None).unwrap();
    assert_eq!((n, off.commit.as_str()), (0, COMMIT));
}

#[test]
fn wrong_sha256_names_file_and_url_and_caches_nothing() {
    let repo = Repo::tiny();
    let hub = Hub::start(repo.clone());
    let mut served = repo.clone();
    served.0[1].1[10] ^= 1; // the CDN serves different bytes than the Hub's pin
    hub.cdn.set_route(cdn_route(served));
    let dir = tempfile::tempdir().unwrap();
    let e = fetch(&config(&hub.hub.base, dir.path()), None).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("hf:org/tiny@main"), "{msg}");
    assert!(
        msg.contains(&format!(
            "{}/org/tiny/resolve/{COMMIT}/model.safetensors",
            hub.hub.base
        )),
        "{msg}"
    );
    assert!(msg.contains("expected sha256"), "{msg}");
    let blobs = walk(&dir.path().join("hub/models--org--tiny/blobs"));
    assert!(
        blobs
            .iter()
            .all(|b| !b.to_string_lossy().contains(".incomplete")),
        "{blobs:?}"
    );
    assert!(walk(&dir.path().join("hub/models--org--tiny/snapshots"))
        .iter()
        .all(|p| !p.ends_with("model.safetensors")));
}

#[test]
fn a_cut_transfer_fails_then_resumes_with_a_range_request() {
    let repo = Repo::tiny();
    let hub = Hub::start(repo.clone());
    let weights = repo.file("model.safetensors").unwrap();
    let half = weights.len() / 2;
    let (w, fallback) = (weights.clone(), cdn_route(repo.clone()));
    hub.cdn.set_route(move |r: &Request| {
        if r.path == "/model.safetensors" {
            Reply::Cut(w.clone(), half)
        } else {
            fallback(r)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&hub.hub.base, dir.path());
    let msg = fetch(&cfg, None).unwrap_err().to_string();
    assert!(
        msg.contains("cut off") && msg.contains("/model.safetensors"),
        "{msg}"
    );
    let sha = digests(&weights).sha256;
    let part = dir
        .path()
        .join("hub/models--org--tiny/blobs")
        .join(format!("{sha}.incomplete"));
    assert_eq!(std::fs::metadata(&part).unwrap().len(), half as u64);
    assert!(!dir
        .path()
        .join("hub/models--org--tiny/snapshots")
        .join(COMMIT)
        .join("model.safetensors")
        .exists());

    hub.cdn.set_route(cdn_route(repo));
    let (lock, _) = fetch(&cfg, None).unwrap();
    assert_eq!(lock.file("model.safetensors").unwrap().sha256, sha);
    let ranged: Vec<_> = hub
        .cdn
        .requests()
        .into_iter()
        .filter_map(|r| r.header("range").map(str::to_string))
        .collect();
    assert_eq!(ranged, [format!("bytes={half}-")]);
    assert!(!part.exists());
}

#[test]
fn not_found_repo_revision_and_file_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Server::start(|_: &Request| Reply::Status(404));
    let msg = fetch(&config(&missing.base, dir.path()), None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("repository `org/tiny` or its revision `main` not found"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "{}/api/models/org/tiny/revision/main",
            missing.base
        )),
        "{msg}"
    );

    // A file the revision lists that the server does not have.
    let repo = Repo::tiny();
    let hub = Hub::start(repo.clone());
    let mut fewer = repo.clone();
    fewer.0.remove(0);
    hub.cdn.set_route(cdn_route(fewer));
    let msg = fetch(&config(&hub.hub.base, dir.path()), None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("HTTP 404") && msg.contains("resolve") || msg.contains("/config.json"),
        "{msg}"
    );
    assert!(!dir
        .path()
        .join("hub/models--org--tiny/snapshots")
        .join(COMMIT)
        .join("config.json")
        .exists());
}

#[test]
fn gated_repo_needs_a_token_which_never_reaches_the_cdn() {
    let repo = Repo::tiny();
    let hub = Hub::start(repo.clone());
    let open = Arc::new(hub_route(repo, hub.cdn.base.clone()));
    hub.hub.set_route(move |r: &Request| {
        if r.path.contains("/resolve/") && r.header("authorization") != Some("Bearer hf_test") {
            Reply::Status(401)
        } else {
            open(r)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&hub.hub.base, dir.path());
    let msg = fetch(&cfg, None).unwrap_err().to_string();
    assert!(
        msg.contains("HTTP 401") && msg.contains("HF_TOKEN") && msg.contains("/resolve/"),
        "{msg}"
    );
    assert_nothing_cached(dir.path());

    let with_token = FetchConfig {
        token: Some("hf_test".into()),
        ..cfg
    };
    fetch(&with_token, None).unwrap();
    assert!(hub
        .cdn
        .requests()
        .iter()
        .all(|r| r.header("authorization").is_none()));
}

#[test]
fn a_hanging_server_times_out() {
    let hang = Server::start(|_: &Request| Reply::Hang);
    let dir = tempfile::tempdir().unwrap();
    let cfg = FetchConfig {
        timeout: Duration::from_millis(500),
        ..config(&hang.base, dir.path())
    };
    let t = Instant::now();
    let msg = fetch(&cfg, None).unwrap_err().to_string();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(msg.contains("timeout") && msg.contains(&hang.base), "{msg}");
}

#[test]
fn a_changed_upstream_file_is_an_error_against_the_lock() {
    let repo = Repo::tiny();
    let hub = Hub::start(repo.clone());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&hub.hub.base, dir.path());
    let (lock, _) = fetch(&cfg, None).unwrap();

    // Same commit id, other bytes (and the Hub's pin agrees with them): only the lock notices.
    let mut changed = repo.clone();
    changed.0[1].1[0] ^= 1;
    hub.cdn.set_route(cdn_route(changed.clone()));
    hub.hub.set_route(hub_route(changed, hub.cdn.base.clone()));
    let fresh = tempfile::tempdir().unwrap();
    let cfg2 = config(&hub.hub.base, fresh.path());
    let msg = fetch(&cfg2, Some(&lock)).unwrap_err().to_string();
    assert!(
        msg.contains("model.safetensors changed upstream") && msg.contains("--update"),
        "{msg}"
    );
    assert!(!fresh
        .path()
        .join("hub/models--org--tiny/snapshots")
        .join(COMMIT)
        .join("model.safetensors")
        .exists());
    // --update accepts the new version.
    let (new, _) = fetch(
        &FetchConfig {
            update: true,
            ..cfg2
        },
        Some(&lock),
    )
    .unwrap();
    assert_ne!(
        new.file("model.safetensors"),
        lock.file("model.safetensors")
    );
}

#[test]
fn an_unwritable_cache_is_named() {
    let hub = Hub::start(Repo::tiny());
    let dir = tempfile::tempdir().unwrap();
    // A file where the cache folder should be: fails for root too (unlike a chmod).
    std::fs::write(dir.path().join("hub"), b"").unwrap();
    let msg = fetch(&config(&hub.hub.base, dir.path()), None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cannot create the cache folder")
            && msg.contains(&dir.path().join("hub").display().to_string()),
        "{msg}"
    );
}

#[test]
fn a_mirror_is_tried_first_and_mirror_out_writes_one() {
    let repo = Repo::tiny();
    let hub = Hub::start(repo.clone());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mirror");
    let cfg = FetchConfig {
        mirror_out: Some(out.clone()),
        ..config(&hub.hub.base, dir.path())
    };
    let (lock, _) = fetch(&cfg, None).unwrap();
    assert!(out
        .join("models/org--tiny")
        .join(COMMIT)
        .join("model.safetensors")
        .is_file());

    // A fresh cache fills from the mirror: the CDN is not asked again.
    let before = hub.cdn.requests().len();
    let fresh = tempfile::tempdir().unwrap();
    let cfg = FetchConfig {
        mirror: Some(out),
        ..config(&hub.hub.base, fresh.path())
    };
    let (again, n) = fetch(&cfg, Some(&lock)).unwrap();
    assert_eq!((n, again), (2, lock));
    assert_eq!(hub.cdn.requests().len(), before);
}

/// The shipped Fed-Aya pins, served from the project's copy of the data.
#[test]
fn pinned_dataset_files_come_from_their_github_commit_and_are_verified() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/fed_aya");
    if !shared.is_dir() {
        panic!(
            "{} is missing (CI runs with /work/shared beside the clone)",
            shared.display()
        );
    }
    let files = [
        ("/rui-ye/FedLLM-Bench/24556797d74a89ff09f0db62d4e10f272ac769a5/LICENSE", "LICENSE.FedLLM-Bench"),
        (
            "/rui-ye/FedLLM-Bench/24556797d74a89ff09f0db62d4e10f272ac769a5/evaluation/open_ended/aya_evaluation/test_datasets.json",
            "aya_test_datasets.json",
        ),
    ];
    let s2 = shared.clone();
    let raw = Server::start(
        move |r: &Request| match files.iter().find(|(p, _)| *p == r.path) {
            Some((_, name)) => Reply::File(std::fs::read(s2.join(name)).unwrap()),
            None => Reply::Status(404),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&raw.base, dir.path());
    let mut f = Fetcher::new(cfg.clone());
    let d = f.dataset("fedaya", None).unwrap();
    assert_eq!(f.transferred.len(), 2);
    assert_eq!(
        std::fs::read(d.root.join("fed_aya/aya_test_datasets.json")).unwrap(),
        std::fs::read(shared.join("aya_test_datasets.json")).unwrap()
    );
    let mut again = Fetcher::new(cfg.clone());
    again.dataset("fedaya", Some(&d.lock)).unwrap();
    assert!(again.transferred.is_empty());

    // A server with other bytes fails the pin, nothing lands in the data cache.
    let bad = Server::start(|_: &Request| Reply::File(b"tampered".to_vec()));
    let fresh = tempfile::tempdir().unwrap();
    let msg = Fetcher::new(config(&bad.base, fresh.path()))
        .dataset("fedaya", None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("dataset:fedaya")
            && msg.contains("expected sha256")
            && msg.contains(&bad.base),
        "{msg}"
    );
    assert!(walk(&fresh.path().join("data")).is_empty());
}
