//! The local runtime: the same handler, run in this process with AWS Lambda's
//! semantics for asynchronous invokes.
//!
//! * `invoke` returns as soon as the event is queued (Lambda answers 202).
//! * Delivery is at least once; a failed invocation (an error that
//!   [`ProtocolError::is_retryable`], an injected crash, a panic, or a run
//!   past the time limit) is retried up to [`LocalConfig::retries`] times
//!   (Lambda: 2), then recorded as a dead letter, as Lambda's on-failure
//!   destination would. A panic is caught (each invocation runs in its own
//!   task), logged to stderr with its event, and counts as a failure.
//! * Every invocation gets a deadline of now + the time limit, and the
//!   compute threads a function of the memory size gets (1,769 MB per vCPU,
//!   at most 6). At most [`LocalConfig::concurrency`] invocations run at once.
//! * For tests, a [`FaultPlan`] duplicates deliveries, delays them at random
//!   (so they arrive out of order), crashes or panics invocations at the
//!   roles' probe points, and fails publications with `ENOSPC`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::error::{ProtocolError, Result};
use crate::event::Event;
use crate::layout::faults::{self as publish_faults, PublishFaults};
use crate::progress::{LocalProgress, ProgressStore};
use crate::roles::{handle, Outcome};
use crate::services::{lambda_threads, lock, Clock, Invocation, Invoker, Probe, Services};

/// How the local runtime behaves.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// Function memory (MB): sets the compute threads per invocation.
    pub memory_mb: u32,
    /// Invocation time limit (ms): the deadline each invocation gets.
    pub time_limit_ms: u64,
    /// Whether an invocation that ran past its limit counts as failed (and is
    /// retried). Off for tests on a virtual clock.
    pub enforce_time_limit: bool,
    /// Most invocations running at once (Lambda's reserved concurrency).
    pub concurrency: usize,
    /// Retries of a failed invocation (Lambda retries asynchronous events twice).
    pub retries: u32,
    pub faults: FaultPlan,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            memory_mb: 3538,
            time_limit_ms: 900_000,
            enforce_time_limit: true,
            concurrency: 64,
            retries: 2,
            faults: FaultPlan::default(),
        }
    }
}

/// Faults to inject, drawn from a seeded generator.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    pub seed: u64,
    /// Probability that a delivery is duplicated.
    pub duplicate: f64,
    /// Deliveries wait a random 0..=this many ms (reordering them).
    pub max_delay_ms: u64,
    /// Probability that an invocation dies ([`ProtocolError::Crashed`]) at each probe point it reaches.
    pub crash: f64,
    /// Probability that an invocation panics at each probe point it reaches.
    pub panic: f64,
    /// Probability that a publication (bundle, claim or record) fails with
    /// `ENOSPC` after some of its bytes are written, before it is visible.
    pub enospc: f64,
    /// The probe points where crashes and panics may happen; empty: all.
    pub points: Vec<String>,
}

/// The environment variable [`FaultPlan::from_env`] reads.
pub const FAULTS_VAR: &str = "LML_FAULTS";

impl FaultPlan {
    /// The plan in `LML_FAULTS`, or no faults if it is unset: comma-separated
    /// `key=value`s of `seed`, `duplicate`, `delay_ms`, `crash`, `panic`,
    /// `enospc` (probabilities in 0..=1) and `at` (a probe point; repeat it
    /// for several), e.g. `LML_FAULTS=crash=0.05,duplicate=0.2,seed=7` or
    /// `LML_FAULTS=panic=1,at=worker.begin`.
    ///
    /// # Errors
    /// [`ProtocolError::BadEnv`] naming the key that is unknown or malformed.
    pub fn from_env() -> Result<Self> {
        match std::env::var(FAULTS_VAR) {
            Ok(text) => Self::parse(&text),
            Err(std::env::VarError::NotPresent) => Ok(FaultPlan::default()),
            Err(e) => Err(ProtocolError::BadEnv { var: FAULTS_VAR, reason: e.to_string() }),
        }
    }

    /// Parses the `LML_FAULTS` syntax (see [`from_env`](Self::from_env)).
    ///
    /// # Errors
    /// [`ProtocolError::BadEnv`] naming the key that is unknown or malformed.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason: String| ProtocolError::BadEnv { var: FAULTS_VAR, reason };
        let mut plan = FaultPlan::default();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| bad(format!("{item:?} is not key=value")))?;
            let probability = || -> Result<f64> {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| bad(format!("{key}: {value:?} is not a probability in 0..=1")))
            };
            let integer =
                || value.parse::<u64>().map_err(|_| bad(format!("{key}: {value:?} is not a non-negative integer")));
            match key.trim() {
                "seed" => plan.seed = integer()?,
                "duplicate" => plan.duplicate = probability()?,
                "delay_ms" => plan.max_delay_ms = integer()?,
                "crash" => plan.crash = probability()?,
                "panic" => plan.panic = probability()?,
                "enospc" => plan.enospc = probability()?,
                "at" => plan.points.push(value.trim().to_string()),
                other => {
                    return Err(bad(format!(
                        "unknown key {other:?} (known: seed, duplicate, delay_ms, crash, panic, enospc, at)"
                    )))
                }
            }
        }
        Ok(plan)
    }
}

/// One failed delivery, after its last retry.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub event: Value,
    pub error: String,
}

struct Delivery {
    payload: Value,
    attempt: u32,
    delay_ms: u64,
    _pending: Pending,
}

/// One delivery counted as pending until this drops: when it has run (and
/// any retry is queued, counted by its own guard), when its task ends in
/// any way at all, or when the queue is dropped with it unrun.
struct Pending(Arc<Shared>);

impl Drop for Pending {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Counts deliveries in flight and wakes waiters when none is left.
struct Shared {
    pending: AtomicUsize,
    idle: Notify,
    rng: Mutex<ChaCha8Rng>,
    dead: Mutex<Vec<DeadLetter>>,
    failures: Mutex<Vec<DeadLetter>>,
    invocations: AtomicU64,
    duplicates: AtomicU64,
}

/// The local [`Invoker`]: queues events for the runtime's dispatcher.
#[derive(Clone)]
pub struct LocalInvoker {
    tx: mpsc::UnboundedSender<Delivery>,
    shared: Arc<Shared>,
    plan: FaultPlan,
}

impl LocalInvoker {
    fn send(&self, payload: Value, attempt: u32, delay_ms: u64) -> Result<()> {
        self.shared.pending.fetch_add(1, Ordering::SeqCst);
        let pending = Pending(self.shared.clone());
        // A refused delivery comes back inside the error and drops its guard.
        self.tx
            .send(Delivery { payload, attempt, delay_ms, _pending: pending })
            .map_err(|_| ProtocolError::Invoke("the local runtime has shut down".into()))
    }
}

impl Invoker for LocalInvoker {
    async fn invoke(&self, event: &Event) -> Result<()> {
        // Events travel as JSON, as they do to Lambda.
        let payload = event.to_json();
        let delays: Vec<u64> = {
            let mut rng = lock(&self.shared.rng);
            let copies = if rng.random_bool(self.plan.duplicate.clamp(0.0, 1.0)) { 2 } else { 1 };
            if copies > 1 {
                self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            (0..copies).map(|_| rng.random_range(0..=self.plan.max_delay_ms)).collect()
        };
        for delay in delays {
            self.send(payload.clone(), 0, delay)?;
        }
        Ok(())
    }
}

/// Crashes or panics at probe points with fixed probabilities, and counts every point reached.
pub struct CrashProbe {
    crash: f64,
    panic: f64,
    points: Vec<String>,
    rng: Mutex<ChaCha8Rng>,
    hits: Mutex<BTreeMap<(&'static str, u64), usize>>,
    crashes: AtomicU64,
    panics: AtomicU64,
}

impl CrashProbe {
    /// A probe injecting `plan`'s crashes and panics, drawn from `seed`.
    pub fn new(plan: &FaultPlan, seed: u64) -> Self {
        CrashProbe {
            crash: plan.crash.clamp(0.0, 1.0),
            panic: plan.panic.clamp(0.0, 1.0),
            points: plan.points.clone(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            hits: Mutex::new(BTreeMap::new()),
            crashes: AtomicU64::new(0),
            panics: AtomicU64::new(0),
        }
    }

    /// Crashes injected so far.
    pub fn crashes(&self) -> u64 {
        self.crashes.load(Ordering::Relaxed)
    }

    /// Panics injected so far.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// How often each `(point, round)` was reached (counted before any crash there).
    pub fn hits(&self) -> BTreeMap<(&'static str, u64), usize> {
        lock(&self.hits).clone()
    }
}

impl Probe for CrashProbe {
    fn at(&self, point: &'static str, round: u64) -> Result<()> {
        *lock(&self.hits).entry((point, round)).or_default() += 1;
        if !self.points.is_empty() && !self.points.iter().any(|p| p == point) {
            return Ok(());
        }
        // Drawn, and the lock released, before anything is injected.
        let (crash, panic) = {
            let mut rng = lock(&self.rng);
            (self.crash > 0.0 && rng.random_bool(self.crash), self.panic > 0.0 && rng.random_bool(self.panic))
        };
        if panic {
            self.panics.fetch_add(1, Ordering::Relaxed);
            panic!("injected panic at {point} (round {round})");
        }
        if crash {
            self.crashes.fetch_add(1, Ordering::Relaxed);
            return Err(ProtocolError::Crashed(point));
        }
        Ok(())
    }
}

/// Fails publications under the runtime's root with `ENOSPC`, at random.
struct FullDisk {
    probability: f64,
    rng: Mutex<ChaCha8Rng>,
    injected: AtomicU64,
}

impl PublishFaults for FullDisk {
    fn before_publish(&self, _: &Path) -> std::io::Result<()> {
        if lock(&self.rng).random_bool(self.probability) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device (injected)"));
        }
        Ok(())
    }
}

/// The runtime: a dispatcher that runs queued events through [`handle`].
pub struct LocalRuntime<C: Clock, P: ProgressStore = LocalProgress> {
    svc: Arc<Services<LocalInvoker, P, C>>,
    invoker: LocalInvoker,
    shared: Arc<Shared>,
    probe: Arc<CrashProbe>,
    full_disk: Option<(Arc<FullDisk>, publish_faults::Registered)>,
    dispatcher: tokio::task::JoinHandle<()>,
}

impl<C: Clock, P: ProgressStore> Drop for LocalRuntime<C, P> {
    /// Stops dispatching (deliveries still queued are dropped, as when a
    /// process dies); invocations already running finish on their own.
    fn drop(&mut self) {
        self.dispatcher.abort();
    }
}

impl<C: Clock> LocalRuntime<C, LocalProgress> {
    /// Starts a runtime over the storage root `root`, with progress files in
    /// the job folders. Must be called inside a multi-threaded tokio runtime
    /// (the dispatcher is a task on it).
    pub fn start(root: impl Into<PathBuf>, clock: C, config: LocalConfig) -> Self {
        let root = root.into();
        let progress = LocalProgress::new(root.clone());
        Self::start_with(root, clock, progress, config)
    }
}

impl<C: Clock, P: ProgressStore> LocalRuntime<C, P> {
    /// Starts a runtime over `root` with another progress store (e.g. DynamoDB).
    pub fn start_with(root: impl Into<PathBuf>, clock: C, progress: P, config: LocalConfig) -> Self {
        let root = root.into();
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            pending: AtomicUsize::new(0),
            idle: Notify::new(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(config.faults.seed)),
            dead: Mutex::new(Vec::new()),
            failures: Mutex::new(Vec::new()),
            invocations: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        });
        let invoker = LocalInvoker { tx, shared: shared.clone(), plan: config.faults.clone() };
        let probe = Arc::new(CrashProbe::new(&config.faults, config.faults.seed ^ 0x5eed));
        let full_disk = (config.faults.enospc > 0.0).then(|| {
            let hook = Arc::new(FullDisk {
                probability: config.faults.enospc.min(1.0),
                rng: Mutex::new(ChaCha8Rng::seed_from_u64(config.faults.seed ^ 0xd15c)),
                injected: AtomicU64::new(0),
            });
            let registered = publish_faults::register(&root, hook.clone());
            (hook, registered)
        });
        let svc = Services::new(root, invoker.clone(), progress, clock, lambda_threads(config.memory_mb))
            .with_probe(probe.clone());
        let svc = Arc::new(svc);
        let dispatcher = tokio::spawn(dispatch(rx, svc.clone(), invoker.clone(), shared.clone(), config));
        LocalRuntime { svc, invoker, shared, probe, full_disk, dispatcher }
    }

    /// Sends `event` as a client would (asynchronously, at least once).
    ///
    /// # Errors
    /// [`ProtocolError::Invoke`] if the runtime has shut down.
    pub async fn invoke(&self, event: &Event) -> Result<()> {
        self.invoker.invoke(event).await
    }

    /// Sends a raw JSON payload exactly once (no fault injection), as `aws lambda invoke` would.
    ///
    /// # Errors
    /// [`ProtocolError::Invoke`] if the runtime has shut down.
    pub fn invoke_payload(&self, payload: Value) -> Result<()> {
        self.invoker.send(payload, 0, 0)
    }

    /// Runs one event to completion, without queueing, duplicates or
    /// retries: what a synchronous (`RequestResponse`) invoke returns.
    ///
    /// # Errors
    /// The handler's error; [`ProtocolError::Panicked`] if it panicked.
    pub async fn call(&self, payload: &Value) -> Result<Outcome> {
        let inv = Invocation { request_id: "sync".into(), deadline_ms: None };
        run_caught(self.svc.clone(), payload.clone(), inv).await
    }

    /// Waits until no delivery is queued, running or waiting for a retry.
    pub async fn idle(&self) {
        loop {
            let notified = self.shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Deliveries that failed after their last retry.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        lock(&self.shared.dead).clone()
    }

    /// Every failed attempt, retried or not (injected crashes included).
    pub fn failures(&self) -> Vec<DeadLetter> {
        lock(&self.shared.failures).clone()
    }

    /// Invocations run so far (every attempt of every delivery).
    pub fn invocations(&self) -> u64 {
        self.shared.invocations.load(Ordering::Relaxed)
    }

    /// Probe points reached, per round.
    pub fn probe_hits(&self) -> BTreeMap<(&'static str, u64), usize> {
        self.probe.hits()
    }

    /// Crashes injected so far.
    pub fn crashes(&self) -> u64 {
        self.probe.crashes()
    }

    /// Panics injected so far.
    pub fn panics(&self) -> u64 {
        self.probe.panics()
    }

    /// `ENOSPC` failures injected into publications so far.
    pub fn enospc(&self) -> u64 {
        self.full_disk.as_ref().map_or(0, |(hook, _)| hook.injected.load(Ordering::Relaxed))
    }

    /// Deliveries duplicated so far.
    pub fn duplicates(&self) -> u64 {
        self.shared.duplicates.load(Ordering::Relaxed)
    }

    /// The services the handler runs with (root, progress store, clock).
    pub fn services(&self) -> &Services<LocalInvoker, P, C> {
        &self.svc
    }
}

/// Runs `handle` in a task of its own, so that a panic inside it ends that
/// task only and comes back as [`ProtocolError::Panicked`].
async fn run_caught<C: Clock, P: ProgressStore>(
    svc: Arc<Services<LocalInvoker, P, C>>,
    payload: Value,
    inv: Invocation,
) -> Result<Outcome> {
    let task = tokio::spawn(async move { handle(&svc, &payload, &inv).await });
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(ProtocolError::Panicked(panic_message(e.into_panic()))),
        Err(e) => Err(ProtocolError::Panicked(format!("the invocation's task ended without a result: {e}"))),
    }
}

/// The message a panic was raised with (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "a panic with a non-string payload".into(),
        },
    }
}

async fn dispatch<C: Clock, P: ProgressStore>(
    mut rx: mpsc::UnboundedReceiver<Delivery>,
    svc: Arc<Services<LocalInvoker, P, C>>,
    invoker: LocalInvoker,
    shared: Arc<Shared>,
    config: LocalConfig,
) {
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let next_id = Arc::new(AtomicU64::new(0));
    while let Some(d) = rx.recv().await {
        let (svc, invoker, shared, slots, config, next_id) =
            (svc.clone(), invoker.clone(), shared.clone(), slots.clone(), config.clone(), next_id.clone());
        // `d` owns its pending count: however this task ends, it is released.
        tokio::spawn(async move {
            if d.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(d.delay_ms)).await;
            }
            let result = {
                let _slot = slots.acquire().await.expect("never closed");
                shared.invocations.fetch_add(1, Ordering::Relaxed);
                let id = format!("local-{}", next_id.fetch_add(1, Ordering::Relaxed));
                let now = svc.clock.now_ms();
                let inv = Invocation { request_id: id.clone(), deadline_ms: Some(now + config.time_limit_ms) };
                let started = std::time::Instant::now();
                let r = run_caught(svc, d.payload.clone(), inv).await;
                let over = started.elapsed() > Duration::from_millis(config.time_limit_ms);
                match r {
                    Ok(_) if config.enforce_time_limit && over => {
                        Err((true, format!("timed out after {} ms", config.time_limit_ms)))
                    }
                    Ok(_) => Ok(()),
                    Err(e) => {
                        if let ProtocolError::Panicked(_) = e {
                            eprintln!(
                                "lml: invocation {id} (attempt {} of {}) failed: {e}; event: {}",
                                d.attempt + 1,
                                config.retries + 1,
                                d.payload
                            );
                        }
                        Err((e.is_retryable(), e.to_string()))
                    }
                }
            };
            if let Err((retryable, error)) = result {
                lock(&shared.failures).push(DeadLetter { event: d.payload.clone(), error: error.clone() });
                if retryable && d.attempt < config.retries {
                    // Lambda waits about a minute, then two; a short backoff keeps the order shuffled.
                    let _ = invoker.send(d.payload.clone(), d.attempt + 1, 1 + u64::from(d.attempt) * 5);
                } else {
                    lock(&shared.dead).push(DeadLetter { event: d.payload.clone(), error });
                }
            }
            drop(d);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_plans_parse_from_the_environment_syntax() {
        let plan =
            FaultPlan::parse("seed=7, crash=0.05,panic=1,enospc=0.5,duplicate=0.2,delay_ms=3,at=a.b,at=c").unwrap();
        let expected = FaultPlan {
            seed: 7,
            duplicate: 0.2,
            max_delay_ms: 3,
            crash: 0.05,
            panic: 1.0,
            enospc: 0.5,
            points: vec!["a.b".into(), "c".into()],
        };
        assert_eq!(plan, expected);
        assert_eq!(FaultPlan::parse("").unwrap(), FaultPlan::default());
        for (text, needle) in [
            ("crash=2", "crash: \"2\" is not a probability"),
            ("panic=-0.1", "panic: \"-0.1\" is not a probability"),
            ("seed=x", "seed: \"x\" is not a non-negative integer"),
            ("boom=1", "unknown key \"boom\""),
            ("crash", "\"crash\" is not key=value"),
        ] {
            let err = FaultPlan::parse(text).unwrap_err().to_string();
            assert!(err.starts_with("LML_FAULTS: ") && err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn panic_messages_are_recovered_from_either_payload() {
        assert_eq!(panic_message(Box::new("static")), "static");
        assert_eq!(panic_message(Box::new(String::from("owned"))), "owned");
        assert_eq!(panic_message(Box::new(3)), "a panic with a non-string payload");
    }
}
