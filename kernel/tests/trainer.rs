//! The head trainer: gradients, exact splitting, determinism, learning.

mod common;

use common::{finite_difference, random};
use lml_kernel::approx::{assert_close, Approximation};
use lml_kernel::optim::{LrSchedule, Sgd};
use lml_kernel::trainer::{epoch_order, FeatureSource, Head, HeadGradient, HeadVelocity, InMemoryFeatures, Trainer};
use ndarray::{Array2, Ix1, Ix2};

/// A learnable problem: class `c` has mean `+3` on feature `c`, noise elsewhere.
fn blobs(n: usize, classes: usize, dim: usize, seed: u64) -> InMemoryFeatures {
    let noise = random((n, dim), seed);
    let labels: Vec<u32> = (0..n).map(|i| ((i * 7 + seed as usize) % classes) as u32).collect();
    let mut features = noise;
    for (i, &l) in labels.iter().enumerate() {
        features[[i, l as usize]] += 3.0;
    }
    InMemoryFeatures { features, labels }
}

#[test]
fn head_gradient_matches_finite_differences() {
    let data = blobs(6, 4, 5, 1);
    let head = Head::new(4, 5, 2);
    let g = head.gradient(data.features.view(), &data.labels).unwrap();
    let loss = |h: &Head| h.evaluate(data.features.view(), &data.labels).unwrap().loss_sum;
    let fw = finite_difference(&head.weight.clone().into_dyn(), 1e-2, |w| {
        loss(&Head { weight: w.clone().into_dimensionality::<Ix2>().unwrap(), bias: head.bias.clone() })
    });
    let fb = finite_difference(&head.bias.clone().into_dyn(), 1e-2, |b| {
        loss(&Head { weight: head.weight.clone(), bias: b.clone().into_dimensionality::<Ix1>().unwrap() })
    });
    assert_close("head ∂/∂W", g.weight.view().into_dyn(), fw.view(), Approximation::Approximate);
    assert_close("head ∂/∂b", g.bias.view().into_dyn(), fb.view(), Approximation::Approximate);
    assert_eq!(g.count, 6);
}

/// Gradient sums over disjoint shards add up to the whole batch's gradient,
/// which is what lets N workers reproduce one large-batch step.
#[test]
fn shard_gradients_sum_to_the_batch_gradient() {
    let data = blobs(40, 10, 64, 3);
    let head = Head::new(10, 64, 4);
    let all = head.gradient(data.features.view(), &data.labels).unwrap();
    let idx: Vec<usize> = (0..40).collect();
    let mut sum = HeadGradient::zeros(10, 64);
    for shard in idx.chunks(13) {
        let (x, y) = data.batch(shard).unwrap();
        sum.add(&head.gradient(x.view(), &y).unwrap()).unwrap();
    }
    assert_eq!(sum.count, all.count);
    assert_eq!(sum.correct, all.correct);
    // Not bit-exact: batches of up to 16 take the dense dot-product path and
    // larger ones `sgemm`, which round the logits differently; the sums agree
    // to f32 rounding (`Close`).
    let (rtol, _) = Approximation::Close.tolerances();
    assert!((sum.loss_sum - all.loss_sum).abs() <= rtol * all.loss_sum.abs(), "{} vs {}", sum.loss_sum, all.loss_sum);
    let want = all.weight.mapv(|v| v as f64);
    assert_close("summed ∂/∂W", sum.weight.view(), want.view(), Approximation::Close);
    assert!(sum.add(&HeadGradient::zeros(3, 64)).is_err());
}

#[test]
fn training_is_deterministic_and_learns() {
    let train = blobs(600, 10, 32, 5);
    let test = blobs(200, 10, 32, 6);
    let sgd = Sgd { lr: 0.05, momentum: 0.9, weight_decay: 1e-4 };
    let run = || {
        let mut t = Trainer::new(10, 32, sgd, 16, 42).unwrap();
        for epoch in 0..3 {
            t.epoch(&train, epoch, |_, _| {}).unwrap();
        }
        t
    };
    let (a, b) = (run(), run());
    assert_eq!(a.head, b.head, "same seed, same parameters");
    let before = Trainer::new(10, 32, sgd, 16, 42).unwrap().evaluate(&test).unwrap();
    let after = a.evaluate(&test).unwrap();
    assert!(after.accuracy() > 0.95, "accuracy {}", after.accuracy());
    assert!(after.loss() < before.loss() / 4.0, "loss {} → {}", before.loss(), after.loss());
}

#[test]
fn epoch_order_is_a_seeded_permutation() {
    let a = epoch_order(100, 1, 0);
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    assert_eq!(a, epoch_order(100, 1, 0));
    assert_ne!(a, epoch_order(100, 1, 1));
    assert_ne!(a, epoch_order(100, 2, 0));
}

#[test]
fn head_round_trips_through_named_tensors() {
    let head = Head::new(3, 8, 1);
    let [(wn, w), (bn, b)] = head.tensors();
    assert_eq!((wn, bn), ("head.weight", "head.bias"));
    assert_eq!(Head::from_arrays(w, b).unwrap(), head);
    let bad_bias = ndarray::Array1::<f32>::zeros(4).into_dyn();
    assert!(Head::from_arrays(head.weight.view().into_dyn(), bad_bias.view()).is_err());
    let mut v = HeadVelocity::zeros_like(&head);
    assert_eq!(v.tensors_mut()[0].1.shape(), &[3, 8]);
    assert!(Trainer::new(3, 8, Sgd::default(), 0, 1).is_err());
    let empty = InMemoryFeatures { features: Array2::zeros((0, 8)), labels: vec![] };
    assert!(empty.batch(&[0]).is_err());
}

/// Features like fc7's after a ReLU: non-negative, mostly zero, per-feature
/// scales spread over three orders of magnitude, times `scale`; feature 0
/// never fires (constant), and class `c` raises features `c` and `c + 1`.
fn relu_like(n: usize, classes: usize, dim: usize, scale: f32, seed: u64) -> InMemoryFeatures {
    let noise = random((n, dim), seed);
    let labels: Vec<u32> = (0..n).map(|i| ((i * 7 + seed as usize) % classes) as u32).collect();
    let feature_scale = |j: usize| 10f32.powf((j as f32 * 0.37).sin() * 1.5);
    let features = Array2::from_shape_fn((n, dim), |(i, j)| {
        let l = labels[i] as usize;
        let signal = if j == l + 1 || j == l + 2 { 2.5 } else { 0.0 };
        let v = (noise[[i, j]] + signal - 0.6).max(0.0);
        if j == 0 {
            0.0
        } else {
            v * feature_scale(j) * scale
        }
    });
    InMemoryFeatures { features, labels }
}

/// Standardised features have mean 0 and variance 1/D per feature (so an
/// example's squared norm is about 1), computed exactly in f64 even when the
/// mean dwarfs the spread; a constant feature gets σ = 1.
#[test]
fn standardised_features_have_mean_zero_and_variance_one_over_d() {
    use lml_kernel::standardize::{FeatureStats, Standardized};
    let mut data = relu_like(500, 5, 16, 100.0, 1);
    // Features whose mean dwarfs their spread: the f64 merge keeps the spread.
    for i in 0..500 {
        data.features[[i, 14]] = 1.0e4 + (i % 7) as f32 * 0.01;
        data.features[[i, 15]] = 50.0 + (i % 7) as f32 * 0.5;
    }
    // Statistics in chunks of 64 (a streaming merge) equal a two-pass f64 reference.
    let idx: Vec<usize> = (0..500).collect();
    let stats = FeatureStats::compute(&data, &idx, 64).unwrap();
    let d = 16f64;
    for j in 0..16 {
        let col: Vec<f64> = data.features.column(j).iter().map(|&v| f64::from(v)).collect();
        let mean = col.iter().sum::<f64>() / 500.0;
        let var = col.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 500.0;
        let sigma = if var == 0.0 { 1.0 } else { var.sqrt() };
        assert!((f64::from(stats.mean[j]) - mean).abs() <= 1e-6 * mean.abs().max(1e-3), "feature {j} mean");
        let want = sigma * d.sqrt();
        assert!((f64::from(stats.scale[j]) - want).abs() <= 1e-5 * want, "feature {j}: {} vs {want}", stats.scale[j]);
    }
    assert_eq!(stats.scale[0], 4.0, "constant feature: σ = 1, times √16");
    let std = Standardized::new(&data, &stats).unwrap();
    let (x, _) = std.batch(&idx).unwrap();
    // (Feature 14's mean is stored as f32, whose rounding at 1e4 is a tenth
    // of its spread: its standardised values are off by that; not checked.)
    for j in 1..14 {
        let col = x.column(j);
        let mean = col.iter().map(|&v| f64::from(v)).sum::<f64>() / 500.0;
        let var = col.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / 500.0;
        assert!(mean.abs() < 1e-4, "feature {j}: mean {mean}");
        assert!((var * d - 1.0).abs() < 1e-3, "feature {j}: variance {var}");
    }
    assert!(x.column(0).iter().all(|&v| v == 0.0));
    let norm2 = x.outer_iter().map(|r| r.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>()).sum::<f64>() / 500.0;
    assert!((norm2 - 15.0 / 16.0).abs() < 1e-2, "mean squared norm {norm2}");
}

#[test]
fn statistics_reject_non_finite_features_naming_them() {
    use lml_kernel::standardize::FeatureStats;
    let mut data = relu_like(40, 3, 6, 1.0, 2);
    data.features[[33, 4]] = f32::INFINITY;
    let err = FeatureStats::compute_all(&data).unwrap_err().to_string();
    assert!(err.contains("feature 4 of example 33") && err.contains("inf"), "{err}");
    let empty = InMemoryFeatures { features: Array2::zeros((0, 6)), labels: vec![] };
    assert!(FeatureStats::compute_all(&empty).is_err());
    let bad_scale = ndarray::Array1::<f32>::zeros(6).into_dyn();
    let mean = ndarray::Array1::<f32>::zeros(6).into_dyn();
    assert!(FeatureStats::from_arrays(mean.view(), bad_scale.view())
        .unwrap_err()
        .to_string()
        .contains("stats.scale[0]"));
    assert_eq!(FeatureStats::sample_indices(5, 8), vec![0, 1, 2, 3, 4]);
    assert_eq!(FeatureStats::sample_indices(10, 4), vec![0, 2, 5, 7]);
}

/// A head trained on standardised features, folded (`W' = W / scale`,
/// `b' = b − W'·mean`), gives the same logits on raw features.
#[test]
fn folded_head_on_raw_features_equals_head_on_standardised_features() {
    use lml_kernel::standardize::{FeatureStats, Standardized};
    let data = relu_like(300, 4, 24, 100.0, 3);
    let stats = FeatureStats::compute_all(&data).unwrap();
    let mut t = Trainer::new(4, 24, Sgd::default(), 32, 5)
        .unwrap()
        .with_schedule(LrSchedule::Cosine, 3 * 10)
        .with_stats(stats.clone())
        .unwrap();
    for e in 0..3 {
        t.epoch(&data, e, |_, _| {}).unwrap();
    }
    let idx: Vec<usize> = (0..300).collect();
    let (xs, _) = Standardized::new(&data, &stats).unwrap().batch(&idx).unwrap();
    let standardised = t.head.logits(xs.view()).unwrap();
    let folded = stats.fold(&t.head).unwrap();
    let raw = folded.logits(data.features.view()).unwrap();
    assert_close(
        "folded logits",
        raw.view().into_dyn(),
        standardised.mapv(f64::from).view().into_dyn(),
        Approximation::Close,
    );
    assert!(stats.fold(&Head::new(4, 5, 1)).is_err());
}

/// The defaults (standardised features, the kernel's SGD, a cosine
/// schedule) learn the same at every global scale of the features:
/// standardisation removes the scale, so the runs agree to rounding.
#[test]
fn default_training_is_independent_of_the_feature_scale() {
    use lml_kernel::standardize::FeatureStats;
    let mut accuracies = Vec::new();
    for scale in [0.01f32, 1.0, 100.0] {
        let (train, test) = (relu_like(600, 5, 32, scale, 5), relu_like(300, 5, 32, scale, 6));
        let mut t = Trainer::new(5, 32, Sgd::default(), 64, 42).unwrap();
        let total = 5 * t.steps_per_epoch(train.len());
        t = t
            .with_schedule(LrSchedule::default(), total)
            .with_stats(FeatureStats::compute_all(&train).unwrap())
            .unwrap();
        for e in 0..5 {
            let ev = t.epoch(&train, e, |_, _| {}).unwrap();
            assert_eq!(t.divergence(ev.loss()), None, "scale {scale}, epoch {e}: loss {}", ev.loss());
        }
        assert_eq!(t.steps_done, total);
        accuracies.push(t.evaluate(&test).unwrap().accuracy());
    }
    assert!(accuracies.iter().all(|&a| a > 0.9), "{accuracies:?}");
    assert!(accuracies.iter().all(|&a| (a - accuracies[0]).abs() < 0.01), "{accuracies:?}");
}

#[test]
fn divergence_is_a_non_finite_or_exploding_loss_or_parameters() {
    use lml_kernel::trainer::{divergence, loss_limit, Divergence};
    let head = Head::new(10, 4, 1);
    let v = HeadVelocity::zeros_like(&head);
    assert!((loss_limit(10) - 10.0 * 10f64.ln()).abs() < 1e-12);
    assert_eq!(loss_limit(2), 10.0, "at least 10 × 1");
    assert_eq!(divergence(2.3, &head, &v), None);
    assert!(matches!(divergence(f64::NAN, &head, &v), Some(Divergence::NonFiniteLoss(_))));
    assert!(matches!(divergence(f64::INFINITY, &head, &v), Some(Divergence::NonFiniteLoss(_))));
    assert!(matches!(divergence(42.0, &head, &v), Some(Divergence::Exploded { .. })));
    let mut bad = v.clone();
    bad.weight[[3, 2]] = f32::NAN;
    assert_eq!(divergence(2.3, &head, &bad), Some(Divergence::NonFiniteParameters));
    // The old defaults on features ×100 (raw, lr 0.003, constant): diverged within an epoch.
    let train = relu_like(400, 10, 64, 100.0, 7);
    let old = Sgd { lr: 0.003, momentum: 0.9, weight_decay: 0.0 };
    let mut t = Trainer::new(10, 64, old, 128, 1).unwrap();
    let e = t.epoch(&train, 0, |_, _| {}).unwrap();
    let d = t.divergence(e.loss()).expect("the old defaults diverge on ×100 features");
    assert!(d.to_string().contains("training loss"), "{d}");
}
