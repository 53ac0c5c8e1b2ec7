//! One job from images to a trained head: a training start whose data (or
//! held-out data) are images with weights extracts their features first, on
//! the job's workers, with the extraction machinery of [`crate::extract`],
//! then trains on the cache. One start event does it all:
//!
//! ```json
//! {"start": true, "workers": 16, "job": "cifar",
//!  "spec": {"data": {"images": "data/train_x.npy", "labels": "data/train_y.npy", "weights": "vgg19"}}}
//! ```
//!
//! `"forward": "every-step"` in a [`DataSpec`] keeps the seed's way instead
//! (the frozen VGG19 over every step's examples; [`crate::spec::Forward`]).
//!
//! ## The cache, keyed by content
//!
//! The features of a split are kept under the storage root in
//! `cache/<key>/` (`{split}_features.npy`, `{split}_y.npy`, the class list,
//! `{split}_features.json`), where `<key>` is the SHA-256 ([`cache_key`],
//! the `sha2` crate) over the bytes of the images, the labels and every file
//! of the weight folder (by name), and the input size, cut and storage type:
//! a later job on the same content, wherever its files are, reuses it
//! without extracting. Two jobs extracting the same content at once write
//! the same bytes (every file published by an atomic rename), so a keyed
//! folder may hold another job's shards: they are the same. A split is ready
//! once its note (`{split}_features.json`) is there: the merge writes it last.
//!
//! ## The phases
//!
//! 1. **start** checks everything before writing anything: the spec, the
//!    images and weights (they open), the labels and classes, the round
//!    sizes ([`JobConfig::resolve`], on the image count and feature length),
//!    and the sub-job ids. It rewrites the spec's images into their caches
//!    (the *resolved* spec). If every cache is ready it starts the training
//!    job on the resolved spec at once, as a start on cached features would.
//!    Otherwise it starts the extraction job `<job>.extract-train` (or
//!    `-test` for the held-out split) with the rest of the pipeline
//!    ([`Pipeline`]) in its `config.json`.
//! 2. The extraction's merge, once its cache is recorded, runs [`then`]:
//!    the next split's extraction, or the training job's start event with
//!    the resolved spec. Every step is idempotent (a start of an existing job
//!    with the same config invokes nothing new), so a retried merge or a
//!    duplicated event changes nothing.
//! 3. **resume** of the training job before its folder exists resumes the
//!    latest extraction sub-job; resuming an extraction that has ended runs
//!    [`then`] again, so a pipeline whose invocations all died between the
//!    phases goes on.

use std::io::Read;
use std::path::Path;

use lml_kernel::dataset::ImageDataset;
use lml_kernel::features::{CacheNote, Dtype};
use lml_kernel::Vgg19;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ProtocolError, Result};
use crate::event::{Event, JobId, StartEvent};
use crate::extract::ExtractSpec;
use crate::layout::{present, JobDir};
use crate::progress::ProgressStore;
use crate::roles::{blocking, Outcome};
use crate::services::{Clock, DataPaths, Invoker, Services};
use crate::spec::{resolve_classes, DataSpec, JobConfig, JobSpec};

/// The folder under the storage root that holds the keyed caches.
pub const CACHE_DIR: &str = "cache";

/// The version of the key's recipe: a change of recipe is a new key.
const KEY_FORMAT: &[u8] = b"lml-cache-key/1\0";

/// Storage type of a pipeline's caches.
pub const PIPELINE_DTYPE: Dtype = Dtype::F32;

/// The rest of a pipeline, kept in an extraction job's `config.json`: the
/// extractions still to run after it, then the training job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// The training job.
    pub job: String,
    pub workers: usize,
    /// The training spec, resolved: its data name the caches.
    pub spec: JobSpec,
    /// Extractions to run first, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rest: Vec<ExtractSpec>,
}

impl Pipeline {
    /// Checks the training spec and the extractions.
    ///
    /// # Errors
    /// [`ProtocolError::BadSpec`] naming the field.
    pub fn validate(&self) -> Result<()> {
        JobId::new(&self.job)?;
        self.spec.validate()?;
        self.rest.iter().try_for_each(ExtractSpec::validate)
    }
}

/// The extraction sub-job of `job` for `split` (`train` or `test`).
///
/// # Errors
/// [`ProtocolError::BadEvent`] naming `job` if the id would be too long.
pub fn sub_job(job: &JobId, split: &str) -> Result<JobId> {
    JobId::new(&format!("{job}.extract-{split}")).map_err(|_| {
        ProtocolError::event(
            "job",
            format!("{job:?} is too long for a job on images: its extraction job {job}.extract-{split} must fit 64 characters"),
        )
    })
}

/// The extraction sub-job of `job` to resume when its training job does not
/// exist yet: the latest one created (the held-out split's comes second).
pub fn phase_one(root: &Path, job: &JobId) -> Option<JobId> {
    if JobDir::new(root, job).exists() {
        return None;
    }
    ["test", "train"].iter().filter_map(|s| sub_job(job, s).ok()).find(|sub| crate::extract::is_extract_job(root, sub))
}

/// The content key of the features of `data` (images, labels, weights,
/// input size, cut) stored as `dtype`: the hex SHA-256 over the images' and
/// labels' bytes, each weight file's name and bytes (in name order), and the
/// settings. Every file is resolved inside the root first.
///
/// # Errors
/// [`ProtocolError::BadSpec`] for paths outside the root or data that is
/// not images; I/O errors naming the file.
pub fn cache_key(root: &Path, data: &DataSpec, dtype: Dtype) -> Result<String> {
    let paths = DataPaths::new(root, data)?;
    let named = |field| {
        paths.resolve(field)?.ok_or_else(|| ProtocolError::spec(format!("data.{field}"), "required for images"))
    };
    let mut h = Sha256::new();
    h.update(KEY_FORMAT);
    for field in ["images", "labels"] {
        hash_file(&mut h, field, &named(field)?)?;
    }
    let weights = named("weights")?;
    let mut files: Vec<_> = std::fs::read_dir(&weights)
        .map_err(|e| ProtocolError::io(&weights, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for f in &files {
        hash_file(&mut h, &f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), f)?;
    }
    let cut = serde_json::to_value(data.cut()).expect("serialisable");
    h.update(format!("input_size={};cut={};dtype={}", data.input_size(), cut, dtype.descr()).as_bytes());
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Feeds `tag`, the file's length and bytes to `h`.
fn hash_file(h: &mut Sha256, tag: &str, path: &Path) -> Result<()> {
    let io = |e| ProtocolError::io(path, e);
    let mut f = std::fs::File::open(path).map_err(io)?;
    h.update((tag.len() as u64).to_le_bytes());
    h.update(tag.as_bytes());
    h.update(f.metadata().map_err(io)?.len().to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

/// One split of a pipeline: what to extract, and the cache the training reads.
struct Step {
    extract: ExtractSpec,
    cached: DataSpec,
    images: usize,
    dim: usize,
}

/// The extraction of `data` (images) as split `split` into its keyed cache.
fn step(root: &Path, data: &DataSpec, split: &str, spec: &JobSpec) -> Result<Step> {
    let paths = DataPaths::new(root, data)?;
    let named = |field| paths.resolve(field).map(|p| p.expect("validated: images come with weights"));
    let dataset = ImageDataset::open(named("images")?, named("labels")?)?;
    let vgg = Vgg19::open(named("weights")?, data.input_size(), data.cut())?;
    let out = format!("{CACHE_DIR}/{}", cache_key(root, data, PIPELINE_DTYPE)?);
    let mut extract = ExtractSpec::with_defaults(
        data.images.clone().expect("images"),
        data.labels.clone(),
        data.weights.clone().expect("weights"),
        out.clone(),
    );
    extract.input_size = data.input_size();
    extract.cut = data.cut();
    extract.dtype = PIPELINE_DTYPE;
    extract.split = split.into();
    extract.time_limit_ms = spec.time_limit_ms;
    extract.safety_ms = spec.safety_ms;
    let cached = DataSpec::cached(format!("{out}/{split}_features.npy"), format!("{out}/{split}_y.npy"));
    Ok(Step { extract, cached, images: dataset.len(), dim: vgg.feature_dim() })
}

/// Whether the cache of `x` is complete: its note is there (written last)
/// and describes it.
///
/// # Errors
/// [`ProtocolError::BadJob`] naming the note if it describes other features.
fn ready(root: &Path, x: &ExtractSpec, images: Option<usize>) -> Result<bool> {
    let note_path = root.join(&x.out).join(format!("{}_features.json", x.split));
    if !present(&note_path) {
        return Ok(false);
    }
    let note: CacheNote = crate::layout::read_json(&note_path)?;
    let fits = note.cut == x.cut
        && note.input_size == x.input_size
        && note.dtype == x.dtype.descr()
        && images.is_none_or(|n| n == note.images);
    if !fits {
        return Err(ProtocolError::job(&note_path, "describes other features than its key: delete the folder"));
    }
    Ok(true)
}

/// Starts a training job whose data or held-out data extract first (see the
/// module's documentation).
///
/// # Errors
/// Everything a training start and an extraction start refuse, before
/// anything is written.
pub(crate) async fn start<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    ev: StartEvent,
) -> Result<Outcome> {
    let root = svc.root.clone();
    let mut resolved = ev.spec.clone();
    let mut steps = Vec::new();
    let mut sizes = Vec::new();
    for (split, data) in [("train", Some(&ev.spec.data)), ("test", ev.spec.eval.as_ref())] {
        let Some(data) = data else { continue };
        if data.extracts_first() {
            let s = blocking(|| step(&root, data, split, &ev.spec))?;
            sizes.push((s.images, s.dim));
            match split {
                "train" => resolved.data = s.cached.clone(),
                _ => resolved.eval = Some(s.cached.clone()),
            }
            steps.push(s);
        } else {
            let source = svc.source(data)?;
            sizes.push((source.len(), source.feature_dim()));
        }
    }
    let (examples, dim) = sizes[0];
    if let Some(&(_, eval_dim)) = sizes.get(1) {
        if eval_dim != dim {
            return Err(ProtocolError::spec(
                "eval",
                format!("{eval_dim} features per example, training data has {dim}"),
            ));
        }
    }
    // What the training start will check on the caches, checked now on the
    // images: the caches hold their labels and class list, byte for byte.
    let classes = resolve_classes(&root, &ev.spec)?;
    JobConfig::resolve(&ev.job, ev.workers, resolved.clone(), examples, dim, classes)?;
    for s in &steps {
        sub_job(&ev.job, &s.extract.split)?;
    }
    let mut pending = Vec::new();
    for s in steps {
        if !ready(&root, &s.extract, Some(s.images))? {
            pending.push(s.extract);
        }
    }
    let Some((first, rest)) = pending.split_first() else {
        return crate::roles::start(svc, StartEvent { job: ev.job, workers: ev.workers, spec: resolved }).await;
    };
    let then = Pipeline { job: ev.job.to_string(), workers: ev.workers, spec: resolved, rest: rest.to_vec() };
    let sub = sub_job(&ev.job, &first.split)?;
    let out = crate::extract::start_with(svc, sub, ev.workers, first.clone(), Some(then)).await?;
    let duplicate = matches!(out, Outcome::Started { duplicate: true, .. });
    Ok(Outcome::Started { job: ev.job, duplicate })
}

/// Runs the rest of a pipeline once an extraction has ended: the next
/// extraction whose cache is not ready, or the training job's start.
/// Idempotent: a start of a job that exists with the same config invokes nothing new.
///
/// # Errors
/// The extraction start's errors; invoke errors.
pub(crate) async fn then<I: Invoker, P: ProgressStore, C: Clock>(svc: &Services<I, P, C>, p: &Pipeline) -> Result<()> {
    svc.probe.at("pipeline.then", 0)?;
    let job = JobId::new(&p.job)?;
    let mut rest = p.rest.as_slice();
    while let Some((next, after)) = rest.split_first() {
        if !ready(&svc.root, next, None)? {
            let then = Pipeline { rest: after.to_vec(), ..p.clone() };
            let sub = sub_job(&job, &next.split)?;
            crate::extract::start_with(svc, sub, p.workers, next.clone(), Some(then)).await?;
            return Ok(());
        }
        rest = after;
    }
    svc.invoker.invoke(&Event::Start(StartEvent { job, workers: p.workers, spec: p.spec.clone() })).await
}
