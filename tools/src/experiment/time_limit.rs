//! The seed's Table 3: how much training one invocation completes under a
//! time limit (one worker, batch 8, 20 steps an epoch).
//!
//! The seed's Lambda ran steps until its limit and stopped; ours plans each
//! step against its deadline and, before one could overrun, saves its state
//! and invokes its own continuation, so the job goes on. Each row runs one
//! job of [`steps`] sequential SGD steps of 8 images (one worker, model
//! averaging with that many local steps in one round: the seed's steps)
//! under the row's limit, and reads how far the first invocation got from
//! its continuation save ([`lml_lambda::compute::continuation_saves`]).

use lml_lambda::cost::{compute_threads, vcpu_share, MAX_MEMORY_MB, MB_PER_VCPU};
use lml_lambda::JobSpec;

use super::table::Table;
use super::{
    epochs_steps, machine, projection_speeds, seed_step_s, Lab, Outcome, Result, Scale, SECONDS_PER_SEED_MINUTE,
    SEED_BATCH,
};
use crate::experiment::Figure;
use crate::pictures::plots::{Panel, Series};

/// The seed's Table 3: (time limit in minutes, epochs, steps, total steps) in one invocation.
pub const SEED: [(u64, u64, u64, u64); 15] = [
    (1, 0, 0, 0),
    (2, 0, 4, 4),
    (3, 0, 9, 9),
    (4, 0, 15, 15),
    (5, 1, 0, 20),
    (6, 1, 5, 25),
    (7, 1, 11, 31),
    (8, 1, 17, 37),
    (9, 2, 2, 42),
    (10, 2, 7, 47),
    (11, 2, 11, 51),
    (12, 2, 15, 55),
    (13, 2, 19, 59),
    (14, 3, 4, 64),
    (15, 3, 8, 68),
];

/// The seed's memory for this table (10 GB).
pub const SEED_MEMORY_MB: u32 = MAX_MEMORY_MB;

/// Steps each row's job trains: 8 epochs of the seed's 20 (more than the
/// longest limit fits on the development machine, so that the first
/// invocation hands over), or 8 at the tiny scale.
pub fn steps(scale: Scale) -> u64 {
    match scale {
        Scale::Tiny => 8,
        Scale::Small => 160,
    }
}

/// The time limits (the seed's minutes) of the rows.
pub fn limits(scale: Scale) -> Vec<u64> {
    match scale {
        Scale::Tiny => vec![2, 8],
        Scale::Small => (1..=15).collect(),
    }
}

/// Memory of the workers here: as many vCPUs as this machine has cores, up
/// to the seed's 10 GB (so that the threads the runtime lends are real).
pub fn memory_here() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    cores.saturating_mul(MB_PER_VCPU).min(SEED_MEMORY_MB)
}

/// Runs the rows and draws the steps against the limit.
///
/// # Errors
/// A job that fails or does not finish; data and calibration errors.
pub fn run(lab: &Lab) -> Result<Outcome> {
    let s = steps(lab.scale);
    let (speeds, speeds_note) = projection_speeds()?;
    let data = lab.images(s as usize * SEED_BATCH)?;
    let memory = memory_here();
    let aws_step = seed_step_s(&speeds) / vcpu_share(SEED_MEMORY_MB);
    let default = JobSpec::default();
    let mut t = Table::new(
        "Table 3: training steps in one invocation against its time limit (1 worker, batch 8)",
        &[
            "limit (min)",
            "seed: epochs",
            "seed: steps",
            "seed: total steps",
            "limit here (s)",
            "here: steps in one invocation",
            &format!("here: invocations for {s} steps"),
            &format!("here: time for {s} steps (s)"),
            "AWS projection: steps in one invocation",
        ],
    );
    let (mut seed_pts, mut here_pts, mut aws_pts) = (Vec::new(), Vec::new(), Vec::new());
    for minutes in limits(lab.scale) {
        let limit_ms = (minutes as f64 * SECONDS_PER_SEED_MINUTE * 1e3).round() as u64;
        let (run, first, saves) = lab.seed_steps(&format!("time-limit-{minutes}"), memory, &data, s, limit_ms)?;
        // The planner's step at the seed's scale and memory, inside the limit less the reserve.
        let aws_limit_s = minutes as f64 * 60.0;
        let reserve_s = (aws_limit_s / 10.0).min(default.safety_ms as f64 / 1e3);
        let aws_steps = ((aws_limit_s - reserve_s) / aws_step).floor().max(0.0) as u64;
        let seed = SEED.iter().find(|r| r.0 == minutes);
        let (e, st, total) = epochs_steps(first);
        let (ae, ast, atotal) = epochs_steps(aws_steps);
        t.row(vec![
            minutes.to_string(),
            seed.map_or("-".into(), |r| r.1.to_string()),
            seed.map_or("-".into(), |r| r.2.to_string()),
            seed.map_or("-".into(), |r| r.3.to_string()),
            format!("{:.1}", limit_ms as f64 / 1e3),
            format!("{total} (= {e}×20 + {st})"),
            if run.timed_out { format!("{}, then timed out", saves + 1) } else { (saves + 1).to_string() },
            if run.timed_out { "- (timed out)".into() } else { format!("{:.2}", run.rounds_s) },
            format!("{atotal} (= {ae}×20 + {ast})"),
        ]);
        if let Some(r) = seed {
            seed_pts.push((minutes as f64, r.3 as f64));
        }
        here_pts.push((minutes as f64, first as f64));
        aws_pts.push((minutes as f64, aws_steps as f64));
    }
    t.notes = vec![
        format!(
            "here: {} on the local runtime, {memory} MB workers ({} compute threads); the frozen VGG19 at every step on {}×{} images to {:?} (about 1/49 of the seed's compute per image); one of the seed's minutes is {SECONDS_PER_SEED_MINUTE} s",
            machine(),
            compute_threads(memory),
            super::INPUT_SIZE,
            super::INPUT_SIZE,
            super::CUT
        ),
        format!("each job trains {s} steps to its end: an invocation saves its state and continues itself before its deadline, keeping a tenth of the limit in reserve"),
        format!(
            "AWS projection: our system at the seed's scale (224×224 → fc7 at every step) with {SEED_MEMORY_MB} MB ({:.2} vCPUs): {aws_step:.2} s a step from {speeds_note}; the seed's Python took about 13 s",
            vcpu_share(SEED_MEMORY_MB)
        ),
    ];
    let panel = |title: &str, y: &str, series: Vec<Series>| Panel {
        title: title.into(),
        x_label: "time limit (the seed's minutes)".into(),
        y_label: y.into(),
        series,
        log2_x: false,
    };
    let seed_series = Series { name: "seed, AWS Lambda (measured)".into(), points: seed_pts, dashed: false };
    let figure = Figure::Lines {
        title: "Steps in one invocation against its time limit (the seed's Table 3)".into(),
        panels: vec![
            panel(
                "here (scaled)",
                "steps",
                vec![
                    seed_series.clone(),
                    Series { name: "ours, local runtime (measured)".into(), points: here_pts, dashed: false },
                ],
            ),
            panel(
                "AWS Lambda, the seed's scale",
                "steps",
                vec![seed_series, Series { name: "ours (projected)".into(), points: aws_pts, dashed: true }],
            ),
        ],
    };
    Ok(Outcome { tables: vec![("table3-time-limit".into(), t)], figures: vec![("table3-time-limit".into(), figure)] })
}
