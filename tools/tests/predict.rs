//! `lml predict`, `lml evaluate` and `lml export` on jobs trained here:
//! generated 32×32 images of four classes, random VGG19 weights, a job run
//! by `lml train` from images (its workers extract the features into the
//! cache, then train the head on standardised features).

use std::path::{Path, PathBuf};
use std::process::Command;

use lml_kernel::approx::{check_close, Approximation};
use lml_kernel::classifier::Classifier;
use lml_kernel::npy::write_npy_atomic;
use lml_kernel::trainer::{CachedFeatures, FeatureSource, Head};
use lml_kernel::vgg::{random_weights, MODEL};
use lml_kernel::weights::WeightStore;
use lml_kernel::{Cut, Preset, Vgg19};
use lml_lambda::compute::{read_stats, Params};
use lml_lambda::layout::{read_json, JobDir};
use lml_lambda::meta::FinalSummary;
use lml_lambda::JobId;
use ndarray::{s, Array2, Array3, Array4, Axis};
use serde_json::Value;

/// `lml predict` on an image file against the features path (the cache the
/// job's workers wrote, or VGG19 run here, then standardisation and head):
/// the same kernel code on the same pixels, so the same bits.
const PREDICT_VS_FEATURES: Approximation = Approximation::Exact;
/// A head with the standardisation folded in (`W/scale`, `b − W'·mean`)
/// against standardise-then-head: one layer's rounding.
const FOLDED_HEAD: Approximation = Approximation::Close;
/// The exported file through a float64 numpy VGG19 against the kernel's f32
/// forward: 19 layers of f32 rounding.
const NUMPY_FORWARD: Approximation = Approximation::Approximate;

const CLASSES: [&str; 4] = ["stripes", "bars", "waves", "checks"];

fn lml() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lml"))
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = lml().args(args).env_remove("RUST_BACKTRACE").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `lml … --json`, parsed; panics with the output on failure.
fn run_json(args: &[&str]) -> Value {
    let (ok, stdout, stderr) = run(args);
    assert!(ok, "{args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}\n{stdout}"))
}

/// A storage root with generated images (`data/`: 48 train, 24 test,
/// `classes.txt`) and random VGG19 weights to `weights_cut` (`vgg/`).
struct Root {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Root {
    fn new(weights_cut: Cut) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        for (split, n, seed) in [("train", 48, 1), ("test", 24, 2)] {
            let (x, y) = lml_tools::synth::images(n, CLASSES.len(), 32, seed);
            write_npy_atomic(data.join(format!("{split}_x.npy")), &x).unwrap();
            write_npy_atomic(data.join(format!("{split}_y.npy")), &y).unwrap();
        }
        std::fs::write(data.join("classes.txt"), CLASSES.join("\n") + "\n").unwrap();
        let w = random_weights(5, weights_cut);
        WeightStore::write(root.join("vgg"), MODEL, Preset::Torchvision, w.iter().map(|(n, a)| (n.clone(), a.view())))
            .unwrap();
        Root { _tmp: tmp, root }
    }

    fn s(&self) -> &str {
        self.root.to_str().unwrap()
    }

    /// Trains job `job` on the images through the weights at `cut`, 4 epochs.
    fn train(&self, job: &str, cut: &str) {
        self.train_with(job, cut, &["--epochs", "4"]);
    }

    /// [`train`](Self::train) with other flags (the epochs among them).
    fn train_with(&self, job: &str, cut: &str, extra: &[&str]) {
        let (data, vgg) = (self.root.join("data"), self.root.join("vgg"));
        let mut args = vec![
            "train",
            "--root",
            self.s(),
            "--images",
            data.to_str().unwrap(),
            "--weights",
            vgg.to_str().unwrap(),
            "--cut",
            cut,
            "--job",
            job,
            "--workers",
            "2",
            "--batch",
            "8",
        ];
        args.extend(extra);
        let (ok, stdout, stderr) = run(&args);
        assert!(ok && stdout.contains("finished (rounds)"), "train {job}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    }

    fn test_images(&self) -> Array4<u8> {
        let d = lml_kernel::dataset::ImageDataset::open(
            self.root.join("data/test_x.npy"),
            self.root.join("data/test_y.npy"),
        )
        .unwrap();
        d.images().to_owned()
    }

    fn test_labels(&self) -> Vec<u32> {
        lml_kernel::dataset::read_labels(&self.root.join("data/test_y.npy")).unwrap()
    }
}

/// What the job folder holds, read with the protocol's own readers.
struct Trained {
    head: Head,
    stats: Option<lml_kernel::standardize::FeatureStats>,
    /// The job's held-out features, as its workers cached them.
    test_cache: CachedFeatures,
    summary: FinalSummary,
}

fn trained(root: &Path, job: &str) -> Trained {
    let jd = JobDir::new(root, &JobId::new(job).unwrap());
    let cfg = jd.read_config().unwrap();
    let summary: FinalSummary = read_json(&jd.final_json()).unwrap();
    let (p, _) = Params::read(&jd.params(summary.rounds)).unwrap();
    let stats = read_stats(&jd, &cfg).unwrap();
    let eval = cfg.spec.eval.clone().expect("the test split is evaluated");
    let test_cache = CachedFeatures::open(root.join(eval.features.unwrap()), root.join(&eval.labels)).unwrap();
    Trained { head: p.head, stats, test_cache, summary }
}

impl Trained {
    /// Standardise, then the head.
    fn logits(&self, mut features: Array2<f32>) -> Array2<f32> {
        if let Some(s) = &self.stats {
            s.apply(&mut features).unwrap();
        }
        self.head.logits(features.view()).unwrap()
    }

    /// The logits of cached held-out features `rows`.
    fn cached_logits(&self, rows: &[usize]) -> Array2<f32> {
        self.logits(self.test_cache.batch(rows).unwrap().0)
    }
}

fn logits_of(pred: &Value) -> Vec<f32> {
    pred["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

fn assert_logits(what: &str, actual: &[f32], expected: &[f32], approx: Approximation) {
    let e: Vec<f64> = expected.iter().map(|&v| f64::from(v)).collect();
    check_close(what, ndarray::ArrayView1::from(actual), ndarray::ArrayView1::from(&e[..]), approx).unwrap();
}

fn save_png(path: &Path, img: &Array3<u8>) {
    let (h, w, _) = img.dim();
    image::RgbImage::from_raw(w as u32, h as u32, img.iter().copied().collect()).unwrap().save(path).unwrap();
}

/// Decodes `path` as `lml predict` does not: with the `image` crate's plain API.
fn decode(path: &Path) -> Array3<u8> {
    let img = image::open(path).unwrap().to_rgb8();
    Array3::from_shape_vec((img.height() as usize, img.width() as usize, 3), img.into_raw()).unwrap()
}

/// Predict on PNG and JPEG files, one of another size, gives the logits of
/// the features path of the same pixels; the top classes are the most
/// probable, named from classes.txt.
#[test]
fn predict_gives_the_logits_of_the_features_path() {
    let r = Root::new(Cut::Pool5);
    r.train("p5", "pool5");
    let t = trained(&r.root, "p5");
    let images = r.test_images();
    let dir = r.root.join("files");
    std::fs::create_dir_all(&dir).unwrap();
    // Test image 0 as PNG (exact pixels); 1 as JPEG (lossy: its decoded
    // pixels are the input); 2 enlarged to 45×70 (another size).
    let png = dir.join("a.png");
    save_png(&png, &images.index_axis(Axis(0), 0).to_owned());
    let jpg = dir.join("b.jpg");
    let img1 = images.index_axis(Axis(0), 1).to_owned();
    image::RgbImage::from_raw(32, 32, img1.iter().copied().collect()).unwrap().save(&jpg).unwrap();
    let big = lml_kernel::preprocess::resize(images.index_axis(Axis(0), 2), (45, 70)).unwrap();
    let odd = dir.join("c.png");
    save_png(&odd, &big);

    let files = [&png, &jpg, &odd].map(|p| p.to_str().unwrap().to_string());
    let mut args = vec!["predict", "--job", "p5", "--root", r.s(), "--json", "--top", "3"];
    args.extend(files.iter().map(String::as_str));
    let doc = run_json(&args);
    let preds = doc["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 3);
    assert_eq!(doc["model"]["image_size"], serde_json::json!([32, 32]), "the cache note records the images' size");
    assert_eq!(doc["model"]["classes"], serde_json::json!(CLASSES));

    // The PNG at the training size: the job's own cached features of that image.
    assert_logits(
        "png vs cache",
        &logits_of(&preds[0]),
        t.cached_logits(&[0]).row(0).as_slice().unwrap(),
        PREDICT_VS_FEATURES,
    );
    // The JPEG and the other size: VGG19 run here on the decoded pixels
    // (brought to 32×32 by the kernel's resize first).
    let vgg = Vgg19::open(r.root.join("vgg"), 32, Cut::Pool5).unwrap();
    let jpeg_px = decode(&jpg);
    assert_ne!(jpeg_px, img1, "JPEG is lossy: the test must use the decoded pixels");
    let odd_px = lml_kernel::preprocess::resize(decode(&odd).view(), (32, 32)).unwrap();
    let mut batch = Array4::<u8>::zeros((2, 32, 32, 3));
    batch.index_axis_mut(Axis(0), 0).assign(&jpeg_px);
    batch.index_axis_mut(Axis(0), 1).assign(&odd_px);
    let want = t.logits(vgg.features(batch.view()).unwrap());
    assert_logits("jpeg vs features", &logits_of(&preds[1]), want.row(0).as_slice().unwrap(), PREDICT_VS_FEATURES);
    assert_logits("45×70 vs features", &logits_of(&preds[2]), want.row(1).as_slice().unwrap(), PREDICT_VS_FEATURES);

    for (p, f) in preds.iter().zip(&files) {
        assert_eq!(p["file"].as_str(), Some(f.as_str()));
        let probs: Vec<f64> = p["probabilities"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        let top = p["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let best = probs.iter().cloned().fold(f64::MIN, f64::max);
        assert_eq!(top[0]["probability"].as_f64().unwrap(), best);
        assert_eq!(top[0]["class"], p["predicted"]);
        assert_eq!(top[0]["name"].as_str().unwrap(), CLASSES[p["predicted"].as_u64().unwrap() as usize]);
        assert!(top.windows(2).all(|w| w[0]["probability"].as_f64() >= w[1]["probability"].as_f64()));
    }
    // Text: one line per file with the top classes by name.
    let (ok, stdout, stderr) = run(&["predict", "--job", "p5", "--root", r.s(), &files[0], "--top", "2"]);
    assert!(ok, "{stderr}");
    let name = preds[0]["name"].as_str().unwrap();
    assert!(stdout.starts_with(&format!("{}: {name} ", files[0])) && stdout.lines().count() == 1, "{stdout}");
}

/// The kernel's resize is the `image` crate's triangle filter (rounding aside).
#[test]
fn resize_matches_the_image_crates_triangle_filter() {
    let (x, _) = lml_tools::synth::images(1, 3, 61, 9);
    let src = x.index_axis(Axis(0), 0).slice(s![..53, .., ..]).to_owned(); // 53×61
    let img = image::RgbImage::from_raw(61, 53, src.iter().copied().collect()).unwrap();
    for (h, w) in [(32, 32), (17, 40), (106, 122), (53, 61)] {
        let ours = lml_kernel::preprocess::resize(src.view(), (h, w)).unwrap();
        let theirs = image::imageops::resize(&img, w as u32, h as u32, image::imageops::FilterType::Triangle);
        let diffs: Vec<i32> = ours.iter().zip(theirs.as_raw()).map(|(&a, &b)| i32::from(a) - i32::from(b)).collect();
        let max = diffs.iter().map(|d| d.abs()).max().unwrap();
        let off = diffs.iter().filter(|&&d| d != 0).count();
        assert!(
            max <= 1 && off * 50 <= diffs.len(),
            "{h}×{w}: max difference {max}, {off} of {} values differ",
            diffs.len()
        );
    }
}

/// `lml evaluate`'s numbers against a count made here from the job's own
/// cached held-out features, and against the accuracy the job's last
/// combine measured; `predict --data` agrees with it image by image.
#[test]
fn evaluate_agrees_with_an_independent_count() {
    let r = Root::new(Cut::Pool5);
    r.train("ev", "pool5");
    let t = trained(&r.root, "ev");
    let labels = r.test_labels();
    let n = labels.len();
    let logits = t.cached_logits(&(0..n).collect::<Vec<_>>());
    let mut matrix = vec![vec![0u64; CLASSES.len()]; CLASSES.len()];
    let mut predicted = Vec::new();
    for (row, &y) in logits.outer_iter().zip(&labels) {
        // First maximum, as training counts a hit.
        let mut best = 0;
        for j in 1..row.len() {
            if row[j] > row[best] {
                best = j;
            }
        }
        matrix[y as usize][best] += 1;
        predicted.push(best as u64);
    }
    let correct: u64 = (0..CLASSES.len()).map(|c| matrix[c][c]).sum();

    let data = r.root.join("data");
    let doc = run_json(&["evaluate", "--job", "ev", "--root", r.s(), "--data", data.to_str().unwrap(), "--json"]);
    assert_eq!(doc["images"], n);
    assert_eq!(doc["correct"], correct);
    assert_eq!(doc["confusion"]["matrix"], serde_json::json!(matrix));
    assert_eq!(doc["confusion"]["names"], serde_json::json!(CLASSES));
    let acc = doc["accuracy"].as_f64().unwrap();
    assert_eq!(acc, correct as f64 / n as f64);
    let job_eval = t.summary.eval.expect("the job evaluated the test split");
    assert_eq!((job_eval.examples, acc), (n, job_eval.accuracy), "the job's own held-out accuracy");
    for (c, score) in doc["classes"].as_array().unwrap().iter().enumerate() {
        let support: u64 = matrix[c].iter().sum();
        let column: u64 = matrix.iter().map(|r| r[c]).sum();
        assert_eq!(score["support"], support);
        let want = |a: u64, b: u64| if b == 0 { Value::Null } else { serde_json::json!(a as f64 / b as f64) };
        assert_eq!(score["precision"], want(matrix[c][c], column), "class {c}");
        assert_eq!(score["recall"], want(matrix[c][c], support), "class {c}");
    }

    let heatmap = r.root.join("confusion.png");
    let (ok, stdout, stderr) = run(&[
        "evaluate",
        "--job",
        "ev",
        "--root",
        r.s(),
        "--data",
        data.to_str().unwrap(),
        "--heatmap",
        heatmap.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    // The heat map: a real picture with many colours (shaded cells, text), not an empty canvas.
    let (hw, hh, colours) = png_summary(&std::fs::read(&heatmap).expect("the heat map was written"));
    assert!(hw >= 300 && hh >= 300, "{hw}×{hh}");
    assert!(colours > 20, "only {colours} distinct colours");
    assert!(stdout.contains(&format!("accuracy {acc:.4} ({correct} of {n})")), "{stdout}");
    assert!(stdout.contains("confusion (rows: true class, columns: predicted)"), "{stdout}");

    let grid = r.root.join("grid.png");
    let doc = run_json(&[
        "predict",
        "--job",
        "ev",
        "--root",
        r.s(),
        "--data",
        data.to_str().unwrap(),
        "--limit",
        "10",
        "--json",
        "--grid",
        grid.to_str().unwrap(),
    ]);
    let preds = doc["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 10);
    // The grid: 10 images in rows of 6, so at least two rows of 112-pixel cells, in many colours.
    let (gw, gh, colours) = png_summary(&std::fs::read(&grid).expect("the grid was written"));
    assert!(gw >= 6 * 112 && gh >= 2 * 112, "{gw}×{gh}");
    assert!(colours > 50, "only {colours} distinct colours");
    for (i, p) in preds.iter().enumerate() {
        assert_eq!(
            (p["index"].as_u64(), p["predicted"].as_u64(), p["truth"].as_u64()),
            (Some(i as u64), Some(predicted[i]), Some(u64::from(labels[i])))
        );
        assert_logits("predict --data vs cache", &logits_of(p), logits.row(i).as_slice().unwrap(), PREDICT_VS_FEATURES);
    }
}

/// Width, height and number of distinct pixel values of a PNG.
fn png_summary(png: &[u8]) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("sized")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let colours: std::collections::BTreeSet<&[u8]> =
        buf[..info.buffer_size()].chunks(info.color_type.samples()).collect();
    (info.width, info.height, colours.len())
}

fn python_with_safetensors() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import numpy, safetensors.numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok && std::env::var_os("CI").is_some() {
        panic!("python3 with numpy and safetensors is required under CI (.ci/run installs them)");
    }
    ok
}

/// Exports of a job at fc7 (the default cut; features extracted first,
/// as `lml train` does by default) and one at pool5 (the forward at every
/// step, `--forward-every-step`), from one set of random weights to fc7
/// (570 MB). Each is read back by Python's `safetensors` and run as
/// torchvision's VGG19 in numpy (every key and shape of
/// `vgg19(num_classes=4)`, the metadata), and by our own reader and
/// kernel; each gives `lml predict`'s logits. The npy export is the
/// classifier itself, bit for bit. Outputs are never overwritten unless --force.
#[test]
fn export_gives_the_logits_of_predict_in_torchvision_layout_and_our_own() {
    let python = python_with_safetensors();
    if !python {
        eprintln!("python3 with safetensors missing: the Python half of this test is skipped");
    }
    let r = Root::new(Cut::Fc7);
    let images = r.test_images().slice(s![..4, .., .., ..]).to_owned();
    let npy_images = r.root.join("images.npy");
    write_npy_atomic(&npy_images, &images).unwrap();
    let files: Vec<String> = (0..4)
        .map(|i| {
            let p = r.root.join(format!("t{i}.png"));
            save_png(&p, &images.index_axis(Axis(0), i).to_owned());
            p.to_str().unwrap().to_string()
        })
        .collect();
    // Every step runs VGG19 (packing its filters per invocation): 2 epochs are enough.
    let every_step = ["--forward-every-step", "--epochs", "2"];
    for (job, cut, extra) in [("f7", "fc7", &["--epochs", "4"][..]), ("p5", "pool5", &every_step[..])] {
        r.train_with(job, cut, extra);
        let mut args = vec!["predict", "--job", job, "--root", r.s(), "--json"];
        args.extend(files.iter().map(String::as_str));
        let doc = run_json(&args);
        assert_eq!(doc["model"]["image_size"], serde_json::json!([32, 32]), "{job}");
        let want: Vec<Vec<f32>> = doc["predictions"].as_array().unwrap().iter().map(logits_of).collect();

        let out = r.root.join(format!("{job}.safetensors"));
        let (ok, stdout, stderr) = run(&["export", "--job", job, "--root", r.s(), "--out", out.to_str().unwrap()]);
        assert!(ok && stdout.contains("torchvision VGG19, 4 classes, input 32"), "{stdout}{stderr}");

        if python {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/torchvision_reference.py");
            let o = Command::new("python3").arg(&script).arg(&out).arg(&npy_images).output().unwrap();
            assert!(o.status.success(), "{job}: {}", String::from_utf8_lossy(&o.stderr));
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            let m = &v["metadata"];
            assert_eq!(
                (m["preset"].as_str(), m["input_size"].as_str(), m["cut"].as_str()),
                (Some("torchvision"), Some("32"), Some(cut))
            );
            let names: Vec<String> = serde_json::from_str(m["class_names"].as_str().unwrap()).unwrap();
            assert_eq!(names, CLASSES);
            assert_eq!(m["image_size"].as_str(), Some("[32, 32]"));
            assert_eq!(m["format"].as_str(), Some("pt"));
            let rows = v["logits"].as_array().unwrap();
            assert_eq!(rows.len(), 4);
            for (i, row) in rows.iter().enumerate() {
                let py: Vec<f64> = row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
                let ours = ndarray::ArrayView1::from(&want[i][..]);
                check_close(
                    &format!("{job} image {i}: numpy torchvision vs predict"),
                    ours,
                    ndarray::ArrayView1::from(&py[..]),
                    NUMPY_FORWARD,
                )
                .unwrap();
            }
        }

        // Our own reader: the metadata, and classifier.6 on the kernel's fc7 features.
        let mut st = lml_tools::convert::SafeTensors::open(&out).unwrap();
        let meta = st.metadata().clone();
        assert_eq!(
            (meta["cut"].as_str(), meta["preset"].as_str(), meta["input_size"].as_str()),
            (cut, "torchvision", "32")
        );
        assert_eq!(serde_json::from_str::<Vec<String>>(&meta["class_names"]).unwrap(), CLASSES);
        let head = Head::from_arrays(
            st.read_f32("classifier.6.weight").unwrap().view(),
            st.read_f32("classifier.6.bias").unwrap().view(),
        )
        .unwrap();
        let features = if job == "f7" {
            // The backbone is the weights' own tensors, bit for bit.
            let store = Vgg19::open(r.root.join("vgg"), 32, Cut::Fc7).unwrap();
            for spec in lml_kernel::vgg::tensor_specs(Cut::Fc7).iter().filter(|t| t.required) {
                assert!(st.read_f32(&spec.name).unwrap() == store.store().view(&spec.name).unwrap(), "{}", spec.name);
            }
            store.features(images.view()).unwrap()
        } else {
            // The pass-through layers, through the converter (which leaves
            // out a classifier.6 that is not ImageNet's) and the kernel to fc7.
            let back = r.root.join(format!("{job}-back"));
            let (ok, stdout, stderr) =
                run(&["convert-weights", "--input", out.to_str().unwrap(), "--out", back.to_str().unwrap()]);
            assert!(ok && stdout.contains("ignored classifier.6.bias, classifier.6.weight"), "{stdout}{stderr}");
            let f = Vgg19::open(&back, 32, Cut::Fc7).unwrap().features(images.view()).unwrap();
            std::fs::remove_dir_all(&back).unwrap();
            f
        };
        let ours = head.logits(features.view()).unwrap();
        assert_eq!(want.len(), 4);
        for (i, w) in want.iter().enumerate() {
            let what = format!("{job} image {i}: our reader vs predict");
            assert_logits(&what, ours.row(i).as_slice().unwrap(), w, FOLDED_HEAD);
        }

        // Not overwritten without --force; replaced with it.
        let (ok, _, stderr) = run(&["export", "--job", job, "--root", r.s(), "--out", out.to_str().unwrap()]);
        assert!(!ok && stderr.contains("already exists (--force replaces it)"), "{stderr}");
        std::fs::remove_file(&out).unwrap();

        // The kernel's own folder: the classifier itself.
        let folder = r.root.join(format!("{job}-npy"));
        let (ok, _, stderr) =
            run(&["export", "--job", job, "--root", r.s(), "--out", folder.to_str().unwrap(), "--format", "npy"]);
        assert!(ok, "{stderr}");
        let c = Classifier::open(&folder).unwrap();
        let logits = c.logits(images.view()).unwrap();
        for (i, w) in want.iter().enumerate() {
            assert_eq!(&logits.row(i).to_vec(), w, "{job} image {i}: npy export vs predict");
        }
        let (ok, _, stderr) =
            run(&["export", "--job", job, "--root", r.s(), "--out", folder.to_str().unwrap(), "--format", "npy"]);
        assert!(!ok && stderr.contains("already exists"), "{stderr}");
        let (ok, _, stderr) = run(&[
            "export",
            "--job",
            job,
            "--root",
            r.s(),
            "--out",
            folder.to_str().unwrap(),
            "--format",
            "npy",
            "--force",
        ]);
        assert!(ok, "{stderr}");
        assert_eq!(Classifier::open(&folder).unwrap().logits(images.view()).unwrap(), logits);
        std::fs::remove_dir_all(&folder).unwrap();
    }
}

/// Broken inputs are errors naming what is wrong, never panics, and
/// `--json` prints nothing on stdout when it fails.
#[test]
fn hostile_inputs_are_errors_naming_them() {
    let r = Root::new(Cut::Pool5);
    r.train("ok", "pool5");
    let dir = r.root.join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.png");
    save_png(&good, &r.test_images().index_axis(Axis(0), 0).to_owned());
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.join("truncated.png");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let text = dir.join("notes.jpg");
    std::fs::write(&text, "not an image at all").unwrap();
    let mut jpeg = Vec::new();
    image::RgbImage::new(40, 30).write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
    let corrupt = dir.join("corrupt.jpg");
    jpeg.truncate(jpeg.len() * 2 / 3);
    jpeg.extend_from_slice(&[0xff, 0xd9]);
    std::fs::write(&corrupt, &jpeg).unwrap();
    let missing = dir.join("missing.png");
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let root = r.s();

    for (bad, needle) in [
        (p(&truncated), "truncated.png"),
        (p(&text), "notes.jpg: not a PNG or JPEG image"),
        (p(&missing), "missing.png: cannot open"),
        (p(&corrupt), "corrupt.jpg"),
    ] {
        // The bad file after a good one: nothing half-printed.
        let (ok, stdout, stderr) = run(&["predict", "--job", "ok", "--root", root, "--json", &p(&good), &bad]);
        assert!(!ok && stdout.is_empty() && stderr.contains(needle), "{bad}\nstdout: {stdout}\nstderr: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    let jobs = r.root.join("jobs");
    let copy = |to: &str| {
        let from = jobs.join("ok");
        let dst = jobs.join(to);
        let status = Command::new("cp").arg("-r").arg(&from).arg(&dst).status().unwrap();
        assert!(status.success());
        let cfg = dst.join("config.json");
        let text = std::fs::read_to_string(&cfg).unwrap().replace("\"job\": \"ok\"", &format!("\"job\": \"{to}\""));
        std::fs::write(&cfg, text).unwrap();
        dst
    };
    // Unfinished: no final.json.
    let unfinished = copy("unfinished");
    std::fs::remove_file(unfinished.join("final.json")).unwrap();
    // Failed.
    let failed = copy("failed");
    let f = failed.join("final.json");
    let text = std::fs::read_to_string(&f).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut v = v.clone();
    v["status"] = "failed".into();
    v["reason"] = "training loss 99 exploded".into();
    std::fs::write(&f, v.to_string()).unwrap();
    // A head of the wrong size in the final parameters.
    let wrong = copy("wronghead");
    let summary: FinalSummary = read_json(&wrong.join("final.json")).unwrap();
    let params = wrong.join(format!("params/{:06}", summary.rounds));
    for name in ["head.weight", "velocity.head.weight"] {
        write_npy_atomic(params.join(format!("{name}.npy")), &Array2::<f32>::zeros((4, 100))).unwrap();
    }
    let img = p(&good);
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["predict", "--job", "nope", "--root", root, &img], "no such job \"nope\"".into()),
        (vec!["predict", "--job", "../x", "--root", root, &img], "must not start with '.'".into()),
        (vec!["predict", "--job", "unfinished", "--root", root, &img], "job unfinished has not finished".into()),
        (
            vec!["evaluate", "--job", "failed", "--root", root, "--data", "x"],
            "job failed failed (training loss 99 exploded)".into(),
        ),
        (
            vec!["export", "--job", "wronghead", "--root", root, "--out", "/nonexistent/x"],
            format!("{}: head of 4 classes × 100 features, the job has 4 × 512", params.display()),
        ),
        (
            vec!["predict", "--job", "ok", "--root", root, "--cut", "fc7", &img],
            "--cut fc7 disagrees with the pool5".into(),
        ),
        (vec!["predict", "--job", "ok", "--root", root, "--top", "0", &img], "--top 0".into()),
    ];
    for (args, needle) in &cases {
        let (ok, stdout, stderr) = run(args);
        assert!(!ok && stderr.contains(needle.as_str()), "{args:?}\nstdout: {stdout}\nstderr: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // Weights that moved: the error asks for --weights, which then works.
    std::fs::rename(r.root.join("vgg"), r.root.join("vgg-moved")).unwrap();
    let (ok, _, stderr) = run(&["predict", "--job", "ok", "--root", root, &img]);
    assert!(!ok && stderr.contains("give --weights DIR") && stderr.contains("moved?"), "{stderr}");
    let moved = r.root.join("vgg-moved");
    let (ok, _, stderr) = run(&["predict", "--job", "ok", "--root", root, "--weights", moved.to_str().unwrap(), &img]);
    assert!(ok, "{stderr}");

    // A job on features with no note of their weights.
    let feats = r.root.join("feats");
    std::fs::create_dir_all(&feats).unwrap();
    let x = Array2::<f32>::from_shape_fn((12, 512), |(i, j)| ((i * 7 + j) % 5) as f32);
    let y = ndarray::Array1::<u32>::from_shape_fn(12, |i| (i % 4) as u32);
    write_npy_atomic(feats.join("train_features.npy"), &x).unwrap();
    write_npy_atomic(feats.join("train_y.npy"), &y).unwrap();
    let (ok, stdout, stderr) =
        run(&["train", "--root", root, "--features", feats.to_str().unwrap(), "--job", "bare", "--epochs", "1"]);
    assert!(ok, "{stdout}{stderr}");
    let (ok, _, stderr) = run(&["predict", "--job", "bare", "--root", root, &img]);
    assert!(
        !ok && stderr.contains("with no note of the weights they came from") && stderr.contains("give --weights DIR"),
        "{stderr}"
    );
    // Given weights, input size and cut, it classifies (512 features: pool5 at 32).
    let (ok, stdout, stderr) = run(&[
        "predict",
        "--job",
        "bare",
        "--root",
        root,
        "--weights",
        moved.to_str().unwrap(),
        "--cut",
        "pool5",
        &img,
    ]);
    assert!(ok && stdout.contains("good.png: "), "{stdout}{stderr}");
    // Pool5 at input 64 gives 2,048 features, not the head's 512: named.
    let (ok, _, stderr) = run(&[
        "predict",
        "--job",
        "bare",
        "--root",
        root,
        "--weights",
        moved.to_str().unwrap(),
        "--cut",
        "pool5",
        "--input-size",
        "64",
        &img,
    ]);
    assert!(!ok && stderr.contains("2048 features at pool5 for input 64, the job's head takes 512"), "{stderr}");
}
