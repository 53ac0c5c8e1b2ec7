//! Bad events and bad job folders: a clear error naming the field or file,
//! and the storage root byte-for-byte unchanged.

mod common;

use common::*;
use lml_lambda::event::{Event, JobId};
use lml_lambda::layout::JobDir;
use lml_lambda::services::Invocation;
use lml_lambda::{handle, Outcome, ProtocolError};
use serde_json::{json, Value};

fn root_with_data() -> tempfile::TempDir {
    let dir = temp_root();
    let (x, y) = blobs(20, 4, 3, 5);
    write_features(dir.path(), "train", &x, &y);
    dir
}

async fn expect_error(svc: &Manual, payload: Value, needle: &str) -> ProtocolError {
    let before = snapshot(&svc.root);
    let err = handle(svc, &payload, &Invocation::default()).await.expect_err(&payload.to_string());
    let msg = err.to_string();
    assert!(msg.contains(needle), "{payload}: error {msg:?} does not mention {needle:?}");
    assert!(snapshot(&svc.root) == before, "{payload}: failed, but changed the storage root");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_rejected_and_write_nothing() {
    let dir = root_with_data();
    let (svc, rec) = manual(dir.path());
    let cases = [
        (json!([1, 2]), "JSON object"),
        (json!("start"), "JSON object"),
        (json!({}), "names no kind"),
        (json!({"start": true}), "workers"),
        (json!({"start": true, "workers": 0}), "workers"),
        (json!({"start": true, "workers": 100_000}), "outside 1..=1000"),
        (json!({"start": true, "workers": "4"}), "invalid type"),
        (json!({"start": true, "workers": 2.5}), "invalid type"),
        (json!({"start": false, "workers": 2}), "must be true"),
        (json!({"start": true, "workers": 2, "colour": "red"}), "unknown field `colour`"),
        (json!({"start": true, "combine": true, "workers": 2}), "several kinds"),
        (json!({"start": true, "workers": 2, "round": 3}), "round: does not belong"),
        (json!({"start": true, "workers": 2, "job": "../etc"}), "job"),
        (json!({"start": true, "workers": 2, "job": "a/b"}), "'/' is not allowed"),
        (json!({"start": true, "workers": 2, "job": ".."}), "must not start with '.'"),
        (json!({"start": true, "workers": 2, "job": ""}), "1 to 64"),
        (json!({"start": true, "workers": 2, "job": "x".repeat(65)}), "1 to 64"),
        (json!({"start": true, "workers": 2, "spec": [1]}), "spec: must be a JSON object"),
        (json!({"start": true, "workers": 2, "spec": {"lr": -1.0}}), "lr"),
        (json!({"start": true, "workers": 2, "spec": {"batch": 0}}), "batch: must be positive"),
        (json!({"start": true, "workers": 2, "spec": {"bogus": 1}}), "unknown field `bogus`"),
        (json!({"start": true, "workers": 2, "spec": {"local_steps": 2}}), "model-average"),
        (
            json!({"start": true, "workers": 2, "spec": {"data": {"features": "../x.npy", "labels": "y.npy"}}}),
            "without '..'",
        ),
        (
            json!({"start": true, "workers": 2, "spec": {"data": {"features": "/etc/x.npy", "labels": "y.npy"}}}),
            "relative",
        ),
        (json!({"start": true, "workers": 2, "spec": {"data": {"labels": "y.npy"}}}), "give features"),
        (json!({"start": true, "workers": 2, "spec": {"data": {"images": "x.npy", "labels": "y.npy"}}}), "weights"),
        (
            json!({"start": true, "workers": 2, "spec": {"data": {"features": "nope.npy", "labels": "y.npy"}}}),
            "nope.npy",
        ),
        (json!({"start": true, "workers": 2, "spec": {"classes": 2}}), "label 2"),
        (json!({"start": true, "workers": 2, "spec": {"safety_ms": 900000}}), "safety_ms"),
        (json!({"workerno": 4, "workers": 4}), "workerno: 4 must be < workers (4)"),
        (json!({"workerno": -1, "workers": 4}), "invalid value"),
        (json!({"workerno": 0, "workers": 4, "spec": {}}), "spec: does not belong"),
        (json!({"combine": true, "workers": 2, "continuation": 1}), "continuation: does not belong"),
        (json!({"resume": true, "workers": 2}), "workers: does not belong"),
        (json!({"workerno": 0, "workers": 2, "job": "missing"}), "no such job"),
    ];
    for (payload, needle) in cases {
        let err = expect_error(&svc, payload.clone(), needle).await;
        assert!(!err.is_retryable(), "{payload}: a bad event must not be retried ({err})");
    }
    assert!(rec.events().is_empty(), "nothing was invoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_contradict_the_job_are_rejected() {
    let dir = root_with_data();
    let (svc, rec) = manual(dir.path());
    let start =
        json!({"start": true, "workers": 2, "job": "j", "spec": spec("train", json!({"batch": 3, "epochs": 2}))});
    let out = handle(&svc, &start, &Invocation::default()).await.unwrap();
    assert_eq!(out, Outcome::Started { job: JobId::new("j").unwrap(), duplicate: false });
    assert_eq!(rec.events().len(), 2, "two workers invoked");
    // rounds_per_epoch = ceil(20 / 6) = 4, total 8.
    expect_error(&svc, json!({"workerno": 0, "workers": 3, "job": "j"}), "workers: 3, but job j has 2").await;
    expect_error(&svc, json!({"workerno": 0, "workers": 2, "job": "j", "round": 8}), "beyond the job's 8 rounds").await;
    expect_error(&svc, json!({"workerno": 0, "workers": 2, "job": "j", "round": 5, "epochsdone": 0}), "epochsdone")
        .await;
    expect_error(&svc, json!({"combine": true, "workers": 2, "job": "j", "round": 0}), "has not been reduced").await;
    let other = json!({"start": true, "workers": 2, "job": "j", "spec": spec("train", json!({"batch": 4}))});
    let err = expect_error(&svc, other, "already exists with a different spec").await;
    assert!(matches!(err, ProtocolError::JobExists { .. }));
    // The same start again is a duplicate delivery: accepted, nothing re-invoked.
    let before = snapshot(dir.path());
    let out = handle(&svc, &start, &Invocation::default()).await.unwrap();
    assert_eq!(out, Outcome::Started { job: JobId::new("j").unwrap(), duplicate: true });
    assert_eq!(rec.events().len(), 2, "a duplicate start invokes no one again");
    assert!(snapshot(dir.path()) == before);
    // The seed's epochsdone addresses the first round of an epoch.
    let e = Event::parse(&json!({"workerno": 1, "workers": 2, "job": "j", "epochsdone": 1})).unwrap();
    let Event::Worker(w) = e else { panic!() };
    assert_eq!(w.round.resolve(4).unwrap(), 4);
}

/// A job folder damaged in each way a shared directory can be: every role
/// fails with an error naming the file, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_folders_are_reported_and_left_alone() {
    type Damage = fn(&JobDir);
    let damages: [(&str, Damage, Value, &str); 6] = [
        ("config truncated", |jd| truncate(&jd.config()), worker0(), "config.json: malformed"),
        (
            "config of another format",
            |jd| {
                let t = std::fs::read_to_string(jd.config()).unwrap().replace("lml-job/1", "lml-job/9");
                std::fs::write(jd.config(), t).unwrap();
            },
            worker0(),
            "expected \"lml-job/1\"",
        ),
        (
            "parameters missing",
            |jd| std::fs::remove_dir_all(jd.params(0)).unwrap(),
            worker0(),
            "no parameters for round 0",
        ),
        (
            "parameter .npy truncated",
            |jd| truncate(&jd.params(0).join("head.weight.npy")),
            worker0(),
            "head.weight.npy",
        ),
        (
            "parameter meta missing",
            |jd| std::fs::remove_file(jd.params(0).join("meta.json")).unwrap(),
            worker0(),
            "no meta.json",
        ),
        (
            "no parameters at all",
            |jd| std::fs::remove_dir_all(jd.params_dir()).unwrap(),
            json!({"resume": true, "job": "j"}),
            "params",
        ),
    ];
    for (what, damage, event, needle) in damages {
        let dir = root_with_data();
        let (svc, _) = manual(dir.path());
        let start = json!({"start": true, "workers": 2, "job": "j", "spec": spec("train", json!({"batch": 3}))});
        handle(&svc, &start, &Invocation::default()).await.unwrap();
        let jd = JobDir::new(dir.path(), &JobId::new("j").unwrap());
        damage(&jd);
        let err = expect_error(&svc, event, needle).await;
        assert!(!err.is_retryable(), "{what}: retrying cannot repair a damaged folder ({err})");
    }

    // A worker result whose tensors do not fit its sibling's: the merge fails
    // naming both, and nothing is merged (worker 1's own, valid result stays).
    let dir = root_with_data();
    let (svc, _) = manual(dir.path());
    let start = json!({"start": true, "workers": 2, "job": "j", "spec": spec("train", json!({"batch": 3}))});
    handle(&svc, &start, &Invocation::default()).await.unwrap();
    let jd = JobDir::new(dir.path(), &JobId::new("j").unwrap());
    handle(&svc, &worker0(), &Invocation::default()).await.unwrap();
    let leaf = jd.sum(0, 0, 1);
    lml_kernel::npy::write_npy_atomic(leaf.join("head.bias.npy"), &ndarray::Array1::<f32>::zeros(7)).unwrap();
    let err =
        handle(&svc, &json!({"workerno": 1, "workers": 2, "job": "j"}), &Invocation::default()).await.unwrap_err();
    assert!(err.to_string().contains("head.bias has shape [3], its sibling [7]"), "{err}");
    assert!(jd.sum(0, 1, 2).exists() && !jd.sum(0, 0, 2).exists());
}

fn worker0() -> Value {
    json!({"workerno": 0, "workers": 2, "job": "j"})
}

fn truncate(path: &std::path::Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}
