//! Feature extraction as a job of the protocol: the frozen VGG19 over a
//! split of images, on the job's workers, into the cache `lml extract-features`
//! writes (the same bytes: both run [`lml_kernel::features`]).
//!
//! ## Events
//!
//! | event | fields |
//! |---|---|
//! | start | `"extract": "start"`, `"workers": N` (1..=1000), `"job"`, `"spec"`: an [`ExtractSpec`] |
//! | worker | `"extract": "worker"`, `"workerno": i` (< N), `"workers": N`, `"job"`, `"continuation": c` |
//! | merge | `"extract": "merge"`, `"job"` |
//!
//! `{"resume": true, "job": id}` resumes an extraction job as it does a
//! training job. Parsing is as strict as for the other events: unknown
//! fields, wrong types, fields of another kind are errors naming the field,
//! and nothing is written.
//!
//! ## The job
//!
//! 1. **start** validates everything before writing: the spec, the images
//!    and labels (they open, one label per image), the weights (they open
//!    for the spec's input size and cut), and that the output folder holds
//!    no cache of this split yet. It creates the job folder whole (staged,
//!    renamed), records the job, and invokes the N workers.
//! 2. The split is cut into `S = max(4·N, ⌈images / shard_images⌉)`
//!    shards (at most one per image), each smaller than one invocation's
//!    work. **Worker** `i` takes its own shards `i, i+N, …` in order, then
//!    takes other workers' shards that nobody has claimed yet (from the end
//!    of their queues), then shards whose newest claim is older than
//!    `lease_ms`: a slow or dead worker's shards are picked up by others, so
//!    no straggler holds the job. A claim is a file created by `link(2)`
//!    (worker and time inside); a worker claims a shard each time it starts
//!    or resumes it, so an active worker's claim stays fresh. Work done twice
//!    is harmless: a shard is a deterministic function of the images, and is
//!    published by an atomic rename.
//! 3. A worker runs the VGG19 in batches of [`BATCH`] from the shard's first
//!    row with its invocation's threads, and checks the deadline before each
//!    batch. Before a batch could overrun, it publishes the rows done so far
//!    as a numbered part (`shards/000003.part-0002/`, published once: a
//!    second copy of the same worker that gets there later stops) and invokes
//!    its continuation, which resumes at that batch boundary. At least one
//!    batch runs per invocation.
//! 4. The worker that publishes a shard and then sees every shard present
//!    claims the merge trigger (a `link(2)` claim, then a conditional put in
//!    the progress store: the combine's guard) and invokes **merge**, which
//!    concatenates the shards into `{split}_features.npy`, copies the labels
//!    and the class list, writes `{split}_features.json` ([`CacheNote`]),
//!    then `final.json`, and records the cache in the progress store.
//! 5. **resume** (all invocations died) invokes the owners of the shards
//!    not yet published (an owner always takes its own shards, whoever
//!    claimed them), or the merge if every shard is there.
//!
//! ## Folder layout
//!
//! ```text
//! jobs/<job>/config.json                 the resolved job (ExtractConfig), written once
//! jobs/<job>/fanout                      marker: the workers were invoked
//! jobs/<job>/shards/000003.claim-0001    a claim of shard 3 (worker, time)
//! jobs/<job>/shards/000003.part-0001/    rows.npy + meta.json: a continuation save
//! jobs/<job>/merge-trigger               claim: who invokes the merge
//! jobs/<job>/merge-invoked, merge.lock   the merge was sent; held while merging
//! jobs/<job>/progress/                   the local progress store's records
//! jobs/<job>/final.json                  written once the cache is merged
//! <out>/{split}.shard-0003-of-0040.npy   the published shards (the kernel's layout)
//! <out>/{split}_features.npy, {split}_y.npy, {split}_features.json, classes.txt
//! ```

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use lml_kernel::dataset::ImageDataset;
use lml_kernel::features::{extract_rows, publish_shard, shard_path, shard_rows, CacheNote, Dtype, CACHE_FORMAT};
use lml_kernel::npy::{publish_atomic, write_npy_header, MappedNpy};
use lml_kernel::{Cut, Preset, Vgg19};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use lml_kernel::features::BATCH;

use crate::error::{ProtocolError, Result};
use crate::event::{Event, JobId, MAX_WORKERS};
use crate::layout::{claim, present, temp_beside, write_json, JobDir, TempGuard};
use crate::pipeline::Pipeline;
use crate::progress::{ExtractRecord, JobStatus, ProgressStore, ShardRecord};
use crate::roles::{blocking, Outcome};
use crate::services::{Clock, Invocation, Invoker, Probe, Services};
use crate::spec::{relative_path, resolve_inside, DataSpec, JobSpec, LAMBDA_MAX_MS};

/// Version tag of an extraction job's `config.json`.
pub const EXTRACT_FORMAT: &str = "lml-extract/1";

/// Shards per worker at least, so that a fast worker has others' shards to take.
pub const SHARDS_PER_WORKER: usize = 4;

/// Network input side when the spec gives none (as for a training job on images).
pub const DEFAULT_INPUT_SIZE: usize = 32;

fn default_input_size() -> usize {
    DEFAULT_INPUT_SIZE
}
fn default_cut() -> Cut {
    Cut::Fc7
}
fn default_split() -> String {
    "train".into()
}
/// Images per shard unless the spec says otherwise (at most: there are at
/// least [`SHARDS_PER_WORKER`] shards per worker).
pub const DEFAULT_SHARD_IMAGES: usize = 256;
fn default_shard_images() -> usize {
    DEFAULT_SHARD_IMAGES
}
fn default_lease_ms() -> u64 {
    120_000
}
fn default_time_limit_ms() -> u64 {
    JobSpec::default().time_limit_ms
}
fn default_safety_ms() -> u64 {
    JobSpec::default().safety_ms
}

/// What an extraction job computes. Paths are relative to the storage root.
///
/// `{"images": "data/train_x.npy", "labels": "data/train_y.npy", "weights": "vgg19", "out": "features"}`
/// is a complete spec; the rest have defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractSpec {
    /// Images `[N, H, W, 3]` `u8` (`prepare-cifar10`'s `{split}_x.npy`).
    pub images: String,
    /// One label per image.
    pub labels: String,
    /// The VGG19 weight directory.
    pub weights: String,
    /// Network input side (a multiple of 32 in 32..=512).
    #[serde(default = "default_input_size")]
    pub input_size: usize,
    /// Where the features are taken (pool5, fc6, fc7).
    #[serde(default = "default_cut")]
    pub cut: Cut,
    /// Storage type of the cache (`f32` or `f16`).
    #[serde(default)]
    pub dtype: Dtype,
    /// The cache folder.
    pub out: String,
    /// The split's name in the cache's file names (`{split}_features.npy`).
    #[serde(default = "default_split")]
    pub split: String,
    /// Images per shard at most (more shards when `4 × workers` is more).
    #[serde(default = "default_shard_images")]
    pub shard_images: usize,
    /// A shard whose newest claim is older than this may be taken by any worker (ms).
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Invocation time limit used when the runtime gives no usable deadline (ms).
    #[serde(default = "default_time_limit_ms")]
    pub time_limit_ms: u64,
    /// Time kept in reserve before the deadline for publishing and continuing (ms).
    #[serde(default = "default_safety_ms")]
    pub safety_ms: u64,
}

impl ExtractSpec {
    /// The spec of `images` with `labels` through `weights` into `out`, every
    /// other field at its default.
    pub fn with_defaults(images: String, labels: String, weights: String, out: String) -> Self {
        ExtractSpec {
            images,
            labels,
            weights,
            input_size: default_input_size(),
            cut: default_cut(),
            dtype: Dtype::default(),
            out,
            split: default_split(),
            shard_images: default_shard_images(),
            lease_ms: default_lease_ms(),
            time_limit_ms: default_time_limit_ms(),
            safety_ms: default_safety_ms(),
        }
    }

    /// Parses a spec from a JSON object.
    ///
    /// # Errors
    /// [`ProtocolError::BadSpec`] on unknown fields, wrong types or invalid values, naming the field.
    pub fn from_json(v: &Value) -> Result<Self> {
        let spec: ExtractSpec =
            crate::json::from_value(v).map_err(|e| ProtocolError::spec(e.field_in("spec"), e.reason))?;
        spec.validate()?;
        Ok(spec)
    }

    /// The images as a training job's data would name them.
    pub fn data(&self) -> DataSpec {
        DataSpec {
            features: None,
            images: Some(self.images.clone()),
            labels: self.labels.clone(),
            weights: Some(self.weights.clone()),
            input_size: Some(self.input_size),
            cut: Some(self.cut),
            forward: None,
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`ProtocolError::BadSpec`] naming the field.
    pub fn validate(&self) -> Result<()> {
        self.data().validate("spec")?;
        relative_path("spec.out", &self.out)?;
        let split_ok = (1..=32).contains(&self.split.len())
            && self.split.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if !split_ok {
            return Err(ProtocolError::spec(
                "spec.split",
                format!("{:?} must be 1 to 32 of A-Z a-z 0-9 _ -", self.split),
            ));
        }
        if self.shard_images == 0 {
            return Err(ProtocolError::spec("spec.shard_images", "must be positive"));
        }
        if self.lease_ms == 0 {
            return Err(ProtocolError::spec("spec.lease_ms", "must be positive"));
        }
        if !(1..=LAMBDA_MAX_MS).contains(&self.time_limit_ms) {
            return Err(ProtocolError::spec(
                "spec.time_limit_ms",
                format!("{} is outside 1..={LAMBDA_MAX_MS}", self.time_limit_ms),
            ));
        }
        if self.safety_ms >= self.time_limit_ms {
            return Err(ProtocolError::spec("spec.safety_ms", "must be smaller than time_limit_ms"));
        }
        Ok(())
    }
}

/// The shard count for `images` images on `workers` workers:
/// `max(4·workers, ⌈images / shard_images⌉)`, at most one shard per image.
pub fn shard_count(workers: usize, images: usize, shard_images: usize) -> usize {
    let by_size = images.div_ceil(shard_images.max(1));
    by_size.max(workers.saturating_mul(SHARDS_PER_WORKER)).min(images).max(1)
}

/// An extraction job as start resolved it: `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractConfig {
    /// [`EXTRACT_FORMAT`].
    pub format: String,
    pub job: String,
    pub workers: usize,
    pub spec: ExtractSpec,
    /// Images in the split.
    pub images: usize,
    /// Feature length.
    pub dim: usize,
    /// Input normalisation of the weights (recorded in the cache's note).
    pub preset: Preset,
    /// Shards ([`shard_count`]).
    pub shards: usize,
    /// What runs once the cache is merged, when the extraction is a phase of
    /// a training job on images ([`crate::pipeline`]); its cache folder is
    /// then keyed by content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<Pipeline>,
}

impl ExtractConfig {
    /// Checks a config read back from a file.
    ///
    /// # Errors
    /// [`ProtocolError::BadSpec`] naming the field.
    pub fn validate(&self) -> Result<()> {
        self.spec.validate()?;
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return Err(ProtocolError::spec("workers", format!("{} is outside 1..={MAX_WORKERS}", self.workers)));
        }
        if self.images == 0 || self.dim == 0 {
            return Err(ProtocolError::spec("images/dim", "must be positive"));
        }
        let s = shard_count(self.workers, self.images, self.spec.shard_images);
        if self.shards != s {
            return Err(ProtocolError::spec(
                "shards",
                format!("{} disagrees with the spec and data ({s})", self.shards),
            ));
        }
        if let Some(p) = &self.then {
            p.validate()?;
        }
        Ok(())
    }

    /// Rows `[a, b)` of shard `s`.
    pub fn rows(&self, s: usize) -> (usize, usize) {
        shard_rows(self.images, s, self.shards)
    }

    /// The worker whose queue shard `s` is in.
    pub fn owner(&self, s: usize) -> usize {
        s % self.workers
    }

    /// The cache folder.
    pub fn out(&self, root: &Path) -> PathBuf {
        root.join(&self.spec.out)
    }

    /// Where shard `s` is published.
    pub fn shard(&self, root: &Path, s: usize) -> PathBuf {
        shard_path(&self.out(root), &self.spec.split, s, self.shards)
    }

    /// The merged features.
    pub fn merged(&self, root: &Path) -> PathBuf {
        self.out(root).join(format!("{}_features.npy", self.spec.split))
    }
}

/// Events of an extraction job.
#[derive(Clone, Debug, PartialEq)]
pub enum ExtractEvent {
    /// `{"extract": "start", "workers": N, "spec": {...}}`.
    Start { job: JobId, workers: usize, spec: ExtractSpec },
    /// `{"extract": "worker", "workerno": i, "workers": N, "continuation": c}`.
    Worker { job: JobId, workers: usize, workerno: usize, continuation: u64 },
    /// `{"extract": "merge"}`.
    Merge { job: JobId },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExtractEvent {
    extract: Value,
    job: Option<String>,
    workers: Option<u64>,
    workerno: Option<u64>,
    continuation: Option<u64>,
    spec: Option<Value>,
}

impl ExtractEvent {
    /// Parses an event whose payload has an `extract` field.
    ///
    /// # Errors
    /// [`ProtocolError::BadEvent`] naming the field (unknown fields, wrong
    /// types, fields of another kind, `workerno >= workers`, a bad job id);
    /// [`ProtocolError::BadSpec`] naming the spec's field.
    pub fn parse(payload: &Value) -> Result<Self> {
        let raw: RawExtractEvent = crate::json::from_value(payload)
            .map_err(|e| ProtocolError::event(e.field.as_deref().unwrap_or("event"), e.reason))?;
        let kind = match raw.extract.as_str() {
            Some(k @ ("start" | "worker" | "merge")) => k,
            _ => {
                return Err(ProtocolError::event(
                    "extract",
                    format!("{}: expected \"start\", \"worker\" or \"merge\"", raw.extract),
                ))
            }
        };
        let job = JobId::new(raw.job.as_deref().unwrap_or(crate::event::DEFAULT_JOB))?;
        let only = |allowed: &[&str]| -> Result<()> {
            let present = [
                ("workers", raw.workers.is_some()),
                ("workerno", raw.workerno.is_some()),
                ("continuation", raw.continuation.is_some()),
                ("spec", raw.spec.is_some()),
            ];
            match present.iter().find(|(n, on)| *on && !allowed.contains(n)) {
                Some((n, _)) => Err(ProtocolError::event(*n, format!("does not belong in an extract {kind} event"))),
                None => Ok(()),
            }
        };
        let workers = || -> Result<usize> {
            let w = raw
                .workers
                .ok_or_else(|| ProtocolError::event("workers", format!("required by an extract {kind} event")))?;
            if w == 0 || w > MAX_WORKERS as u64 {
                return Err(ProtocolError::event("workers", format!("{w} is outside 1..={MAX_WORKERS}")));
            }
            Ok(w as usize)
        };
        match kind {
            "start" => {
                only(&["workers", "spec"])?;
                let spec = raw
                    .spec
                    .as_ref()
                    .ok_or_else(|| ProtocolError::event("spec", "required by an extract start event"))?;
                if !spec.is_object() {
                    return Err(ProtocolError::event("spec", "must be a JSON object"));
                }
                Ok(ExtractEvent::Start { job, workers: workers()?, spec: ExtractSpec::from_json(spec)? })
            }
            "worker" => {
                only(&["workers", "workerno", "continuation"])?;
                let workers = workers()?;
                let w = raw
                    .workerno
                    .ok_or_else(|| ProtocolError::event("workerno", "required by an extract worker event"))?;
                if w >= workers as u64 {
                    return Err(ProtocolError::event("workerno", format!("{w} must be < workers ({workers})")));
                }
                Ok(ExtractEvent::Worker {
                    job,
                    workers,
                    workerno: w as usize,
                    continuation: raw.continuation.unwrap_or(0),
                })
            }
            _ => {
                only(&[])?;
                Ok(ExtractEvent::Merge { job })
            }
        }
    }

    /// The JSON payload; [`parse`](Self::parse) of it gives back an equal event.
    pub fn to_json(&self) -> Value {
        match self {
            ExtractEvent::Start { job, workers, spec } => json!({
                "extract": "start", "workers": workers, "job": job.as_str(),
                "spec": serde_json::to_value(spec).expect("serialisable"),
            }),
            ExtractEvent::Worker { job, workers, workerno, continuation } => json!({
                "extract": "worker", "workerno": workerno, "workers": workers, "job": job.as_str(),
                "continuation": continuation,
            }),
            ExtractEvent::Merge { job } => json!({"extract": "merge", "job": job.as_str()}),
        }
    }

    /// The job the event is about.
    pub fn job(&self) -> &JobId {
        match self {
            ExtractEvent::Start { job, .. } | ExtractEvent::Worker { job, .. } | ExtractEvent::Merge { job } => job,
        }
    }

    /// A short name for logs.
    pub fn describe(&self) -> String {
        match self {
            ExtractEvent::Start { job, workers, .. } => format!("{job}: extract start {workers} workers"),
            ExtractEvent::Worker { job, workers, workerno, continuation } => {
                format!("{job}: extract worker {workerno}/{workers} (cont {continuation})")
            }
            ExtractEvent::Merge { job } => format!("{job}: extract merge"),
        }
    }
}

// ----- paths inside the job folder -----

fn shards_dir(jd: &JobDir) -> PathBuf {
    jd.dir.join("shards")
}
fn claim_path(jd: &JobDir, s: usize, seq: u64) -> PathBuf {
    shards_dir(jd).join(format!("{s:06}.claim-{seq:04}"))
}
fn part_path(jd: &JobDir, s: usize, seq: u64) -> PathBuf {
    shards_dir(jd).join(format!("{s:06}.part-{seq:04}"))
}
fn fanout_path(jd: &JobDir) -> PathBuf {
    jd.dir.join("fanout")
}
fn merge_trigger(jd: &JobDir) -> PathBuf {
    jd.dir.join("merge-trigger")
}
fn merge_invoked(jd: &JobDir) -> PathBuf {
    jd.dir.join("merge-invoked")
}
fn merge_lock(jd: &JobDir) -> PathBuf {
    jd.dir.join("merge.lock")
}

/// Whether `job` under `root` is an extraction job (its `config.json` says so).
pub fn is_extract_job(root: &Path, job: &JobId) -> bool {
    #[derive(Deserialize)]
    struct Format {
        format: String,
    }
    let path = JobDir::new(root, job).config();
    std::fs::read(&path)
        .ok()
        .and_then(|t| serde_json::from_slice::<Format>(&t).ok())
        .is_some_and(|f| f.format == EXTRACT_FORMAT)
}

/// Reads and checks an extraction job's `config.json`.
///
/// # Errors
/// [`ProtocolError::BadJob`] naming the file if the job does not exist or
/// the config is unreadable, malformed, of another format or job.
pub fn read_config(jd: &JobDir) -> Result<ExtractConfig> {
    let path = jd.config();
    if !jd.exists() {
        return Err(ProtocolError::job(&jd.dir, format!("no such job {:?}", jd.job.as_str())));
    }
    let cfg: ExtractConfig = crate::layout::read_json(&path)?;
    if cfg.format != EXTRACT_FORMAT {
        return Err(ProtocolError::job(&path, format!("format {:?}, expected {EXTRACT_FORMAT:?}", cfg.format)));
    }
    if cfg.job != jd.job.as_str() {
        return Err(ProtocolError::job(&path, format!("belongs to job {:?}", cfg.job)));
    }
    cfg.validate().map_err(|e| ProtocolError::job(&path, e.to_string()))?;
    Ok(cfg)
}

/// The opened inputs: images with their labels, and the network.
struct Inputs {
    dataset: ImageDataset,
    vgg: Vgg19,
}

/// Opens the spec's images, labels and weights under `root` (every path
/// resolved and kept inside the root, as a training job's data are).
fn open_inputs(root: &Path, spec: &ExtractSpec) -> Result<Inputs> {
    let paths = crate::services::DataPaths::new(root, &spec.data())?;
    let resolved = |field| paths.resolve(field).map(|p| p.expect("named in the spec"));
    let (images, labels, weights) = (resolved("images")?, resolved("labels")?, resolved("weights")?);
    let dataset = ImageDataset::open(&images, &labels)?;
    let vgg = Vgg19::open(&weights, spec.input_size, spec.cut)?;
    Ok(Inputs { dataset, vgg })
}

/// The cache folder, refused if its nearest existing ancestor resolves outside the root.
fn out_inside(root: &Path, spec: &ExtractSpec) -> Result<PathBuf> {
    let joined = root.join(relative_path("spec.out", &spec.out)?);
    if let Some(existing) = joined.ancestors().find(|a| a.exists()) {
        resolve_inside(root, "spec.out", &spec.out, existing)?;
    }
    Ok(joined)
}

/// Runs an extraction event.
///
/// # Errors
/// As the roles: bad events and specs before anything is written, job and I/O errors after.
pub async fn handle<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    event: ExtractEvent,
    inv: &Invocation,
) -> Result<Outcome> {
    match event {
        ExtractEvent::Start { job, workers, spec } => start_with(svc, job, workers, spec, None).await,
        ExtractEvent::Worker { job, workers, workerno, continuation } => {
            worker(svc, &job, workers, workerno, continuation, inv).await
        }
        ExtractEvent::Merge { job } => merge(svc, &job).await,
    }
}

fn worker_event(cfg: &ExtractConfig, job: &JobId, w: usize, continuation: u64) -> Event {
    Event::Extract(ExtractEvent::Worker { job: job.clone(), workers: cfg.workers, workerno: w, continuation })
}

/// Starts extraction job `job` of `spec` on `workers` workers, followed by
/// `then` (a pipeline's rest) once merged. Validates everything first.
pub(crate) async fn start_with<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    job: JobId,
    workers: usize,
    spec: ExtractSpec,
    then: Option<Pipeline>,
) -> Result<Outcome> {
    spec.validate()?;
    let out = out_inside(&svc.root, &spec)?;
    let inputs = blocking(|| open_inputs(&svc.root, &spec))?;
    let images = inputs.dataset.len();
    if images == 0 {
        return Err(ProtocolError::spec("spec.images", "holds no image"));
    }
    let cfg = ExtractConfig {
        format: EXTRACT_FORMAT.into(),
        job: job.to_string(),
        workers,
        images,
        dim: inputs.vgg.feature_dim(),
        preset: inputs.vgg.preset(),
        shards: shard_count(workers, images, spec.shard_images),
        spec,
        then,
    };
    cfg.validate()?;
    let jd = JobDir::new(&svc.root, &job);
    if !jd.exists() {
        // A keyed folder's shards and cache are of the same content, whoever wrote them.
        if cfg.then.is_none() {
            refuse_existing_cache(&out, &cfg.spec.split)?;
        }
        std::fs::create_dir_all(&out).map_err(|e| ProtocolError::io(&out, e))?;
        create_job(svc, &jd, &cfg)?;
    }
    if read_config(&jd)? != cfg {
        return Err(ProtocolError::JobExists { job: job.to_string(), path: jd.dir.clone() });
    }
    let duplicate = svc.progress.load(&job).await?.extract.is_some();
    if !duplicate {
        let record = ExtractRecord {
            job: job.to_string(),
            status: JobStatus::Running,
            workers,
            images,
            shards: cfg.shards,
            dim: cfg.dim,
            started_ms: svc.clock.now_ms(),
            finished_ms: None,
            cache: None,
        };
        svc.progress.put_extract(&job, &record).await?;
    }
    svc.probe.at("extract.started", 0)?;
    if !present(&fanout_path(&jd)) {
        for w in 0..workers {
            svc.invoker.invoke(&worker_event(&cfg, &job, w, 0)).await?;
        }
        claim(&fanout_path(&jd), "start")?;
    }
    Ok(Outcome::Started { job, duplicate })
}

/// A new job may not write into a cache folder that holds this split's
/// cache or shards already (of another job or `lml extract-features`).
fn refuse_existing_cache(out: &Path, split: &str) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(out) else { return Ok(()) };
    let (merged, shard) = (format!("{split}_features.npy"), format!("{split}.shard-"));
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == merged || name.starts_with(&shard) {
            return Err(ProtocolError::spec(
                "spec.out",
                format!("{} already holds {name}: delete it or choose another folder", out.display()),
            ));
        }
    }
    Ok(())
}

/// Creates the job folder whole ([`JobDir::create_whole`]): config, progress and shard folders.
fn create_job<I, P, C: Clock>(svc: &Services<I, P, C>, jd: &JobDir, cfg: &ExtractConfig) -> Result<()> {
    jd.create_whole(|staged| {
        for d in [staged.dir.join("progress"), staged.dir.join("shards")] {
            std::fs::create_dir_all(&d).map_err(|e| ProtocolError::io(&d, e))?;
        }
        write_json(&staged.dir.join("config.json"), cfg)?;
        svc.probe.at("extract.staged", 0)
    })
}

/// A claim of a shard: who, and when (by the services' clock).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ShardClaim {
    worker: usize,
    ms: u64,
}

/// The newest claim of shard `s`: its number and contents. Claims are
/// numbered 1, 2, … and created in order, so probing upward finds it.
fn latest_claim(jd: &JobDir, s: usize) -> Result<Option<(u64, ShardClaim)>> {
    let mut seq = 0;
    while present(&claim_path(jd, s, seq + 1)) {
        seq += 1;
    }
    if seq == 0 {
        return Ok(None);
    }
    let path = claim_path(jd, s, seq);
    let c = crate::layout::read_json(&path)?;
    Ok(Some((seq, c)))
}

/// Adds a claim of shard `s` by worker `w` at `now`.
fn claim_shard(jd: &JobDir, s: usize, w: usize, now: u64) -> Result<()> {
    let text = serde_json::to_string(&ShardClaim { worker: w, ms: now }).expect("serialisable");
    let mut seq = latest_claim(jd, s)?.map_or(0, |(seq, _)| seq) + 1;
    // Another worker's claim may take the number first: take the next.
    while !claim(&claim_path(jd, s, seq), &text)?.is_mine(&text) {
        seq += 1;
    }
    Ok(())
}

/// The next shard worker `w` takes, and whether it is another's: its own
/// unpublished shards in order; then a shard whose newest claim is its own
/// (it was taken before this continuation); then one nobody has claimed,
/// from the end of the queues; then one whose newest claim is older than
/// the lease.
fn next_shard(root: &Path, jd: &JobDir, cfg: &ExtractConfig, w: usize, now: u64) -> Result<Option<(usize, bool)>> {
    let published = |s| present(&cfg.shard(root, s));
    if let Some(s) = (w..cfg.shards).step_by(cfg.workers).find(|&s| !published(s)) {
        return Ok(Some((s, false)));
    }
    let (mut unclaimed, mut stale) = (None, None);
    for s in (0..cfg.shards).rev().filter(|&s| cfg.owner(s) != w && !published(s)) {
        match latest_claim(jd, s)? {
            Some((_, c)) if c.worker == w => return Ok(Some((s, true))),
            None => {
                unclaimed.get_or_insert(s);
            }
            Some((_, c)) if now.saturating_sub(c.ms) >= cfg.spec.lease_ms => {
                stale.get_or_insert(s);
            }
            Some(_) => {}
        }
    }
    Ok(unclaimed.or(stale).map(|s| (s, true)))
}

/// A continuation save's metadata (`meta.json` beside `rows.npy`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartMeta {
    /// Rows `[lo, hi)` of the split.
    lo: usize,
    hi: usize,
    /// Forward time spent on them (ms).
    compute_ms: u64,
    worker: usize,
}

/// A continuation save read back.
struct Part {
    meta: PartMeta,
    rows: MappedNpy,
}

/// Reads shard `s`'s saves in order, each checked to continue the one before.
fn read_parts(jd: &JobDir, cfg: &ExtractConfig, s: usize) -> Result<Vec<Part>> {
    let (a, b) = cfg.rows(s);
    let mut parts: Vec<Part> = Vec::new();
    while present(&part_path(jd, s, parts.len() as u64 + 1)) {
        let dir = part_path(jd, s, parts.len() as u64 + 1);
        let meta: PartMeta = crate::layout::read_json(&dir.join("meta.json"))?;
        let lo = parts.last().map_or(a, |p| p.meta.hi);
        if meta.lo != lo || meta.hi <= lo || meta.hi > b {
            return Err(ProtocolError::job(
                &dir,
                format!("rows {}..{} do not continue shard {s} at row {lo}", meta.lo, meta.hi),
            ));
        }
        let rows = MappedNpy::open(dir.join("rows.npy"))?;
        let h = rows.header()?;
        if h.descr != cfg.spec.dtype.descr() || h.shape != [meta.hi - meta.lo, cfg.dim] {
            return Err(ProtocolError::job(&dir, format!("rows.npy is {} {:?}", h.descr, h.shape)));
        }
        parts.push(Part { meta, rows });
    }
    Ok(parts)
}

/// Publishes a continuation save at `path` (a directory) unless one is
/// there: written into a temp directory, every file fsynced, then renamed.
/// `true` if this call published it.
fn publish_part(path: &Path, dtype: Dtype, dim: usize, bytes: &[u8], meta: &PartMeta) -> Result<bool> {
    if present(path) {
        return Ok(false);
    }
    let guard = TempGuard::new(temp_beside(path));
    let tmp = guard.path();
    std::fs::create_dir(tmp).map_err(|e| ProtocolError::io(tmp, e))?;
    publish_atomic(&tmp.join("rows.npy"), |w| {
        write_npy_header(w, dtype.descr(), &[meta.hi - meta.lo, dim])?;
        std::io::Write::write_all(w, bytes)
    })?;
    write_json(&tmp.join("meta.json"), meta)?;
    crate::layout::faults::before_publish(path).map_err(|e| ProtocolError::io(path, e))?;
    std::fs::File::open(tmp).and_then(|d| d.sync_all()).map_err(|e| ProtocolError::io(tmp, e))?;
    match std::fs::rename(tmp, path) {
        Ok(()) => Ok(true),
        // Lost a race: rename onto a non-empty directory fails.
        Err(_) if path.is_dir() => Ok(false),
        Err(e) => Err(ProtocolError::io(path, e)),
    }
}

/// The time budget of one invocation: at least one batch runs, then a batch
/// starts only if the slowest so far would end `safety_ms` before the deadline.
struct Budget<'a> {
    clock: &'a dyn Clock,
    deadline_ms: u64,
    safety_ms: u64,
    /// Batches run in this invocation, and the slowest (ms); atomics only
    /// because the budget is shared into the compute pool.
    batches: AtomicU64,
    slowest: AtomicU64,
}

impl Budget<'_> {
    fn allows_another(&self) -> bool {
        self.batches.load(Relaxed) == 0
            || self.clock.now_ms().saturating_add(self.slowest.load(Relaxed)).saturating_add(self.safety_ms)
                <= self.deadline_ms
    }

    fn ran(&self, took_ms: u64) {
        self.slowest.fetch_max(took_ms, Relaxed);
        self.batches.fetch_add(1, Relaxed);
    }
}

/// How work on a shard ended.
enum ShardEnd {
    /// Every row is computed: the parts and the rest, to publish.
    Done { parts: Vec<Part>, rest: Vec<u8>, compute_ms: u64 },
    /// Out of time: rows saved (or none to save); invoke the continuation.
    Continue,
    /// Another copy published the same save first: it carries on.
    Yielded,
}

/// Computes shard `s` from its latest save on, within `budget`.
fn run_shard(
    jd: &JobDir,
    cfg: &ExtractConfig,
    s: usize,
    w: usize,
    inputs: &Inputs,
    budget: &Budget<'_>,
    probe: &dyn Probe,
) -> Result<ShardEnd> {
    let (a, b) = cfg.rows(s);
    let parts = read_parts(jd, cfg, s)?;
    let from = parts.last().map_or(a, |p| p.meta.hi);
    let done_ms: u64 = parts.iter().map(|p| p.meta.compute_ms).sum();
    let mut rest = Vec::new();
    let (started, compute_ms) = (Cell::new(0u64), Cell::new(0u64));
    let mut failure = None;
    let path = part_path(jd, s, parts.len() as u64 + 1);
    let reached = extract_rows(
        &inputs.vgg,
        inputs.dataset.images(),
        (from, b),
        cfg.spec.dtype,
        &mut rest,
        &path,
        &mut |row| {
            // Between two batches of this shard: where a crash loses the rows in memory.
            if row > from {
                if let Err(e) = probe.at("extract.batch", s as u64) {
                    failure = Some(e);
                    return false;
                }
            }
            if !budget.allows_another() {
                return false;
            }
            started.set(budget.clock.now_ms());
            true
        },
        &mut |_| {
            let took = budget.clock.now_ms().saturating_sub(started.get());
            budget.ran(took);
            compute_ms.set(compute_ms.get() + took);
        },
    )?;
    if let Some(e) = failure {
        return Err(e);
    }
    if reached == b {
        return Ok(ShardEnd::Done { parts, rest, compute_ms: done_ms + compute_ms.get() });
    }
    if reached == from {
        return Ok(ShardEnd::Continue);
    }
    let meta = PartMeta { lo: from, hi: reached, compute_ms: compute_ms.get(), worker: w };
    if !publish_part(&path, cfg.spec.dtype, cfg.dim, &rest, &meta)? {
        return Ok(ShardEnd::Yielded);
    }
    probe.at("extract.saved", s as u64)?;
    Ok(ShardEnd::Continue)
}

async fn worker<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    job: &JobId,
    workers: usize,
    w: usize,
    continuation: u64,
    inv: &Invocation,
) -> Result<Outcome> {
    let jd = JobDir::new(&svc.root, job);
    let cfg = read_config(&jd)?;
    if workers != cfg.workers {
        return Err(ProtocolError::event("workers", format!("{workers}, but job {job} has {}", cfg.workers)));
    }
    if present(&jd.final_json()) {
        return Ok(Outcome::Skipped("the extraction has ended".into()));
    }
    let budget = Budget {
        clock: &svc.clock,
        deadline_ms: inv.effective_deadline(svc.clock.now_ms(), cfg.spec.time_limit_ms),
        safety_ms: cfg.spec.safety_ms,
        batches: AtomicU64::new(0),
        slowest: AtomicU64::new(0),
    };
    svc.probe.at("extract.begin", w as u64)?;
    let inputs = blocking(|| open_inputs(&svc.root, &cfg.spec))?;
    if inputs.dataset.len() != cfg.images || inputs.vgg.feature_dim() != cfg.dim {
        return Err(ProtocolError::job(
            jd.config(),
            format!(
                "the job has {} images of {} features; the data now give {}",
                cfg.images,
                cfg.dim,
                inputs.dataset.len()
            ),
        ));
    }
    let pool = svc.pool()?;
    let mut shards = Vec::new();
    while let Some((s, stolen)) = next_shard(&svc.root, &jd, &cfg, w, svc.clock.now_ms())? {
        if !budget.allows_another() {
            svc.invoker.invoke(&worker_event(&cfg, job, w, continuation + 1)).await?;
            return Ok(Outcome::Continued { round: s as u64, workerno: w, continuation: continuation + 1 });
        }
        claim_shard(&jd, s, w, svc.clock.now_ms())?;
        let end = blocking(|| pool.install(|| run_shard(&jd, &cfg, s, w, &inputs, &budget, &*svc.probe)))?;
        match end {
            ShardEnd::Continue => {
                svc.invoker.invoke(&worker_event(&cfg, job, w, continuation + 1)).await?;
                return Ok(Outcome::Continued { round: s as u64, workerno: w, continuation: continuation + 1 });
            }
            ShardEnd::Yielded => {
                return Ok(Outcome::Skipped(format!("shard {s}: another copy of worker {w} carries on")))
            }
            ShardEnd::Done { parts, rest, compute_ms } => {
                let (a, b) = cfg.rows(s);
                // Recorded before the shard is visible: once it is, the job
                // may be merged and a retry of this event would stop early.
                let record = ShardRecord {
                    shard: s,
                    images: b - a,
                    workerno: w,
                    stolen,
                    compute_ms,
                    parts: parts.len() as u64,
                    finished_ms: svc.clock.now_ms(),
                };
                svc.progress.put_shard(job, &record).await?;
                svc.probe.at("extract.recorded", s as u64)?;
                let path = cfg.shard(&svc.root, s);
                if !present(&path) {
                    let mut chunks: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
                    for p in &parts {
                        chunks.push(p.rows.data_bytes()?);
                    }
                    chunks.push(&rest);
                    blocking(|| publish_shard(&path, cfg.spec.dtype, b - a, cfg.dim, &chunks))?;
                }
                svc.probe.at("extract.published", s as u64)?;
                shards.push(s);
            }
        }
    }
    let merge = trigger_merge(svc, &jd, &cfg, w).await?;
    Ok(Outcome::Extracted { workerno: w, shards, merge })
}

/// Invokes the merge once every shard is published, exactly once: the
/// atomic create of `merge-trigger` decides, the progress store's
/// conditional put is a second guard. The owner names the worker, so a
/// retry of its event after a crash between claiming and invoking still
/// sends the merge. Returns whether this invocation sent it.
async fn trigger_merge<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    jd: &JobDir,
    cfg: &ExtractConfig,
    w: usize,
) -> Result<bool> {
    if !(0..cfg.shards).all(|s| present(&cfg.shard(&svc.root, s))) {
        return Ok(false);
    }
    let me = format!("worker {w}");
    if !claim(&merge_trigger(jd), &me)?.is_mine(&me) {
        return Ok(false);
    }
    svc.probe.at("extract.trigger", 0)?;
    if present(&merge_invoked(jd)) || !svc.progress.claim(&jd.job, "merge", &me).await?.is_mine(&me) {
        return Ok(false);
    }
    svc.invoker.invoke(&Event::Extract(ExtractEvent::Merge { job: jd.job.clone() })).await?;
    claim(&merge_invoked(jd), &me)?;
    Ok(true)
}

/// What `final.json` of an extraction job says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractSummary {
    /// The merged features, relative to the storage root.
    pub cache: String,
    pub images: usize,
    pub dim: usize,
    pub shards: usize,
    pub finished_ms: u64,
}

async fn merge<I: Invoker, P: ProgressStore, C: Clock>(svc: &Services<I, P, C>, job: &JobId) -> Result<Outcome> {
    let jd = JobDir::new(&svc.root, job);
    let cfg = read_config(&jd)?;
    if let Some(missing) = (0..cfg.shards).find(|&s| !present(&cfg.shard(&svc.root, s))) {
        return Err(ProtocolError::job(cfg.shard(&svc.root, missing), "not published: nothing to merge yet"));
    }
    let summary = blocking(|| {
        crate::layout::with_lock(&merge_lock(&jd), || {
            if !present(&jd.final_json()) {
                svc.probe.at("merge.begin", 0)?;
                let inputs_labels = open_labels(&svc.root, &cfg.spec)?;
                let note = CacheNote {
                    format: CACHE_FORMAT.into(),
                    split: cfg.spec.split.clone(),
                    images: cfg.images,
                    dim: cfg.dim,
                    dtype: cfg.spec.dtype.descr().into(),
                    cut: cfg.spec.cut,
                    input_size: cfg.spec.input_size,
                    preset: cfg.preset,
                    weights: PathBuf::from(&cfg.spec.weights),
                    shards: cfg.shards,
                    image_size: Some(image_size(&svc.root, &cfg.spec)?),
                };
                let out = cfg.out(&svc.root);
                // The class list first: the note, which the merge writes
                // last, says the cache is complete.
                lml_kernel::features::carry_class_list(&inputs_labels.1, &out)?;
                lml_kernel::features::merge(&out, &cfg.spec.split, cfg.shards, &inputs_labels.0, &note)?
                    .ok_or_else(|| ProtocolError::job(&out, "a shard went missing while merging"))?;
                svc.probe.at("merge.merged", 0)?;
                let cache = Path::new(&cfg.spec.out).join(format!("{}_features.npy", cfg.spec.split));
                let summary = ExtractSummary {
                    cache: cache.to_string_lossy().into_owned(),
                    images: cfg.images,
                    dim: cfg.dim,
                    shards: cfg.shards,
                    finished_ms: svc.clock.now_ms(),
                };
                claim(&jd.final_json(), &serde_json::to_string_pretty(&summary).expect("serialisable"))?;
            }
            crate::layout::read_json::<ExtractSummary>(&jd.final_json())
        })
    })?;
    finish(svc, &jd, &cfg, &summary).await?;
    if let Some(p) = &cfg.then {
        Box::pin(crate::pipeline::then(svc, p)).await?;
    }
    Ok(Outcome::Merged { cache: summary.cache })
}

/// `[H, W]` of the spec's images, from their `.npy` header (recorded in the cache's note).
fn image_size(root: &Path, spec: &ExtractSpec) -> Result<[usize; 2]> {
    let paths = crate::services::DataPaths::new(root, &spec.data())?;
    let images = paths.resolve("images")?.expect("named in the spec");
    let shape = lml_kernel::npy::MappedNpy::open(&images)?.header()?.shape;
    match shape[..] {
        [_, h, w, 3] => Ok([h, w]),
        _ => Err(ProtocolError::job(&images, format!("images of shape {shape:?}, expected [N, H, W, 3]"))),
    }
}

/// The labels file and the images' folder, resolved under the root.
fn open_labels(root: &Path, spec: &ExtractSpec) -> Result<(PathBuf, PathBuf)> {
    let paths = crate::services::DataPaths::new(root, &spec.data())?;
    let labels = paths.resolve("labels")?.expect("named in the spec");
    let images = paths.resolve("images")?.expect("named in the spec");
    Ok((labels, images.parent().map(Path::to_path_buf).unwrap_or_default()))
}

/// Records the ended job (idempotent) and drops the continuation saves and claims.
async fn finish<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    jd: &JobDir,
    cfg: &ExtractConfig,
    summary: &ExtractSummary,
) -> Result<()> {
    let p = svc.progress.load(&jd.job).await?;
    let mut record = p.extract.unwrap_or(ExtractRecord {
        job: jd.job.to_string(),
        status: JobStatus::Running,
        workers: cfg.workers,
        images: cfg.images,
        shards: cfg.shards,
        dim: cfg.dim,
        started_ms: 0,
        finished_ms: None,
        cache: None,
    });
    record.status = JobStatus::Finished;
    record.finished_ms = Some(summary.finished_ms);
    record.cache = Some(summary.cache.clone());
    svc.progress.put_extract(&jd.job, &record).await?;
    let _ = std::fs::remove_dir_all(shards_dir(jd));
    Ok(())
}

/// Restarts an extraction job whose invocations all died: invokes the
/// owners of the shards not yet published, or the merge if all are.
///
/// # Errors
/// [`ProtocolError::BadJob`] if the job is missing or malformed; invoke errors.
pub async fn resume<I: Invoker, P: ProgressStore, C: Clock>(svc: &Services<I, P, C>, job: &JobId) -> Result<Outcome> {
    let jd = JobDir::new(&svc.root, job);
    let cfg = read_config(&jd)?;
    if present(&jd.final_json()) {
        let summary: ExtractSummary = crate::layout::read_json(&jd.final_json())?;
        finish(svc, &jd, &cfg, &summary).await?;
        if let Some(p) = &cfg.then {
            Box::pin(crate::pipeline::then(svc, p)).await?;
            return Ok(Outcome::Resumed { round: 0, what: "the pipeline's next phase" });
        }
        return Ok(Outcome::Skipped("the extraction has ended".into()));
    }
    let owners: std::collections::BTreeSet<usize> =
        (0..cfg.shards).filter(|&s| !present(&cfg.shard(&svc.root, s))).map(|s| cfg.owner(s)).collect();
    if owners.is_empty() {
        svc.invoker.invoke(&Event::Extract(ExtractEvent::Merge { job: job.clone() })).await?;
        return Ok(Outcome::Resumed { round: 0, what: "merge" });
    }
    for &w in &owners {
        svc.invoker.invoke(&worker_event(&cfg, job, w, 0)).await?;
    }
    Ok(Outcome::Resumed { round: 0, what: "extract workers" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Value {
        json!({"images": "x.npy", "labels": "y.npy", "weights": "vgg", "out": "cache"})
    }

    #[test]
    fn events_round_trip_through_json() {
        let job = JobId::new("ex").unwrap();
        let events = [
            ExtractEvent::Start { job: job.clone(), workers: 3, spec: ExtractSpec::from_json(&spec()).unwrap() },
            ExtractEvent::Worker { job: job.clone(), workers: 4, workerno: 3, continuation: 2 },
            ExtractEvent::Merge { job },
        ];
        for e in events {
            assert_eq!(ExtractEvent::parse(&e.to_json()).unwrap(), e, "{}", e.to_json());
            assert_eq!(Event::parse(&e.to_json()).unwrap(), Event::Extract(e.clone()));
        }
    }

    #[test]
    fn bad_events_name_the_field() {
        let cases = [
            (json!({"extract": "start", "workers": 2}), "spec"),
            (json!({"extract": "start", "workers": 0, "spec": spec()}), "workers"),
            (json!({"extract": "start", "workers": 2, "spec": spec(), "round": 1}), "round"),
            (json!({"extract": "worker", "workers": 2, "workerno": 2}), "workerno"),
            (json!({"extract": "worker", "workers": 2}), "workerno"),
            (json!({"extract": "worker", "workers": 2, "workerno": 0, "spec": {}}), "spec"),
            (json!({"extract": "merge", "workers": 2}), "workers"),
            (json!({"extract": "merge", "job": "../x"}), "job"),
            (json!({"extract": true}), "extract"),
            (json!({"extract": "train"}), "extract"),
            (json!({"extract": "merge", "start": true}), "start"),
        ];
        for (payload, field) in cases {
            let e = Event::parse(&payload).unwrap_err().to_string();
            assert!(e.contains(field), "{payload}: {e}");
        }
        let mut s = spec();
        s["shard_images"] = json!(0);
        let e = Event::parse(&json!({"extract": "start", "workers": 1, "spec": s})).unwrap_err().to_string();
        assert!(e.contains("spec.shard_images"), "{e}");
        let mut s = spec();
        s["bogus"] = json!(1);
        let e = Event::parse(&json!({"extract": "start", "workers": 1, "spec": s})).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let mut s = spec();
        s["out"] = json!("../elsewhere");
        let e = Event::parse(&json!({"extract": "start", "workers": 1, "spec": s})).unwrap_err().to_string();
        assert!(e.contains("spec.out"), "{e}");
    }

    #[test]
    fn shards_are_smaller_than_a_workers_share() {
        assert_eq!(shard_count(1, 100, 256), 4);
        assert_eq!(shard_count(5, 100, 256), 20);
        assert_eq!(shard_count(2, 1000, 10), 100);
        assert_eq!(shard_count(100, 7, 256), 7, "at most one shard per image");
        assert_eq!(shard_count(3, 1, 256), 1);
        assert_eq!(shard_count(MAX_WORKERS, usize::MAX, 1), usize::MAX);
    }
}
