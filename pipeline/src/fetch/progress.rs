//! One indicatif bar per downloaded file (bytes, rate, ETA) on a terminal; hidden otherwise.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Bars {
    multi: Option<MultiProgress>,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        let on = !quiet && std::io::stderr().is_terminal();
        Bars {
            multi: on.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    /// A byte bar for `name` (length set once the server tells it).
    pub fn file(&self, name: &str, size: Option<u64>) -> ProgressBar {
        let Some(m) = &self.multi else {
            return ProgressBar::hidden();
        };
        let bar = m.add(ProgressBar::new(size.unwrap_or(0)));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:40!} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(name.to_string());
        bar
    }
}
