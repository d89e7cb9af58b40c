//! Metric vs rank budget, one line per method: the table's cells averaged over languages.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::files::ensure_dir;
use super::records::Method;
use super::render::{render, series_colour, Figure, FONT};
use super::results::{Metric, ResultTable};
use super::ReportError;

/// One method's line: (budget, mean over languages) by ascending budget.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetCurve {
    pub method: Method,
    pub points: Vec<(u32, f64)>,
}

/// Curves of `metric` from `table`. Each point is the unweighted mean over the languages that
/// every row of the table has a value for, so methods are compared on the same languages;
/// returns those languages too.
pub fn budget_curves(
    table: &ResultTable,
    metric: Metric,
) -> Result<(Vec<BudgetCurve>, Vec<String>), ReportError> {
    let what = || {
        format!(
            "{} vs budget plot of {} {} {}",
            metric.as_str(),
            table.key.dataset,
            table.key.pool,
            table.key.base_model
        )
    };
    let m = table
        .metrics
        .iter()
        .position(|x| *x == metric)
        .ok_or_else(|| ReportError::invalid(what(), "the table has no such metric"))?;
    let common: Vec<usize> = (0..table.languages.len())
        .filter(|&l| table.rows.iter().all(|r| r.cells[l][m].is_some()))
        .collect();
    if common.is_empty() || table.rows.is_empty() {
        return Err(ReportError::invalid(
            what(),
            "no language has a result for every budget and method",
        ));
    }
    let mut curves: Vec<BudgetCurve> = Vec::new();
    for method in Method::ALL {
        let points: Vec<(u32, f64)> = table
            .rows
            .iter()
            .filter(|r| r.method == *method)
            .map(|r| {
                let sum: f64 = common
                    .iter()
                    .map(|&l| r.cells[l][m].expect("common").mean)
                    .sum();
                (r.budget, sum / common.len() as f64)
            })
            .collect();
        if !points.is_empty() {
            curves.push(BudgetCurve {
                method: *method,
                points,
            });
        }
    }
    let langs = common.iter().map(|&l| table.languages[l].clone()).collect();
    Ok((curves, langs))
}

struct CurveFigure {
    title: String,
    y_label: String,
    curves: Vec<BudgetCurve>,
}

impl Figure for CurveFigure {
    fn size(&self) -> (u32, u32) {
        (1000, 560)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let mut budgets: Vec<u32> = self
            .curves
            .iter()
            .flat_map(|c| c.points.iter().map(|p| p.0))
            .collect();
        budgets.sort_unstable();
        budgets.dedup();
        // Budgets sit at evenly spaced ticks (x = 10 · index; the paper's budgets double, so this
        // is a log2 axis). Integer coordinates because plotters formats key points only there.
        let x_of = |b: u32| 10 * budgets.iter().position(|&x| x == b).expect("known budget") as i32;
        let key_points: Vec<i32> = (0..budgets.len() as i32).map(|i| 10 * i).collect();
        let x_hi = 10 * (budgets.len() as i32 - 1);
        let ys = self
            .curves
            .iter()
            .flat_map(|c| c.points.iter().map(|p| p.1));
        let (y_lo, y_hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
        // A flat set of points (e.g. every method at 0) still gets a readable axis.
        let pad = if y_hi > y_lo {
            (y_hi - y_lo) * 0.12
        } else {
            (y_hi.abs() * 0.05).max(0.01)
        };
        // Enough decimals to tell the ~10 tick labels apart; `+ 0.0` turns −0 into 0.
        let decimals = (-((y_hi - y_lo + 2.0 * pad) / 10.0).log10())
            .ceil()
            .clamp(0.0, 6.0) as usize;
        let y_label = move |v: &f64| format!("{:.*}", decimals, v + 0.0);
        // Legend in its own strip on the right so it never hides a line.
        let legend_w = 190;
        let (plot, legend) = area.split_horizontally(area.dim_in_pixel().0 as i32 - legend_w);
        let mut chart = ChartBuilder::on(&plot)
            .caption(&self.title, (FONT, 20))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (-4..x_hi + 4).with_key_points(key_points),
                (y_lo - pad)..(y_hi + pad),
            )
            .map_err(e)?;
        let budget_label = |x: &i32| {
            let i = (*x / 10) as usize;
            if *x >= 0 && *x % 10 == 0 && i < budgets.len() {
                budgets[i].to_string()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_desc("rank budget r_b")
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&budget_label)
            .y_label_formatter(&y_label)
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 16))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(e)?;
        for (i, curve) in self.curves.iter().enumerate() {
            let colour = series_colour(i);
            let pts: Vec<(i32, f64)> = curve.points.iter().map(|&(b, y)| (x_of(b), y)).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                .map_err(e)?;
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                .map_err(e)?;
        }
        for (i, curve) in self.curves.iter().enumerate() {
            let colour = series_colour(i);
            let y = 70 + 28 * i as i32;
            legend
                .draw(&PathElement::new(
                    vec![(8, y), (40, y)],
                    colour.stroke_width(2),
                ))
                .map_err(e)?;
            legend
                .draw(&Circle::new((24, y), 4, colour.filled()))
                .map_err(e)?;
            legend
                .draw(&Text::new(
                    curve.method.label(),
                    (48, y),
                    (FONT, 15)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                ))
                .map_err(e)?;
        }
        Ok(())
    }
}

/// Draws `<stem>.svg` / `<stem>.png` in `dir`: `metric` (e.g. accuracy) against budget, one
/// line per method, each point the mean over the languages all rows share.
pub fn plot_metric_vs_budget(
    table: &ResultTable,
    metric: Metric,
    dir: &Path,
    stem: &str,
) -> Result<Vec<PathBuf>, ReportError> {
    let (curves, languages) = budget_curves(table, metric)?;
    ensure_dir(dir)?;
    let figure = CurveFigure {
        title: format!(
            "{} — {} pool — {}",
            table.key.dataset,
            table.key.pool.label(),
            table.key.base_model.label()
        ),
        y_label: format!(
            "{}, mean over {} language{}",
            metric.label(),
            languages.len(),
            if languages.len() == 1 { "" } else { "s" }
        ),
        curves,
    };
    render(&figure, dir, stem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::records::run_key;
    use crate::report::records::{BaseModel, ClassificationResult, Pool};
    use crate::report::render::tests::assert_valid_images;
    use crate::report::results::{classification_tables, TableOptions};

    fn table(skip_tir_for_lora_16: bool) -> ResultTable {
        let mut recs = Vec::new();
        for (mi, method) in Method::ALL.iter().enumerate() {
            for (bi, budget) in [2u32, 4, 8, 16].into_iter().enumerate() {
                for (li, lang) in ["eng", "amh", "tir"].into_iter().enumerate() {
                    if skip_tir_for_lora_16
                        && *method == Method::Lora
                        && budget == 16
                        && lang == "tir"
                    {
                        continue;
                    }
                    recs.push(ClassificationResult {
                        key: run_key(
                            "masakhanews",
                            Pool::Seen,
                            BaseModel::FedAvg,
                            *method,
                            budget,
                            42,
                            0,
                        ),
                        language: lang.into(),
                        correct: (40 + 5 * mi + 2 * bi + 10 * li) as u64,
                        total: 100,
                    });
                }
            }
        }
        classification_tables(&recs, &TableOptions::default())
            .unwrap()
            .remove(0)
    }

    #[test]
    fn curves_average_languages_common_to_all_rows() {
        let (curves, langs) = budget_curves(&table(false), Metric::Accuracy).unwrap();
        assert_eq!(curves.len(), 5);
        assert_eq!(langs.len(), 3);
        // LoRA (mi = 0) at budget 2: mean of 40, 50, 60 %.
        assert_eq!(curves[0].points[0], (2, 50.0));
        assert_eq!(curves[4].points[3], (16, 76.0));
        // LoRA lacks tir at budget 16 → tir is dropped for every method.
        let (curves, langs) = budget_curves(&table(true), Metric::Accuracy).unwrap();
        assert_eq!(langs, ["amh", "eng"]);
        assert_eq!(curves[0].points[0], (2, 45.0));
        assert!(budget_curves(&table(false), Metric::Meteor).is_err());
    }

    #[test]
    fn plot_writes_valid_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let paths =
            plot_metric_vs_budget(&table(false), Metric::Accuracy, dir.path(), "acc").unwrap();
        assert_valid_images(&paths, (1000, 560), &["FedP2EFT", "BayesTune-LoRA", "16"]);
    }
}
