//! The stage kinds this binary ships, registered by name: one file (or folder) per kind, named
//! after it; `client_base`, `stage1` and `task` hold what several kinds share, `artifacts` the
//! file names producers and consumers agree on.

use crate::engine::registry::Registry;

pub mod artifacts;
pub mod base;
pub mod base_cache;
pub mod client_base;
pub mod inputs;
pub mod lambda_bayestune;
pub mod model_dir;
pub mod partition;
pub mod personalize;
pub mod psg_fedl2p;
pub mod psg_fedp2eft;
pub mod report;
pub mod score;
pub mod stage1;
pub mod task;
pub mod testing;
pub mod trainer_seed;

/// Environment variable that also registers the executor's test kinds (`test/*`). They exist for
/// the end-to-end tests of the binary and are not listed otherwise.
pub const TEST_KINDS_ENV: &str = "PIPELINE_TEST_KINDS";

pub fn registry() -> Registry {
    let mut r = Registry::new();
    partition::register(&mut r);
    base::register(&mut r);
    psg_fedp2eft::register(&mut r);
    psg_fedl2p::register(&mut r);
    lambda_bayestune::register(&mut r);
    personalize::register(&mut r);
    score::register(&mut r);
    report::register(&mut r);
    if std::env::var_os(TEST_KINDS_ENV).is_some_and(|v| v == "1") {
        testing::register(&mut r);
    }
    r
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::engine::manifest::Manifest;

    /// Every manifest shipped in `manifests/` parses and passes each stage kind's parameter
    /// validation (running them needs models and data; this does not).
    #[test]
    fn every_committed_manifest_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
        let registry = registry();
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let m = Manifest::load(&path, &registry, None)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                names.push(m.name);
            }
        }
        names.sort();
        for want in ["fedaya", "masakhanews", "smoke", "xnli"] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
    }
}
