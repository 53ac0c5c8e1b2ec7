//! Failures that must neither hang, crash nor leave anything behind: panics
//! inside invocations, a full disk while a job is created, stale staging of
//! a process that died, data paths that leave the storage root through a
//! symbolic link, and a data file replaced under a running job.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lml_lambda::event::JobId;
use lml_lambda::layout::faults::{register, PublishFaults};
use lml_lambda::layout::JobDir;
use lml_lambda::services::{Invocation, TickClock};
use lml_lambda::{handle, DataSpec, FaultPlan, LocalConfig, LocalRuntime, ProtocolError};
use serde_json::{json, Value};

fn root_with_data() -> tempfile::TempDir {
    let dir = temp_root();
    let (x, y) = blobs(24, 4, 3, 5);
    write_features(dir.path(), "train", &x, &y);
    dir
}

fn train_spec() -> Value {
    spec("train", json!({"batch": 3, "epochs": 2, "lr": 0.05, "seed": 2}))
}

/// Waits for the runtime to go idle, failing (not hanging) after a minute.
async fn idle_within_a_minute<P: lml_lambda::progress::ProgressStore>(rt: &LocalRuntime<TickClock, P>) {
    tokio::time::timeout(Duration::from_secs(60), rt.idle())
        .await
        .expect("the runtime never went idle: a delivery was lost or hangs");
}

fn runtime(root: &Path, faults: FaultPlan) -> LocalRuntime<TickClock> {
    let config = LocalConfig { concurrency: 4, retries: 2, faults, ..local_config() };
    LocalRuntime::start(root, TickClock::new(0, 1), config)
}

/// Panics at chosen points, often enough that some deliveries die for good:
/// every panic is a failed invocation with its event and message, retried,
/// and the job (resumed when needed) ends with the undisturbed parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_invocations_are_retried_and_the_job_ends_as_without_them() {
    let clean = root_with_data();
    let rt = runtime(clean.path(), FaultPlan::default());
    run_job(&rt, "j", 3, train_spec()).await;
    let expected = final_params(clean.path(), "j");

    let dir = root_with_data();
    let points = ["worker.begin", "worker.published", "reduce.merged", "combine.begin", "combine.recorded"];
    let plan = FaultPlan { seed: 11, panic: 0.3, points: points.map(String::from).to_vec(), ..FaultPlan::default() };
    let rt = runtime(dir.path(), plan);
    let jd = JobDir::new(dir.path(), &JobId::new("j").unwrap());
    rt.invoke(&start_event("j", 3, train_spec())).await.unwrap();
    for _ in 0..50 {
        idle_within_a_minute(&rt).await;
        if jd.final_json().exists() {
            break;
        }
        rt.invoke_payload(json!({"resume": true, "job": "j"})).unwrap();
    }
    assert!(jd.final_json().exists(), "the job did not end");
    assert_eq!(final_params(dir.path(), "j"), expected);
    let failures = rt.failures();
    assert!(rt.panics() > 0 && failures.len() as u64 >= rt.panics(), "{} panics, {failures:?}", rt.panics());
    for f in &failures {
        assert!(f.error.starts_with("invocation panicked: injected panic at "), "{f:?}");
        assert!(f.event.get("job").is_some(), "the failure names its event: {f:?}");
    }
    assert!(temp_files(dir.path()).is_empty());
}

/// A panic every time: each delivery is tried three times, then dead-lettered
/// with the panic's message; `idle` returns and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_panic_ends_as_dead_letters_instead_of_a_hang() {
    let dir = root_with_data();
    let plan = FaultPlan { panic: 1.0, points: vec!["worker.begin".into()], ..FaultPlan::default() };
    let rt = runtime(dir.path(), plan);
    rt.invoke(&start_event("j", 2, train_spec())).await.unwrap();
    idle_within_a_minute(&rt).await;
    let dead = rt.dead_letters();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for d in &dead {
        assert_eq!(d.error, "invocation panicked: injected panic at worker.begin (round 0)");
        assert!(d.event.get("workerno").is_some(), "{d:?}");
    }
    assert_eq!(rt.failures().len(), 6, "two workers × (1 try + 2 retries)");
    assert_eq!(rt.panics(), 6);
    assert!(temp_files(dir.path()).is_empty());

    // A synchronous call reports the panic as an error too.
    let err = rt.call(&json!({"workerno": 0, "workers": 2, "job": "j"})).await.unwrap_err();
    assert!(matches!(err, ProtocolError::Panicked(ref m) if m.contains("worker.begin")), "{err}");
    assert!(err.is_retryable());
}

/// Fails every publication under the staging folder of job `j`.
struct FullStaging;

impl PublishFaults for FullStaging {
    fn before_publish(&self, path: &Path) -> std::io::Result<()> {
        if path.to_string_lossy().contains("/.j.tmp-") {
            return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device (test)"));
        }
        Ok(())
    }
}

fn jobs_entries(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(root.join("jobs")) {
        Ok(d) => d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// A start that fails or dies while staging the job folder leaves no
/// `jobs/.j.tmp-*`: a full disk (an error), a panic, and a process killed
/// mid-staging (whose leftovers the next start sweeps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_leaves_no_staging_folder() {
    let dir = root_with_data();
    let (svc, rec) = manual(dir.path());
    let start = start_event("j", 2, train_spec()).to_json();

    let full = register(dir.path(), Arc::new(FullStaging));
    let err = handle(&svc, &start, &Invocation::default()).await.unwrap_err();
    assert!(err.to_string().contains("no space left on device"), "{err}");
    assert!(err.is_retryable(), "a full disk may be freed: {err}");
    assert_eq!(jobs_entries(dir.path()), Vec::<String>::new());
    assert!(rec.events().is_empty());
    drop(full);

    // The runtime's own injection, and a panic just before the rename.
    let plan = FaultPlan { panic: 1.0, points: vec!["start.staged".into()], ..FaultPlan::default() };
    let rt = runtime(dir.path(), plan);
    rt.invoke(&start_event("j", 2, train_spec())).await.unwrap();
    idle_within_a_minute(&rt).await;
    assert_eq!(rt.dead_letters().len(), 1);
    assert!(rt.dead_letters()[0].error.contains("injected panic at start.staged"));
    assert_eq!(jobs_entries(dir.path()), Vec::<String>::new());
    drop(rt);

    // What a process killed mid-staging leaves: swept once the job exists.
    let stale = dir.path().join("jobs/.j.tmp-999999-0");
    std::fs::create_dir_all(stale.join("params/000000")).unwrap();
    std::fs::write(stale.join("config.json"), b"{\"half\":").unwrap();
    let other = dir.path().join("jobs/.jj.tmp-999999-1");
    std::fs::create_dir_all(&other).unwrap();
    handle(&svc, &start, &Invocation::default()).await.unwrap();
    assert_eq!(jobs_entries(dir.path()), vec![".jj.tmp-999999-1".to_string(), "j".to_string()]);
    assert!(temp_files(&dir.path().join("jobs/j")).is_empty());
}

/// An ENOSPC in the middle of any publication leaves no temp behind, and a
/// retry of the same event carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_during_publication_leaves_no_temp_files() {
    let clean = root_with_data();
    let rt = runtime(clean.path(), FaultPlan::default());
    run_job(&rt, "j", 2, train_spec()).await;
    let expected = final_params(clean.path(), "j");

    let dir = root_with_data();
    let rt = runtime(dir.path(), FaultPlan { seed: 5, enospc: 0.15, ..FaultPlan::default() });
    let jd = JobDir::new(dir.path(), &JobId::new("j").unwrap());
    rt.invoke(&start_event("j", 2, train_spec())).await.unwrap();
    for _ in 0..50 {
        idle_within_a_minute(&rt).await;
        assert!(temp_files(dir.path()).is_empty(), "{:?}", temp_files(dir.path()));
        if jd.final_json().exists() {
            break;
        }
        let again =
            if jd.exists() { json!({"resume": true, "job": "j"}) } else { start_event("j", 2, train_spec()).to_json() };
        rt.invoke_payload(again).unwrap();
    }
    assert!(jd.final_json().exists(), "the job did not end");
    assert_eq!(final_params(dir.path(), "j"), expected);
    assert!(rt.enospc() > 0);
    let failures = rt.failures();
    assert!(failures.iter().all(|f| f.error.contains("no space left on device (injected)")), "{failures:?}");
}

/// A data path that leaves the root through a symbolic link is refused,
/// naming the field and both paths; one that stays inside works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_paths_that_resolve_outside_the_root_are_refused() {
    let outside = temp_root();
    let (x, y) = blobs(24, 4, 3, 5);
    write_features(outside.path(), "train", &x, &y);
    let dir = root_with_data();
    let (svc, _) = manual(dir.path());
    std::os::unix::fs::symlink(outside.path().join("features/train_features.npy"), dir.path().join("escape.npy"))
        .unwrap();
    std::os::unix::fs::symlink(outside.path().join("features"), dir.path().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink("features/train_features.npy", dir.path().join("inside.npy")).unwrap();

    let cases = [
        ("features", json!({"features": "escape.npy", "labels": "features/train_y.npy"}), "escape.npy"),
        (
            "features",
            json!({"features": "elsewhere/train_features.npy", "labels": "features/train_y.npy"}),
            "elsewhere/train_features.npy",
        ),
        (
            "labels",
            json!({"features": "features/train_features.npy", "labels": "elsewhere/train_y.npy"}),
            "elsewhere/train_y.npy",
        ),
    ];
    let root = dir.path().canonicalize().unwrap();
    let out = outside.path().canonicalize().unwrap();
    for (field, data, written) in cases {
        let before = snapshot(dir.path());
        let start = json!({"start": true, "workers": 2, "job": "j", "spec": {"data": data, "batch": 3}});
        let err = handle(&svc, &start, &Invocation::default()).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ProtocolError::BadSpec { .. }) && !err.is_retryable(), "{msg}");
        assert!(msg.contains(&format!("{field}: \"{written}\" resolves to {}", out.display())), "{msg}");
        assert!(msg.contains(&format!("outside the storage root {}", root.display())), "{msg}");
        assert!(snapshot(dir.path()) == before, "a refused start changed the root");
    }

    // The class list beside the labels is read at start too: a link out of
    // the root there is refused the same way.
    std::fs::create_dir(dir.path().join("listed")).unwrap();
    std::fs::write(outside.path().join("classes.txt"), "a\nb\nc\n").unwrap();
    std::os::unix::fs::symlink(outside.path().join("classes.txt"), dir.path().join("listed/classes.txt")).unwrap();
    std::fs::copy(dir.path().join("features/train_y.npy"), dir.path().join("listed/train_y.npy")).unwrap();
    let before = snapshot(dir.path());
    let data = json!({"features": "features/train_features.npy", "labels": "listed/train_y.npy"});
    let start = json!({"start": true, "workers": 2, "job": "j", "spec": {"data": data, "batch": 3}});
    let msg = handle(&svc, &start, &Invocation::default()).await.unwrap_err().to_string();
    let target = out.join("classes.txt");
    assert!(msg.contains(&format!("\"listed/classes.txt\" resolves to {}", target.display())), "{msg}");
    assert!(snapshot(dir.path()) == before, "a refused start changed the root");

    let data = json!({"features": "inside.npy", "labels": "features/train_y.npy"});
    let start = json!({"start": true, "workers": 2, "job": "j", "spec": {"data": data, "batch": 3}});
    handle(&svc, &start, &Invocation::default()).await.unwrap();
}

fn features_spec() -> DataSpec {
    serde_json::from_value(json!({"features": "features/train_features.npy", "labels": "features/train_y.npy"}))
        .unwrap()
}

/// The source cache reopens a file replaced by `rename` (a new inode), and a
/// source handed out before keeps reading the old file's mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_cache_notices_a_replaced_file() {
    let dir = root_with_data();
    let (svc, _) = manual(dir.path());
    let data = features_spec();
    let old = svc.source(&data).unwrap();
    assert!(Arc::ptr_eq(&old, &svc.source(&data).unwrap()), "an unchanged file is not reopened");
    let (old_x, _) = old.batch(&[0, 1]).unwrap();

    let (x, y) = blobs(24, 4, 3, 77);
    write_features(dir.path(), "train", &x, &y); // temp + rename: a new inode
    let new = svc.source(&data).unwrap();
    assert!(!Arc::ptr_eq(&old, &new), "a replaced file must be reopened");
    assert_eq!(new.batch(&[0, 1]).unwrap().0, x.slice(ndarray::s![0..2, ..]));
    assert_eq!(old.batch(&[0, 1]).unwrap().0, old_x, "the old mapping stays valid");
    assert!(Arc::ptr_eq(&new, &svc.source(&data).unwrap()));
}

/// Runs every event `rec` has recorded, in order, until there is none left.
async fn drain(svc: &Manual, rec: &lml_lambda::services::RecordingInvoker, mut done: usize) -> usize {
    while let Some(e) = rec.events().get(done).cloned() {
        handle(svc, &e.to_json(), &Invocation::default()).await.unwrap();
        done += 1;
    }
    done
}

/// A job keeps running when its features are replaced by `rename` part-way
/// (the invocation holding the old mapping finishes with it), and the
/// invocations after the replacement train on the new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_keeps_working_when_its_features_are_replaced_by_rename() {
    let unchanged = root_with_data();
    let (svc, rec) = manual(unchanged.path());
    handle(&svc, &start_event("j", 2, train_spec()).to_json(), &Invocation::default()).await.unwrap();
    drain(&svc, &rec, 0).await;
    let old_data_result = final_params(unchanged.path(), "j");

    let dir = root_with_data();
    let (svc, rec) = manual(dir.path());
    handle(&svc, &start_event("j", 2, train_spec()).to_json(), &Invocation::default()).await.unwrap();
    let held = svc.source(&features_spec()).unwrap();
    // Worker 0 of round 0 runs on the old file; then the file is replaced.
    let first = rec.events()[0].clone();
    handle(&svc, &first.to_json(), &Invocation::default()).await.unwrap();
    let (x, y) = blobs(24, 4, 3, 77);
    write_features(dir.path(), "train", &x, &y);
    held.batch(&[0, 23]).unwrap(); // the running job's mapping is still readable
    drain(&svc, &rec, 1).await;
    let jd = JobDir::new(dir.path(), &JobId::new("j").unwrap());
    assert!(jd.final_json().exists(), "the job did not end");
    let got = final_params(dir.path(), "j");
    assert_eq!(got.0, old_data_result.0, "same number of rounds");
    assert_ne!(got.1, old_data_result.1, "the later invocations must have read the new file");
}
