//! The command-line flags that build a job spec, shared by every command
//! that builds one (`lml train`, `lml start-event`): flattened into each
//! command's arguments (`#[command(flatten)]`), with every default taken
//! from [`JobSpec::default`] and [`DataSpec`], so the CLI cannot disagree
//! with what an event without those fields gets.

use std::path::PathBuf;

use clap::{ArgAction, Args};
use lml_kernel::optim::LrSchedule;
use lml_kernel::Cut;
use lml_lambda::spec::{Forward, DEFAULT_INPUT_SIZE, LAMBDA_MAX_MS};
use lml_lambda::{DataSpec, JobSpec, SyncMode};

/// Workers per round when a command is not told.
pub const DEFAULT_WORKERS: usize = 4;

/// The storage root of every command that creates or reads jobs, unless
/// told otherwise (the README's main command keeps everything there).
pub const DEFAULT_ROOT: &str = "runs/local";

/// The job's training flags: every [`JobSpec`] field but the data.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct JobArgs {
    /// Epochs (passes over the training data).
    #[arg(long, default_value_t = JobSpec::default().epochs)]
    pub epochs: u64,
    /// Total rounds, overriding --epochs.
    #[arg(long)]
    pub rounds: Option<u64>,
    /// Examples per worker per SGD step (a round is one step over workers × batch).
    #[arg(long, default_value_t = JobSpec::default().batch)]
    pub batch: usize,
    /// Examples per forward pass inside a worker (the unit of continuation).
    #[arg(long, default_value_t = JobSpec::default().micro_batch)]
    pub micro_batch: usize,
    /// Base learning rate, for standardised features (every example's squared
    /// norm about 1, whatever the features' scale).
    #[arg(long, default_value_t = JobSpec::default().lr)]
    pub lr: f32,
    /// SGD momentum.
    #[arg(long, default_value_t = JobSpec::default().momentum)]
    pub momentum: f32,
    /// L2 regularisation of the head.
    #[arg(long, default_value_t = JobSpec::default().weight_decay)]
    pub weight_decay: f32,
    /// Learning-rate schedule over the job's rounds: cosine (decays to 0) or constant.
    #[arg(long, default_value_t = JobSpec::default().schedule)]
    pub schedule: LrSchedule,
    /// Train on the features as they are instead of standardised (per-feature
    /// mean and scale computed at start); the learning rate must then suit their scale.
    #[arg(long = "no-standardize", action = ArgAction::SetFalse, default_value_t = JobSpec::default().standardize)]
    pub standardize: bool,
    /// gradient-sum (one large-batch step per round, the seed's) or model-average.
    #[arg(long, default_value_t = JobSpec::default().sync, value_parser = parse_sync)]
    pub sync: SyncMode,
    /// SGD steps per worker per round (model-average).
    #[arg(long, default_value_t = JobSpec::default().local_steps)]
    pub local_steps: usize,
    /// Classes of the head (default: the class list beside the labels, else
    /// the largest label + 1).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Stop when a round's loss (held-out if evaluated) reaches this.
    #[arg(long)]
    pub target_loss: Option<f64>,
    /// Seed of the example order (and of generated data).
    #[arg(long, default_value_t = JobSpec::default().seed)]
    pub seed: u64,
    /// Evaluate every this many rounds; 0: at the end of every epoch and at the end.
    #[arg(long, default_value_t = JobSpec::default().eval_every)]
    pub eval_every: u64,
    /// Evaluate on at most this many held-out examples (all by default).
    #[arg(long)]
    pub eval_examples: Option<usize>,
    /// Invocation time limit in seconds (Lambda allows up to 900); workers
    /// continue themselves before it, keeping a tenth of it (at most the
    /// spec's default `safety_ms`) in reserve.
    #[arg(long, default_value_t = JobSpec::default().time_limit_ms as f64 / 1000.0)]
    pub time_limit: f64,
}

fn parse_sync(s: &str) -> Result<SyncMode, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("{s:?}: expected gradient-sum or model-average"))
}

impl JobArgs {
    /// `--time-limit` in milliseconds (a negative or NaN limit is 0, which the spec refuses).
    pub fn time_limit_ms(&self) -> u64 {
        (self.time_limit * 1000.0) as u64
    }

    /// The spec these flags ask for, on `data` (evaluated on `eval`).
    /// Not validated here: the start event that carries it is
    /// ([`lml_lambda::Event::parse`]), and its errors name the spec's field.
    pub fn spec(&self, data: DataSpec, eval: Option<DataSpec>) -> JobSpec {
        let default = JobSpec::default();
        let time_limit_ms = self.time_limit_ms().min(LAMBDA_MAX_MS);
        JobSpec {
            data,
            eval,
            classes: self.classes,
            epochs: self.epochs,
            rounds: self.rounds,
            batch: self.batch,
            micro_batch: self.micro_batch,
            sync: self.sync,
            local_steps: self.local_steps,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            schedule: self.schedule,
            standardize: self.standardize,
            seed: self.seed,
            target_loss: self.target_loss,
            time_limit_ms,
            safety_ms: (time_limit_ms / 10).min(default.safety_ms),
            eval_every: self.eval_every,
            eval_examples: self.eval_examples,
        }
    }
}

/// Where a job's examples are: a folder of cached features, or a folder of
/// images with a VGG19 weight folder.
#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct DataArgs {
    /// Folder with cached train_features.npy / train_y.npy (and test_* to
    /// evaluate), from `lml extract-features`.
    #[arg(long, conflicts_with = "images")]
    pub features: Option<PathBuf>,
    /// Folder with train_x.npy / train_y.npy (and test_*), from `lml
    /// prepare-cifar10`. By default the job's workers first extract their
    /// features once (kept under the root in cache/<content hash>/ and reused
    /// by later jobs on the same images, weights, cut and size), then train
    /// on them; see --forward-every-step.
    #[arg(long, requires = "weights")]
    pub images: Option<PathBuf>,
    /// VGG19 weight folder for --images.
    #[arg(long, requires = "images")]
    pub weights: Option<PathBuf>,
    /// Network input side for --images (multiple of 32).
    #[arg(long, default_value_t = DEFAULT_INPUT_SIZE)]
    pub input_size: usize,
    /// Feature cut for --images: pool5, fc6 or fc7 (default: the spec's, fc7).
    #[arg(long)]
    pub cut: Option<Cut>,
    /// With --images: run the frozen VGG19 over every step's examples, as the
    /// seed did, instead of extracting the features first (for comparison).
    #[arg(long, requires = "images")]
    pub forward_every_step: bool,
}

/// `dir/file`, or `file` when `dir` is the root itself (`""`).
fn join(dir: &str, file: &str) -> String {
    if dir.is_empty() {
        file.to_string()
    } else {
        format!("{}/{file}", dir.trim_end_matches('/'))
    }
}

impl DataArgs {
    /// The spec of split `split` (`train`, `test`) in the folder `dir`, with
    /// `dir` and `weights` as the storage root sees them: images through
    /// `weights` when it is given, else cached features.
    pub fn split(&self, dir: &str, weights: Option<&str>, split: &str) -> DataSpec {
        match weights {
            Some(w) => DataSpec {
                features: None,
                images: Some(join(dir, &format!("{split}_x.npy"))),
                labels: join(dir, &format!("{split}_y.npy")),
                weights: Some(w.to_string()),
                input_size: Some(self.input_size),
                cut: self.cut,
                forward: self.forward_every_step.then_some(Forward::EveryStep),
            },
            None => DataSpec::cached(join(dir, &format!("{split}_features.npy")), join(dir, &format!("{split}_y.npy"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        job: JobArgs,
        #[command(flatten)]
        data: DataArgs,
    }

    /// The flags' defaults are the spec's: no flag given, the CLI builds
    /// exactly [`JobSpec::default`] (and the spec's data defaults).
    #[test]
    fn default_flags_build_the_default_spec() {
        let cli = Cli::try_parse_from(["lml"]).unwrap();
        assert_eq!(cli.job.spec(DataSpec::default(), None), JobSpec::default());
        let images = cli.data.split("", Some("w"), "train");
        assert_eq!((images.input_size(), images.cut()), (DataSpec::default().input_size(), DataSpec::default().cut()));
        // And each flag reaches its field.
        let cli = Cli::try_parse_from([
            "lml",
            "--batch",
            "7",
            "--lr",
            "0.5",
            "--no-standardize",
            "--sync",
            "model-average",
            "--local-steps",
            "3",
            "--time-limit",
            "60",
            "--cut",
            "pool5",
        ])
        .unwrap();
        let spec = cli.job.spec(DataSpec::default(), None);
        assert_eq!(
            (spec.batch, spec.lr, spec.standardize, spec.sync, spec.local_steps),
            (7, 0.5, false, SyncMode::ModelAverage, 3)
        );
        assert_eq!((spec.time_limit_ms, spec.safety_ms), (60_000, 5_000));
        assert_eq!(cli.data.split("d", Some("w"), "test").cut, Some(Cut::Pool5));
        assert_eq!(cli.data.split("d/", None, "test").features.as_deref(), Some("d/test_features.npy"));
    }
}
