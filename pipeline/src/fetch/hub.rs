//! The Hub's HTTP protocol: `GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true` gives the
//! commit and every file (size, git blob id, LFS sha256); files are
//! `{endpoint}/{repo}/resolve/{commit}/{file}` (answered with a redirect to the CDN).

use serde::Deserialize;

use super::digest::Expected;
use super::error::FetchError;
use super::http::Http;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFile {
    pub path: String,
    pub size: Option<u64>,
    pub expected: Option<Expected>,
}

#[derive(Debug, Clone)]
pub struct RevisionInfo {
    pub commit: String,
    pub files: Vec<RepoFile>,
}

#[derive(Deserialize)]
struct ApiRevision {
    sha: String,
    #[serde(default)]
    siblings: Vec<ApiSibling>,
}

#[derive(Deserialize)]
struct ApiSibling {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default, rename = "blobId")]
    blob_id: Option<String>,
    #[serde(default)]
    lfs: Option<ApiLfs>,
}

#[derive(Deserialize)]
struct ApiLfs {
    sha256: String,
    #[serde(default)]
    size: Option<u64>,
}

/// `%`-escapes a revision for a URL path segment (branches may contain `/`).
fn escape(rev: &str) -> String {
    rev.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn revision_url(endpoint: &str, repo: &str, rev: &str) -> String {
    format!(
        "{endpoint}/api/models/{repo}/revision/{}?blobs=true",
        escape(rev)
    )
}

pub fn resolve_url(endpoint: &str, repo: &str, commit: &str, file: &str) -> String {
    format!("{endpoint}/{repo}/resolve/{commit}/{file}")
}

/// Is `rev` a full commit id (then no lookup is needed offline)?
pub fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn revision_info(
    http: &Http,
    endpoint: &str,
    input: &str,
    repo: &str,
    rev: &str,
) -> Result<RevisionInfo, FetchError> {
    let url = revision_url(endpoint, repo, rev);
    let value = http.get_json(input, &url).map_err(|mut e| {
        if e.message.starts_with("HTTP 404") {
            e.message = format!(
                "repository `{repo}` or its revision `{rev}` not found ({})",
                e.message
            );
        }
        e
    })?;
    let api: ApiRevision = serde_json::from_value(value)
        .map_err(|e| FetchError::new(input, &url, format!("unexpected answer: {e}")))?;
    if !is_commit(&api.sha) {
        return Err(FetchError::new(
            input,
            &url,
            format!("unexpected commit id {:?}", api.sha),
        ));
    }
    let files = api
        .siblings
        .into_iter()
        .map(|s| {
            let (expected, size) = match s.lfs {
                Some(l) => (Some(Expected::Sha256(l.sha256)), l.size.or(s.size)),
                None => (s.blob_id.map(Expected::GitBlob), s.size),
            };
            RepoFile {
                path: s.rfilename,
                size,
                expected,
            }
        })
        .collect();
    Ok(RevisionInfo {
        commit: api.sha,
        files,
    })
}

/// The files a model loader reads: configs, tokenizers and the weights — safetensors when the
/// repo has them, else the PyTorch checkpoint (for the importer). Other frameworks' weights
/// (TF, Flax, ONNX, GGUF) and sub-folders are left out.
pub fn wanted(files: &[RepoFile]) -> Vec<RepoFile> {
    let top = |f: &&RepoFile| !f.path.contains('/');
    let has_safetensors = files
        .iter()
        .filter(top)
        .any(|f| f.path.ends_with(".safetensors"));
    files
        .iter()
        .filter(top)
        .filter(|f| {
            let p = f.path.as_str();
            p.ends_with(".json")
                || p.ends_with(".txt")
                || p.ends_with(".model")
                || p.ends_with(".safetensors")
                || (!has_safetensors
                    && p.starts_with("pytorch_model")
                    && (p.ends_with(".bin") || p.ends_with(".bin.index.json")))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(p: &str) -> RepoFile {
        RepoFile {
            path: p.into(),
            size: None,
            expected: None,
        }
    }

    #[test]
    fn picks_safetensors_over_pytorch_and_leaves_other_frameworks_out() {
        let all = [
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "tf_model.h5",
            "tokenizer.json",
            "vocab.txt",
            "onnx/model.onnx",
            "flax_model.msgpack",
        ]
        .map(f);
        let got: Vec<_> = wanted(&all).into_iter().map(|f| f.path).collect();
        assert_eq!(
            got,
            [
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "vocab.txt"
            ]
        );
        let pt = ["config.json", "pytorch_model.bin"].map(f);
        assert_eq!(wanted(&pt).len(), 2);
        assert_eq!(escape("refs/pr/1"), "refs%2Fpr%2F1");
        assert!(is_commit(&"a".repeat(40)) && !is_commit("main"));
    }
}
