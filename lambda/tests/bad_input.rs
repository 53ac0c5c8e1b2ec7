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
        // Sizes whose products overflow: the field and the value are named.
        (json!({"start": true, "workers": 2, "spec": {"batch": 1u64 << 63}}), "batch: 9223372036854775808 × 2 workers"),
        (json!({"start": true, "workers": 4, "spec": {"batch": (1u64 << 62) + 1}}), "batch: 4611686018427387905 × 4"),
        (
            json!({"start": true, "workers": 2, "spec": {"batch": 3, "epochs": 1u64 << 63}}),
            "epochs: 9223372036854775808 × 4 rounds per epoch overflows",
        ),
        (json!({"start": true, "workers": 2, "spec": {"epochs": 1u64 << 40}}), "epochs: 1099511627776"),
        (json!({"start": true, "workers": 2, "spec": {"rounds": 1u64 << 40}}), "rounds: 1099511627776 is more than"),
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
    let damages: [(&str, Damage, Value, &str); 8] = [
        ("config truncated", |jd| truncate(&jd.config()), worker0(), "config.json: malformed"),
        (
            "config of another format",
            |jd| {
                let t = std::fs::read_to_string(jd.config()).unwrap().replace("lml-job/2", "lml-job/1");
                std::fs::write(jd.config(), t).unwrap();
            },
            worker0(),
            "format \"lml-job/1\", expected \"lml-job/2\"",
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
        ("feature statistics missing", |jd| std::fs::remove_dir_all(jd.dir.join("stats")).unwrap(), worker0(), "stats"),
        (
            "config counts that do not follow from the spec",
            |jd| {
                let t = std::fs::read_to_string(jd.config())
                    .unwrap()
                    .replace("\"total_rounds\": 40", "\"total_rounds\": 0");
                std::fs::write(jd.config(), t).unwrap();
            },
            worker0(),
            "rounds_per_epoch/total_rounds: 4/0 disagree",
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

/// Label files and class lists are checked before anything is written: an
/// absurd label, a label outside the class list, lists that disagree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_labels_and_class_lists_are_rejected_before_anything_is_written() {
    type Setup = fn(&std::path::Path);
    let eval = json!({"features": "features/test_features.npy", "labels": "features/test_y.npy"});
    let cases: [(&str, Setup, &str); 6] = [
        (
            "a label too large to be a class",
            |root| {
                let (x, mut y) = blobs(20, 4, 3, 5);
                y[7] = 4_000_000_000;
                write_features(root, "train", &x, &y);
            },
            "train_y.npy: label 4000000000 at position 7 is outside 0..100000",
        ),
        (
            "a held-out label outside the class list",
            |root| {
                let (x, mut y) = blobs(20, 4, 3, 6);
                y[3] = 3;
                write_features(root, "test", &x, &y);
                std::fs::write(root.join("features/classes.txt"), "a\nb\nc\n").unwrap();
            },
            "test_y.npy: label 3 at position 3 is outside 0..3 (the class list names 3 classes)",
        ),
        (
            "a class list naming a class twice",
            |root| std::fs::write(root.join("features/classes.txt"), "a\nb\na\n").unwrap(),
            "classes.txt line 3: class \"a\" is listed twice",
        ),
        (
            "class lists that disagree",
            |root| {
                std::fs::create_dir_all(root.join("held-out")).unwrap();
                std::fs::write(root.join("features/classes.txt"), "a\nb\nc\n").unwrap();
                std::fs::write(root.join("held-out/classes.txt"), "a\nb\nd\n").unwrap();
                let (x, y) = blobs(20, 4, 3, 7);
                lml_kernel::npy::write_npy_atomic(root.join("held-out/test_features.npy"), &x).unwrap();
                lml_kernel::npy::write_npy_atomic(root.join("held-out/test_y.npy"), &y).unwrap();
            },
            "eval.labels: ",
        ),
        (
            "spec classes against the class list",
            |root| std::fs::write(root.join("features/classes.txt"), "a\nb\nc\nd\n").unwrap(),
            "classes: 3, but the class list",
        ),
        (
            "a held-out label outside the spec's classes",
            |root| {
                let (x, mut y) = blobs(20, 4, 3, 8);
                y[11] = 5;
                write_features(root, "test", &x, &y);
            },
            "test_y.npy: label 5 at position 11 is outside 0..3 (the spec says classes = 3)",
        ),
    ];
    for (what, setup, needle) in cases {
        let dir = root_with_data();
        let (x, y) = blobs(20, 4, 3, 9);
        write_features(dir.path(), "test", &x, &y);
        setup(dir.path());
        let (svc, rec) = manual(dir.path());
        let mut s = spec("train", json!({}));
        s["eval"] = if what == "class lists that disagree" {
            json!({"features": "held-out/test_features.npy", "labels": "held-out/test_y.npy"})
        } else {
            eval.clone()
        };
        if what.contains("spec") {
            s["classes"] = json!(3);
        }
        let err = expect_error(&svc, json!({"start": true, "workers": 2, "spec": s}), needle).await;
        assert!(!err.is_retryable(), "{what}: {err}");
        assert!(rec.events().is_empty(), "{what}: nothing invoked");
    }
}
