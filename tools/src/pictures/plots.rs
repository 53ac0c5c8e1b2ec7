//! Line and bar plots in side-by-side panels, for the experiments (the
//! seed's Fig. 12, time against workers, and Fig. 14, against one machine).

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{clip, colour, drawing, render, text, Draw, Format, Picture, PictureError};

/// One line: named points, drawn with a marker at each.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Dashed (a projection) rather than solid (a measurement).
    pub dashed: bool,
}

/// One panel of lines.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// A base-2 logarithmic x axis (worker counts 1, 2, 4, …); every x must be positive.
    pub log2_x: bool,
}

/// One bar panel: a value per label.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BarPanel {
    pub title: String,
    pub y_label: String,
    pub bars: Vec<(String, f64)>,
    /// Written after each bar's value (`" s"`, `" min"`).
    pub unit: String,
}

/// Size of one panel (pixels).
pub const PANEL: (u32, u32) = (560, 480);
/// Most panels side by side.
pub const MAX_PANELS: usize = 8;

struct Lines<'a> {
    title: &'a str,
    panels: &'a [Panel],
}

struct Bars<'a> {
    title: &'a str,
    panels: &'a [BarPanel],
}

fn canvas(panels: usize) -> Result<(u32, u32), PictureError> {
    if panels == 0 || panels > MAX_PANELS {
        return Err(PictureError::data("plot", format!("{panels} panels: expected 1 to {MAX_PANELS}")));
    }
    Ok((PANEL.0 * panels as u32, PANEL.1 + 40))
}

/// Draws `panels` side by side under `title`.
///
/// # Errors
/// [`PictureError::Data`] if there are no panels or too many, a panel has no
/// finite point, or a log-x panel has an x that is not positive; drawing and
/// encoding errors.
pub fn line_panels(title: &str, panels: &[Panel], format: Format) -> Result<Picture, PictureError> {
    let size = canvas(panels.len())?;
    for p in panels {
        let points = p.series.iter().flat_map(|s| &s.points);
        if !points.clone().any(|(x, y)| x.is_finite() && y.is_finite()) {
            return Err(PictureError::data("plot", format!("panel {:?} has no finite point", p.title)));
        }
        if p.log2_x {
            if let Some((x, _)) = points.clone().find(|(x, _)| x.is_nan() || *x <= 0.0) {
                return Err(PictureError::data("plot", format!("panel {:?}: x {x} on a log axis", p.title)));
            }
        }
    }
    render(&Lines { title, panels }, format, size)?.finish()
}

/// Draws bar `panels` side by side under `title`, each bar labelled with its value.
///
/// # Errors
/// [`PictureError::Data`] if there are no panels or too many, or a panel has
/// no bar or a value that is negative or not finite; drawing and encoding errors.
pub fn bar_panels(title: &str, panels: &[BarPanel], format: Format) -> Result<Picture, PictureError> {
    let size = canvas(panels.len())?;
    for p in panels {
        if p.bars.is_empty() {
            return Err(PictureError::data("bar plot", format!("panel {:?} has no bar", p.title)));
        }
        if let Some((l, v)) = p.bars.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            return Err(PictureError::data("bar plot", format!("panel {:?}: bar {l:?} is {v}", p.title)));
        }
    }
    render(&Bars { title, panels }, format, size)?.finish()
}

/// `2^v` printed as an integer when `v` is one, else nothing (log-2 axis labels).
fn power_of_two(v: f64) -> String {
    if (v - v.round()).abs() < 1e-6 && (0.0..=62.0).contains(&v.round()) {
        format!("{}", 1u64 << v.round() as u32)
    } else {
        String::new()
    }
}

impl Draw for Lines<'_> {
    const WHAT: &'static str = "line plot";

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PictureError> {
        let err = drawing::<DB::ErrorType>(Self::WHAT);
        let root = root.titled(self.title, text(22)).map_err(&err)?;
        for (area, panel) in root.split_evenly((1, self.panels.len())).iter().zip(self.panels) {
            let tx = |x: f64| if panel.log2_x { x.log2() } else { x };
            let finite: Vec<(f64, f64)> = panel
                .series
                .iter()
                .flat_map(|s| s.points.iter().map(|&(x, y)| (tx(x), y)))
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            let (x_lo, x_hi) =
                finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
            let pad = ((x_hi - x_lo) * 0.06).max(0.25);
            let (x_lo, x_hi) = if panel.log2_x { (x_lo - pad, x_hi + pad) } else { (x_lo.min(0.0), x_hi + pad) };
            let y_hi = finite.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.12;
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, text(17))
                .margin(14)
                .x_label_area_size(44)
                .y_label_area_size(64)
                .build_cartesian_2d(x_lo..x_hi, 0f64..y_hi)
                .map_err(&err)?;
            let log2 = panel.log2_x;
            let x_fmt = move |v: &f64| if log2 { power_of_two(*v) } else { format!("{v}") };
            let labels = if log2 { ((x_hi - x_lo).ceil() as usize + 1).max(2) } else { 10 };
            chart
                .configure_mesh()
                .x_desc(&panel.x_label)
                .y_desc(&panel.y_label)
                .x_labels(labels)
                .x_label_formatter(&x_fmt)
                .label_style(text(14))
                .axis_desc_style(text(15))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(&err)?;
            for (i, s) in panel.series.iter().enumerate() {
                let c = colour(i);
                let pts: Vec<(f64, f64)> =
                    s.points.iter().map(|&(x, y)| (tx(x), y)).filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
                if pts.is_empty() {
                    continue;
                }
                let style = c.stroke_width(2);
                let legend = move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 22, y)], style);
                if s.dashed {
                    chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style)).map_err(&err)?
                } else {
                    chart.draw_series(LineSeries::new(pts.clone(), style)).map_err(&err)?
                }
                .label(clip(&s.name, 48))
                .legend(legend);
                chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled()))).map_err(&err)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .label_font(text(13))
                .draw()
                .map_err(&err)?;
        }
        Ok(())
    }
}

impl Draw for Bars<'_> {
    const WHAT: &'static str = "bar plot";

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PictureError> {
        let err = drawing::<DB::ErrorType>(Self::WHAT);
        let root = root.titled(self.title, text(22)).map_err(&err)?;
        for (area, panel) in root.split_evenly((1, self.panels.len())).iter().zip(self.panels) {
            let n = panel.bars.len();
            let y_hi = panel.bars.iter().map(|b| b.1).fold(0.0f64, f64::max).max(1e-9) * 1.18;
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, text(17))
                .margin(14)
                .x_label_area_size(64)
                .y_label_area_size(64)
                .build_cartesian_2d(0f64..n as f64, 0f64..y_hi)
                .map_err(&err)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .disable_x_axis()
                .y_desc(&panel.y_label)
                .label_style(text(14))
                .axis_desc_style(text(15))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(&err)?;
            for (i, (label, v)) in panel.bars.iter().enumerate() {
                let (x0, x1) = (i as f64 + 0.15, i as f64 + 0.85);
                chart
                    .draw_series(std::iter::once(Rectangle::new([(x0, 0.0), (x1, *v)], colour(i).filled())))
                    .map_err(&err)?;
                let value = if *v >= 100.0 { format!("{v:.0}{}", panel.unit) } else { format!("{v:.1}{}", panel.unit) };
                chart
                    .draw_series(std::iter::once(Text::new(
                        value,
                        (i as f64 + 0.5, *v),
                        text(14).pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )))
                    .map_err(&err)?;
                // The label under the bar, in up to two lines.
                let (a, b) = split_label(label);
                let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
                for (k, line) in [a, b].into_iter().enumerate() {
                    area.draw(&Text::new(
                        clip(&line, 22),
                        (px - area.get_base_pixel().0, py - area.get_base_pixel().1 + 8 + 17 * k as i32),
                        text(13).pos(Pos::new(HPos::Center, VPos::Top)),
                    ))
                    .map_err(&err)?;
                }
            }
        }
        Ok(())
    }
}

/// `label` split at the space nearest its middle when it is long.
fn split_label(label: &str) -> (String, String) {
    if label.chars().count() <= 18 {
        return (label.to_string(), String::new());
    }
    let mid = label.len() / 2;
    let cut = label.char_indices().filter(|(_, c)| *c == ' ').map(|(i, _)| i).min_by_key(|&i| i.abs_diff(mid));
    match cut {
        Some(i) => (label[..i].to_string(), label[i + 1..].to_string()),
        None => (label.to_string(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_labels_only_at_powers() {
        assert_eq!(power_of_two(0.0), "1");
        assert_eq!(power_of_two(5.0), "32");
        assert_eq!(power_of_two(2.5), "");
        assert_eq!(power_of_two(-1.0), "");
    }

    #[test]
    fn long_labels_split_near_the_middle() {
        assert_eq!(split_label("VM"), ("VM".into(), String::new()));
        assert_eq!(split_label("local runtime, 16 workers"), ("local runtime,".into(), "16 workers".into()));
    }

    #[test]
    fn bad_plots_are_refused() {
        let panel = |points: Vec<(f64, f64)>, log2_x| Panel {
            title: "p".into(),
            series: vec![Series { name: "s".into(), points, dashed: false }],
            log2_x,
            ..Panel::default()
        };
        let e = |r: Result<Picture, PictureError>| r.unwrap_err().to_string();
        assert!(e(line_panels("t", &[], Format::Svg)).contains("0 panels"));
        assert!(e(line_panels("t", &[panel(vec![(1.0, f64::NAN)], false)], Format::Svg)).contains("no finite point"));
        assert!(e(line_panels("t", &[panel(vec![(0.0, 1.0)], true)], Format::Svg)).contains("x 0 on a log axis"));
        let bars = BarPanel { title: "b".into(), bars: vec![("a".into(), -1.0)], ..BarPanel::default() };
        assert!(e(bar_panels("t", &[bars], Format::Svg)).contains("bar \"a\" is -1"));
    }
}
