//! The roles: start, worker, combine, resume and stop, as async functions
//! over [`Services`]. [`handle`] is the one entry point a runtime calls.

use serde_json::Value;

use crate::compute::{self, Params, SliceEnd};
use crate::error::{ProtocolError, Result};
use crate::event::{CombineEvent, Event, JobId, RoundRef, StartEvent, WorkerEvent};
use crate::layout::{claim, present, read_json, JobDir};
use crate::meta::{FinalSummary, ParamsMeta};
use crate::progress::{JobRecord, JobStatus, ProgressStore, RoundRecord, Score, WorkerRecord};
use crate::services::{Clock, Invocation, Invoker, Services};
use crate::spec::JobConfig;

/// What an invocation did.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A job was created and its first round invoked (`duplicate`: it already existed, same spec).
    Started { job: JobId, duplicate: bool },
    /// A worker's result is in; `combine`: this invocation sent the round's combine.
    WorkerDone { round: u64, workerno: usize, combine: bool },
    /// A worker saved its state and invoked its continuation.
    Continued { round: u64, workerno: usize, continuation: u64 },
    /// A round was applied (by this or an earlier delivery); `finished`: the job ended.
    Combined { round: u64, finished: bool },
    /// A stalled job was restarted at `round` by invoking `what` (`workers` or `combine`).
    Resumed { round: u64, what: &'static str },
    /// A stop request was recorded.
    StopRequested,
    /// Nothing to do (a late duplicate, a finished job): why.
    Skipped(String),
    /// An extraction worker published `shards`; `merge`: it sent the merge.
    Extracted { workerno: usize, shards: Vec<usize>, merge: bool },
    /// An extraction job's cache is merged at `cache` (relative to the root).
    Merged { cache: String },
    /// An ingest job ended (`stopped`: by a stop request) with `objects` of `bytes` published.
    Ingested { objects: usize, bytes: u64, stopped: bool },
    /// An ingest copy ran out of time at object `object` and invoked its continuation.
    IngestContinued { object: usize, continuation: u64 },
}

/// Runs whatever `payload` asks for.
///
/// # Errors
/// [`ProtocolError::BadEvent`] before anything is written if the payload is
/// malformed; the roles' errors otherwise. [`ProtocolError::is_retryable`]
/// says whether delivering the event again can help.
pub async fn handle<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    payload: &Value,
    inv: &Invocation,
) -> Result<Outcome> {
    match Event::parse(payload)? {
        Event::Start(e) if e.spec.data.extracts_first() || e.spec.eval.as_ref().is_some_and(|d| d.extracts_first()) => {
            // Boxed: the pipeline's future nests the other roles'.
            Box::pin(crate::pipeline::start(svc, e)).await
        }
        Event::Start(e) => start(svc, e).await,
        Event::Worker(e) => worker(svc, e, inv).await,
        Event::Combine(e) => combine(svc, e).await,
        Event::Extract(e) => crate::extract::handle(svc, e, inv).await,
        Event::Ingest(e) => crate::ingest::handle(svc, e, inv).await,
        Event::Resume { job } if crate::ingest::is_ingest_job(&svc.root, &job) => {
            crate::ingest::resume(svc, &job).await
        }
        Event::Stop { job } if crate::ingest::is_ingest_job(&svc.root, &job) => crate::ingest::stop(&svc.root, &job),
        Event::Resume { job } if crate::extract::is_extract_job(&svc.root, &job) => {
            crate::extract::resume(svc, &job).await
        }
        // A job on images whose training job does not exist yet: its extraction.
        Event::Resume { job } => match crate::pipeline::phase_one(&svc.root, &job) {
            Some(sub) => crate::extract::resume(svc, &sub).await,
            None => resume(svc, &job).await,
        },
        Event::Stop { job } => {
            let jd = JobDir::new(&svc.root, &job);
            jd.read_config()?;
            claim(&jd.stop(), "stop request")?;
            Ok(Outcome::StopRequested)
        }
    }
}

/// Runs blocking work (compute, file reads) without stalling the async
/// runtime's other tasks where the runtime allows it.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Creates the job `ev` asks for and invokes its first round. The spec came
/// validated with the event ([`Event::parse`]); what is checked here needs
/// the data, and is checked before anything is written: the sources open,
/// every label file is checked, the classes are counted and the round sizes
/// computed ([`JobConfig::resolve`]).
pub(crate) async fn start<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    ev: StartEvent,
) -> Result<Outcome> {
    let spec = ev.spec;
    let source = svc.source(&spec.data)?;
    if let Some(eval) = &spec.eval {
        let e = svc.source(eval)?;
        if e.feature_dim() != source.feature_dim() {
            return Err(ProtocolError::spec(
                "eval",
                format!("{} features per example, training data has {}", e.feature_dim(), source.feature_dim()),
            ));
        }
    }
    let classes = crate::spec::resolve_classes(&svc.root, &spec)?;
    let cfg = JobConfig::resolve(&ev.job, ev.workers, spec, source.len(), source.feature_dim(), classes)?;
    let jd = JobDir::new(&svc.root, &ev.job);
    if !jd.exists() {
        // The statistics are part of the job folder from its first moment:
        // computed here (one pass over the data), published in the staging.
        let stats = match cfg.spec.standardize {
            true => Some(blocking(|| svc.pool()?.install(|| compute::feature_stats(&cfg, &*source)))?),
            false => None,
        };
        create_job(svc, &jd, &cfg, stats.as_ref())?;
    }
    // The config as written equals the one resolved here (so it is valid) or
    // belongs to another start of the same id.
    let existing = jd.read_config_as_written()?;
    if existing != cfg {
        return Err(ProtocolError::JobExists { job: ev.job.to_string(), path: jd.dir.clone() });
    }
    let duplicate = svc.progress.load(&ev.job).await?.job.is_some();
    if !duplicate {
        svc.progress.put_job(&ev.job, &job_record(&cfg, svc.clock.now_ms())).await?;
    }
    svc.probe.at("start.created", 0)?;
    fanout(svc, &jd, &cfg, 0, false).await?;
    Ok(Outcome::Started { job: ev.job, duplicate })
}

/// A new job's record (status running).
fn job_record(cfg: &JobConfig, started_ms: u64) -> JobRecord {
    JobRecord {
        job: cfg.job.clone(),
        status: JobStatus::Running,
        workers: cfg.workers,
        examples: cfg.examples,
        rounds_per_epoch: cfg.rounds_per_epoch,
        total_rounds: cfg.total_rounds,
        started_ms,
        rounds_done: None,
        finished_ms: None,
        reason: None,
        eval: None,
        classes: cfg.classes,
        class_names: JobRecord::names_for_record(&cfg.class_names),
    }
}

/// Creates the job folder whole ([`JobDir::create_whole`]): config, feature
/// statistics, round 0's folders and parameters.
fn create_job<I, P, C: Clock>(
    svc: &Services<I, P, C>,
    jd: &JobDir,
    cfg: &JobConfig,
    stats: Option<&lml_kernel::standardize::FeatureStats>,
) -> Result<()> {
    jd.create_whole(|staged| {
        for d in [staged.params_dir(), staged.round(0), staged.progress()] {
            std::fs::create_dir_all(&d).map_err(|e| ProtocolError::io(&d, e))?;
        }
        crate::layout::write_json(&staged.config(), cfg)?;
        if let Some(stats) = stats {
            compute::publish_stats(&compute::stats_path(staged), stats, cfg.examples)?;
        }
        let params = Params::init(cfg.classes, cfg.feature_dim);
        let meta = ParamsMeta { round: 0, published_ms: svc.clock.now_ms(), record: None, failure: None };
        params.publish(&staged.params(0), &meta)?;
        svc.probe.at("start.staged", 0)
    })
}

/// Invokes the `workers` of round `k` unless a `fanout` marker says it was
/// done (`force` ignores the marker: resume).
async fn fanout<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    jd: &JobDir,
    cfg: &JobConfig,
    k: u64,
    force: bool,
) -> Result<()> {
    let dir = jd.round(k);
    std::fs::create_dir_all(&dir).map_err(|e| ProtocolError::io(&dir, e))?;
    if !force && present(&jd.fanout(k)) {
        return Ok(());
    }
    for w in 0..cfg.workers {
        if w == cfg.workers / 2 {
            svc.probe.at("fanout.half", k)?;
        }
        svc.invoker.invoke(&worker_event(cfg, &jd.job, k, w, 0)).await?;
    }
    claim_in_round(jd, k, &jd.fanout(k), "fanout")?;
    Ok(())
}

/// [`claim`] of a file in round `k`'s folder; `None` if the folder is gone:
/// the round ran to its end and was pruned while this invocation was slow.
fn claim_in_round(jd: &JobDir, k: u64, path: &std::path::Path, owner: &str) -> Result<Option<crate::layout::Claim>> {
    match claim(path, owner) {
        Err(_) if !jd.round(k).exists() => Ok(None),
        r => r.map(Some),
    }
}

fn worker_event(cfg: &JobConfig, job: &JobId, k: u64, w: usize, continuation: u64) -> Event {
    Event::Worker(WorkerEvent {
        job: job.clone(),
        workers: cfg.workers,
        workerno: w,
        round: RoundRef { round: Some(k), epochsdone: Some(cfg.epoch_of(k)) },
        continuation,
    })
}

/// Reads the job's config and checks the event's worker count and round against it.
fn event_round(jd: &JobDir, workers: usize, round: &RoundRef) -> Result<(JobConfig, u64)> {
    let cfg = jd.read_config()?;
    if workers != cfg.workers {
        return Err(ProtocolError::event("workers", format!("{workers}, but job {} has {}", jd.job, cfg.workers)));
    }
    let k = round.resolve(cfg.rounds_per_epoch)?;
    if k >= cfg.total_rounds {
        return Err(ProtocolError::event("round", format!("{k} is beyond the job's {} rounds", cfg.total_rounds)));
    }
    Ok((cfg, k))
}

async fn worker<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    ev: WorkerEvent,
    inv: &Invocation,
) -> Result<Outcome> {
    let jd = JobDir::new(&svc.root, &ev.job);
    let (cfg, k) = event_round(&jd, ev.workers, &ev.round)?;
    let w = ev.workerno;
    // A late delivery or retry for a round that is over (its files may be pruned).
    if present(&jd.params(k + 1)) || present(&jd.final_json()) || jd.latest_params()? > k {
        return Ok(Outcome::Skipped(format!("round {k} is already applied")));
    }
    if !present(&jd.params(k)) {
        return Err(ProtocolError::job(jd.params(k), format!("no parameters for round {k}")));
    }
    svc.probe.at("worker.begin", k)?;
    if !present(&jd.sum(k, w, w + 1)) {
        let deadline = inv.effective_deadline(svc.clock.now_ms(), cfg.spec.time_limit_ms);
        let source = svc.source(&cfg.spec.data)?;
        let pool = svc.pool()?;
        let end = blocking(|| {
            pool.install(|| compute::run_slice(&jd, &cfg, k, w, &*source, &svc.clock, deadline, &*svc.probe))
        })?;
        match end {
            SliceEnd::Continue { seq } => {
                svc.invoker.invoke(&worker_event(&cfg, &jd.job, k, w, seq)).await?;
                return Ok(Outcome::Continued { round: k, workerno: w, continuation: seq });
            }
            SliceEnd::Yielded => return Ok(Outcome::Skipped(format!("worker {w} round {k}: another copy carries on"))),
            SliceEnd::Done(result) => {
                // Recorded before the result is visible: once it is, the
                // round may be applied and a retry of this event would stop early.
                let record = WorkerRecord {
                    round: k,
                    workerno: w,
                    examples: result.examples,
                    compute_ms: result.compute_ms,
                    continuations: result.continuations,
                    finished_ms: svc.clock.now_ms(),
                };
                svc.progress.put_worker(&jd.job, &record).await?;
                svc.progress.add_done(&jd.job, k, w).await?;
                svc.probe.at("worker.recorded", k)?;
                blocking(|| result.publish(&jd, k, w))?;
                svc.probe.at("worker.published", k)?;
            }
        }
    }
    let root = blocking(|| compute::reduce_up(&jd, k, w, cfg.workers, &*svc.probe))?;
    if !root {
        return Ok(Outcome::WorkerDone { round: k, workerno: w, combine: false });
    }
    // Exactly one combine per round: the atomic create of `trigger` decides,
    // the progress store's conditional put is a second guard. The owner
    // names this worker, so a retry of this very event (after a crash
    // between claiming and invoking) still sends the combine.
    let me = format!("worker {w} round {k}");
    if !claim_in_round(&jd, k, &jd.trigger(k), &me)?.is_some_and(|c| c.is_mine(&me)) {
        return Ok(Outcome::WorkerDone { round: k, workerno: w, combine: false });
    }
    svc.probe.at("trigger.claimed", k)?;
    if present(&jd.combine_invoked(k)) {
        return Ok(Outcome::WorkerDone { round: k, workerno: w, combine: false });
    }
    if !svc.progress.claim(&jd.job, &format!("combine#{k}"), &me).await?.is_mine(&me) {
        return Ok(Outcome::WorkerDone { round: k, workerno: w, combine: false });
    }
    let event = Event::Combine(CombineEvent {
        job: jd.job.clone(),
        workers: cfg.workers,
        round: RoundRef { round: Some(k), epochsdone: Some(cfg.epoch_of(k)) },
    });
    svc.invoker.invoke(&event).await?;
    claim_in_round(&jd, k, &jd.combine_invoked(k), &me)?;
    Ok(Outcome::WorkerDone { round: k, workerno: w, combine: true })
}

async fn combine<I: Invoker, P: ProgressStore, C: Clock>(svc: &Services<I, P, C>, ev: CombineEvent) -> Result<Outcome> {
    let jd = JobDir::new(&svc.root, &ev.job);
    let (cfg, k) = event_round(&jd, ev.workers, &ev.round)?;
    if present(&jd.final_json()) {
        return Ok(Outcome::Skipped("the job has ended".into()));
    }
    // A late delivery or retry: round k+1 is applied too, so round k's
    // record and fan-out are done and its files may be pruned.
    if jd.latest_params()? > k + 1 {
        return Ok(Outcome::Skipped(format!("round {k} and the next are already applied")));
    }
    if !present(&jd.params(k + 1)) {
        let root = jd.sum(k, 0, cfg.workers);
        if !present(&root) {
            return Err(ProtocolError::job(root, format!("round {k} has not been reduced: no combine yet")));
        }
        blocking(|| apply_once(svc, &jd, &cfg, k))?;
    }
    let finished = after_apply(svc, &jd, &cfg, k).await?;
    if !finished {
        fanout(svc, &jd, &cfg, k + 1, false).await?;
    }
    Ok(Outcome::Combined { round: k, finished })
}

/// Applies round `k` under the round's lock, unless its result is already
/// published: concurrent deliveries of one combine apply it once.
fn apply_once<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    jd: &JobDir,
    cfg: &JobConfig,
    k: u64,
) -> Result<()> {
    crate::layout::with_lock(&jd.combine_lock(k), || {
        if present(&jd.params(k + 1)) {
            return Ok(());
        }
        svc.probe.at("combine.begin", k)?;
        let t0 = svc.clock.now_ms();
        let (base, base_meta) = Params::read(&jd.params(k))?;
        let root = jd.sum(k, 0, cfg.workers);
        let reduced = compute::read_root(jd, cfg, k)?;
        let next = svc.pool()?.install(|| compute::apply(cfg, k, &base, &reduced, &root))?;
        let combine_ms = svc.clock.now_ms().saturating_sub(t0);
        // A diverged round ends the job (in `after_apply`): nothing to evaluate.
        let failure = compute::divergence(cfg, k, &reduced.stats, &next);
        let eval = match (&cfg.spec.eval, cfg.evaluates_after(k) && failure.is_none()) {
            (Some(spec), true) => {
                let source = svc.source(spec)?;
                let stats = compute::read_stats(jd, cfg)?;
                Some(
                    svc.pool()?
                        .install(|| compute::evaluate(&next.head, &*source, stats.as_ref(), cfg.spec.eval_examples))?,
                )
            }
            _ => None,
        };
        let now = svc.clock.now_ms();
        let started = base_meta.published_ms;
        let record = RoundRecord {
            round: k,
            epoch: cfg.epoch_of(k),
            train: Score {
                loss: reduced.stats.loss(),
                accuracy: reduced.stats.accuracy(),
                examples: reduced.stats.count,
            },
            eval,
            worker_ms: reduced.compute_ms,
            combine_ms,
            round_ms: now.saturating_sub(started),
            finished_ms: now,
        };
        let meta = ParamsMeta { round: k + 1, published_ms: now, record: Some(record), failure };
        if next.publish(&jd.params(k + 1), &meta)? {
            svc.probe.at("combine.applied", k)?;
        }
        Ok(())
    })
}

/// After round `k` is applied: records it, prunes what no one needs any
/// more, and ends the job if it is due to end. Idempotent. Returns whether
/// the job has ended (else the caller invokes round `k + 1`).
async fn after_apply<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    jd: &JobDir,
    cfg: &JobConfig,
    k: u64,
) -> Result<bool> {
    let next = jd.params(k + 1);
    let (_, meta) = Params::read(&next)?;
    let record: RoundRecord = meta
        .record
        .ok_or_else(|| ProtocolError::job(next.join("meta.json"), "record: missing (the round that made them)"))?;
    svc.progress.put_round(&jd.job, &record).await?;
    svc.probe.at("combine.recorded", k)?;
    // Round k-1's work files and (unless it is an epoch checkpoint) its start
    // parameters: every delivery for round k-1 now sees params k and stops.
    if k >= 1 {
        let _ = std::fs::remove_dir_all(jd.round(k - 1));
        if !(k - 1).is_multiple_of(cfg.rounds_per_epoch) {
            let _ = std::fs::remove_dir_all(jd.params(k - 1));
        }
    }
    let loss = record.eval.map_or(record.train.loss, |e| e.loss);
    let end = if let Some(failure) = meta.failure.as_deref() {
        Some((failure, JobStatus::Failed))
    } else if k + 1 >= cfg.total_rounds {
        Some(("rounds", JobStatus::Finished))
    } else if cfg.spec.target_loss.is_some_and(|t| loss <= t) {
        Some(("target loss", JobStatus::Finished))
    } else if present(&jd.stop()) {
        Some(("stop request", JobStatus::Stopped))
    } else {
        None
    };
    match end {
        Some((reason, status)) => {
            finish(svc, jd, cfg, k + 1, reason, status).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Ends the job after `rounds` applied rounds with `status` (finished,
/// stopped or failed) and why: `final.json` once, then the job record. The
/// first `final.json` decides; a concurrent or later call records what it says.
async fn finish<I: Invoker, P: ProgressStore, C: Clock>(
    svc: &Services<I, P, C>,
    jd: &JobDir,
    cfg: &JobConfig,
    rounds: u64,
    reason: &str,
    status: JobStatus,
) -> Result<()> {
    let progress = svc.progress.load(&jd.job).await?;
    let eval = progress.rounds.values().rev().find_map(|r| r.eval);
    let summary = FinalSummary { rounds, reason: reason.to_string(), status, finished_ms: svc.clock.now_ms(), eval };
    claim(&jd.final_json(), &serde_json::to_string_pretty(&summary).expect("serialisable"))?;
    let summary: FinalSummary = read_json(&jd.final_json())?;
    let mut record = progress.job.unwrap_or_else(|| job_record(cfg, 0));
    record.status = summary.status;
    record.rounds_done = Some(summary.rounds);
    record.finished_ms = Some(summary.finished_ms);
    record.eval = summary.eval;
    record.reason = Some(summary.reason);
    svc.progress.put_job(&jd.job, &record).await
}

/// Restarts a job whose invocations all died, from its newest parameters:
/// records and decides the round that produced them, then invokes that
/// round's combine if its reduction is complete, or all its workers (which
/// pick up their own saved results and continuation state).
async fn resume<I: Invoker, P: ProgressStore, C: Clock>(svc: &Services<I, P, C>, job: &JobId) -> Result<Outcome> {
    let jd = JobDir::new(&svc.root, job);
    let cfg = jd.read_config()?;
    if present(&jd.final_json()) {
        return Ok(Outcome::Skipped("the job has ended".into()));
    }
    let k = *jd.param_rounds()?.last().ok_or_else(|| ProtocolError::job(jd.params_dir(), "no parameters at all"))?;
    if k >= 1 && after_apply(svc, &jd, &cfg, k - 1).await? {
        return Ok(Outcome::Skipped("the job has ended".into()));
    }
    if present(&jd.sum(k, 0, cfg.workers)) {
        let event = Event::Combine(CombineEvent {
            job: job.clone(),
            workers: cfg.workers,
            round: RoundRef { round: Some(k), epochsdone: Some(cfg.epoch_of(k)) },
        });
        svc.invoker.invoke(&event).await?;
        return Ok(Outcome::Resumed { round: k, what: "combine" });
    }
    fanout(svc, &jd, &cfg, k, true).await?;
    Ok(Outcome::Resumed { round: k, what: "workers" })
}
