//! Progress records: what a user watches, and the second guard of the combine trigger.
//!
//! The records are those a DynamoDB table keyed by `(job, record)` holds:
//! one job record, one record per round (loss, accuracy, timings) and per
//! worker completion, a set of finished workers per round (DynamoDB `ADD` to
//! a string set: idempotent under retries, unlike a numeric counter), and
//! claims (a conditional put with `attribute_not_exists`). [`LocalProgress`]
//! keeps them as files in the job folder; the AWS store keeps them in DynamoDB.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ProtocolError, Result};
use crate::event::JobId;
use crate::layout::{self, Claim, JobDir};

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Running,
    Finished,
    Stopped,
    /// Ended by divergence: `reason` says what happened and what to change.
    Failed,
}

/// Loss and accuracy over a set of examples.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Score {
    pub loss: f64,
    pub accuracy: f64,
    pub examples: usize,
}

/// The job's record (key `job`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    pub job: String,
    pub status: JobStatus,
    pub workers: usize,
    pub examples: usize,
    pub rounds_per_epoch: u64,
    pub total_rounds: u64,
    pub started_ms: u64,
    /// Rounds applied when the job ended.
    #[serde(default)]
    pub rounds_done: Option<u64>,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// Why it ended: `rounds`, `target loss`, `stop request`, or (failed)
    /// what went wrong and what to change.
    #[serde(default)]
    pub reason: Option<String>,
    /// The last held-out evaluation, if any.
    #[serde(default)]
    pub eval: Option<Score>,
    /// Classes of the head (0 in records written before it was kept).
    #[serde(default)]
    pub classes: usize,
    /// Their names, when the data has a class list and they fit
    /// [`MAX_RECORD_NAME_BYTES`] (a DynamoDB item holds at most 400 KB);
    /// `config.json` always has them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
}

/// Most bytes of class names a job record carries.
pub const MAX_RECORD_NAME_BYTES: usize = 64 * 1024;

impl JobRecord {
    /// `names` if their total length fits [`MAX_RECORD_NAME_BYTES`], else none.
    pub fn names_for_record(names: &[String]) -> Vec<String> {
        let bytes: usize = names.iter().map(|n| n.len() + 1).sum();
        if bytes <= MAX_RECORD_NAME_BYTES {
            names.to_vec()
        } else {
            Vec::new()
        }
    }
}

/// One applied round (key `round#NNNNNN`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundRecord {
    pub round: u64,
    pub epoch: u64,
    /// Training loss and accuracy of the round's examples, before the update.
    pub train: Score,
    /// Held-out score of the parameters after the update, when evaluated.
    pub eval: Option<Score>,
    /// Sum of the workers' compute time (ms).
    pub worker_ms: u64,
    /// Time the combine took to read the reduced result, update and publish (ms).
    pub combine_ms: u64,
    /// Time from this round's parameters being published to the next's (ms).
    pub round_ms: u64,
    pub finished_ms: u64,
}

/// One worker's completed part of a round (key `worker#NNNNNN#WWWW`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRecord {
    pub round: u64,
    pub workerno: usize,
    pub examples: usize,
    pub compute_ms: u64,
    /// Invocations the worker needed beyond the first (continuations).
    pub continuations: u64,
    pub finished_ms: u64,
}

/// An extraction job's record (key `extract`): see [`crate::extract`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtractRecord {
    pub job: String,
    pub status: JobStatus,
    pub workers: usize,
    pub images: usize,
    pub shards: usize,
    /// Feature length.
    pub dim: usize,
    pub started_ms: u64,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// The merged features (path relative to the storage root), once merged.
    #[serde(default)]
    pub cache: Option<String>,
}

/// One published shard of an extraction job (key `shard#000003`), written
/// once, by the first invocation that computed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub shard: usize,
    /// Images in the shard.
    pub images: usize,
    /// The worker whose invocations computed it.
    pub workerno: usize,
    /// Whether that worker took it from another's queue.
    pub stolen: bool,
    /// Time spent in the VGG19 forward for it, over all its invocations (ms).
    pub compute_ms: u64,
    /// Continuation saves it took.
    pub parts: u64,
    pub finished_ms: u64,
}

/// An ingest job's record (key `ingest`): see [`crate::ingest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestRecord {
    pub job: String,
    pub status: JobStatus,
    pub bucket: String,
    pub prefix: String,
    /// The folder under the storage root the files land in (`""`: the root).
    pub dest: String,
    /// Objects and bytes to copy.
    pub objects: usize,
    pub bytes: u64,
    /// Objects published, and bytes copied (those of the object in progress included).
    pub objects_done: usize,
    pub bytes_done: u64,
    /// Copy invocations so far.
    pub invocations: u64,
    pub updated_ms: u64,
    /// Why it failed (status `failed`): the object and what S3 or the copy said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Everything a store holds about one job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    pub job: Option<JobRecord>,
    pub rounds: BTreeMap<u64, RoundRecord>,
    pub workers: BTreeMap<(u64, usize), WorkerRecord>,
    /// Finished workers per round.
    pub done: BTreeMap<u64, BTreeSet<usize>>,
    /// An extraction job's record.
    pub extract: Option<ExtractRecord>,
    /// An extraction job's published shards.
    pub shards: BTreeMap<usize, ShardRecord>,
    /// An ingest job's record.
    pub ingest: Option<IngestRecord>,
}

/// The progress store: DynamoDB on AWS, files in the job folder locally.
pub trait ProgressStore: Send + Sync + 'static {
    /// Writes (or replaces) the job record.
    fn put_job(&self, job: &JobId, record: &JobRecord) -> impl Future<Output = Result<()>> + Send;
    /// Writes a round record unless one exists; `true` if this call wrote it.
    fn put_round(&self, job: &JobId, record: &RoundRecord) -> impl Future<Output = Result<bool>> + Send;
    /// Writes a worker record unless one exists; `true` if this call wrote it.
    fn put_worker(&self, job: &JobId, record: &WorkerRecord) -> impl Future<Output = Result<bool>> + Send;
    /// Adds `worker` to round `round`'s set of finished workers; returns the set's size.
    fn add_done(&self, job: &JobId, round: u64, worker: usize) -> impl Future<Output = Result<usize>> + Send;
    /// Creates claim `key` for `owner` unless it exists (a conditional put).
    fn claim(&self, job: &JobId, key: &str, owner: &str) -> impl Future<Output = Result<Claim>> + Send;
    /// Everything recorded for `job`.
    fn load(&self, job: &JobId) -> impl Future<Output = Result<Progress>> + Send;
    /// Writes (or replaces) an extraction job's record.
    fn put_extract(&self, job: &JobId, record: &ExtractRecord) -> impl Future<Output = Result<()>> + Send;
    /// Writes a shard record unless one exists; `true` if this call wrote it.
    fn put_shard(&self, job: &JobId, record: &ShardRecord) -> impl Future<Output = Result<bool>> + Send;
    /// Writes (or replaces) an ingest job's record.
    fn put_ingest(&self, job: &JobId, record: &IngestRecord) -> impl Future<Output = Result<()>> + Send;
}

/// Progress as files in `<root>/jobs/<job>/progress/`.
#[derive(Clone, Debug)]
pub struct LocalProgress {
    root: PathBuf,
}

impl LocalProgress {
    /// A store for jobs under the storage root `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalProgress { root: root.into() }
    }

    fn dir(&self, job: &JobId) -> Result<PathBuf> {
        let jd = JobDir::new(&self.root, job);
        let dir = jd.progress();
        if !jd.exists() {
            return Err(ProtocolError::job(&jd.dir, "no such job"));
        }
        fs::create_dir_all(&dir).map_err(|e| ProtocolError::io(&dir, e))?;
        Ok(dir)
    }

    fn put_if_absent(path: &Path, value: &impl Serialize) -> Result<bool> {
        let text = serde_json::to_string_pretty(value).map_err(|e| ProtocolError::Progress(e.to_string()))?;
        Ok(layout::claim(path, &text)? == Claim::Won)
    }
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    layout::read_json(path)
}

impl ProgressStore for LocalProgress {
    async fn put_job(&self, job: &JobId, record: &JobRecord) -> Result<()> {
        let dir = self.dir(job)?;
        layout::write_json(&dir.join("job.json"), record)
    }

    async fn put_round(&self, job: &JobId, record: &RoundRecord) -> Result<bool> {
        let dir = self.dir(job)?;
        Self::put_if_absent(&dir.join(format!("round-{:06}.json", record.round)), record)
    }

    async fn put_worker(&self, job: &JobId, record: &WorkerRecord) -> Result<bool> {
        let dir = self.dir(job)?;
        Self::put_if_absent(&dir.join(format!("worker-{:06}-{:04}.json", record.round, record.workerno)), record)
    }

    async fn add_done(&self, job: &JobId, round: u64, worker: usize) -> Result<usize> {
        let dir = self.dir(job)?;
        let path = dir.join(format!("done-{round:06}.json"));
        // Read-modify-replace under an exclusive lock: the local analogue of
        // DynamoDB's atomic `ADD` to a set.
        layout::with_lock(&dir.join(format!("done-{round:06}.lock")), || {
            let mut set: BTreeSet<usize> = if path.exists() { read(&path)? } else { BTreeSet::new() };
            if set.insert(worker) {
                layout::write_json(&path, &set)?;
            }
            Ok(set.len())
        })
    }

    async fn claim(&self, job: &JobId, key: &str, owner: &str) -> Result<Claim> {
        let dir = self.dir(job)?;
        let safe: String = key.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        layout::claim(&dir.join(format!("claim-{safe}")), owner)
    }

    async fn load(&self, job: &JobId) -> Result<Progress> {
        let dir = self.dir(job)?;
        let mut p = Progress::default();
        for entry in fs::read_dir(&dir).map_err(|e| ProtocolError::io(&dir, e))? {
            let entry = entry.map_err(|e| ProtocolError::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name == "job.json" {
                p.job = Some(read(&path)?);
            } else if name.starts_with("round-") && name.ends_with(".json") {
                let r: RoundRecord = read(&path)?;
                p.rounds.insert(r.round, r);
            } else if name.starts_with("worker-") && name.ends_with(".json") {
                let w: WorkerRecord = read(&path)?;
                p.workers.insert((w.round, w.workerno), w);
            } else if name == "extract.json" {
                p.extract = Some(read(&path)?);
            } else if name == "ingest.json" {
                p.ingest = Some(read(&path)?);
            } else if name.starts_with("shard-") && name.ends_with(".json") {
                let r: ShardRecord = read(&path)?;
                p.shards.insert(r.shard, r);
            } else if let Some(k) = name.strip_prefix("done-").and_then(|n| n.strip_suffix(".json")) {
                let k: u64 = k.parse().map_err(|_| ProtocolError::job(&path, "bad round number"))?;
                p.done.insert(k, read(&path)?);
            }
        }
        Ok(p)
    }

    async fn put_extract(&self, job: &JobId, record: &ExtractRecord) -> Result<()> {
        let dir = self.dir(job)?;
        layout::write_json(&dir.join("extract.json"), record)
    }

    async fn put_shard(&self, job: &JobId, record: &ShardRecord) -> Result<bool> {
        let dir = self.dir(job)?;
        Self::put_if_absent(&dir.join(format!("shard-{:06}.json", record.shard)), record)
    }

    async fn put_ingest(&self, job: &JobId, record: &IngestRecord) -> Result<()> {
        let dir = self.dir(job)?;
        layout::write_json(&dir.join("ingest.json"), record)
    }
}
