//! `lml aws` against emulators started here on 127.0.0.1: `moto_server`
//! for DynamoDB and S3, and the function served by `cargo lambda watch`
//! behind Lambda's asynchronous-invoke semantics ([`AsyncInvokes`]). The CLI
//! finds them through the SDK's usual variables (`AWS_ENDPOINT_URL_LAMBDA`,
//! `AWS_ENDPOINT_URL_DYNAMODB`), as a user's emulator setup would.

use std::path::Path;
use std::process::Command;

use lml_lambda::aws::emulator::{free_port, AsyncInvokes, Moto, Watch};
use lml_lambda::event::JobId;
use lml_lambda::progress::{IngestRecord, JobRecord, JobStatus, ProgressStore, RoundRecord, Score};

fn lml() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lml"))
}

/// Runs `lml args` with `env`: (success, stdout, stderr).
fn run(args: &[&str], env: &[(String, String)]) -> (bool, String, String) {
    let out = lml()
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(f)
}

/// `lml aws status` reads every kind of job from the table; `lml status
/// --table` (its old place) says where it went.
#[test]
fn aws_status_reads_each_kind_of_job_from_the_table() {
    let moto = Moto::start();
    block_on(async {
        let store = moto.store("lml");
        store.ensure_table().await.unwrap();
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
            classes: 10,
            class_names: "airplane automobile bird cat deer dog frog horse ship truck"
                .split(' ')
                .map(String::from)
                .collect(),
        };
        let job = JobId::new("aws-job").unwrap();
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
        let ingest = IngestRecord {
            job: "data-1".into(),
            status: JobStatus::Failed,
            bucket: "my-data".into(),
            prefix: "lml/".into(),
            dest: "".into(),
            objects: 7,
            bytes: 700_000_000,
            objects_done: 3,
            bytes_done: 512_000_000,
            invocations: 4,
            updated_ms: 5,
            reason: Some("object 3 (\"lml/x\"): s3://my-data/lml/x: 412 PreconditionFailed".into()),
        };
        store.put_ingest(&JobId::new("data-1").unwrap(), &ingest).await.unwrap();
    });
    let env = vec![("AWS_ENDPOINT_URL_DYNAMODB".to_string(), moto.url.clone())];
    let (ok, stdout, stderr) = run(&["aws", "status", "aws-job", "--table", "lml", "--rounds"], &env);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("job aws-job: finished (rounds), 1 of 98 rounds (16 workers, 50000 examples)"), "{stdout}");
    assert!(stdout.contains("round   97 (epoch  1)"), "{stdout}");
    assert!(
        stdout.contains("final accuracy 0.842") && stdout.contains("10 classes: airplane, automobile,"),
        "{stdout}"
    );
    // A failed ingest: its numbers, why, and a failing exit status.
    let (ok, stdout, _) = run(&["aws", "status", "data-1", "--table", "lml"], &env);
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("ingest data-1: failed, 3 of 7 objects, 512.0 of 700.0 MB (73%)"), "{stdout}");
    assert!(stdout.contains("s3://my-data/lml/ → the storage root, 4 copy invocation(s)"), "{stdout}");
    assert!(stdout.contains("failed: object 3 (\"lml/x\")"), "{stdout}");
    let (ok, _, stderr) = run(&["aws", "status", "nope", "--table", "lml"], &env);
    assert!(!ok && stderr.contains("table lml has no job nope"), "{stderr}");
    // The old place of the flag says where it went.
    let (ok, _, stderr) = run(&["status", "aws-job", "--table", "lml"], &env);
    assert!(!ok && stderr.contains("run `lml aws status aws-job --table lml`"), "{stderr}");
}

/// `n` random 32×32 images in 3 classes under `dir`, and random VGG19
/// weights to pool5 in `weights`.
fn write_images(dir: &Path, weights: &Path, n: usize) {
    use lml_kernel::weights::WeightStore;
    use lml_kernel::{Cut, Preset};
    use rand::{Rng, SeedableRng};
    let w = lml_kernel::vgg::random_weights(1, Cut::Pool5);
    WeightStore::write(
        weights,
        lml_kernel::vgg::MODEL,
        Preset::Torchvision,
        w.iter().map(|(n, a)| (n.clone(), a.view())),
    )
    .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    std::fs::create_dir_all(dir).unwrap();
    for (split, count) in [("train", n), ("test", n / 3)] {
        let images = ndarray::Array4::<u8>::from_shape_fn((count, 32, 32, 3), |_| rng.random());
        let labels = ndarray::Array1::<u32>::from_shape_fn(count, |i| (i % 3) as u32);
        lml_kernel::npy::write_npy_atomic(dir.join(format!("{split}_x.npy")), &images).unwrap();
        lml_kernel::npy::write_npy_atomic(dir.join(format!("{split}_y.npy")), &labels).unwrap();
    }
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { count_files(&p) } else { 1 })
        .sum()
}

/// `aws s3 cp` through the AWS CLI (PyPI `awscli`) against the emulator.
fn upload(moto: &Moto, from: &Path, to: &str) {
    let ok = Command::new("aws")
        .args(["s3", "cp", "--recursive", "--only-show-errors"])
        .arg(from)
        .arg(to)
        .env("AWS_ENDPOINT_URL", &moto.url)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .status()
        .unwrap_or_else(|e| panic!("cannot run the AWS CLI ({e}): pip install awscli (.ci/run does)"));
    assert!(ok.success(), "aws s3 cp failed");
}

/// The whole path through the function: `ingest` copies a prefix onto the
/// storage root in ranged reads across several invocations; `start` sends a
/// job built from `lml train`'s flags and `--wait` follows it to the end;
/// `stop` and `resume` reach the job; errors the function reports, and
/// flags the CLI refuses before sending anything, fail the command with
/// the field or file named.
#[test]
fn lml_aws_drives_jobs_through_the_function() {
    let moto = Moto::start();
    let store = moto.store("lml-cli");
    block_on(store.ensure_table()).unwrap();
    let root = tempfile::tempdir().unwrap();
    let staging = tempfile::tempdir().unwrap();
    write_images(&staging.path().join("cifar10"), &staging.path().join("vgg19"), 24);
    let s3 = Command::new("aws")
        .args(["s3", "mb", "s3://my-data"])
        .env("AWS_ENDPOINT_URL", &moto.url)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(s3.status.success(), "{}", String::from_utf8_lossy(&s3.stderr));
    upload(&moto, staging.path(), "s3://my-data/lml/");

    let port = free_port();
    let invokes = AsyncInvokes::start(port);
    let fenv = [
        format!("LML_ROOT={}", root.path().display()),
        "LML_TABLE=lml-cli".to_string(),
        "LML_FUNCTION=lml-lambda".to_string(),
        format!("AWS_ENDPOINT_URL_LAMBDA={}", invokes.url),
        format!("AWS_ENDPOINT_URL_DYNAMODB={}", moto.url),
        format!("AWS_ENDPOINT_URL_S3={}", moto.url),
        "AWS_ACCESS_KEY_ID=test".to_string(),
        "AWS_SECRET_ACCESS_KEY=test".to_string(),
        "AWS_REGION=us-east-1".to_string(),
    ];
    let _watch = Watch::start(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."), port, &fenv);
    let env = vec![
        ("AWS_ENDPOINT_URL_LAMBDA".to_string(), invokes.url.clone()),
        ("AWS_ENDPOINT_URL_DYNAMODB".to_string(), moto.url.clone()),
    ];
    let fun = ["--function", "lml-lambda"];
    let table = ["--table", "lml-cli", "--wait", "--timeout", "240", "--poll", "0.3"];

    // Ingest in 1 MiB ranges with a 0.1 s time limit: the weights (80 MB)
    // take many invocations, each continuing the last. (With 1 s, moto on a
    // Zen 4 moved ~35 MB/s and the copy took 2 invocations: the count must
    // not depend on the machine's speed; at 0.1 s it took 17 there.)
    let ingest =
        ["aws", "ingest", "--job", "data-1", "--bucket", "my-data", "--prefix", "lml/", "--range-bytes", "1048576"];
    let (ok, stdout, stderr) = run(&[&ingest[..], &fun, &table, &["--time-limit", "0.1"]].concat(), &env);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("data-1: ingest start s3://my-data/lml/"), "{stdout}");
    let files = count_files(staging.path());
    assert!(stdout.contains(&format!("ingest data-1: finished, {files} of {files} objects")), "{stdout}");
    let r = block_on(store.load(&JobId::new("data-1").unwrap())).unwrap().ingest.unwrap();
    assert!(r.invocations >= 3, "{} copy invocations: {r:?}\n{stdout}", r.invocations);
    for f in ["cifar10/train_x.npy", "cifar10/test_y.npy", "vgg19/features.0.weight.npy"] {
        assert_eq!(std::fs::read(root.path().join(f)).unwrap(), std::fs::read(staging.path().join(f)).unwrap(), "{f}");
    }
    // The same job again is the same job; another spec under its id is refused.
    let (ok, stdout, stderr) = run(&[&ingest[..], &fun].concat(), &env);
    assert!(!ok && stderr.contains("already exists with a different spec"), "{stdout}{stderr}");

    // A flag the spec refuses is named, and nothing is sent.
    let start = ["aws", "start", "--job", "c1", "--images", "cifar10", "--weights", "vgg19", "--cut", "pool5"];
    let (ok, _, stderr) = run(&[&start[..], &fun, &["--batch", "0"]].concat(), &env);
    assert!(!ok && stderr.contains("spec.batch"), "{stderr}");
    // A file the function cannot find is its error, and this command's.
    let (ok, _, stderr) = run(
        &["aws", "start", "--job", "c0", "--images", "nowhere", "--weights", "vgg19", "--function", "lml-lambda"],
        &env,
    );
    assert!(!ok && stderr.contains("nowhere/train_x.npy"), "{stderr}");
    let (ok, stdout, stderr) =
        run(&[&start[..], &fun, &table, &["--workers", "2", "--epochs", "1", "--batch", "4"]].concat(), &env);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("c1: start 2 workers: Started"), "{stdout}");
    assert!(
        stdout.contains("extraction c1.extract-train: finished") && stdout.contains("job c1: finished (rounds)"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = run(&["aws", "stop", "c1", "--function", "lml-lambda"], &env);
    assert!(ok && stdout.contains("job c1: stop requested"), "{stdout}{stderr}");
    let (ok, stdout, stderr) = run(&["aws", "resume", "c1", "--function", "lml-lambda"], &env);
    assert!(ok && stdout.contains("c1: resume: Skipped"), "{stdout}{stderr}");
    let (ok, _, stderr) = run(&["aws", "stop", "nope", "--function", "lml-lambda"], &env);
    assert!(!ok && stderr.contains("no such job"), "{stderr}");
    let (_, _, _, failed) = invokes.stats.counts();
    assert_eq!(failed, 0, "asynchronous invokes that failed three times");
}
