//! Progress display: indicatif bars (one for the DAG, one per running instance) on a terminal,
//! plain lines otherwise (CI logs, pipes).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Reporter {
    multi: Option<MultiProgress>,
    dag: Option<ProgressBar>,
    quiet: bool,
}

impl Reporter {
    /// `total` instances to run; bars only when stdout is a terminal.
    pub fn new(total: u64, quiet: bool) -> Self {
        if quiet || !std::io::stdout().is_terminal() {
            return Reporter {
                multi: None,
                dag: None,
                quiet,
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let dag = multi.add(ProgressBar::new(total));
        dag.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:30.cyan/blue}] {pos}/{len} instances {elapsed_precise} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        dag.set_prefix("pipeline");
        dag.enable_steady_tick(Duration::from_millis(200));
        Reporter {
            multi: Some(multi),
            dag: Some(dag),
            quiet,
        }
    }

    pub fn set_total(&self, total: u64) {
        if let Some(d) = &self.dag {
            d.set_length(total);
        }
    }

    /// A bar for one running instance (hidden when not on a terminal).
    pub fn instance_started(&self, id: &str) -> StageProgress {
        match &self.multi {
            Some(m) => {
                let bar = m.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix} {msg}")
                        .expect("valid template"),
                );
                bar.set_prefix(id.to_string());
                bar.enable_steady_tick(Duration::from_millis(200));
                StageProgress { bar: Some(bar) }
            }
            None => {
                if !self.quiet {
                    plain_line(&format!("start  {id}"));
                }
                StageProgress { bar: None }
            }
        }
    }

    pub fn instance_finished(
        &self,
        id: &str,
        outcome: &str,
        seconds: f64,
        progress: StageProgress,
    ) {
        if let Some(bar) = progress.bar {
            bar.finish_and_clear();
            if let Some(m) = &self.multi {
                m.remove(&bar);
            }
        }
        if let Some(d) = &self.dag {
            d.inc(1);
        }
        self.line(&format!("{outcome:<6} {id} ({seconds:.2}s)"));
    }

    /// A line above the bars (or on stdout).
    pub fn line(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.multi {
            Some(m) => {
                let _ = m.println(msg);
            }
            None => plain_line(msg),
        }
    }

    pub fn finish(&self) {
        if let Some(d) = &self.dag {
            d.finish_and_clear();
        }
    }
}

/// Progress of one running instance; cheap to clone, usable from the stage's thread.
#[derive(Clone, Default)]
pub struct StageProgress {
    bar: Option<ProgressBar>,
}

impl StageProgress {
    pub fn hidden() -> Self {
        StageProgress { bar: None }
    }

    pub fn start(&self, total: u64, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_style(
                ProgressStyle::with_template(
                    "  {prefix} [{bar:25.green/white}] {pos}/{len} {msg} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_length(total);
            bar.set_position(0);
            bar.set_message(what.to_string());
            bar.reset_eta();
        }
    }

    pub fn set(&self, pos: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }
}

/// A progress line on stdout. A closed stdout (`run | head`) must not stop the run, so write
/// errors are dropped; `println!` would panic.
fn plain_line(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{msg}");
}
