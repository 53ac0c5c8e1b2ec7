//! Training curves of a job: training and held-out loss (top) and accuracy
//! (bottom) against rounds, with a dashed mark at the end of every epoch.

use lml_lambda::progress::Progress;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{colour, drawing, render, text, Draw, Format, Picture, PictureError};

/// Loss and accuracy after `round` rounds of updates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Rounds applied to the parameters that were scored.
    pub round: u64,
    pub loss: f64,
    pub accuracy: f64,
}

/// What the curves show.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Curves {
    pub title: String,
    /// Rounds per epoch: an epoch mark every this many rounds (0: none).
    pub rounds_per_epoch: u64,
    /// Training loss and accuracy of each round's examples, measured with
    /// the parameters the round started from (a round `k` scores at `k`).
    pub train: Vec<Point>,
    /// Held-out scores of the parameters after a round (round `k` at `k + 1`).
    pub held_out: Vec<Point>,
}

impl Curves {
    /// The curves of a training job's progress records: one training point
    /// per recorded round, one held-out point per round that was evaluated
    /// (every epoch's end by default, every round with `eval_every` 1).
    pub fn from_progress(job: &str, p: &Progress) -> Curves {
        let rounds_per_epoch = p.job.as_ref().map_or(0, |j| j.rounds_per_epoch);
        let train = p
            .rounds
            .values()
            .map(|r| Point { round: r.round, loss: r.train.loss, accuracy: r.train.accuracy })
            .collect();
        let held_out = p
            .rounds
            .values()
            .filter_map(|r| r.eval.map(|e| Point { round: r.round + 1, loss: e.loss, accuracy: e.accuracy }))
            .collect();
        let workers = p.job.as_ref().map_or(String::new(), |j| format!(", {} workers", j.workers));
        Curves { title: format!("job {job}{workers}"), rounds_per_epoch, train, held_out }
    }
}

/// Default size of the curves (pixels).
pub const SIZE: (u32, u32) = (960, 720);

/// Draws `c` as two panels, loss and accuracy against rounds.
///
/// # Errors
/// [`PictureError::Data`] if there is no finite training point (nothing to
/// draw); drawing and encoding errors.
pub fn training_curves(c: &Curves, format: Format) -> Result<Picture, PictureError> {
    if !c.train.iter().any(|p| p.loss.is_finite()) {
        return Err(PictureError::data("training curves", "no round with a finite training loss recorded yet"));
    }
    render(c, format, SIZE)?.finish()
}

impl Draw for Curves {
    const WHAT: &'static str = "training curves";

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PictureError> {
        let err = drawing::<DB::ErrorType>(Self::WHAT);
        let root = root.titled(&self.title, text(22)).map_err(&err)?;
        let panels = root.split_evenly((2, 1));
        let last = self.train.iter().chain(&self.held_out).map(|p| p.round).max().unwrap_or(0);
        let x_max = (last.max(1)) as f64;
        let finite = |v: f64| v.is_finite();
        let loss_max = self
            .train
            .iter()
            .chain(&self.held_out)
            .map(|p| p.loss)
            .filter(|&v| finite(v))
            .fold(0.0f64, f64::max)
            .max(1e-6)
            * 1.08;
        for (panel, (name, y_max)) in panels.iter().zip([("loss", loss_max), ("accuracy", 1.0)]) {
            let value = |p: &Point| if name == "loss" { p.loss } else { p.accuracy };
            let mut chart = ChartBuilder::on(panel)
                .margin(12)
                .x_label_area_size(42)
                .y_label_area_size(64)
                .build_cartesian_2d(0f64..x_max, 0f64..y_max)
                .map_err(&err)?;
            chart
                .configure_mesh()
                .x_desc("round")
                .y_desc(name)
                .x_label_formatter(&|v: &f64| format!("{v:.0}"))
                .label_style(text(14))
                .axis_desc_style(text(16))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(&err)?;
            if self.rounds_per_epoch > 0 && last / self.rounds_per_epoch <= 100 {
                let mark = RGBColor(150, 150, 150);
                let mut e = self.rounds_per_epoch;
                while e <= last {
                    let x = e as f64;
                    chart
                        .draw_series(DashedLineSeries::new(vec![(x, 0.0), (x, y_max)], 6, 4, mark.stroke_width(1)))
                        .map_err(&err)?;
                    if last / self.rounds_per_epoch <= 20 && x < 0.95 * x_max {
                        chart
                            .draw_series(std::iter::once(Text::new(
                                format!("epoch {}", e / self.rounds_per_epoch),
                                (x, y_max),
                                text(12).color(&mark),
                            )))
                            .map_err(&err)?;
                    }
                    e += self.rounds_per_epoch;
                }
            }
            let train: Vec<(f64, f64)> =
                self.train.iter().filter(|p| finite(value(p))).map(|p| (p.round as f64, value(p))).collect();
            let held: Vec<(f64, f64)> =
                self.held_out.iter().filter(|p| finite(value(p))).map(|p| (p.round as f64, value(p))).collect();
            let (c0, c1) = (colour(0), colour(1));
            chart
                .draw_series(LineSeries::new(train, c0.stroke_width(2)))
                .map_err(&err)?
                .label(format!("training {name}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c0.stroke_width(2)));
            if !held.is_empty() {
                chart
                    .draw_series(LineSeries::new(held.clone(), c1.stroke_width(2)))
                    .map_err(&err)?
                    .label(format!("held-out {name}"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c1.stroke_width(2)));
                chart.draw_series(held.into_iter().map(|p| Circle::new(p, 4, c1.filled()))).map_err(&err)?;
            }
            chart
                .configure_series_labels()
                .position(if name == "loss" {
                    SeriesLabelPosition::UpperRight
                } else {
                    SeriesLabelPosition::LowerRight
                })
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .label_font(text(14))
                .draw()
                .map_err(&err)?;
        }
        Ok(())
    }
}
