//! The seed's training path end to end: `.npy` images on disk, memory-mapped,
//! run through the frozen VGG19 (random weights, memory-mapped) at every
//! step, and a softmax head trained on the features with the defaults
//! (standardised features, the kernel's SGD, a cosine schedule) learns the classes.

use lml_kernel::dataset::ImageDataset;
use lml_kernel::npy::write_npy_atomic;
use lml_kernel::optim::{LrSchedule, Sgd};
use lml_kernel::standardize::FeatureStats;
use lml_kernel::trainer::{FeatureSource, ImageFeatures, InMemoryFeatures, Trainer, DEFAULT_EPOCHS};
use lml_kernel::vgg::{random_weights, MODEL};
use lml_kernel::weights::WeightStore;
use lml_kernel::{Cut, Preset, Vgg19};
use lml_tools::synth;

#[test]
fn head_learns_generated_classes_through_frozen_vgg19() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = tmp.path().join("weights");
    // pool5 at 32×32 keeps this test small (512 features, no fc weights).
    let w = random_weights(3, Cut::Pool5);
    WeightStore::write(&weights, MODEL, Preset::Torchvision, w.iter().map(|(n, a)| (n.clone(), a.view()))).unwrap();
    for (name, n, seed) in [("train", 400, 1), ("test", 200, 2)] {
        let (x, y) = synth::images(n, 4, 32, seed);
        write_npy_atomic(tmp.path().join(format!("{name}_x.npy")), &x).unwrap();
        write_npy_atomic(tmp.path().join(format!("{name}_y.npy")), &y).unwrap();
    }
    let open = |name: &str| {
        let data =
            ImageDataset::open(tmp.path().join(format!("{name}_x.npy")), tmp.path().join(format!("{name}_y.npy")))
                .unwrap();
        ImageFeatures { dataset: data, vgg: Vgg19::open(&weights, 32, Cut::Pool5).unwrap() }
    };
    let (train, test) = (open("train"), open("test"));
    assert_eq!(train.feature_dim(), 512);

    // Features cached once (one pass through VGG19), and the standardisation
    // computed over them.
    let cache = |src: &ImageFeatures| {
        let idx: Vec<usize> = (0..src.len()).collect();
        let (features, labels) = src.batch(&idx).unwrap();
        InMemoryFeatures { features, labels }
    };
    let (train_cached, test_cached) = (cache(&train), cache(&test));
    let stats = FeatureStats::compute_all(&train_cached).unwrap();
    let trainer = || {
        let t = Trainer::new(4, 512, Sgd::default(), 32, 7).unwrap();
        let total = DEFAULT_EPOCHS * t.steps_per_epoch(400);
        t.with_schedule(LrSchedule::default(), total).with_stats(stats.clone()).unwrap()
    };

    // The seed's way: every step runs its batch through the frozen VGG19.
    let mut per_step = trainer();
    for epoch in 0..2 {
        per_step.epoch(&train, epoch, |_, _| {}).unwrap();
    }

    // The cached features train identically.
    let mut cached = trainer();
    let before = cached.evaluate(&test_cached).unwrap();
    for epoch in 0..2 {
        cached.epoch(&train_cached, epoch, |_, _| {}).unwrap();
    }
    assert_eq!(cached.head, per_step.head, "cached and per-step features must train identically");

    // Random-weight features are weakly discriminative (they share a large
    // common component), so the head needs the run's other epochs to separate them.
    for epoch in 2..DEFAULT_EPOCHS {
        cached.epoch(&train_cached, epoch, |_, _| {}).unwrap();
    }
    let after = cached.evaluate(&test_cached).unwrap();
    assert!(after.accuracy() >= 0.9, "test accuracy {:.3} (before {:.3})", after.accuracy(), before.accuracy());
    assert!(after.loss() < before.loss(), "loss {} → {}", before.loss(), after.loss());
}
