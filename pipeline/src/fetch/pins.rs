//! The pinned dataset files (`pins/<dataset>.tsv`): each file's place below the data root, the
//! GitHub repository, commit and path it is a byte-identical copy of, and its sha256 or git blob
//! id. The pins are those of `../shared/data/PROVENANCE.tsv`; MasakhaNEWS adds the six `train.tsv`
//! files that copy lacks, pinned by the blob ids of the upstream tree.

use super::digest::Expected;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedFile {
    /// Below the data root, e.g. `masakhanews/amh/train.tsv`.
    pub path: String,
    /// `(owner/repo, commit, path in the repository)`; `None` for files that exist only in a
    /// mirror (our XNLI files are built from upstream, not copied).
    pub upstream: Option<(String, String, String)>,
    pub expected: Expected,
    pub size: Option<u64>,
}

/// The datasets a manifest may pin by name.
pub const DATASETS: &[&str] = &["masakhanews", "xnli", "fedaya"];

fn table(name: &str) -> Option<&'static str> {
    Some(match name {
        "masakhanews" => include_str!("pins/masakhanews.tsv"),
        "xnli" => include_str!("pins/xnli.tsv"),
        "fedaya" => include_str!("pins/fedaya.tsv"),
        _ => return None,
    })
}

fn field(s: &str) -> Option<&str> {
    Some(s).filter(|s| *s != "-" && !s.is_empty())
}

/// Parses a pin table (tab-separated, `#` comments, `-` for an absent field).
pub fn parse(text: &str) -> Result<Vec<PinnedFile>, String> {
    let mut files = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let [path, repo, commit, src, sha, blob, size] = cols[..] else {
            return Err(format!("line {}: expected 7 tab-separated fields", i + 1));
        };
        let expected = match (field(sha), field(blob)) {
            (Some(h), _) => Expected::Sha256(h.to_string()),
            (None, Some(b)) => Expected::GitBlob(b.to_string()),
            (None, None) => return Err(format!("line {}: {path} has no digest", i + 1)),
        };
        let upstream = match (field(repo), field(commit), field(src)) {
            (Some(r), Some(c), Some(s)) => Some((r.into(), c.into(), s.into())),
            _ => None,
        };
        let size = match field(size) {
            Some(s) => Some(
                s.parse()
                    .map_err(|_| format!("line {}: bad size {s:?}", i + 1))?,
            ),
            None => None,
        };
        files.push(PinnedFile {
            path: path.to_string(),
            upstream,
            expected,
            size,
        });
    }
    Ok(files)
}

/// The pinned files of a dataset, `None` for an unknown name.
pub fn dataset(name: &str) -> Option<Vec<PinnedFile>> {
    table(name).map(|t| parse(t).expect("shipped pin tables parse"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_pins_cover_all_sixteen_masakhanews_languages() {
        for d in DATASETS {
            assert!(!dataset(d).unwrap().is_empty(), "{d}");
        }
        let m = dataset("masakhanews").unwrap();
        let train: Vec<_> = m
            .iter()
            .filter(|f| f.path.ends_with("/train.tsv"))
            .collect();
        assert_eq!(train.len(), 16);
        let amh = m
            .iter()
            .find(|f| f.path == "masakhanews/amh/train.tsv")
            .unwrap();
        assert_eq!(
            amh.expected,
            Expected::GitBlob("3bfd46585aefaea5ecc90d470ea92798622bdfca".into())
        );
        assert!(dataset("nope").is_none());
        assert!(parse("a\tb\n").unwrap_err().contains("line 1"));
    }
}
