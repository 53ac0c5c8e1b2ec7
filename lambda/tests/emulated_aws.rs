//! An end-to-end job through real emulators: the Lambda binary served by
//! `cargo lambda watch` (the Lambda runtime API and the Invoke API), its
//! workers invoked through `aws-sdk-lambda`, its progress in DynamoDB
//! (`moto_server`), and the job folder on a local directory standing in for
//! EFS. The result must equal the local runtime's, bit for bit.
//!
//! `cargo lambda watch` runs `Event` invokes synchronously (it answers 200
//! when the handler ends) and answers a handler error with 500. To test the
//! asynchronous semantics anyway, the function's Lambda endpoint is a small
//! forwarding layer ([`AsyncInvokes`]) that answers `Event` invokes with 202
//! at once and delivers them in the background, retrying a failed delivery
//! twice, as Lambda does.
#![cfg(feature = "aws")]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use lml_lambda::aws::emulator::{free_port, AsyncInvokes, Moto, Watch};
use lml_lambda::event::JobId;
use lml_lambda::progress::{JobStatus, ProgressStore};
use lml_lambda::services::SystemClock;
use lml_lambda::LocalRuntime;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_runs_end_to_end_through_the_lambda_and_dynamodb_apis() {
    let moto = Moto::start();
    let store = moto.store("lml-e2e");
    store.ensure_table().await.unwrap();
    let root = temp_root();
    write_images(root.path(), 24, 9);

    let port = free_port();
    let invokes = AsyncInvokes::start(port);
    let stats = invokes.stats.clone();
    let env = [
        format!("LML_ROOT={}", root.path().display()),
        "LML_TABLE=lml-e2e".to_string(),
        "LML_FUNCTION=lml-lambda".to_string(),
        format!("AWS_ENDPOINT_URL_LAMBDA={}", invokes.url),
        format!("AWS_ENDPOINT_URL_DYNAMODB={}", moto.url),
        "AWS_ACCESS_KEY_ID=test".to_string(),
        "AWS_SECRET_ACCESS_KEY=test".to_string(),
        "AWS_REGION=us-east-1".to_string(),
    ];
    let _watch = Watch::start(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")), port, &env);

    // A client starts the job as a user would: an Event invoke through the Invoke API.
    let conf = aws_sdk_lambda::Config::builder()
        .behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest())
        .region(aws_sdk_lambda::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_lambda::config::Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(&invokes.url)
        .build();
    let invoker = lml_lambda::aws::LambdaInvoker::new(aws_sdk_lambda::Client::from_conf(conf), "lml-lambda");
    // First the seed's way: workers run the frozen VGG19 (pool5, random
    // weights) on images at every step, so a micro-batch takes milliseconds;
    // the time limit forces a continuation after each one: watch's deadline
    // (600000 ms after the epoch) is implausible, so workers plan against the spec's.
    let s = json!({"data": {"images": "images.npy", "labels": "labels.npy", "weights": "vgg", "input_size": 32, "cut": "pool5",
                            "forward": "every-step"},
                   "batch": 4, "micro_batch": 2, "epochs": 2, "lr": 0.05, "seed": 5, "time_limit_ms": 1, "safety_ms": 0});
    lml_lambda::services::Invoker::invoke(&invoker, &start_event("e2e", 3, s.clone())).await.unwrap();

    let job = JobId::new("e2e").unwrap();
    let t = Instant::now();
    let progress = loop {
        let p = store.load(&job).await.unwrap();
        if p.job.as_ref().is_some_and(|j| j.status != JobStatus::Running) {
            break p;
        }
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "job not finished after 240 s: {} rounds recorded; accepted {}, delivered {}, retried {}, failed {}",
            p.rounds.len(),
            stats.accepted.load(Ordering::SeqCst),
            stats.delivered.load(Ordering::SeqCst),
            stats.retried.load(Ordering::SeqCst),
            stats.failed.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    // 24 images / (3 workers × 4) = 2 rounds per epoch, 4 in all; every
    // worker slice is 2 micro-batches, so 1 continuation each, 12 in all.
    assert_eq!(progress.job.as_ref().unwrap().status, JobStatus::Finished);
    assert_eq!(progress.rounds.len(), 4);
    assert!(progress.done.values().all(|d| d.len() == 3), "finished workers per round: {:?}", progress.done);
    let continuations: u64 = progress.workers.values().map(|w| w.continuations).sum();
    assert!(continuations >= 10, "the short time limit forced only {continuations} continuations");
    assert_eq!(stats.failed.load(Ordering::SeqCst), 0);

    // Then one job from images to a trained head, the default: the workers
    // first extract the features in the extraction sub-job, whose merge
    // starts the training on the cache. The head is the same.
    let mut pipeline = s.clone();
    pipeline["data"].as_object_mut().unwrap().remove("forward");
    lml_lambda::services::Invoker::invoke(&invoker, &start_event("e2e-x", 3, pipeline)).await.unwrap();
    let piped = JobId::new("e2e-x").unwrap();
    let t = Instant::now();
    while !store.load(&piped).await.unwrap().job.is_some_and(|j| j.status != JobStatus::Running) {
        assert!(t.elapsed() < Duration::from_secs(240), "the pipeline did not finish in 240 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let sub = store.load(&JobId::new("e2e-x.extract-train").unwrap()).await.unwrap();
    let x = sub.extract.expect("the extraction phase's record, in the table");
    assert_eq!((x.status, x.workers, x.images), (JobStatus::Finished, 3, 24));
    assert_eq!(sub.shards.len(), x.shards);
    assert_eq!(store.load(&piped).await.unwrap().job.unwrap().status, JobStatus::Finished);
    assert_eq!(final_params(root.path(), "e2e-x"), final_params(root.path(), "e2e"), "extract first ≠ every step");
    assert_eq!(stats.failed.load(Ordering::SeqCst), 0);
    // Every invocation but the client's start came from the function itself, asynchronously.
    let accepted = stats.accepted.load(Ordering::SeqCst) as u64;
    assert!(accepted >= 1 + 4 * (3 + 1) + continuations, "{accepted} asynchronous invokes");

    let local = temp_root();
    write_images(local.path(), 24, 9);
    let rt = LocalRuntime::start(local.path(), SystemClock, local_config());
    run_job(&rt, "e2e", 3, s).await;
    assert_eq!(final_params(root.path(), "e2e"), final_params(local.path(), "e2e"), "AWS path ≠ local runtime");

    // The expensive step through the same APIs: an extraction job of the
    // same images over 3 workers (12 shards of 2; the 1 ms limit makes every
    // shard an invocation of its own), merged exactly once, equal to the
    // one-process cache.
    let x = json!({"extract": "start", "workers": 3, "job": "feats",
                   "spec": {"images": "images.npy", "labels": "labels.npy", "weights": "vgg", "input_size": 32,
                            "cut": "pool5", "out": "cache", "shard_images": 4, "time_limit_ms": 1, "safety_ms": 0}});
    let x = lml_lambda::Event::parse(&x).unwrap();
    lml_lambda::services::Invoker::invoke(&invoker, &x).await.unwrap();
    let feats = JobId::new("feats").unwrap();
    let t = Instant::now();
    let p = loop {
        let p = store.load(&feats).await.unwrap();
        if p.extract.as_ref().is_some_and(|x| x.status != JobStatus::Running) {
            break p;
        }
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "extraction not finished after 240 s: {} shards",
            p.shards.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let rec = p.extract.unwrap();
    let shards = lml_lambda::extract::shard_count(3, 24, 4);
    assert_eq!((rec.status, rec.shards, p.shards.len()), (JobStatus::Finished, shards, shards));
    assert_eq!(stats.failed.load(Ordering::SeqCst), 0);
    let data = lml_kernel::dataset::ImageDataset::open(root.path().join("images.npy"), root.path().join("labels.npy"))
        .unwrap();
    let vgg = lml_kernel::Vgg19::open(root.path().join("vgg"), 32, lml_kernel::Cut::Pool5).unwrap();
    let one = root.path().join("one-process");
    let f32 = lml_kernel::features::Dtype::F32;
    lml_kernel::features::extract_shard(&vgg, &data, &one, "train", (0, 1), f32, &mut |_| {}).unwrap();
    lml_kernel::features::merge(&one, "train", 1, &root.path().join("labels.npy"), &json!({})).unwrap().unwrap();
    for f in ["train_features.npy", "train_y.npy"] {
        let (aws, local) = (std::fs::read(root.path().join("cache").join(f)), std::fs::read(one.join(f)));
        assert!(aws.unwrap() == local.unwrap(), "{f}: the AWS path's cache differs from the one-process cache");
    }
}
