//! Where inputs come from and go to, read from the environment the Hugging Face tools use
//! (`HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`) plus ours
//! (`FEDP2EFT_MIRROR`, `FEDP2EFT_CACHE`, `FEDP2EFT_GITHUB_RAW`, `FEDP2EFT_FETCH_TIMEOUT`).

use std::path::PathBuf;
use std::time::Duration;

use super::hub_cache::{hf_home, HubCache};

pub const MIRROR_ENV: &str = "FEDP2EFT_MIRROR";

#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// The Hub, `HF_ENDPOINT` (default `https://huggingface.co`), without a trailing `/`.
    pub endpoint: String,
    /// Raw GitHub files, `FEDP2EFT_GITHUB_RAW` (default `https://raw.githubusercontent.com`).
    pub github_raw: String,
    pub hub: HubCache,
    /// Pinned datasets, laid out as a data root: `$FEDP2EFT_CACHE/data`.
    pub data_cache: PathBuf,
    /// Models converted from a PyTorch checkpoint: `$FEDP2EFT_CACHE/imported`.
    pub imported: PathBuf,
    /// `HF_HUB_OFFLINE=1`: the caches and the mirror only.
    pub offline: bool,
    pub token: Option<String>,
    pub mirror: Option<PathBuf>,
    pub timeout: Duration,
    /// `--update`: resolve revisions again and rewrite the lock.
    pub update: bool,
    pub mirror_out: Option<PathBuf>,
    pub quiet: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

/// `~/.cache/fedp2eft` unless `FEDP2EFT_CACHE` says otherwise.
pub fn our_cache() -> PathBuf {
    env("FEDP2EFT_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".cache/fedp2eft")
    })
}

impl FetchConfig {
    pub fn from_env() -> Self {
        let token = env("HF_TOKEN").or_else(|| {
            let path = env("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| hf_home().join("token"));
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let timeout = env("FEDP2EFT_FETCH_TIMEOUT")
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .unwrap_or(60.0);
        let cache = our_cache();
        FetchConfig {
            endpoint: env("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            github_raw: env("FEDP2EFT_GITHUB_RAW")
                .unwrap_or_else(|| "https://raw.githubusercontent.com".into())
                .trim_end_matches('/')
                .to_string(),
            hub: HubCache::from_env(),
            data_cache: cache.join("data"),
            imported: cache.join("imported"),
            offline: env("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)),
            token,
            mirror: env(MIRROR_ENV).map(PathBuf::from),
            timeout: Duration::from_secs_f64(timeout),
            update: false,
            mirror_out: None,
            quiet: false,
        }
    }

    /// The host the token may be sent to.
    pub fn token_host(&self) -> Option<(String, String)> {
        let host = reqwest::Url::parse(&self.endpoint)
            .ok()?
            .host_str()?
            .to_string();
        Some((host, self.token.clone()?))
    }
}
