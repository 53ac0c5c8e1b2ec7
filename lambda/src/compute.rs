//! The blocking work inside the roles: a worker's slice (with deadline-driven
//! continuation), the reduction tree, and the update. No I/O beyond the job
//! folder, no async.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{ProtocolError, Result};
use crate::layout::{present, publish_bundle, read_bundle, Bundle, JobDir};
use crate::meta::{ParamsMeta, PartialMeta, StatsMeta, SumMeta};
use crate::progress::Score;
use crate::services::{Clock, Probe};
use crate::spec::{JobConfig, SyncMode};
use lml_kernel::standardize::{FeatureStats, Standardized, STATS_CHUNK, STATS_MEAN, STATS_SCALE};
use lml_kernel::trainer::{Evaluation, FeatureSource, Head, HeadGradient, HeadVelocity, HEAD_BIAS, HEAD_WEIGHT};
use ndarray::{ArrayD, ArrayViewD, Ix1, Ix2};

/// Images whose features the statistics of a job on images are computed
/// over (spread evenly over the training set, [`FeatureStats::sample_indices`]):
/// running all of them through VGG19 at start would cost as much as an
/// epoch (at 224×224, 256 images take about a minute on 2 vCPUs).
pub const STATS_SAMPLE_IMAGES: usize = 256;

/// Images per VGG19 forward while computing a job's statistics.
const STATS_IMAGE_CHUNK: usize = 8;

/// The job's feature statistics bundle (`stats/`: `stats.mean.npy`,
/// `stats.scale.npy`, `meta.json`), published by start inside the staged
/// job folder, so it exists before any worker can look for it.
pub fn stats_path(jd: &JobDir) -> PathBuf {
    jd.dir.join("stats")
}

/// The statistics start computes for a job on `source` (its training data):
/// over every example of a feature cache, over [`STATS_SAMPLE_IMAGES`]
/// evenly spread images when features come from images through VGG19.
///
/// # Errors
/// As [`FeatureStats::compute`] (e.g. a non-finite feature, naming it).
pub fn feature_stats(cfg: &JobConfig, source: &dyn FeatureSource) -> Result<FeatureStats> {
    let stats = if cfg.spec.data.images.is_some() {
        let idx = FeatureStats::sample_indices(source.len(), STATS_SAMPLE_IMAGES);
        FeatureStats::compute(source, &idx, STATS_IMAGE_CHUNK)?
    } else {
        FeatureStats::compute(source, &(0..source.len()).collect::<Vec<_>>(), STATS_CHUNK)?
    };
    Ok(stats)
}

/// Publishes `stats` as the bundle at `path`.
///
/// # Errors
/// As [`publish_bundle`].
pub fn publish_stats(path: &Path, stats: &FeatureStats, examples: usize) -> Result<bool> {
    publish_bundle(path, &stats.tensors(), &StatsMeta { examples })
}

/// The job's statistics if it trains on standardised features.
///
/// # Errors
/// [`ProtocolError::BadJob`] naming the bundle if it is missing or malformed
/// or does not fit the job's feature length.
pub fn read_stats(jd: &JobDir, cfg: &JobConfig) -> Result<Option<FeatureStats>> {
    if !cfg.spec.standardize {
        return Ok(None);
    }
    let path = stats_path(jd);
    let b = read_bundle(&path)?;
    b.typed_meta::<StatsMeta>(&path)?;
    let stats = FeatureStats::from_arrays(b.tensor(&path, STATS_MEAN)?.view(), b.tensor(&path, STATS_SCALE)?.view())
        .map_err(|e| ProtocolError::job(&path, e.to_string()))?;
    if stats.dim() != cfg.feature_dim {
        return Err(ProtocolError::job(&path, format!("{} features, the job has {}", stats.dim(), cfg.feature_dim)));
    }
    Ok(Some(stats))
}

/// Runs `f` on `source` as the head sees it: standardised by `stats` if given.
fn with_view<T>(
    source: &dyn FeatureSource,
    stats: Option<&FeatureStats>,
    f: impl FnOnce(&dyn FeatureSource) -> Result<T>,
) -> Result<T> {
    match stats {
        Some(s) => f(&Standardized::new(source, s)?),
        None => f(source),
    }
}

/// Momentum buffer tensor names in parameter bundles.
pub const VELOCITY_WEIGHT: &str = "velocity.head.weight";
/// See [`VELOCITY_WEIGHT`].
pub const VELOCITY_BIAS: &str = "velocity.head.bias";

/// Parameters and momentum: the state a round starts from (a checkpoint).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub head: Head,
    pub velocity: HeadVelocity,
}

impl Params {
    /// The untrained head ([`Head::zeros`]) with zero momentum: where
    /// every job starts, as [`lml_kernel::trainer::Trainer`] does.
    pub fn init(classes: usize, features: usize) -> Self {
        let head = Head::zeros(classes, features);
        let velocity = HeadVelocity::zeros_like(&head);
        Params { head, velocity }
    }

    fn tensors(&self) -> [(&'static str, ArrayViewD<'_, f32>); 4] {
        [
            (HEAD_WEIGHT, self.head.weight.view().into_dyn()),
            (HEAD_BIAS, self.head.bias.view().into_dyn()),
            (VELOCITY_WEIGHT, self.velocity.weight.view().into_dyn()),
            (VELOCITY_BIAS, self.velocity.bias.view().into_dyn()),
        ]
    }

    /// Publishes the parameters as a bundle at `path` with `meta` (a
    /// [`ParamsMeta`] in a job); `true` if this call did.
    ///
    /// # Errors
    /// As [`publish_bundle`].
    pub fn publish(&self, path: &Path, meta: &impl serde::Serialize) -> Result<bool> {
        publish_bundle(path, &self.tensors(), meta)
    }

    /// Reads a parameter bundle and its metadata.
    ///
    /// # Errors
    /// [`ProtocolError::BadJob`] naming the bundle if a tensor is missing or
    /// mis-shaped, or its `meta.json` and the field if that is malformed.
    pub fn read(path: &Path) -> Result<(Self, ParamsMeta)> {
        let b = read_bundle(path)?;
        let head = Head::from_arrays(b.tensor(path, HEAD_WEIGHT)?.view(), b.tensor(path, HEAD_BIAS)?.view())
            .map_err(|e| ProtocolError::job(path, e.to_string()))?;
        let velocity = HeadVelocity {
            weight: as2(path, VELOCITY_WEIGHT, b.tensor(path, VELOCITY_WEIGHT)?, head.weight.dim())?,
            bias: as1(path, VELOCITY_BIAS, b.tensor(path, VELOCITY_BIAS)?, head.bias.len())?,
        };
        Ok((Params { head, velocity }, b.typed_meta(path)?))
    }
}

fn as2(path: &Path, name: &str, t: &ArrayD<f32>, dim: (usize, usize)) -> Result<ndarray::Array2<f32>> {
    let a = t.clone().into_dimensionality::<Ix2>().ok().filter(|a| a.dim() == dim);
    a.ok_or_else(|| ProtocolError::job(path, format!("{name} has shape {:?}, expected {:?}", t.shape(), dim)))
}

fn as1(path: &Path, name: &str, t: &ArrayD<f32>, len: usize) -> Result<ndarray::Array1<f32>> {
    let a = t.clone().into_dimensionality::<Ix1>().ok().filter(|a| a.len() == len);
    a.ok_or_else(|| ProtocolError::job(path, format!("{name} has shape {:?}, expected [{len}]", t.shape())))
}

/// A worker's running state inside one round.
enum Local {
    /// Gradient sum: the summed gradient so far.
    Sum(HeadGradient),
    /// Model averaging: the local model, its momentum and the loss so far.
    Model { params: Params, stats: Evaluation },
}

impl Local {
    fn stats(&self) -> Evaluation {
        match self {
            Local::Sum(g) => Evaluation { loss_sum: g.loss_sum, correct: g.correct, count: g.count },
            Local::Model { stats, .. } => *stats,
        }
    }

    /// Runs one unit (a micro-batch of a gradient sum, or one local SGD step).
    fn step(
        &mut self,
        base: &Head,
        source: &dyn FeatureSource,
        indices: &[usize],
        cfg: &JobConfig,
        k: u64,
    ) -> Result<()> {
        let (x, y) = source.batch(indices)?;
        match self {
            Local::Sum(acc) => acc.add(&base.gradient(x.view(), &y)?)?,
            Local::Model { params, stats } => {
                let g = params.head.gradient(x.view(), &y)?;
                params.head.apply(&g, &cfg.sgd_at(k), &mut params.velocity)?;
                stats.loss_sum += g.loss_sum;
                stats.correct += g.correct;
                stats.count += g.count;
            }
        }
        Ok(())
    }

    /// Tensors of a continuation save (the state as is).
    fn partial_tensors(&self) -> Vec<(&'static str, ArrayViewD<'_, f32>)> {
        match self {
            Local::Sum(g) => g.tensors().to_vec(),
            Local::Model { params, .. } => params.tensors().to_vec(),
        }
    }

    /// Tensors of the worker's published result: the gradient sum, or the
    /// model and momentum weighted by the examples seen (so sums of results
    /// divided by the summed count are the weighted average).
    fn result_tensors(&self) -> BTreeMap<String, ArrayD<f32>> {
        let mut out = BTreeMap::new();
        match self {
            Local::Sum(g) => {
                for (n, t) in g.tensors() {
                    out.insert(n.to_string(), t.to_owned());
                }
            }
            Local::Model { params, stats } => {
                let c = stats.count as f32;
                for (n, t) in params.tensors() {
                    out.insert(n.to_string(), t.mapv(|v| v * c));
                }
            }
        }
        out
    }

    fn restore(cfg: &JobConfig, base: &Params, path: &Path, b: &Bundle, meta: &PartialMeta) -> Result<Self> {
        let stats = meta.stats();
        let dims = (base.head.weight.dim(), base.head.bias.len());
        Ok(match cfg.spec.sync {
            SyncMode::GradientSum => Local::Sum(HeadGradient {
                weight: as2(path, HEAD_WEIGHT, b.tensor(path, HEAD_WEIGHT)?, dims.0)?,
                bias: as1(path, HEAD_BIAS, b.tensor(path, HEAD_BIAS)?, dims.1)?,
                loss_sum: stats.loss_sum,
                correct: stats.correct,
                count: stats.count,
            }),
            SyncMode::ModelAverage => Local::Model {
                params: Params {
                    head: Head {
                        weight: as2(path, HEAD_WEIGHT, b.tensor(path, HEAD_WEIGHT)?, dims.0)?,
                        bias: as1(path, HEAD_BIAS, b.tensor(path, HEAD_BIAS)?, dims.1)?,
                    },
                    velocity: HeadVelocity {
                        weight: as2(path, VELOCITY_WEIGHT, b.tensor(path, VELOCITY_WEIGHT)?, dims.0)?,
                        bias: as1(path, VELOCITY_BIAS, b.tensor(path, VELOCITY_BIAS)?, dims.1)?,
                    },
                },
                stats,
            },
        })
    }
}

/// A worker's finished result for a round, not yet published.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerResult {
    pub tensors: BTreeMap<String, ArrayD<f32>>,
    pub meta: SumMeta,
    pub examples: usize,
    pub compute_ms: u64,
    pub continuations: u64,
}

impl WorkerResult {
    /// Publishes the result as worker `w`'s leaf of round `k`'s tree; `true` if this call did.
    ///
    /// # Errors
    /// As [`publish_bundle`].
    pub fn publish(&self, jd: &JobDir, k: u64, w: usize) -> Result<bool> {
        let views: Vec<(&str, ArrayViewD<'_, f32>)> =
            self.tensors.iter().map(|(n, t)| (n.as_str(), t.view())).collect();
        publish_bundle(&jd.sum(k, w, w + 1), &views, &self.meta)
    }
}

/// How a worker invocation's slice work ended.
#[derive(Clone, Debug, PartialEq)]
pub enum SliceEnd {
    /// The slice is done; the caller records and publishes the result.
    Done(WorkerResult),
    /// State saved as continuation `seq`; the caller must invoke the continuation.
    Continue { seq: u64 },
    /// Another invocation of the same worker published the next save first; it carries on.
    Yielded,
}

/// The highest continuation save of worker `w` in round `k`. Saves are
/// numbered 1, 2, … and published in order, so probing names upward finds
/// the last one without trusting a directory listing (see [`present`]).
fn latest_partial(jd: &JobDir, k: u64, w: usize) -> Option<u64> {
    let mut seq = 0;
    while present(&jd.partial(k, w, seq + 1)) {
        seq += 1;
    }
    (seq > 0).then_some(seq)
}

/// The continuation saves worker `w` published in round `k`, in order
/// (`seq` 1, 2, …): each says how many units of its slice (micro-batches;
/// local steps under model averaging) were done when an invocation handed
/// over to its continuation, so the first is what the first invocation got
/// done before its deadline. Empty if it saved none, or once the round's
/// files are pruned (when the round after it is applied).
///
/// # Errors
/// [`ProtocolError::BadJob`] naming a save that is malformed.
pub fn continuation_saves(jd: &JobDir, k: u64, w: usize) -> Result<Vec<PartialMeta>> {
    let mut saves = Vec::new();
    let mut seq = 1;
    while present(&jd.partial(k, w, seq)) {
        let path = jd.partial(k, w, seq);
        saves.push(read_bundle(&path)?.typed_meta(&path)?);
        seq += 1;
    }
    Ok(saves)
}

/// Worker `w`'s work in round `k`: resumes from its latest continuation save,
/// runs units (micro-batches, or local steps) until done or until the next
/// unit might not finish `safety_ms` before `deadline_ms`, and returns the
/// result or publishes a continuation save. At least one
/// unit runs per call, so a job always moves forward. The features are
/// standardised by the job's statistics when it has them.
///
/// # Errors
/// Kernel errors from the data; [`ProtocolError::BadJob`] for malformed bundles; I/O errors.
#[allow(clippy::too_many_arguments)]
pub fn run_slice(
    jd: &JobDir,
    cfg: &JobConfig,
    k: u64,
    w: usize,
    source: &dyn FeatureSource,
    clock: &dyn Clock,
    deadline_ms: u64,
    probe: &dyn Probe,
) -> Result<SliceEnd> {
    let (base, _) = Params::read(&jd.params(k))?;
    let stats = read_stats(jd, cfg)?;
    with_view(source, stats.as_ref(), |source| run_units(jd, cfg, k, w, &base, source, clock, deadline_ms, probe))
}

#[allow(clippy::too_many_arguments)]
fn run_units(
    jd: &JobDir,
    cfg: &JobConfig,
    k: u64,
    w: usize,
    base: &Params,
    source: &dyn FeatureSource,
    clock: &dyn Clock,
    deadline_ms: u64,
    probe: &dyn Probe,
) -> Result<SliceEnd> {
    let indices = cfg.worker_slice(k, w);
    let unit = match cfg.spec.sync {
        SyncMode::GradientSum => cfg.spec.micro_batch,
        SyncMode::ModelAverage => cfg.spec.batch,
    };
    let units: Vec<&[usize]> = indices.chunks(unit).collect();
    let (mut state, mut cursor, mut compute_ms, seq) = match latest_partial(jd, k, w) {
        Some(seq) => {
            let path = jd.partial(k, w, seq);
            let b = read_bundle(&path)?;
            let meta: PartialMeta = b.typed_meta(&path)?;
            if meta.cursor > units.len() {
                return Err(ProtocolError::job(
                    path.join("meta.json"),
                    format!("cursor: {} beyond the slice's {} units", meta.cursor, units.len()),
                ));
            }
            (Local::restore(cfg, base, &path, &b, &meta)?, meta.cursor, meta.compute_ms, seq)
        }
        None => {
            let fresh = match cfg.spec.sync {
                SyncMode::GradientSum => Local::Sum(HeadGradient::zeros(cfg.classes, cfg.feature_dim)),
                SyncMode::ModelAverage => Local::Model { params: base.clone(), stats: Evaluation::default() },
            };
            (fresh, 0, 0, 0)
        }
    };
    let first = cursor;
    let mut slowest = 0u64;
    while cursor < units.len() {
        let now = clock.now_ms();
        if cursor > first && now + slowest + cfg.spec.safety_ms > deadline_ms {
            let stats = state.stats();
            let meta = PartialMeta {
                cursor,
                loss_sum: stats.loss_sum,
                correct: stats.correct,
                count: stats.count,
                compute_ms,
                seq: seq + 1,
            };
            if !publish_bundle(&jd.partial(k, w, seq + 1), &state.partial_tensors(), &meta)? {
                return Ok(SliceEnd::Yielded);
            }
            probe.at("worker.saved", k)?;
            return Ok(SliceEnd::Continue { seq: seq + 1 });
        }
        state.step(&base.head, source, units[cursor], cfg, k)?;
        let took = clock.now_ms().saturating_sub(now);
        slowest = slowest.max(took);
        compute_ms += took;
        cursor += 1;
    }
    let stats = state.stats();
    let meta = SumMeta {
        lo: w,
        hi: w + 1,
        loss_sum: stats.loss_sum,
        correct: stats.correct,
        count: stats.count,
        compute_ms,
        continuations: seq,
    };
    Ok(SliceEnd::Done(WorkerResult {
        tensors: state.result_tensors(),
        meta,
        examples: stats.count,
        compute_ms,
        continuations: seq,
    }))
}

/// Moves worker `w`'s result up the reduction tree of round `k`.
///
/// The tree over `n` workers has node `sum-LO-HI` for every aligned
/// power-of-two range of workers (clipped at `n`); a parent is the sum of
/// its two children, always left + right, so the root's bits do not depend
/// on who merged what when. After publishing a node, a worker looks for its
/// sibling: if the sibling is there it merges and climbs, otherwise it stops
/// and the sibling's owner, who publishes later and looks after, merges
/// instead. Both may merge in a tie; the parent is then published once and
/// the other copy dropped. Every worker does at most `log2 n` merges of one
/// model-sized sum, and the combine reads one root: flat in `n`.
///
/// Returns whether the root (`sum-0-n`) is published.
///
/// # Errors
/// I/O and malformed-bundle errors.
pub fn reduce_up(jd: &JobDir, k: u64, w: usize, n: usize, probe: &dyn Probe) -> Result<bool> {
    let (mut lo, mut hi) = (w, w + 1);
    let mut size = 1usize;
    while (lo, hi) != (0, n) {
        size *= 2;
        let plo = w / size * size;
        let phi = (plo + size).min(n);
        if (plo, phi) == (lo, hi) {
            continue;
        }
        let mid = plo + size / 2;
        let parent = jd.sum(k, plo, phi);
        if !present(&parent) {
            let sibling = if lo == plo { jd.sum(k, mid, phi) } else { jd.sum(k, plo, mid) };
            if !present(&sibling) {
                return Ok(false);
            }
            merge(&jd.sum(k, plo, mid), &jd.sum(k, mid, phi), &parent)?;
            probe.at("reduce.merged", k)?;
        }
        (lo, hi) = (plo, phi);
    }
    Ok(true)
}

/// Publishes `left + right` at `parent` (tensors summed, counts added).
fn merge(left: &Path, right: &Path, parent: &Path) -> Result<bool> {
    let (a, b) = (read_bundle(left)?, read_bundle(right)?);
    if a.tensors.keys().ne(b.tensors.keys()) {
        return Err(ProtocolError::job(
            parent,
            format!("{} and {} hold different tensors", left.display(), right.display()),
        ));
    }
    let mut sum = a.tensors.clone();
    for (name, t) in sum.iter_mut() {
        let other = &b.tensors[name];
        if t.shape() != other.shape() {
            return Err(ProtocolError::job(
                right,
                format!("{name} has shape {:?}, its sibling {:?}", other.shape(), t.shape()),
            ));
        }
        *t += other;
    }
    let (ma, mb): (SumMeta, SumMeta) = (a.typed_meta(left)?, b.typed_meta(right)?);
    // Counts of examples and milliseconds: sums of published counts, checked
    // so that a damaged file is an error, never a wrapped count.
    let overflow = |field: &str, x: &dyn std::fmt::Display, y: &dyn std::fmt::Display| {
        ProtocolError::job(right.join("meta.json"), format!("{field}: {x} + {y} overflows"))
    };
    let add = |field: &str, x: u64, y: u64| x.checked_add(y).ok_or_else(|| overflow(field, &x, &y));
    let add_n = |field: &str, x: usize, y: usize| x.checked_add(y).ok_or_else(|| overflow(field, &x, &y));
    let meta = SumMeta {
        lo: ma.lo,
        hi: mb.hi,
        loss_sum: ma.loss_sum + mb.loss_sum,
        correct: add_n("correct", ma.correct, mb.correct)?,
        count: add_n("count", ma.count, mb.count)?,
        compute_ms: add("compute_ms", ma.compute_ms, mb.compute_ms)?,
        continuations: add("continuations", ma.continuations, mb.continuations)?,
    };
    let views: Vec<(&str, ArrayViewD<'_, f32>)> = sum.iter().map(|(n, t)| (n.as_str(), t.view())).collect();
    publish_bundle(parent, &views, &meta)
}

/// The reduced result of a round: what combine reads.
pub struct Reduced {
    pub bundle: Bundle,
    pub stats: Evaluation,
    pub compute_ms: u64,
}

/// Reads the root of round `k`'s tree.
///
/// # Errors
/// [`ProtocolError::BadJob`] if it is missing or malformed.
pub fn read_root(jd: &JobDir, cfg: &JobConfig, k: u64) -> Result<Reduced> {
    let path = jd.sum(k, 0, cfg.workers);
    let bundle = read_bundle(&path)?;
    let meta: SumMeta = bundle.typed_meta(&path)?;
    if meta.count == 0 {
        return Err(ProtocolError::job(&path, "the round's reduced result covers no example"));
    }
    Ok(Reduced { bundle, stats: meta.stats(), compute_ms: meta.compute_ms })
}

/// The next parameters from round `k`'s start and its reduced result (a
/// gradient sum takes one SGD step with round `k`'s learning rate,
/// [`JobConfig::sgd_at`]).
///
/// # Errors
/// [`ProtocolError::BadJob`] on mis-shaped tensors; kernel errors from the update.
pub fn apply(cfg: &JobConfig, k: u64, base: &Params, reduced: &Reduced, root: &Path) -> Result<Params> {
    let b = &reduced.bundle;
    let dims = (base.head.weight.dim(), base.head.bias.len());
    match cfg.spec.sync {
        SyncMode::GradientSum => {
            let grad = HeadGradient {
                weight: as2(root, HEAD_WEIGHT, b.tensor(root, HEAD_WEIGHT)?, dims.0)?,
                bias: as1(root, HEAD_BIAS, b.tensor(root, HEAD_BIAS)?, dims.1)?,
                loss_sum: reduced.stats.loss_sum,
                correct: reduced.stats.correct,
                count: reduced.stats.count,
            };
            let mut next = base.clone();
            next.head.apply(&grad, &cfg.sgd_at(k), &mut next.velocity)?;
            Ok(next)
        }
        SyncMode::ModelAverage => {
            let inv = 1.0 / reduced.stats.count as f32;
            let avg2 = |n: &str, d| as2(root, n, b.tensor(root, n)?, d).map(|a| a.mapv(|v| v * inv));
            let avg1 = |n: &str, d| as1(root, n, b.tensor(root, n)?, d).map(|a| a.mapv(|v| v * inv));
            Ok(Params {
                head: Head { weight: avg2(HEAD_WEIGHT, dims.0)?, bias: avg1(HEAD_BIAS, dims.1)? },
                velocity: HeadVelocity { weight: avg2(VELOCITY_WEIGHT, dims.0)?, bias: avg1(VELOCITY_BIAS, dims.1)? },
            })
        }
    }
}

/// Loss and accuracy of `head` over the first `limit` examples of `source`
/// (all if `None`), standardised by `stats` if given.
///
/// # Errors
/// Kernel errors from the data.
pub fn evaluate(
    head: &Head,
    source: &dyn FeatureSource,
    stats: Option<&FeatureStats>,
    limit: Option<usize>,
) -> Result<Score> {
    let total = with_view(source, stats, |s| Ok(head.evaluate_source(s, limit, 256)?))?;
    Ok(Score { loss: total.loss(), accuracy: total.accuracy(), examples: total.count })
}

/// Why round `k` diverged, if it did: its training loss (measured before
/// the update) is not finite or far above the untrained level
/// ([`lml_kernel::trainer::loss_limit`]), or the next parameters are not
/// finite. The reason says what to change.
pub fn divergence(cfg: &JobConfig, k: u64, train: &Evaluation, next: &Params) -> Option<String> {
    let what = lml_kernel::trainer::divergence(train.loss(), &next.head, &next.velocity)?;
    let spec = &cfg.spec;
    let advice = if spec.standardize {
        format!(
            "lower the learning rate (--lr, spec \"lr\": now {}) or raise the weight decay \
             (--weight-decay, spec \"weight_decay\": now {})",
            spec.lr, spec.weight_decay
        )
    } else {
        format!(
            "train on standardised features (drop --no-standardize; spec \"standardize\": true) \
             or lower the learning rate (--lr, spec \"lr\": now {})",
            spec.lr
        )
    };
    Some(format!(
        "diverged: {what} at round {k} with lr {} ({} schedule from {}): {advice}",
        cfg.sgd_at(k).lr,
        spec.schedule,
        spec.lr
    ))
}
