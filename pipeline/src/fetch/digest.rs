//! Content digests a pinned file is checked against: sha256 (Hub LFS files, our pins) and git blob
//! ids (the sha1 of `blob <len>\0<bytes>`, what GitHub and the Hub report for plain files).

use std::io::Read;
use std::path::Path;

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// What a file must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Sha256(String),
    GitBlob(String),
}

impl Expected {
    pub fn describe(&self) -> String {
        match self {
            Expected::Sha256(h) => format!("sha256 {h}"),
            Expected::GitBlob(h) => format!("git blob id {h}"),
        }
    }
}

/// Both digests of a file, computed in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigests {
    pub sha256: String,
    pub git_blob: String,
    pub size: u64,
}

impl FileDigests {
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let size = std::fs::metadata(path)?.len();
        let mut sha = Sha256::new();
        let mut blob = Sha1::new();
        blob.update(format!("blob {size}\0").as_bytes());
        let mut f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            blob.update(&buf[..n]);
        }
        Ok(FileDigests {
            sha256: hex::encode(sha.finalize()),
            git_blob: hex::encode(blob.finalize()),
            size,
        })
    }

    /// `None` when the file matches, else what it hashed to instead.
    pub fn mismatch(&self, expected: &Expected) -> Option<String> {
        match expected {
            Expected::Sha256(h) if !h.eq_ignore_ascii_case(&self.sha256) => {
                Some(format!("sha256 {}", self.sha256))
            }
            Expected::GitBlob(h) if !h.eq_ignore_ascii_case(&self.git_blob) => {
                Some(format!("git blob id {}", self.git_blob))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_sha256sum_and_git_hash_object() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello\n").unwrap();
        let d = FileDigests::of(&p).unwrap();
        // `printf 'hello\n' | sha256sum` and `| git hash-object --stdin`.
        assert_eq!(
            d.sha256,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        assert_eq!(d.git_blob, "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(d.mismatch(&Expected::GitBlob(d.git_blob.clone())), None);
        assert!(d
            .mismatch(&Expected::Sha256("00".repeat(32)))
            .unwrap()
            .contains(&d.sha256));
    }
}
