//! Invocation events: the seed's three shapes, extended, parsed strictly.
//!
//! See the crate docs for the schema. Parsing never touches storage: an event
//! that fails here has written nothing.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ProtocolError, Result};
use crate::spec::JobSpec;

/// Most workers a job may have: AWS Lambda's default concurrency quota per
/// region, and far beyond where a shared-directory reduction is sensible.
pub const MAX_WORKERS: usize = 1000;

/// The job id used when an event names none (the seed's events have no job id).
pub const DEFAULT_JOB: &str = "default";

/// A validated job id: 1 to 64 of `[A-Za-z0-9._-]`, not starting with `.`,
/// so it is always a single path component inside the storage root.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

impl JobId {
    /// Validates `id`.
    ///
    /// # Errors
    /// [`ProtocolError::BadEvent`] on field `job` naming the offending character or length.
    pub fn new(id: &str) -> Result<Self> {
        let bad = |reason: String| ProtocolError::event("job", format!("{id:?}: {reason}"));
        if id.is_empty() || id.len() > 64 {
            return Err(bad(format!("must be 1 to 64 characters, got {}", id.len())));
        }
        if id.starts_with('.') {
            return Err(bad("must not start with '.' (no hidden or parent paths)".into()));
        }
        if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Err(bad(format!("character {c:?} is not allowed (only A-Z a-z 0-9 . _ -)")));
        }
        Ok(JobId(id.to_string()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which round an event is about: given as a round number, as the seed's
/// `epochsdone` (meaning the first round of that epoch), or both (which must agree).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundRef {
    pub round: Option<u64>,
    pub epochsdone: Option<u64>,
}

impl RoundRef {
    /// An explicit round.
    pub fn round(round: u64) -> Self {
        RoundRef { round: Some(round), epochsdone: None }
    }

    /// The round number, given the job's rounds per epoch.
    ///
    /// # Errors
    /// [`ProtocolError::BadEvent`] if `round` and `epochsdone` disagree.
    pub fn resolve(&self, rounds_per_epoch: u64) -> Result<u64> {
        match (self.round, self.epochsdone) {
            (Some(r), Some(e)) if r / rounds_per_epoch != e => Err(ProtocolError::event(
                "epochsdone",
                format!(
                    "{e} disagrees with round {r} ({rounds_per_epoch} rounds per epoch: epoch {})",
                    r / rounds_per_epoch
                ),
            )),
            (Some(r), _) => Ok(r),
            (None, Some(e)) => e
                .checked_mul(rounds_per_epoch)
                .ok_or_else(|| ProtocolError::event("epochsdone", format!("{e} is absurdly large"))),
            (None, None) => Ok(0),
        }
    }
}

/// `{"start": true, "workers": N, "spec": {...}}`: create a job and invoke its first round.
#[derive(Clone, Debug, PartialEq)]
pub struct StartEvent {
    pub job: JobId,
    pub workers: usize,
    /// The job spec, validated ([`JobSpec::from_json`]): the event's `spec`
    /// object over the defaults, or the defaults when the event has none.
    pub spec: JobSpec,
}

/// `{"workerno": i, "workers": N, "epochsdone": e, ...}`: compute worker `i`'s part of a round.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerEvent {
    pub job: JobId,
    pub workers: usize,
    pub workerno: usize,
    pub round: RoundRef,
    /// How many times this worker has continued itself in this round (0 for the first invocation).
    pub continuation: u64,
}

/// `{"combine": true, "workers": N, "epochsdone": e, ...}`: apply a round's reduced result.
#[derive(Clone, Debug, PartialEq)]
pub struct CombineEvent {
    pub job: JobId,
    pub workers: usize,
    pub round: RoundRef,
}

/// Every event the function serves.
// A start carries its whole typed spec; one event is parsed per invocation,
// so the size of the others does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Start(StartEvent),
    Worker(WorkerEvent),
    Combine(CombineEvent),
    /// `{"resume": true, "job": id}`: restart a job whose invocations died, from its last checkpoint.
    Resume {
        job: JobId,
    },
    /// `{"stop": true, "job": id}`: ask a job to stop after the round in progress.
    Stop {
        job: JobId,
    },
    /// `{"extract": "start" | "worker" | "merge", ...}`: an extraction job's event.
    Extract(crate::extract::ExtractEvent),
    /// `{"ingest": "start" | "copy", ...}`: an ingest job's event (S3 onto the root).
    Ingest(crate::ingest::IngestEvent),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    start: Option<bool>,
    combine: Option<bool>,
    resume: Option<bool>,
    stop: Option<bool>,
    workerno: Option<u64>,
    workers: Option<u64>,
    epochsdone: Option<u64>,
    round: Option<u64>,
    continuation: Option<u64>,
    job: Option<String>,
    spec: Option<Value>,
}

impl Event {
    /// Parses and validates an event payload, its job spec included: the
    /// roles take the result and never look at the JSON again.
    ///
    /// # Errors
    /// [`ProtocolError::BadEvent`] naming the field: unknown fields, wrong
    /// types, no or several kinds, `workerno >= workers`, zero or more than
    /// [`MAX_WORKERS`] workers, a bad job id, fields that do not belong to the
    /// kind, and every error of the spec ([`JobSpec::from_json`]) naming its
    /// field under `spec` (`spec.batch`, `spec.data.features`). Checks that
    /// need the data (files, labels, the size of a round) are start's.
    pub fn parse(payload: &Value) -> Result<Event> {
        if !payload.is_object() {
            return Err(ProtocolError::event("event", format!("expected a JSON object, got {payload}")));
        }
        if payload.get("extract").is_some() {
            return crate::extract::ExtractEvent::parse(payload).map(Event::Extract);
        }
        if payload.get("ingest").is_some() {
            return crate::ingest::IngestEvent::parse(payload).map(Event::Ingest);
        }
        let raw: RawEvent = crate::json::from_value(payload)
            .map_err(|e| ProtocolError::event(e.field.as_deref().unwrap_or("event"), e.reason))?;
        for (name, v) in [("start", raw.start), ("combine", raw.combine), ("resume", raw.resume), ("stop", raw.stop)] {
            if v == Some(false) {
                return Err(ProtocolError::event(name, "must be true when present"));
            }
        }
        let kinds: Vec<&str> = [
            ("start", raw.start.is_some()),
            ("combine", raw.combine.is_some()),
            ("resume", raw.resume.is_some()),
            ("stop", raw.stop.is_some()),
            ("workerno", raw.workerno.is_some()),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(k, _)| *k)
        .collect();
        let kind = match kinds.as_slice() {
            [k] => *k,
            [] => {
                return Err(ProtocolError::event(
                    "event",
                    "names no kind: expected one of start, workerno, combine, resume, stop",
                ))
            }
            many => return Err(ProtocolError::event("event", format!("names several kinds: {}", many.join(", ")))),
        };
        let job = JobId::new(raw.job.as_deref().unwrap_or(DEFAULT_JOB))?;
        let workers = || -> Result<usize> {
            let w =
                raw.workers.ok_or_else(|| ProtocolError::event("workers", format!("required by a {kind} event")))?;
            if w == 0 || w > MAX_WORKERS as u64 {
                return Err(ProtocolError::event("workers", format!("{w} is outside 1..={MAX_WORKERS}")));
            }
            Ok(w as usize)
        };
        let only = |allowed: &[&str]| -> Result<()> {
            let present = [
                ("workers", raw.workers.is_some()),
                ("epochsdone", raw.epochsdone.is_some()),
                ("round", raw.round.is_some()),
                ("continuation", raw.continuation.is_some()),
                ("spec", raw.spec.is_some()),
            ];
            match present.iter().find(|(n, on)| *on && !allowed.contains(n)) {
                Some((n, _)) => Err(ProtocolError::event(*n, format!("does not belong in a {kind} event"))),
                None => Ok(()),
            }
        };
        let round = RoundRef { round: raw.round, epochsdone: raw.epochsdone };
        match kind {
            "start" => {
                only(&["workers", "spec"])?;
                let workers = workers()?;
                let spec = match &raw.spec {
                    Some(spec) if !spec.is_object() => {
                        return Err(ProtocolError::event("spec", "must be a JSON object"));
                    }
                    // The spec's own errors name its field under the event's: `spec.batch`.
                    Some(spec) => JobSpec::from_json(spec).map_err(|e| match e {
                        ProtocolError::BadSpec { field, reason } => {
                            ProtocolError::event(format!("spec.{field}"), reason)
                        }
                        e => e,
                    })?,
                    None => JobSpec::default(),
                };
                Ok(Event::Start(StartEvent { job, workers, spec }))
            }
            "workerno" => {
                only(&["workers", "epochsdone", "round", "continuation"])?;
                let workers = workers()?;
                let workerno = raw.workerno.expect("kind");
                if workerno >= workers as u64 {
                    return Err(ProtocolError::event("workerno", format!("{workerno} must be < workers ({workers})")));
                }
                Ok(Event::Worker(WorkerEvent {
                    job,
                    workers,
                    workerno: workerno as usize,
                    round,
                    continuation: raw.continuation.unwrap_or(0),
                }))
            }
            "combine" => {
                only(&["workers", "epochsdone", "round"])?;
                Ok(Event::Combine(CombineEvent { job, workers: workers()?, round }))
            }
            "resume" => {
                only(&[])?;
                Ok(Event::Resume { job })
            }
            _ => {
                only(&[])?;
                Ok(Event::Stop { job })
            }
        }
    }

    /// The JSON payload of this event, in the seed's shape with the extensions.
    /// [`parse`](Self::parse) of the result gives back an equal event.
    pub fn to_json(&self) -> Value {
        let mut v = match self {
            Event::Start(e) => json!({"start": true, "workers": e.workers, "job": e.job.as_str(), "spec": e.spec}),
            Event::Worker(e) => json!({
                "workerno": e.workerno, "workers": e.workers, "job": e.job.as_str(),
                "continuation": e.continuation,
            }),
            Event::Combine(e) => json!({"combine": true, "workers": e.workers, "job": e.job.as_str()}),
            Event::Resume { job } => json!({"resume": true, "job": job.as_str()}),
            Event::Stop { job } => json!({"stop": true, "job": job.as_str()}),
            Event::Extract(e) => e.to_json(),
            Event::Ingest(e) => e.to_json(),
        };
        if let Event::Worker(WorkerEvent { round, .. }) | Event::Combine(CombineEvent { round, .. }) = self {
            if let Some(r) = round.round {
                v["round"] = json!(r);
            }
            if let Some(e) = round.epochsdone {
                v["epochsdone"] = json!(e);
            }
        }
        v
    }

    /// The job the event is about.
    pub fn job(&self) -> &JobId {
        match self {
            Event::Start(e) => &e.job,
            Event::Worker(e) => &e.job,
            Event::Combine(e) => &e.job,
            Event::Resume { job } | Event::Stop { job } => job,
            Event::Extract(e) => e.job(),
            Event::Ingest(e) => e.job(),
        }
    }

    /// A short human-readable name for logs, e.g. `worker 3/4 round 12 (cont 1)`.
    pub fn describe(&self) -> String {
        let r = |r: &RoundRef| match (r.round, r.epochsdone) {
            (Some(k), _) => format!("round {k}"),
            (None, Some(e)) => format!("epoch {e}"),
            (None, None) => "round 0".into(),
        };
        match self {
            Event::Start(e) => format!("{}: start {} workers", e.job, e.workers),
            Event::Worker(e) => {
                format!("{}: worker {}/{} {} (cont {})", e.job, e.workerno, e.workers, r(&e.round), e.continuation)
            }
            Event::Combine(e) => format!("{}: combine {}", e.job, r(&e.round)),
            Event::Resume { job } => format!("{job}: resume"),
            Event::Stop { job } => format!("{job}: stop"),
            Event::Extract(e) => e.describe(),
            Event::Ingest(e) => e.describe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_json() {
        let job = JobId::new("j-1.a_b").unwrap();
        let events = [
            Event::Start(StartEvent { job: job.clone(), workers: 3, spec: JobSpec { batch: 4, ..JobSpec::default() } }),
            Event::Start(StartEvent { job: job.clone(), workers: 1, spec: JobSpec::default() }),
            Event::Worker(WorkerEvent {
                job: job.clone(),
                workers: 4,
                workerno: 3,
                round: RoundRef { round: Some(12), epochsdone: Some(6) },
                continuation: 2,
            }),
            Event::Combine(CombineEvent { job: job.clone(), workers: 4, round: RoundRef::round(7) }),
            Event::Resume { job: job.clone() },
            Event::Stop { job },
        ];
        for e in events {
            assert_eq!(Event::parse(&e.to_json()).unwrap(), e, "{}", e.to_json());
        }
    }

    #[test]
    fn the_seeds_events_parse_as_written() {
        let start = Event::parse(&json!({"start": true, "workers": 16})).unwrap();
        let default = StartEvent { job: JobId::new(DEFAULT_JOB).unwrap(), workers: 16, spec: JobSpec::default() };
        assert_eq!(start, Event::Start(default));
        let Event::Combine(c) = Event::parse(&json!({"combine": true, "workers": 16, "epochsdone": 6})).unwrap() else {
            panic!("not a combine")
        };
        assert_eq!(c.round.resolve(10).unwrap(), 60);
    }

    /// The spec is typed and validated where the event enters; an error names
    /// the spec's field, and nothing reaches a role as untyped JSON.
    #[test]
    fn the_spec_is_parsed_and_validated_with_the_event() {
        let e = Event::parse(&json!({"start": true, "workers": 2, "spec": {"batch": 5, "sync": "model-average",
                                                                         "local_steps": 3}}))
        .unwrap();
        let Event::Start(s) = e else { panic!("not a start") };
        assert_eq!((s.spec.batch, s.spec.sync, s.spec.local_steps), (5, crate::spec::SyncMode::ModelAverage, 3));
        assert_eq!(s.spec.lr, JobSpec::default().lr, "unset fields keep their defaults");
        let err =
            |spec: Value| Event::parse(&json!({"start": true, "workers": 2, "spec": spec})).unwrap_err().to_string();
        assert_eq!(err(json!({"batch": 0})), "bad event: spec.batch: must be positive");
        let e = err(json!({"data": {"features": 3, "labels": "y.npy"}}));
        assert!(e.starts_with("bad event: spec.data.features: invalid type: integer `3`"), "{e}");
        let e = err(json!({"eval": {"features": "x.npy", "labels": "y.npy", "colour": 1}}));
        assert!(e.starts_with("bad event: spec.eval") && e.contains("unknown field `colour`"), "{e}");
        let e = err(json!({"lr": "fast"}));
        assert!(e.starts_with("bad event: spec.lr: invalid type"), "{e}");
        let e = Event::parse(&json!({"start": true, "workers": "2"})).unwrap_err().to_string();
        assert!(e.starts_with("bad event: workers: invalid type"), "{e}");
    }
}
