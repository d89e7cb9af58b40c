//! HTTP for the fetcher: reqwest (rustls, no OpenSSL) on a private current-thread tokio runtime,
//! so the blocking pipeline gets a per-read timeout (a stalled server fails instead of hanging)
//! without turning async. Redirects are followed (the Hub answers `resolve` with a 302 to its
//! CDN); reqwest drops the `Authorization` header when a redirect leaves the host, so the token
//! only goes to the endpoint.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use indicatif::ProgressBar;
use reqwest::header::{HeaderMap, AUTHORIZATION, RANGE};
use reqwest::StatusCode;

use super::error::FetchError;

pub struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    timeout: Duration,
    /// Bearer token and the host it may be sent to.
    token: Option<(String, String)>,
}

/// What an HTTP error status means to the user.
fn status_message(status: StatusCode, headers: &HeaderMap) -> String {
    let upstream = headers
        .get("x-error-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    match status.as_u16() {
        401 | 403 => format!(
            "HTTP {}{upstream}: access denied — the repository is gated or private; accept its \
             terms on the Hub and set HF_TOKEN (or write the token to $HF_HOME/token)",
            status.as_u16()
        ),
        404 => format!("HTTP 404 not found{upstream}"),
        code => format!("HTTP {code}{upstream}"),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

impl Http {
    /// `timeout` bounds connecting and every single read; `token` is `(host, token)`.
    pub fn new(timeout: Duration, token: Option<(String, String)>) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the HTTP runtime: {e}"))?;
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .user_agent(concat!("fedp2eft-pipeline/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Http {
            rt,
            client,
            timeout,
            token,
        })
    }

    fn net_error(&self, input: &str, url: &str, e: reqwest::Error) -> FetchError {
        let message = if e.is_timeout() {
            format!(
                "no answer within {} s (timeout; FEDP2EFT_FETCH_TIMEOUT sets it)",
                self.timeout.as_secs()
            )
        } else {
            chain(&e.without_url())
        };
        FetchError::new(input, url, message)
    }

    fn request(&self, url: &str) -> reqwest::RequestBuilder {
        let req = self.client.get(url);
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string));
        match &self.token {
            Some((h, t)) if host.as_deref() == Some(h.as_str()) => {
                req.header(AUTHORIZATION, format!("Bearer {t}"))
            }
            _ => req,
        }
    }

    /// GET a JSON document.
    pub fn get_json(&self, input: &str, url: &str) -> Result<serde_json::Value, FetchError> {
        self.rt.block_on(async {
            let resp = self
                .request(url)
                .send()
                .await
                .map_err(|e| self.net_error(input, url, e))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(FetchError::new(
                    input,
                    url,
                    status_message(status, resp.headers()),
                ));
            }
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| self.net_error(input, url, e))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| FetchError::new(input, url, format!("invalid JSON answer: {e}")))
        })
    }

    /// Downloads `url` into `part`, resuming with an HTTP Range request when `part` already holds
    /// the start of the file. A cut transfer keeps `part` for the next attempt; the caller checks
    /// the digest and renames it into place.
    pub fn download(
        &self,
        input: &str,
        url: &str,
        part: &Path,
        bar: &ProgressBar,
    ) -> Result<(), FetchError> {
        let io = |what: &str, e: std::io::Error| FetchError::io(input, part, what, &e);
        self.rt.block_on(async {
            let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
            let mut req = self.request(url);
            if have > 0 {
                req = req.header(RANGE, format!("bytes={have}-"));
            }
            let mut resp = req
                .send()
                .await
                .map_err(|e| self.net_error(input, url, e))?;
            let status = resp.status();
            let (mut file, offset) = if status == StatusCode::PARTIAL_CONTENT && have > 0 {
                let f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(part)
                    .map_err(|e| io("reopening the partial download", e))?;
                (f, have)
            } else if status.is_success() {
                // The server ignored the range (or there was none): start over.
                let f = std::fs::File::create(part)
                    .map_err(|e| io("creating the download file", e))?;
                (f, 0)
            } else if status == StatusCode::RANGE_NOT_SATISFIABLE {
                // The partial file is not a prefix of this file: drop it; the next run restarts.
                let _ = std::fs::remove_file(part);
                return Err(FetchError::new(
                    input,
                    url,
                    "the partial download does not fit the file (HTTP 416); it was removed, run again",
                ));
            } else {
                return Err(FetchError::new(
                    input,
                    url,
                    status_message(status, resp.headers()),
                ));
            };
            let expected = resp.content_length().map(|n| n + offset);
            if let Some(total) = expected {
                bar.set_length(total);
            }
            bar.set_position(offset);
            let mut written = offset;
            loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        file.write_all(&chunk)
                            .map_err(|e| io("writing the download", e))?;
                        written += chunk.len() as u64;
                        bar.set_position(written);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = file.sync_all();
                        let mut err = self.net_error(input, url, e);
                        err.message = format!(
                            "transfer cut off after {written} bytes ({}); the part is kept and \
                             the next fetch resumes it",
                            err.message
                        );
                        return Err(err);
                    }
                }
            }
            if let Some(total) = expected.filter(|&t| t != written) {
                let _ = file.sync_all();
                return Err(FetchError::new(
                    input,
                    url,
                    format!(
                        "transfer cut off after {written} of {total} bytes; the part is kept and \
                         the next fetch resumes it"
                    ),
                ));
            }
            file.sync_all().map_err(|e| io("syncing the download", e))
        })
    }
}
