//! The README's AWS walkthrough, run as written: the shell block of its
//! "On AWS Lambda" section goes to bash line by line, the real AWS CLI
//! (PyPI `awscli`) talking to `moto_server` (S3, DynamoDB, EC2) and `lml aws`
//! to the function served by `cargo lambda watch`, so the commands it prints
//! are known to work. What it cannot run is marked `# AWS only` in the
//! README itself (creating and deleting the stack, reading its outputs);
//! the test checks that exactly those lines are marked, sets the two
//! variables they would set, and shrinks the job (image size, workers,
//! epochs) by substitutions it names, each of which must apply once.

use std::path::Path;
use std::process::Command;

use lml_lambda::aws::emulator::{free_port, AsyncInvokes, Moto, Watch};
use lml_lambda::event::JobId;
use lml_lambda::progress::{JobStatus, ProgressStore};

/// The first ```sh block after `## On AWS Lambda` in README.md.
fn walkthrough(readme: &str) -> Vec<String> {
    let section = readme.split("\n## On AWS Lambda").nth(1).expect("README.md has a section \"## On AWS Lambda\"");
    let section = section.split("\n## ").next().unwrap_or(section);
    let block = section.split("```sh\n").nth(1).expect("the AWS section has a ```sh block");
    let block = block.split("\n```").next().unwrap();
    block.lines().map(str::to_string).collect()
}

/// Whether a command line needs an AWS account: the stack and its outputs.
fn needs_aws(line: &str) -> bool {
    line.starts_with("sam ") || line.contains("aws cloudformation")
}

/// Smaller work for the same commands: (README text, what runs here).
const SHRINK: [(&str, &str); 3] = [
    ("--input-size 224", "--input-size 32 --cut pool5"),
    ("--workers 16", "--workers 2"),
    ("--epochs 10", "--epochs 1"),
];

/// `n` random 32×32 images in 3 classes under `data/cifar10` (both splits
/// and the class list), and random VGG19 weights to pool5 under `data/vgg19`.
fn write_data(data: &Path, n: usize) {
    use lml_kernel::weights::WeightStore;
    use lml_kernel::{Cut, Preset};
    use rand::{Rng, SeedableRng};
    let w = lml_kernel::vgg::random_weights(1, Cut::Pool5);
    let weights = data.join("vgg19");
    WeightStore::write(
        &weights,
        lml_kernel::vgg::MODEL,
        Preset::Torchvision,
        w.iter().map(|(n, a)| (n.clone(), a.view())),
    )
    .unwrap();
    let dir = data.join("cifar10");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for (split, count) in [("train", n), ("test", n / 3)] {
        let images = ndarray::Array4::<u8>::from_shape_fn((count, 32, 32, 3), |_| rng.random());
        let labels = ndarray::Array1::<u32>::from_shape_fn(count, |i| (i % 3) as u32);
        lml_kernel::npy::write_npy_atomic(dir.join(format!("{split}_x.npy")), &images).unwrap();
        lml_kernel::npy::write_npy_atomic(dir.join(format!("{split}_y.npy")), &labels).unwrap();
    }
    std::fs::write(dir.join("classes.txt"), "cat\ndog\nfox\n").unwrap();
}

#[test]
fn the_readme_aws_walkthrough_runs_against_emulators() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(workspace.join("README.md")).unwrap();
    let lines = walkthrough(&readme);

    // Exactly the lines that need AWS are marked, and only those are skipped.
    let mut script = vec!["set -euo pipefail".to_string()];
    let mut skipped = Vec::new();
    let mut shrunk = [0usize; SHRINK.len()];
    for line in &lines {
        assert!(!line.ends_with('\\'), "one command per line, so that each is marked or not as a whole: {line}");
        let command = line.split("  # AWS only").next().unwrap().trim_end();
        let marked = line.ends_with("# AWS only");
        assert_eq!(
            marked,
            needs_aws(command),
            "README.md's AWS walkthrough: a line that needs an AWS account must end with `# AWS only` (and only \
             those): {line}"
        );
        if marked {
            skipped.push(command.to_string());
            continue;
        }
        let mut run = command.to_string();
        for (i, (from, to)) in SHRINK.iter().enumerate() {
            if run.contains(from) {
                run = run.replace(from, to);
                shrunk[i] += 1;
            }
        }
        script.push(run);
    }
    assert_eq!(shrunk, [1; SHRINK.len()], "each substitution {SHRINK:?} applies once");
    let set = |var: &str| skipped.iter().filter(|l| l.starts_with(&format!("{var}=$(aws cloudformation"))).count();
    assert_eq!((set("FUNCTION"), set("TABLE")), (1, 1), "the stack outputs the walkthrough reads: {skipped:?}");
    assert!(skipped.iter().any(|l| l.starts_with("sam deploy")) && skipped.iter().any(|l| l.starts_with("sam delete")));

    let moto = Moto::start();
    let store = moto.store("lml-walkthrough");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    // The stack creates the table; here the test does.
    rt.block_on(store.ensure_table()).unwrap();
    let root = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    write_data(&cwd.path().join("data"), 24);

    let port = free_port();
    let invokes = AsyncInvokes::start(port);
    let fenv = [
        format!("LML_ROOT={}", root.path().display()),
        "LML_TABLE=lml-walkthrough".to_string(),
        "LML_FUNCTION=lml-lambda".to_string(),
        format!("AWS_ENDPOINT_URL_LAMBDA={}", invokes.url),
        format!("AWS_ENDPOINT_URL_DYNAMODB={}", moto.url),
        format!("AWS_ENDPOINT_URL_S3={}", moto.url),
        "AWS_ACCESS_KEY_ID=test".to_string(),
        "AWS_SECRET_ACCESS_KEY=test".to_string(),
        "AWS_REGION=us-east-1".to_string(),
    ];
    let _watch = Watch::start(&workspace, port, &fenv);

    let bin = Path::new(env!("CARGO_BIN_EXE_lml")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .arg("-c")
        .arg(script.join("\n"))
        .current_dir(cwd.path())
        .env("PATH", path)
        // What the stack's outputs would say.
        .env("FUNCTION", "lml-lambda")
        .env("TABLE", "lml-walkthrough")
        .env("AWS_ENDPOINT_URL", &moto.url)
        .env("AWS_ENDPOINT_URL_LAMBDA", &invokes.url)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the walkthrough failed:\n{stdout}\n{stderr}\nscript:\n{}", script.join("\n"));

    // The prefix lists were found, the data is on the "file system", the
    // job finished, and stop and resume reached it.
    assert!(stdout.contains("com.amazonaws.us-east-1.dynamodb\tpl-"), "{stdout}");
    assert!(stdout.contains("com.amazonaws.us-east-1.s3\tpl-"), "{stdout}");
    for f in ["cifar10/train_x.npy", "cifar10/classes.txt", "vgg19/features.0.weight.npy"] {
        let (copied, original) = (root.path().join(f), cwd.path().join("data").join(f));
        assert_eq!(std::fs::read(&copied).unwrap(), std::fs::read(original).unwrap(), "{f}");
    }
    assert!(stdout.contains("ingest data-1: finished"), "{stdout}");
    let job = rt.block_on(store.load(&JobId::new("cifar-1").unwrap())).unwrap().job.unwrap();
    assert_eq!(job.status, JobStatus::Finished);
    assert!(
        stdout.contains("job cifar-1: finished (rounds)") && stdout.contains("3 classes: cat, dog, fox"),
        "{stdout}"
    );
    assert!(stdout.contains("job cifar-1: stop requested") && stdout.contains("cifar-1: resume: "), "{stdout}");
    println!("skipped (AWS only): {skipped:#?}");
}
