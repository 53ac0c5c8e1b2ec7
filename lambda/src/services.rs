//! What a role needs from the world, as small traits: an invoker, a progress
//! store ([`crate::progress::ProgressStore`]), a clock, a fault probe, and the
//! storage root (a path: EFS is a POSIX mount on Lambda, a folder locally).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use lml_kernel::dataset::ImageDataset;
use lml_kernel::trainer::{CachedFeatures, FeatureSource, ImageFeatures};
use lml_kernel::Vgg19;

use crate::error::{ProtocolError, Result};
use crate::event::Event;
use crate::spec::{relative_path, DataSpec};

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
        self.events.lock().expect("not poisoned").clone()
    }
}

impl Invoker for RecordingInvoker {
    async fn invoke(&self, event: &Event) -> Result<()> {
        self.events.lock().expect("not poisoned").push(event.clone());
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

/// vCPUs (and so compute threads) AWS Lambda gives a function of `memory_mb`:
/// one per 1,769 MB, at least one, at most six.
pub fn lambda_threads(memory_mb: u32) -> usize {
    (memory_mb as usize).div_ceil(1769).clamp(1, 6)
}

type Source = Arc<dyn FeatureSource + Send>;

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
    sources: Mutex<HashMap<String, Source>>,
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
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the fault probe.
    pub fn with_probe(mut self, probe: Arc<dyn Probe>) -> Self {
        self.probe = probe;
        self
    }

    /// The feature source of `data`, opened once per process and kept (a warm
    /// Lambda sandbox keeps its mappings and packed VGG filters across invocations).
    ///
    /// # Errors
    /// Kernel errors naming the file that cannot be opened.
    pub fn source(&self, data: &DataSpec) -> Result<Source> {
        let key = serde_json::to_string(data).expect("serialisable");
        if let Some(s) = self.sources.lock().expect("not poisoned").get(&key) {
            return Ok(s.clone());
        }
        let s = open_source(&self.root, data)?;
        self.sources.lock().expect("not poisoned").insert(key, s.clone());
        Ok(s)
    }

    /// The rayon pool of [`threads`](Self::threads) threads.
    ///
    /// # Errors
    /// If the pool cannot be built.
    pub fn pool(&self) -> Result<Arc<rayon::ThreadPool>> {
        pool(self.threads)
    }
}

/// Opens the feature source a [`DataSpec`] describes, under `root`.
///
/// # Errors
/// [`ProtocolError::BadSpec`] on an invalid spec; kernel errors naming the
/// file that is missing or malformed.
pub fn open_source(root: &Path, data: &DataSpec) -> Result<Source> {
    data.validate("data")?;
    let path = |field: &str, p: &str| relative_path(field, p).map(|p| root.join(p));
    let labels = path("labels", &data.labels)?;
    match (&data.features, &data.images, &data.weights) {
        (Some(f), None, None) => Ok(Arc::new(CachedFeatures::open(path("features", f)?, labels)?)),
        (None, Some(x), Some(w)) => {
            let dataset = ImageDataset::open(path("images", x)?, labels)?;
            let vgg = Vgg19::open(
                path("weights", w)?,
                data.input_size.unwrap_or(32),
                data.cut.unwrap_or(lml_kernel::Cut::Fc7),
            )?;
            Ok(Arc::new(ImageFeatures { dataset, vgg }))
        }
        _ => Err(ProtocolError::spec("data", "give features, or images with weights")),
    }
}

/// One shared pool per thread count, built on first use.
fn pool(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS.get_or_init(Default::default).lock().expect("not poisoned");
    if let Some(p) = pools.get(&threads) {
        return Ok(p.clone());
    }
    let p = Arc::new(lml_kernel::parallel::thread_pool(threads)?);
    pools.insert(threads, p.clone());
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

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
