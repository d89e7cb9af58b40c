//! Classification accuracy (PAPER_NOTES §7): per client on its test split, and per language
//! pooled over that language's clients — Σ correct / Σ total, not the mean of the clients'
//! accuracies.

use std::collections::BTreeMap;

use super::MetricsError;

/// Correct predictions out of a number of examples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccuracyCounts {
    pub correct: u64,
    pub total: u64,
}

impl AccuracyCounts {
    /// correct / total; `None` when there are no examples.
    pub fn accuracy(&self) -> Option<f64> {
        (self.total > 0).then(|| self.correct as f64 / self.total as f64)
    }
}

/// Counts of one client's predictions against its labels.
pub fn client_accuracy<T: PartialEq>(
    predictions: &[T],
    labels: &[T],
) -> Result<AccuracyCounts, MetricsError> {
    if predictions.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            what: "client accuracy",
            left_name: "predictions",
            left: predictions.len(),
            right_name: "labels",
            right: labels.len(),
        });
    }
    let correct = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    Ok(AccuracyCounts {
        correct: correct as u64,
        total: labels.len() as u64,
    })
}

/// Pools per-client counts by language: `(language, counts)` for each client, in any order.
pub fn pooled_accuracy_per_language<'a>(
    clients: impl IntoIterator<Item = (&'a str, AccuracyCounts)>,
) -> BTreeMap<String, AccuracyCounts> {
    let mut pooled: BTreeMap<String, AccuracyCounts> = BTreeMap::new();
    for (language, counts) in clients {
        let entry = pooled.entry(language.to_owned()).or_default();
        entry.correct += counts.correct;
        entry.total += counts.total;
    }
    pooled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_weights_clients_by_size() {
        let a = client_accuracy(&[1, 2, 3, 4], &[1, 2, 3, 0]).unwrap(); // 3/4
        let b = client_accuracy(&["x"], &["y"]).unwrap(); // 0/1
        let c = client_accuracy(&[7, 7], &[7, 7]).unwrap(); // 2/2
        let pooled = pooled_accuracy_per_language([("sw", a), ("sw", b), ("yo", c)]);
        // Pooled 3/5 = 0.6, not the client mean (0.75 + 0) / 2 = 0.375.
        assert_eq!(
            pooled["sw"],
            AccuracyCounts {
                correct: 3,
                total: 5
            }
        );
        assert_eq!(pooled["sw"].accuracy(), Some(0.6));
        assert_eq!(pooled["yo"].accuracy(), Some(1.0));
        assert_eq!(AccuracyCounts::default().accuracy(), None);
    }

    #[test]
    fn mismatched_lengths_are_an_error() {
        let err = client_accuracy(&[1, 2], &[1]).unwrap_err().to_string();
        assert!(err.contains("2 predictions but 1 labels"), "{err}");
    }
}
