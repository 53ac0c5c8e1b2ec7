//! # lml-lambda: data-parallel SGD over a shared directory, driven by events
//!
//! The start / worker / combine protocol of the seed's paper (its sections
//! 4.2–5.1, Fig. 2 and 4–7), with the problems it left open closed: the
//! combine runs exactly once per round, its cost does not grow with the
//! number of workers, a worker continues itself before its time limit, and a
//! dead job resumes from its last checkpoint. The roles are plain async
//! functions ([`roles::handle`]) over small traits ([`services::Invoker`],
//! [`progress::ProgressStore`], [`services::Clock`]) and a storage root, so
//! the same code runs on AWS Lambda (EFS, DynamoDB, the Invoke API) and on
//! the [`local`] runtime, the embedded default. Numerical work goes through
//! `lml-kernel`'s trainer API; this crate knows nothing of convolutions.
//!
//! ## Events
//!
//! The seed's three events are accepted as written; every other field is an
//! optional extension. Unknown fields, wrong types, a missing or second kind
//! are errors that name the field, and nothing is written ([`event::Event::parse`]).
//! The `spec` is parsed and validated there too, once, into a typed
//! [`spec::JobSpec`] (its fields over [`spec::JobSpec::default`], the one
//! source of every default): an error names the field under the event's,
//! `spec.batch` or `spec.data.features`. What needs the data (files, labels,
//! the size of a round) start checks before it writes anything.
//!
//! | event | fields |
//! |---|---|
//! | start | `"start": true`, `"workers": N` (1..=1000), `"job"`, `"spec"`: a [`spec::JobSpec`] object over the defaults |
//! | worker | `"workerno": i` (< N), `"workers": N`, `"epochsdone": e`, `"job"`, `"round": k`, `"continuation": c` |
//! | combine | `"combine": true`, `"workers": N`, `"epochsdone": e`, `"job"`, `"round": k` |
//! | resume | `"resume": true`, `"job"` |
//! | stop | `"stop": true`, `"job"` |
//! | extract start | `"extract": "start"`, `"workers": N`, `"job"`, `"spec"`: an [`extract::ExtractSpec`] object |
//! | extract worker | `"extract": "worker"`, `"workerno": i` (< N), `"workers": N`, `"job"`, `"continuation": c` |
//! | extract merge | `"extract": "merge"`, `"job"` |
//! | ingest start | `"ingest": "start"`, `"job"`, `"spec"`: an [`ingest::IngestSpec`] object (`bucket`, `prefix`, `dest`) |
//! | ingest copy | `"ingest": "copy"`, `"job"`, `"continuation": c` |
//!
//! `job` defaults to `"default"` and must be 1–64 characters of
//! `[A-Za-z0-9._-]` not starting with `.`, so it can never leave the storage
//! root. A worker or combine event names its round by `round` or, as in the
//! seed, by `epochsdone` (the first round of that epoch); given both, they
//! must agree. `N` must equal the job's worker count. The `extract` events
//! drive a feature-extraction job ([`extract`]: the frozen VGG19 over a split
//! of images on the workers, into the cache `lml extract-features` writes);
//! `resume` serves both kinds of job. The `ingest` events copy objects
//! from S3 onto the storage root ([`ingest`]: streamed, verified against
//! S3's checksums, published atomically, continued across invocations);
//! `resume` and `stop` serve them too.
//!
//! A start whose `spec.data` (or `spec.eval`) names images and weights runs
//! one job from images to a trained head ([`pipeline`]): by default the
//! job's workers first extract the features into a cache under the root
//! keyed by the content of the images, labels and weights
//! (`cache/<sha256>/`, reused by any later job on the same content), then
//! the rounds train on it. `"forward": "every-step"` in the data keeps the
//! seed's way, the frozen forward at every step ([`spec::Forward`]). Payloads carry ids and
//! numbers only, never tensors (Lambda's asynchronous payload limit is 1 MB).
//!
//! ```
//! use lml_lambda::event::Event;
//! let e = Event::parse(&serde_json::json!({"workerno": 3, "workers": 4, "epochsdone": 6})).unwrap();
//! assert_eq!(e.job().as_str(), "default");
//! let bad = Event::parse(&serde_json::json!({"workerno": 4, "workers": 4})).unwrap_err();
//! assert!(bad.to_string().contains("workerno"));
//! ```
//!
//! ## A round
//!
//! 1. **start** resolves the spec against the data, creates the job folder
//!    whole (staged, then renamed: see [`layout::JobDir`]) with the config and
//!    round-0 parameters, and invokes the N workers.
//! 2. **worker** `i` reads round `k`'s parameters and trains on its slice of
//!    the round ([`spec::JobConfig::worker_slice`]: disjoint, covering every
//!    epoch, deterministic for the seed), from cached features (extracted
//!    first by the job itself when it was started on images) or, with
//!    `"forward": "every-step"`, through the frozen VGG19. In gradient-sum mode it sums the loss gradient; in
//!    model-averaging mode it takes `local_steps` SGD steps. Before the next
//!    unit of work could overrun its deadline it saves its state and invokes
//!    its own continuation (Fig. 2 of the paper); nothing is lost or counted
//!    twice, since a save is a consistent snapshot published once.
//! 3. Its result goes up a reduction tree ([`compute::reduce_up`]): each
//!    worker merges at most `log2 N` sums, so the combine reads one file
//!    whatever N is. The worker that publishes the root claims the round's
//!    trigger with an atomic create (and a conditional put in the progress
//!    store) and invokes **combine**.
//! 4. **combine** applies the round under an `fs2` lock unless its result is
//!    already published, publishes round `k+1`'s parameters and momentum (the
//!    checkpoint), records loss and accuracy, and invokes round `k+1` or ends
//!    the job (rounds done, target loss, or a stop request).
//!
//! Every step is idempotent by round, so duplicate deliveries, reordering and
//! retries of failed invocations change nothing: the tests run hundreds of
//! seeded fault trials and compare the final parameters bit for bit.
//!
//! ## Storage assumptions
//!
//! A POSIX directory with atomic `rename(2)` (failing onto a non-empty
//! directory), `link(2)` failing on an existing name, and advisory locks:
//! local file systems and EFS (NFSv4.1) provide all three.

#[cfg(feature = "aws")]
pub mod aws;
pub mod compute;
pub mod cost;
pub mod error;
pub mod event;
pub mod extract;
pub mod ingest;
pub mod json;
pub mod layout;
pub mod local;
pub mod meta;
pub mod objects;
pub mod pipeline;
pub mod progress;
pub mod roles;
pub mod services;
pub mod spec;

pub use error::{ProtocolError, Result};
pub use event::{Event, JobId};
pub use local::{FaultPlan, LocalConfig, LocalRuntime};
pub use roles::{handle, Outcome};
pub use spec::{DataSpec, JobConfig, JobSpec, SyncMode};
