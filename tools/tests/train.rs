//! `lml train`, `lml status` and `lml stop` as a user runs them (`lml aws`: tools/tests/aws.rs).

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

/// `n` random 32×32 images in 3 classes (`{x}`, `{y}`) under `dir`, and
/// random VGG19 weights to pool5 in `root/vgg/`.
fn write_images_as(root: &Path, dir: &Path, (x, y): (&str, &str), n: usize, seed: u64) {
    use lml_kernel::weights::WeightStore;
    use lml_kernel::{Cut, Preset};
    use rand::{Rng, SeedableRng};
    if !root.join("vgg").exists() {
        let w = lml_kernel::vgg::random_weights(1, Cut::Pool5);
        WeightStore::write(
            root.join("vgg"),
            lml_kernel::vgg::MODEL,
            Preset::Torchvision,
            w.iter().map(|(n, a)| (n.clone(), a.view())),
        )
        .unwrap();
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let images = ndarray::Array4::<u8>::from_shape_fn((n, 32, 32, 3), |_| rng.random());
    std::fs::create_dir_all(dir).unwrap();
    write_npy_atomic(dir.join(x), &images).unwrap();
    write_npy_atomic(dir.join(y), &Array1::<u32>::from_shape_fn(n, |i| (i % 3) as u32)).unwrap();
}

fn write_images(root: &Path, n: usize, seed: u64) {
    write_images_as(root, root, ("images.npy", "labels.npy"), n, seed);
}

/// `lml train --images DIR --weights DIR`: one job extracts the features of
/// both splits on its workers, then trains on them; `lml status` shows both
/// phases; a second job on the same images starts training at once; the
/// seed's way (`--forward-every-step`) extracts nothing.
#[test]
fn train_on_images_extracts_first_then_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("data");
    write_images_as(root, &data, ("train_x.npy", "train_y.npy"), 24, 1);
    write_images_as(root, &data, ("test_x.npy", "test_y.npy"), 9, 2);
    std::fs::write(data.join("classes.txt"), "cat\ndog\nfox\n").unwrap();
    let r = root.to_str().unwrap();
    let (d, w) = (data.to_str().unwrap().to_string(), root.join("vgg").to_str().unwrap().to_string());
    let train = |job: &str, extra: &[&str]| {
        let base = ["train", "--root", r, "--images", &d, "--weights", &w, "--cut", "pool5", "--job", job];
        let rest = ["--workers", "2", "--epochs", "2", "--batch", "4", "--memory", "1769"];
        run(&[&base[..], &rest[..], extra].concat())
    };
    let (ok, stdout, stderr) = train("img", &[]);
    assert!(ok, "{stdout}{stderr}");
    for split in ["train", "test"] {
        assert!(stderr.contains(&format!("job img: extracting the {split} features first on 2 workers")), "{stderr}");
    }
    assert!(stdout.contains("job img: finished (rounds)") && stdout.contains("3 classes: cat, dog, fox"), "{stdout}");
    let (ok, status, e) = run(&["status", "img", "--root", r]);
    assert!(ok, "{e}");
    assert!(status.contains("extraction img.extract-train: finished, 8 of 8 shards (24 of 24 images"), "{status}");
    assert!(
        status.contains("extraction img.extract-test: finished") && status.contains("job img: finished"),
        "{status}"
    );
    // The same images again: the cache is reused, training starts at once.
    let (ok, stdout, stderr) = train("again", &[]);
    assert!(ok && !stderr.contains("extracting"), "{stdout}{stderr}");
    assert!(stdout.contains("job again: finished (rounds)"), "{stdout}");
    let (ok, stdout, stderr) = train("seed", &["--forward-every-step"]);
    assert!(ok && !stderr.contains("extracting"), "{stdout}{stderr}");
    assert!(!root.join("jobs/seed.extract-train").exists());
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("jobs/seed/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["spec"]["data"]["forward"], "every-step", "{cfg}");
}

/// `lml status` on an extraction job (run here on the local runtime): its
/// shards, speed, each worker's compute time and the merged cache.
#[test]
fn status_shows_an_extraction_job() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_images(root, 20, 1);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let config = lml_lambda::LocalConfig { memory_mb: 1769, ..lml_lambda::LocalConfig::default() };
        let local = lml_lambda::LocalRuntime::start(root, lml_lambda::services::SystemClock, config);
        let spec = serde_json::json!({"images": "images.npy", "labels": "labels.npy", "weights": "vgg",
                                      "cut": "pool5", "out": "cache", "shard_images": 4});
        local.invoke_payload(serde_json::json!({"extract": "start", "workers": 2, "job": "x", "spec": spec})).unwrap();
        local.idle().await;
        assert!(local.dead_letters().is_empty(), "{:?}", local.dead_letters());
    });
    let (ok, stdout, stderr) = run(&["status", "x", "--root", root.to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("extraction x: finished, 8 of 8 shards (20 of 20 images, 512 features each) on 2 workers"),
        "{stdout}"
    );
    assert!(stdout.contains(" images/s over "), "{stdout}");
    let workers: Vec<&str> = stdout.lines().filter(|l| l.starts_with("worker ")).collect();
    assert!(!workers.is_empty() && workers.iter().all(|l| l.contains("s of VGG19 compute")), "{stdout}");
    let shards: usize = workers.iter().map(|l| l.split_whitespace().nth(2).unwrap().parse::<usize>().unwrap()).sum();
    assert_eq!(shards, 8, "{stdout}");
    assert!(stdout.contains("cache: cache/train_features.npy"), "{stdout}");
}

/// Features like fc7's of real photographs: `classes` classes in a
/// `latent`-dimensional space (class means with spread `separation` against
/// unit noise, so the classes overlap), mapped to `dim` features through a
/// random linear map and a ReLU with negative offsets (about 70% zeros),
/// each feature then multiplied by its own scale spread over three orders of
/// magnitude (10^-1.5 … 10^1.5) and by `global`. Returns (train, test).
/// A split: features and labels.
type Split = (Array2<f32>, Array1<u32>);

fn fc7_like(n: (usize, usize), dim: usize, classes: usize, separation: f32, global: f32, seed: u64) -> (Split, Split) {
    use rand::{Rng, SeedableRng};
    let latent = 24;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = |rng: &mut rand_chacha::ChaCha8Rng| -> f32 {
        // Box–Muller.
        let (u, v): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    };
    let means = Array2::from_shape_simple_fn((classes, latent), || separation * normal(&mut rng));
    let map = Array2::from_shape_simple_fn((dim, latent), || normal(&mut rng) / (latent as f32).sqrt());
    let offset = Array1::from_shape_simple_fn(dim, || -0.8 + 0.5 * normal(&mut rng));
    let scale = Array1::from_shape_simple_fn(dim, || 10f32.powf(rng.random_range(-1.5..1.5)) * global);
    let mut draw = |count: usize| {
        let y = Array1::from_shape_simple_fn(count, || rng.random_range(0..classes as u32));
        let z = Array2::from_shape_fn((count, latent), |(i, k)| means[[y[i] as usize, k]] + normal(&mut rng));
        let pre = z.dot(&map.t());
        let x = Array2::from_shape_fn((count, dim), |(i, j)| {
            (pre[[i, j]] + offset[j] + 0.7 * normal(&mut rng)).max(0.0) * scale[j]
        });
        (x, y)
    };
    let train = draw(n.0);
    let test = draw(n.1);
    (train, test)
}

fn write_cache(dir: &Path, data: &(Split, Split)) {
    std::fs::create_dir_all(dir).unwrap();
    for (split, (x, y)) in [("train", &data.0), ("test", &data.1)] {
        write_npy_atomic(dir.join(format!("{split}_features.npy")), x).unwrap();
        write_npy_atomic(dir.join(format!("{split}_y.npy")), y).unwrap();
    }
}

/// The final held-out accuracy `lml train` prints.
fn final_accuracy(stdout: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("final accuracy "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no final accuracy in {stdout}"))
}

/// A temp folder on tmpfs where there is one: a job fsyncs every
/// publication, which on this VM's disk makes a job of 80 rounds take 20 s
/// instead of 1.5 s without testing anything more.
fn tmpfs_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

fn sklearn_available() -> bool {
    let ok =
        Command::new("python3").args(["-c", "import numpy, sklearn"]).status().map(|s| s.success()).unwrap_or(false);
    if !ok && std::env::var_os("CI").is_some() {
        panic!("python3 with numpy and scikit-learn is required under CI (.ci/run installs them)");
    }
    ok
}

/// The requirement: with no flag set, `lml train` on fc7-like
/// features at every global scale (×0.01 … ×100) reaches the held-out
/// accuracy of a well-regularised logistic regression (scikit-learn,
/// standardised, best C of four) minus 2 points.
#[test]
fn default_training_matches_a_regularised_logistic_regression_at_every_scale() {
    if !sklearn_available() {
        eprintln!("skipping: scikit-learn not installed");
        return;
    }
    let tmp = tmpfs_dir();
    let root = tmp.path();
    let scales = [0.01f32, 1.0, 100.0, 10_000.0];
    let dirs: Vec<std::path::PathBuf> = scales.iter().map(|s| root.join(format!("x{s}"))).collect();
    for (&s, dir) in scales.iter().zip(&dirs) {
        write_cache(dir, &fc7_like((2000, 1000), 512, 10, 0.5, s, 3));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/logistic_reference.py");
    let out = Command::new("python3").arg(&script).args(&dirs).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(reference.len(), scales.len());
    let mut report = Vec::new();
    for ((&s, dir), r) in scales.iter().zip(&dirs).zip(&reference) {
        let job = format!("scale-{s}");
        let (ok, stdout, stderr) =
            run(&["train", "--root", root.to_str().unwrap(), "--features", dir.to_str().unwrap(), "--job", &job]);
        assert!(ok, "scale {s}: stdout:\n{stdout}\nstderr:\n{stderr}");
        let ours = final_accuracy(&stdout);
        let best = r["best"].as_f64().unwrap();
        report.push(format!("×{s}: lml {ours:.3}, scikit-learn best {best:.3} ({})", r["by_c"]));
        assert!(best < 0.95, "×{s}: the generated classes are too easy to tell anything ({best})");
        assert!(ours >= best - 0.02, "×{s}: lml {ours:.3} < scikit-learn {best:.3} − 0.02\n{}", report.join("\n"));
    }
    eprintln!("{}", report.join("\n"));
}

/// The failure mode, reproduced with the old defaults as flags (raw
/// features, lr 0.003, 4 workers × 32, no weight decay, constant rate) on
/// features ×100: the job stops at the diverged round as failed, `lml train`
/// exits non-zero saying what to change, and `lml status` shows it with the
/// class names. The defaults train the same data.
#[test]
fn a_diverging_job_fails_loudly_and_status_says_why() {
    let tmp = tmpfs_dir();
    let root = tmp.path().to_str().unwrap();
    let feats = tmp.path().join("feats");
    write_cache(&feats, &fc7_like((600, 200), 64, 10, 0.8, 100.0, 4));
    let names = "airplane automobile bird cat deer dog frog horse ship truck".replace(' ', "\n") + "\n";
    std::fs::write(feats.join("classes.txt"), names).unwrap();
    let f = feats.to_str().unwrap();
    let old = ["--lr", "0.003", "--batch", "32", "--weight-decay", "0", "--schedule", "constant", "--no-standardize"];
    let (ok, stdout, stderr) = run(&[&["train", "--root", root, "--features", f, "--job", "old"][..], &old].concat());
    assert!(!ok, "a diverged job must not end in success:\n{stdout}");
    assert!(stdout.contains("job old: failed (diverged: training loss"), "{stdout}");
    let reason =
        stderr.lines().find(|l| l.starts_with("Error: job old failed: diverged")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(reason.contains("drop --no-standardize") && reason.contains("--lr"), "{reason}");
    assert!(stderr.contains("10 classes: airplane, automobile, bird"), "{stderr}");
    let (ok, stdout, stderr) = run(&["status", "old", "--root", root]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("job old: failed (diverged: training loss"), "{stdout}");
    assert!(
        stdout.contains("10 classes: airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck"),
        "{stdout}"
    );

    let (ok, stdout, stderr) = run(&["train", "--root", root, "--features", f, "--job", "new"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("job new: finished (rounds), 30 of 30 rounds"), "{stdout}");
    assert!(final_accuracy(&stdout) > 0.5, "{stdout}");
}
