//! The job spec (what the user asks for) and the job config (the spec plus
//! the facts start resolved from the data, as written to `config.json`).

use std::path::{Component, Path, PathBuf};

use lml_kernel::dataset::{class_count, read_class_list, read_labels, CLASS_LIST, MAX_CLASSES};
use lml_kernel::optim::{LrSchedule, Sgd};
use lml_kernel::trainer::DEFAULT_EPOCHS;
use lml_kernel::Cut;
use serde::{Deserialize, Serialize};

use crate::error::{ProtocolError, Result};
use crate::event::JobId;

/// How workers' results become the next parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SyncMode {
    /// The seed's scheme: every worker sums the loss gradient over its part of
    /// the round's batch; combine sums the sums and applies one SGD step. A
    /// round is exactly one step of large-batch SGD over `workers × batch` examples.
    #[default]
    GradientSum,
    /// Each worker runs `local_steps` SGD steps of `batch` from the round's
    /// parameters; combine averages the models (and momentum buffers),
    /// weighted by the examples each worker saw.
    ModelAverage,
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncMode::GradientSum => "gradient-sum",
            SyncMode::ModelAverage => "model-average",
        })
    }
}

/// How a job on images meets the frozen VGG19.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Forward {
    /// The default: the job's workers first extract the features once into
    /// a cache keyed by the content of the images, labels and weights (and
    /// the input size, cut and storage type), then the rounds train on the
    /// cache ([`crate::pipeline`]). A later job on the same content reuses it.
    #[default]
    ExtractFirst,
    /// The seed's way, for comparison: every step runs the frozen forward
    /// over its examples again.
    EveryStep,
}

/// Where a job's examples come from, paths relative to the storage root.
///
/// Either cached features (`features` + `labels`, from `lml extract-features`)
/// or images with a VGG19 weight folder (`images` + `labels` + `weights`,
/// optionally `input_size`, `cut` and `forward`). Images are by default
/// extracted once on the job's workers before training
/// ([`Forward::ExtractFirst`]); `"forward": "every-step"` runs the frozen
/// VGG19 at every step instead, as the seed did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<String>,
    pub labels: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<Cut>,
    /// For images: extract first (the default) or the forward at every step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,
}

impl Default for DataSpec {
    fn default() -> Self {
        DataSpec {
            features: Some("features/train_features.npy".into()),
            images: None,
            labels: "features/train_y.npy".into(),
            weights: None,
            input_size: None,
            cut: None,
            forward: None,
        }
    }
}

/// Network input side of a [`DataSpec`] on images that names none.
pub const DEFAULT_INPUT_SIZE: usize = 32;
/// Feature cut of a [`DataSpec`] on images that names none.
pub const DEFAULT_CUT: Cut = Cut::Fc7;

impl DataSpec {
    /// The network input side for images: `input_size`, or [`DEFAULT_INPUT_SIZE`].
    pub fn input_size(&self) -> usize {
        self.input_size.unwrap_or(DEFAULT_INPUT_SIZE)
    }

    /// The feature cut for images: `cut`, or [`DEFAULT_CUT`].
    pub fn cut(&self) -> Cut {
        self.cut.unwrap_or(DEFAULT_CUT)
    }

    /// Whether a job on this data extracts its features first
    /// ([`Forward::ExtractFirst`]): images, and no `"forward": "every-step"`.
    pub fn extracts_first(&self) -> bool {
        self.images.is_some() && self.forward.unwrap_or_default() == Forward::ExtractFirst
    }

    /// Cached features at `features` with `labels` (paths relative to the root).
    pub fn cached(features: impl Into<String>, labels: impl Into<String>) -> Self {
        DataSpec { features: Some(features.into()), labels: labels.into(), ..DataSpec::default() }
    }

    /// Checks the combination of fields and that every path stays inside the root.
    ///
    /// # Errors
    /// [`ProtocolError::BadSpec`] naming `field` and the problem.
    pub fn validate(&self, field: &str) -> Result<()> {
        let f = |name: &str| format!("{field}.{name}");
        match (&self.features, &self.images) {
            (Some(_), Some(_)) => return Err(ProtocolError::spec(field, "give features or images, not both")),
            (None, None) => return Err(ProtocolError::spec(field, "give features (cached) or images (+ weights)")),
            (Some(_), None) => {
                for (n, set) in [
                    ("weights", self.weights.is_some()),
                    ("input_size", self.input_size.is_some()),
                    ("cut", self.cut.is_some()),
                    ("forward", self.forward.is_some()),
                ] {
                    if set {
                        return Err(ProtocolError::spec(f(n), "only applies to images, not cached features"));
                    }
                }
            }
            (None, Some(_)) => {
                if self.weights.is_none() {
                    return Err(ProtocolError::spec(f("weights"), "images need a VGG19 weight directory"));
                }
                if let Some(s) = self.input_size {
                    if s == 0 || s % 32 != 0 || s > 512 {
                        return Err(ProtocolError::spec(
                            f("input_size"),
                            format!("{s} is not a multiple of 32 in 32..=512"),
                        ));
                    }
                }
            }
        }
        for (n, p) in [
            ("features", &self.features),
            ("images", &self.images),
            ("labels", &Some(self.labels.clone())),
            ("weights", &self.weights),
        ] {
            if let Some(p) = p {
                relative_path(&f(n), p)?;
            }
        }
        Ok(())
    }
}

/// Checks that `p` is a relative path without `..`, so it stays under the storage root.
pub(crate) fn relative_path(field: &str, p: &str) -> Result<PathBuf> {
    let path = Path::new(p);
    if p.is_empty() {
        return Err(ProtocolError::spec(field, "empty path"));
    }
    if path.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(ProtocolError::spec(field, format!("{p:?} must be relative to the storage root, without '..'")));
    }
    Ok(path.to_path_buf())
}

/// `joined` (the spec's `written` path under `root`) with every symbolic
/// link resolved, refused if that leaves the storage root. A path that does
/// not resolve (a missing file) is returned as joined, for the open to report
/// it by name.
///
/// # Errors
/// [`ProtocolError::BadSpec`] naming `field`, the path as written, where it
/// resolves and the root; an I/O error if the root itself cannot be resolved.
pub(crate) fn resolve_inside(root: &Path, field: &str, written: &str, joined: &Path) -> Result<PathBuf> {
    let root = root.canonicalize().map_err(|e| ProtocolError::io(root, e))?;
    let Ok(resolved) = joined.canonicalize() else { return Ok(joined.to_path_buf()) };
    if !resolved.starts_with(&root) {
        return Err(ProtocolError::spec(
            field,
            format!("{written:?} resolves to {}, outside the storage root {}", resolved.display(), root.display()),
        ));
    }
    Ok(resolved)
}

/// What a job does: data, schedule, optimiser, synchronisation, time budget.
/// Every field has a default, so `{}` is a valid spec (cached features at
/// `features/train_features.npy`, 10 epochs, batch 64 per worker, gradient
/// sum, standardised features, SGD with the kernel's defaults
/// ([`Sgd::default`]: lr 3, momentum 0.9, weight decay 5e-4) under a cosine
/// schedule over the job's rounds). [`JobSpec::default`] is the one source of
/// these defaults: `lml train`'s flags take theirs from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSpec {
    /// Training examples.
    pub data: DataSpec,
    /// Held-out examples, evaluated after rounds (see `eval_every`).
    pub eval: Option<DataSpec>,
    /// Classes of the head; default: the length of the class list
    /// (`classes.txt` beside the training labels) if there is one, else the
    /// largest training or held-out label + 1.
    pub classes: Option<usize>,
    /// Epochs to train (ignored when `rounds` is set).
    pub epochs: u64,
    /// Total rounds, overriding `epochs`.
    pub rounds: Option<u64>,
    /// Examples per worker per SGD step.
    pub batch: usize,
    /// Examples per forward pass inside a gradient-sum worker: the unit of
    /// progress between deadline checks and of continuation.
    pub micro_batch: usize,
    /// Gradient sum (the seed's) or model averaging.
    pub sync: SyncMode,
    /// SGD steps per worker per round in model averaging (must be 1 for gradient sum).
    pub local_steps: usize,
    /// Base learning rate (of standardised features; see [`Sgd::default`]).
    #[serde(serialize_with = "crate::json::short_f32")]
    pub lr: f32,
    #[serde(serialize_with = "crate::json::short_f32")]
    pub momentum: f32,
    /// L2 regularisation of the head.
    #[serde(serialize_with = "crate::json::short_f32")]
    pub weight_decay: f32,
    /// How the learning rate changes over the job's rounds.
    pub schedule: LrSchedule,
    /// Train on standardised features (per-feature mean and scale computed
    /// by start over the training data, see [`lml_kernel::standardize`]).
    pub standardize: bool,
    /// Seed of the example order.
    pub seed: u64,
    /// Stop once a round's loss (held-out if evaluated, else training) is at or below this.
    pub target_loss: Option<f64>,
    /// Invocation time limit used when the runtime gives no usable deadline (ms).
    pub time_limit_ms: u64,
    /// Time kept in reserve before the deadline for publishing and continuing (ms).
    pub safety_ms: u64,
    /// Evaluate every this many rounds; 0: at the end of every epoch and at the end.
    pub eval_every: u64,
    /// Evaluate on at most this many held-out examples (the first ones); all
    /// if unset. Evaluation runs inside one combine invocation, so through
    /// the VGG19 at 224×224 (about 5 images/s per 2 vCPUs) it must stay small.
    pub eval_examples: Option<usize>,
}

impl Default for JobSpec {
    fn default() -> Self {
        let sgd = Sgd::default();
        JobSpec {
            data: DataSpec::default(),
            eval: None,
            classes: None,
            epochs: DEFAULT_EPOCHS,
            rounds: None,
            batch: 64,
            micro_batch: 32,
            sync: SyncMode::GradientSum,
            local_steps: 1,
            lr: sgd.lr,
            momentum: sgd.momentum,
            weight_decay: sgd.weight_decay,
            schedule: LrSchedule::default(),
            standardize: true,
            seed: 1,
            target_loss: None,
            time_limit_ms: 900_000,
            safety_ms: 5_000,
            eval_every: 0,
            eval_examples: None,
        }
    }
}

/// Longest Lambda invocation (15 minutes).
pub const LAMBDA_MAX_MS: u64 = 900_000;

impl JobSpec {
    /// Parses and validates a spec from a JSON object over the defaults: the
    /// one place a spec from outside (a start event) becomes a `JobSpec`.
    ///
    /// # Errors
    /// [`ProtocolError::BadSpec`] naming the field (`data.features`, `batch`)
    /// on unknown fields, wrong types or invalid values.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let spec: JobSpec = crate::json::from_value(v)
            .map_err(|e| ProtocolError::spec(e.field.as_deref().unwrap_or("spec"), e.reason))?;
        spec.validate()?;
        Ok(spec)
    }

    /// The optimiser settings.
    pub fn sgd(&self) -> Sgd {
        Sgd { lr: self.lr, momentum: self.momentum, weight_decay: self.weight_decay }
    }

    /// Checks every field's range.
    ///
    /// # Errors
    /// [`ProtocolError::BadSpec`] naming the field.
    pub fn validate(&self) -> Result<()> {
        self.data.validate("data")?;
        if let Some(e) = &self.eval {
            e.validate("eval")?;
        }
        self.sgd().validate().map_err(|e| ProtocolError::spec("lr/momentum/weight_decay", e.to_string()))?;
        let positive = |field: &str, v: u64| {
            if v == 0 {
                Err(ProtocolError::spec(field, "must be positive"))
            } else {
                Ok(())
            }
        };
        positive("batch", self.batch as u64)?;
        positive("micro_batch", self.micro_batch as u64)?;
        positive("local_steps", self.local_steps as u64)?;
        match self.rounds {
            Some(r) => positive("rounds", r)?,
            None => positive("epochs", self.epochs)?,
        }
        if self.sync == SyncMode::GradientSum && self.local_steps != 1 {
            return Err(ProtocolError::spec("local_steps", "gradient-sum takes one step per round; use model-average"));
        }
        if self.eval_examples == Some(0) {
            return Err(ProtocolError::spec("eval_examples", "must be positive when set"));
        }
        if let Some(c) = self.classes {
            if c == 0 || c > MAX_CLASSES {
                return Err(ProtocolError::spec("classes", format!("{c} is outside 1..={MAX_CLASSES}")));
            }
        }
        if let Some(t) = self.target_loss {
            if !t.is_finite() || t < 0.0 {
                return Err(ProtocolError::spec("target_loss", format!("{t} must be finite and >= 0")));
            }
        }
        if !(1..=LAMBDA_MAX_MS).contains(&self.time_limit_ms) {
            return Err(ProtocolError::spec(
                "time_limit_ms",
                format!("{} is outside 1..={LAMBDA_MAX_MS}", self.time_limit_ms),
            ));
        }
        if self.safety_ms >= self.time_limit_ms {
            return Err(ProtocolError::spec("safety_ms", "must be smaller than time_limit_ms"));
        }
        Ok(())
    }
}

/// Version tag of `config.json`. Version 2: jobs start from a zero head,
/// may standardise features (`stats/`) and follow a learning-rate schedule;
/// a version-1 job would resume under other rules, so it is refused.
pub const CONFIG_FORMAT: &str = "lml-job/2";

/// Most rounds a job may have. At tens of rounds per second this is weeks;
/// more is a mistake (e.g. `epochs` 2⁶³), refused before anything is written.
pub const MAX_ROUNDS: u64 = 100_000_000;

/// A job as start resolved it: the spec plus facts from the data. Written once
/// to `config.json`; every role reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    pub format: String,
    pub job: String,
    pub workers: usize,
    pub spec: JobSpec,
    /// Training examples.
    pub examples: usize,
    /// Feature length.
    pub feature_dim: usize,
    /// Head classes.
    pub classes: usize,
    /// Names of the classes (from the class list), empty if the data has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
    /// Rounds per pass over the data: `ceil(examples / (workers · batch · local_steps))`.
    pub rounds_per_epoch: u64,
    /// Rounds the job runs unless stopped earlier.
    pub total_rounds: u64,
}

/// The classes of a job's data: how many, and their names if there is a class list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classes {
    pub count: usize,
    pub names: Vec<String>,
}

/// `rounds_per_epoch` and `total_rounds` for `examples` examples, by
/// checked arithmetic: every product of sizes from a spec or an event is
/// checked, and an error names the field and its value.
fn round_counts(workers: usize, spec: &JobSpec, examples: usize) -> Result<(u64, u64)> {
    if examples == 0 {
        return Err(ProtocolError::spec("data", "has no examples"));
    }
    if workers == 0 {
        return Err(ProtocolError::spec("workers", "must be positive"));
    }
    let per_round =
        workers.checked_mul(spec.batch).and_then(|p| p.checked_mul(spec.local_steps)).filter(|&p| p > 0).ok_or_else(
            || {
                ProtocolError::spec(
                    "batch",
                    format!(
                        "{} × {workers} workers × {} local steps does not fit a round (overflows)",
                        spec.batch, spec.local_steps
                    ),
                )
            },
        )?;
    let rounds_per_epoch = examples.div_ceil(per_round) as u64;
    let total_rounds = match spec.rounds {
        Some(r) => (r, "rounds", r.to_string()),
        None => match spec.epochs.checked_mul(rounds_per_epoch) {
            Some(t) => (t, "epochs", format!("{} (× {rounds_per_epoch} rounds per epoch = {t} rounds)", spec.epochs)),
            None => {
                return Err(ProtocolError::spec(
                    "epochs",
                    format!("{} × {rounds_per_epoch} rounds per epoch overflows", spec.epochs),
                ))
            }
        },
    };
    match total_rounds {
        (0, field, v) => Err(ProtocolError::spec(field, format!("{v}: a job needs at least one round"))),
        (t, field, v) if t > MAX_ROUNDS => {
            Err(ProtocolError::spec(field, format!("{v} is more than the {MAX_ROUNDS} rounds a job may have")))
        }
        (t, _, _) => Ok((rounds_per_epoch, t)),
    }
}

impl JobConfig {
    /// Resolves `spec` for `workers` workers over data of `examples` × `feature_dim`.
    ///
    /// # Errors
    /// [`ProtocolError::BadSpec`] naming the field if there are no examples,
    /// a round's size (`workers × batch × local_steps`) overflows, or the job
    /// would have no round or more than [`MAX_ROUNDS`].
    pub fn resolve(
        job: &JobId,
        workers: usize,
        spec: JobSpec,
        examples: usize,
        feature_dim: usize,
        classes: Classes,
    ) -> Result<Self> {
        let (rounds_per_epoch, total_rounds) = round_counts(workers, &spec, examples)?;
        Ok(JobConfig {
            format: CONFIG_FORMAT.into(),
            job: job.to_string(),
            workers,
            spec,
            examples,
            feature_dim,
            classes: classes.count,
            class_names: classes.names,
            rounds_per_epoch,
            total_rounds,
        })
    }

    /// Checks a config read back from a file: the spec's ranges, and that the
    /// derived counts are what [`resolve`](Self::resolve) computes (so no
    /// size from the file can overflow later).
    ///
    /// # Errors
    /// [`ProtocolError::BadSpec`] naming the field.
    pub fn validate(&self) -> Result<()> {
        self.spec.validate()?;
        let (rpe, total) = round_counts(self.workers, &self.spec, self.examples)?;
        if (rpe, total) != (self.rounds_per_epoch, self.total_rounds) {
            return Err(ProtocolError::spec(
                "rounds_per_epoch/total_rounds",
                format!(
                    "{}/{} disagree with the spec and data ({rpe}/{total})",
                    self.rounds_per_epoch, self.total_rounds
                ),
            ));
        }
        if self.classes == 0 || self.classes > MAX_CLASSES {
            return Err(ProtocolError::spec("classes", format!("{} is outside 1..={MAX_CLASSES}", self.classes)));
        }
        if !self.class_names.is_empty() && self.class_names.len() != self.classes {
            return Err(ProtocolError::spec(
                "class_names",
                format!("{} names for {} classes", self.class_names.len(), self.classes),
            ));
        }
        if self.feature_dim == 0 {
            return Err(ProtocolError::spec("feature_dim", "must be positive"));
        }
        Ok(())
    }

    /// Examples one round covers across all workers (fits: checked by
    /// [`resolve`](Self::resolve) and [`validate`](Self::validate)).
    pub fn round_examples(&self) -> usize {
        self.workers * self.spec.batch * self.spec.local_steps
    }

    /// The epoch of round `k`.
    pub fn epoch_of(&self, round: u64) -> u64 {
        round / self.rounds_per_epoch
    }

    /// The SGD settings of round `k`: the spec's, with the learning rate of
    /// round `k` of `total_rounds` under the spec's schedule.
    pub fn sgd_at(&self, round: u64) -> Sgd {
        self.spec.sgd().at_step(self.spec.schedule, round, self.total_rounds)
    }

    /// Example indices worker `w` trains on in round `k`.
    ///
    /// Round `k` of epoch `e` takes the `k mod rounds_per_epoch`-th chunk of
    /// [`lml_kernel::trainer::epoch_order`]`(examples, seed, e)`, of
    /// `workers × batch × local_steps` examples (the last chunk of an epoch
    /// is shorter); worker `w` takes the `w`-th `batch × local_steps` of it.
    /// So in every epoch the workers' slices are disjoint and cover the data,
    /// and a gradient-sum round is exactly the large-batch step
    /// [`lml_kernel::trainer::Trainer`] takes with batch `workers × batch`.
    pub fn worker_slice(&self, round: u64, worker: usize) -> Vec<usize> {
        let order = lml_kernel::trainer::epoch_order(self.examples, self.spec.seed, self.epoch_of(round));
        // (k mod rounds_per_epoch) · round_examples < examples: no overflow.
        let start = (round % self.rounds_per_epoch) as usize * self.round_examples();
        let per_worker = self.spec.batch * self.spec.local_steps;
        let end = start.saturating_add(self.round_examples()).min(self.examples);
        let lo = start.saturating_add(worker.saturating_mul(per_worker)).min(end);
        let hi = lo.saturating_add(per_worker).min(end);
        order[lo..hi].to_vec()
    }

    /// Whether the combine of round `k` (producing parameters `k + 1`) evaluates.
    pub fn evaluates_after(&self, round: u64) -> bool {
        let next = round + 1;
        self.spec.eval.is_some()
            && (next == self.total_rounds
                || if self.spec.eval_every == 0 {
                    next.is_multiple_of(self.rounds_per_epoch)
                } else {
                    next.is_multiple_of(self.spec.eval_every)
                })
    }
}

/// The classes of `spec`'s data under `root`, every label file checked
/// before anything is written.
///
/// The class list is `classes.txt` beside the training labels (or, failing
/// that, beside the held-out labels; if both exist they must agree). The
/// count is `spec.classes` if given (it must agree with a class list), else
/// the class list's length, else the largest label of the training *and*
/// held-out data + 1, so a held-out class the training split lacks still has
/// a row in the head. Every label must be below the count, or below
/// [`MAX_CLASSES`] when the count is derived from the labels.
///
/// # Errors
/// Kernel errors naming the file (and the position and value of a bad
/// label); [`ProtocolError::BadSpec`] if the class lists or `classes` disagree.
pub fn resolve_classes(root: &Path, spec: &JobSpec) -> Result<Classes> {
    // Every file read here is resolved under the root first, as the sources
    // are: the label files and the class lists beside them.
    let mut written = vec![("data.labels", spec.data.labels.as_str())];
    if let Some(e) = &spec.eval {
        written.push(("eval.labels", e.labels.as_str()));
    }
    let mut label_files = Vec::new();
    let mut list: Option<(PathBuf, Vec<String>)> = None;
    for (field, labels) in written {
        let rel = relative_path(field, labels)?;
        label_files.push((field, resolve_inside(root, field, labels, &root.join(&rel))?));
        let beside = rel.with_file_name(CLASS_LIST);
        let path = resolve_inside(root, field, &beside.to_string_lossy(), &root.join(&beside))?;
        let Some(names) = read_class_list(&path)? else { continue };
        match &list {
            Some((first, n)) if *n != names => {
                return Err(ProtocolError::spec(field, format!("{} differs from {}", path.display(), first.display())))
            }
            Some(_) => {}
            None => list = Some((path, names)),
        }
    }
    let labels = label_files
        .iter()
        .map(|(_, path)| read_labels(path).map(|l| (path.clone(), l)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let files: Vec<(&Path, &[u32])> = labels.iter().map(|(p, l)| (p.as_path(), l.as_slice())).collect();
    let names = list.as_ref().map(|(_, n)| n.as_slice());
    let count = match (spec.classes, names) {
        (Some(c), Some(n)) if c != n.len() => {
            return Err(ProtocolError::spec(
                "classes",
                format!("{c}, but the class list {} names {}", list.as_ref().expect("some").0.display(), n.len()),
            ))
        }
        (Some(c), _) => {
            for (path, l) in &files {
                lml_kernel::dataset::check_labels(path, l, c, &format!("the spec says classes = {c}"))?;
            }
            c
        }
        (None, names) => class_count(&files, names)?,
    };
    Ok(Classes { count, names: list.map(|(_, n)| n).unwrap_or_default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every epoch, the workers' slices are disjoint and cover the data,
    /// whatever the worker count, batch and local steps.
    #[test]
    fn worker_slices_partition_every_epoch() {
        let job = JobId::new("t").unwrap();
        for (n, workers, batch, steps) in [(10, 1, 3, 1), (61, 3, 4, 1), (61, 5, 2, 3), (7, 4, 8, 1), (100, 7, 1, 2)] {
            let sync = if steps > 1 { SyncMode::ModelAverage } else { SyncMode::GradientSum };
            let spec = JobSpec { batch, local_steps: steps, sync, epochs: 2, ..JobSpec::default() };
            let cfg = JobConfig::resolve(&job, workers, spec, n, 4, Classes { count: 2, names: vec![] }).unwrap();
            for epoch in 0..2 {
                let mut seen = vec![0; n];
                for k in epoch * cfg.rounds_per_epoch..(epoch + 1) * cfg.rounds_per_epoch {
                    for w in 0..workers {
                        let s = cfg.worker_slice(k, w);
                        assert!(s.len() <= batch * steps);
                        s.iter().for_each(|&i| seen[i] += 1);
                    }
                }
                assert!(seen.iter().all(|&c| c == 1), "n {n} workers {workers}: {seen:?}");
            }
        }
    }

    /// The cases: sizes whose products overflow are errors naming
    /// the field and the value, never a division by zero, a wrapped round
    /// size or a job of zero rounds.
    #[test]
    fn sizes_are_combined_by_checked_arithmetic() {
        let job = JobId::new("t").unwrap();
        let classes = || Classes { count: 2, names: vec![] };
        let with = |f: &dyn Fn(&mut JobSpec)| {
            let mut s = JobSpec::default();
            f(&mut s);
            s
        };
        let err = |workers, spec| JobConfig::resolve(&job, workers, spec, 100, 4, classes()).unwrap_err().to_string();
        let e = err(2, with(&|s| s.batch = 1 << 63));
        assert!(e.contains("batch: 9223372036854775808 × 2 workers"), "{e}");
        let e = err(4, with(&|s| s.batch = (1 << 62) + 1));
        assert!(e.contains("batch: 4611686018427387905 × 4 workers"), "{e}");
        let e = err(4, with(&|s| s.epochs = 1 << 63));
        assert!(e.contains("epochs: 9223372036854775808") && e.contains("more than"), "{e}");
        let e = err(
            1,
            with(&|s| {
                s.batch = 1;
                s.epochs = 1 << 63
            }),
        );
        assert!(e.contains("epochs: 9223372036854775808 × 100 rounds per epoch overflows"), "{e}");
        assert!(err(0, JobSpec::default()).contains("workers"));
        // A batch larger than the data: one round per epoch, workers past the data get nothing.
        let cfg = JobConfig::resolve(&job, 4, with(&|s| s.batch = 1 << 40), 100, 4, classes()).unwrap();
        assert_eq!((cfg.rounds_per_epoch, cfg.total_rounds), (1, JobSpec::default().epochs));
        assert_eq!(cfg.worker_slice(0, 0).len(), 100);
        assert!(cfg.worker_slice(0, 3).is_empty());
        // A config file whose counts do not follow from its spec is refused.
        cfg.validate().unwrap();
        let mut bad = cfg.clone();
        bad.total_rounds = 0;
        assert!(bad.validate().unwrap_err().to_string().contains("total_rounds"));
        let mut bad = cfg;
        bad.class_names = vec!["a".into()];
        assert!(bad.validate().unwrap_err().to_string().contains("class_names"));
    }
}
