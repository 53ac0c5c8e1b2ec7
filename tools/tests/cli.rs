//! The `lml` command line, run as a user would.

use std::process::Command;

fn lml() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lml"))
}

#[test]
fn demo_runs_end_to_end_and_reuses_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "demo",
        "--workdir",
        tmp.path().to_str().unwrap(),
        "--train-images",
        "120",
        "--test-images",
        "60",
        "--classes",
        "3",
        "--cut",
        "pool5",
        "--epochs",
        "2",
        "--threads",
        "2",
    ];
    let out = lml().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("epoch   2"), "{stdout}");
    assert!(stdout.contains("final test accuracy"), "{stdout}");
    assert!(stderr.contains("generating random VGG19 weights"), "{stderr}");
    assert!(tmp.path().join("data/train_x.npy").exists());

    // A second run reuses the generated data and weights.
    let again = lml().args(args).output().unwrap();
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stderr).contains("generating"));
}

#[test]
fn bad_arguments_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = lml()
        .args(["demo", "--workdir", tmp.path().to_str().unwrap(), "--input-size", "48", "--cut", "pool5"])
        .args(["--train-images", "10", "--test-images", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("48 is not a positive multiple of 32"), "{err}");

    let out = lml().args(["demo", "--cut", "fc9"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected pool5, fc6 or fc7"));

    let missing = tmp.path().join("no-such-weights");
    let out = lml().args(["profile", "--weights", missing.to_str().unwrap(), "--cut", "pool5"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-weights"));
}

#[test]
fn profile_reports_layers_and_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = lml()
        .args(["profile", "--workdir", tmp.path().to_str().unwrap(), "--cut", "pool5", "--input-size", "32"])
        .args(["--batch", "2", "--reps", "1", "--threads", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("features.34") && stdout.contains("peak RSS"), "{stdout}");
}

/// `lml start-event` prints the start event the function accepts: the
/// flags' defaults are the spec's, and a bad flag is refused naming the
/// spec's field, with nothing printed.
#[test]
fn start_event_prints_what_the_function_parses() {
    use lml_lambda::event::{Event, StartEvent};
    use lml_lambda::{DataSpec, JobSpec};
    let out =
        lml().args(["start-event", "--job", "cifar-1", "--workers", "16", "--features", "features"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let Event::Start(StartEvent { job, workers, spec }) = Event::parse(&printed).unwrap() else { panic!("{printed}") };
    assert_eq!((job.as_str(), workers), ("cifar-1", 16));
    let expected = JobSpec {
        data: DataSpec::cached("features/train_features.npy", "features/train_y.npy"),
        eval: Some(DataSpec::cached("features/test_features.npy", "features/test_y.npy")),
        ..JobSpec::default()
    };
    assert_eq!(spec, expected);

    let out = lml().args(["start-event", "--job", "j", "--features", "f", "--batch", "0"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty(), "{stderr}");
    assert!(stderr.contains("spec.batch: must be positive"), "{stderr}");
    let out = lml().args(["start-event", "--job", "j", "--features", "/abs"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("spec.data.features"), "{stderr}");
}
