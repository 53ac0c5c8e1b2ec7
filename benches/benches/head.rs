//! The trainable part alone: one head step (4096 → 10 logits, softmax
//! cross-entropy, gradient, SGD update) at batch 8 and 256, and one epoch over
//! 50,000 cached features (CIFAR-10's training set) at batch 256.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lml_kernel::optim::Sgd;
use lml_kernel::trainer::{FeatureSource, Head, HeadVelocity, InMemoryFeatures, Trainer};
use ndarray::Array2;
use rand::{Rng, SeedableRng};

fn features(n: usize) -> (Array2<f32>, Vec<u32>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let x = Array2::from_shape_simple_fn((n, 4096), || rng.random_range(0.0f32..2.0));
    let y = (0..n).map(|i| (i % 10) as u32).collect();
    (x, y)
}

fn head_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("head_step_4096x10");
    let sgd = Sgd::default();
    for batch in [8usize, 256] {
        let (x, y) = features(batch);
        let mut head = Head::new(10, 4096, 1);
        let mut vel = HeadVelocity::zeros_like(&head);
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch{batch}"), |b| {
            b.iter(|| {
                let grad = head.gradient(x.view(), &y).unwrap();
                head.apply(&grad, &sgd, &mut vel).unwrap();
            })
        });
    }
    g.finish();
}

/// One epoch of head training over `source` (50,000 examples, batch 256).
fn epoch_bench(c: &mut Criterion, name: &str, source: &dyn FeatureSource) {
    let mut g = c.benchmark_group("head_epoch_cached");
    g.sample_size(10);
    g.throughput(Throughput::Elements(source.len() as u64));
    let mut t = Trainer::new(10, 4096, Sgd::default(), 256, 1).unwrap();
    let mut epoch = 0;
    g.bench_function(name, |b| {
        b.iter(|| {
            epoch += 1;
            t.epoch(source, epoch, |_, _| {}).unwrap()
        })
    });
    g.finish();
}

fn cached_epoch(c: &mut Criterion) {
    let (features, labels) = features(50_000);
    epoch_bench(c, "50000x4096_batch256", &InMemoryFeatures { features, labels });
}

/// The same epoch over a 50,000 × 4096 f32 cache memory-mapped from disk, as
/// `extract-features` writes it (819 MB, generated once under the target dir).
fn mmap_epoch(c: &mut Criterion) {
    let dir = lml_benches::target_dir().join("bench-feature-cache");
    let (fx, fy) = (dir.join("train_features.npy"), dir.join("train_y.npy"));
    if !fx.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let (x, y) = features(50_000);
        lml_kernel::npy::write_npy_atomic(&fx, &x).unwrap();
        lml_kernel::npy::write_npy_atomic(&fy, &ndarray::Array1::from_iter(y)).unwrap();
    }
    let source = lml_kernel::trainer::CachedFeatures::open(&fx, &fy).unwrap();
    epoch_bench(c, "mmap_50000x4096_batch256", &source);
}

criterion_group!(benches, head_step, cached_epoch, mmap_epoch);
criterion_main!(benches);
