//! The metadata files of a job folder, one serde struct per kind of file.
//!
//! Every `meta.json` of a bundle ([`crate::layout::publish_bundle`]) and
//! `final.json` is written from one of these structs and read back into it
//! through [`crate::layout::read_json`] / [`crate::layout::Bundle::typed_meta`]:
//! unknown fields are refused, and a damaged file is reported naming the
//! file and the field (`…/params/000003/meta.json: record.train.loss: invalid type`).
//! `config.json` is [`crate::spec::JobConfig`]; the progress records are in
//! [`crate::progress`].

use lml_kernel::trainer::Evaluation;
use serde::{Deserialize, Serialize};

use crate::progress::{JobStatus, RoundRecord, Score};

/// `params/NNNNNN/meta.json`: the parameters after `round` rounds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamsMeta {
    /// Rounds applied to reach these parameters (0: the initial head).
    pub round: u64,
    /// When they were published (ms since the epoch): the start of the next round.
    pub published_ms: u64,
    /// The round that produced them (absent for round 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RoundRecord>,
    /// Why that round diverged, if it did: the job ends failed with this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// `stats/meta.json`: the feature statistics' provenance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsMeta {
    /// Training examples of the job the statistics were computed for.
    pub examples: usize,
}

/// `rounds/NNNNNN/wWWWW-part-SSSS/meta.json`: a worker's continuation save.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialMeta {
    /// Units of the worker's slice done (the next one to run).
    pub cursor: usize,
    /// Summed loss, correct predictions and examples so far.
    pub loss_sum: f64,
    pub correct: usize,
    pub count: usize,
    /// Compute time so far (ms).
    pub compute_ms: u64,
    /// This save's number (1, 2, …).
    pub seq: u64,
}

/// `rounds/NNNNNN/sum-LO-HI/meta.json`: workers `lo..hi`'s summed result.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SumMeta {
    pub lo: usize,
    pub hi: usize,
    /// Summed loss, correct predictions and examples so far.
    pub loss_sum: f64,
    pub correct: usize,
    pub count: usize,
    /// Summed compute time of the workers (ms).
    pub compute_ms: u64,
    /// Summed continuations of the workers.
    pub continuations: u64,
}

/// `final.json`: how the job ended, written once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalSummary {
    /// Rounds applied.
    pub rounds: u64,
    /// `rounds`, `target loss`, `stop request`, or what made it fail.
    pub reason: String,
    pub status: JobStatus,
    pub finished_ms: u64,
    /// The last held-out evaluation, if any.
    pub eval: Option<Score>,
}

impl PartialMeta {
    /// The loss and accuracy counters.
    pub fn stats(&self) -> Evaluation {
        Evaluation { loss_sum: self.loss_sum, correct: self.correct, count: self.count }
    }
}

impl SumMeta {
    /// The loss and accuracy counters.
    pub fn stats(&self) -> Evaluation {
        Evaluation { loss_sum: self.loss_sum, correct: self.correct, count: self.count }
    }
}
