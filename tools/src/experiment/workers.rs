//! The seed's Table 6 and Fig. 12 (time against the number of workers) and
//! Fig. 14 (against one machine).
//!
//! Every row trains the same thing: one epoch over the same images in
//! rounds of [`global_batch`] examples, each round one SGD step whose
//! gradient N workers sum (`gradient-sum`: bit for bit the same step
//! whatever N), each worker with one vCPU (1,769 MB), the frozen VGG19 at
//! every step as the seed's. "One process" is the same training in one
//! process on all of this machine's cores (the kernel's trainer, as
//! `lml train-head` runs it): the seed's VM.
//!
//! The projection for AWS gives, per row, the seed's own workload (its
//! epochs × 20 steps × 8 images) to our system at the seed's scale on N
//! workers of 8 GB, batch 8 each, with the planner's model
//! ([`lml_lambda::cost::JobShape`]).

use std::time::Instant;

use lml_kernel::dataset::ImageDataset;
use lml_kernel::optim::{LrSchedule, Sgd};
use lml_kernel::standardize::FeatureStats;
use lml_kernel::trainer::{FeatureSource, ImageFeatures, Trainer};
use lml_kernel::Vgg19;
use lml_lambda::cost::{
    seconds_per_example, JobShape, Prices, DEFAULT_COMBINE_S, DEFAULT_WORKER_OVERHEAD_S, MB_PER_VCPU,
};
use lml_lambda::{JobSpec, SyncMode};

use super::table::Table;
use super::{machine, projection_speeds, Figure, Lab, Outcome, Result, Scale, CLASSES, CUT, INPUT_SIZE, SEED_BATCH};
use crate::calibrate::Speeds;
use crate::pictures::plots::{BarPanel, Panel, Series};

/// The seed's Table 6: (workers, epochs per worker, epochs, time in minutes).
pub const SEED: [(usize, u64, u64, f64); 6] = [
    (1, 45, 45, 221.0),
    (2, 36, 72, 193.0),
    (4, 30, 120, 157.0),
    (8, 27, 216, 139.0),
    (16, 21, 336, 118.0),
    (32, 18, 576, 132.0),
];

/// The seed's worker memory (8 GB, its Table 5's choice).
pub const SEED_MEMORY_MB: u32 = 8192;
/// Images in one of the seed's epochs: 20 steps of 8.
const SEED_EPOCH_IMAGES: u64 = 20 * SEED_BATCH as u64;
/// CIFAR-10's training images (Fig. 14's projection trains one epoch of them).
const CIFAR10_TRAIN: u64 = 50_000;
/// vCPUs of the seed's VM (an EC2 t2.xlarge).
const SEED_VM_VCPUS: u32 = 4;

/// The worker counts of the rows.
pub fn counts(scale: Scale) -> Vec<usize> {
    match scale {
        Scale::Tiny => vec![1, 2],
        Scale::Small => vec![1, 2, 4, 8, 16, 32],
    }
}

/// Images trained on (one epoch).
pub fn images(scale: Scale) -> usize {
    match scale {
        Scale::Tiny => 32,
        Scale::Small => 640,
    }
}

/// Examples per round, split between the workers.
pub fn global_batch(scale: Scale) -> usize {
    match scale {
        Scale::Tiny => 16,
        Scale::Small => 64,
    }
}

/// Projected hours of `examples` at the seed's scale on `workers` Lambda
/// workers of `memory` MB, batch 8 each, with the planner's assumed overheads.
fn lambda_hours(speeds: &Speeds, workers: usize, memory: u32, examples: u64) -> f64 {
    let per_round = (workers * SEED_BATCH) as u64;
    JobShape {
        workers,
        memory_mb: memory,
        arm64: false,
        examples,
        rounds: examples.div_ceil(per_round),
        seconds_per_example: seconds_per_example(speeds.image_224_fc7_s + speeds.feature_row_s, memory),
        worker_overhead_s: DEFAULT_WORKER_OVERHEAD_S,
        combine_s: DEFAULT_COMBINE_S,
        time_limit_s: 900.0,
        bytes_per_example: 0.0,
        parameter_bytes: 0.0,
        stored_gb: 0.0,
        stored_days: 0.0,
        endpoint_azs: 0,
    }
    .estimate(&Prices::default())
    .hours
}

/// The same training in one process on `threads` threads: seconds of the
/// steps (the standardisation pass before them, as a job's start makes it,
/// is not timed).
fn one_process(lab: &Lab, n: usize, batch: usize, threads: usize) -> Result<f64> {
    let data = lab.images(n)?;
    let root = &lab.root;
    let dataset = ImageDataset::open(root.join(data.images.as_deref().unwrap_or_default()), root.join(&data.labels))?;
    let vgg = Vgg19::open(lab.weights(), INPUT_SIZE, CUT)?;
    let source = ImageFeatures { dataset, vgg };
    let pool = lml_kernel::parallel::thread_pool(threads)?;
    pool.install(|| {
        let idx = FeatureStats::sample_indices(source.len(), lml_lambda::compute::STATS_SAMPLE_IMAGES);
        let stats = FeatureStats::compute(&source, &idx, SEED_BATCH)?;
        let spec = JobSpec::default();
        let sgd = Sgd { lr: spec.lr, momentum: spec.momentum, weight_decay: spec.weight_decay };
        let trainer = Trainer::new(CLASSES, source.feature_dim(), sgd, batch, spec.seed)?;
        let steps = trainer.steps_per_epoch(source.len());
        let mut trainer = trainer.with_schedule(LrSchedule::Cosine, steps).with_stats(stats)?;
        let t = Instant::now();
        trainer.epoch(&source, 0, |_, _| {})?;
        Ok(t.elapsed().as_secs_f64())
    })
}

/// Runs the rows and the one-process training; draws Figs. 12 and 14.
///
/// # Errors
/// A job that fails or does not finish; data and calibration errors.
pub fn run(lab: &Lab) -> Result<Outcome> {
    let (n, g) = (images(lab.scale), global_batch(lab.scale));
    let (speeds, speeds_note) = projection_speeds()?;
    let data = lab.images(n)?;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let mut t = Table::new(
        format!("Table 6: time against the number of workers (one epoch of {n} images, {g} a round)"),
        &[
            "workers",
            "seed: epochs per worker",
            "seed: epochs",
            "seed: time (min)",
            "here: batch per worker",
            "here: rounds",
            "here: time (s)",
            "here: speed-up",
            "here: CPU time (s)",
            "here: invocations",
            "AWS projection: the seed's epochs (min)",
        ],
    );
    let (mut here_pts, mut seed_pts, mut aws_pts) = (Vec::new(), Vec::new(), Vec::new());
    let mut times = Vec::new();
    for workers in counts(lab.scale) {
        let batch = g / workers;
        let spec = JobSpec {
            data: data.clone(),
            epochs: 1,
            batch,
            micro_batch: batch.min(SEED_BATCH),
            sync: SyncMode::GradientSum,
            ..JobSpec::default()
        };
        let run = lab.run(&format!("workers-{workers}"), workers, MB_PER_VCPU, spec)?;
        if run.timed_out {
            return Err(super::ExperimentError::Job {
                job: run.job.to_string(),
                message: "an invocation ran past its 15-minute limit on every try".into(),
            });
        }
        let base = times.first().map_or(run.rounds_s, |&(_, s)| s);
        times.push((workers, run.rounds_s));
        let seed = SEED.iter().find(|r| r.0 == workers);
        let aws_min = seed.map(|r| lambda_hours(&speeds, workers, SEED_MEMORY_MB, r.2 * SEED_EPOCH_IMAGES) * 60.0);
        t.row(vec![
            workers.to_string(),
            seed.map_or("-".into(), |r| r.1.to_string()),
            seed.map_or("-".into(), |r| r.2.to_string()),
            seed.map_or("-".into(), |r| format!("{:.0}", r.3)),
            batch.to_string(),
            run.progress.rounds.len().to_string(),
            format!("{:.2}", run.rounds_s),
            format!("{:.2}×", base / run.rounds_s),
            format!("{:.2}", run.cpu_s),
            run.invocations.to_string(),
            aws_min.map_or("-".into(), |m| format!("{m:.1}")),
        ]);
        here_pts.push((workers as f64, run.rounds_s));
        if let (Some(r), Some(m)) = (seed, aws_min) {
            seed_pts.push((workers as f64, r.3));
            aws_pts.push((workers as f64, m));
        }
    }
    let cpu = super::cpu_seconds();
    let vm_s = one_process(lab, n, g, cores)?;
    let vm_cpu = super::cpu_seconds() - cpu;
    t.row(vec![
        format!("one process, {cores} threads"),
        String::new(),
        String::new(),
        String::new(),
        g.to_string(),
        n.div_ceil(g).to_string(),
        format!("{vm_s:.2}"),
        format!("{:.2}×", times[0].1 / vm_s),
        format!("{vm_cpu:.2}"),
    ]);
    t.notes = vec![
        format!(
            "here: {} on the local runtime, every worker 1,769 MB (one compute thread); the frozen VGG19 at every step on {INPUT_SIZE}×{INPUT_SIZE} images to {CUT:?}; times are the rounds' (the start's standardisation pass over up to 256 images is left out, and out of the one-process time too); CPU time is the whole job's, standardisation included, and does not grow when other processes share the cores",
            machine()
        ),
        format!("every row is the same training (gradient sum: one SGD step of {g} examples a round); this machine has {cores} cores, so beyond {cores} workers there is nothing left to run in parallel"),
        format!(
            "AWS projection: the seed's workload of each row (its epochs × 20 steps × 8 images) on our system at the seed's scale (224×224 → fc7 at every step), N workers of 8 GB, batch 8 each, with the planner's assumed {DEFAULT_WORKER_OVERHEAD_S} s per worker invocation and {DEFAULT_COMBINE_S} s per combine; {speeds_note}"
        ),
    ];
    let log2 = |title: &str, y: &str, series: Vec<Series>| Panel {
        title: title.into(),
        x_label: "workers".into(),
        y_label: y.into(),
        series,
        log2_x: true,
    };
    let (lo, hi) = (times[0].0 as f64, times[times.len() - 1].0 as f64);
    let fig12 = Figure::Lines {
        title: "Time against the number of workers (the seed's Fig. 12)".into(),
        panels: vec![
            log2(
                "here (scaled)",
                "time (s)",
                vec![
                    Series { name: "local runtime, 1 vCPU a worker".into(), points: here_pts, dashed: false },
                    Series {
                        name: format!("one process, {cores} threads"),
                        points: vec![(lo, vm_s), (hi, vm_s)],
                        dashed: true,
                    },
                ],
            ),
            log2(
                "AWS Lambda, the seed's workload",
                "time (min)",
                vec![
                    Series { name: "seed (measured)".into(), points: seed_pts, dashed: false },
                    Series { name: "ours (projected)".into(), points: aws_pts, dashed: true },
                ],
            ),
        ],
    };
    let mut here_bars = vec![(format!("one process, {cores} threads"), vm_s)];
    for &(w, s) in
        times.iter().filter(|(w, _)| *w == 1 || *w == cores || *w == 16 || Some(w) == times.last().map(|l| &l.0))
    {
        here_bars.push((format!("local runtime, {w} worker{}", if w == 1 { "" } else { "s" }), s));
    }
    here_bars.dedup_by(|a, b| a.0 == b.0);
    let cifar = CIFAR10_TRAIN;
    let vm_aws =
        cifar as f64 * seconds_per_example(speeds.image_224_fc7_s + speeds.feature_row_s, SEED_VM_VCPUS * MB_PER_VCPU);
    let fig14 = Figure::Bars {
        title: "One machine against Lambda workers (the seed's Fig. 14)".into(),
        panels: vec![
            BarPanel {
                title: "here (scaled, measured)".into(),
                y_label: "time (s)".into(),
                bars: here_bars,
                unit: " s".into(),
            },
            BarPanel {
                title: "AWS, one CIFAR-10 epoch at 224 (projected)".into(),
                y_label: "time (min)".into(),
                bars: vec![
                    ("VM, 4 vCPUs, one process".into(), vm_aws / 60.0),
                    ("Lambda, 1 worker of 8 GB".into(), lambda_hours(&speeds, 1, SEED_MEMORY_MB, cifar) * 60.0),
                    ("Lambda, 16 workers of 8 GB".into(), lambda_hours(&speeds, 16, SEED_MEMORY_MB, cifar) * 60.0),
                ],
                unit: " min".into(),
            },
        ],
    };
    Ok(Outcome {
        tables: vec![("table6-workers".into(), t)],
        figures: vec![("fig12-workers".into(), fig12), ("fig14-vm".into(), fig14)],
    })
}
