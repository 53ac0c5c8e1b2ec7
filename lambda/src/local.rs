//! The local runtime: the same handler, run in this process with AWS Lambda's
//! semantics for asynchronous invokes.
//!
//! * `invoke` returns as soon as the event is queued (Lambda answers 202).
//! * Delivery is at least once; a failed invocation (an error that
//!   [`ProtocolError::is_retryable`], an injected crash, or a run past the
//!   time limit) is retried up to [`LocalConfig::retries`] times (Lambda: 2),
//!   then recorded as a dead letter, as Lambda's on-failure destination would.
//! * Every invocation gets a deadline of now + the time limit, and the
//!   compute threads a function of the memory size gets (1,769 MB per vCPU,
//!   at most 6). At most [`LocalConfig::concurrency`] invocations run at once.
//! * For tests, a [`FaultPlan`] duplicates deliveries, delays them at random
//!   (so they arrive out of order), and crashes invocations at the roles'
//!   probe points.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::error::{ProtocolError, Result};
use crate::event::Event;
use crate::progress::{LocalProgress, ProgressStore};
use crate::roles::{handle, Outcome};
use crate::services::{lambda_threads, Clock, Invocation, Invoker, Probe, Services};

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
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    pub seed: u64,
    /// Probability that a delivery is duplicated.
    pub duplicate: f64,
    /// Deliveries wait a random 0..=this many ms (reordering them).
    pub max_delay_ms: u64,
    /// Probability that an invocation dies at each probe point it reaches.
    pub crash: f64,
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
}

/// Counts deliveries in flight and wakes waiters when none is left.
struct Shared {
    pending: AtomicUsize,
    idle: Notify,
    rng: Mutex<ChaCha8Rng>,
    dead: Mutex<Vec<DeadLetter>>,
    failures: Mutex<Vec<DeadLetter>>,
    invocations: AtomicU64,
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
        self.tx.send(Delivery { payload, attempt, delay_ms }).map_err(|_| {
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
            ProtocolError::Invoke("the local runtime has shut down".into())
        })
    }
}

impl Invoker for LocalInvoker {
    async fn invoke(&self, event: &Event) -> Result<()> {
        // Events travel as JSON, as they do to Lambda.
        let payload = event.to_json();
        let delays: Vec<u64> = {
            let mut rng = self.shared.rng.lock().expect("not poisoned");
            let copies = if rng.random_bool(self.plan.duplicate.clamp(0.0, 1.0)) { 2 } else { 1 };
            (0..copies).map(|_| rng.random_range(0..=self.plan.max_delay_ms)).collect()
        };
        for delay in delays {
            self.send(payload.clone(), 0, delay)?;
        }
        Ok(())
    }
}

/// Crashes at probe points with a fixed probability, and counts every point reached.
pub struct CrashProbe {
    crash: f64,
    rng: Mutex<ChaCha8Rng>,
    hits: Mutex<BTreeMap<(&'static str, u64), usize>>,
    crashes: AtomicU64,
}

impl CrashProbe {
    pub fn new(crash: f64, seed: u64) -> Self {
        CrashProbe {
            crash,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            hits: Mutex::new(BTreeMap::new()),
            crashes: AtomicU64::new(0),
        }
    }

    /// Crashes injected so far.
    pub fn crashes(&self) -> u64 {
        self.crashes.load(Ordering::Relaxed)
    }

    /// How often each `(point, round)` was reached (counted before any crash there).
    pub fn hits(&self) -> BTreeMap<(&'static str, u64), usize> {
        self.hits.lock().expect("not poisoned").clone()
    }
}

impl Probe for CrashProbe {
    fn at(&self, point: &'static str, round: u64) -> Result<()> {
        *self.hits.lock().expect("not poisoned").entry((point, round)).or_default() += 1;
        if self.crash > 0.0 && self.rng.lock().expect("not poisoned").random_bool(self.crash.min(1.0)) {
            self.crashes.fetch_add(1, Ordering::Relaxed);
            return Err(ProtocolError::Crashed(point));
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
        });
        let invoker = LocalInvoker { tx, shared: shared.clone(), plan: config.faults.clone() };
        let probe = Arc::new(CrashProbe::new(config.faults.crash, config.faults.seed ^ 0x5eed));
        let svc = Services::new(root, invoker.clone(), progress, clock, lambda_threads(config.memory_mb))
            .with_probe(probe.clone());
        let svc = Arc::new(svc);
        let dispatcher = tokio::spawn(dispatch(rx, svc.clone(), invoker.clone(), shared.clone(), config));
        LocalRuntime { svc, invoker, shared, probe, dispatcher }
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

    /// Runs one event to completion in this task, without queueing or faults:
    /// what a synchronous (`RequestResponse`) invoke returns.
    ///
    /// # Errors
    /// The handler's error.
    pub async fn call(&self, payload: &Value) -> Result<Outcome> {
        let inv = Invocation { request_id: "sync".into(), deadline_ms: None };
        handle(&self.svc, payload, &inv).await
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
        self.shared.dead.lock().expect("not poisoned").clone()
    }

    /// Every failed attempt, retried or not (injected crashes included).
    pub fn failures(&self) -> Vec<DeadLetter> {
        self.shared.failures.lock().expect("not poisoned").clone()
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

    /// The services the handler runs with (root, progress store, clock).
    pub fn services(&self) -> &Services<LocalInvoker, P, C> {
        &self.svc
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
        tokio::spawn(async move {
            if d.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(d.delay_ms)).await;
            }
            let result = {
                let _slot = slots.acquire().await.expect("never closed");
                shared.invocations.fetch_add(1, Ordering::Relaxed);
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let now = svc.clock.now_ms();
                let inv =
                    Invocation { request_id: format!("local-{id}"), deadline_ms: Some(now + config.time_limit_ms) };
                let started = std::time::Instant::now();
                let r = handle(&svc, &d.payload, &inv).await;
                let over = started.elapsed() > Duration::from_millis(config.time_limit_ms);
                match r {
                    Ok(_) if config.enforce_time_limit && over => {
                        Err((true, format!("timed out after {} ms", config.time_limit_ms)))
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err((e.is_retryable(), e.to_string())),
                }
            };
            if let Err((retryable, error)) = result {
                shared
                    .failures
                    .lock()
                    .expect("not poisoned")
                    .push(DeadLetter { event: d.payload.clone(), error: error.clone() });
                if retryable && d.attempt < config.retries {
                    // Lambda waits about a minute, then two; a short backoff keeps the order shuffled.
                    let _ = invoker.send(d.payload, d.attempt + 1, 1 + u64::from(d.attempt) * 5);
                } else {
                    shared.dead.lock().expect("not poisoned").push(DeadLetter { event: d.payload, error });
                }
            }
            if shared.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                shared.idle.notify_waiters();
            }
        });
    }
}
