//! Randomised fault trials: duplicated, delayed and reordered deliveries,
//! invocations that crash or panic at any probe point and are retried (or
//! die for good, after which the job is resumed), publications that fail
//! with a full disk (`ENOSPC`) after writing part of their bytes, and
//! continuations at random points from random time limits. Every trial must
//! apply each round exactly once, end with the fault-free run's parameters,
//! bit for bit, and leave no temp file behind.
//!
//! CI runs 300 trials (seeds 0..300). A campaign sets the count and the first
//! seed, so it can be split across machines or re-run from a failing seed:
//!
//! ```text
//! LML_FAULT_TRIALS=1000 LML_FAULT_SEED=0 cargo nextest run -p lml-lambda --test faults \
//!     hundreds_of_fault_trials --success-output immediate
//! ```
//!
//! The last line of the test's output counts what was injected. The checks
//! that the faults were injected as often as claimed need 20 trials or more.

mod common;

use common::*;
use lml_lambda::event::{Event, JobId};
use lml_lambda::layout::JobDir;
use lml_lambda::progress::{LocalProgress, ProgressStore};
use lml_lambda::services::TickClock;
use lml_lambda::{FaultPlan, LocalConfig, LocalRuntime};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// Trials CI runs when `LML_FAULT_TRIALS` is unset.
const CI_TRIALS: u64 = 300;

/// Keeps the output readable: the hundreds of injected panics are counted,
/// not printed with a backtrace each (the runtime still logs one line per
/// panic with its event). Other panics print as usual.
fn quiet_injected_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload().downcast_ref::<String>().map_or("", String::as_str);
        if !msg.starts_with("injected panic at ") {
            default(info);
        }
    }));
}

/// `name` from the environment as a number, or `default` if it is unset.
fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a non-negative integer")),
        Err(_) => default,
    }
}

struct Trial {
    workers: usize,
    spec: serde_json::Value,
}

fn trial(seed: u64) -> Trial {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let workers = rng.random_range(1..=5);
    let model_average = rng.random_bool(0.3);
    let batch = rng.random_range(2..=5);
    let mut extra = json!({
        "batch": batch, "micro_batch": rng.random_range(1..=3), "epochs": rng.random_range(1..=2),
        "lr": 0.05, "momentum": 0.9, "seed": seed,
        "time_limit_ms": rng.random_range(30..=200), "safety_ms": 10,
    });
    if model_average {
        extra["sync"] = json!("model-average");
        extra["local_steps"] = json!(rng.random_range(1..=3));
    }
    Trial { workers, spec: spec("train", extra) }
}

/// Runs `t` on a fresh root; with `faults`, keeps resuming until the job
/// ends. Returns the root, the runtime, and how many resumes it took.
async fn run(t: &Trial, faults: Option<(FaultPlan, u64)>) -> (tempfile::TempDir, LocalRuntime<TickClock>, u64) {
    let dir = temp_root();
    let (x, y) = blobs(30, 5, 3, 9);
    write_features(dir.path(), "train", &x, &y);
    let limit = t.spec["time_limit_ms"].as_u64().unwrap();
    let (plan, tick) = faults.unwrap_or((FaultPlan::default(), 1));
    let cfg = LocalConfig {
        memory_mb: 1769,
        // Fault-free runs get a limit no continuation is needed under.
        time_limit_ms: if plan == FaultPlan::default() { 900_000 } else { limit },
        enforce_time_limit: false,
        concurrency: 8,
        retries: 2,
        faults: plan,
    };
    let rt = LocalRuntime::start(dir.path(), TickClock::new(1_000_000, tick), cfg);
    let job = JobId::new("trial").unwrap();
    let jd = JobDir::new(dir.path(), &job);
    let start = start_event("trial", t.workers, t.spec.clone());
    let mut resumes = 0;
    for attempt in 0.. {
        assert!(attempt < 200, "job did not finish after {attempt} resumes");
        if attempt == 0 || !jd.exists() {
            rt.invoke(&start).await.unwrap();
        } else {
            rt.invoke_payload(Event::Resume { job: job.clone() }.to_json()).unwrap();
            resumes += 1;
        }
        rt.idle().await;
        if jd.final_json().exists() {
            break;
        }
    }
    let temps = temp_files(dir.path());
    assert!(temps.is_empty(), "temp files left behind: {temps:?}");
    (dir, rt, resumes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_fault_trials_end_with_the_fault_free_parameters() {
    let trials = env_u64("LML_FAULT_TRIALS", CI_TRIALS);
    let first = env_u64("LML_FAULT_SEED", 0);
    assert!(trials > 0, "LML_FAULT_TRIALS=0 runs nothing");
    quiet_injected_panics();
    let started = std::time::Instant::now();
    let (mut continued, mut crashes, mut panics, mut enospc, mut duplicates, mut gave_up, mut resumes) =
        (0, 0, 0, 0, 0, 0, 0);
    for seed in first..first + trials {
        let t = trial(seed);
        let (clean_dir, clean_rt, _) = run(&t, None).await;
        let dead = clean_rt.dead_letters();
        assert!(dead.is_empty(), "trial {seed}: fault-free run failed: {dead:?}");
        let expected = final_params(clean_dir.path(), "trial");

        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xfa17);
        let plan = FaultPlan {
            seed,
            duplicate: rng.random_range(0.0..0.4),
            max_delay_ms: rng.random_range(0..=3),
            crash: rng.random_range(0.01..0.06),
            panic: rng.random_range(0.005..0.03),
            enospc: rng.random_range(0.005..0.03),
            points: Vec::new(),
        };
        let (dir, rt, resumed) = run(&t, Some((plan, 10))).await;
        let got = final_params(dir.path(), "trial");
        assert_eq!(got, expected, "trial {seed}: final parameters differ from the fault-free run");

        let jd = JobDir::new(dir.path(), &JobId::new("trial").unwrap());
        let cfg = jd.read_config().unwrap();
        let hits = rt.probe_hits();
        for k in 0..cfg.total_rounds {
            assert_eq!(hits.get(&("combine.applied", k)), Some(&1), "trial {seed}: round {k} applied ≠ once");
        }
        let p = LocalProgress::new(dir.path()).load(&jd.job).await.unwrap();
        assert_eq!(p.rounds.len() as u64, cfg.total_rounds, "trial {seed}: round records");
        for k in 0..cfg.total_rounds {
            assert_eq!(p.done.get(&k).map(|d| d.len()), Some(t.workers), "trial {seed}: round {k} finished workers");
        }
        continued += p.workers.values().map(|w| w.continuations).sum::<u64>();
        crashes += rt.crashes();
        panics += rt.panics();
        enospc += rt.enospc();
        duplicates += rt.duplicates();
        gave_up += rt.dead_letters().len();
        resumes += resumed;
    }
    // The trials must have exercised what they claim to.
    assert!(continued > trials, "only {continued} continuations over {trials} trials");
    assert!(crashes > trials, "only {crashes} injected crashes");
    assert!(panics > trials / 2, "only {panics} injected panics");
    assert!(enospc > trials / 2, "only {enospc} injected ENOSPC failures");
    assert!(duplicates > trials, "only {duplicates} duplicated deliveries");
    assert!(gave_up > 0 && resumes > 0, "no invocation ever exhausted its retries, so resume was never needed");
    eprintln!(
        "{trials} trials (seeds {first}..{}) in {:.1} s: {crashes} crashes, {panics} panics, {enospc} ENOSPC, \
         {duplicates} duplicated deliveries, {continued} continuations, {gave_up} dead letters, {resumes} resumes",
        first + trials,
        started.elapsed().as_secs_f64()
    );
}

/// A job whose invocations all die part-way (no retries, frequent crashes)
/// is restarted by a resume event in a fresh runtime, from its checkpoint,
/// and ends with the parameters of an undisturbed run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_job_resumes_from_its_last_checkpoint() {
    let t = Trial {
        workers: 3,
        spec: spec("train", json!({"batch": 2, "epochs": 2, "lr": 0.05, "seed": 4, "time_limit_ms": 900000})),
    };
    let (clean, _, _) = run(&t, None).await;
    let expected = final_params(clean.path(), "trial");

    let dir = temp_root();
    let (x, y) = blobs(30, 5, 3, 9);
    write_features(dir.path(), "train", &x, &y);
    let dying = LocalConfig {
        retries: 0,
        faults: FaultPlan { seed: 3, crash: 0.15, ..FaultPlan::default() },
        ..local_config()
    };
    let rt = LocalRuntime::start(dir.path(), TickClock::new(0, 1), dying);
    rt.invoke_payload(start_event("trial", 3, t.spec.clone()).to_json()).unwrap();
    rt.idle().await;
    let jd = JobDir::new(dir.path(), &JobId::new("trial").unwrap());
    assert!(jd.exists() && !jd.final_json().exists(), "the job should have died part-way");
    assert!(!rt.dead_letters().is_empty());
    let died_at = *jd.param_rounds().unwrap().last().unwrap();

    let rt = LocalRuntime::start(dir.path(), TickClock::new(0, 1), local_config());
    let out = rt.call(&json!({"resume": true, "job": "trial"})).await.unwrap();
    assert!(matches!(out, lml_lambda::Outcome::Resumed { round, .. } if round == died_at), "{out:?}");
    rt.idle().await;
    assert!(jd.final_json().exists(), "resumed job did not finish");
    assert_eq!(final_params(dir.path(), "trial"), expected);
}
