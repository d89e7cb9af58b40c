//! Language distance of λ (paper Fig. 4–5, following FedL2P): how far apart the λ vectors of
//! clients of two languages are, normalised so each language is at distance 1 from itself.
//!
//! The paper's formula was lost in text extraction; this is FedL2P's normalised mean distance:
//! with D(i, j) the mean ‖λ_c − λ_c'‖ over all client pairs c ∈ i, c' ∈ j, c ≠ c',
//!     D̄(i, j) = D(i, j) / √(D(i, i) · D(j, j)).
//! Smaller = more similar; the diagonal is 1 by construction. A language with fewer than two
//! clients (or identical λ across its clients) has no D(i, i), so its row and column are empty.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use polars::prelude::*;

use super::files::{ensure_dir, slug};
use super::records::LambdaVector;
use super::render::{render, Figure, Heatmap};
use super::table_csv::write_csv;
use super::ReportError;

/// Which vector norm measures the distance between two λ vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    L1,
    L2,
}

impl Norm {
    fn distance(self, a: &[f64], b: &[f64]) -> f64 {
        match self {
            Norm::L1 => a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum(),
            Norm::L2 => a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f64>()
                .sqrt(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Norm::L1 => "L1",
            Norm::L2 => "L2",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DistanceMatrix {
    pub norm: Norm,
    pub languages: Vec<String>,
    /// Clients per language, same order.
    pub clients: Vec<usize>,
    /// D(i, j): mean pairwise distance (unnormalised); `None` without any client pair.
    pub mean_distance: Vec<Vec<Option<f64>>>,
    /// D̄(i, j) = D(i, j) / √(D(i, i) D(j, j)).
    pub normalized: Vec<Vec<Option<f64>>>,
}

/// Distances between the languages of `vectors`. Languages are ordered as in `language_order`,
/// then any others sorted.
pub fn language_distance(
    vectors: &[LambdaVector],
    norm: Norm,
    language_order: &[String],
) -> Result<DistanceMatrix, ReportError> {
    let Some(first) = vectors.first() else {
        return Err(ReportError::invalid("λ vectors", "none given"));
    };
    let mut ids = BTreeSet::new();
    for v in vectors {
        if v.values.len() != first.values.len() {
            return Err(ReportError::invalid(
                format!("λ vector of client `{}`", v.client_id),
                format!(
                    "has {} entries but client `{}` has {}",
                    v.values.len(),
                    first.client_id,
                    first.values.len()
                ),
            ));
        }
        if let Some(x) = v.values.iter().find(|x| !x.is_finite()) {
            return Err(ReportError::invalid(
                format!("λ vector of client `{}`", v.client_id),
                format!("contains {x}"),
            ));
        }
        if !ids.insert(v.client_id) {
            return Err(ReportError::invalid(
                "λ vectors",
                format!("client `{}` appears twice", v.client_id),
            ));
        }
    }
    let present: BTreeSet<&str> = vectors.iter().map(|v| v.language.as_str()).collect();
    let mut languages: Vec<String> = Vec::new();
    for l in language_order {
        if present.contains(l.as_str()) && !languages.contains(l) {
            languages.push(l.clone());
        }
    }
    for l in present {
        if !languages.iter().any(|x| x == l) {
            languages.push(l.to_string());
        }
    }
    let groups: Vec<Vec<&LambdaVector>> = languages
        .iter()
        .map(|l| vectors.iter().filter(|v| &v.language == l).collect())
        .collect();

    let n = languages.len();
    let mut mean_distance = vec![vec![None; n]; n];
    for i in 0..n {
        for j in i..n {
            let (mut sum, mut pairs) = (0.0, 0usize);
            for (a_idx, a) in groups[i].iter().enumerate() {
                // Same language: each unordered pair once (the mean equals that of ordered pairs).
                let others = if i == j {
                    &groups[j][a_idx + 1..]
                } else {
                    &groups[j][..]
                };
                for b in others {
                    sum += norm.distance(&a.values, &b.values);
                    pairs += 1;
                }
            }
            let d = if pairs > 0 {
                Some(sum / pairs as f64)
            } else {
                None
            };
            mean_distance[i][j] = d;
            mean_distance[j][i] = d;
        }
    }
    let normalized = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    match (
                        mean_distance[i][j],
                        mean_distance[i][i],
                        mean_distance[j][j],
                    ) {
                        (Some(d), Some(di), Some(dj)) if di > 0.0 && dj > 0.0 => {
                            Some(d / (di * dj).sqrt())
                        }
                        _ => None,
                    }
                })
                .collect()
        })
        .collect();
    Ok(DistanceMatrix {
        norm,
        clients: groups.iter().map(|g| g.len()).collect(),
        languages,
        mean_distance,
        normalized,
    })
}

/// Writes `<stem>.csv`: language_a, language_b, clients_a, clients_b, mean_distance,
/// normalized_distance (nulls where undefined), one row per ordered language pair.
pub fn write_language_distance(
    matrix: &DistanceMatrix,
    dir: &Path,
    stem: &str,
) -> Result<PathBuf, ReportError> {
    ensure_dir(dir)?;
    let path = dir.join(format!("{}.csv", slug(stem)));
    let n = matrix.languages.len();
    let pairs: Vec<(usize, usize)> = (0..n).flat_map(|i| (0..n).map(move |j| (i, j))).collect();
    let mut frame = df!(
        "language_a" => pairs.iter().map(|&(i, _)| matrix.languages[i].as_str()).collect::<Vec<_>>(),
        "language_b" => pairs.iter().map(|&(_, j)| matrix.languages[j].as_str()).collect::<Vec<_>>(),
        "clients_a" => pairs.iter().map(|&(i, _)| matrix.clients[i] as u64).collect::<Vec<_>>(),
        "clients_b" => pairs.iter().map(|&(_, j)| matrix.clients[j] as u64).collect::<Vec<_>>(),
        "mean_distance" => pairs.iter().map(|&(i, j)| matrix.mean_distance[i][j]).collect::<Vec<_>>(),
        "normalized_distance" => pairs.iter().map(|&(i, j)| matrix.normalized[i][j]).collect::<Vec<_>>(),
    )
    .map_err(|source| ReportError::Write {
        path: path.clone(),
        source,
    })?;
    write_csv(&mut frame, &path)?;
    Ok(path)
}

struct DistanceFigure<'a> {
    matrix: &'a DistanceMatrix,
    title: String,
}

impl Figure for DistanceFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let n = self.matrix.languages.len() as u32;
        let cell = 52;
        ((240 + cell * n).max(560), (130 + cell * n).max(440))
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        Heatmap {
            title: self.title.clone(),
            x_caption: "language",
            y_caption: "language",
            row_labels: &self.matrix.languages,
            col_labels: &self.matrix.languages,
            values: &self.matrix.normalized,
            decimals: 2,
        }
        .draw(area)
    }
}

/// Draws `<stem>.svg` / `<stem>.png` in `dir`: the normalised distance heatmap (paper Fig. 4).
pub fn plot_language_distance(
    matrix: &DistanceMatrix,
    dir: &Path,
    stem: &str,
) -> Result<Vec<PathBuf>, ReportError> {
    if matrix.normalized.iter().flatten().all(|v| v.is_none()) {
        return Err(ReportError::invalid(
            "λ distance plot",
            "no language has two clients with different λ, so no distance is defined",
        ));
    }
    let figure = DistanceFigure {
        matrix,
        title: format!(
            "Normalised mean {} distance of λ between languages",
            matrix.norm.as_str()
        ),
    };
    render(&figure, dir, stem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::render::tests::assert_valid_images;

    fn v(client: u32, lang: &str, values: &[f64]) -> LambdaVector {
        LambdaVector {
            client_id: client,
            language: lang.into(),
            values: values.to_vec(),
        }
    }

    #[test]
    fn normalised_mean_distance_by_hand() {
        let vecs = vec![
            v(11, "ar", &[0.0, 0.0]),
            v(12, "ar", &[2.0, 0.0]),
            v(21, "ur", &[0.0, 1.0]),
            v(22, "ur", &[0.0, 5.0]),
            v(31, "sw", &[9.0, 9.0]),
        ];
        let m = language_distance(&vecs, Norm::L1, &["ur".to_string()]).unwrap();
        assert_eq!(m.languages, ["ur", "ar", "sw"]);
        assert_eq!(m.clients, [2, 2, 1]);
        // D(ar, ar) = 2, D(ur, ur) = 4.
        assert_eq!(m.mean_distance[1][1], Some(2.0));
        assert_eq!(m.mean_distance[0][0], Some(4.0));
        // D(ur, ar): |u1−a1| = 1, |u1−a2| = 3, |u2−a1| = 5, |u2−a2| = 7 → mean 4.
        assert_eq!(m.mean_distance[0][1], Some(4.0));
        let norm = m.normalized[0][1].unwrap();
        assert!((norm - 4.0 / 8f64.sqrt()).abs() < 1e-15, "{norm}");
        assert_eq!(m.normalized[1][0], m.normalized[0][1]);
        assert_eq!(m.normalized[0][0], Some(1.0));
        // sw has one client: no D(sw, sw), so its normalised entries are undefined…
        assert_eq!(m.mean_distance[2][2], None);
        assert_eq!(m.normalized[2][0], None);
        // …but its raw distance to other languages exists: |s1−a1| = 18, |s1−a2| = 16.
        assert_eq!(m.mean_distance[2][1], Some(17.0));

        let l2 = language_distance(&vecs, Norm::L2, &[]).unwrap();
        assert_eq!(l2.languages, ["ar", "sw", "ur"]);
        // L2 D(ar, ur) = mean(1, 5, √5, √29).
        let want = (1.0 + 5.0 + 5f64.sqrt() + 29f64.sqrt()) / 4.0;
        assert!((l2.mean_distance[0][2].unwrap() - want).abs() < 1e-12);
    }

    #[test]
    fn inconsistent_vectors_are_rejected() {
        let err = language_distance(
            &[v(1, "ar", &[1.0]), v(2, "ar", &[1.0, 2.0])],
            Norm::L1,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("client `2`") && err.contains("2 entries"),
            "{err}"
        );
        let err = language_distance(&[v(1, "ar", &[1.0]), v(1, "ur", &[2.0])], Norm::L1, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn writes_csv_and_valid_plot() {
        // Four languages, three clients each; related languages get nearby λ.
        let mut vecs = Vec::new();
        for (li, lang) in ["ar", "ur", "en", "zh"].iter().enumerate() {
            for c in 0..3 {
                let base = if li < 2 { 1.0 } else { 3.0 };
                let values: Vec<f64> = (0..64)
                    .map(|k| base + 0.1 * ((k * 7 + c * 13 + li * 5) % 11) as f64)
                    .collect();
                vecs.push(v((3 * li + c) as u32, lang, &values));
            }
        }
        let m = language_distance(&vecs, Norm::L2, &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let csv = write_language_distance(&m, dir.path(), "lambda_distance").unwrap();
        let text = std::fs::read_to_string(&csv).unwrap();
        assert_eq!(text.lines().count(), 1 + 16);
        assert!(text.starts_with("language_a,language_b,clients_a,clients_b,mean_distance"));
        let paths = plot_language_distance(&m, dir.path(), "lambda_distance").unwrap();
        let size = DistanceFigure {
            matrix: &m,
            title: String::new(),
        }
        .size();
        assert_valid_images(&paths, size, &["ar", "zh", "L2 distance"]);
    }
}
