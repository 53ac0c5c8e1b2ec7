//! `lml train`, `lml status` and `lml stop` as a user runs them.

use std::path::Path;
use std::process::Command;

use lml_kernel::npy::write_npy_atomic;
use ndarray::{Array1, Array2};

fn lml() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lml"))
}

/// Features where class `c` lights up dimension `c` (plus a little noise).
fn write_split(dir: &Path, split: &str, n: usize, seed: u64) {
    let (classes, dim) = (3, 8);
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as f32 / (1u64 << 31) as f32
    };
    let y = Array1::from_shape_fn(n, |i| (i % classes) as u32);
    let x = Array2::from_shape_fn((n, dim), |(i, j)| if j == y[i] as usize { 1.0 } else { 0.0 } + 0.3 * next());
    std::fs::create_dir_all(dir).unwrap();
    write_npy_atomic(dir.join(format!("{split}_features.npy")), &x).unwrap();
    write_npy_atomic(dir.join(format!("{split}_y.npy")), &y).unwrap();
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = lml().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn train_runs_a_job_to_the_end_and_status_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap();
    write_split(&tmp.path().join("feats"), "train", 90, 1);
    write_split(&tmp.path().join("feats"), "test", 30, 2);
    let feats = tmp.path().join("feats");
    let (ok, stdout, stderr) = run(&[
        "train",
        "--root",
        root,
        "--features",
        feats.to_str().unwrap(),
        "--job",
        "t1",
        "--workers",
        "3",
        "--epochs",
        "4",
        "--batch",
        "5",
        "--lr",
        "0.1",
        "--memory",
        "1769",
    ]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("job t1: 3 workers × batch 5"), "{stderr}");
    // 90 examples / (3 × 5) = 6 rounds per epoch.
    assert!(stdout.contains("round   23 (epoch  3)"), "{stdout}");
    assert!(stdout.contains("24 rounds in"), "{stdout}");
    assert!(stdout.contains("job t1: finished (rounds), 24 of 24 rounds"), "{stdout}");
    let acc: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("final accuracy "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no final accuracy in {stdout}"));
    assert!(acc >= 0.9, "final accuracy {acc}");

    let (ok, stdout, stderr) = run(&["status", "t1", "--root", root, "--rounds"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("round ")).count(), 24, "{stdout}");
    assert!(stdout.contains(&format!("final accuracy {acc:.3}")), "{stdout}");

    // The same job id again is refused (different spec), a finished job resumes to nothing.
    let (ok, _, stderr) = run(&["train", "--root", root, "--features", feats.to_str().unwrap(), "--job", "t1"]);
    assert!(!ok && stderr.contains("already exists with a different spec"), "{stderr}");
    let (ok, stdout, stderr) = run(&["train", "--root", root, "--resume", "t1"]);
    assert!(ok && stderr.contains("Skipped"), "{stdout}{stderr}");
}

#[test]
fn bad_arguments_fail_with_a_message_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    write_split(elsewhere.path(), "train", 10, 1);
    let root = tmp.path().to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["train", "--root", root, "--features", elsewhere.path().to_str().unwrap()], "is not under the storage root"),
        (&["train", "--root", root, "--features", "/nonexistent/feats"], "not found"),
        (&["train", "--root", root, "--features", root, "--job", "../x"], "must not start with '.'"),
        (&["status", "nope", "--root", root], "no such job"),
        (&["train", "--root", root, "--sync", "hogwild"], "expected gradient-sum or model-average"),
    ];
    for (args, needle) in cases {
        let (ok, stdout, stderr) = run(args);
        assert!(!ok, "{args:?} succeeded: {stdout}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let (ok, _, stderr) = run(&["train", "--root", root, "--features", root, "--job", "x", "--workers", "0"]);
    assert!(!ok && stderr.contains("workers"), "{stderr}");
}

/// `lml status --table` reads a job's progress from DynamoDB (here the
/// moto emulator), as for a job running on AWS.
#[test]
fn status_reads_a_job_from_a_dynamodb_table() {
    use lml_lambda::event::JobId;
    use lml_lambda::progress::{JobRecord, JobStatus, ProgressStore, RoundRecord, Score};
    let moto = lml_lambda::aws::emulator::Moto::start();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = moto.store("lml");
        store.ensure_table().await.unwrap();
        let job = JobId::new("aws-job").unwrap();
        let record = JobRecord {
            job: "aws-job".into(),
            status: JobStatus::Finished,
            workers: 16,
            examples: 50_000,
            rounds_per_epoch: 49,
            total_rounds: 98,
            started_ms: 0,
            rounds_done: Some(98),
            finished_ms: Some(1),
            reason: Some("rounds".into()),
            eval: Some(Score { loss: 0.61, accuracy: 0.842, examples: 10_000 }),
        };
        store.put_job(&job, &record).await.unwrap();
        let train = Score { loss: 0.5, accuracy: 0.9, examples: 1024 };
        let r = RoundRecord {
            round: 97,
            epoch: 1,
            train,
            eval: None,
            worker_ms: 1,
            combine_ms: 2,
            round_ms: 3,
            finished_ms: 4,
        };
        store.put_round(&job, &r).await.unwrap();
    });
    // `lml status JOB` against the emulator's table, with dummy credentials.
    let status = |job: &str| {
        lml()
            .args(["status", job, "--table", "lml", "--endpoint-url", &moto.url])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap()
    };
    let out = status("aws-job");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("job aws-job: finished (rounds), 1 of 98 rounds (16 workers, 50000 examples)"), "{stdout}");
    assert!(stdout.contains("final accuracy 0.842"), "{stdout}");
    let out = status("nope");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("table lml has no job nope"));
}

#[test]
fn plan_prices_the_papers_run() {
    let (ok, stdout, stderr) = run(&["plan", "--paper"]);
    assert!(ok, "{stderr}");
    // 50,000 images / (16 workers × 64) = 49 rounds; 49 × 17 + 1 invocations.
    assert!(stdout.contains("16 workers × 8192 MB (5 vCPU, arm64)"), "{stdout}");
    assert!(stdout.contains("49 rounds"), "{stdout}");
    assert!(stdout.contains("834 invocations"), "{stdout}");
    assert!(stdout.lines().any(|l| l.trim_start().starts_with("total")), "{stdout}");
    let (ok, _, stderr) = run(&["plan", "--data", "pixels"]);
    assert!(!ok && stderr.contains("expected images or features"), "{stderr}");
}
