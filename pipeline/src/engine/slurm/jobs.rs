//! `workdir/slurm/jobs.json`: the jobs a driver submitted, by instance key, so a driver that
//! was killed can re-attach to jobs still queued or running instead of submitting duplicates,
//! and `status` can show queued / running instances with their Slurm ids. Replaced atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub instance: String,
    /// `ID` or `ARRAYID_TASK`.
    pub job: String,
    /// Last state the driver saw (`PENDING`, `RUNNING`, ... or `ENDED`).
    pub state: String,
    pub attempt: u32,
    pub submitted: String,
    /// The job's Slurm output file.
    pub log: PathBuf,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsFile {
    pub jobs: BTreeMap<String, JobRecord>,
}

pub fn path(workdir: &Path) -> PathBuf {
    workdir.join("slurm").join("jobs.json")
}

impl JobsFile {
    /// The record, or an empty one when there is none or it is unreadable (it only informs).
    pub fn load(workdir: &Path) -> Self {
        std::fs::read(path(workdir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, workdir: &Path) -> std::io::Result<()> {
        let p = path(workdir);
        let dir = p.parent().expect("jobs file has a parent");
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".jobs.json.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(JobsFile::load(dir.path()), JobsFile::default());
        let mut f = JobsFile::default();
        f.jobs.insert(
            "k".into(),
            JobRecord {
                instance: "a[x=1]".into(),
                job: "12_3".into(),
                state: "PENDING".into(),
                attempt: 1,
                submitted: "t".into(),
                log: "/w/slurm/logs/12_3.out".into(),
            },
        );
        f.save(dir.path()).unwrap();
        assert_eq!(JobsFile::load(dir.path()), f);
    }
}
