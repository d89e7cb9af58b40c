//! Drawing helpers shared by the plots: render one figure to both SVG and PNG (all-or-nothing),
//! a labelled heatmap with a colour bar, and a viridis colour map.
//!
//! Text goes through plotters' `ttf` feature, which finds fonts with fontconfig: a machine needs
//! a sans-serif font installed (`scripts/setup.d/2-fonts.sh` installs DejaVu).

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::files::{commit, ensure_dir, temp_path};
use super::ReportError;

/// Something drawable at a fixed pixel size onto any plotters backend.
pub(crate) trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Writes `<stem>.svg` and `<stem>.png` into `dir`; returns both paths.
pub(crate) fn render<F: Figure>(
    figure: &F,
    dir: &Path,
    stem: &str,
) -> Result<Vec<PathBuf>, ReportError> {
    ensure_dir(dir)?;
    let svg = dir.join(format!("{stem}.svg"));
    let png = dir.join(format!("{stem}.png"));
    let (svg_tmp, png_tmp) = (temp_path(&svg), temp_path(&png));
    let plot_err = |path: &Path, message: String| ReportError::Plot {
        path: path.to_path_buf(),
        message: format!(
            "{message} (text needs a sans-serif font found by fontconfig; run \
             scripts/setup.d/2-fonts.sh)"
        ),
    };
    {
        let area = SVGBackend::new(&svg_tmp, figure.size()).into_drawing_area();
        draw_on(figure, &area).map_err(|m| plot_err(&svg, m))?;
    }
    {
        let area = BitMapBackend::new(&png_tmp, figure.size()).into_drawing_area();
        draw_on(figure, &area).map_err(|m| plot_err(&png, m))?;
    }
    commit(&svg_tmp, &svg)?;
    commit(&png_tmp, &png)?;
    Ok(vec![svg, png])
}

fn draw_on<F: Figure, DB: DrawingBackend>(
    figure: &F,
    area: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    area.fill(&WHITE).map_err(|e| e.to_string())?;
    figure.draw(area)?;
    area.present().map_err(|e| e.to_string())
}

/// Viridis (matplotlib's default sequential map), piecewise-linear through 9 of its stops.
pub(crate) fn viridis(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

/// Distinct line colours (Tableau 10) for series.
pub(crate) fn series_colour(i: usize) -> RGBColor {
    const TAB10: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = TAB10[i % TAB10.len()];
    RGBColor(r, g, b)
}

pub(crate) const FONT: &str = "sans-serif";
const EMPTY_CELL: RGBColor = RGBColor(235, 235, 235);

/// A labelled grid of values; `None` cells are drawn light grey without text.
pub(crate) struct Heatmap<'a> {
    pub title: String,
    pub x_caption: &'a str,
    pub y_caption: &'a str,
    pub row_labels: &'a [String],
    pub col_labels: &'a [String],
    /// `values[row][col]`.
    pub values: &'a [Vec<Option<f64>>],
    pub decimals: usize,
}

impl Heatmap<'_> {
    fn range(&self) -> (f64, f64) {
        let vals = self.values.iter().flatten().flatten().copied();
        let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if lo > hi {
            (0.0, 1.0)
        } else {
            (lo, hi)
        }
    }

    pub(crate) fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let (w, h) = area.dim_in_pixel();
        let (w, h) = (w as i32, h as i32);
        let label_style = (FONT, 14).into_font().color(&BLACK);
        let caption_style = (FONT, 15).into_font().color(&BLACK);
        let text_w = |s: &str, style: &TextStyle| -> Result<i32, String> {
            Ok(area.estimate_text_size(s, style).map_err(e)?.0 as i32)
        };

        let title_h = 34;
        area.draw(&Text::new(
            self.title.clone(),
            (w / 2, 10),
            (FONT, 18)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(e)?;

        let mut row_label_w = 0;
        for l in self.row_labels {
            row_label_w = row_label_w.max(text_w(l, &label_style)?);
        }
        let left = 28 + row_label_w + 8;
        let colour_bar_w = 16;
        let right = 12 + colour_bar_w + 8 + 56;
        let bottom = 22 + 26;
        let (x0, y0) = (left, title_h + 6);
        let (x1, y1) = (w - right, h - bottom);
        let (ncols, nrows) = (self.col_labels.len().max(1), self.row_labels.len().max(1));
        let cw = (x1 - x0) as f64 / ncols as f64;
        let ch = (y1 - y0) as f64 / nrows as f64;
        let (lo, hi) = self.range();
        let norm = |v: f64| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };

        let widest_value = format!("{:.*}", self.decimals, hi.abs().max(lo.abs()) * 10.0);
        let value_size = (ch * 0.42)
            .min(cw / (0.62 * widest_value.len() as f64))
            .clamp(6.0, 15.0);
        for (r, row) in self.values.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                let cx0 = x0 + (c as f64 * cw).round() as i32;
                let cy0 = y0 + (r as f64 * ch).round() as i32;
                let cx1 = x0 + ((c + 1) as f64 * cw).round() as i32;
                let cy1 = y0 + ((r + 1) as f64 * ch).round() as i32;
                let fill = v.map_or(EMPTY_CELL, |v| viridis(norm(v)));
                area.draw(&Rectangle::new([(cx0, cy0), (cx1, cy1)], fill.filled()))
                    .map_err(e)?;
                area.draw(&Rectangle::new(
                    [(cx0, cy0), (cx1, cy1)],
                    WHITE.stroke_width(1),
                ))
                .map_err(e)?;
                if let Some(v) = v {
                    let ink = if norm(*v) < 0.55 { &WHITE } else { &BLACK };
                    area.draw(&Text::new(
                        format!("{:.*}", self.decimals, v),
                        ((cx0 + cx1) / 2, (cy0 + cy1) / 2),
                        (FONT, value_size)
                            .into_font()
                            .color(ink)
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    ))
                    .map_err(e)?;
                }
            }
        }
        for (r, l) in self.row_labels.iter().enumerate() {
            let y = y0 + ((r as f64 + 0.5) * ch).round() as i32;
            area.draw(&Text::new(
                l.clone(),
                (x0 - 6, y),
                label_style.pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(e)?;
        }
        for (c, l) in self.col_labels.iter().enumerate() {
            let x = x0 + ((c as f64 + 0.5) * cw).round() as i32;
            area.draw(&Text::new(
                l.clone(),
                (x, y1 + 5),
                label_style.pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(e)?;
        }
        area.draw(&Text::new(
            self.x_caption.to_string(),
            ((x0 + x1) / 2, h - 6),
            caption_style.pos(Pos::new(HPos::Center, VPos::Bottom)),
        ))
        .map_err(e)?;
        area.draw(&Text::new(
            self.y_caption.to_string(),
            (6, (y0 + y1) / 2),
            caption_style
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(e)?;

        // Colour bar: value scale from `lo` (bottom) to `hi` (top).
        let bx0 = x1 + 12;
        let steps = (y1 - y0).max(1);
        for i in 0..steps {
            let t = 1.0 - i as f64 / steps as f64;
            area.draw(&Rectangle::new(
                [(bx0, y0 + i), (bx0 + colour_bar_w, y0 + i + 1)],
                viridis(t).filled(),
            ))
            .map_err(e)?;
        }
        for (v, y, vpos) in [(hi, y0, VPos::Top), (lo, y1, VPos::Bottom)] {
            area.draw(&Text::new(
                format!("{:.*}", self.decimals, v),
                (bx0 + colour_bar_w + 4, y),
                label_style.pos(Pos::new(HPos::Left, vpos)),
            ))
            .map_err(e)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn viridis_ends_and_clamps() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(7.0), viridis(1.0));
        assert_eq!(viridis(f64::NAN), viridis(0.0));
    }

    /// Checks an SVG/PNG pair: the SVG is a complete document containing `texts`; the PNG
    /// decodes at `size` and is not blank (enough non-white pixels, several colours); no
    /// temporary file is left beside them.
    pub(crate) fn assert_valid_images(paths: &[PathBuf], size: (u32, u32), texts: &[&str]) {
        assert_eq!(paths.len(), 2, "{paths:?}");
        let svg = std::fs::read_to_string(&paths[0]).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for t in texts {
            assert!(svg.contains(t), "SVG lacks text {t:?}");
        }
        let png = image::open(&paths[1]).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), size);
        let non_white = png.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(
            non_white * 50 > png.pixels().len(),
            "PNG is almost blank: {non_white} non-white pixels"
        );
        let colours: std::collections::BTreeSet<[u8; 3]> = png.pixels().map(|p| p.0).collect();
        assert!(colours.len() > 8, "PNG has only {} colours", colours.len());
        let dir = paths[0].parent().unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".partial"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}
