//! The feature cache: sharded, resumable extraction and its equality with
//! features computed directly.

use std::fs;
use std::path::Path;
use std::process::Command;

use lml_kernel::dataset::ImageDataset;
use lml_kernel::trainer::{CachedFeatures, FeatureSource};
use lml_kernel::vgg::{random_weights, MODEL};
use lml_kernel::weights::WeightStore;
use lml_kernel::{Cut, Preset, Vgg19};
use lml_tools::features::{extract_shard, merge, shard_path, Dtype, BATCH};

fn setup(dir: &Path) -> (ImageDataset, Vgg19) {
    let (x, y) = lml_tools::synth::images(45, 10, 32, 3);
    lml_kernel::npy::write_npy_atomic(dir.join("train_x.npy"), &x).unwrap();
    lml_kernel::npy::write_npy_atomic(dir.join("train_y.npy"), &y).unwrap();
    let w = random_weights(2, Cut::Pool5);
    let wdir = dir.join("weights");
    WeightStore::write(&wdir, MODEL, Preset::Torchvision, w.iter().map(|(n, a)| (n.clone(), a.view()))).unwrap();
    (
        ImageDataset::open(dir.join("train_x.npy"), dir.join("train_y.npy")).unwrap(),
        Vgg19::open(&wdir, 32, Cut::Pool5).unwrap(),
    )
}

#[test]
fn resumed_extraction_equals_uninterrupted_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, vgg) = setup(tmp.path());
    let labels = tmp.path().join("train_y.npy");
    let note = serde_json::json!({"test": true});

    // Uninterrupted: all three shards, then merge.
    let whole = tmp.path().join("whole");
    for i in 0..3 {
        assert!(extract_shard(&vgg, &data, &whole, "train", (i, 3), Dtype::F32, &mut |_| {}).unwrap());
    }
    let merged = merge(&whole, "train", 3, &labels, &note).unwrap().unwrap();

    // Interrupted: shards 0 and 2 (e.g. two workers), a stale temp file of
    // shard 1 left by a crash, nothing merged yet; then the run is repeated.
    let resumed = tmp.path().join("resumed");
    extract_shard(&vgg, &data, &resumed, "train", (0, 3), Dtype::F32, &mut |_| {}).unwrap();
    extract_shard(&vgg, &data, &resumed, "train", (2, 3), Dtype::F32, &mut |_| {}).unwrap();
    fs::write(resumed.join(".train.shard-0001-of-0003.npy.tmp-1-0"), b"partial").unwrap();
    assert!(merge(&resumed, "train", 3, &labels, &note).unwrap().is_none(), "cannot merge with a shard missing");
    let mut computed = vec![];
    for i in 0..3 {
        computed.push(extract_shard(&vgg, &data, &resumed, "train", (i, 3), Dtype::F32, &mut |_| {}).unwrap());
    }
    assert_eq!(computed, [false, true, false], "only the missing shard is recomputed");
    let merged2 = merge(&resumed, "train", 3, &labels, &note).unwrap().unwrap();
    assert_eq!(fs::read(&merged).unwrap(), fs::read(&merged2).unwrap());
    assert_eq!(fs::read(whole.join("train_y.npy")).unwrap(), fs::read(&labels).unwrap());

    // A shard of the wrong shape is refused, not silently reused.
    lml_kernel::npy::write_npy_atomic(shard_path(&resumed, "train", 1, 3), &ndarray::Array2::<f32>::zeros((2, 2)))
        .unwrap();
    let err = extract_shard(&vgg, &data, &resumed, "train", (1, 3), Dtype::F32, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("delete it to recompute"), "{err}");
    assert!(extract_shard(&vgg, &data, &resumed, "train", (3, 3), Dtype::F32, &mut |_| {}).is_err());
}

#[test]
fn cached_features_equal_features_computed_directly() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, vgg) = setup(tmp.path());
    let out = tmp.path().join("cache");
    extract_shard(&vgg, &data, &out, "train", (0, 1), Dtype::F32, &mut |_| {}).unwrap();
    merge(&out, "train", 1, &tmp.path().join("train_y.npy"), &serde_json::json!({})).unwrap().unwrap();
    let cache = CachedFeatures::open(out.join("train_features.npy"), out.join("train_y.npy")).unwrap();
    assert_eq!((cache.len(), cache.feature_dim()), (45, 512));
    // Direct computation in the same batches of BATCH images: identical bits.
    for b0 in (0..45).step_by(BATCH) {
        let idx: Vec<usize> = (b0..(b0 + BATCH).min(45)).collect();
        let (images, labels) = data.gather(&idx).unwrap();
        let direct = vgg.features(images.view()).unwrap();
        let (cached, cached_labels) = cache.batch(&idx).unwrap();
        assert_eq!(cached, direct);
        assert_eq!(cached_labels, labels);
    }
    assert!(cache.batch(&[45]).is_err());
}

#[test]
fn cli_synth_prepare_extract() {
    let tmp = tempfile::tempdir().unwrap();
    let lml = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lml")).args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "lml {args:?}:\n{text}");
        text
    };
    let p = |name: &str| tmp.path().join(name).to_string_lossy().into_owned();
    lml(&["synth", "cifar10", "--out", &p("c.tar.gz"), "--per-batch", "6"]);
    lml(&["prepare-cifar10", "--input", &p("c.tar.gz"), "--out", &p("data"), "--records-per-batch", "6"]);
    let (_, vgg) = setup(tmp.path());
    drop(vgg);
    let base = ["extract-features", "--data", &p("data"), "--weights", &p("weights"), "--out", &p("feats")];
    let first = lml(&[&base[..], &["--cut", "pool5", "--split", "test", "--shard", "1/2"]].concat());
    assert!(first.contains("waiting for the other shards"), "{first}");
    let second = lml(&[&base[..], &["--cut", "pool5", "--split", "test", "--shards", "2"]].concat());
    assert!(second.contains("1 shard(s) of 2 computed, 1 already there"), "{second}");
    assert!(second.contains("features ready"), "{second}");
    // The note is the kernel's typed CacheNote (unknown fields are refused).
    let note: lml_kernel::features::CacheNote =
        serde_json::from_str(&fs::read_to_string(tmp.path().join("feats/test_features.json")).unwrap()).unwrap();
    assert_eq!((note.format.as_str(), note.split.as_str()), (lml_kernel::features::CACHE_FORMAT, "test"));
    assert_eq!((note.dim, note.shards, note.dtype.as_str(), note.cut), (512, 2, "<f4", lml_kernel::Cut::Pool5));
    lml(&[&base[..], &["--cut", "pool5", "--split", "train", "--shards", "3"]].concat());
    // The class list travels with the cache (prepare-cifar10 wrote it beside the images).
    let classes = fs::read_to_string(tmp.path().join("feats/classes.txt")).unwrap();
    assert_eq!(classes, fs::read_to_string(tmp.path().join("data/classes.txt")).unwrap());
    assert_eq!(classes.lines().next(), Some("airplane"));
    let trained =
        lml(&["train-head", "--features", &p("feats"), "--epochs", "3", "--batch", "16", "--out", &p("head")]);
    assert!(trained.contains("epoch   3") && trained.contains("test acc"), "{trained}");
    assert!(trained.contains("10 classes") && trained.contains("standardised"), "{trained}");
    // The saved head: its tensors, the standardisation it expects, the names.
    let open = |name: &str| lml_kernel::npy::MappedNpy::open(tmp.path().join("head").join(name)).unwrap();
    assert_eq!(open("head.weight.npy").view::<f32>().unwrap().shape(), &[10, 512]);
    assert_eq!(open("stats.mean.npy").view::<f32>().unwrap().shape(), &[512]);
    assert_eq!(open("stats.scale.npy").view::<f32>().unwrap().shape(), &[512]);
    assert_eq!(fs::read_to_string(tmp.path().join("head/classes.txt")).unwrap(), classes);
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(tmp.path().join("head/head.json")).unwrap()).unwrap();
    assert_eq!((manifest["standardized"].as_bool(), manifest["classes"].as_u64()), (Some(true), Some(10)));
    assert_eq!(manifest["class_names"][9], "truck");
    // A class list that contradicts the cache's is refused, not overwritten.
    fs::write(tmp.path().join("data/classes.txt"), "a\nb\n").unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_lml"))
        .args([&base[..], &["--cut", "pool5", "--split", "test", "--shards", "2"]].concat())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("classes.txt") && err.contains("differs"), "{err}");
    let bad = Command::new(env!("CARGO_BIN_EXE_lml")).args([&base[..], &["--shard", "2/2"]].concat()).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("need 0 <= i < n"));
}

#[test]
fn f16_cache_is_the_f32_cache_rounded() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, vgg) = setup(tmp.path());
    let labels = tmp.path().join("train_y.npy");
    let (a, b) = (tmp.path().join("f32"), tmp.path().join("f16"));
    for (dir, dtype) in [(&a, Dtype::F32), (&b, Dtype::F16)] {
        for i in 0..2 {
            extract_shard(&vgg, &data, dir, "train", (i, 2), dtype, &mut |_| {}).unwrap();
        }
        merge(dir, "train", 2, &labels, &serde_json::json!({})).unwrap().unwrap();
    }
    let full = CachedFeatures::open(a.join("train_features.npy"), a.join("train_y.npy")).unwrap();
    let half = CachedFeatures::open(b.join("train_features.npy"), b.join("train_y.npy")).unwrap();
    assert!(half.is_f16() && !full.is_f16());
    let data_len = |p: &Path| lml_kernel::npy::MappedNpy::open(p).unwrap().data_bytes().unwrap().len();
    assert_eq!(2 * data_len(&b.join("train_features.npy")), data_len(&a.join("train_features.npy")));
    let idx: Vec<usize> = (0..45).collect();
    let (x32, y32) = full.batch(&idx).unwrap();
    let (x16, y16) = half.batch(&idx).unwrap();
    assert_eq!(y32, y16);
    for (&h, &f) in x16.iter().zip(x32.iter()) {
        assert_eq!(h, half::f16::from_f32(f).to_f32());
    }
    // An f32 shard is not silently reused for an f16 run.
    let err = extract_shard(&vgg, &data, &a, "train", (0, 2), Dtype::F16, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("<f4") && err.to_string().contains("<f2"), "{err}");
}
