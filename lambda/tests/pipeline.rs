//! One job from images to a trained head: a training start on images
//! extracts the features on the job's workers first, into a cache keyed by
//! content, then trains on it. Its head is bit for bit the head of the
//! one-process extraction (the kernel's `extract_shard` + `merge`, what `lml
//! extract-features` runs) followed by training on that cache; a later job on
//! the same content reuses the cache; a pipeline whose invocations all died
//! resumes in either phase; a bad start writes nothing.

mod common;

use std::path::Path;

use common::*;
use lml_kernel::dataset::ImageDataset;
use lml_kernel::features::{extract_shard, merge, Dtype};
use lml_kernel::{Cut, Vgg19};
use lml_lambda::event::{Event, JobId};
use lml_lambda::layout::JobDir;
use lml_lambda::progress::{JobStatus, LocalProgress, ProgressStore};
use lml_lambda::services::{Invocation, SystemClock};
use lml_lambda::{FaultPlan, LocalConfig, LocalRuntime, Outcome};
use serde_json::{json, Value};

const IMAGES: usize = 30;

/// Images, labels, a class list and pool5 weights under `root`.
fn write_data(root: &Path) {
    write_images(root, IMAGES, 11);
    std::fs::write(root.join("classes.txt"), "a\nb\nc\n").unwrap();
}

/// A training spec on the images (the held-out split: the same images), merged with `extra`.
fn images_spec(extra: Value) -> Value {
    let data = json!({"images": "images.npy", "labels": "labels.npy", "weights": "vgg", "cut": "pool5"});
    let mut s = json!({"data": data, "eval": data, "epochs": 2, "batch": 4});
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

fn start(job: &str, workers: usize, spec: Value) -> Value {
    json!({"start": true, "workers": workers, "job": job, "spec": spec})
}

fn job(id: &str) -> JobId {
    JobId::new(id).unwrap()
}

fn no_faults() -> LocalConfig {
    LocalConfig { enforce_time_limit: false, ..local_config() }
}

/// The one-process caches of the images in `root/ref` (train and test
/// splits, class list beside them), then a training job `ref` on them with
/// the same settings: its final parameters.
async fn reference(root: &Path) -> (u64, lml_lambda::compute::Params) {
    let out = root.join("ref");
    let data = ImageDataset::open(root.join("images.npy"), root.join("labels.npy")).unwrap();
    let vgg = Vgg19::open(root.join("vgg"), 32, Cut::Pool5).unwrap();
    for split in ["train", "test"] {
        extract_shard(&vgg, &data, &out, split, (0, 1), Dtype::F32, &mut |_| {}).unwrap();
        merge(&out, split, 1, &root.join("labels.npy"), &json!({})).unwrap().unwrap();
    }
    std::fs::copy(root.join("classes.txt"), out.join("classes.txt")).unwrap();
    let cached = |s: &str| json!({"features": format!("ref/{s}_features.npy"), "labels": format!("ref/{s}_y.npy")});
    let spec = json!({"data": cached("train"), "eval": cached("test"), "epochs": 2, "batch": 4});
    let rt = LocalRuntime::start(root, SystemClock, no_faults());
    run_job(&rt, "ref", 2, spec).await;
    final_params(root, "ref")
}

/// The keyed cache folders under `root/cache`.
fn caches(root: &Path) -> Vec<std::path::PathBuf> {
    let Ok(d) = std::fs::read_dir(root.join("cache")) else { return Vec::new() };
    let mut v: Vec<_> = d.map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// Checks that pipeline job `id` ended having extracted both splits, and
/// returns its final parameters.
async fn ended(root: &Path, id: &str) -> (u64, lml_lambda::compute::Params) {
    let jd = JobDir::new(root, &job(id));
    assert!(jd.final_json().exists(), "job {id} has not ended");
    let cfg = jd.read_config().unwrap();
    let features = cfg.spec.data.features.as_deref().unwrap();
    assert!(features.starts_with("cache/") && features.ends_with("/train_features.npy"), "{features}");
    let eval = cfg.spec.eval.as_ref().and_then(|e| e.features.as_deref()).unwrap();
    assert!(eval.ends_with("/test_features.npy"), "{eval}");
    assert_eq!(cfg.class_names, ["a", "b", "c"], "the class list travels with the cache");
    let p = LocalProgress::new(root).load(&job(id)).await.unwrap();
    assert_eq!(p.job.unwrap().status, JobStatus::Finished);
    final_params(root, id)
}

/// The pipeline's head is bit for bit that of extracting in one process
/// and training on that cache with the same spec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_trains_the_head_of_extract_then_train() {
    let dir = temp_root();
    let root = dir.path();
    write_data(root);
    let expected = reference(root).await;
    let rt = LocalRuntime::start(root, SystemClock, no_faults());
    rt.invoke_payload(start("p", 2, images_spec(json!({})))).unwrap();
    rt.idle().await;
    assert!(rt.dead_letters().is_empty(), "{:?}", rt.dead_letters());
    assert_eq!(ended(root, "p").await, expected);
    // Both splits went through the extraction jobs on the workers, into one keyed folder.
    for split in ["train", "test"] {
        let sub = job(&format!("p.extract-{split}"));
        let x = LocalProgress::new(root).load(&sub).await.unwrap().extract.expect("an extraction record");
        assert_eq!((x.status, x.workers, x.images), (JobStatus::Finished, 2, IMAGES));
    }
    let keyed = caches(root);
    assert_eq!(keyed.len(), 1, "{keyed:?}");
    for split in ["train", "test"] {
        let f = |d: &Path| std::fs::read(d.join(format!("{split}_features.npy"))).unwrap();
        assert!(f(&keyed[0]) == f(&root.join("ref")), "{split}: the keyed cache is the one-process cache");
    }
    // With the seed's way (the forward at every step) the head is the same too:
    // a batch of at most BATCH images gives every image the same bits.
    let mut every = images_spec(json!({}));
    for d in ["data", "eval"] {
        every[d]["forward"] = json!("every-step");
    }
    rt.invoke_payload(start("every", 2, every)).unwrap();
    rt.idle().await;
    assert!(rt.dead_letters().is_empty(), "{:?}", rt.dead_letters());
    let cfg = JobDir::new(root, &job("every")).read_config().unwrap();
    assert_eq!(cfg.spec.data.images.as_deref(), Some("images.npy"), "every-step trains on the images");
    assert!(!JobDir::new(root, &job("every.extract-train")).exists());
    assert_eq!(final_params(root, "every"), expected);
}

/// A later job on the same content (other paths, the same bytes) starts
/// training at once: no extraction event, no extraction job. Other content
/// (one label changed) is extracted anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_job_on_the_same_content_reuses_the_cache() {
    let dir = temp_root();
    let root = dir.path();
    write_data(root);
    let rt = LocalRuntime::start(root, SystemClock, no_faults());
    rt.invoke_payload(start("first", 2, images_spec(json!({})))).unwrap();
    rt.idle().await;
    assert!(rt.dead_letters().is_empty(), "{:?}", rt.dead_letters());
    let first = final_params(root, "first");
    std::fs::create_dir(root.join("copy")).unwrap();
    for f in ["images.npy", "labels.npy", "classes.txt"] {
        std::fs::copy(root.join(f), root.join("copy").join(f)).unwrap();
    }
    let moved = |labels: &str| {
        let data = json!({"images": "copy/images.npy", "labels": labels, "weights": "vgg", "cut": "pool5"});
        images_spec(json!({"data": data, "eval": data}))
    };
    let (svc, rec) = manual(root);
    let out = lml_lambda::handle(&svc, &start("again", 2, moved("copy/labels.npy")), &Invocation::default()).await;
    assert_eq!(out.unwrap(), Outcome::Started { job: job("again"), duplicate: false });
    let events = rec.events();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| matches!(e, Event::Worker(_))), "{events:?}");
    assert!(!JobDir::new(root, &job("again.extract-train")).exists());
    assert_eq!(JobDir::new(root, &job("again")).read_config().unwrap().spec.data, {
        JobDir::new(root, &job("first")).read_config().unwrap().spec.data
    });
    // Run to the end, it trains the same head.
    let rt = LocalRuntime::start(root, SystemClock, no_faults());
    rt.invoke_payload(json!({"resume": true, "job": "again"})).unwrap();
    rt.idle().await;
    assert_eq!(final_params(root, "again"), first);

    let mut labels = ndarray::Array1::<u32>::from_shape_fn(IMAGES, |i| (i % 3) as u32);
    labels[0] = 1;
    lml_kernel::npy::write_npy_atomic(root.join("copy/other_labels.npy"), &labels).unwrap();
    let (svc, rec) = manual(root);
    lml_lambda::handle(&svc, &start("other", 2, moved("copy/other_labels.npy")), &Invocation::default()).await.unwrap();
    let events = rec.events();
    assert!(!events.is_empty() && events.iter().all(|e| matches!(e, Event::Extract(_))), "{events:?}");
    assert!(JobDir::new(root, &job("other.extract-train")).exists());
}

/// Every invocation dies at one point (no retries): in the extraction
/// (the merge), between the phases, in the training (every worker). A
/// resume of the training job takes it to the end, with the reference's head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_resumes_after_every_invocation_died_in_either_phase() {
    let dir = temp_root();
    write_data(dir.path());
    let expected = reference(dir.path()).await;
    for point in ["merge.begin", "pipeline.then", "worker.begin"] {
        let dir = temp_root();
        let root = dir.path();
        write_data(root);
        let faults = FaultPlan { crash: 1.0, points: vec![point.into()], ..FaultPlan::default() };
        let rt = LocalRuntime::start(root, SystemClock, LocalConfig { retries: 0, faults, ..no_faults() });
        rt.invoke_payload(start("p", 2, images_spec(json!({})))).unwrap();
        rt.idle().await;
        assert!(!rt.dead_letters().is_empty(), "{point}: nothing died");
        assert!(!JobDir::new(root, &job("p")).final_json().exists(), "{point}");
        assert_eq!(JobDir::new(root, &job("p")).exists(), point == "worker.begin", "{point}");
        drop(rt);
        let rt = LocalRuntime::start(root, SystemClock, no_faults());
        let out = rt.call(&json!({"resume": true, "job": "p"})).await.unwrap();
        assert!(matches!(out, Outcome::Resumed { .. }), "{point}: {out:?}");
        rt.idle().await;
        assert!(rt.dead_letters().is_empty(), "{point}: {:?}", rt.dead_letters());
        assert_eq!(ended(root, "p").await, expected, "{point}");
        assert!(temp_files(root).is_empty(), "{point}: {:?}", temp_files(root));
    }
}

/// A bad start on images is refused before anything is written or invoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pipeline_start_changes_nothing() {
    let dir = temp_root();
    let root = dir.path();
    write_data(root);
    lml_kernel::npy::write_npy_atomic(root.join("short_labels.npy"), &ndarray::Array1::<u32>::zeros(5)).unwrap();
    let (x, y) = blobs(IMAGES, 7, 3, 1);
    write_features(root, "seven", &x, &y);
    let (svc, rec) = manual(root);
    let before = snapshot(root);
    let with = |path: &str, v: Value| {
        let mut s = images_spec(json!({}));
        s["data"][path] = v;
        s
    };
    let long = "j".repeat(60);
    let cases = [
        (start("x", 2, with("images", json!("missing.npy"))), "missing.npy"),
        (start("x", 2, with("labels", json!("short_labels.npy"))), "labels"),
        (start("x", 2, with("cut", json!("fc7"))), "classifier"),
        (start("x", 2, with("weights", json!("nowhere"))), "nowhere"),
        (
            start(
                "x",
                2,
                images_spec(json!({"eval": {"features": "features/seven_features.npy",
                                                    "labels": "features/seven_y.npy"}})),
            ),
            "eval",
        ),
        (start("x", 2, images_spec(json!({"rounds": 1_000_000_000_000u64}))), "rounds"),
        (start(&long, 2, images_spec(json!({}))), "too long"),
        (
            start(
                "x",
                2,
                json!({"data": {"features": "features/seven_features.npy", "labels": "features/seven_y.npy",
                                       "forward": "every-step"}}),
            ),
            "spec.data.forward",
        ),
    ];
    for (payload, needle) in cases {
        let e = lml_lambda::handle(&svc, &payload, &Invocation::default()).await.unwrap_err();
        assert!(e.to_string().contains(needle), "{payload}: {e}");
        assert!(!e.is_retryable(), "{payload}: {e}");
    }
    assert!(rec.events().is_empty());
    assert_eq!(snapshot(root), before, "a refused start wrote something");
    // A good start, then a duplicate of it: nothing new is invoked.
    lml_lambda::handle(&svc, &start("x", 2, images_spec(json!({}))), &Invocation::default()).await.unwrap();
    let sent = rec.events().len();
    let out = lml_lambda::handle(&svc, &start("x", 2, images_spec(json!({}))), &Invocation::default()).await;
    assert_eq!(out.unwrap(), Outcome::Started { job: job("x"), duplicate: true });
    assert_eq!(rec.events().len(), sent);
    // The same id with another spec is refused.
    let e = lml_lambda::handle(&svc, &start("x", 2, images_spec(json!({"epochs": 3}))), &Invocation::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
}
