//! candle's CPU thread count, fixed once per process.
//!
//! candle 0.11 asks for its thread count on every matmul (`cpu_backend` → `get_num_threads`),
//! and unless `RAYON_NUM_THREADS` is set that falls through to `num_cpus::get_physical`, which
//! reads and parses `/proc/cpuinfo` each time: on multilingual-e5 personalization that was
//! ~10 % of all CPU time (perf: `show_cpuinfo`, `vsnprintf` in the kernel). Setting the
//! variable to the count candle would compute anyway makes the lookup a string parse and leaves
//! the thread count — and so every kernel's blocking and result — unchanged.

/// The variable candle (and rayon) read for the thread count.
pub const THREADS_ENV: &str = "RAYON_NUM_THREADS";

/// Sets `RAYON_NUM_THREADS` to candle's own default when the user has not set it; returns the
/// count in use. Call while the process has a single thread: it writes the environment.
pub fn pin() -> usize {
    match user_count(std::env::var(THREADS_ENV).ok().as_deref()) {
        Some(n) => n,
        None => {
            let n = candle_core::utils::get_num_threads();
            std::env::set_var(THREADS_ENV, n.to_string());
            n
        }
    }
}

/// The count a user's `RAYON_NUM_THREADS` sets, as rayon and candle read it (a positive integer;
/// anything else means "not set").
fn user_count(value: Option<&str>) -> Option<usize> {
    value
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // `pin` itself writes the environment, which a multi-threaded test harness must not do.
    #[test]
    fn only_a_positive_count_counts_as_set() {
        assert_eq!(user_count(Some("3")), Some(3));
        assert_eq!(user_count(Some(" 2 ")), Some(2));
        assert_eq!(user_count(Some("0")), None);
        assert_eq!(user_count(Some("many")), None);
        assert_eq!(user_count(None), None);
    }
}
