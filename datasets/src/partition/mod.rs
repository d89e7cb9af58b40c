//! Dataset partitioners: read a dataset with [`crate::readers`], form the seen and unseen
//! pools, deal rows to clients with [`crate::lda`], and return a [`PartitionedDataset`]
//! (nothing is written here; see [`crate::write_partition`]).
//!
//! Client ids are unique across both pools of a dataset: seen clients first, numbered
//! language by language (`lang_index × clients_per_language + c`), then the unseen ones —
//! the authors' numbering. Fed-Aya keeps the client's index in the file.

mod fed_aya;
mod masakhanews;
mod xnli;

pub use fed_aya::{partition_aya_test_sets, partition_fed_aya};
pub use masakhanews::partition_masakhanews;
pub use xnli::partition_xnli;

use rand::seq::SliceRandom;

use crate::example::{Client, Example};
use crate::lda::UnitAssignment;
use crate::rng::DataRng;

/// A seeded permutation of `rows`, cut to `cap` when given (the smoke-run subsample).
fn shuffled_capped<T>(mut rows: Vec<T>, cap: Option<usize>, rng: &mut DataRng) -> Vec<T> {
    rows.shuffle(rng);
    if let Some(cap) = cap {
        rows.truncate(cap);
    }
    rows
}

/// Builds a unit's clients from its dealt row indices.
fn clients_from_assignment(
    train: &[Example],
    test: &[Example],
    assignment: &UnitAssignment,
    first_id: u32,
    language: &str,
) -> Vec<Client> {
    assignment
        .train
        .iter()
        .zip(&assignment.test)
        .enumerate()
        .map(|(c, (tr, te))| Client {
            client_id: first_id + c as u32,
            language: language.to_string(),
            train: tr.iter().map(|&i| train[i].clone()).collect(),
            test: te.iter().map(|&i| test[i].clone()).collect(),
        })
        .collect()
}

/// Number of test rows of a per-client split, as HF `train_test_split(test_size=f)`:
/// ceil(f · n).
fn test_rows(n: usize, fraction: f64) -> usize {
    ((fraction * n as f64).ceil() as usize).min(n)
}

/// The most frequent language among `rows` (ties: alphabetically first).
fn dominant_language(rows: &[Example]) -> String {
    most_frequent(rows.iter().map(|r| r.language.as_str()))
}

/// The most frequent of `languages` (ties: alphabetically first; empty: ""): a client's
/// language is the dominant language of its train rows.
pub(crate) fn most_frequent<'a>(languages: impl IntoIterator<Item = &'a str>) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for l in languages {
        *counts.entry(l).or_default() += 1;
    }
    let mut best: Option<(&str, usize)> = None;
    for (l, n) in counts {
        if best.is_none_or(|(_, b)| n > b) {
            best = Some((l, n));
        }
    }
    best.map(|(l, _)| l.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_rows_rounds_up_like_hf() {
        assert_eq!(test_rows(10, 0.2), 2);
        assert_eq!(test_rows(11, 0.2), 3);
        assert_eq!(test_rows(2, 0.2), 1);
    }
}
