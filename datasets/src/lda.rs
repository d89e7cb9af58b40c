//! Latent Dirichlet Allocation partitioning (Hsu et al. 2019): a clients × labels
//! proportion matrix drawn from Dirichlet(α) decides how each label's rows are dealt among
//! the clients. Two dealing rules (see [`DealingRule`]); the default follows the authors'
//! code (flwr 0.19 `create_lda_partitions`, SamsungLabs/fedp2eft `src/data/fl_dataset.py`).

use rand::seq::SliceRandom;
use rand::Rng;

use crate::config::{DealingRule, LdaParams, MatrixSharing};
use crate::error::{DatasetError, Result};
use crate::rng::{dirichlet, rng_for, DataRng};

/// Row-major clients × labels matrix; each row is one client's label distribution.
pub type ProportionMatrix = Vec<Vec<f64>>;

/// One client's label distribution per row, as flwr's `rng.dirichlet(alpha, size=K)`.
pub fn draw_matrix(
    rng: &mut DataRng,
    alpha: f64,
    clients: usize,
    labels: usize,
) -> ProportionMatrix {
    (0..clients)
        .map(|_| dirichlet(rng, alpha, labels))
        .collect()
}

/// Deals rows (given by their label ids, all < `n_labels`) among `matrix.len()` clients.
/// Returns each client's row indices (into `labels`) in dealing order.
pub fn deal(
    labels: &[u32],
    n_labels: usize,
    matrix: &ProportionMatrix,
    rule: DealingRule,
    rng: &mut DataRng,
) -> Vec<Vec<usize>> {
    match rule {
        DealingRule::Sequential => deal_sequential(labels, n_labels, matrix, rng),
        DealingRule::Proportional => deal_proportional(labels, n_labels, matrix, rng),
    }
}

/// flwr's `exclude_classes_and_normalize`: exhausted classes get probability 0 and every
/// other class gets +1e-5 (so a class the matrix gave ~0 can still absorb the leftovers);
/// the quirk that the +eps is re-applied at every call is kept.
fn exclude_and_normalize(dist: &mut [f64], empty: &[bool]) {
    const EPS: f64 = 1e-5;
    for (p, &e) in dist.iter_mut().zip(empty) {
        *p = if e { 0.0 } else { *p + EPS };
    }
    let sum: f64 = dist.iter().sum::<f64>() + f64::EPSILON;
    dist.iter_mut().for_each(|p| *p /= sum);
}

fn deal_sequential(
    labels: &[u32],
    n_labels: usize,
    matrix: &ProportionMatrix,
    rng: &mut DataRng,
) -> Vec<Vec<usize>> {
    let k = matrix.len();
    let n = labels.len();
    // flwr: shuffle, then sort by label, giving one shuffled list per class; draws pop
    // from the end of a class's list.
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let mut per_class: Vec<Vec<usize>> = vec![Vec::new(); n_labels];
    for i in order {
        per_class[labels[i] as usize].push(i);
    }
    let mut empty: Vec<bool> = per_class.iter().map(|c| c.is_empty()).collect();
    // flwr: row j goes to client j mod K, so the first n mod K clients get one more row.
    let sizes: Vec<usize> = (0..k).map(|c| n / k + usize::from(c < n % k)).collect();
    let mut out = Vec::with_capacity(k);
    for (client, &size) in sizes.iter().enumerate() {
        let mut dist = matrix[client].clone();
        exclude_and_normalize(&mut dist, &empty);
        let mut rows = Vec::with_capacity(size);
        for _ in 0..size {
            let class = sample_class(&dist, &empty, rng);
            let row = per_class[class].pop().expect("sampled class is non-empty");
            rows.push(row);
            if per_class[class].is_empty() {
                empty[class] = true;
                exclude_and_normalize(&mut dist, &empty);
            }
        }
        out.push(rows);
    }
    out
}

/// Inverse-CDF draw of one class; rounding can leave the CDF just under 1, in which case
/// the last non-empty class takes the draw.
fn sample_class(dist: &[f64], empty: &[bool], rng: &mut DataRng) -> usize {
    let u: f64 = rng.random::<f64>();
    let mut acc = 0.0;
    for (c, (&p, &e)) in dist.iter().zip(empty).enumerate() {
        if e {
            continue;
        }
        acc += p;
        if u < acc {
            return c;
        }
    }
    empty
        .iter()
        .rposition(|e| !e)
        .expect("at least one class has rows left while rows are being dealt")
}

fn deal_proportional(
    labels: &[u32],
    n_labels: usize,
    matrix: &ProportionMatrix,
    rng: &mut DataRng,
) -> Vec<Vec<usize>> {
    let k = matrix.len();
    let mut per_class: Vec<Vec<usize>> = vec![Vec::new(); n_labels];
    for (i, &l) in labels.iter().enumerate() {
        per_class[l as usize].push(i);
    }
    let mut out = vec![Vec::new(); k];
    for (class, rows) in per_class.iter_mut().enumerate() {
        if rows.is_empty() {
            continue;
        }
        rows.shuffle(rng);
        let column: Vec<f64> = matrix.iter().map(|row| row[class]).collect();
        let total: f64 = column.iter().sum();
        // NIID-Bench: cut points = floor(cumsum(p) · n_k); the last client takes the rest.
        let mut start = 0;
        let mut acc = 0.0;
        for (client, &p) in column.iter().enumerate() {
            let end = if client + 1 == k {
                rows.len()
            } else {
                acc += if total > 0.0 {
                    p / total
                } else {
                    1.0 / k as f64
                };
                ((acc * rows.len() as f64).floor() as usize).clamp(start, rows.len())
            };
            out[client].extend_from_slice(&rows[start..end]);
            start = end;
        }
    }
    out
}

/// One (pool, language) group of rows to be dealt among its clients.
#[derive(Debug, Clone)]
pub struct DealUnit {
    /// Human-readable name used in seeds and errors, e.g. `seen/de`.
    pub key: String,
    pub train_labels: Vec<u32>,
    /// May be empty when the caller splits train/test after dealing (Aya test sets).
    pub test_labels: Vec<u32>,
    pub clients: usize,
    /// Fewest train rows a client may get before the matrix is re-drawn (≥ 1).
    pub min_train_rows: usize,
}

/// Per-client row indices of one unit.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitAssignment {
    pub train: Vec<Vec<usize>>,
    pub test: Vec<Vec<usize>>,
}

/// Deals every unit with the matrix policy of `params`; a unit leaving a client without
/// train rows re-draws its matrix (the shared matrix: all units are re-dealt). Returns the
/// assignments and the number of re-draws.
pub fn deal_units(
    units: &[DealUnit],
    n_labels: usize,
    params: &LdaParams,
    seed: u64,
) -> Result<(Vec<UnitAssignment>, u32)> {
    params.validate()?;
    for u in units {
        if u.train_labels.len() < u.clients * u.min_train_rows.max(1) {
            return Err(DatasetError::MoreClientsThanRows {
                unit: u.key.clone(),
                split: "train",
                rows: u.train_labels.len(),
                clients: u.clients,
            });
        }
        if !u.test_labels.is_empty() && u.test_labels.len() < u.clients {
            return Err(DatasetError::MoreClientsThanRows {
                unit: u.key.clone(),
                split: "test",
                rows: u.test_labels.len(),
                clients: u.clients,
            });
        }
    }
    let deal_one = |u: &DealUnit, matrix: &ProportionMatrix, attempt: u32| {
        let mut rng = rng_for(
            seed,
            &["lda-deal".into(), u.key.as_str().into(), attempt.into()],
        );
        let train = deal(&u.train_labels, n_labels, matrix, params.dealing, &mut rng);
        let test = deal(&u.test_labels, n_labels, matrix, params.dealing, &mut rng);
        UnitAssignment { train, test }
    };
    let ok = |(u, a): (&DealUnit, &UnitAssignment)| {
        a.train.iter().all(|c| c.len() >= u.min_train_rows.max(1))
    };
    let mut redraws = 0u32;
    match params.matrix {
        MatrixSharing::Shared => {
            let clients = units.iter().map(|u| u.clients).max().unwrap_or(0);
            for attempt in 0..=params.max_redraws {
                let mut rng = rng_for(seed, &["lda-matrix".into(), attempt.into()]);
                let matrix = draw_matrix(&mut rng, params.alpha, clients, n_labels);
                let out: Vec<UnitAssignment> = units
                    .iter()
                    .map(|u| deal_one(u, &matrix[..u.clients].to_vec(), attempt))
                    .collect();
                if units.iter().zip(&out).all(ok) {
                    return Ok((out, redraws));
                }
                redraws += 1;
            }
            Err(DatasetError::PartitionImpossible {
                unit: "all units (shared matrix)".into(),
                attempts: params.max_redraws + 1,
            })
        }
        MatrixSharing::PerPoolLanguage => {
            let mut out = Vec::with_capacity(units.len());
            'unit: for u in units {
                for attempt in 0..=params.max_redraws {
                    let mut rng = rng_for(
                        seed,
                        &["lda-matrix".into(), u.key.as_str().into(), attempt.into()],
                    );
                    let matrix = draw_matrix(&mut rng, params.alpha, u.clients, n_labels);
                    let a = deal_one(u, &matrix, attempt);
                    if ok((u, &a)) {
                        out.push(a);
                        continue 'unit;
                    }
                    redraws += 1;
                }
                return Err(DatasetError::PartitionImpossible {
                    unit: u.key.clone(),
                    attempts: params.max_redraws + 1,
                });
            }
            Ok((out, redraws))
        }
    }
}

/// Shannon entropy (nats) of a client's label histogram; 0 for an empty client.
pub fn label_entropy(counts: &[usize]) -> f64 {
    let n: usize = counts.iter().sum();
    if n == 0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balanced_labels(n: usize, n_labels: usize) -> Vec<u32> {
        (0..n).map(|i| (i % n_labels) as u32).collect()
    }

    fn mean_entropy(labels: &[u32], n_labels: usize, clients: &[Vec<usize>]) -> f64 {
        clients
            .iter()
            .map(|rows| {
                let mut h = vec![0; n_labels];
                rows.iter().for_each(|&r| h[labels[r] as usize] += 1);
                label_entropy(&h)
            })
            .sum::<f64>()
            / clients.len() as f64
    }

    fn check_exact_cover(assign: &[Vec<usize>], n: usize) {
        let mut seen = vec![0u8; n];
        for rows in assign {
            for &r in rows {
                seen[r] += 1;
            }
        }
        assert!(
            seen.iter().all(|&s| s == 1),
            "every row in exactly one client"
        );
    }

    #[test]
    fn sequential_gives_equal_sizes_and_exact_cover() {
        let labels = balanced_labels(1003, 3);
        let mut rng = rng_for(7, &[]);
        let m = draw_matrix(&mut rng, 0.5, 20, 3);
        let a = deal(&labels, 3, &m, DealingRule::Sequential, &mut rng);
        check_exact_cover(&a, labels.len());
        // 1003 = 20 · 50 + 3: the first three clients get 51.
        let sizes: Vec<usize> = a.iter().map(Vec::len).collect();
        assert_eq!(&sizes[..4], &[51, 51, 51, 50]);
        assert!(sizes[4..].iter().all(|&s| s == 50));
    }

    #[test]
    fn proportional_covers_every_row() {
        let labels = balanced_labels(999, 7);
        let mut rng = rng_for(3, &[]);
        let m = draw_matrix(&mut rng, 0.5, 10, 7);
        let a = deal(&labels, 7, &m, DealingRule::Proportional, &mut rng);
        check_exact_cover(&a, labels.len());
    }

    #[test]
    fn smaller_alpha_gives_more_label_skew() {
        let labels = balanced_labels(2000, 3);
        for rule in [DealingRule::Sequential, DealingRule::Proportional] {
            let mut means = Vec::new();
            for alpha in [0.1, 0.5, 100.0] {
                let mut total = 0.0;
                for s in 0..5u64 {
                    let mut rng = rng_for(s, &[]);
                    let m = draw_matrix(&mut rng, alpha, 20, 3);
                    let a = deal(&labels, 3, &m, rule, &mut rng);
                    total += mean_entropy(&labels, 3, &a) / 5.0;
                }
                means.push(total);
            }
            assert!(
                means[0] < means[1] && means[1] < means[2],
                "{rule:?}: {means:?}"
            );
            // α = 100 is near uniform: close to ln 3.
            assert!(means[2] > 0.95 * 3f64.ln(), "{means:?}");
        }
    }

    #[test]
    fn units_are_deterministic_and_seed_dependent() {
        let units = vec![DealUnit {
            key: "seen/x".into(),
            train_labels: balanced_labels(300, 3),
            test_labels: balanced_labels(60, 3),
            clients: 6,
            min_train_rows: 1,
        }];
        let p = LdaParams {
            alpha: 0.5,
            matrix: MatrixSharing::Shared,
            dealing: DealingRule::Sequential,
            max_redraws: 10,
        };
        let a = deal_units(&units, 3, &p, 42).unwrap();
        assert_eq!(a, deal_units(&units, 3, &p, 42).unwrap());
        assert_ne!(a.0, deal_units(&units, 3, &p, 52).unwrap().0);
        assert_eq!(a.1, 0);
    }

    #[test]
    fn empty_train_clients_force_redraws_and_impossible_cases_error() {
        // Few rows, tiny alpha, proportional dealing: some draws leave a client empty.
        let units = vec![DealUnit {
            key: "seen/x".into(),
            train_labels: balanced_labels(12, 3),
            test_labels: balanced_labels(6, 3),
            clients: 6,
            min_train_rows: 1,
        }];
        let mut p = LdaParams {
            alpha: 0.1,
            matrix: MatrixSharing::PerPoolLanguage,
            dealing: DealingRule::Proportional,
            max_redraws: 10_000,
        };
        let (a, redraws) = deal_units(&units, 3, &p, 1).unwrap();
        assert!(redraws > 0);
        assert!(a[0].train.iter().all(|c| !c.is_empty()));
        p.max_redraws = 0;
        let err = (0..50u64).find_map(|s| deal_units(&units, 3, &p, s).err());
        assert!(matches!(
            err,
            Some(DatasetError::PartitionImpossible { .. })
        ));
        let too_many = vec![DealUnit {
            clients: 13,
            ..units[0].clone()
        }];
        let err = deal_units(&too_many, 3, &p, 1).unwrap_err();
        assert!(err.to_string().contains("more clients than rows"), "{err}");
    }
}
