//! What a role needs from the world, as small traits: an invoker, a progress
//! store ([`crate::progress::ProgressStore`]), a clock, a fault probe, and the
//! storage root (a path: EFS is a POSIX mount on Lambda, a folder locally).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use lml_kernel::dataset::ImageDataset;
use lml_kernel::trainer::{CachedFeatures, FeatureSource, ImageFeatures};
use lml_kernel::Vgg19;

use crate::error::{ProtocolError, Result};
use crate::event::Event;
use crate::spec::{relative_path, resolve_inside, DataSpec};

/// Sends an event to the function asynchronously (Lambda's `Event` invocation
/// type): returns once the event is accepted, not when it has run. Delivery
/// is at least once.
pub trait Invoker: Send + Sync + 'static {
    fn invoke(&self, event: &Event) -> impl Future<Output = Result<()>> + Send;
}

impl<T: Invoker> Invoker for Arc<T> {
    fn invoke(&self, event: &Event) -> impl Future<Output = Result<()>> + Send {
        (**self).invoke(event)
    }
}

/// An invoker that only records what it is asked to send: for tests,
/// benchmarks, and driving roles one at a time by hand.
#[derive(Debug, Default)]
pub struct RecordingInvoker {
    events: Mutex<Vec<Event>>,
}

impl RecordingInvoker {
    /// The events sent so far, in order.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }
}

impl Invoker for RecordingInvoker {
    async fn invoke(&self, event: &Event) -> Result<()> {
        lock(&self.events).push(event.clone());
        Ok(())
    }
}

/// Wall time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// A deterministic clock for tests: every reading advances it by `tick` ms.
#[derive(Debug)]
pub struct TickClock {
    now: AtomicU64,
    tick: u64,
}

impl TickClock {
    pub fn new(start_ms: u64, tick_ms: u64) -> Self {
        TickClock { now: AtomicU64::new(start_ms), tick: tick_ms }
    }
}

impl Clock for TickClock {
    fn now_ms(&self) -> u64 {
        self.now.fetch_add(self.tick, Ordering::Relaxed)
    }
}

/// Named points in the roles where a test runtime may observe or inject a
/// crash (`Err(ProtocolError::Crashed)`); production uses [`NoFaults`].
pub trait Probe: Send + Sync + 'static {
    /// Called when a role reaches `point` for `round`.
    ///
    /// # Errors
    /// [`ProtocolError::Crashed`] to make the invocation die right there.
    fn at(&self, point: &'static str, round: u64) -> Result<()>;
}

/// No faults, no observation.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFaults;

impl Probe for NoFaults {
    fn at(&self, _: &'static str, _: u64) -> Result<()> {
        Ok(())
    }
}

/// What the runtime says about one invocation.
#[derive(Clone, Debug, Default)]
pub struct Invocation {
    pub request_id: String,
    /// The invocation's deadline (ms since the epoch), if the runtime gave one.
    pub deadline_ms: Option<u64>,
}

impl Invocation {
    /// The deadline to plan against: the runtime's if it is plausible (in the
    /// future and at most 15 minutes away), else now + `fallback_ms`.
    pub fn effective_deadline(&self, now_ms: u64, fallback_ms: u64) -> u64 {
        match self.deadline_ms {
            Some(d) if d > now_ms && d - now_ms <= crate::spec::LAMBDA_MAX_MS + 60_000 => d,
            _ => now_ms + fallback_ms,
        }
    }
}

/// Compute threads for a function of `memory_mb`: one per started
/// [`crate::cost::MB_PER_VCPU`] (1,769 MB), at least one, at most
/// [`crate::cost::MAX_THREADS`] (see [`crate::cost::compute_threads`]).
pub fn lambda_threads(memory_mb: u32) -> usize {
    crate::cost::compute_threads(memory_mb)
}

/// Locks `m`, recovering it if a panic poisoned it: every mutex in this
/// crate guards a collection each update of which is one call that leaves it
/// valid, so a panic in some invocation while it held the lock must not turn
/// every later invocation of the process (a warm Lambda sandbox) into a panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type Source = Arc<dyn FeatureSource + Send>;

/// A feature source kept open, and the identity of every file it was opened
/// from when it was opened.
struct CachedSource {
    source: Source,
    files: Vec<(PathBuf, Option<FileId>)>,
}

/// Everything a role runs with.
pub struct Services<I, P, C> {
    /// The storage root (EFS mount or local folder).
    pub root: PathBuf,
    pub invoker: I,
    pub progress: P,
    pub clock: C,
    pub probe: Arc<dyn Probe>,
    /// Compute threads per invocation.
    pub threads: usize,
    /// Where ingest jobs read from (S3 on Lambda); none: ingest events are refused.
    pub objects: Option<Arc<dyn crate::objects::ObjectStore>>,
    sources: Mutex<HashMap<String, CachedSource>>,
}

impl<I: Invoker, P: crate::progress::ProgressStore, C: Clock> Services<I, P, C> {
    pub fn new(root: impl Into<PathBuf>, invoker: I, progress: P, clock: C, threads: usize) -> Self {
        Services {
            root: root.into(),
            invoker,
            progress,
            clock,
            probe: Arc::new(NoFaults),
            threads: threads.max(1),
            objects: None,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Sets the object store ingest jobs read from.
    pub fn with_objects(mut self, objects: Arc<dyn crate::objects::ObjectStore>) -> Self {
        self.objects = Some(objects);
        self
    }

    /// Replaces the fault probe.
    pub fn with_probe(mut self, probe: Arc<dyn Probe>) -> Self {
        self.probe = probe;
        self
    }

    /// The feature source of `data`, opened once per process and kept (a warm
    /// Lambda sandbox keeps its mappings and packed VGG filters across
    /// invocations) until one of its files is replaced: every call compares
    /// the files' identity (device, inode, size, modification time) with
    /// what it was when they were opened, and reopens them if it changed.
    /// A source handed out earlier keeps its mappings, so an invocation
    /// running while a file is replaced by `rename` reads the old file to
    /// its end; the next call reads the new one.
    ///
    /// # Errors
    /// As [`open_source`].
    pub fn source(&self, data: &DataSpec) -> Result<Source> {
        let key = serde_json::to_string(data).expect("serialisable");
        let paths = DataPaths::new(&self.root, data)?;
        // The identity is taken before the files are opened: a file replaced
        // in between is then seen as changed on the next call and reopened,
        // never kept under the new file's identity.
        let files = paths.identity();
        if let Some(c) = lock(&self.sources).get(&key) {
            if c.files == files {
                return Ok(c.source.clone());
            }
        }
        let source = paths.open(data)?;
        lock(&self.sources).insert(key, CachedSource { source: source.clone(), files });
        Ok(source)
    }

    /// The rayon pool of [`threads`](Self::threads) threads.
    ///
    /// # Errors
    /// If the pool cannot be built.
    pub fn pool(&self) -> Result<PoolLease> {
        pool(self.threads)
    }
}

/// Opens the feature source a [`DataSpec`] describes, under `root`.
///
/// Every path must stay under the storage root: lexically (relative,
/// without `..`: [`DataSpec::validate`]) and once symbolic links are
/// resolved; a link inside the root that points inside it is followed.
/// The files opened are those the resolved paths name.
///
/// # Errors
/// [`ProtocolError::BadSpec`] on an invalid spec or a path that resolves
/// outside the root (naming the field and both paths); kernel errors naming
/// the file that is missing or malformed.
pub fn open_source(root: &Path, data: &DataSpec) -> Result<Source> {
    DataPaths::new(root, data)?.open(data)
}

/// What tells one version of a file from another: a replacement by `rename`
/// has another inode; a rewrite in place (which the system never does; see
/// [`lml_kernel::npy::MappedNpy`]) changes the size or modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileId {
    /// The identity of the file at `path`, following symbolic links (a link
    /// pointed elsewhere is a change too); `None` if it cannot be read.
    fn of(path: &Path) -> Option<FileId> {
        let m = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        Some(FileId { dev, ino, size: m.len(), modified: m.modified().ok() })
    }
}

/// The files of a [`DataSpec`], joined onto the storage root (not yet resolved).
pub(crate) struct DataPaths {
    root: PathBuf,
    /// `(field, as written, root/as written)`.
    files: Vec<(&'static str, String, PathBuf)>,
}

impl DataPaths {
    /// Validates `data` and joins its paths onto `root`.
    pub(crate) fn new(root: &Path, data: &DataSpec) -> Result<Self> {
        data.validate("data")?;
        let mut files = Vec::new();
        let named = [
            ("features", data.features.as_ref()),
            ("images", data.images.as_ref()),
            ("labels", Some(&data.labels)),
            ("weights", data.weights.as_ref()),
        ];
        for (field, p) in named {
            if let Some(p) = p {
                files.push((field, p.clone(), root.join(relative_path(field, p)?)));
            }
        }
        Ok(DataPaths { root: root.to_path_buf(), files })
    }

    /// The identity of every file the source maps: the features or images,
    /// the labels, and the weight directory with every file in it.
    fn identity(&self) -> Vec<(PathBuf, Option<FileId>)> {
        let mut ids = Vec::new();
        for (field, _, path) in &self.files {
            ids.push((path.clone(), FileId::of(path)));
            if *field == "weights" {
                let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                    .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                    .unwrap_or_default();
                inside.sort();
                ids.extend(inside.into_iter().map(|p| {
                    let id = FileId::of(&p);
                    (p, id)
                }));
            }
        }
        ids
    }

    /// `field`'s path with every symbolic link resolved, refused if that
    /// leaves the storage root. A path that does not resolve (a missing file)
    /// is returned as joined, for the open to report it by name.
    pub(crate) fn resolve(&self, field: &'static str) -> Result<Option<PathBuf>> {
        let Some((_, written, joined)) = self.files.iter().find(|(f, _, _)| *f == field) else { return Ok(None) };
        let resolved = resolve_inside(&self.root, field, written, joined)?;
        if field == "weights" && resolved.is_dir() {
            // The weight store opens the files inside by name: each must stay inside too.
            for entry in std::fs::read_dir(&resolved).map_err(|e| ProtocolError::io(&resolved, e))? {
                let entry = entry.map_err(|e| ProtocolError::io(&resolved, e))?;
                resolve_inside(&self.root, field, written, &entry.path())?;
            }
        }
        Ok(Some(resolved))
    }

    /// Resolves every path (refusing those outside the root) and opens the source.
    fn open(&self, data: &DataSpec) -> Result<Source> {
        let labels = self.resolve("labels")?.expect("labels are required");
        match (self.resolve("features")?, self.resolve("images")?, self.resolve("weights")?) {
            (Some(f), None, None) => Ok(Arc::new(CachedFeatures::open(f, labels)?)),
            (None, Some(x), Some(w)) => {
                let dataset = ImageDataset::open(x, labels)?;
                let vgg = Vgg19::open(w, data.input_size(), data.cut())?;
                Ok(Arc::new(ImageFeatures { dataset, vgg }))
            }
            _ => Err(ProtocolError::spec("data", "give features, or images with weights")),
        }
    }
}

/// A rayon pool lent to one invocation, as a Lambda sandbox has CPUs of its
/// own: invocations running at once hold distinct pools (so a local runtime's
/// concurrent workers compute in parallel instead of queueing on one pool);
/// a pool given back is lent again to the next invocation (a warm sandbox).
pub struct PoolLease {
    pool: Option<rayon::ThreadPool>,
    threads: usize,
}

impl std::ops::Deref for PoolLease {
    type Target = rayon::ThreadPool;
    fn deref(&self) -> &rayon::ThreadPool {
        self.pool.as_ref().expect("a lease holds its pool until dropped")
    }
}

impl Drop for PoolLease {
    fn drop(&mut self) {
        if let Some(p) = self.pool.take() {
            lock(idle_pools()).entry(self.threads).or_default().push(p);
        }
    }
}

fn idle_pools() -> &'static Mutex<HashMap<usize, Vec<rayon::ThreadPool>>> {
    static IDLE: OnceLock<Mutex<HashMap<usize, Vec<rayon::ThreadPool>>>> = OnceLock::new();
    IDLE.get_or_init(Default::default)
}

/// Lends an idle pool of `threads` threads, or builds one.
fn pool(threads: usize) -> Result<PoolLease> {
    let idle = lock(idle_pools()).get_mut(&threads).and_then(Vec::pop);
    let pool = match idle {
        Some(p) => p,
        None => lml_kernel::parallel::thread_pool(threads)?,
    };
    Ok(PoolLease { pool: Some(pool), threads })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_poisoned_by_a_panic_is_recovered() {
        let m = Arc::new(Mutex::new(vec![1]));
        let held = m.clone();
        let panicked = std::thread::spawn(move || {
            let mut v = held.lock().unwrap();
            v.push(2);
            panic!("while holding the lock");
        })
        .join();
        assert!(panicked.is_err() && m.is_poisoned());
        lock(&m).push(3);
        assert_eq!(*lock(&m), vec![1, 2, 3]);
    }

    #[test]
    fn memory_buys_one_thread_per_1769_mb_up_to_six() {
        let table = [(128, 1), (1769, 1), (1770, 2), (3538, 2), (5307, 3), (8192, 5), (10240, 6), (20000, 6)];
        for (mb, threads) in table {
            assert_eq!(lambda_threads(mb), threads, "{mb} MB");
        }
    }

    #[test]
    fn implausible_deadlines_fall_back_to_the_configured_limit() {
        let now = 1_800_000_000_000;
        let inv = |d| Invocation { request_id: String::new(), deadline_ms: d };
        assert_eq!(inv(Some(now + 60_000)).effective_deadline(now, 5_000), now + 60_000);
        assert_eq!(inv(None).effective_deadline(now, 5_000), now + 5_000);
        // `cargo lambda watch` sends 600000 ms after the epoch: long past.
        assert_eq!(inv(Some(600_000)).effective_deadline(now, 5_000), now + 5_000);
        // More than 15 minutes (+ slack) away is not a Lambda deadline either.
        assert_eq!(inv(Some(now + 3_600_000)).effective_deadline(now, 5_000), now + 5_000);
    }
}
