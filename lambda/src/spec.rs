//! The job spec (what the user asks for) and the job config (the spec plus
//! the facts start resolved from the data, as written to `config.json`).

use std::path::{Component, Path, PathBuf};

use lml_kernel::optim::Sgd;
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

/// Where a job's examples come from, paths relative to the storage root.
///
/// Either cached features (`features` + `labels`, from `lml extract-features`)
/// or images run through the frozen VGG19 at every step (`images` + `labels`
/// + `weights`, optionally `input_size` and `cut`), as the seed did.
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
        }
    }
}

impl DataSpec {
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

/// What a job does: data, schedule, optimiser, synchronisation, time budget.
/// Every field has a default, so `{}` is a valid spec (cached features at
/// `features/train_features.npy`, one epoch, batch 64 per worker, gradient sum).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSpec {
    /// Training examples.
    pub data: DataSpec,
    /// Held-out examples, evaluated after rounds (see `eval_every`).
    pub eval: Option<DataSpec>,
    /// Classes of the head; default: largest training label + 1.
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
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    /// Seed of the head's initialisation and of the example order.
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
        JobSpec {
            data: DataSpec::default(),
            eval: None,
            classes: None,
            epochs: 1,
            rounds: None,
            batch: 64,
            micro_batch: 32,
            sync: SyncMode::GradientSum,
            local_steps: 1,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
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
    /// Parses a spec from a JSON object over the defaults.
    ///
    /// # Errors
    /// [`ProtocolError::BadSpec`] on unknown fields, wrong types or invalid values.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let spec: JobSpec =
            serde_json::from_value(v.clone()).map_err(|e| ProtocolError::spec("spec", e.to_string()))?;
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
            if c == 0 || c > 100_000 {
                return Err(ProtocolError::spec("classes", format!("{c} is outside 1..=100000")));
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

/// Version tag of `config.json`.
pub const CONFIG_FORMAT: &str = "lml-job/1";

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
    /// Rounds per pass over the data: `ceil(examples / (workers · batch · local_steps))`.
    pub rounds_per_epoch: u64,
    /// Rounds the job runs unless stopped earlier.
    pub total_rounds: u64,
}

impl JobConfig {
    /// Resolves `spec` for `workers` workers over data of `examples` × `feature_dim`.
    ///
    /// # Errors
    /// [`ProtocolError::BadSpec`] if there are no examples.
    pub fn resolve(
        job: &JobId,
        workers: usize,
        spec: JobSpec,
        examples: usize,
        feature_dim: usize,
        classes: usize,
    ) -> Result<Self> {
        if examples == 0 {
            return Err(ProtocolError::spec("data", "has no examples"));
        }
        let per_round = (workers * spec.batch * spec.local_steps) as u64;
        let rounds_per_epoch = (examples as u64).div_ceil(per_round);
        let total_rounds = spec.rounds.unwrap_or(spec.epochs * rounds_per_epoch);
        Ok(JobConfig {
            format: CONFIG_FORMAT.into(),
            job: job.to_string(),
            workers,
            spec,
            examples,
            feature_dim,
            classes,
            rounds_per_epoch,
            total_rounds,
        })
    }

    /// Examples one round covers across all workers.
    pub fn round_examples(&self) -> usize {
        self.workers * self.spec.batch * self.spec.local_steps
    }

    /// The epoch of round `k`.
    pub fn epoch_of(&self, round: u64) -> u64 {
        round / self.rounds_per_epoch
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
        let start = (round % self.rounds_per_epoch) as usize * self.round_examples();
        let per_worker = self.spec.batch * self.spec.local_steps;
        let lo = (start + worker * per_worker).min(self.examples);
        let hi = (start + (worker + 1) * per_worker).min(self.examples).min(start + self.round_examples());
        order[lo..hi.max(lo)].to_vec()
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
            let cfg = JobConfig::resolve(&job, workers, spec, n, 4, 2).unwrap();
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
}
