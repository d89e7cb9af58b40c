//! Rank structure plots (paper Fig. 6–15): the kept LoRA rank of every module, laid out as
//! module type × layer, averaged over clients, one panel per budget.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::records::{Method, RankRecord};
use super::render::{render, Figure, Heatmap};
use super::ReportError;

/// Column holding modules outside the layer stack (pooler, classifier, lm_head).
const HEAD_COLUMN: &str = "head";

/// Mean kept rank per module for one method and budget.
#[derive(Debug, Clone, PartialEq)]
pub struct RankGrid {
    pub method: Method,
    pub budget: u32,
    /// Module types (`query`, `ffn.output`, …), then modules outside the layers
    /// (`pooler.dense`, `classifier`).
    pub row_labels: Vec<String>,
    /// Layer indices, then `head` if there are modules outside the layers.
    pub col_labels: Vec<String>,
    /// `values[row][col]`: mean kept rank over clients (absent modules count 0); `None` where
    /// the model has no such module.
    pub values: Vec<Vec<Option<f64>>>,
    /// Number of (client, language) rank structures averaged.
    pub clients: usize,
}

/// Where a module sits in the grid: its layer (if inside the layer stack) and its row label.
fn place(module: &str) -> (Option<usize>, String) {
    let parts: Vec<&str> = module.split('.').collect();
    for i in 0..parts.len().saturating_sub(1) {
        if matches!(parts[i], "layer" | "layers" | "h" | "blocks") {
            if let Ok(layer) = parts[i + 1].parse::<usize>() {
                let kind = parts[i + 2..].join(".");
                return (Some(layer), short_kind(&kind));
            }
        }
    }
    let name = module
        .strip_prefix("bert.")
        .or_else(|| module.strip_prefix("model."))
        .unwrap_or(module);
    (None, name.to_string())
}

/// Readable names for HF BERT sub-modules (two different `*.output.dense` exist) and LLaMA's.
fn short_kind(kind: &str) -> String {
    match kind {
        "attention.self.query" => "query".into(),
        "attention.self.key" => "key".into(),
        "attention.self.value" => "value".into(),
        "attention.output.dense" => "attn.output".into(),
        "intermediate.dense" => "ffn.intermediate".into(),
        "output.dense" => "ffn.output".into(),
        other => other
            .strip_prefix("self_attn.")
            .or_else(|| other.strip_prefix("mlp."))
            .unwrap_or(other)
            .to_string(),
    }
}

/// Position of a known module type in the model's forward order (stable sort keeps the others
/// after it, in order of appearance).
fn model_order(label: &str) -> usize {
    const KNOWN: [&str; 16] = [
        "query",
        "key",
        "value",
        "attn.output",
        "ffn.intermediate",
        "ffn.output",
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "pooler.dense",
        "classifier",
        "lm_head",
    ];
    KNOWN
        .iter()
        .position(|k| *k == label)
        .unwrap_or(KNOWN.len())
}

/// The grid of `method` at `budget`. The set of modules is every module named for `method` at
/// any budget, so a module that only gets ranks at larger budgets shows as 0 at small ones.
pub fn rank_grid(
    records: &[RankRecord],
    method: Method,
    budget: u32,
) -> Result<RankGrid, ReportError> {
    let mut modules: Vec<&str> = Vec::new();
    let mut known = BTreeSet::new();
    for r in records.iter().filter(|r| r.method == method) {
        if known.insert(r.module.as_str()) {
            modules.push(r.module.as_str());
        }
    }
    let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
    let mut structures = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for r in records
        .iter()
        .filter(|r| r.method == method && r.budget == budget)
    {
        structures.insert((r.client_id, r.language.as_str()));
        if !seen.insert((r.client_id, r.language.as_str(), r.module.as_str())) {
            return Err(ReportError::invalid(
                "rank records",
                format!(
                    "module `{}` listed twice for {method} budget {budget} client `{}` ({})",
                    r.module, r.client_id, r.language
                ),
            ));
        }
        *sums.entry(r.module.as_str()).or_default() += u64::from(r.rank);
    }
    if structures.is_empty() {
        return Err(ReportError::invalid(
            "rank records",
            format!("no rank structure for {method} at budget {budget}"),
        ));
    }

    let placed: Vec<(Option<usize>, String, &str)> = modules
        .iter()
        .map(|m| {
            let (layer, label) = place(m);
            (layer, label, *m)
        })
        .collect();
    // Rows: module types inside the layers, then modules outside them; known names in model
    // order (records may omit rank-0 modules, so first appearance is not reliable), others after
    // in order of appearance.
    let mut inner: Vec<String> = Vec::new();
    let mut outer: Vec<String> = Vec::new();
    for (layer, label, _) in &placed {
        let rows = if layer.is_some() {
            &mut inner
        } else {
            &mut outer
        };
        if !rows.contains(label) {
            rows.push(label.clone());
        }
    }
    inner.sort_by_key(|l| model_order(l));
    outer.sort_by_key(|l| model_order(l));
    let layered_rows = inner.len();
    let mut row_labels = inner;
    row_labels.extend(outer);
    let layers: BTreeSet<usize> = placed.iter().filter_map(|p| p.0).collect();
    let mut col_labels: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
    let has_head = row_labels.len() > layered_rows;
    if has_head {
        col_labels.push(HEAD_COLUMN.to_string());
    }

    let n = structures.len() as f64;
    let mut values = vec![vec![None; col_labels.len()]; row_labels.len()];
    for (layer, label, module) in &placed {
        let row = row_labels
            .iter()
            .position(|l| l == label)
            .expect("row exists");
        let col = match layer {
            Some(l) => layers.iter().position(|x| x == l).expect("layer exists"),
            None => col_labels.len() - 1,
        };
        let mean = sums.get(module).copied().unwrap_or(0) as f64 / n;
        if values[row][col].is_some() {
            return Err(ReportError::invalid(
                "rank records",
                format!("module `{module}` maps to the same grid cell as another module"),
            ));
        }
        values[row][col] = Some(mean);
    }
    Ok(RankGrid {
        method,
        budget,
        row_labels,
        col_labels,
        values,
        clients: structures.len(),
    })
}

struct RankFigure {
    grids: Vec<RankGrid>,
}

impl RankFigure {
    fn panel_height(&self) -> u32 {
        let rows = self
            .grids
            .iter()
            .map(|g| g.row_labels.len())
            .max()
            .unwrap_or(1) as u32;
        100 + 36 * rows
    }
}

impl Figure for RankFigure {
    fn size(&self) -> (u32, u32) {
        let cols = self
            .grids
            .iter()
            .map(|g| g.col_labels.len())
            .max()
            .unwrap_or(1) as u32;
        let width = (260 + 62 * cols).max(720);
        (width, self.panel_height() * self.grids.len() as u32)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let panels = area.split_evenly((self.grids.len(), 1));
        for (grid, panel) in self.grids.iter().zip(&panels) {
            let decimals = if grid
                .values
                .iter()
                .flatten()
                .flatten()
                .all(|v| v.fract() == 0.0)
            {
                0
            } else {
                1
            };
            Heatmap {
                title: format!(
                    "{} — budget {}: mean kept LoRA rank per module ({} client{})",
                    grid.method.label(),
                    grid.budget,
                    grid.clients,
                    if grid.clients == 1 { "" } else { "s" }
                ),
                x_caption: "layer",
                y_caption: "module",
                row_labels: &grid.row_labels,
                col_labels: &grid.col_labels,
                values: &grid.values,
                decimals,
            }
            .draw(panel)?;
        }
        Ok(())
    }
}

/// Draws `<stem>.svg` / `<stem>.png` in `dir`: one heatmap panel per budget (the paper shows
/// budgets 2 and 16) of `method`'s mean kept rank per module type × layer.
pub fn plot_rank_structure(
    records: &[RankRecord],
    method: Method,
    budgets: &[u32],
    dir: &Path,
    stem: &str,
) -> Result<Vec<PathBuf>, ReportError> {
    if budgets.is_empty() {
        return Err(ReportError::invalid(
            "rank structure plot",
            "no budgets requested",
        ));
    }
    let grids = budgets
        .iter()
        .map(|&b| rank_grid(records, method, b))
        .collect::<Result<Vec<_>, _>>()?;
    render(&RankFigure { grids }, dir, stem)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::render::tests::assert_valid_images;

    const KINDS: [&str; 6] = [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ];

    /// mBERT-shaped rank structures (12 layers × 6 + pooler + classifier = 74 modules) that
    /// favour dense layers at budget 2 and value at budget 16, as the paper describes (§4.5).
    pub(crate) fn bert_ranks(clients: &[(u32, &str)]) -> Vec<RankRecord> {
        let mut out = Vec::new();
        for (ci, (client, lang)) in clients.iter().enumerate() {
            for budget in [2u32, 16] {
                let mut push = |module: String, rank: u32| {
                    if rank > 0 {
                        out.push(RankRecord {
                            method: Method::FedP2eft,
                            budget,
                            client_id: *client,
                            language: lang.to_string(),
                            module,
                            rank,
                        });
                    }
                };
                for layer in 0..12u32 {
                    for (k, kind) in KINDS.iter().enumerate() {
                        let rank = match (budget, k) {
                            (2, 4 | 5) => (layer + ci as u32) % 5 + 1,
                            (2, _) => 0,
                            (_, 2) => 20 + layer % 12,
                            (_, 0) => 10 + layer,
                            _ => (layer * 3 + k as u32 + ci as u32) % 17,
                        };
                        push(format!("bert.encoder.layer.{layer}.{kind}"), rank);
                    }
                }
                push("bert.pooler.dense".into(), if budget == 2 { 3 } else { 12 });
                push("classifier".into(), if budget == 2 { 0 } else { 32 });
            }
        }
        out
    }

    #[test]
    fn module_names_map_to_layer_and_type() {
        assert_eq!(
            place("bert.encoder.layer.3.attention.self.query"),
            (Some(3), "query".to_string())
        );
        assert_eq!(
            place("bert.encoder.layer.11.output.dense"),
            (Some(11), "ffn.output".to_string())
        );
        assert_eq!(
            place("bert.encoder.layer.0.attention.output.dense"),
            (Some(0), "attn.output".to_string())
        );
        assert_eq!(
            place("bert.pooler.dense"),
            (None, "pooler.dense".to_string())
        );
        assert_eq!(place("classifier"), (None, "classifier".to_string()));
        assert_eq!(
            place("model.layers.7.self_attn.q_proj"),
            (Some(7), "q_proj".to_string())
        );
    }

    #[test]
    fn grid_averages_clients_and_counts_absent_modules_as_zero() {
        let recs = bert_ranks(&[(0, "eng"), (1, "tir")]);
        let g = rank_grid(&recs, Method::FedP2eft, 2).unwrap();
        assert_eq!(g.clients, 2);
        assert_eq!(g.col_labels.len(), 13);
        assert_eq!(g.col_labels.last().unwrap(), "head");
        assert_eq!(
            g.row_labels,
            [
                "query",
                "key",
                "value",
                "attn.output",
                "ffn.intermediate",
                "ffn.output",
                "pooler.dense",
                "classifier"
            ]
        );
        // Layer 0 ffn.intermediate: client 0 rank 1, client 1 rank 2 → 1.5.
        assert_eq!(g.values[4][0], Some(1.5));
        // query gets nothing at budget 2 but exists (ranked at 16) → 0, not missing.
        assert_eq!(g.values[0][5], Some(0.0));
        // classifier: absent at budget 2 → 0 in the head column, no value in layer columns.
        assert_eq!(g.values[7][12], Some(0.0));
        assert_eq!(g.values[7][0], None);
        assert_eq!(g.values[6][12], Some(3.0));
    }

    #[test]
    fn missing_budget_and_duplicates_are_errors() {
        let recs = bert_ranks(&[(0, "eng")]);
        let err = rank_grid(&recs, Method::FedP2eft, 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("budget 4"), "{err}");
        let mut dup = recs.clone();
        dup.push(recs[0].clone());
        assert!(rank_grid(&dup, Method::FedP2eft, recs[0].budget).is_err());
    }

    #[test]
    fn plot_writes_valid_svg_and_png() {
        let recs = bert_ranks(&[(0, "eng"), (1, "tir"), (2, "amh")]);
        let dir = tempfile::tempdir().unwrap();
        let paths =
            plot_rank_structure(&recs, Method::FedP2eft, &[2, 16], dir.path(), "ranks").unwrap();
        let size = RankFigure {
            grids: vec![
                rank_grid(&recs, Method::FedP2eft, 2).unwrap(),
                rank_grid(&recs, Method::FedP2eft, 16).unwrap(),
            ],
        }
        .size();
        assert_valid_images(
            &paths,
            size,
            &["budget 16", "ffn.intermediate", "classifier"],
        );
    }
}
