//! The stage kinds this binary ships, registered by name.

use crate::registry::Registry;

pub mod base;
pub mod client_base;
pub mod fedl2p;
pub mod partition;
pub mod personalize;
pub mod psg;
pub mod score;
pub mod task;
pub mod testing;

/// Environment variable that also registers the executor's test kinds (`test/*`). They exist for
/// the end-to-end tests of the binary and are not listed otherwise.
pub const TEST_KINDS_ENV: &str = "PIPELINE_TEST_KINDS";

pub fn registry() -> Registry {
    let mut r = Registry::new();
    partition::register(&mut r);
    base::register(&mut r);
    personalize::register(&mut r);
    psg::register(&mut r);
    score::register(&mut r);
    fedl2p::register(&mut r);
    if std::env::var_os(TEST_KINDS_ENV).is_some_and(|v| v == "1") {
        testing::register(&mut r);
    }
    r
}
