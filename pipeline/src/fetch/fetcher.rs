//! The fetcher shared by models and datasets: one HTTP client (started on first use), the bars,
//! and `obtain` — one file from the mirror or the network into a partial file, verified against
//! its pin and the lock before the caller moves it into place.

use std::path::{Path, PathBuf};

use super::config::FetchConfig;
use super::digest::{Expected, FileDigests};
use super::error::FetchError;
use super::http::Http;
use super::lockfile;
use super::progress::Bars;

pub struct Fetcher {
    pub cfg: FetchConfig,
    http: Option<Http>,
    bars: Bars,
    /// Files transferred (downloaded or copied from the mirror) by this fetcher.
    pub transferred: Vec<String>,
}

/// One file to bring in.
pub struct Wanted<'a> {
    pub input: &'a str,
    /// Its name in messages and the lock.
    pub file: &'a str,
    pub url: Option<String>,
    pub mirror: Option<PathBuf>,
    pub expected: Option<&'a Expected>,
    /// The lock's sha256, when the input is locked.
    pub locked: Option<&'a str>,
    pub size: Option<u64>,
}

impl Fetcher {
    pub fn new(cfg: FetchConfig) -> Self {
        let bars = Bars::new(cfg.quiet);
        Fetcher {
            cfg,
            http: None,
            bars,
            transferred: Vec::new(),
        }
    }

    pub fn http(&mut self, input: &str) -> Result<&Http, FetchError> {
        if self.http.is_none() {
            let http = Http::new(self.cfg.timeout, self.cfg.token_host())
                .map_err(|m| FetchError::new(input, "-", m))?;
            self.http = Some(http);
        }
        Ok(self.http.as_ref().expect("set above"))
    }

    /// Brings `w` into `part` and checks it; on a digest mismatch `part` is removed.
    pub fn obtain(&mut self, w: &Wanted<'_>, part: &Path) -> Result<FileDigests, FetchError> {
        let from_mirror = w.mirror.as_ref().filter(|m| m.is_file());
        let location = match (from_mirror, &w.url) {
            (Some(m), _) => {
                let _ = std::fs::remove_file(part);
                std::fs::copy(m, part)
                    .map_err(|e| FetchError::io(w.input, m, "copying from the mirror", &e))?;
                m.display().to_string()
            }
            (None, Some(url)) if !self.cfg.offline => {
                let bar = self.bars.file(w.file, w.size);
                let url = url.clone();
                self.http(w.input)?.download(w.input, &url, part, &bar)?;
                bar.finish_and_clear();
                url
            }
            (None, Some(url)) => {
                return Err(FetchError::new(
                    w.input,
                    url,
                    format!(
                        "{} is not in the cache and HF_HUB_OFFLINE=1 forbids the download",
                        w.file
                    ),
                ))
            }
            (None, None) => {
                let mirror = w
                    .mirror
                    .as_ref()
                    .map(|m| m.display().to_string())
                    .unwrap_or_else(|| format!("no mirror set ({})", super::config::MIRROR_ENV));
                return Err(FetchError::new(
                    w.input,
                    mirror,
                    format!(
                        "{} has no upstream copy; it comes from a mirror or the data root only",
                        w.file
                    ),
                ));
            }
        };
        let digests = FileDigests::of(part)
            .map_err(|e| FetchError::io(w.input, part, "reading the download", &e))?;
        let reject = |message: String| {
            let _ = std::fs::remove_file(part);
            FetchError::new(w.input, &location, message)
        };
        if let Some(exp) = w.expected {
            if let Some(actual) = digests.mismatch(exp) {
                return Err(reject(format!(
                    "{}: got {actual}, expected {}; the download was removed",
                    w.file,
                    exp.describe()
                )));
            }
        }
        if let Some(locked) = w
            .locked
            .filter(|l| !l.eq_ignore_ascii_case(&digests.sha256))
        {
            let _ = std::fs::remove_file(part);
            return Err(lockfile::changed(
                w.input,
                &location,
                w.file,
                locked,
                &digests.sha256,
            ));
        }
        self.transferred.push(format!("{} {}", w.input, w.file));
        Ok(digests)
    }
}
