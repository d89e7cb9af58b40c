//! The batch script of one submission: a single instance, or a job array whose task
//! `$SLURM_ARRAY_TASK_ID` runs the key on that line of the script's key list.

use std::path::Path;

/// Everything the script needs to run `pipeline exec-instance` on the shared workdir.
pub struct JobScript<'a> {
    pub exe: &'a Path,
    pub manifest: &'a Path,
    pub workdir: &'a Path,
    pub keys: &'a [String],
    pub force: bool,
}

/// Single-quotes a word for bash.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl JobScript<'_> {
    pub fn text(&self) -> String {
        let keys: Vec<String> = self.keys.iter().map(|k| shell_quote(k)).collect();
        let pick = if self.keys.len() == 1 {
            "key=${keys[0]}".to_string()
        } else {
            "key=${keys[$SLURM_ARRAY_TASK_ID]}".to_string()
        };
        format!(
            "#!/bin/bash\n\
             # Written by `pipeline run --executor slurm`: one stage instance per task.\n\
             set -euo pipefail\n\
             keys=({keys})\n\
             {pick}\n\
             # candle's threads: the CPUs Slurm gave this task, not the node's.\n\
             export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-${{RAYON_NUM_THREADS:-1}}}}\"\n\
             exec {exe} exec-instance {manifest} --workdir {workdir}{force} \"$key\"\n",
            keys = keys.join(" "),
            exe = shell_quote(&self.exe.to_string_lossy()),
            manifest = shell_quote(&self.manifest.to_string_lossy()),
            workdir = shell_quote(&self.workdir.to_string_lossy()),
            force = if self.force { " --force" } else { "" },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_array_picks_its_key_by_task_id() {
        let keys = vec!["k0".to_string(), "k1".to_string()];
        let s = JobScript {
            exe: Path::new("/opt/it's/pipeline"),
            manifest: Path::new("/m.yaml"),
            workdir: Path::new("/w"),
            keys: &keys,
            force: false,
        }
        .text();
        assert!(s.contains("keys=('k0' 'k1')"), "{s}");
        assert!(s.contains("key=${keys[$SLURM_ARRAY_TASK_ID]}"), "{s}");
        assert!(
            s.contains(r"exec '/opt/it'\''s/pipeline' exec-instance '/m.yaml' --workdir '/w' "),
            "{s}"
        );
        let one = JobScript {
            keys: &keys[..1],
            force: true,
            exe: Path::new("/p"),
            manifest: Path::new("/m"),
            workdir: Path::new("/w"),
        }
        .text();
        assert!(
            one.contains("key=${keys[0]}") && one.contains("--force \"$key\""),
            "{one}"
        );
    }
}
