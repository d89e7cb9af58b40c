//! What a run is asked to do: the command line's `run` options, and which backend executes the
//! instances with its settings. Plain data, so the executor, the backends and the CLI share it
//! without importing each other.

use std::time::Duration;

use super::resources::Resources;

/// Which backend runs the instances.
#[derive(Debug, Clone, Default)]
pub enum Executor {
    /// Threads of this process (`-j N`).
    #[default]
    Local,
    /// One Slurm job (or job-array task) per instance, on the shared workdir.
    Slurm(SlurmOptions),
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub jobs: usize,
    pub keep_going: bool,
    /// `--stage`: run these stages and what they need (empty = all).
    pub stages: Vec<String>,
    /// Recompute the `--stage` stages (or everything) even if cached.
    pub force: bool,
    pub dry_run: bool,
    pub quiet: bool,
    pub executor: Executor,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: 1,
            keep_going: false,
            stages: Vec::new(),
            force: false,
            dry_run: false,
            quiet: true,
            executor: Executor::Local,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub account: Option<String>,
    /// Jobs (array tasks included) queued or running at once.
    pub max_jobs: usize,
    /// Resubmissions of an instance whose job failed or ended without committing.
    pub retries: u32,
    pub poll: Duration,
    /// How long a job may be gone from the queue before its missing outcome counts as lost.
    pub grace: Duration,
    /// Command-line overrides of every stage's resources.
    pub resources: Resources,
}

impl Default for SlurmOptions {
    fn default() -> Self {
        SlurmOptions {
            partition: None,
            account: None,
            max_jobs: 100,
            retries: 2,
            poll: Duration::from_secs(5),
            grace: Duration::from_secs(30),
            resources: Resources::default(),
        }
    }
}
