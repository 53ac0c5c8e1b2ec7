//! The seed's Table 5: steps and time against the function's memory size
//! (one worker, a 15-minute limit, 3 epochs of 20 steps of 8 images).
//!
//! On Lambda memory buys CPU: [`vcpu_share`] of it, run on
//! [`compute_threads`] threads. Each row runs one job of [`steps`] steps
//! with the row's memory on the local runtime (which lends the invocation
//! that many threads, on however many cores this machine has) under the
//! seed's 15 minutes, scaled; and projects the same steps at the seed's
//! scale on AWS. The seed ran out of memory below 5 GB (Python, TensorFlow
//! and a 549 MB model); the peak resident memory of these runs is noted.

use lml_lambda::cost::{compute_threads, seconds_per_example, vcpu_share};
use lml_lambda::JobSpec;

use super::table::Table;
use super::{
    epochs_steps, machine, projection_speeds, seed_step_s, Figure, Lab, Outcome, Result, Scale,
    SECONDS_PER_SEED_MINUTE, SEED_BATCH,
};
use crate::pictures::plots::{Panel, Series};

/// The seed's Table 5: (memory in GB, epochs, steps, total steps, time).
pub const SEED: [(u32, u64, u64, u64, &str); 10] = [
    (1, 0, 0, 0, "out of memory"),
    (2, 0, 0, 0, "out of memory"),
    (3, 0, 0, 0, "out of memory"),
    (4, 0, 1, 1, "out of memory"),
    (5, 2, 16, 56, "15 min (limit)"),
    (6, 3, 0, 60, "14 min 26 s"),
    (7, 3, 0, 60, "13 min 48 s"),
    (8, 3, 0, 60, "13 min 05 s"),
    (9, 3, 0, 60, "12 min 20 s"),
    (10, 3, 0, 60, "11 min 42 s"),
];

/// The seed's time limit for this table (minutes).
pub const SEED_LIMIT_MIN: u64 = 15;

/// Steps each row's job trains: the seed's 3 epochs of 20, or 4 at the tiny scale.
pub fn steps(scale: Scale) -> u64 {
    match scale {
        Scale::Tiny => 4,
        Scale::Small => 60,
    }
}

/// The memory sizes of the rows (GB of 1,024 MB, as the seed's).
pub fn sizes_gb(scale: Scale) -> Vec<u32> {
    match scale {
        Scale::Tiny => vec![1, 10],
        Scale::Small => (1..=10).collect(),
    }
}

/// The process's peak resident memory (MiB), from `/proc/self/status`.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs the rows and draws the time against memory.
///
/// # Errors
/// A job that fails or does not finish; data and calibration errors.
pub fn run(lab: &Lab) -> Result<Outcome> {
    let s = steps(lab.scale);
    let (speeds, speeds_note) = projection_speeds()?;
    let data = lab.images(s as usize * SEED_BATCH)?;
    let default = JobSpec::default();
    let limit_ms = (SEED_LIMIT_MIN as f64 * SECONDS_PER_SEED_MINUTE * 1e3).round() as u64;
    let mut t = Table::new(
        format!("Table 5: {s} training steps against the function's memory (1 worker, batch 8, 15-minute limit)"),
        &[
            "memory (GB)",
            "seed: epochs",
            "seed: steps",
            "seed: total steps",
            "seed: time",
            "vCPU share",
            "threads here",
            "here: steps in one invocation",
            &format!("here: time for {s} steps (s)"),
            &format!("AWS projection: time for {s} steps"),
        ],
    );
    let (mut seed_pts, mut here_pts, mut aws_pts) = (Vec::new(), Vec::new(), Vec::new());
    // The seed's limit less the reserve a worker keeps (a tenth, at most the spec's default).
    let aws_limit_s = SEED_LIMIT_MIN as f64 * 60.0;
    let aws_usable_s = aws_limit_s - (aws_limit_s / 10.0).min(default.safety_ms as f64 / 1e3);
    let mut over_limit = Vec::new();
    for gb in sizes_gb(lab.scale) {
        let memory = gb * 1024;
        let (run, first, _) = lab.seed_steps(&format!("memory-{gb}gb"), memory, &data, s, limit_ms)?;
        let aws_s = s as f64 * seconds_per_example(seed_step_s(&speeds), memory);
        if aws_s > aws_usable_s {
            over_limit.push(gb);
        }
        let seed = SEED.iter().find(|r| r.0 == gb);
        let (e, st, total) = epochs_steps(first);
        t.row(vec![
            gb.to_string(),
            seed.map_or("-".into(), |r| r.1.to_string()),
            seed.map_or("-".into(), |r| r.2.to_string()),
            seed.map_or("-".into(), |r| r.3.to_string()),
            seed.map_or("-".into(), |r| r.4.to_string()),
            format!("{:.2}", vcpu_share(memory)),
            compute_threads(memory).to_string(),
            format!("{total} (= {e}×20 + {st})"),
            if run.timed_out { "- (timed out)".into() } else { format!("{:.2}", run.rounds_s) },
            format!("{:.1} min", aws_s / 60.0),
        ]);
        if let Some(r) = seed.filter(|r| r.3 == 60) {
            // "14 min 26 s" → minutes.
            let mut words = r.4.split_whitespace();
            let m: f64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(f64::NAN);
            let sec: f64 = words.nth(1).and_then(|w| w.parse().ok()).unwrap_or(0.0);
            seed_pts.push((f64::from(gb), m + sec / 60.0));
        }
        if !run.timed_out {
            here_pts.push((f64::from(gb), run.rounds_s));
        }
        aws_pts.push((f64::from(gb), aws_s / 60.0));
    }
    let peak = peak_rss_mib().map_or("unknown".into(), |m| format!("{m:.0} MiB"));
    t.notes = vec![
        format!(
            "here: {} on the local runtime, which lends an invocation ⌈memory / 1,769 MB⌉ threads (at most 6) on this machine's cores; the frozen VGG19 at every step on {}×{} images to {:?}; the seed's 15 minutes are {:.1} s",
            machine(),
            super::INPUT_SIZE,
            super::INPUT_SIZE,
            super::CUT,
            limit_ms as f64 / 1e3
        ),
        format!("peak resident memory of this whole process (every row, the runtime, the weights mapped): {peak}: no row runs out of memory (the seed needed 5 GB)"),
        format!(
            "AWS projection: our system at the seed's scale (224×224 → fc7 at every step), compute time = seconds per step on one vCPU ({:.2} s, {speeds_note}) / the vCPU share; {}",
            seed_step_s(&speeds),
            if over_limit.is_empty() {
                "every row fits one 15-minute invocation".to_string()
            } else {
                format!("{over_limit:?} GB need more than one 15-minute invocation (continuations)")
            }
        ),
    ];
    let panel = |title: &str, y: &str, series: Vec<Series>| Panel {
        title: title.into(),
        x_label: "memory (GB)".into(),
        y_label: y.into(),
        series,
        log2_x: false,
    };
    let figure = Figure::Lines {
        title: format!("{s} steps against the function's memory (the seed's Table 5)"),
        panels: vec![
            panel(
                "here (scaled)",
                "time (s)",
                vec![Series { name: "ours, local runtime (measured)".into(), points: here_pts, dashed: false }],
            ),
            panel(
                "AWS Lambda, the seed's scale",
                "time (min)",
                vec![
                    Series { name: "seed (measured)".into(), points: seed_pts, dashed: false },
                    Series { name: "ours (projected)".into(), points: aws_pts, dashed: true },
                ],
            ),
        ],
    };
    Ok(Outcome { tables: vec![("table5-memory".into(), t)], figures: vec![("table5-memory".into(), figure)] })
}

#[cfg(test)]
mod tests {
    #[test]
    fn peak_memory_is_read() {
        let m = super::peak_rss_mib().expect("VmHWM in /proc/self/status");
        assert!(m > 1.0, "{m} MiB");
    }
}
