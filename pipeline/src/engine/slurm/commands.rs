//! The Slurm commands the driver runs, and the parsing of what they print. One `squeue` per
//! poll for all of a run's jobs (selected by job name, so a purged id is not an error); for a
//! job gone from the queue, `scontrol show job` while the controller still remembers it
//! (`MinJobAge`, 300 s by default), then `sacct` where accounting is enabled.

use std::collections::BTreeMap;
use std::process::Command;

/// A command's failure, with what it printed.
fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("{shown}: {e} (is Slurm installed and on PATH?)")),
    }
}

/// Submits a batch script; returns the job id (`--parsable` prints `ID` or `ID;CLUSTER`).
pub fn sbatch(script: &std::path::Path, args: &[String]) -> Result<String, String> {
    let out = run(Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .arg(script))?;
    parse_sbatch(&out).ok_or_else(|| format!("sbatch printed no job id: {out:?}"))
}

pub fn parse_sbatch(out: &str) -> Option<String> {
    let id = out.trim().split(';').next()?.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_string())
}

/// States of the queued jobs named `name`, one entry per job or array task (`ID` / `ID_TASK`).
pub fn squeue(name: &str) -> Result<BTreeMap<String, String>, String> {
    let out = run(Command::new("squeue")
        .args(["-h", "-r", "-o", "%i|%T", "--name"])
        .arg(name))?;
    Ok(parse_squeue(&out))
}

pub fn parse_squeue(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.trim().split_once('|'))
        .map(|(id, st)| (id.trim().to_string(), st.trim().to_string()))
        .collect()
}

/// The final state of a job that left the queue, as far as Slurm still knows it.
pub fn final_state(job: &str) -> Option<String> {
    if let Ok(out) = run(Command::new("scontrol").args(["show", "job", "-o", job])) {
        if let Some(st) = parse_scontrol_state(&out) {
            return Some(st);
        }
    }
    let out = run(Command::new("sacct").args(["-n", "-P", "-X", "-o", "State", "-j", job])).ok()?;
    out.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap_or(l).to_string())
}

pub fn parse_scontrol_state(out: &str) -> Option<String> {
    out.split_whitespace()
        .find_map(|f| f.strip_prefix("JobState="))
        .map(str::to_string)
}

/// Cancels jobs (ids or `ID_TASK`s); errors are reported by the caller, not fatal.
pub fn scancel(jobs: &[String]) -> Result<(), String> {
    if jobs.is_empty() {
        return Ok(());
    }
    run(Command::new("scancel").args(jobs)).map(|_| ())
}

/// Whether `sbatch` can be run at all.
pub fn available() -> Result<(), String> {
    run(Command::new("sbatch").arg("--version")).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_parsed() {
        assert_eq!(parse_sbatch("123\n").as_deref(), Some("123"));
        assert_eq!(parse_sbatch("77;cluster\n").as_deref(), Some("77"));
        assert_eq!(parse_sbatch("Submitted batch job 5"), None);
        let q = parse_squeue("2_2|PENDING\n2_0|RUNNING\n9|COMPLETING\n\n");
        assert_eq!(q.len(), 3);
        assert_eq!(q["2_0"], "RUNNING");
        assert_eq!(q["9"], "COMPLETING");
        let sc = "JobId=4 ArrayJobId=2 ArrayTaskId=1 JobName=x JobState=TIMEOUT Reason=TimeLimit";
        assert_eq!(parse_scontrol_state(sc).as_deref(), Some("TIMEOUT"));
        assert_eq!(parse_scontrol_state("nothing"), None);
    }
}
