//! Feature standardisation: a per-feature mean and scale computed once over
//! the training data, applied to every batch the head sees (training,
//! evaluation, prediction), and foldable into the head.
//!
//! ```text
//! x'_j = (x_j − mean_j) / scale_j,     scale_j = σ_j · √D
//! ```
//!
//! where `σ_j` is feature `j`'s standard deviation over the data (population,
//! accumulated in f64) and `D` the feature length. Every feature of `x'`
//! then has mean 0 and variance `1/D`, so an example's squared norm is about
//! 1 whatever `D` is and whatever scale the features came in: fc7 features of
//! real photographs (squared norms in the thousands), the same ×100, or a
//! test's eight unit features. The head's loss then has curvature at most
//! about ½, and one learning rate ([`crate::optim::Sgd::default`]) suits them
//! all. A feature constant over the data (`σ_j` = 0, e.g. a ReLU unit that
//! never fires) gets `σ_j = 1`: its centred value is 0 on the data and its
//! weight receives no gradient.
//!
//! A head trained on standardised features applies to raw ones after
//! [`FeatureStats::fold`]: `W' = W / scale` (column-wise), `b' = b − W'·mean`.

use ndarray::{Array1, Array2, ArrayView1, ArrayViewD, Axis};

use crate::error::{KernelError, Result};
use crate::trainer::{FeatureSource, Head};

/// Tensor names of the statistics, as written to `.npy`.
pub const STATS_MEAN: &str = "stats.mean";
/// See [`STATS_MEAN`].
pub const STATS_SCALE: &str = "stats.scale";

/// Examples per read while computing statistics over a cache.
pub const STATS_CHUNK: usize = 256;

/// Per-feature mean and scale of a training set (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureStats {
    /// `[D]`.
    pub mean: Array1<f32>,
    /// `[D]`, positive and finite.
    pub scale: Array1<f32>,
}

impl FeatureStats {
    /// The statistics of the examples `indices` of `source`, read `chunk` at a
    /// time (one streaming pass: per chunk a mean and a sum of squared
    /// deviations in f64, merged as Chan et al. do, so large means do not
    /// cancel the variance).
    ///
    /// # Errors
    /// As [`FeatureSource::batch`]; [`KernelError::Invalid`] if `indices` is
    /// empty or a value is not finite (naming the example and the feature).
    pub fn compute(source: &dyn FeatureSource, indices: &[usize], chunk: usize) -> Result<Self> {
        let dim = source.feature_dim();
        if indices.is_empty() {
            return Err(KernelError::invalid("feature statistics", "no example to compute them over"));
        }
        let mut mean = vec![0f64; dim];
        let mut m2 = vec![0f64; dim];
        let mut count = 0f64;
        let mut chunk_mean = vec![0f64; dim];
        let mut chunk_m2 = vec![0f64; dim];
        for part in indices.chunks(chunk.max(1)) {
            let (x, _) = source.batch(part)?;
            if let Some(((r, j), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
                return Err(KernelError::invalid(
                    format!("feature {j} of example {}", part[r]),
                    format!("{v} is not finite (features must be finite numbers)"),
                ));
            }
            let n = part.len() as f64;
            chunk_mean.iter_mut().for_each(|m| *m = 0.0);
            chunk_m2.iter_mut().for_each(|m| *m = 0.0);
            for row in x.outer_iter() {
                for (m, &v) in chunk_mean.iter_mut().zip(row) {
                    *m += f64::from(v);
                }
            }
            chunk_mean.iter_mut().for_each(|m| *m /= n);
            for row in x.outer_iter() {
                for ((s, &m), &v) in chunk_m2.iter_mut().zip(&chunk_mean).zip(row) {
                    let d = f64::from(v) - m;
                    *s += d * d;
                }
            }
            let total = count + n;
            for j in 0..dim {
                let delta = chunk_mean[j] - mean[j];
                mean[j] += delta * n / total;
                m2[j] += chunk_m2[j] + delta * delta * count * n / total;
            }
            count = total;
        }
        let root_d = (dim.max(1) as f64).sqrt();
        let scale = Array1::from_shape_fn(dim, |j| {
            let sigma = (m2[j] / count).sqrt();
            // Constant up to the rounding of its f64 mean: no spread to scale.
            let sigma = if sigma <= 1e-7 * mean[j].abs() || sigma == 0.0 { 1.0 } else { sigma };
            (sigma * root_d) as f32
        });
        let mean = Array1::from_iter(mean.iter().map(|&m| m as f32));
        FeatureStats::from_arrays(mean.view().into_dyn(), scale.view().into_dyn())
    }

    /// The statistics of every example of `source` (see [`compute`](Self::compute)).
    ///
    /// # Errors
    /// As [`compute`](Self::compute).
    pub fn compute_all(source: &dyn FeatureSource) -> Result<Self> {
        let all: Vec<usize> = (0..source.len()).collect();
        Self::compute(source, &all, STATS_CHUNK)
    }

    /// `max` example indices of `0..n` spread evenly (`i·n / max`), all of
    /// them if `n <= max`: the deterministic sample statistics are computed
    /// over when every example would cost too much (images through VGG19).
    pub fn sample_indices(n: usize, max: usize) -> Vec<usize> {
        if n <= max {
            return (0..n).collect();
        }
        // i < max < n, so i·n < n² fits in u128 and the quotient is < n.
        (0..max).map(|i| (i as u128 * n as u128 / max as u128) as usize).collect()
    }

    /// Statistics that change nothing: mean 0, scale 1.
    pub fn identity(dim: usize) -> Self {
        FeatureStats { mean: Array1::zeros(dim), scale: Array1::ones(dim) }
    }

    /// Feature length.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Named views, in a fixed order: `stats.mean`, `stats.scale`.
    pub fn tensors(&self) -> [(&'static str, ArrayViewD<'_, f32>); 2] {
        [(STATS_MEAN, self.mean.view().into_dyn()), (STATS_SCALE, self.scale.view().into_dyn())]
    }

    /// Rebuilds statistics from their arrays (as read back from `.npy`).
    ///
    /// # Errors
    /// [`KernelError::Shape`] if they are not 1-D of one length;
    /// [`KernelError::Invalid`] if a mean is not finite or a scale not finite and positive.
    pub fn from_arrays(mean: ArrayViewD<'_, f32>, scale: ArrayViewD<'_, f32>) -> Result<Self> {
        let mean = mean
            .into_dimensionality::<ndarray::Ix1>()
            .map_err(|_| KernelError::shape(STATS_MEAN, "[features]", &[]))?
            .to_owned();
        if scale.shape() != [mean.len()] {
            return Err(KernelError::shape(STATS_SCALE, format!("[{}]", mean.len()), scale.shape()));
        }
        let scale = scale.into_dimensionality::<ndarray::Ix1>().expect("checked").to_owned();
        if let Some(j) = mean.iter().position(|m| !m.is_finite()) {
            return Err(KernelError::invalid(format!("{STATS_MEAN}[{j}]"), format!("{} is not finite", mean[j])));
        }
        if let Some(j) = scale.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(KernelError::invalid(
                format!("{STATS_SCALE}[{j}]"),
                format!("{} is not finite and positive", scale[j]),
            ));
        }
        Ok(FeatureStats { mean, scale })
    }

    /// Standardises `x` (`[N, D]`) in place: `x ← (x − mean) / scale`, row by row.
    ///
    /// # Errors
    /// [`KernelError::Shape`] if `x` has another feature length.
    pub fn apply(&self, x: &mut Array2<f32>) -> Result<()> {
        if x.ncols() != self.dim() {
            return Err(KernelError::shape("standardised features", format!("[N, {}]", self.dim()), x.shape()));
        }
        for mut row in x.axis_iter_mut(Axis(0)) {
            for ((v, &m), &s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = (*v - m) / s;
            }
        }
        Ok(())
    }

    /// The head on raw features equal to `head` on standardised ones:
    /// `W'[c, j] = W[c, j] / scale_j`, `b'_c = b_c − Σ_j W'[c, j] · mean_j`
    /// (the sum in f64). So `head.logits((x − mean) / scale) = fold.logits(x)`
    /// up to rounding.
    ///
    /// # Errors
    /// [`KernelError::Shape`] if the head's feature length differs.
    pub fn fold(&self, head: &Head) -> Result<Head> {
        if head.feature_dim() != self.dim() {
            return Err(KernelError::shape("folded head", format!("[classes, {}]", self.dim()), head.weight.shape()));
        }
        let mut weight = head.weight.clone();
        for mut row in weight.axis_iter_mut(Axis(0)) {
            for (w, &s) in row.iter_mut().zip(&self.scale) {
                *w /= s;
            }
        }
        let bias = Array1::from_shape_fn(head.classes(), |c| {
            let shift: f64 = dot64(weight.row(c), self.mean.view());
            (f64::from(head.bias[c]) - shift) as f32
        });
        Ok(Head { weight, bias })
    }
}

fn dot64(a: ArrayView1<'_, f32>, b: ArrayView1<'_, f32>) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum()
}

/// A [`FeatureSource`] whose batches are standardised by `stats`: what
/// training, gradients and evaluation read when a head is trained on
/// standardised features.
pub struct Standardized<'a> {
    source: &'a dyn FeatureSource,
    stats: &'a FeatureStats,
}

impl<'a> Standardized<'a> {
    /// `source` seen through `stats`.
    ///
    /// # Errors
    /// [`KernelError::Shape`] if the feature lengths differ.
    pub fn new(source: &'a dyn FeatureSource, stats: &'a FeatureStats) -> Result<Self> {
        if source.feature_dim() != stats.dim() {
            return Err(KernelError::shape(
                "feature statistics",
                format!("[{}] (the data's feature length)", source.feature_dim()),
                &[stats.dim()],
            ));
        }
        Ok(Standardized { source, stats })
    }
}

impl FeatureSource for Standardized<'_> {
    fn len(&self) -> usize {
        self.source.len()
    }
    fn feature_dim(&self) -> usize {
        self.source.feature_dim()
    }
    fn batch(&self, indices: &[usize]) -> Result<(Array2<f32>, Vec<u32>)> {
        let (mut x, y) = self.source.batch(indices)?;
        self.stats.apply(&mut x)?;
        Ok((x, y))
    }
}
