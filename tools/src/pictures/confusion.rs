//! The confusion matrix as a heat map: one cell per (true, predicted)
//! class, shaded by the share of the true class's examples it holds (so a
//! row is the class's recall spread over the predictions), with the counts
//! written in when the classes are few enough to read them.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{clip, drawing, render, text, Draw, Format, Picture, PictureError};

/// Most classes drawn (a cell is at least 2 pixels).
pub const MAX_CLASSES: usize = 512;

/// The darkest shade (a row's every example in one cell).
const DARK: (f64, f64, f64) = (8.0, 48.0, 107.0);

struct Matrix<'a> {
    counts: &'a [Vec<u64>],
    names: Vec<String>,
    title: String,
    cell: u32,
    left: u32,
    top: u32,
}

/// Layout of the heat map: (cell side, left margin, top margin, canvas size).
fn layout(classes: usize) -> (u32, u32, u32, (u32, u32)) {
    let c = classes as u32;
    let cell = (600 / c).clamp(2, 64);
    let (left, top, bottom, right) = (130, 56, 120, 110);
    (cell, left, top, (left + c * cell + right, top + c * cell + bottom))
}

/// The shade of a cell holding `share` (0..=1) of its row.
fn shade(share: f64) -> RGBColor {
    let s = share.clamp(0.0, 1.0);
    let mix = |dark: f64| (255.0 + (dark - 255.0) * s).round() as u8;
    RGBColor(mix(DARK.0), mix(DARK.1), mix(DARK.2))
}

/// Draws `matrix` (`matrix[t][p]`: examples of true class `t` predicted as
/// `p`) with the class names `classes` (empty: the class numbers) under
/// `title`, which gets the example count and accuracy appended.
///
/// # Errors
/// [`PictureError::Data`] if the matrix is empty, not square, larger than
/// [`MAX_CLASSES`], has a total that overflows, or `classes` is neither
/// empty nor one name per row; drawing and encoding errors.
pub fn confusion_matrix(
    matrix: &[Vec<u64>],
    classes: &[String],
    title: &str,
    format: Format,
) -> Result<Picture, PictureError> {
    let n = matrix.len();
    let bad = |m: String| PictureError::data("confusion matrix", m);
    if n == 0 || n > MAX_CLASSES {
        return Err(bad(format!("{n} classes: expected 1 to {MAX_CLASSES}")));
    }
    if let Some((i, row)) = matrix.iter().enumerate().find(|(_, r)| r.len() != n) {
        return Err(bad(format!("row {i} has {} columns, expected {n} (a square matrix)", row.len())));
    }
    if !classes.is_empty() && classes.len() != n {
        return Err(bad(format!("{} class names for {n} classes", classes.len())));
    }
    let total = matrix
        .iter()
        .flatten()
        .try_fold(0u64, |a, &b| a.checked_add(b))
        .ok_or_else(|| bad("the counts' total overflows".into()))?;
    let correct: u64 = (0..n).map(|i| matrix[i][i]).sum();
    let accuracy = if total > 0 { correct as f64 / total as f64 } else { 0.0 };
    let names = if classes.is_empty() { (0..n).map(|i| i.to_string()).collect() } else { classes.to_vec() };
    let (cell, left, top, size) = layout(n);
    let m = Matrix {
        counts: matrix,
        names,
        title: format!("{title}: {total} examples, accuracy {accuracy:.3}"),
        cell,
        left,
        top,
    };
    render(&m, format, size)?.finish()
}

impl Draw for Matrix<'_> {
    const WHAT: &'static str = "confusion matrix";

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PictureError> {
        let err = drawing::<DB::ErrorType>(Self::WHAT);
        let n = self.counts.len() as i32;
        let (cell, left, top) = (self.cell as i32, self.left as i32, self.top as i32);
        let (w, _) = root.dim_in_pixel();
        root.draw(&Text::new(self.title.clone(), (w as i32 / 2, 18), text(20).pos(Pos::new(HPos::Center, VPos::Top))))
            .map_err(&err)?;
        let label_size = (cell as u32 * 2 / 5).clamp(8, 14);
        let show_names = cell >= 8;
        let show_counts = cell >= 26;
        for (t, row) in self.counts.iter().enumerate() {
            let row_total: u64 = row.iter().sum();
            for (p, &count) in row.iter().enumerate() {
                let share = if row_total > 0 { count as f64 / row_total as f64 } else { 0.0 };
                let (x0, y0) = (left + p as i32 * cell, top + t as i32 * cell);
                root.draw(&Rectangle::new([(x0, y0), (x0 + cell, y0 + cell)], shade(share).filled())).map_err(&err)?;
                if show_counts {
                    let ink = if share > 0.5 { WHITE } else { BLACK };
                    let style =
                        text((cell as u32 / 3).clamp(9, 16)).color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
                    root.draw(&Text::new(count.to_string(), (x0 + cell / 2, y0 + cell / 2), style)).map_err(&err)?;
                }
            }
        }
        // The diagonal framed, the grid's outline.
        for i in 0..n {
            let (x0, y0) = (left + i * cell, top + i * cell);
            root.draw(&Rectangle::new([(x0, y0), (x0 + cell, y0 + cell)], RGBColor(230, 120, 0).stroke_width(1)))
                .map_err(&err)?;
        }
        let side = n * cell;
        root.draw(&Rectangle::new([(left, top), (left + side, top + side)], BLACK.stroke_width(1))).map_err(&err)?;
        if show_names {
            for (i, name) in self.names.iter().enumerate() {
                let c = i as i32 * cell + cell / 2;
                let name = clip(name, 14);
                root.draw(&Text::new(
                    name.clone(),
                    (left - 6, top + c),
                    text(label_size).pos(Pos::new(HPos::Right, VPos::Center)),
                ))
                .map_err(&err)?;
                root.draw(&Text::new(
                    name,
                    (left + c, top + side + 6),
                    text(label_size).transform(FontTransform::Rotate90).pos(Pos::new(HPos::Left, VPos::Center)),
                ))
                .map_err(&err)?;
            }
        }
        root.draw(&Text::new(
            "predicted class",
            (left + side / 2, top + side + 100),
            text(16).pos(Pos::new(HPos::Center, VPos::Bottom)),
        ))
        .map_err(&err)?;
        root.draw(&Text::new(
            "true class",
            (14, top + side / 2),
            text(16).transform(FontTransform::Rotate270).pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(&err)?;
        // The colour bar: share of the true class's examples.
        let (bx, bh) = (left + side + 24, side.max(60));
        let steps = 50;
        for s in 0..steps {
            let share = 1.0 - s as f64 / (steps - 1) as f64;
            let y0 = top + s * bh / steps;
            let y1 = top + (s + 1) * bh / steps;
            root.draw(&Rectangle::new([(bx, y0), (bx + 16, y1)], shade(share).filled())).map_err(&err)?;
        }
        root.draw(&Rectangle::new([(bx, top), (bx + 16, top + bh)], BLACK.stroke_width(1))).map_err(&err)?;
        for (v, y) in [(1.0, top), (0.5, top + bh / 2), (0.0, top + bh)] {
            root.draw(&Text::new(format!("{v:.1}"), (bx + 22, y), text(12).pos(Pos::new(HPos::Left, VPos::Center))))
                .map_err(&err)?;
        }
        root.draw(&Text::new(
            "share of the true class",
            (bx + 60, top + bh / 2),
            text(12).transform(FontTransform::Rotate90).pos(Pos::new(HPos::Center, VPos::Center)),
        ))
        .map_err(&err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_matrices_are_refused_naming_the_problem() {
        let names = |n: usize| (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>();
        type Case = (Vec<Vec<u64>>, Vec<String>, &'static str);
        let cases: [Case; 4] = [
            (vec![], vec![], "0 classes"),
            (vec![vec![1, 2], vec![3]], vec![], "row 1 has 1 columns"),
            (vec![vec![1]], names(2), "2 class names for 1 classes"),
            (vec![vec![u64::MAX, 1], vec![0, 0]], vec![], "overflows"),
        ];
        for (m, c, needle) in cases {
            let e = confusion_matrix(&m, &c, "t", Format::Svg).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn shades_run_from_white_to_dark() {
        assert_eq!(shade(0.0), RGBColor(255, 255, 255));
        assert_eq!(shade(1.0), RGBColor(8, 48, 107));
        assert_eq!(shade(2.0), shade(1.0));
    }
}
