//! An end-to-end job through real emulators: the Lambda binary served by
//! `cargo lambda watch` (the Lambda runtime API and the Invoke API), its
//! workers invoked through `aws-sdk-lambda`, its progress in DynamoDB
//! (`moto_server`), and the job folder on a local directory standing in for
//! EFS. The result must equal the local runtime's, bit for bit.
//!
//! `cargo lambda watch` runs `Event` invokes synchronously (it answers 200
//! when the handler ends) and answers a handler error with 500. To test the
//! asynchronous semantics anyway, the function's Lambda endpoint is a small
//! forwarding layer here that answers `Event` invokes with 202 at once and
//! delivers them in the background, retrying a failed delivery twice, as
//! Lambda does.
#![cfg(feature = "aws")]

mod common;

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lml_lambda::aws::emulator::Moto;
use lml_lambda::event::JobId;
use lml_lambda::progress::{JobStatus, ProgressStore};
use lml_lambda::services::SystemClock;
use lml_lambda::LocalRuntime;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One HTTP/1.1 request: method, path, lower-cased headers, body.
struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

async fn read_request(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).await.ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.ok()?;
    Some(Request { path, headers, body })
}

/// POSTs `body` to `addr` + `path` as a synchronous invoke; returns the status and body.
async fn post(addr: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         X-Amz-Invocation-Type: RequestResponse\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.as_bytes().to_vec()).unwrap_or_default();
    Ok((status, body))
}

#[derive(Default)]
struct Stats {
    accepted: AtomicUsize,
    delivered: AtomicUsize,
    retried: AtomicUsize,
    failed: AtomicUsize,
}

/// The asynchronous-invoke layer in front of `cargo lambda watch` at `target`.
async fn forwarder(target: String) -> (String, Arc<Stats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stats = Arc::new(Stats::default());
    let st = stats.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else { return };
            let (target, stats) = (target.clone(), st.clone());
            tokio::spawn(async move {
                let (rd, mut wr) = conn.into_split();
                let mut rd = BufReader::new(rd);
                while let Some(req) = read_request(&mut rd).await {
                    if req.header("x-amz-invocation-type") == Some("Event") {
                        stats.accepted.fetch_add(1, Ordering::SeqCst);
                        let resp = "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nx-amzn-RequestId: fwd\r\n\r\n";
                        if wr.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                        let (target, stats) = (target.clone(), stats.clone());
                        tokio::spawn(async move {
                            // Lambda: the first attempt plus two retries of a failed event.
                            for attempt in 0..3 {
                                match post(&target, &req.path, &req.body).await {
                                    Ok((200, _)) => {
                                        stats.delivered.fetch_add(1, Ordering::SeqCst);
                                        return;
                                    }
                                    _ if attempt < 2 => {
                                        stats.retried.fetch_add(1, Ordering::SeqCst);
                                        tokio::time::sleep(Duration::from_millis(200)).await;
                                    }
                                    _ => {
                                        stats.failed.fetch_add(1, Ordering::SeqCst);
                                    }
                                }
                            }
                        });
                    } else {
                        let (status, body) = post(&target, &req.path, &req.body).await.unwrap_or((502, Vec::new()));
                        let head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n", body.len());
                        if wr.write_all(head.as_bytes()).await.is_err() || wr.write_all(&body).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, stats)
}

/// `cargo lambda watch` serving the `lml-lambda` binary, killed on drop.
struct Watch(Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_runs_end_to_end_through_the_lambda_and_dynamodb_apis() {
    let moto = Moto::start();
    let store = moto.store("lml-e2e");
    store.ensure_table().await.unwrap();
    let root = temp_root();
    write_images(root.path(), 24, 9);

    let port = free_port();
    let (fwd, stats) = forwarder(format!("127.0.0.1:{port}")).await;
    let env = [
        format!("LML_ROOT={}", root.path().display()),
        "LML_TABLE=lml-e2e".to_string(),
        "LML_FUNCTION=lml-lambda".to_string(),
        format!("AWS_ENDPOINT_URL_LAMBDA=http://{fwd}"),
        format!("AWS_ENDPOINT_URL_DYNAMODB={}", moto.url),
        "AWS_ACCESS_KEY_ID=test".to_string(),
        "AWS_SECRET_ACCESS_KEY=test".to_string(),
        "AWS_REGION=us-east-1".to_string(),
    ];
    // The function is built as `-p lml-lambda` alone, whose feature set
    // differs from the workspace's: a target dir of its own keeps the two
    // builds from invalidating each other. Built here first, so that watch
    // (which would build on the first invoke) starts at once.
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let target_dir = format!("{workspace}/target/lambda-watch");
    let built = Command::new("cargo")
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["build", "-p", "lml-lambda", "--bin", "lml-lambda"])
        .status()
        .unwrap();
    assert!(built.success(), "building the function failed");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace)
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["lambda", "watch", "--quiet", "--ignore-changes", "-p", "lml-lambda", "--bin", "lml-lambda"])
        .args(["--invoke-address", "127.0.0.1", "--invoke-port", &port.to_string(), "--concurrency", "16"]);
    for e in &env {
        cmd.args(["--env-var", e]);
    }
    let child =
        cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(|e| {
            panic!("cannot run `cargo lambda watch` ({e}): pip install cargo-lambda (.ci/run does)")
        });
    let _watch = Watch(child);
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(120), "cargo lambda watch did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A client starts the job as a user would: an Event invoke through the Invoke API.
    let conf = aws_sdk_lambda::Config::builder()
        .behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest())
        .region(aws_sdk_lambda::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_lambda::config::Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(format!("http://{fwd}"))
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
