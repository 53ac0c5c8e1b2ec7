//! Feature extraction as a job: the cache the workers merge is the bytes the
//! one-process extraction (`lml extract-features`, the kernel's
//! `extract_shard` + `merge`) writes, for any worker count, any continuation
//! points, under duplicated, reordered, crashing and retried deliveries, and
//! after a resume of a job whose invocations all died.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use lml_kernel::dataset::ImageDataset;
use lml_kernel::features::{extract_shard, merge, Dtype, BATCH};
use lml_kernel::{Cut, Vgg19};
use lml_lambda::event::JobId;
use lml_lambda::extract::shard_count;
use lml_lambda::layout::JobDir;
use lml_lambda::local::CrashProbe;
use lml_lambda::progress::{JobStatus, LocalProgress, ProgressStore};
use lml_lambda::services::{Invocation, SystemClock, TickClock};
use lml_lambda::{FaultPlan, LocalConfig, LocalRuntime, Outcome};
use serde_json::{json, Value};

/// The one-process cache of `images.npy` under `root`, in `root/reference`:
/// `(features.npy bytes, y.npy bytes)`.
fn reference(root: &Path) -> (Vec<u8>, Vec<u8>) {
    let out = root.join("reference");
    let data = ImageDataset::open(root.join("images.npy"), root.join("labels.npy")).unwrap();
    let vgg = Vgg19::open(root.join("vgg"), 32, Cut::Pool5).unwrap();
    extract_shard(&vgg, &data, &out, "train", (0, 1), Dtype::F32, &mut |_| {}).unwrap();
    merge(&out, "train", 1, &root.join("labels.npy"), &json!({})).unwrap().unwrap();
    (std::fs::read(out.join("train_features.npy")).unwrap(), std::fs::read(out.join("train_y.npy")).unwrap())
}

/// The spec of an extraction of the test images into `cache-{job}`.
fn spec(job: &str, shard_images: usize, extra: Value) -> Value {
    let mut s = json!({
        "images": "images.npy", "labels": "labels.npy", "weights": "vgg", "input_size": 32,
        "cut": "pool5", "out": format!("cache-{job}"), "shard_images": shard_images,
    });
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

fn start(job: &str, workers: usize, spec: Value) -> Value {
    json!({"extract": "start", "workers": workers, "job": job, "spec": spec})
}

fn job(id: &str) -> JobId {
    JobId::new(id).unwrap()
}

/// The merged cache of `job`, after checking the job ended and was recorded.
async fn merged(root: &Path, id: &str) -> (Vec<u8>, Vec<u8>) {
    let jd = JobDir::new(root, &job(id));
    assert!(jd.final_json().exists(), "job {id} has not ended");
    let p = LocalProgress::new(root).load(&job(id)).await.unwrap();
    let rec = p.extract.expect("an extraction record");
    assert_eq!(rec.status, JobStatus::Finished);
    assert_eq!(rec.cache.as_deref(), Some(format!("cache-{id}/train_features.npy").as_str()));
    assert_eq!(p.shards.len(), rec.shards, "one record per shard");
    assert_eq!(p.shards.values().map(|s| s.images).sum::<usize>(), rec.images);
    assert!(!jd.dir.join("shards").exists(), "saves and claims are dropped once merged");
    let out = root.join(format!("cache-{id}"));
    (std::fs::read(out.join("train_features.npy")).unwrap(), std::fs::read(out.join("train_y.npy")).unwrap())
}

fn no_faults(time_limit_ms: u64) -> LocalConfig {
    LocalConfig { time_limit_ms, enforce_time_limit: false, ..local_config() }
}

/// The cache does not depend on the worker count (nor, so, on the shard count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_merged_cache_is_the_one_process_cache_for_any_worker_count() {
    let dir = temp_root();
    let root = dir.path();
    write_images(root, 37, 1);
    std::fs::write(root.join("classes.txt"), "a\nb\nc\n").unwrap();
    let expected = reference(root);
    let rt = LocalRuntime::start(root, SystemClock, local_config());
    for workers in [1, 2, 3, 5] {
        let id = format!("n{workers}");
        rt.invoke_payload(start(&id, workers, spec(&id, 8, json!({})))).unwrap();
        rt.idle().await;
        assert!(rt.dead_letters().is_empty(), "{:?}", rt.dead_letters());
        assert_eq!(merged(root, &id).await, expected, "{workers} workers");
        let p = LocalProgress::new(root).load(&job(&id)).await.unwrap();
        assert_eq!(p.shards.len(), shard_count(workers, 37, 8));
        let classes = std::fs::read_to_string(root.join(format!("cache-{id}/classes.txt"))).unwrap();
        assert_eq!(classes, "a\nb\nc\n", "the class list travels with the cache");
        let note: Value =
            serde_json::from_slice(&std::fs::read(root.join(format!("cache-{id}/train_features.json"))).unwrap())
                .unwrap();
        assert_eq!((note["images"].as_u64(), note["dim"].as_u64()), (Some(37), Some(512)));
    }
}

/// One batch per invocation (a 1 ms limit): every shard longer than a batch
/// is saved and continued at each batch boundary; then a run where the
/// limit falls at varying points (a clock that advances at every reading).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuations_at_batch_boundaries_change_nothing() {
    let dir = temp_root();
    let root = dir.path();
    write_images(root, 70, 2);
    let expected = reference(root);
    let quick = json!({"time_limit_ms": 1, "safety_ms": 0});

    let rt = LocalRuntime::start(root, SystemClock, no_faults(1));
    rt.invoke_payload(start("every", 1, spec("every", 64, quick.clone()))).unwrap();
    rt.idle().await;
    assert!(rt.dead_letters().is_empty(), "{:?}", rt.dead_letters());
    assert_eq!(merged(root, "every").await, expected);
    // 4 shards of 17–18 rows: two batches each, so one save each.
    let p = LocalProgress::new(root).load(&job("every")).await.unwrap();
    assert_eq!(p.shards.len(), 4);
    assert!(p.shards.values().all(|s| s.images > BATCH && s.parts == 1), "{:?}", p.shards);
    let saved: usize = rt.probe_hits().iter().filter(|((p, _), _)| *p == "extract.saved").map(|(_, n)| n).sum();
    assert_eq!(saved, 4);

    // Varying points: the clock moves 7 ms at every reading, the limit is 60 ms.
    let rt = LocalRuntime::start(root, TickClock::new(1_000_000, 7), no_faults(60));
    let before = rt.invocations();
    rt.invoke_payload(start("varied", 1, spec("varied", 64, json!({"time_limit_ms": 60, "safety_ms": 0})))).unwrap();
    rt.idle().await;
    assert!(rt.dead_letters().is_empty(), "{:?}", rt.dead_letters());
    assert_eq!(merged(root, "varied").await, expected);
    assert!(rt.invocations() - before > 2, "the varied run never continued");
}

/// Seeded fault trials: duplicated and reordered deliveries, crashes at
/// every probe point (mid-shard included), panics, full disks, retries;
/// a job that still dies is resumed. The cache is the reference's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_trials_change_nothing() {
    // 37 images on 3 workers: 12 shards of one batch; 70 images on 1 worker:
    // 4 shards of two batches, so crashes fall between batches of a shard.
    let (many, long) = (temp_root(), temp_root());
    write_images(many.path(), 37, 3);
    write_images(long.path(), 70, 3);
    let expected = [reference(many.path()), reference(long.path())];
    let (mut crashes, mut duplicates, mut resumed) = (0, 0, 0);
    for seed in 0..4u64 {
        let (root, workers, shard_images, expected) =
            if seed % 2 == 0 { (many.path(), 3, 8, &expected[0]) } else { (long.path(), 1, 64, &expected[1]) };
        let faults =
            FaultPlan { seed, duplicate: 0.3, max_delay_ms: 3, crash: 0.08, enospc: 0.03, ..FaultPlan::default() };
        // Some trials also continue after every batch.
        let limit = if seed % 4 >= 2 { 1 } else { 900_000 };
        let config = LocalConfig { faults, ..no_faults(limit) };
        let rt = LocalRuntime::start(root, SystemClock, config);
        let id = format!("f{seed}");
        let extra = if limit == 1 { json!({"time_limit_ms": 1, "safety_ms": 0}) } else { json!({}) };
        rt.invoke_payload(start(&id, workers, spec(&id, shard_images, extra))).unwrap();
        rt.idle().await;
        for _ in 0..10 {
            if JobDir::new(root, &job(&id)).final_json().exists() {
                break;
            }
            resumed += 1;
            rt.invoke_payload(json!({"resume": true, "job": id})).unwrap();
            rt.idle().await;
        }
        assert_eq!(&merged(root, &id).await, expected, "seed {seed}");
        assert!(temp_files(root).is_empty(), "seed {seed}: {:?}", temp_files(root));
        crashes += rt.crashes();
        duplicates += rt.duplicates();
    }
    println!("{crashes} crashes, {duplicates} duplicates, {resumed} resumes");
    assert!(crashes > 0 && duplicates > 0, "the trials injected nothing");
}

/// Every invocation dies right after its first save (no retries): resume
/// takes the job from the saves to the end. Then a job whose merge died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_every_invocation_died() {
    let dir = temp_root();
    let root = dir.path();
    write_images(root, 70, 4);
    let expected = reference(root);
    let quick = json!({"time_limit_ms": 1, "safety_ms": 0});
    // One worker: 4 shards of two batches, so every shard is saved once.
    for (id, point, workers) in [("saved", "extract.saved", 1), ("merging", "merge.begin", 2)] {
        let faults = FaultPlan { crash: 1.0, points: vec![point.into()], ..FaultPlan::default() };
        let rt = LocalRuntime::start(root, SystemClock, LocalConfig { retries: 0, faults, ..no_faults(1) });
        rt.invoke_payload(start(id, workers, spec(id, 64, quick.clone()))).unwrap();
        rt.idle().await;
        assert!(!rt.dead_letters().is_empty(), "{id}: nothing died");
        assert!(!JobDir::new(root, &job(id)).final_json().exists());
        drop(rt);
        let rt = LocalRuntime::start(root, SystemClock, no_faults(900_000));
        let out = rt.call(&json!({"resume": true, "job": id})).await.unwrap();
        let what = if point == "merge.begin" { "merge" } else { "extract workers" };
        assert_eq!(out, Outcome::Resumed { round: 0, what });
        rt.idle().await;
        assert!(rt.dead_letters().is_empty(), "{:?}", rt.dead_letters());
        assert_eq!(merged(root, id).await, expected, "{id}");
        // Resuming an ended job does nothing.
        assert!(matches!(rt.call(&json!({"resume": true, "job": id})).await.unwrap(), Outcome::Skipped(_)));
    }
}

/// Worker 0 dies holding a claim on its first shard, its other shards
/// unclaimed. Worker 1 takes the unclaimed ones (from the end of worker
/// 0's queue); the claimed one only once its lease has run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_shards_are_taken_by_the_others() {
    let dir = temp_root();
    let root = dir.path();
    write_images(root, 40, 5);
    let expected = reference(root);
    let long = || Invocation { request_id: "long".into(), deadline_ms: None };
    for (id, lease_ms) in [("leased", 600_000u64), ("expired", 1)] {
        let (svc, rec) = manual(root);
        let s = spec(id, 64, json!({"lease_ms": lease_ms}));
        lml_lambda::handle(&svc, &start(id, 2, s), &long()).await.unwrap();
        let w0 = rec.events()[0].to_json();
        assert_eq!(w0["workerno"], 0);
        // Worker 0 computes shard 0 and dies before publishing it.
        let plan = FaultPlan { crash: 1.0, points: vec!["extract.recorded".into()], ..FaultPlan::default() };
        let dying = common::manual(root).0.with_probe(Arc::new(CrashProbe::new(&plan, 0)));
        assert!(lml_lambda::handle(&dying, &w0, &long()).await.is_err());
        std::thread::sleep(std::time::Duration::from_millis(5));
        let w1 = json!({"extract": "worker", "workerno": 1, "workers": 2, "job": id});
        let out = lml_lambda::handle(&svc, &w1, &long()).await.unwrap();
        let Outcome::Extracted { workerno: 1, shards, merge } = out else { panic!("{out:?}") };
        if lease_ms == 1 {
            assert_eq!((shards.as_slice(), merge), ([1, 3, 5, 7, 6, 4, 2, 0].as_slice(), true));
        } else {
            assert_eq!((shards.as_slice(), merge), ([1, 3, 5, 7, 6, 4, 2].as_slice(), false));
            // The job waits for worker 0, which resume invokes.
            let out = lml_lambda::handle(&svc, &json!({"resume": true, "job": id}), &long()).await.unwrap();
            assert_eq!(out, Outcome::Resumed { round: 0, what: "extract workers" });
            let w0_again = rec.events().last().unwrap().to_json();
            assert_eq!((w0_again["workerno"].as_u64(), w0_again["extract"].as_str()), (Some(0), Some("worker")));
            let out = lml_lambda::handle(&svc, &w0_again, &long()).await.unwrap();
            assert_eq!(out, Outcome::Extracted { workerno: 0, shards: vec![0], merge: true });
        }
        let merge_event = rec.events().last().unwrap().to_json();
        assert_eq!(merge_event, json!({"extract": "merge", "job": id}));
        lml_lambda::handle(&svc, &merge_event, &long()).await.unwrap();
        // A duplicate of the merge, or of a worker, changes nothing.
        assert!(matches!(lml_lambda::handle(&svc, &w1, &long()).await.unwrap(), Outcome::Skipped(_)));
        lml_lambda::handle(&svc, &merge_event, &long()).await.unwrap();
        assert_eq!(merged(root, id).await, expected, "{id}");
        let p = LocalProgress::new(root).load(&job(id)).await.unwrap();
        assert!([6, 4, 2].iter().all(|s| p.shards[s].stolen && p.shards[s].workerno == 1), "{:?}", p.shards);
    }
}

/// Bad starts, workers and merges are refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_extraction_events_change_nothing() {
    let dir = temp_root();
    let root = dir.path();
    write_images(root, 12, 6);
    lml_kernel::npy::write_npy_atomic(root.join("short_labels.npy"), &ndarray::Array1::<u32>::zeros(5)).unwrap();
    std::fs::create_dir(root.join("cache-full")).unwrap();
    std::fs::write(root.join("cache-full/train_features.npy"), b"an earlier cache").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("escape")).unwrap();
    let (svc, rec) = manual(root);
    let before = snapshot(root);
    let with = |field: &str, v: Value| {
        let mut s = spec("x", 8, json!({}));
        s[field] = v;
        start("x", 2, s)
    };
    let cases = [
        (with("images", json!("missing.npy")), "missing.npy"),
        (with("labels", json!("short_labels.npy")), "labels"),
        (with("cut", json!("fc7")), "classifier"),
        (with("input_size", json!(48)), "input_size"),
        (with("out", json!("escape/cache")), "outside the storage root"),
        (with("out", json!("cache-full")), "already holds train_features.npy"),
        (with("split", json!("a/b")), "spec.split"),
        (json!({"extract": "worker", "workerno": 0, "workers": 2, "job": "nope"}), "no such job"),
        (json!({"extract": "merge", "job": "nope"}), "no such job"),
        (json!({"extract": "start", "workers": 2, "job": "x", "spec": {"images": "images.npy"}}), "missing field"),
    ];
    for (payload, needle) in cases {
        let e = lml_lambda::handle(&svc, &payload, &Invocation::default()).await.unwrap_err();
        assert!(e.to_string().contains(needle), "{payload}: {e}");
        assert!(!e.is_retryable(), "{payload}: {e}");
    }
    assert!(rec.events().is_empty());
    assert_eq!(snapshot(root), before, "a refused event wrote something");

    // Events that do not fit an existing job change nothing either.
    lml_lambda::handle(&svc, &start("x", 2, spec("x", 8, json!({}))), &Invocation::default()).await.unwrap();
    let before = snapshot(root);
    let sent = rec.events().len();
    for (payload, needle) in [
        (json!({"extract": "worker", "workerno": 0, "workers": 3, "job": "x"}), "workers"),
        (json!({"extract": "merge", "job": "x"}), "not published"),
        (start("x", 2, spec("x", 4, json!({}))), "already exists"),
        (json!({"workerno": 0, "workers": 2, "job": "x"}), "malformed"),
        (json!({"stop": true, "job": "x"}), "malformed"),
    ] {
        let e = lml_lambda::handle(&svc, &payload, &Invocation::default()).await.unwrap_err();
        assert!(e.to_string().contains(needle), "{payload}: {e}");
    }
    assert_eq!(rec.events().len(), sent);
    assert_eq!(snapshot(root), before, "a refused event wrote something");
    // A duplicate start is accepted and invokes nothing new.
    let out = lml_lambda::handle(&svc, &start("x", 2, spec("x", 8, json!({}))), &Invocation::default()).await;
    assert_eq!(out.unwrap(), Outcome::Started { job: job("x"), duplicate: true });
    assert_eq!(rec.events().len(), sent);
}

/// The extraction's records in DynamoDB (the emulator): the job record with
/// the cache, one record per shard written once; the cache is the same.
#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extraction_with_progress_in_dynamodb() {
    let moto = lml_lambda::aws::emulator::Moto::start();
    let dir = temp_root();
    let root = dir.path();
    write_images(root, 12, 7);
    let expected = reference(root);
    let store = moto.store("lml-extract-test");
    store.ensure_table().await.unwrap();
    let config =
        LocalConfig { faults: FaultPlan { seed: 1, duplicate: 0.5, ..FaultPlan::default() }, ..local_config() };
    let rt = LocalRuntime::start_with(root, SystemClock, store.clone(), config);
    rt.invoke_payload(start("dyn", 2, spec("dyn", 8, json!({})))).unwrap();
    rt.idle().await;
    assert!(rt.dead_letters().is_empty(), "{:?}", rt.dead_letters());
    let p = store.load(&job("dyn")).await.unwrap();
    let rec = p.extract.expect("an extraction record");
    assert_eq!((rec.status, rec.shards, rec.images), (JobStatus::Finished, 8, 12));
    assert_eq!(rec.cache.as_deref(), Some("cache-dyn/train_features.npy"));
    assert_eq!(p.shards.keys().copied().collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
    assert!(!root.join("jobs/dyn/progress/extract.json").exists(), "progress went to the table, not EFS");
    let out = root.join("cache-dyn");
    let got = (std::fs::read(out.join("train_features.npy")).unwrap(), std::fs::read(out.join("train_y.npy")).unwrap());
    assert_eq!(got, expected);
}
