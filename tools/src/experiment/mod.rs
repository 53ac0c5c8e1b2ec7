//! The seed's experiments, reproduced on the local runtime (`lml experiment`).
//!
//! The seed (Naik, 2021) measured on AWS Lambda, with Python and TensorFlow,
//! CIFAR-10 resized to 224×224 through VGG19 at every step, batch 8:
//! * Table 3: training steps one invocation completes under time limits of
//!   1 to 15 minutes (10 GB, one worker);
//! * Table 5: steps and time under memory sizes of 1 to 10 GB (15 minutes,
//!   one worker, 3 epochs of 20 steps);
//! * Table 6 and Fig. 12: time against 1 to 32 workers; Fig. 14: against one VM.
//!
//! Here the same questions are put to our system on the local runtime
//! (Lambda's semantics: invocation deadlines with continuations, memory →
//! compute threads by [`lml_lambda::cost::compute_threads`], concurrent
//! workers), scaled down to run in minutes on a small machine:
//! * the frozen VGG19 runs at every step as the seed's did (`forward:
//!   every-step`), on generated 32×32 images with learnable classes and
//!   random weights to `pool5` ([`INPUT_SIZE`], [`CUT`]): about 1/49 of the
//!   seed's compute per image (`lml_kernel::vgg::flops_per_image`);
//! * one of the seed's minutes of time limit is [`SECONDS_PER_SEED_MINUTE`] here;
//! * the machine's cores cap what memory sizes above 2 vCPUs can show (the
//!   local runtime lends them threads the machine may not have).
//!
//! Each table prints the seed's numbers beside ours, and beside what the
//! planner ([`lml_lambda::cost`], speeds from [`crate::calibrate`]) projects
//! for our system on AWS at the seed's full scale (224×224 → fc7 at every step).

pub mod memory;
pub mod table;
pub mod time_limit;
pub mod workers;

use std::path::{Path, PathBuf};
use std::time::Instant;

use lml_kernel::Cut;
use lml_lambda::event::{Event, JobId, StartEvent};
use lml_lambda::layout::JobDir;
use lml_lambda::progress::{JobStatus, LocalProgress, Progress, ProgressStore};
use lml_lambda::services::SystemClock;
use lml_lambda::spec::Forward;
use lml_lambda::{DataSpec, JobSpec, LocalConfig, LocalRuntime};

use crate::calibrate::{default_path, default_speeds, Arch, CalibrationFile, Speeds};
use crate::pictures::plots::{bar_panels, line_panels, BarPanel, Panel};
use crate::pictures::{Format, Picture, PictureError};
use table::Table;

/// How large the experiments are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Seconds per experiment: a few rows, a few steps (the tests).
    Tiny,
    /// Minutes per experiment on a 2-core machine: every row of the seed's tables.
    Small,
}

impl std::str::FromStr for Scale {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "tiny" => Ok(Scale::Tiny),
            "small" => Ok(Scale::Small),
            _ => Err(format!("{s:?}: expected tiny or small")),
        }
    }
}

impl std::fmt::Display for Scale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scale::Tiny => "tiny",
            Scale::Small => "small",
        })
    }
}

/// The seed's batch (its Tables 2 and 4).
pub const SEED_BATCH: usize = 8;
/// The seed's steps per epoch (its Tables 2 and 4).
pub const SEED_STEPS_PER_EPOCH: u64 = 20;
/// Network input side of the scaled runs.
pub const INPUT_SIZE: usize = 32;
/// Feature cut of the scaled runs (512 features at 32×32, no fc weights to read).
pub const CUT: Cut = Cut::Pool5;
/// Seconds of time limit here for each minute of the seed's.
pub const SECONDS_PER_SEED_MINUTE: f64 = 0.5;
/// Classes of the generated images.
pub const CLASSES: usize = 10;
/// Seed of the generated images and weights.
const DATA_SEED: u64 = 0;

/// Errors of an experiment.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error(transparent)]
    Kernel(#[from] lml_kernel::KernelError),
    #[error(transparent)]
    Protocol(#[from] lml_lambda::ProtocolError),
    #[error(transparent)]
    Picture(#[from] PictureError),
    #[error(transparent)]
    Calibration(#[from] crate::calibrate::CalibrationError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("experiment job {job}: {message}")]
    Job { job: String, message: String },
}

pub type Result<T> = std::result::Result<T, ExperimentError>;

/// What an experiment produced: its tables and figures, each with a file stem.
#[derive(Debug, Default)]
pub struct Outcome {
    pub tables: Vec<(String, Table)>,
    pub figures: Vec<(String, Figure)>,
}

/// A figure's data, drawn in either format by [`Figure::draw`].
#[derive(Clone, Debug, PartialEq)]
pub enum Figure {
    Lines { title: String, panels: Vec<Panel> },
    Bars { title: String, panels: Vec<BarPanel> },
}

impl Figure {
    /// The figure as a picture in `format`.
    ///
    /// # Errors
    /// As [`line_panels`] and [`bar_panels`].
    pub fn draw(&self, format: Format) -> std::result::Result<Picture, PictureError> {
        match self {
            Figure::Lines { title, panels } => line_panels(title, panels, format),
            Figure::Bars { title, panels } => bar_panels(title, panels, format),
        }
    }
}

/// One finished job on the local runtime.
#[derive(Clone, Debug)]
pub struct JobRun {
    pub job: JobId,
    pub folder: JobDir,
    /// From the start event to the runtime going idle (s).
    pub wall_s: f64,
    /// From the first parameters to the last (the rounds only, without the
    /// start's standardisation pass), by the round records (s).
    pub rounds_s: f64,
    /// CPU time this process spent from the start event to idle (s): the
    /// work whatever else the machine runs ([`cpu_seconds`]).
    pub cpu_s: f64,
    /// Invocations run (start, workers and continuations, combines; retries too).
    pub invocations: u64,
    /// An invocation ran past its time limit on every try (Lambda's two
    /// retries included), so the job stopped there: the limit is too short
    /// for one step, at least while the machine is this busy.
    pub timed_out: bool,
    pub progress: Progress,
}

/// The experiments' working folder: generated data and weights under
/// `root/data/` (made once, reused), one job folder per run.
pub struct Lab {
    pub root: PathBuf,
    pub scale: Scale,
    weights: String,
    runtime: tokio::runtime::Runtime,
    /// Prefix of this run's job ids, so reruns in the same root never collide.
    stamp: u64,
}

impl Lab {
    /// Opens (creating) the folder `root` and its random VGG19 weights to [`CUT`].
    ///
    /// # Errors
    /// I/O and kernel errors naming the folder or file.
    pub fn new(root: &Path, scale: Scale) -> Result<Lab> {
        let data = root.join("data");
        std::fs::create_dir_all(&data).map_err(|source| ExperimentError::Io { path: data.clone(), source })?;
        let weights = crate::work::weights_or_random(None, &data, DATA_SEED, CUT)?;
        let rel = weights.strip_prefix(root).map_err(|_| ExperimentError::Job {
            job: "setup".into(),
            message: format!("weights {} are not under {}", weights.display(), root.display()),
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|source| ExperimentError::Io { path: root.to_owned(), source })?;
        let stamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Ok(Lab { root: root.to_owned(), scale, weights: rel.to_string_lossy().into_owned(), runtime, stamp })
    }

    /// `n` generated images (made once under `data/`), as the seed's data: through the frozen VGG19 at every step.
    ///
    /// # Errors
    /// Kernel errors naming the file that cannot be written.
    pub fn images(&self, n: usize) -> Result<DataSpec> {
        let name = format!("n{n}");
        crate::work::ensure_images(&self.root.join("data"), &name, n, CLASSES, DATA_SEED)?;
        Ok(DataSpec {
            features: None,
            images: Some(format!("data/{name}_x.npy")),
            labels: format!("data/{name}_y.npy"),
            weights: Some(self.weights.clone()),
            input_size: Some(INPUT_SIZE),
            cut: Some(CUT),
            forward: Some(Forward::EveryStep),
        })
    }

    /// The weights folder, under the root.
    pub fn weights(&self) -> PathBuf {
        self.root.join(&self.weights)
    }

    /// The seed's sequential steps in one worker: `steps` steps of the seed's
    /// batch as local steps of one model-averaging round on `data`, under a
    /// time limit of `limit_ms` (a tenth kept in reserve, at most the default's).
    /// Returns the run, the steps its first invocation did (all of them
    /// without a continuation save, unless every try timed out) and the
    /// number of continuation saves (invocations − 1).
    ///
    /// # Errors
    /// As [`run`](Self::run), and a continuation save that cannot be read.
    pub fn seed_steps(
        &self,
        name: &str,
        memory_mb: u32,
        data: &DataSpec,
        steps: u64,
        limit_ms: u64,
    ) -> Result<(JobRun, u64, usize)> {
        let default = JobSpec::default();
        let spec = JobSpec {
            data: data.clone(),
            epochs: 1,
            batch: SEED_BATCH,
            micro_batch: SEED_BATCH,
            sync: lml_lambda::SyncMode::ModelAverage,
            local_steps: steps as usize,
            time_limit_ms: limit_ms,
            safety_ms: (limit_ms / 10).min(default.safety_ms),
            ..default
        };
        let run = self.run(name, 1, memory_mb, spec)?;
        let saves = lml_lambda::compute::continuation_saves(&run.folder, 0, 0)?;
        let first = saves.first().map_or(if run.timed_out { 0 } else { steps }, |c| c.cursor as u64);
        Ok((run, first, saves.len()))
    }

    /// Runs `spec` on `workers` workers of `memory_mb` to its end on a fresh
    /// local runtime whose invocations get `spec.time_limit_ms`.
    ///
    /// # Errors
    /// The start's error; [`ExperimentError::Job`] if an invocation failed for
    /// good (other than by running past its limit: [`JobRun::timed_out`]) or
    /// the job did not finish.
    pub fn run(&self, name: &str, workers: usize, memory_mb: u32, spec: JobSpec) -> Result<JobRun> {
        let job = JobId::new(&format!("{name}-{}", self.stamp))?;
        let config = LocalConfig { memory_mb, time_limit_ms: spec.time_limit_ms, ..LocalConfig::default() };
        let name = job.to_string();
        let failed = move |message: String| ExperimentError::Job { job: name, message };
        self.runtime.block_on(async move {
            let rt = LocalRuntime::start(&self.root, SystemClock, config);
            let t = Instant::now();
            let cpu = cpu_seconds();
            let start = Event::Start(StartEvent { job: job.clone(), workers, spec });
            rt.call(&start.to_json()).await?;
            rt.idle().await;
            let wall_s = t.elapsed().as_secs_f64();
            let cpu_s = cpu_seconds() - cpu;
            let dead = rt.dead_letters();
            // The local runtime's words for a run past the limit (`lml_lambda::local`).
            let (timeouts, others): (Vec<_>, Vec<_>) = dead.iter().partition(|d| d.error.starts_with("timed out"));
            if let Some(d) = others.first() {
                return Err(failed(format!("an invocation failed for good: {} ({})", d.error, d.event)));
            }
            let timed_out = !timeouts.is_empty();
            let progress = LocalProgress::new(&self.root).load(&job).await?;
            match progress.job.as_ref().map(|j| j.status) {
                Some(JobStatus::Finished) => {}
                _ if timed_out => {}
                other => return Err(failed(format!("ended {other:?}, not finished"))),
            }
            let rounds_s = progress.rounds.values().map(|r| r.round_ms).sum::<u64>() as f64 / 1e3;
            Ok(JobRun {
                folder: JobDir::new(&self.root, &job),
                job,
                wall_s,
                rounds_s,
                cpu_s,
                invocations: rt.invocations(),
                timed_out,
                progress,
            })
        })
    }
}

/// The speeds the projections use for Lambda x86_64 (the seed's
/// architecture): this machine's calibration if `lml plan --calibrate` was
/// run here, else the documented default; and a note saying which.
///
/// # Errors
/// A calibration file that exists but is malformed.
pub fn projection_speeds() -> Result<(Speeds, String)> {
    let file = match default_path() {
        Ok(path) => CalibrationFile::load(&path)?,
        Err(_) => CalibrationFile::default(),
    };
    Ok(match file.get(Arch::X86_64) {
        Some(c) => (c.speeds, format!("speeds calibrated on {} (`lml plan --calibrate`)", c.cpu)),
        None => (default_speeds(Arch::X86_64), "the planner's default x86_64 speeds (`lml plan`)".into()),
    })
}

/// Seconds one of the seed's steps (8 images at 224×224 → fc7, then a head
/// step) takes on one full vCPU at `speeds`.
pub fn seed_step_s(speeds: &Speeds) -> f64 {
    SEED_BATCH as f64 * (speeds.image_224_fc7_s + speeds.feature_row_s)
}

/// `steps` as the seed wrote them: (epochs, steps, total) at 20 steps an epoch.
pub fn epochs_steps(steps: u64) -> (u64, u64, u64) {
    (steps / SEED_STEPS_PER_EPOCH, steps % SEED_STEPS_PER_EPOCH, steps)
}

/// CPU time (user + system) this process has used, in seconds, from
/// `/proc/self/stat` (in units of `USER_HZ`, 100 a second on Linux); 0 where
/// there is no such file. Unlike wall time it does not grow when other
/// processes share the cores.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The machine: CPU model and logical CPUs, for the tables' notes.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{}, {cpus} CPUs", crate::calibrate::cpu_model())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_read_as_the_seed_wrote_them() {
        assert_eq!(epochs_steps(68), (3, 8, 68));
        assert_eq!(epochs_steps(20), (1, 0, 20));
        assert_eq!(epochs_steps(0), (0, 0, 0));
        assert_eq!("tiny".parse::<Scale>(), Ok(Scale::Tiny));
        assert!("huge".parse::<Scale>().is_err());
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let before = cpu_seconds();
        let t = Instant::now();
        let mut x = 0u64;
        // Spin until the counter shows 0.2 s of CPU (however loaded the machine, within a minute).
        while cpu_seconds() - before < 0.2 && t.elapsed().as_secs() < 60 {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(std::hint::black_box(1));
            }
        }
        std::hint::black_box(x);
        let used = cpu_seconds() - before;
        assert!(used >= 0.2, "{used} s of CPU counted after {:?} of spinning", t.elapsed());
        assert!(used <= t.elapsed().as_secs_f64() * 2.0 + 0.05, "{used} s of CPU in {:?}", t.elapsed());
    }
}
