//! Mean and sample standard deviation over seeds, as reported in the result tables.

/// Arithmetic mean, summed in the given order (callers pass seeds in ascending order so the
/// result is bit-identical across runs). `None` for an empty slice.
pub fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    Some(values.iter().sum::<f64>() / values.len() as f64)
}

/// Sample standard deviation (divisor n − 1, as `numpy.std(ddof=1)` / pandas' default).
/// `None` with fewer than two values: one seed gives no spread estimate, and the tables show
/// the mean alone rather than a misleading "± 0.00".
pub fn sample_sd(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let m = mean(values)?;
    let ss: f64 = values.iter().map(|v| (v - m) * (v - m)).sum();
    Some((ss / (values.len() - 1) as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_sd_uses_n_minus_one() {
        // numpy.std([1, 2, 4], ddof=1) = 1.5275252316519468
        let sd = sample_sd(&[1.0, 2.0, 4.0]).unwrap();
        assert!((sd - 1.527_525_231_651_946_8).abs() < 1e-15, "{sd}");
        assert_eq!(mean(&[1.0, 2.0, 4.0]), Some(7.0 / 3.0));
    }

    #[test]
    fn one_value_has_no_sd_and_none_has_no_mean() {
        assert_eq!(sample_sd(&[3.0]), None);
        assert_eq!(mean(&[]), None);
        assert_eq!(sample_sd(&[2.0, 2.0]), Some(0.0));
    }
}
