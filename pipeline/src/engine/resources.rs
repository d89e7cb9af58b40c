//! What a stage instance asks a cluster for: CPUs, memory, GPUs and a time limit. Each kind has
//! defaults (`StageKind::default_resources`), a manifest stage's `resources:` overrides them
//! field by field, and the command line's overrides win over both. Resources never enter a
//! cache key: they change where and how fast an instance runs, not its bytes.

use serde::{Deserialize, Serialize};

/// Requested resources; `None` = not set at this level.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Slurm's `--mem` syntax: an integer with an optional K, M, G or T suffix (default M).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// Slurm's `--time` syntax: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM` or `D-HH:MM:SS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

impl Resources {
    pub fn new(cpus: u32, mem: &str, time: &str) -> Self {
        Resources {
            cpus: Some(cpus),
            mem: Some(mem.into()),
            gpus: None,
            time: Some(time.into()),
        }
    }

    /// `self` with every field `over` sets replaced.
    pub fn overridden_by(&self, over: &Resources) -> Resources {
        Resources {
            cpus: over.cpus.or(self.cpus),
            mem: over.mem.clone().or_else(|| self.mem.clone()),
            gpus: over.gpus.or(self.gpus),
            time: over.time.clone().or_else(|| self.time.clone()),
        }
    }

    /// Checks every field's syntax; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.cpus == Some(0) {
            return Err("`cpus` must be at least 1".into());
        }
        if let Some(m) = &self.mem {
            if !valid_mem(m) {
                return Err(format!(
                    "`mem` {m:?} is not a size like 4096, 512M, 8G or 1T"
                ));
            }
        }
        if let Some(t) = &self.time {
            if !valid_time(t) {
                return Err(format!(
                    "`time` {t:?} is not a Slurm time limit (MM, HH:MM:SS, D-HH:MM:SS, ...)"
                ));
            }
        }
        Ok(())
    }

    /// The `sbatch` options these resources become.
    pub fn sbatch_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(c) = self.cpus {
            a.push(format!("--cpus-per-task={c}"));
        }
        if let Some(m) = &self.mem {
            a.push(format!("--mem={m}"));
        }
        if let Some(g) = self.gpus.filter(|&g| g > 0) {
            a.push(format!("--gres=gpu:{g}"));
        }
        if let Some(t) = &self.time {
            a.push(format!("--time={t}"));
        }
        a
    }
}

fn valid_mem(m: &str) -> bool {
    let digits = m.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    m.len() - digits.len() <= 1
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.parse::<u64>().is_ok_and(|n| n > 0)
}

fn valid_time(t: &str) -> bool {
    let num = |s: &str| !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit());
    match t.split_once('-') {
        Some((days, rest)) => {
            let parts: Vec<&str> = rest.split(':').collect();
            num(days) && (1..=3).contains(&parts.len()) && parts.iter().all(|p| num(p))
        }
        None => {
            let parts: Vec<&str> = t.split(':').collect();
            (1..=3).contains(&parts.len()) && parts.iter().all(|p| num(p))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_the_fields_they_set() {
        let base = Resources::new(4, "16G", "24:00:00");
        let over = Resources {
            cpus: Some(1),
            ..Default::default()
        };
        let r = base.overridden_by(&over);
        assert_eq!(r.cpus, Some(1));
        assert_eq!(r.mem.as_deref(), Some("16G"));
        assert_eq!(
            r.sbatch_args(),
            ["--cpus-per-task=1", "--mem=16G", "--time=24:00:00"]
        );
    }

    #[test]
    fn syntax_is_checked_per_field() {
        for ok in ["4096", "512M", "8G", "1t"] {
            assert!(valid_mem(ok), "{ok}");
        }
        for bad in ["", "G", "8GB", "-1G", "0", "8.5G"] {
            assert!(!valid_mem(bad), "{bad}");
        }
        for ok in ["30", "30:00", "4:00:00", "1-12", "2-00:30:00"] {
            assert!(valid_time(ok), "{ok}");
        }
        for bad in ["", "1h", "1:2:3:4", "1-", "-3", "a:00"] {
            assert!(!valid_time(bad), "{bad}");
        }
        let e = Resources {
            mem: Some("lots".into()),
            ..Default::default()
        }
        .check()
        .unwrap_err();
        assert!(e.contains("`mem`"), "{e}");
        assert!(Resources {
            gpus: Some(1),
            ..Default::default()
        }
        .sbatch_args()
        .contains(&"--gres=gpu:1".to_string()));
    }
}
