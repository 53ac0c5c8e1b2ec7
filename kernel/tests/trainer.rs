//! The head trainer: gradients, exact splitting, determinism, learning.

mod common;

use common::{finite_difference, random};
use lml_kernel::approx::{assert_close, Approximation};
use lml_kernel::optim::Sgd;
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
