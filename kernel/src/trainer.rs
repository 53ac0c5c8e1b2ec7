//! Training the softmax head: loss and gradient of a batch, updates, evaluation.
//!
//! The API is deliberately small and explicit so that distributed workers can
//! build on it: parameters and gradients are plain arrays with names
//! ([`Head::tensors`], [`HeadGradient::tensors`]) that can be written to `.npy`,
//! gradients are *sums* over examples with a count (so sums from several
//! workers add exactly to the large-batch gradient), and every random choice
//! comes from an explicit seed.
//!
//! Features come from a [`FeatureSource`]: either images run through the
//! frozen VGG19 at every step (the seed's way, [`ImageFeatures`]) or a cache of
//! precomputed features; by default the head sees them standardised
//! ([`crate::standardize`]), and the learning rate follows a schedule
//! ([`LrSchedule`]) over the run.

use ndarray::{Array1, Array2, ArrayView2, ArrayViewD, ArrayViewMutD, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::dataset::ImageDataset;
use crate::error::{KernelError, Result};
use crate::layers::{dense_backward, dense_forward, softmax_cross_entropy};
use crate::optim::{LrSchedule, Sgd};
use crate::standardize::{FeatureStats, Standardized};
use crate::vgg::{init_head, Vgg19};

/// Something that yields feature vectors and labels for example indices.
pub trait FeatureSource: Sync {
    /// Number of examples.
    fn len(&self) -> usize;
    /// Whether there is no example.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Length of one feature vector.
    fn feature_dim(&self) -> usize;
    /// Features `[indices.len(), feature_dim]` and labels of the examples at `indices`.
    ///
    /// # Errors
    /// Implementation-defined, e.g. an index out of range.
    fn batch(&self, indices: &[usize]) -> Result<(Array2<f32>, Vec<u32>)>;
}

/// Images run through the frozen VGG19 for every batch.
#[derive(Debug)]
pub struct ImageFeatures {
    pub dataset: ImageDataset,
    pub vgg: Vgg19,
}

impl FeatureSource for ImageFeatures {
    fn len(&self) -> usize {
        self.dataset.len()
    }
    fn feature_dim(&self) -> usize {
        self.vgg.feature_dim()
    }
    fn batch(&self, indices: &[usize]) -> Result<(Array2<f32>, Vec<u32>)> {
        let (images, labels) = self.dataset.gather(indices)?;
        Ok((self.vgg.features(images.view())?, labels))
    }
}

/// Features cached on disk: a memory-mapped `.npy` of `[N, D]`, `f32` or
/// `f16` (widened to f32 as rows are gathered), and its labels. Batches are
/// gathered from the mapping; nothing else is read.
#[derive(Debug)]
pub struct CachedFeatures {
    features: crate::npy::MappedNpy,
    half: bool,
    data_offset: usize,
    labels: Vec<u32>,
    dim: usize,
}

impl CachedFeatures {
    /// Opens `features` (`<f4` or `<f2`, `[N, D]`) and `labels` (any integer dtype, `[N]`).
    ///
    /// # Errors
    /// [`KernelError::Io`] / [`KernelError::Npy`] naming the file if either
    /// cannot be mapped or parsed, or the dtype is neither; [`KernelError::Shape`]
    /// if the features are not 2-D or the label count differs.
    pub fn open(features: impl AsRef<std::path::Path>, labels: impl AsRef<std::path::Path>) -> Result<Self> {
        let features = crate::npy::MappedNpy::open(features)?;
        let header = features.header()?;
        let half = match header.descr.as_str() {
            "<f4" => false,
            "<f2" => true,
            other => {
                return Err(KernelError::Npy {
                    path: features.path().to_path_buf(),
                    expected_dtype: "f32 or f16 features",
                    reason: format!("dtype {other}"),
                })
            }
        };
        if !half {
            features.view::<f32>()?; // alignment and layout checks
        }
        let shape = header.shape;
        if shape.len() != 2 {
            return Err(KernelError::shape(format!("features {}", features.path().display()), "[N, D]", &shape));
        }
        let labels = crate::dataset::read_labels(labels.as_ref())?;
        if labels.len() != shape[0] {
            return Err(KernelError::shape(
                "labels",
                format!("[{}] (one per row of {})", shape[0], features.path().display()),
                &[labels.len()],
            ));
        }
        Ok(CachedFeatures { features, half, data_offset: header.data_offset, labels, dim: shape[1] })
    }

    /// Whether the cache stores f16.
    pub fn is_f16(&self) -> bool {
        self.half
    }

    /// Row `i` widened to f32 into `out`.
    fn row_into(&self, i: usize, out: &mut [f32]) {
        if self.half {
            let bytes = &self.features.data_bytes_unchecked(self.data_offset)[i * self.dim * 2..(i + 1) * self.dim * 2];
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        } else {
            let v = self.features.view::<f32>().expect("validated at open");
            let v = v.into_dimensionality::<ndarray::Ix2>().expect("validated at open");
            out.copy_from_slice(v.row(i).as_slice().expect("C order"));
        }
    }
}

impl FeatureSource for CachedFeatures {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn feature_dim(&self) -> usize {
        self.dim
    }
    fn batch(&self, indices: &[usize]) -> Result<(Array2<f32>, Vec<u32>)> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(KernelError::invalid("feature index", format!("{bad} >= {}", self.len())));
        }
        let mut x = Array2::<f32>::zeros((indices.len(), self.dim));
        for (mut row, &i) in x.outer_iter_mut().zip(indices) {
            self.row_into(i, row.as_slice_mut().expect("fresh array"));
        }
        Ok((x, indices.iter().map(|&i| self.labels[i]).collect()))
    }
}

/// In-memory features and labels (tests, and small cached sets).
#[derive(Clone, Debug)]
pub struct InMemoryFeatures {
    pub features: Array2<f32>,
    pub labels: Vec<u32>,
}

impl FeatureSource for InMemoryFeatures {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn feature_dim(&self) -> usize {
        self.features.ncols()
    }
    fn batch(&self, indices: &[usize]) -> Result<(Array2<f32>, Vec<u32>)> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(KernelError::invalid("feature index", format!("{bad} >= {}", self.len())));
        }
        Ok((self.features.select(Axis(0), indices), indices.iter().map(|&i| self.labels[i]).collect()))
    }
}

/// The trainable softmax head: `logits = x·Wᵀ + b`.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    /// `[classes, features]`.
    pub weight: Array2<f32>,
    /// `[classes]`.
    pub bias: Array1<f32>,
}

/// Sum of the loss gradient over `count` examples, plus the batch's loss and hits.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadGradient {
    /// `Σ ∂L/∂W`, `[classes, features]`.
    pub weight: Array2<f32>,
    /// `Σ ∂L/∂b`, `[classes]`.
    pub bias: Array1<f32>,
    /// Σ of the per-example cross-entropy.
    pub loss_sum: f64,
    /// Examples classified correctly (before the update).
    pub correct: usize,
    /// Examples summed over.
    pub count: usize,
}

/// Loss and accuracy over a set of examples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Evaluation {
    pub loss_sum: f64,
    pub correct: usize,
    pub count: usize,
}

impl Evaluation {
    /// Mean loss (NaN when empty).
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.count as f64
    }
    /// Fraction correct (NaN when empty).
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.count as f64
    }
}

/// Parameter names of the head, as written to `.npy`.
pub const HEAD_WEIGHT: &str = "head.weight";
/// See [`HEAD_WEIGHT`].
pub const HEAD_BIAS: &str = "head.bias";

impl Head {
    /// A freshly initialised head (see [`init_head`]): small random weights.
    pub fn new(classes: usize, features: usize, seed: u64) -> Self {
        let (weight, bias) = init_head(classes, features, seed);
        Head { weight, bias }
    }

    /// A head of zeros, where training starts ([`Trainer::new`], a job's
    /// round 0): softmax regression is convex, so no symmetry needs
    /// breaking, and an untrained head gives every class probability `1/C`,
    /// so its loss is exactly `ln C` whatever the features' scale: the
    /// reference divergence is measured against ([`loss_limit`]). Weights of
    /// features constant over the training data receive no gradient and stay 0.
    pub fn zeros(classes: usize, features: usize) -> Self {
        Head { weight: Array2::zeros((classes, features)), bias: Array1::zeros(classes) }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.weight.nrows()
    }

    /// Input feature length.
    pub fn feature_dim(&self) -> usize {
        self.weight.ncols()
    }

    /// Named parameter views, in a fixed order.
    pub fn tensors(&self) -> [(&'static str, ArrayViewD<'_, f32>); 2] {
        [(HEAD_WEIGHT, self.weight.view().into_dyn()), (HEAD_BIAS, self.bias.view().into_dyn())]
    }

    /// Rebuilds a head from its two arrays, checking they agree.
    ///
    /// # Errors
    /// [`KernelError::Shape`] if the weight is not 2-D or the bias length differs from its rows.
    pub fn from_arrays(weight: ArrayViewD<'_, f32>, bias: ArrayViewD<'_, f32>) -> Result<Self> {
        let weight = weight
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|_| KernelError::shape(HEAD_WEIGHT, "[classes, features]", &[]))?
            .to_owned();
        if bias.shape() != [weight.nrows()] {
            return Err(KernelError::shape(HEAD_BIAS, format!("[{}]", weight.nrows()), bias.shape()));
        }
        let bias = bias.into_dimensionality::<ndarray::Ix1>().expect("checked").to_owned();
        Ok(Head { weight, bias })
    }

    /// Logits `[N, classes]` for features `[N, features]`.
    ///
    /// # Errors
    /// [`KernelError::Shape`] if the feature length differs.
    pub fn logits(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        dense_forward(x, self.weight.view(), self.bias.view(), false)
    }

    /// Summed loss gradient of a batch.
    ///
    /// # Errors
    /// [`KernelError::Shape`] / [`KernelError::Label`] on mismatched features or labels.
    pub fn gradient(&self, x: ArrayView2<'_, f32>, labels: &[u32]) -> Result<HeadGradient> {
        let logits = self.logits(x)?;
        let ce = softmax_cross_entropy(logits.view(), labels)?;
        let g = dense_backward(x, self.weight.view(), ce.grad.view(), false)?;
        Ok(HeadGradient { weight: g.weight, bias: g.bias, loss_sum: ce.loss_sum, correct: ce.correct, count: ce.count })
    }

    /// Loss and accuracy of a batch, without gradients.
    ///
    /// # Errors
    /// As [`gradient`](Self::gradient).
    pub fn evaluate(&self, x: ArrayView2<'_, f32>, labels: &[u32]) -> Result<Evaluation> {
        let logits = self.logits(x)?;
        let ce = softmax_cross_entropy(logits.view(), labels)?;
        Ok(Evaluation { loss_sum: ce.loss_sum, correct: ce.correct, count: ce.count })
    }

    /// Loss and accuracy over the first `limit` examples of `source` (all if
    /// `None`), read `chunk` examples at a time.
    ///
    /// # Errors
    /// As [`FeatureSource::batch`] and [`evaluate`](Self::evaluate).
    pub fn evaluate_source(
        &self,
        source: &dyn FeatureSource,
        limit: Option<usize>,
        chunk: usize,
    ) -> Result<Evaluation> {
        let n = source.len().min(limit.unwrap_or(usize::MAX));
        let idx: Vec<usize> = (0..n).collect();
        let mut total = Evaluation::default();
        for part in idx.chunks(chunk.max(1)) {
            let (x, y) = source.batch(part)?;
            let e = self.evaluate(x.view(), &y)?;
            total.loss_sum += e.loss_sum;
            total.correct += e.correct;
            total.count += e.count;
        }
        Ok(total)
    }

    /// Applies one SGD update from a summed gradient.
    ///
    /// # Errors
    /// As [`Sgd::step`].
    pub fn apply(&mut self, grad: &HeadGradient, sgd: &Sgd, velocity: &mut HeadVelocity) -> Result<()> {
        sgd.step(
            self.weight.view_mut().into_dyn(),
            grad.weight.view().into_dyn(),
            velocity.weight.view_mut().into_dyn(),
            grad.count,
        )?;
        sgd.step(
            self.bias.view_mut().into_dyn(),
            grad.bias.view().into_dyn(),
            velocity.bias.view_mut().into_dyn(),
            grad.count,
        )
    }
}

impl HeadGradient {
    /// A zero gradient over no example, to accumulate into.
    pub fn zeros(classes: usize, features: usize) -> Self {
        HeadGradient {
            weight: Array2::zeros((classes, features)),
            bias: Array1::zeros(classes),
            loss_sum: 0.0,
            correct: 0,
            count: 0,
        }
    }

    /// Adds another summed gradient into this one.
    ///
    /// # Errors
    /// [`KernelError::Shape`] if the shapes differ.
    pub fn add(&mut self, other: &HeadGradient) -> Result<()> {
        if self.weight.dim() != other.weight.dim() {
            return Err(KernelError::shape("gradient", format!("{:?}", self.weight.shape()), other.weight.shape()));
        }
        self.weight += &other.weight;
        self.bias += &other.bias;
        self.loss_sum += other.loss_sum;
        self.correct += other.correct;
        self.count += other.count;
        Ok(())
    }

    /// Named gradient views (`head.weight`, `head.bias`).
    pub fn tensors(&self) -> [(&'static str, ArrayViewD<'_, f32>); 2] {
        [(HEAD_WEIGHT, self.weight.view().into_dyn()), (HEAD_BIAS, self.bias.view().into_dyn())]
    }
}

/// SGD momentum buffers of the head.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadVelocity {
    pub weight: Array2<f32>,
    pub bias: Array1<f32>,
}

impl HeadVelocity {
    /// Zero velocity for `head`.
    pub fn zeros_like(head: &Head) -> Self {
        HeadVelocity { weight: Array2::zeros(head.weight.raw_dim()), bias: Array1::zeros(head.bias.raw_dim()) }
    }

    /// Mutable named views, matching [`Head::tensors`].
    pub fn tensors_mut(&mut self) -> [(&'static str, ArrayViewMutD<'_, f32>); 2] {
        [(HEAD_WEIGHT, self.weight.view_mut().into_dyn()), (HEAD_BIAS, self.bias.view_mut().into_dyn())]
    }
}

/// The example order of `epoch`: a permutation of `0..n` from `seed` alone.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

/// Epochs of a training run unless told otherwise (`lml train`, a job spec,
/// `lml train-head`).
pub const DEFAULT_EPOCHS: u64 = 10;

/// Training losses above this many times the untrained level count as diverged.
pub const EXPLODED_LOSS_FACTOR: f64 = 10.0;

/// The highest training loss that is not divergence for `classes` classes:
/// [`EXPLODED_LOSS_FACTOR`] × `max(ln classes, 1)`. The untrained head
/// ([`Head::zeros`]) has loss exactly `ln classes` (2.30 for 10 classes,
/// limit 23.0); training lowers it, so a loss far above it means the steps
/// overshoot (the learning rate is too large for the features' scale) and
/// the weights are blowing up.
pub fn loss_limit(classes: usize) -> f64 {
    EXPLODED_LOSS_FACTOR * (classes.max(1) as f64).ln().max(1.0)
}

/// Why training counts as diverged.
#[derive(Clone, Debug, PartialEq)]
pub enum Divergence {
    /// The training loss is NaN or infinite.
    NonFiniteLoss(f64),
    /// The training loss is far above the untrained level (see [`loss_limit`]).
    Exploded { loss: f64, limit: f64 },
    /// A parameter (weight, bias or momentum) is NaN or infinite.
    NonFiniteParameters,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Divergence::NonFiniteLoss(l) => write!(f, "training loss became {l}"),
            Divergence::Exploded { loss, limit } => {
                write!(
                    f,
                    "training loss {loss:.4} exploded (above {limit:.2}, {EXPLODED_LOSS_FACTOR}× the untrained level)"
                )
            }
            Divergence::NonFiniteParameters => write!(f, "the head's parameters became NaN or infinite"),
        }
    }
}

/// Whether a step whose (pre-update) mean training loss was `loss` and
/// which left `head` and `velocity` has diverged.
pub fn divergence(loss: f64, head: &Head, velocity: &HeadVelocity) -> Option<Divergence> {
    if !loss.is_finite() {
        return Some(Divergence::NonFiniteLoss(loss));
    }
    let limit = loss_limit(head.classes());
    if loss > limit {
        return Some(Divergence::Exploded { loss, limit });
    }
    let finite = |a: &[f32]| a.iter().all(|v| v.is_finite());
    let all = [
        head.weight.as_slice_memory_order(),
        head.bias.as_slice_memory_order(),
        velocity.weight.as_slice_memory_order(),
        velocity.bias.as_slice_memory_order(),
    ];
    if all.iter().all(|a| a.is_none_or(finite)) {
        None
    } else {
        Some(Divergence::NonFiniteParameters)
    }
}

/// Single-process mini-batch SGD of the head over a [`FeatureSource`].
///
/// [`Trainer::new`] trains on the features as given with a constant
/// learning rate; [`with_schedule`](Trainer::with_schedule) and
/// [`with_stats`](Trainer::with_stats) add what every entry point uses by
/// default: a schedule over the run's steps and standardised features.
/// Step `t` of the run uses `sgd.at_step(schedule, t, total_steps)`, exactly
/// as round `t` of a distributed job does, so a gradient-sum job equals this
/// trainer with batch `workers × batch`.
#[derive(Clone, Debug)]
pub struct Trainer {
    pub head: Head,
    pub velocity: HeadVelocity,
    /// Base SGD settings (the learning rate before the schedule).
    pub sgd: Sgd,
    pub batch_size: usize,
    pub seed: u64,
    pub schedule: LrSchedule,
    /// Steps the schedule spans.
    pub total_steps: u64,
    /// Steps taken so far.
    pub steps_done: u64,
    /// Standardisation of every batch, if any.
    pub stats: Option<FeatureStats>,
}

impl Trainer {
    /// A trainer with a zero head ([`Head::zeros`]) for `classes` over
    /// `features`-long inputs, constant learning rate, raw features; `seed`
    /// decides the example order.
    ///
    /// # Errors
    /// [`KernelError::Invalid`] on a zero batch size, zero classes, or bad SGD settings.
    pub fn new(classes: usize, features: usize, sgd: Sgd, batch_size: usize, seed: u64) -> Result<Self> {
        sgd.validate()?;
        if batch_size == 0 || classes == 0 {
            return Err(KernelError::invalid("trainer", "batch size and classes must be positive"));
        }
        let head = Head::zeros(classes, features);
        let velocity = HeadVelocity::zeros_like(&head);
        Ok(Trainer {
            head,
            velocity,
            sgd,
            batch_size,
            seed,
            schedule: LrSchedule::Constant,
            total_steps: 0,
            steps_done: 0,
            stats: None,
        })
    }

    /// The learning rate follows `schedule` over a run of `total_steps` steps.
    pub fn with_schedule(mut self, schedule: LrSchedule, total_steps: u64) -> Self {
        self.schedule = schedule;
        self.total_steps = total_steps;
        self
    }

    /// Every batch (training and [`evaluate`](Self::evaluate)) is standardised by `stats`.
    ///
    /// # Errors
    /// [`KernelError::Shape`] if the feature lengths differ.
    pub fn with_stats(mut self, stats: FeatureStats) -> Result<Self> {
        if stats.dim() != self.head.feature_dim() {
            return Err(KernelError::shape(
                "feature statistics",
                format!("[{}]", self.head.feature_dim()),
                &[stats.dim()],
            ));
        }
        self.stats = Some(stats);
        Ok(self)
    }

    /// Steps in an epoch over `examples` examples: `ceil(examples / batch_size)`.
    pub fn steps_per_epoch(&self, examples: usize) -> u64 {
        examples.div_ceil(self.batch_size) as u64
    }

    /// The SGD settings of the next step (the schedule applied).
    pub fn current_sgd(&self) -> Sgd {
        self.sgd.at_step(self.schedule, self.steps_done, self.total_steps)
    }

    /// One SGD step on the examples `indices`; returns the batch's gradient stats.
    ///
    /// # Errors
    /// As [`FeatureSource::batch`] and [`Head::gradient`].
    pub fn step(&mut self, source: &dyn FeatureSource, indices: &[usize]) -> Result<HeadGradient> {
        let (x, y) = match &self.stats {
            Some(stats) => Standardized::new(source, stats)?.batch(indices)?,
            None => source.batch(indices)?,
        };
        let g = self.head.gradient(x.view(), &y)?;
        let sgd = self.current_sgd();
        self.head.apply(&g, &sgd, &mut self.velocity)?;
        self.steps_done += 1;
        Ok(g)
    }

    /// One epoch in [`epoch_order`]; returns the training loss and accuracy
    /// accumulated over the epoch's steps (each measured before its update).
    /// `progress` is called after each step with (steps done, steps total).
    ///
    /// # Errors
    /// As [`step`](Self::step).
    pub fn epoch(
        &mut self,
        source: &dyn FeatureSource,
        epoch: u64,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Evaluation> {
        let order = epoch_order(source.len(), self.seed, epoch);
        let steps = order.len().div_ceil(self.batch_size);
        let mut total = Evaluation::default();
        for (i, chunk) in order.chunks(self.batch_size).enumerate() {
            let g = self.step(source, chunk)?;
            total.loss_sum += g.loss_sum;
            total.correct += g.correct;
            total.count += g.count;
            progress(i + 1, steps);
        }
        Ok(total)
    }

    /// Whether training has diverged, given the loss of the last steps.
    pub fn divergence(&self, loss: f64) -> Option<Divergence> {
        divergence(loss, &self.head, &self.velocity)
    }

    /// Evaluates the head on every example of `source`, in batches
    /// (standardised if the trainer has statistics).
    ///
    /// # Errors
    /// As [`FeatureSource::batch`].
    pub fn evaluate(&self, source: &dyn FeatureSource) -> Result<Evaluation> {
        let chunk = self.batch_size.max(256);
        match &self.stats {
            Some(stats) => self.head.evaluate_source(&Standardized::new(source, stats)?, None, chunk),
            None => self.head.evaluate_source(source, None, chunk),
        }
    }
}
