//! Histogram of client sizes (train rows per client), one series per pool: the picture a
//! partition stage leaves beside its Parquet shards so a skewed LDA draw is seen at a glance.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::render::{render, series_colour, Figure, FONT};
use super::ReportError;

/// Train-row counts of the clients of one pool.
pub struct PoolSizes {
    pub pool: String,
    pub sizes: Vec<usize>,
}

struct SizeHistogram<'a> {
    title: &'a str,
    pools: &'a [PoolSizes],
    bin: usize,
    bins: usize,
}

impl Figure for SizeHistogram<'_> {
    fn size(&self) -> (u32, u32) {
        (900, 500)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let counts: Vec<Vec<usize>> = self
            .pools
            .iter()
            .map(|p| {
                let mut c = vec![0usize; self.bins];
                for &s in &p.sizes {
                    c[(s / self.bin).min(self.bins - 1)] += 1;
                }
                c
            })
            .collect();
        let y_max = counts.iter().flatten().copied().max().unwrap_or(1).max(1);
        // One empty bin of margin on the right so the last bars are not clipped.
        let x_max = (self.bin * (self.bins + 1)) as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, (FONT, 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..x_max, 0usize..(y_max + y_max / 10 + 1))
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("train examples per client")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("clients")
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .draw()
            .map_err(e)?;
        let n = self.pools.len().max(1);
        for (i, (pool, c)) in self.pools.iter().zip(&counts).enumerate() {
            let colour = series_colour(i);
            // Side-by-side bars inside each bin, one slot per pool.
            let slot = self.bin as f64 / n as f64;
            let bars = c.iter().enumerate().filter(|(_, &v)| v > 0).map(|(b, &v)| {
                let x0 = (b * self.bin) as f64 + i as f64 * slot;
                Rectangle::new([(x0, 0), (x0 + slot * 0.9, v)], colour.mix(0.8).filled())
            });
            chart
                .draw_series(bars)
                .map_err(e)?
                .label(format!("{} ({} clients)", pool.pool, pool.sizes.len()))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

/// Draws `<stem>.svg` and `<stem>.png` into `dir`.
pub fn plot_client_sizes(
    title: &str,
    pools: &[PoolSizes],
    dir: &Path,
    stem: &str,
) -> Result<Vec<PathBuf>, ReportError> {
    let max = pools
        .iter()
        .flat_map(|p| p.sizes.iter())
        .copied()
        .max()
        .unwrap_or(1);
    // About 20 bins of a round width.
    let raw = (max / 20).max(1);
    let magnitude = 10usize.pow((raw as f64).log10().floor() as u32);
    let bin = [1, 2, 5, 10]
        .iter()
        .map(|m| m * magnitude)
        .find(|&b| b >= raw)
        .unwrap_or(raw);
    let bins = max / bin + 1;
    render(
        &SizeHistogram {
            title,
            pools,
            bin,
            bins,
        },
        dir,
        stem,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::render::tests::assert_valid_images;

    #[test]
    fn histogram_renders_both_pools() {
        let dir = tempfile::tempdir().unwrap();
        let pools = [
            PoolSizes {
                pool: "seen".into(),
                sizes: vec![3, 40, 41, 90, 120, 7],
            },
            PoolSizes {
                pool: "unseen".into(),
                sizes: vec![10, 11, 55],
            },
        ];
        let files = plot_client_sizes("test", &pools, dir.path(), "client_sizes").unwrap();
        assert_valid_images(
            &files,
            (900, 500),
            &["seen (6 clients)", "unseen (3 clients)"],
        );
    }
}
