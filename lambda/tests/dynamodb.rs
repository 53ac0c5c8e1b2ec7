//! The DynamoDB progress store against a real DynamoDB emulator
//! (`moto_server`, PyPI `moto[server]`, started here on 127.0.0.1):
//! conditional puts, `ADD` to a set, claims under contention, and a whole
//! job whose progress lives in the table.
#![cfg(feature = "aws")]

mod common;

use common::*;
use lml_lambda::aws::emulator::Moto;
use lml_lambda::event::JobId;
use lml_lambda::layout::Claim;
use lml_lambda::progress::{JobRecord, JobStatus, LocalProgress, ProgressStore, RoundRecord, Score, WorkerRecord};
use lml_lambda::services::SystemClock;
use lml_lambda::LocalRuntime;
use serde_json::json;

fn round(k: u64, loss: f64) -> RoundRecord {
    RoundRecord {
        round: k,
        epoch: 0,
        train: Score { loss, accuracy: 0.5, examples: 8 },
        eval: None,
        worker_ms: 1,
        combine_ms: 2,
        round_ms: 3,
        finished_ms: 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_puts_sets_and_claims_hold_against_dynamodb() {
    let moto = Moto::start();
    let store = moto.store("lml-progress");
    store.ensure_table().await.unwrap();
    store.ensure_table().await.unwrap(); // idempotent
    let job = JobId::new("j").unwrap();

    assert!(store.put_round(&job, &round(0, 2.3)).await.unwrap());
    assert!(!store.put_round(&job, &round(0, 9.9)).await.unwrap(), "a round record is written once");
    let w = WorkerRecord { round: 0, workerno: 3, examples: 8, compute_ms: 5, continuations: 1, finished_ms: 6 };
    assert!(store.put_worker(&job, &w).await.unwrap());
    assert!(!store.put_worker(&job, &w).await.unwrap());

    // ADD to a set: retries of the same worker do not count twice.
    assert_eq!(store.add_done(&job, 0, 3).await.unwrap(), 1);
    assert_eq!(store.add_done(&job, 0, 3).await.unwrap(), 1);
    assert_eq!(store.add_done(&job, 0, 1).await.unwrap(), 2);

    // Sixteen contenders for one claim: exactly one wins, all see the winner.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (store, job) = (store.clone(), job.clone());
        tasks.push(tokio::spawn(
            async move { (i, store.claim(&job, "combine#0", &format!("worker {i}")).await.unwrap()) },
        ));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let winners: Vec<usize> = results.iter().filter(|(_, c)| *c == Claim::Won).map(|(i, _)| *i).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let owner = format!("worker {}", winners[0]);
    assert!(results.iter().all(|(_, c)| c.is_mine(&owner)), "{results:?}");

    let p = store.load(&job).await.unwrap();
    assert_eq!(p.rounds[&0].train.loss, 2.3, "the first write stands");
    assert_eq!(p.workers[&(0, 3)], w);
    assert_eq!(p.done[&0].iter().copied().collect::<Vec<_>>(), vec![1, 3]);
    assert!(store.load(&JobId::new("other").unwrap()).await.unwrap().rounds.is_empty());

    // A failed job's record (status, reason, classes and their names) round-trips.
    let failed = JobRecord {
        job: "j".into(),
        status: JobStatus::Failed,
        workers: 4,
        examples: 100,
        rounds_per_epoch: 1,
        total_rounds: 10,
        started_ms: 1,
        rounds_done: Some(3),
        finished_ms: Some(2),
        reason: Some("diverged: training loss became NaN at round 2 with lr 3: lower the learning rate".into()),
        eval: None,
        classes: 3,
        class_names: vec!["cat".into(), "dog".into(), "bird".into()],
    };
    store.put_job(&job, &failed).await.unwrap();
    assert_eq!(store.load(&job).await.unwrap().job, Some(failed));
}

/// The same job with progress in DynamoDB and in local files: the same
/// parameters, bit for bit, and the same records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_progress_in_dynamodb_matches_the_local_store() {
    let moto = Moto::start();
    let (x, y) = blobs(45, 6, 3, 8);
    let s = spec("train", json!({"batch": 4, "micro_batch": 2, "epochs": 2, "lr": 0.05, "seed": 3}));

    let local_root = temp_root();
    write_features(local_root.path(), "train", &x, &y);
    let rt = LocalRuntime::start(local_root.path(), SystemClock, local_config());
    run_job(&rt, "job", 3, s.clone()).await;

    let dynamo_root = temp_root();
    write_features(dynamo_root.path(), "train", &x, &y);
    let store = moto.store("lml-job-test");
    store.ensure_table().await.unwrap();
    let rt = LocalRuntime::start_with(dynamo_root.path(), SystemClock, store.clone(), local_config());
    run_job(&rt, "job", 3, s).await;

    assert_eq!(final_params(dynamo_root.path(), "job"), final_params(local_root.path(), "job"));
    let job = JobId::new("job").unwrap();
    let (d, l) = (store.load(&job).await.unwrap(), LocalProgress::new(local_root.path()).load(&job).await.unwrap());
    assert_eq!(d.job.as_ref().map(|j| j.status), Some(JobStatus::Finished));
    assert_eq!(d.rounds.len(), l.rounds.len());
    for (a, b) in d.rounds.values().zip(l.rounds.values()) {
        assert_eq!((a.round, a.train), (b.round, b.train));
    }
    assert_eq!(d.done, l.done);
    assert_eq!(d.workers.keys().collect::<Vec<_>>(), l.workers.keys().collect::<Vec<_>>());
    assert!(!dynamo_root.path().join("jobs/job/progress/job.json").exists(), "progress went to the table, not EFS");
}
