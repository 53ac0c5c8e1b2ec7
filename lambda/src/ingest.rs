//! Data onto the storage root from S3: an ingest job copies every object
//! under an S3 prefix into a folder under the root (on Lambda, the EFS
//! access point), streamed, resumable across invocations, each file checked
//! against S3's size and checksum and published atomically.
//!
//! ## Events
//!
//! | event | fields |
//! |---|---|
//! | start | `"ingest": "start"`, `"job"`, `"spec"`: an [`IngestSpec`] (`bucket`, `prefix`, `dest`) |
//! | copy | `"ingest": "copy"`, `"job"`, `"continuation": c` |
//!
//! `{"resume": true, "job"}` restarts a copy whose invocations all died;
//! `{"stop": true, "job"}` ends it after the range in progress.
//!
//! ## The job
//!
//! 1. **start** lists the prefix once and checks everything before writing:
//!    every key maps to a path under `dest` (no `..`, no hidden or empty
//!    component, no two keys on one path, no file where another needs a
//!    folder), and no destination exists yet. It creates the job folder
//!    whole (the config and the listing, sizes and ETags included), records
//!    the job and invokes the first **copy**.
//! 2. **copy** takes the objects in listing order. An object is read in
//!    ranged `GET`s of at most `range_bytes` (16 MiB by default) conditional
//!    on the listed ETag (`If-Match`: an object replaced since the listing is
//!    an error, never a mixture), streamed to `current.part` in the job
//!    folder and hashed as it arrives; nothing larger than one network chunk
//!    is held in memory, so a 1 GB object never sits there. After each range
//!    the bytes are fsynced, then `current.json` records how many are
//!    durable (and the digests of the upload parts already complete).
//! 3. Before a range could overrun the invocation's deadline (the slowest
//!    range so far plus `safety_ms`), and inside a range once the deadline
//!    is `safety_ms` away, the copy stops at a durable offset and invokes
//!    its own continuation, which truncates `current.part` to the recorded
//!    offset (dropping any bytes written but not recorded), hashes the bytes
//!    of the unfinished part again from the file, and goes on from there.
//! 4. A complete object is checked: its size, then its checksum
//!    ([`Check`]): the ETag when S3 defines it as the MD5 of the content
//!    (single-part uploads) or of the parts' MD5s (multipart uploads: the
//!    part boundaries come from `HEAD ?partNumber=k`), which holds for
//!    objects without server-side encryption or with SSE-S3; otherwise a
//!    full-object checksum S3 keeps (SHA-256, and with the `aws` feature
//!    CRC32, CRC32C, CRC64NVME, SHA-1). An object with neither is refused,
//!    naming the key. A mismatch discards the copy and fails the invocation
//!    as retryable, so the retry fetches it again.
//! 5. A verified file is published by `link(2)` onto its destination,
//!    which fails rather than replace anything, then the cursor
//!    (`cursor.json`) moves past it. A crash between any two of these steps
//!    is recognised on resume (the destination is the copy's own inode, or
//!    the cursor is already past it).
//!
//! One copy invocation runs at a time: each holds an exclusive `fs2` lock
//! on `copy.lock` in the job folder, and a duplicate delivery that finds it
//! held ends at once. The lock is released before the continuation is
//! invoked.
//!
//! ## Folder layout
//!
//! ```text
//! jobs/<job>/config.json      the job (IngestConfig), written once
//! jobs/<job>/objects.json     the listing: key, size, ETag, destination path
//! jobs/<job>/cursor.json      objects published so far, bytes, invocations
//! jobs/<job>/current.part     the object being copied (its durable prefix)
//! jobs/<job>/current.json     how much of it is durable, how it is verified
//! jobs/<job>/copy.lock        held by the running copy invocation
//! jobs/<job>/STOP             a stop request
//! jobs/<job>/final.json       written once when the job ends
//! <dest>/<key without prefix> the published files
//! ```

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{ProtocolError, Result};
use crate::event::{Event, JobId};
use crate::layout::{claim, present, read_json, write_json, JobDir};
use crate::objects::{bare_etag, base64, etag_of_parts, etag_parts, hex, ObjectStore};
use crate::progress::{IngestRecord, JobStatus, ProgressStore};
use crate::roles::Outcome;
use crate::services::{Clock, Invocation, Invoker, Services};
use crate::spec::{relative_path, resolve_inside, JobSpec, LAMBDA_MAX_MS};

/// Version tag of an ingest job's `config.json`.
pub const INGEST_FORMAT: &str = "lml-ingest/1";

/// Bytes per ranged `GET` unless the spec says otherwise.
pub const DEFAULT_RANGE_BYTES: u64 = 16 << 20;

/// Largest `range_bytes` a spec may ask for.
pub const MAX_RANGE_BYTES: u64 = 1 << 30;

/// Most objects one ingest job copies (its listing is kept in the job folder).
pub const MAX_OBJECTS: usize = 100_000;

/// Longest path component a key may map to (the usual file-name limit).
pub const MAX_NAME_BYTES: usize = 255;

/// Fewest milliseconds between two progress records of one invocation.
const RECORD_EVERY_MS: u64 = 1_000;

fn default_range_bytes() -> u64 {
    DEFAULT_RANGE_BYTES
}
fn default_time_limit_ms() -> u64 {
    JobSpec::default().time_limit_ms
}
fn default_safety_ms() -> u64 {
    JobSpec::default().safety_ms
}

/// What an ingest job copies, and where.
///
/// `{"bucket": "my-data", "prefix": "lml/"}` is a complete spec: every
/// object under `s3://my-data/lml/` lands at the same path under the root,
/// minus the prefix (`lml/cifar10/train_x.npy` → `cifar10/train_x.npy`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSpec {
    /// The bucket.
    pub bucket: String,
    /// The key prefix; every object under it is copied (`""`: the whole bucket).
    #[serde(default)]
    pub prefix: String,
    /// The folder under the storage root that receives the files (`""`: the root).
    #[serde(default)]
    pub dest: String,
    /// Bytes per ranged `GET` (the unit of progress between deadline checks).
    #[serde(default = "default_range_bytes")]
    pub range_bytes: u64,
    /// Invocation time limit used when the runtime gives no usable deadline (ms).
    #[serde(default = "default_time_limit_ms")]
    pub time_limit_ms: u64,
    /// Time kept in reserve before the deadline for saving and continuing (ms).
    #[serde(default = "default_safety_ms")]
    pub safety_ms: u64,
}

impl IngestSpec {
    /// The spec of `bucket`/`prefix` into `dest`, every other field at its default.
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>, dest: impl Into<String>) -> Self {
        IngestSpec {
            bucket: bucket.into(),
            prefix: prefix.into(),
            dest: dest.into(),
            range_bytes: default_range_bytes(),
            time_limit_ms: default_time_limit_ms(),
            safety_ms: default_safety_ms(),
        }
    }

    /// Parses a spec from a JSON object.
    ///
    /// # Errors
    /// [`ProtocolError::BadSpec`] naming the field (`spec.bucket`) on unknown
    /// fields, wrong types or invalid values.
    pub fn from_json(v: &Value) -> Result<Self> {
        let spec: IngestSpec =
            crate::json::from_value(v).map_err(|e| ProtocolError::spec(e.field_in("spec"), e.reason))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`ProtocolError::BadSpec`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let b = &self.bucket;
        let bucket_ok = (3..=63).contains(&b.len())
            && b.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
            && b.starts_with(|c: char| c.is_ascii_alphanumeric())
            && b.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !bucket_ok {
            return Err(ProtocolError::spec(
                "spec.bucket",
                format!("{b:?} is not an S3 bucket name (3 to 63 of a-z 0-9 . -, starting and ending alphanumeric)"),
            ));
        }
        if self.prefix.len() > 1024 {
            return Err(ProtocolError::spec(
                "spec.prefix",
                format!("{} bytes; S3 keys have at most 1024", self.prefix.len()),
            ));
        }
        if !self.dest.is_empty() {
            relative_path("spec.dest", &self.dest)?;
        }
        if !(1..=MAX_RANGE_BYTES).contains(&self.range_bytes) {
            return Err(ProtocolError::spec(
                "spec.range_bytes",
                format!("{} is outside 1..={MAX_RANGE_BYTES}", self.range_bytes),
            ));
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

    /// The path under the root that `key` lands at: the key minus the prefix
    /// (and a `/` after it), under `dest`.
    ///
    /// # Errors
    /// [`ProtocolError::BadSpec`] on `spec.prefix` naming the key if it
    /// would leave `dest`, has an empty, hidden (`.`-led) or over-long
    /// component, names nothing, or would land in the jobs' own folders
    /// (`jobs/`, `cache/`).
    pub fn path_of(&self, key: &str) -> Result<String> {
        let bad = |why: &str| ProtocolError::spec("spec.prefix", format!("object {key:?} {why}"));
        let rest = key.strip_prefix(self.prefix.as_str()).ok_or_else(|| bad("is not under the prefix"))?;
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(bad("names the prefix itself, not a file under it"));
        }
        for part in rest.split('/') {
            if part.is_empty() {
                return Err(bad("has an empty path component ('//' or a trailing '/')"));
            }
            if part.starts_with('.') {
                return Err(bad("has a component starting with '.' (hidden, '..' or a temp name): exclude it"));
            }
            if part.len() > MAX_NAME_BYTES || part.contains('\0') {
                return Err(bad(&format!("has a component longer than {MAX_NAME_BYTES} bytes or with a NUL")));
            }
        }
        let path =
            if self.dest.is_empty() { rest.to_string() } else { format!("{}/{rest}", self.dest.trim_end_matches('/')) };
        // The protocol's own folders: a file there could pose as a job's
        // file (a STOP, a config) or as a feature cache.
        let top = path.split('/').next().unwrap_or_default();
        if [crate::layout::JOBS_DIR, crate::pipeline::CACHE_DIR].contains(&top) {
            return Err(bad(&format!("would land in {top}/, which the jobs keep to themselves: choose another dest")));
        }
        // Belt and braces: the same rule every data path of a spec obeys.
        relative_path("spec.prefix", &path)?;
        Ok(path)
    }
}

/// An ingest job as start resolved it: `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// [`INGEST_FORMAT`].
    pub format: String,
    pub job: String,
    pub spec: IngestSpec,
    /// Objects in the listing.
    pub objects: usize,
    /// Their total size.
    pub bytes: u64,
}

/// One object of the job's listing (`objects.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestObject {
    pub key: String,
    pub size: u64,
    /// The ETag as S3 listed it (quotes included): every read is conditional on it.
    pub etag: String,
    /// Where it lands, relative to the storage root.
    pub path: String,
}

/// Events of an ingest job.
#[derive(Clone, Debug, PartialEq)]
pub enum IngestEvent {
    /// `{"ingest": "start", "job", "spec": {...}}`.
    Start { job: JobId, spec: IngestSpec },
    /// `{"ingest": "copy", "job", "continuation": c}`.
    Copy { job: JobId, continuation: u64 },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIngestEvent {
    ingest: Value,
    job: Option<String>,
    continuation: Option<u64>,
    spec: Option<Value>,
}

impl IngestEvent {
    /// Parses an event whose payload has an `ingest` field.
    ///
    /// # Errors
    /// [`ProtocolError::BadEvent`] naming the field (unknown fields, wrong
    /// types, fields of the other kind, a bad job id);
    /// [`ProtocolError::BadSpec`] naming the spec's field.
    pub fn parse(payload: &Value) -> Result<Self> {
        let raw: RawIngestEvent = crate::json::from_value(payload)
            .map_err(|e| ProtocolError::event(e.field.as_deref().unwrap_or("event"), e.reason))?;
        let job = JobId::new(raw.job.as_deref().unwrap_or(crate::event::DEFAULT_JOB))?;
        match raw.ingest.as_str() {
            Some("start") => {
                if raw.continuation.is_some() {
                    return Err(ProtocolError::event("continuation", "does not belong in an ingest start event"));
                }
                let spec = raw
                    .spec
                    .as_ref()
                    .ok_or_else(|| ProtocolError::event("spec", "required by an ingest start event"))?;
                if !spec.is_object() {
                    return Err(ProtocolError::event("spec", "must be a JSON object"));
                }
                Ok(IngestEvent::Start { job, spec: IngestSpec::from_json(spec)? })
            }
            Some("copy") => {
                if raw.spec.is_some() {
                    return Err(ProtocolError::event("spec", "does not belong in an ingest copy event"));
                }
                Ok(IngestEvent::Copy { job, continuation: raw.continuation.unwrap_or(0) })
            }
            _ => Err(ProtocolError::event("ingest", format!("{}: expected \"start\" or \"copy\"", raw.ingest))),
        }
    }

    /// The JSON payload; [`parse`](Self::parse) of it gives back an equal event.
    pub fn to_json(&self) -> Value {
        match self {
            IngestEvent::Start { job, spec } => json!({
                "ingest": "start", "job": job.as_str(), "spec": serde_json::to_value(spec).expect("serialisable"),
            }),
            IngestEvent::Copy { job, continuation } => {
                json!({"ingest": "copy", "job": job.as_str(), "continuation": continuation})
            }
        }
    }

    /// The job the event is about.
    pub fn job(&self) -> &JobId {
        match self {
            IngestEvent::Start { job, .. } | IngestEvent::Copy { job, .. } => job,
        }
    }

    /// A short name for logs.
    pub fn describe(&self) -> String {
        match self {
            IngestEvent::Start { job, spec } => {
                format!("{job}: ingest start s3://{}/{}", spec.bucket, spec.prefix)
            }
            IngestEvent::Copy { job, continuation } => format!("{job}: ingest copy (cont {continuation})"),
        }
    }
}

// ----- checksums -------------------------------------------------------------

/// How a copied object is checked against what S3 says of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Check {
    /// The ETag is the MD5 of the content (one part) or the MD5 of the
    /// parts' MD5s followed by `-N` (`N` upload parts of these sizes).
    EtagMd5 { parts: Vec<u64> },
    /// A full-object checksum S3 keeps: `algorithm` over the whole object, base64.
    Full { algorithm: String, expected: String },
}

/// An incremental checksum over a whole object.
trait FullHasher: Send {
    fn update(&mut self, bytes: &[u8]);
    fn finish(self: Box<Self>) -> Vec<u8>;
}

struct Sha256Hasher(sha2::Sha256);

impl FullHasher for Sha256Hasher {
    fn update(&mut self, bytes: &[u8]) {
        sha2::Digest::update(&mut self.0, bytes);
    }
    fn finish(self: Box<Self>) -> Vec<u8> {
        sha2::Digest::finalize(self.0).to_vec()
    }
}

#[cfg(feature = "aws")]
struct SmithyHasher(Box<dyn aws_smithy_checksums::http::HttpChecksum>);

#[cfg(feature = "aws")]
impl FullHasher for SmithyHasher {
    fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(self: Box<Self>) -> Vec<u8> {
        self.0.finalize().to_vec()
    }
}

/// A hasher for S3's full-object checksum `algorithm`, if this build knows it.
fn full_hasher(algorithm: &str) -> Option<Box<dyn FullHasher>> {
    match algorithm {
        "sha256" => Some(Box::new(Sha256Hasher(sha2::Sha256::default()))),
        #[cfg(feature = "aws")]
        "crc32" | "crc32c" | "crc64nvme" | "sha1" => {
            let a: aws_smithy_checksums::ChecksumAlgorithm = algorithm.parse().ok()?;
            Some(Box::new(SmithyHasher(a.into_impl())))
        }
        _ => None,
    }
}

/// Full-object checksum algorithms this build can verify.
pub fn full_checksums() -> &'static [&'static str] {
    if cfg!(feature = "aws") {
        &["sha256", "crc64nvme", "crc32", "crc32c", "sha1"]
    } else {
        &["sha256"]
    }
}

/// The digests of one object as its bytes arrive in order.
struct Digests {
    check: Check,
    /// `EtagMd5`: where each part ends (offsets into the object).
    ends: Vec<u64>,
    /// Bytes hashed so far (an offset into the object).
    pos: u64,
    /// `EtagMd5`: the MD5s of the parts complete so far, and the current part's.
    part_md5: Vec<[u8; 16]>,
    md5: Md5,
    full: Option<Box<dyn FullHasher>>,
}

impl Digests {
    /// Digests at offset `pos`, the parts before it done (`part_md5`).
    fn new(check: &Check, pos: u64, part_md5: Vec<[u8; 16]>) -> Result<Self> {
        let full = match check {
            Check::EtagMd5 { .. } => None,
            Check::Full { algorithm, .. } => Some(
                full_hasher(algorithm)
                    .ok_or_else(|| ProtocolError::spec("check", format!("unknown checksum {algorithm:?}")))?,
            ),
        };
        let ends = match check {
            Check::EtagMd5 { parts } => parts
                .iter()
                .scan(0u64, |end, &p| {
                    *end = end.saturating_add(p);
                    Some(*end)
                })
                .collect(),
            Check::Full { .. } => Vec::new(),
        };
        Ok(Digests { check: check.clone(), ends, pos, part_md5, md5: Md5::new(), full })
    }

    /// Where the bytes to hash again on resume start: the unfinished part's
    /// first byte (`EtagMd5`), or the object's (`Full`).
    fn rehash_from(&self) -> u64 {
        match self.part_md5.len() {
            0 => 0,
            p => self.ends.get(p - 1).copied().unwrap_or(u64::MAX),
        }
    }

    fn update(&mut self, mut bytes: &[u8]) {
        match &self.check {
            Check::EtagMd5 { .. } => {
                while !bytes.is_empty() {
                    // The caller never hands over bytes past the object's end.
                    let end = self.ends[self.part_md5.len()];
                    let take = (end - self.pos).min(bytes.len() as u64) as usize;
                    self.md5.update(&bytes[..take]);
                    self.pos += take as u64;
                    bytes = &bytes[take..];
                    if self.pos == end {
                        let d = std::mem::replace(&mut self.md5, Md5::new()).finalize();
                        self.part_md5.push(d.into());
                    }
                }
            }
            Check::Full { .. } => {
                self.full.as_mut().expect("a full hasher").update(bytes);
                self.pos += bytes.len() as u64;
            }
        }
    }

    /// The checksum of everything hashed, as S3 writes it (ETag without
    /// quotes, or base64), and what S3 says it should be.
    fn finish(mut self, etag: &str) -> (String, String) {
        match self.check {
            Check::EtagMd5 { .. } => {
                // An empty object's one part never saw a byte.
                while self.part_md5.len() < self.ends.len() {
                    let d = std::mem::replace(&mut self.md5, Md5::new()).finalize();
                    self.part_md5.push(d.into());
                }
                (etag_of_parts(&self.part_md5), bare_etag(etag))
            }
            Check::Full { expected, .. } => (base64(&self.full.expect("a full hasher").finish()), expected),
        }
    }
}

// ----- the job folder -----------------------------------------------------------

fn objects_path(jd: &JobDir) -> PathBuf {
    jd.dir.join("objects.json")
}
fn cursor_path(jd: &JobDir) -> PathBuf {
    jd.dir.join("cursor.json")
}
fn part_path(jd: &JobDir) -> PathBuf {
    jd.dir.join("current.part")
}
fn state_path(jd: &JobDir) -> PathBuf {
    jd.dir.join("current.json")
}
fn lock_path(jd: &JobDir) -> PathBuf {
    jd.dir.join("copy.lock")
}
fn invoked_path(jd: &JobDir) -> PathBuf {
    jd.dir.join("copy-invoked")
}

/// How far the copy has come: objects `..next` are published.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cursor {
    next: usize,
    bytes_done: u64,
    /// Copy invocations that held the lock.
    invocations: u64,
}

/// The object being copied: `current.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyState {
    index: usize,
    key: String,
    check: Check,
    /// Bytes of `current.part` that are durable.
    done: u64,
    /// Hex MD5s of the upload parts complete within `done` (`EtagMd5`).
    part_md5: Vec<String>,
    /// The whole object is there and its checksum matched.
    verified: bool,
}

/// Why and how the job ended: `final.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSummary {
    pub status: JobStatus,
    pub objects: usize,
    pub bytes: u64,
    pub finished_ms: u64,
    /// Why it failed (status `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Whether `job` under `root` is an ingest job (its `config.json` says so).
pub fn is_ingest_job(root: &Path, job: &JobId) -> bool {
    #[derive(Deserialize)]
    struct Format {
        format: String,
    }
    fs::read(JobDir::new(root, job).config())
        .ok()
        .and_then(|t| serde_json::from_slice::<Format>(&t).ok())
        .is_some_and(|f| f.format == INGEST_FORMAT)
}

/// Reads and checks an ingest job's `config.json` and `objects.json`.
///
/// # Errors
/// [`ProtocolError::BadJob`] naming the file if the job does not exist or a
/// file is unreadable, malformed, of another format or job, or disagrees
/// with the other.
pub fn read_job(jd: &JobDir) -> Result<(IngestConfig, Vec<IngestObject>)> {
    let path = jd.config();
    if !jd.exists() {
        return Err(ProtocolError::job(&jd.dir, format!("no such job {:?}", jd.job.as_str())));
    }
    let cfg: IngestConfig = read_json(&path)?;
    if cfg.format != INGEST_FORMAT {
        return Err(ProtocolError::job(&path, format!("format {:?}, expected {INGEST_FORMAT:?}", cfg.format)));
    }
    if cfg.job != jd.job.as_str() {
        return Err(ProtocolError::job(&path, format!("belongs to job {:?}", cfg.job)));
    }
    cfg.spec.validate().map_err(|e| ProtocolError::job(&path, e.to_string()))?;
    let list = objects_path(jd);
    let objects: Vec<IngestObject> = read_json(&list)?;
    let bytes = objects.iter().try_fold(0u64, |s, o| s.checked_add(o.size));
    if objects.len() != cfg.objects || bytes != Some(cfg.bytes) {
        return Err(ProtocolError::job(
            &list,
            format!("{} objects of {bytes:?} bytes; config.json says {} of {}", objects.len(), cfg.objects, cfg.bytes),
        ));
    }
    for o in &objects {
        if cfg.spec.path_of(&o.key).ok().as_deref() != Some(o.path.as_str()) {
            return Err(ProtocolError::job(&list, format!("object {:?}: path {:?} is not the key's", o.key, o.path)));
        }
    }
    Ok((cfg, objects))
}

fn store<I, P, C>(svc: &Services<I, P, C>) -> Result<&dyn ObjectStore> {
    svc.objects.as_deref().ok_or(ProtocolError::BadEnv {
        var: "objects",
        reason: "this runtime has no S3 client: ingest runs on the Lambda function".into(),
    })
}

/// Runs an ingest event.
///
/// # Errors
/// As the roles: bad events and specs before anything is written; S3, job
/// and I/O errors after.
pub async fn handle<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    event: IngestEvent,
    inv: &Invocation,
) -> Result<Outcome> {
    match event {
        IngestEvent::Start { job, spec } => start(svc, job, spec).await,
        IngestEvent::Copy { job, continuation } => copy(svc, &job, continuation, inv).await,
    }
}

/// Lists the spec's objects and maps each to its destination, refusing
/// (before anything is written) a listing that cannot be copied as a whole.
async fn listing(store: &dyn ObjectStore, root: &Path, spec: &IngestSpec) -> Result<Vec<IngestObject>> {
    let entries = store.list(&spec.bucket, &spec.prefix).await?;
    let mut objects = Vec::new();
    for e in entries {
        // A zero-byte key ending in '/' is a console "folder", not a file.
        if e.key.ends_with('/') && e.size == 0 {
            continue;
        }
        let path = spec.path_of(&e.key)?;
        objects.push(IngestObject { key: e.key, size: e.size, etag: e.etag, path });
    }
    let where_ = || format!("s3://{}/{}", spec.bucket, spec.prefix);
    if objects.is_empty() {
        return Err(ProtocolError::spec("spec.prefix", format!("no objects under {}", where_())));
    }
    if objects.len() > MAX_OBJECTS {
        return Err(ProtocolError::spec(
            "spec.prefix",
            format!("{} objects under {}; at most {MAX_OBJECTS} per job: split the prefix", objects.len(), where_()),
        ));
    }
    objects
        .iter()
        .try_fold(0u64, |s, o| s.checked_add(o.size))
        .ok_or_else(|| ProtocolError::spec("spec.prefix", "the objects' sizes overflow"))?;
    let files: BTreeSet<&str> = objects.iter().map(|o| o.path.as_str()).collect();
    if files.len() != objects.len() {
        return Err(ProtocolError::spec("spec.prefix", "two keys map to one path"));
    }
    for o in &objects {
        // A folder this file needs must not be another object's file.
        if let Some(f) = Path::new(&o.path).ancestors().skip(1).find(|a| files.contains(a.to_str().unwrap_or(""))) {
            return Err(ProtocolError::spec(
                "spec.prefix",
                format!("object {:?} needs {} to be a folder, but another object is that file", o.key, f.display()),
            ));
        }
        let dest = root.join(&o.path);
        if present(&dest) {
            return Err(ProtocolError::spec(
                "spec.dest",
                format!("{} exists: an ingest never replaces a file; remove it or choose another dest", dest.display()),
            ));
        }
        if let Some(existing) = dest.ancestors().skip(1).find(|a| a.exists()) {
            if existing.is_file() {
                return Err(ProtocolError::spec(
                    "spec.dest",
                    format!("{} is a file, but object {:?} needs it to be a folder", existing.display(), o.key),
                ));
            }
            resolve_inside(root, "spec.dest", &o.path, existing)?;
        }
    }
    Ok(objects)
}

/// Starts ingest job `job`: lists and checks, creates the job folder, invokes the first copy.
async fn start<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    job: JobId,
    spec: IngestSpec,
) -> Result<Outcome> {
    spec.validate()?;
    let jd = JobDir::new(&svc.root, &job);
    if jd.exists() && !is_ingest_job(&svc.root, &job) {
        return Err(ProtocolError::JobExists { job: job.to_string(), path: jd.dir.clone() });
    }
    if !jd.exists() {
        let objects = listing(store(svc)?, &svc.root, &spec).await?;
        let bytes = objects.iter().map(|o| o.size).sum();
        let cfg = IngestConfig {
            format: INGEST_FORMAT.into(),
            job: job.to_string(),
            spec: spec.clone(),
            objects: objects.len(),
            bytes,
        };
        create_job(&jd, &cfg, &objects)?;
    }
    let (cfg, _) = read_job(&jd)?;
    if cfg.spec != spec {
        return Err(ProtocolError::JobExists { job: job.to_string(), path: jd.dir.clone() });
    }
    let duplicate = svc.progress.load(&job).await?.ingest.is_some();
    if !duplicate {
        svc.progress
            .put_ingest(&job, &record(&cfg, &Cursor::default(), 0, JobStatus::Running, svc.clock.now_ms()))
            .await?;
    }
    svc.probe.at("ingest.started", 0)?;
    if !present(&invoked_path(&jd)) {
        svc.invoker.invoke(&copy_event(&job, 0)).await?;
        claim(&invoked_path(&jd), "start")?;
    }
    Ok(Outcome::Started { job, duplicate })
}

fn copy_event(job: &JobId, continuation: u64) -> Event {
    Event::Ingest(IngestEvent::Copy { job: job.clone(), continuation })
}

/// The progress record for `cursor` plus `current` bytes of the object in progress.
fn record(cfg: &IngestConfig, cursor: &Cursor, current: u64, status: JobStatus, now: u64) -> IngestRecord {
    IngestRecord {
        job: cfg.job.clone(),
        status,
        bucket: cfg.spec.bucket.clone(),
        prefix: cfg.spec.prefix.clone(),
        dest: cfg.spec.dest.clone(),
        objects: cfg.objects,
        bytes: cfg.bytes,
        objects_done: cursor.next,
        bytes_done: cursor.bytes_done.saturating_add(current),
        invocations: cursor.invocations,
        updated_ms: now,
        reason: None,
    }
}

/// Creates the job folder whole ([`JobDir::create_whole`]): config, object list, progress folder.
fn create_job(jd: &JobDir, cfg: &IngestConfig, objects: &[IngestObject]) -> Result<()> {
    jd.create_whole(|staged| {
        let progress = staged.dir.join("progress");
        fs::create_dir_all(&progress).map_err(|e| ProtocolError::io(&progress, e))?;
        write_json(&staged.dir.join("objects.json"), &objects)?;
        write_json(&staged.dir.join("config.json"), cfg)
    })
}

/// The invocation's time: at least one range runs; another starts only if
/// the slowest so far would end `safety_ms` before the deadline; inside a
/// range, bytes stop flowing once the deadline is `safety_ms` away (after
/// the first chunk of the invocation, so that every invocation progresses).
struct Budget<'a> {
    clock: &'a dyn Clock,
    deadline_ms: u64,
    safety_ms: u64,
    ranges: u64,
    slowest_ms: u64,
    moved: u64,
}

impl Budget<'_> {
    fn allows_range(&self) -> bool {
        self.ranges == 0
            || self.clock.now_ms().saturating_add(self.slowest_ms).saturating_add(self.safety_ms) <= self.deadline_ms
    }

    fn must_stop(&self) -> bool {
        self.moved > 0 && self.clock.now_ms().saturating_add(self.safety_ms) >= self.deadline_ms
    }

    fn ran(&mut self, took_ms: u64) {
        self.ranges += 1;
        self.slowest_ms = self.slowest_ms.max(took_ms);
    }
}

/// How work on one object ended.
enum ObjectEnd {
    /// Verified and published at its destination.
    Published,
    /// Out of time, its durable prefix recorded.
    OutOfTime,
    /// A stop request was seen.
    Stopped,
}

/// The `fs2` lock of the copy, released on drop.
struct CopyLock(fs::File);

impl Drop for CopyLock {
    fn drop(&mut self) {
        let _ = fs2::FileExt::unlock(&self.0);
    }
}

/// Takes the copy lock, or `None` if another invocation holds it.
fn try_lock(jd: &JobDir) -> Result<Option<CopyLock>> {
    let path = lock_path(jd);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ProtocolError::io(&path, e))?;
    match fs2::FileExt::try_lock_exclusive(&file) {
        Ok(()) => Ok(Some(CopyLock(file))),
        Err(e) if e.kind() == fs2::lock_contended_error().kind() => Ok(None),
        Err(e) => Err(ProtocolError::io(&path, e)),
    }
}

fn read_cursor(jd: &JobDir) -> Result<Cursor> {
    let path = cursor_path(jd);
    if present(&path) {
        read_json(&path)
    } else {
        Ok(Cursor::default())
    }
}

/// Copies objects from the cursor on until done, stopped, or out of time.
async fn copy<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    job: &JobId,
    continuation: u64,
    inv: &Invocation,
) -> Result<Outcome> {
    let jd = JobDir::new(&svc.root, job);
    let (cfg, objects) = read_job(&jd)?;
    if present(&jd.final_json()) {
        return Ok(Outcome::Skipped("the ingest has ended".into()));
    }
    let store = store(svc)?;
    let Some(held) = try_lock(&jd)? else {
        return Ok(Outcome::Skipped("another copy invocation of this ingest is running".into()));
    };
    let mut cursor = read_cursor(&jd)?;
    cursor.invocations += 1;
    write_json(&cursor_path(&jd), &cursor)?;
    let mut budget = Budget {
        clock: &svc.clock,
        deadline_ms: inv.effective_deadline(svc.clock.now_ms(), cfg.spec.time_limit_ms),
        safety_ms: cfg.spec.safety_ms,
        ranges: 0,
        slowest_ms: 0,
        moved: 0,
    };
    let mut recorded_ms = svc.clock.now_ms();
    let end = loop {
        if cursor.next >= objects.len() {
            break JobStatus::Finished;
        }
        if present(&jd.stop()) {
            break JobStatus::Stopped;
        }
        if !budget.allows_range() {
            return continue_later(svc, &jd, &cfg, &cursor, held, continuation).await;
        }
        let index = cursor.next;
        let ended = match copy_object(svc, store, &jd, &cfg, index, &objects[index], &mut budget).await {
            Ok(ended) => ended,
            // What a retry cannot cure ends the job, saying why.
            Err(e) if !e.is_retryable() => {
                let now = svc.clock.now_ms();
                let reason = Some(format!("object {} ({:?}): {e}", index, objects[index].key));
                let summary = IngestSummary {
                    status: JobStatus::Failed,
                    objects: cursor.next,
                    bytes: cursor.bytes_done,
                    finished_ms: now,
                    reason: reason.clone(),
                };
                write_json(&jd.final_json(), &summary)?;
                let r = IngestRecord { reason, ..record(&cfg, &cursor, 0, JobStatus::Failed, now) };
                svc.progress.put_ingest(job, &r).await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        match ended {
            ObjectEnd::Published => {
                cursor.next += 1;
                cursor.bytes_done += objects[index].size;
                write_json(&cursor_path(&jd), &cursor)?;
                remove_current(&jd)?;
                svc.probe.at("ingest.published", index as u64)?;
                if svc.clock.now_ms().saturating_sub(recorded_ms) >= RECORD_EVERY_MS {
                    let r = record(&cfg, &cursor, 0, JobStatus::Running, svc.clock.now_ms());
                    svc.progress.put_ingest(job, &r).await?;
                    recorded_ms = svc.clock.now_ms();
                }
            }
            ObjectEnd::OutOfTime => return continue_later(svc, &jd, &cfg, &cursor, held, continuation).await,
            ObjectEnd::Stopped => break JobStatus::Stopped,
        }
    };
    let now = svc.clock.now_ms();
    let summary =
        IngestSummary { status: end, objects: cursor.next, bytes: cursor.bytes_done, finished_ms: now, reason: None };
    write_json(&jd.final_json(), &summary)?;
    svc.progress.put_ingest(job, &record(&cfg, &cursor, 0, end, now)).await?;
    drop(held);
    Ok(Outcome::Ingested { objects: cursor.next, bytes: cursor.bytes_done, stopped: end == JobStatus::Stopped })
}

/// Records the progress, releases the lock and invokes the next copy.
async fn continue_later<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    jd: &JobDir,
    cfg: &IngestConfig,
    cursor: &Cursor,
    held: CopyLock,
    continuation: u64,
) -> Result<Outcome> {
    let current = match read_state(jd)? {
        Some(s) if s.index == cursor.next => s.done,
        _ => 0,
    };
    svc.progress.put_ingest(&jd.job, &record(cfg, cursor, current, JobStatus::Running, svc.clock.now_ms())).await?;
    // Released first: the continuation may start before this invocation ends.
    drop(held);
    svc.probe.at("ingest.continue", cursor.next as u64)?;
    svc.invoker.invoke(&copy_event(&jd.job, continuation + 1)).await?;
    Ok(Outcome::IngestContinued { object: cursor.next, continuation: continuation + 1 })
}

fn read_state(jd: &JobDir) -> Result<Option<CopyState>> {
    let path = state_path(jd);
    if present(&path) {
        read_json(&path).map(Some)
    } else {
        Ok(None)
    }
}

/// Removes the copy state of a published object (the state first: a part
/// file without a state is discarded on the next object).
fn remove_current(jd: &JobDir) -> Result<()> {
    for p in [state_path(jd), part_path(jd)] {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ProtocolError::io(&p, e)),
        }
    }
    Ok(())
}

/// Whether `a` and `b` are the same file (one inode).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (fs::metadata(a), fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        false
    }
}

/// How to verify `obj`, from `HEAD`s: the ETag when it is an MD5 (the part
/// sizes from one `HEAD` per part), else a full-object checksum.
async fn plan_check(store: &dyn ObjectStore, bucket: &str, obj: &IngestObject) -> Result<Check> {
    let head = store.head(bucket, &obj.key, &obj.etag, None).await?;
    let refuse = |why: String| ProtocolError::Object {
        bucket: bucket.into(),
        key: obj.key.clone(),
        reason: why,
        retryable: false,
    };
    if head.size != obj.size || bare_etag(&head.etag) != bare_etag(&obj.etag) {
        return Err(refuse(format!(
            "HEAD says {} bytes, ETag {}; the listing said {} bytes, ETag {}",
            head.size, head.etag, obj.size, obj.etag
        )));
    }
    match etag_parts(&obj.etag) {
        Some(n) if !head.etag_not_md5 => {
            let mut parts = Vec::new();
            if n == 1 {
                parts.push(obj.size);
            } else {
                for k in 1..=n {
                    parts.push(store.head(bucket, &obj.key, &obj.etag, Some(k)).await?.size);
                }
            }
            let total = parts.iter().try_fold(0u64, |s, &p| s.checked_add(p));
            if total != Some(obj.size) || (n > 1 && parts.contains(&0)) {
                return Err(refuse(format!("its {n} parts ({parts:?} bytes) do not add up to its {} bytes", obj.size)));
            }
            Ok(Check::EtagMd5 { parts })
        }
        _ => match head.checksum {
            Some((algorithm, expected)) if full_hasher(&algorithm).is_some() => Ok(Check::Full { algorithm, expected }),
            other => Err(refuse(format!(
                "cannot be verified: its ETag is not an MD5 (server-side encryption with KMS or customer keys) and S3 \
                 keeps no full-object checksum this build knows ({}; known: {}); upload it with \
                 --checksum-algorithm SHA256",
                other.map_or("none".to_string(), |(a, _)| a),
                full_checksums().join(", ")
            ))),
        },
    }
}

/// Copies object `index` from its durable prefix on, verifies and publishes it.
async fn copy_object<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    store: &dyn ObjectStore,
    jd: &JobDir,
    cfg: &IngestConfig,
    index: usize,
    obj: &IngestObject,
    budget: &mut Budget<'_>,
) -> Result<ObjectEnd> {
    let dest = svc.root.join(&obj.path);
    let part = part_path(jd);
    let state = match read_state(jd)? {
        Some(s) if s.index == index && s.key == obj.key && (s.verified || present(&part)) => Some(s),
        // A previous object's leftovers (the cursor moved on before they
        // were removed), or a state whose part file is gone: start afresh.
        Some(_) => {
            remove_current(jd)?;
            None
        }
        None => None,
    };
    let mut state = match state {
        Some(s) => s,
        None => new_state(store, cfg, jd, index, obj, &dest).await?,
    };
    if !state.verified {
        match fill(svc, store, jd, cfg, obj, &mut state, budget).await? {
            ObjectEnd::Published => {}
            other => return Ok(other),
        }
    }
    publish(&svc.root, &part, &dest, obj)?;
    Ok(ObjectEnd::Published)
}

/// A fresh copy of `obj`: decides how to check it, creates an empty part file.
async fn new_state(
    store: &dyn ObjectStore,
    cfg: &IngestConfig,
    jd: &JobDir,
    index: usize,
    obj: &IngestObject,
    dest: &Path,
) -> Result<CopyState> {
    if present(dest) {
        return Err(ProtocolError::job(
            dest,
            format!("exists, but ingest {} did not write it: it never replaces a file", jd.job),
        ));
    }
    let check = plan_check(store, &cfg.spec.bucket, obj).await?;
    let part = part_path(jd);
    fs::File::create(&part).and_then(|f| f.sync_all()).map_err(|e| ProtocolError::io(&part, e))?;
    let state = CopyState { index, key: obj.key.clone(), check, done: 0, part_md5: Vec::new(), verified: false };
    write_json(&state_path(jd), &state)?;
    Ok(state)
}

fn unhex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Streams the rest of the object into the part file, range by range,
/// recording each durable offset; verifies it once complete.
async fn fill<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    store: &dyn ObjectStore,
    jd: &JobDir,
    cfg: &IngestConfig,
    obj: &IngestObject,
    state: &mut CopyState,
    budget: &mut Budget<'_>,
) -> Result<ObjectEnd> {
    let part = part_path(jd);
    let bad_state = |why: &str| ProtocolError::job(state_path(jd), why.to_string());
    if state.done > obj.size {
        return Err(bad_state("records more bytes than the object has"));
    }
    let part_md5: Vec<[u8; 16]> =
        state.part_md5.iter().map(|h| unhex16(h)).collect::<Option<_>>().ok_or_else(|| bad_state("bad part MD5"))?;
    let mut digests = Digests::new(&state.check, 0, part_md5)?;
    if digests.part_md5.len() > digests.ends.len() || digests.rehash_from() > state.done {
        return Err(bad_state("part digests disagree with the durable offset"));
    }
    // Bytes past the recorded offset were never recorded durable: drop them.
    let mut file =
        fs::OpenOptions::new().read(true).write(true).open(&part).map_err(|e| ProtocolError::io(&part, e))?;
    file.set_len(state.done).map_err(|e| ProtocolError::io(&part, e))?;
    // The unfinished part's bytes (all of them, for a full-object checksum) are hashed again.
    let from = digests.rehash_from();
    digests.pos = from;
    file.seek(SeekFrom::Start(from)).map_err(|e| ProtocolError::io(&part, e))?;
    let mut reader = (&mut file).take(state.done - from);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| ProtocolError::io(&part, e))?;
        if n == 0 {
            break;
        }
        digests.update(&buf[..n]);
    }
    drop(buf);
    if digests.pos != state.done {
        return Err(bad_state("the part file is shorter than its recorded offset"));
    }
    file.seek(SeekFrom::Start(state.done)).map_err(|e| ProtocolError::io(&part, e))?;
    while state.done < obj.size {
        if present(&jd.stop()) {
            return Ok(ObjectEnd::Stopped);
        }
        if !budget.allows_range() {
            return Ok(ObjectEnd::OutOfTime);
        }
        let from = state.done;
        let end = from.saturating_add(cfg.spec.range_bytes).min(obj.size);
        let started = svc.clock.now_ms();
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, &file);
        let mut failure = None;
        let (mut got, mut stopped) = (0u64, false);
        let delivered = {
            let wanted = end - from;
            let mut sink = |bytes: &[u8]| -> Result<bool> {
                if got + bytes.len() as u64 > wanted {
                    failure = Some(ProtocolError::Object {
                        bucket: cfg.spec.bucket.clone(),
                        key: obj.key.clone(),
                        reason: format!("a read of {wanted} bytes delivered more"),
                        retryable: true,
                    });
                    return Ok(false);
                }
                writer.write_all(bytes).map_err(|e| ProtocolError::io(&part, e))?;
                digests.update(bytes);
                got += bytes.len() as u64;
                budget.moved += bytes.len() as u64;
                if budget.must_stop() {
                    stopped = true;
                    return Ok(false);
                }
                Ok(true)
            };
            store.read(&cfg.spec.bucket, &obj.key, &obj.etag, from..end, &mut sink).await
        };
        writer.flush().map_err(|e| ProtocolError::io(&part, e))?;
        drop(writer);
        if let Some(e) = failure {
            return Err(e);
        }
        // What arrived is kept even when the read failed later: it is durable once fsynced.
        file.sync_all().map_err(|e| ProtocolError::io(&part, e))?;
        state.done += got;
        state.part_md5 = digests.part_md5.iter().map(|d| hex(d)).collect();
        write_json(&state_path(jd), &*state)?;
        budget.ran(svc.clock.now_ms().saturating_sub(started));
        svc.probe.at("ingest.range", state.done)?;
        let delivered = delivered?;
        if delivered != got {
            return Err(ProtocolError::Object {
                bucket: cfg.spec.bucket.clone(),
                key: obj.key.clone(),
                reason: format!("the store reported {delivered} bytes, the sink received {got}"),
                retryable: true,
            });
        }
        if stopped {
            return Ok(ObjectEnd::OutOfTime);
        }
        if state.done < end {
            return Err(ProtocolError::Object {
                bucket: cfg.spec.bucket.clone(),
                key: obj.key.clone(),
                reason: format!("short read: bytes {from}..{end} ended at {}", state.done),
                retryable: true,
            });
        }
    }
    let (got, want) = digests.finish(&obj.etag);
    if got != want {
        // Discarded, so that the retry fetches it again from the start.
        remove_current(jd)?;
        return Err(ProtocolError::Object {
            bucket: cfg.spec.bucket.clone(),
            key: obj.key.clone(),
            reason: format!("checksum mismatch: the copy gives {got}, S3 says {want}; the copy was discarded"),
            retryable: true,
        });
    }
    state.verified = true;
    write_json(&state_path(jd), &*state)?;
    svc.probe.at("ingest.verified", state.index as u64)?;
    Ok(ObjectEnd::Published)
}

/// Publishes the verified part file at `dest` by `link(2)`, which never
/// replaces a file; a link already there from this copy (a crash after it)
/// is recognised.
fn publish(root: &Path, part: &Path, dest: &Path, obj: &IngestObject) -> Result<()> {
    if !present(part) {
        if present(dest) {
            // Linked, and the part file removed, before a crash.
            return Ok(());
        }
        return Err(ProtocolError::job(part, format!("missing: object {:?} must be copied again", obj.key)));
    }
    let parent = dest.parent().expect("a file under the root");
    fs::create_dir_all(parent).map_err(|e| ProtocolError::io(parent, e))?;
    resolve_inside(root, "spec.dest", &obj.path, parent)?;
    match fs::hard_link(part, dest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && same_file(part, dest) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(ProtocolError::job(dest, "appeared during the copy: an ingest never replaces a file"))
        }
        Err(e) => return Err(ProtocolError::io(dest, e)),
    }
    if let Ok(d) = fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Restarts an ingest job whose invocations all died.
///
/// # Errors
/// [`ProtocolError::BadJob`] if the job is missing or malformed; invoke errors.
pub async fn resume<I: Invoker, P: ProgressStore, C: Clock>(svc: &Services<I, P, C>, job: &JobId) -> Result<Outcome> {
    let jd = JobDir::new(&svc.root, job);
    let (cfg, _) = read_job(&jd)?;
    if present(&jd.final_json()) {
        let summary: IngestSummary = read_json(&jd.final_json())?;
        // The record may have missed the end (a crash after final.json).
        let cursor = read_cursor(&jd)?;
        let r =
            IngestRecord { reason: summary.reason, ..record(&cfg, &cursor, 0, summary.status, summary.finished_ms) };
        svc.progress.put_ingest(job, &r).await?;
        return Ok(Outcome::Skipped("the ingest has ended".into()));
    }
    let cursor = read_cursor(&jd)?;
    svc.invoker.invoke(&copy_event(job, cursor.invocations)).await?;
    Ok(Outcome::Resumed { round: cursor.next as u64, what: "ingest copy" })
}

/// Asks a running ingest to stop after the range in progress.
///
/// # Errors
/// [`ProtocolError::BadJob`] if the job is missing or malformed.
pub fn stop(root: &Path, job: &JobId) -> Result<Outcome> {
    let jd = JobDir::new(root, job);
    read_job(&jd)?;
    claim(&jd.stop(), "stop request")?;
    Ok(Outcome::StopRequested)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::objects::MemoryObjects;
    use crate::progress::LocalProgress;
    use crate::services::{RecordingInvoker, SystemClock, TickClock};

    type Svc<C> = Services<RecordingInvoker, LocalProgress, C>;

    fn services<C: Clock>(root: &Path, store: &Arc<MemoryObjects>, clock: C) -> Svc<C> {
        Services::new(root, RecordingInvoker::default(), LocalProgress::new(root), clock, 1).with_objects(store.clone())
    }

    /// Deterministic bytes, different per seed.
    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8).collect()
    }

    fn start_json(spec: Value) -> Value {
        json!({"ingest": "start", "job": "in", "spec": spec})
    }

    /// Runs every event the function sent itself since `done`, in order, until
    /// none is left; returns the outcomes.
    async fn drain<C: Clock>(svc: &Svc<C>, mut done: usize) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        loop {
            let events = svc.invoker.events();
            let Some(e) = events.get(done) else { return outcomes };
            done += 1;
            outcomes.push(crate::roles::handle(svc, &e.to_json(), &Invocation::default()).await.unwrap());
        }
    }

    /// Every file of the tree under `dir`, relative, with its bytes.
    fn tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut out = std::collections::BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                    out.insert(rel, fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    /// The same files with the same bytes (only names printed on failure).
    fn assert_same(
        got: &std::collections::BTreeMap<String, Vec<u8>>,
        want: &std::collections::BTreeMap<String, Vec<u8>>,
    ) {
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        let differ: Vec<&String> = want.iter().filter(|(k, v)| got[*k] != **v).map(|(k, _)| k).collect();
        assert!(differ.is_empty(), "files with other bytes: {differ:?}");
    }

    /// A bucket of every kind of object: one part, many parts, empty, nested,
    /// a console folder marker, and KMS-encrypted with a SHA-256 checksum.
    fn bucket(store: &MemoryObjects) -> std::collections::BTreeMap<String, Vec<u8>> {
        let objects = [
            ("data/a.npy", bytes(2500, 1), 0),
            ("data/big.bin", bytes(4321, 2), 1000),
            ("data/empty", Vec::new(), 0),
            ("data/w/vgg/conv1.npy", bytes(777, 3), 0),
            ("data/secret.bin", bytes(1500, 4), usize::MAX),
            ("other/x", bytes(10, 5), 0),
        ];
        let mut expect = std::collections::BTreeMap::new();
        for (key, data, part) in objects {
            if part == usize::MAX {
                store.put_kms("bkt", key, data.clone(), true);
            } else {
                store.put("bkt", key, data.clone(), part);
            }
            if let Some(rel) = key.strip_prefix("data/") {
                expect.insert(rel.to_string(), data);
            }
        }
        store.put("bkt", "data/w/", Vec::new(), 0);
        expect
    }

    #[test]
    fn events_round_trip_and_name_their_bad_fields() {
        let start = IngestEvent::Start { job: JobId::new("j").unwrap(), spec: IngestSpec::new("my-data", "lml/", "") };
        let copy = IngestEvent::Copy { job: JobId::new("j").unwrap(), continuation: 3 };
        for e in [start, copy] {
            assert_eq!(Event::parse(&e.to_json()).unwrap(), Event::Ingest(e.clone()));
        }
        let cases = [
            (json!({"ingest": "go"}), "ingest"),
            (json!({"ingest": "start", "job": "j"}), "spec"),
            (json!({"ingest": "start", "spec": {"bucket": "No_Bucket"}}), "spec.bucket"),
            (json!({"ingest": "start", "spec": {"bucket": "my-data", "dest": "../x"}}), "spec.dest"),
            (json!({"ingest": "start", "spec": {"bucket": "my-data", "range_bytes": 0}}), "spec.range_bytes"),
            (json!({"ingest": "start", "spec": {"bucket": "my-data", "extra": 1}}), "extra"),
            (json!({"ingest": "copy", "spec": {"bucket": "my-data"}}), "spec"),
            (json!({"ingest": "start", "continuation": 1, "spec": {"bucket": "my-data"}}), "continuation"),
            (json!({"ingest": "copy", "workers": 2}), "workers"),
        ];
        for (payload, field) in cases {
            let err = Event::parse(&payload).unwrap_err().to_string();
            assert!(err.contains(field), "{payload}: {err}");
        }
    }

    #[test]
    fn keys_map_under_dest_or_are_refused_by_name() {
        let spec = IngestSpec::new("my-data", "lml/", "in");
        assert_eq!(spec.path_of("lml/cifar10/train_x.npy").unwrap(), "in/cifar10/train_x.npy");
        let at_root = IngestSpec::new("my-data", "lml", "");
        assert_eq!(at_root.path_of("lml/a").unwrap(), "a");
        for key in ["lml/", "lml/a//b", "lml/../x", "lml/.hidden", "lml/a/./b", "other/a", "lml/a/"] {
            let err = spec.path_of(key).unwrap_err().to_string();
            assert!(err.contains("spec.prefix") && err.contains(key), "{key}: {err}");
        }
        let long = format!("lml/{}", "x".repeat(MAX_NAME_BYTES + 1));
        assert!(spec.path_of(&long).is_err());
        for key in ["lml/jobs/cifar-1/STOP", "lml/cache/0123/train_features.npy"] {
            let err = at_root.path_of(key).unwrap_err().to_string();
            assert!(err.contains("which the jobs keep to themselves"), "{key}: {err}");
        }
        assert_eq!(spec.path_of("lml/jobs/x").unwrap(), "in/jobs/x", "under another dest they are plain names");
    }

    #[test]
    fn base64_and_etags_follow_s3() {
        for (input, out) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(input.as_bytes()), out);
        }
        // The MD5 of nothing, and a two-part ETag computed by hand.
        assert_eq!(etag_of_parts(&[Md5::digest(b"").into()]), "d41d8cd98f00b204e9800998ecf8427e");
        let parts: Vec<[u8; 16]> = [&b"ab"[..], b"c"].iter().map(|p| Md5::digest(p).into()).collect();
        let mut h = Md5::new();
        h.update(Md5::digest(b"ab"));
        h.update(Md5::digest(b"c"));
        assert_eq!(etag_of_parts(&parts), format!("{}-2", hex(&h.finalize())));
        assert_eq!(etag_parts("\"d41d8cd98f00b204e9800998ecf8427e\""), Some(1));
        assert_eq!(etag_parts("\"d41d8cd98f00b204e9800998ecf8427e-12\""), Some(12));
        assert_eq!(etag_parts("\"not-an-md5\""), None);
    }

    /// Everything under the prefix lands under `dest`, byte for byte, each
    /// read a range of at most `range_bytes`, nothing read twice, the job
    /// folder left with no copy in progress.
    #[tokio::test]
    async fn a_prefix_is_copied_whole_verified_and_published() {
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryObjects::new(97));
        let expect = bucket(&store);
        let svc = services(root.path(), &store, SystemClock);
        let spec = json!({"bucket": "bkt", "prefix": "data/", "dest": "in", "range_bytes": 1000});
        let out = crate::roles::handle(&svc, &start_json(spec.clone()), &Invocation::default()).await.unwrap();
        assert_eq!(out, Outcome::Started { job: JobId::new("in").unwrap(), duplicate: false });
        // A duplicate start changes nothing and sends nothing.
        let again = crate::roles::handle(&svc, &start_json(spec), &Invocation::default()).await.unwrap();
        assert_eq!(again, Outcome::Started { job: JobId::new("in").unwrap(), duplicate: true });
        assert_eq!(svc.invoker.events().len(), 1);
        let outcomes = drain(&svc, 0).await;
        let total: u64 = expect.values().map(|v| v.len() as u64).sum();
        assert_eq!(outcomes.last(), Some(&Outcome::Ingested { objects: 5, bytes: total, stopped: false }));
        assert_same(&tree(&root.path().join("in")), &expect);
        let reads = store.reads();
        assert!(reads.iter().all(|(_, r)| r.end - r.start <= 1000), "{reads:?}");
        assert_eq!(reads.iter().map(|(_, r)| r.end - r.start).sum::<u64>(), total, "bytes read once each");
        let jd = JobDir::new(root.path(), &JobId::new("in").unwrap());
        assert!(!present(&part_path(&jd)) && !present(&state_path(&jd)));
        let p = svc.progress.load(&JobId::new("in").unwrap()).await.unwrap();
        let r = p.ingest.unwrap();
        assert_eq!(
            (r.status, r.objects, r.objects_done, r.bytes, r.bytes_done),
            (JobStatus::Finished, 5, 5, total, total)
        );
        // A late copy finds the job ended.
        let late = crate::roles::handle(&svc, &copy_event(&jd.job, 9).to_json(), &Invocation::default()).await.unwrap();
        assert!(matches!(late, Outcome::Skipped(_)), "{late:?}");
    }

    /// A time limit far shorter than an object: every invocation stops after
    /// a few chunks (inside a range, and before the next), records its
    /// durable offset and continues itself; the files are the same, and no
    /// byte is fetched twice.
    #[tokio::test]
    async fn a_time_limit_mid_copy_continues_from_the_durable_offset() {
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryObjects::new(50));
        let expect = bucket(&store);
        let svc = services(root.path(), &store, TickClock::new(1_000_000, 1));
        let spec = json!({"bucket": "bkt", "prefix": "data", "dest": "in", "range_bytes": 400,
                          "time_limit_ms": 40, "safety_ms": 20});
        crate::roles::handle(&svc, &start_json(spec), &Invocation::default()).await.unwrap();
        let outcomes = drain(&svc, 0).await;
        let continued = outcomes.iter().filter(|o| matches!(o, Outcome::IngestContinued { .. })).count();
        assert!(continued > 20, "only {continued} continuations: {outcomes:?}");
        assert!(matches!(outcomes.last(), Some(Outcome::Ingested { objects: 5, stopped: false, .. })));
        assert_same(&tree(&root.path().join("in")), &expect);
        let reads = store.reads();
        let total: u64 = expect.values().map(|v| v.len() as u64).sum();
        // A range stopped early goes on from where it stopped: every byte
        // is delivered once, stops included.
        assert!(reads.len() > 20, "{} reads", reads.len());
        assert_eq!(store.delivered(), total);
        let p = svc.progress.load(&JobId::new("in").unwrap()).await.unwrap().ingest.unwrap();
        assert_eq!(p.invocations as usize, continued + 1);
    }

    /// Bytes written but never recorded durable (a crash between the write
    /// and the record) are dropped: the next invocation truncates to the
    /// recorded offset and re-hashes the unfinished part from the file.
    #[tokio::test]
    async fn bytes_past_the_recorded_offset_are_dropped_on_resume() {
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryObjects::new(64));
        store.put("bkt", "p/x", bytes(5000, 9), 1200);
        let svc = services(root.path(), &store, TickClock::new(1_000_000, 1));
        let spec = json!({"bucket": "bkt", "prefix": "p/", "range_bytes": 500, "time_limit_ms": 30, "safety_ms": 10});
        crate::roles::handle(&svc, &start_json(spec), &Invocation::default()).await.unwrap();
        let jd = JobDir::new(root.path(), &JobId::new("in").unwrap());
        let mut done = 0;
        let mut mangled = 0;
        while let Some(e) = svc.invoker.events().get(done).cloned() {
            done += 1;
            if present(&part_path(&jd)) {
                let mut f = fs::OpenOptions::new().append(true).open(part_path(&jd)).unwrap();
                f.write_all(b"garbage that was never recorded").unwrap();
                mangled += 1;
            }
            crate::roles::handle(&svc, &e.to_json(), &Invocation::default()).await.unwrap();
        }
        assert!(mangled >= 3, "{mangled}");
        assert_eq!(fs::read(root.path().join("x")).unwrap(), bytes(5000, 9));
    }

    /// A read that fails part-way keeps what arrived (durable, recorded)
    /// and fails retryably; the retry (Lambda's, of the same event) reads
    /// only the rest.
    #[tokio::test]
    async fn a_read_failing_midway_keeps_what_arrived() {
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryObjects::new(100));
        store.put("bkt", "p/x", bytes(3000, 7), 0);
        let svc = services(root.path(), &store, SystemClock);
        crate::roles::handle(&svc, &start_json(json!({"bucket": "bkt", "prefix": "p/"})), &Invocation::default())
            .await
            .unwrap();
        store.fail_next_read_after(1234);
        let copy = svc.invoker.events()[0].to_json();
        let err = crate::roles::handle(&svc, &copy, &Invocation::default()).await.unwrap_err();
        assert!(err.is_retryable() && err.to_string().contains("connection reset"), "{err}");
        let jd = JobDir::new(root.path(), &JobId::new("in").unwrap());
        assert_eq!(read_state(&jd).unwrap().unwrap().done, 1234, "what arrived is kept");
        let out = crate::roles::handle(&svc, &copy, &Invocation::default()).await.unwrap();
        assert!(matches!(out, Outcome::Ingested { objects: 1, .. }), "{out:?}");
        assert_eq!(fs::read(root.path().join("x")).unwrap(), bytes(3000, 7));
        let ranges: Vec<std::ops::Range<u64>> = store.reads().into_iter().map(|(_, r)| r).collect();
        assert_eq!(ranges, vec![0..3000, 1234..3000]);
    }

    /// Corrupted bytes fail the checksum (for an MD5 ETag, a multipart ETag
    /// and a full-object SHA-256 alike): the copy is discarded, the error is
    /// retryable, and the retry fetches a good copy.
    #[tokio::test]
    async fn corrupted_bytes_fail_the_checksum_and_the_retry_refetches() {
        for (key, part, kms) in [("p/one", 0, false), ("p/multi", 700, false), ("p/kms", 0, true)] {
            let root = tempfile::tempdir().unwrap();
            let store = Arc::new(MemoryObjects::new(128));
            if kms {
                store.put_kms("bkt", key, bytes(2000, 3), true);
            } else {
                store.put("bkt", key, bytes(2000, 3), part);
            }
            let svc = services(root.path(), &store, SystemClock);
            let spec = json!({"bucket": "bkt", "prefix": "p/", "range_bytes": 512});
            crate::roles::handle(&svc, &start_json(spec), &Invocation::default()).await.unwrap();
            store.corrupt_next_reads(1);
            let copy = svc.invoker.events()[0].to_json();
            let err = crate::roles::handle(&svc, &copy, &Invocation::default()).await.unwrap_err();
            assert!(err.is_retryable() && err.to_string().contains("checksum mismatch"), "{key}: {err}");
            let name = key.strip_prefix("p/").unwrap();
            assert!(!root.path().join(name).exists(), "{key}: a bad copy was published");
            crate::roles::handle(&svc, &copy, &Invocation::default()).await.unwrap();
            assert_eq!(fs::read(root.path().join(name)).unwrap(), bytes(2000, 3), "{key}");
        }
    }

    /// What a retry cannot cure ends the job as failed, saying why: an
    /// object replaced after the listing (`If-Match` fails), and one that
    /// cannot be verified (KMS-encrypted, no full-object checksum).
    #[tokio::test]
    async fn unverifiable_or_replaced_objects_fail_the_job_naming_them() {
        for case in ["replaced", "unverifiable"] {
            let root = tempfile::tempdir().unwrap();
            let store = Arc::new(MemoryObjects::new(128));
            store.put("bkt", "p/a", bytes(100, 1), 0);
            if case == "unverifiable" {
                store.put_kms("bkt", "p/b", bytes(100, 2), false);
            } else {
                store.put("bkt", "p/b", bytes(100, 2), 0);
            }
            let svc = services(root.path(), &store, SystemClock);
            crate::roles::handle(&svc, &start_json(json!({"bucket": "bkt", "prefix": "p/"})), &Invocation::default())
                .await
                .unwrap();
            if case == "replaced" {
                store.put("bkt", "p/b", bytes(100, 3), 0);
            }
            let copy = svc.invoker.events()[0].to_json();
            let err = crate::roles::handle(&svc, &copy, &Invocation::default()).await.unwrap_err();
            assert!(!err.is_retryable() && err.to_string().contains("p/b"), "{case}: {err}");
            let needle = if case == "replaced" { "412" } else { "cannot be verified" };
            assert!(err.to_string().contains(needle), "{case}: {err}");
            let r = svc.progress.load(&JobId::new("in").unwrap()).await.unwrap().ingest.unwrap();
            assert_eq!((r.status, r.objects_done), (JobStatus::Failed, 1), "{case}");
            assert!(r.reason.unwrap().contains(needle), "{case}");
            assert_eq!(fs::read(root.path().join("a")).unwrap(), bytes(100, 1), "{case}: the first object stays");
        }
    }

    /// A start that cannot copy the prefix as a whole is refused, naming
    /// the key or file, before anything is written.
    #[tokio::test]
    async fn a_start_that_cannot_copy_everything_writes_nothing() {
        let cases: [(&str, &[&str], &str); 5] = [
            ("empty", &[], "no objects under s3://bkt/p/"),
            ("hidden", &["p/.DS_Store"], "p/.DS_Store"),
            ("dotdot", &["p/a/../../x"], "p/a/../../x"),
            ("exists", &["p/here"], "here exists"),
            ("file-as-folder", &["p/f", "p/f/g"], "needs f to be a folder"),
        ];
        for (case, keys, needle) in cases {
            let root = tempfile::tempdir().unwrap();
            fs::write(root.path().join("here"), b"the user's").unwrap();
            let store = Arc::new(MemoryObjects::new(128));
            for k in keys {
                store.put("bkt", k, bytes(10, 0), 0);
            }
            let svc = services(root.path(), &store, SystemClock);
            let before = tree(root.path());
            let err = crate::roles::handle(
                &svc,
                &start_json(json!({"bucket": "bkt", "prefix": "p/"})),
                &Invocation::default(),
            )
            .await
            .unwrap_err();
            assert!(err.to_string().contains(needle) && !err.is_retryable(), "{case}: {err}");
            assert!(tree(root.path()) == before, "{case}: something was written");
            assert!(svc.invoker.events().is_empty(), "{case}");
        }
    }

    /// A stop request ends the copy at the next range; a duplicate copy
    /// delivery while one holds the lock ends at once; resume invokes a copy.
    #[tokio::test]
    async fn stop_lock_and_resume() {
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryObjects::new(128));
        store.put("bkt", "p/a", bytes(1000, 1), 0);
        store.put("bkt", "p/b", bytes(1000, 2), 0);
        let svc = services(root.path(), &store, SystemClock);
        let spec = json!({"bucket": "bkt", "prefix": "p/", "range_bytes": 100});
        crate::roles::handle(&svc, &start_json(spec), &Invocation::default()).await.unwrap();
        let jd = JobDir::new(root.path(), &JobId::new("in").unwrap());
        let copy = svc.invoker.events()[0].to_json();
        {
            let _held = try_lock(&jd).unwrap().unwrap();
            let out = crate::roles::handle(&svc, &copy, &Invocation::default()).await.unwrap();
            assert!(matches!(&out, Outcome::Skipped(why) if why.contains("another copy")), "{out:?}");
        }
        let resumed = crate::roles::handle(&svc, &json!({"resume": true, "job": "in"}), &Invocation::default()).await;
        assert!(matches!(resumed.unwrap(), Outcome::Resumed { what: "ingest copy", .. }));
        assert_eq!(svc.invoker.events().len(), 2);
        let stop = crate::roles::handle(&svc, &json!({"stop": true, "job": "in"}), &Invocation::default()).await;
        assert_eq!(stop.unwrap(), Outcome::StopRequested);
        let out = crate::roles::handle(&svc, &copy, &Invocation::default()).await.unwrap();
        assert_eq!(out, Outcome::Ingested { objects: 0, bytes: 0, stopped: true });
        assert!(!root.path().join("a").exists());
        let r = svc.progress.load(&jd.job).await.unwrap().ingest.unwrap();
        assert_eq!(r.status, JobStatus::Stopped);
    }
}
