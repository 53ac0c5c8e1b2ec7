//! Randomised fault trials: duplicated, delayed and reordered deliveries,
//! invocations that crash at any probe point and are retried (or die for
//! good, after which the job is resumed), and continuations at random points
//! from random time limits. Every trial must apply each round exactly once
//! and end with the fault-free run's parameters, bit for bit.

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

const TRIALS: u64 = 300;

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

/// Runs `t` on a fresh root; with `faults`, keeps resuming until the job ends.
async fn run(t: &Trial, faults: Option<(FaultPlan, u64)>) -> (tempfile::TempDir, LocalRuntime<TickClock>) {
    let dir = temp_root();
    let (x, y) = blobs(30, 5, 3, 9);
    write_features(dir.path(), "train", &x, &y);
    let limit = t.spec["time_limit_ms"].as_u64().unwrap();
    let (plan, tick) = faults.unwrap_or((FaultPlan::default(), 1));
    let cfg = LocalConfig {
        memory_mb: 1769,
        // Fault-free runs get a limit no continuation is needed under.
        time_limit_ms: if plan.crash > 0.0 { limit } else { 900_000 },
        enforce_time_limit: false,
        concurrency: 8,
        retries: 2,
        faults: plan,
    };
    let rt = LocalRuntime::start(dir.path(), TickClock::new(1_000_000, tick), cfg);
    let job = JobId::new("trial").unwrap();
    let jd = JobDir::new(dir.path(), &job);
    let start = start_event("trial", t.workers, t.spec.clone());
    for attempt in 0.. {
        assert!(attempt < 200, "job did not finish after {attempt} resumes");
        if attempt == 0 || !jd.exists() {
            rt.invoke(&start).await.unwrap();
        } else {
            rt.invoke_payload(Event::Resume { job: job.clone() }.to_json()).unwrap();
        }
        rt.idle().await;
        if jd.final_json().exists() {
            break;
        }
    }
    (dir, rt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_fault_trials_end_with_the_fault_free_parameters() {
    let mut continued = 0;
    let mut crashes = 0;
    let mut gave_up = 0;
    for seed in 0..TRIALS {
        let t = trial(seed);
        let (clean_dir, clean_rt) = run(&t, None).await;
        let dead = clean_rt.dead_letters();
        assert!(dead.is_empty(), "trial {seed}: fault-free run failed: {dead:?}");
        let expected = final_params(clean_dir.path(), "trial");

        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xfa17);
        let plan = FaultPlan {
            seed,
            duplicate: rng.random_range(0.0..0.4),
            max_delay_ms: rng.random_range(0..=3),
            crash: rng.random_range(0.01..0.08),
        };
        let (dir, rt) = run(&t, Some((plan, 10))).await;
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
        gave_up += rt.dead_letters().len();
    }
    assert!(continued > TRIALS, "only {continued} continuations over {TRIALS} trials");
    // The trials must have exercised what they claim to.
    assert!(crashes > TRIALS, "only {crashes} injected crashes");
    assert!(gave_up > 0, "no invocation ever exhausted its retries, so resume was never needed");
    eprintln!("{TRIALS} trials: {crashes} crashes, {gave_up} dead letters (then resumed), {continued} continuations");
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
    let (clean, _) = run(&t, None).await;
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
