//! Pooling, dense, softmax cross-entropy, SGD and preprocessing against
//! references and finite differences.

mod common;

use common::{dot, each_microkernel, finite_difference, integers, random};
use lml_kernel::approx::{assert_close, Approximation};
use lml_kernel::gemm::Microkernel;
use lml_kernel::geometry::Window2d;
use lml_kernel::layers::*;
use lml_kernel::optim::Sgd;
use lml_kernel::{preprocess, reference, KernelError, Preset};
use ndarray::{arr1, arr2, Array2, Array3, Array4, ArrayD, Ix1, Ix2, Ix4};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn maxpool_matches_reference(n in 1usize..3, c in 1usize..4, h in 1usize..10, w in 1usize..10,
                                 k in 1usize..4, s in 1usize..4, p in 0usize..2, seed in 0u64..100) {
        let window = Window2d::square(k, s, p);
        prop_assume!(p < k && window.validate(h, w).is_ok());
        let x = random((n, c, h, w), seed);
        let out = maxpool2d_forward(x.view(), &window).unwrap();
        let r = reference::maxpool2d(x.view(), &window);
        assert_close("maxpool", out.output.view(), r.view(), Approximation::Exact);
        // argmax points at the value that was chosen
        for ((b, ch, i, j), &a) in out.argmax.indexed_iter() {
            let (iy, ix) = (a as usize / w, a as usize % w);
            prop_assert_eq!(x[[b, ch, iy, ix]], out.output[[b, ch, i, j]]);
        }
    }

    /// The values-only pool reads and writes strided views (the VGG forward
    /// pools from one padded layout into another) with the same values.
    #[test]
    fn maxpool_values_into_strided_views(n in 1usize..3, c in 1usize..4, h in 2usize..12, w in 2usize..12,
                                         k in 1usize..4, s in 1usize..4, seed in 0u64..100) {
        let window = if k == 2 && s == 2 { Window2d::VGG_POOL } else { Window2d::square(k, s, 0) };
        prop_assume!(window.validate(h, w).is_ok());
        let x = random((n, c, h, w), seed);
        let r = reference::maxpool2d(x.view(), &window);
        let frame = Window2d::VGG_CONV;
        let lin = PaddedLayout::conv_input(n, c, h, w, &frame);
        let lout = PaddedLayout::conv_input(n, c, r.shape()[2], r.shape()[3], &frame);
        let mut bin = vec![0.0; lin.len()];
        lin.fill(&mut bin, x.view()).unwrap();
        let mut bout = vec![f32::NAN; lout.len()];
        maxpool2d_values_into(lin.view(&bin), &window, lout.view_mut(&mut bout)).unwrap();
        assert_close("strided maxpool", lout.view(&bout), r.view(), Approximation::Exact);
        // A transposed (column-major) destination too.
        let mut t = Array4::<f32>::from_elem((r.shape()[3], r.shape()[2], c, n), f32::NAN);
        maxpool2d_values_into(x.view(), &window, t.view_mut().reversed_axes()).unwrap();
        assert_close("transposed maxpool", t.view().reversed_axes(), r.view(), Approximation::Exact);
    }

    #[test]
    fn dense_matches_reference(n in 0usize..5, i in 1usize..70, o in 1usize..140, relu in any::<bool>(), seed in 0u64..100) {
        let x = random((n, i), seed);
        let w = random((o, i), seed + 1);
        let b = random(o, seed + 2);
        let r = reference::dense(x.view(), w.view(), b.view(), relu);
        for kernel in Microkernel::runnable() {
            let y = dense_forward_on(x.view(), w.view(), b.view(), relu, kernel).unwrap();
            assert_close(&format!("dense on {kernel}"), y.view(), r.view(), Approximation::Close);
        }
    }
}

#[test]
fn maxpool_backward_routes_to_argmax_and_matches_finite_differences() {
    let window = Window2d::square(3, 2, 1);
    // Distinct values: no ties, so the max is differentiable at this point.
    let x = Array4::from_shape_fn((2, 2, 7, 6), |(a, b, c, d)| {
        ((a * 131 + b * 71 + c * 17 + d * 5) % 97) as f32 * 0.37 - 9.0
    });
    let out = maxpool2d_forward(x.view(), &window).unwrap();
    let r = random(out.output.raw_dim(), 5);
    let g = maxpool2d_backward(r.view(), out.argmax.view(), (7, 6)).unwrap();
    let fd = finite_difference(&x.clone().into_dyn(), 1e-2, |xx| {
        dot(&maxpool2d_forward(xx.view().into_dimensionality::<Ix4>().unwrap(), &window).unwrap().output, &r)
    });
    assert_close("maxpool ∂/∂x", g.view().into_dyn(), fd.view(), Approximation::Approximate);
    assert!(maxpool2d_backward(r.view(), out.argmax.view(), (2, 2)).is_err(), "indices outside the plane");
}

#[test]
fn maxpool_rejects_padding_as_large_as_kernel() {
    let x = random((1, 1, 4, 4), 1);
    assert!(matches!(maxpool2d_forward(x.view(), &Window2d::square(2, 2, 2)), Err(KernelError::Invalid { .. })));
}

#[test]
fn avgpool_matches_definition_and_finite_differences() {
    // 1×1 → 7×7 replicates (VGG at 32×32); 5×3 → 2×2 uses overlapping cells.
    let x = random((1, 2, 1, 1), 1);
    let y = adaptive_avgpool2d_forward(x.view(), (7, 7)).unwrap();
    assert!(y.index_axis(ndarray::Axis(1), 1).iter().all(|&v| v == x[[0, 1, 0, 0]]));
    let x = random((2, 2, 5, 3), 2);
    let y = adaptive_avgpool2d_forward(x.view(), (2, 2)).unwrap();
    // cell (1, 0): rows 2..5, cols 0..2
    let want: f64 =
        (2..5).flat_map(|r| (0..2).map(move |c| (r, c))).map(|(r, c)| x[[1, 0, r, c]] as f64).sum::<f64>() / 6.0;
    assert!((y[[1, 0, 1, 0]] as f64 - want).abs() < 1e-6);
    let r = random(y.raw_dim(), 3);
    let g = adaptive_avgpool2d_backward(r.view(), (5, 3)).unwrap();
    let fd = finite_difference(&x.into_dyn(), 1e-2, |xx| {
        dot(&adaptive_avgpool2d_forward(xx.view().into_dimensionality::<Ix4>().unwrap(), (2, 2)).unwrap(), &r)
    });
    assert_close("avgpool ∂/∂x", g.view().into_dyn(), fd.view(), Approximation::Approximate);
}

#[test]
fn dense_exact_on_integers_and_backward_matches_finite_differences() {
    let x = integers((3, 9), 1);
    let w = integers((70, 9), 2);
    let b = integers(70, 3);
    let r = reference::dense(x.view(), w.view(), b.view(), false);
    each_microkernel("dense exact", |kernel| {
        let y = dense_forward_on(x.view(), w.view(), b.view(), false, kernel).unwrap();
        assert_close(&format!("dense exact on {kernel}"), y.view(), r.view(), Approximation::Exact);
        1
    });

    let x = random((3, 7), 4);
    let w = random((5, 7), 5);
    let b = random(5, 6);
    let y = dense_forward(x.view(), w.view(), b.view(), true).unwrap();
    let r = random(y.raw_dim(), 7);
    let mut gy = r.clone();
    relu_backward(gy.view_mut(), y.view());
    let g = dense_backward(x.view(), w.view(), gy.view(), true).unwrap();
    let f = |x: &Array2<f32>, w: &Array2<f32>, b: &ndarray::Array1<f32>| {
        dot(&dense_forward(x.view(), w.view(), b.view(), true).unwrap(), &r)
    };
    let fx =
        finite_difference(&x.clone().into_dyn(), 1e-2, |v| f(&v.clone().into_dimensionality::<Ix2>().unwrap(), &w, &b));
    let fw =
        finite_difference(&w.clone().into_dyn(), 1e-2, |v| f(&x, &v.clone().into_dimensionality::<Ix2>().unwrap(), &b));
    let fb =
        finite_difference(&b.clone().into_dyn(), 1e-2, |v| f(&x, &w, &v.clone().into_dimensionality::<Ix1>().unwrap()));
    assert_close("dense ∂/∂x", g.input.view().into_dyn(), fx.view(), Approximation::Approximate);
    assert_close("dense ∂/∂W", g.weight.view().into_dyn(), fw.view(), Approximation::Approximate);
    assert_close("dense ∂/∂b", g.bias.view().into_dyn(), fb.view(), Approximation::Approximate);
    let skipped = dense_backward(x.view(), w.view(), gy.view(), false).unwrap();
    assert_eq!(skipped.input.shape(), &[3, 0]);
    assert_eq!(skipped.weight, g.weight);
}

/// Batches around the 2- and 4-image groups of the dot-product path and past
/// its limit (the `sgemm` path), feature counts off the 4-row groups, and
/// input lengths off the 4-, 8- and 16-float vectors, on every kernel.
#[test]
fn dense_pinned_sizes() {
    let sizes =
        [(1, 25, 3), (3, 16, 4), (4, 16, 4), (5, 33, 70), (7, 100, 9), (16, 17, 65), (17, 40, 70), (40, 64, 130)];
    each_microkernel("dense_pinned_sizes", |kernel| {
        for (n, i, o) in sizes {
            let x = random((n, i), 1);
            let w = random((o, i), 2);
            let b = random(o, 3);
            let y = dense_forward_on(x.view(), w.view(), b.view(), true, kernel).unwrap();
            let r = reference::dense(x.view(), w.view(), b.view(), true);
            assert_close(&format!("dense n{n} i{i} o{o} on {kernel}"), y.view(), r.view(), Approximation::Close);
        }
        sizes.len()
    });
}

#[test]
fn dense_bad_shapes() {
    let x = random((2, 4), 1);
    let w = random((3, 5), 2);
    let b = random(3, 3);
    assert!(matches!(dense_forward(x.view(), w.view(), b.view(), false), Err(KernelError::Shape { .. })));
    let w = random((3, 4), 2);
    let b = random(2, 3);
    assert!(dense_forward(x.view(), w.view(), b.view(), false).is_err());
}

#[test]
fn softmax_cross_entropy_matches_reference_and_finite_differences() {
    let z = random((6, 10), 1).mapv(|v| v * 5.0);
    let labels = [0u32, 3, 9, 9, 1, 4];
    let ce = softmax_cross_entropy(z.view(), &labels).unwrap();
    let (loss, grad) = reference::softmax_cross_entropy(z.view(), &labels);
    assert!((ce.loss_sum - loss).abs() < 1e-5 * loss.abs(), "{} vs {loss}", ce.loss_sum);
    assert_close("softmax grad", ce.grad.view(), grad.view(), Approximation::Close);
    let fd = finite_difference(&z.into_dyn(), 1e-2, |zz| {
        softmax_cross_entropy(zz.view().into_dimensionality::<Ix2>().unwrap(), &labels).unwrap().loss_sum
    });
    assert_close("softmax ∂/∂z", ce.grad.view().into_dyn(), fd.view(), Approximation::Approximate);
}

#[test]
fn softmax_cross_entropy_is_stable_and_counts_hits() {
    let z = arr2(&[[1e4f32, 0.0, -1e4], [-3e4, 3e4, 0.0]]);
    let ce = softmax_cross_entropy(z.view(), &[0, 2]).unwrap();
    assert!(ce.loss_sum.is_finite() && ce.grad.iter().all(|v| v.is_finite()));
    assert!((ce.loss_sum - 3e4).abs() < 1.0);
    assert_eq!(ce.correct, 1);
    assert!(matches!(
        softmax_cross_entropy(z.view(), &[0, 3]),
        Err(KernelError::Label { index: 1, label: 3, classes: 3 })
    ));
    assert!(matches!(softmax_cross_entropy(z.view(), &[0]), Err(KernelError::Shape { .. })));
}

#[test]
fn sgd_follows_pytorch_convention() {
    let sgd = Sgd { lr: 0.5, momentum: 0.9, weight_decay: 0.1 };
    let mut w = arr1(&[1.0f32, -2.0]).into_dyn();
    let mut v = ArrayD::<f32>::zeros(w.raw_dim());
    let g = arr1(&[4.0f32, 2.0]).into_dyn(); // summed over 2 examples
    sgd.step(w.view_mut(), g.view(), v.view_mut(), 2).unwrap();
    // g' = g/2 + 0.1 w = [2.1, 0.8]; v = g'; w -= 0.5 v
    assert_close("w1", w.view(), arr1(&[1.0 - 1.05, -2.0 - 0.4]).into_dyn().view(), Approximation::Close);
    sgd.step(w.view_mut(), g.view(), v.view_mut(), 2).unwrap();
    let g2 = [2.0 + 0.1 * -0.05, 1.0 + 0.1 * -2.4];
    let v2 = [0.9 * 2.1 + g2[0], 0.9 * 0.8 + g2[1]];
    let want = arr1(&[-0.05 - 0.5 * v2[0], -2.4 - 0.5 * v2[1]]).into_dyn();
    assert_close("w2", w.view(), want.view(), Approximation::Close);
    assert!(sgd.step(w.view_mut(), g.view(), v.view_mut(), 0).is_err());
    assert!(Sgd { lr: f32::NAN, ..sgd }.validate().is_err());
    assert!(Sgd { momentum: 1.0, ..sgd }.validate().is_err());
}

#[test]
fn preprocess_resizes_like_reference_and_applies_presets() {
    let images = Array4::from_shape_fn((2, 5, 7, 3), |(n, y, x, c)| ((n * 37 + y * 11 + x * 7 + c * 50) % 256) as u8);
    for preset in [Preset::Torchvision, Preset::Caffe] {
        let out = preprocess(images.view(), 12, preset).unwrap();
        assert_eq!(out.shape(), &[2, 3, 12, 12]);
        for n in 0..2 {
            let rgb = Array3::from_shape_fn((3, 5, 7), |(c, y, x)| images[[n, y, x, c]] as f64);
            let resized = reference::resize_bilinear(rgb.view(), (12, 12));
            for (oc, (sc, scale, offset)) in preset.channel_affine().into_iter().enumerate() {
                let want = resized.index_axis(ndarray::Axis(0), sc).mapv(|v| v * scale as f64 + offset as f64);
                assert_close("preprocess", out.slice(ndarray::s![n, oc, .., ..]), want.view(), Approximation::Close);
            }
        }
    }
    // Caffe puts blue first, minus its mean.
    let px = Array4::from_shape_vec((1, 1, 1, 3), vec![10u8, 20, 30]).unwrap();
    let c = preprocess(px.view(), 1, Preset::Caffe).unwrap();
    assert_close(
        "caffe",
        c.view(),
        Array4::from_shape_vec((1, 3, 1, 1), vec![30.0 - 103.939, 20.0 - 116.779, 10.0 - 123.68]).unwrap().view(),
        Approximation::Close,
    );
    let t = preprocess(px.view(), 1, Preset::Torchvision).unwrap();
    assert!((t[[0, 0, 0, 0]] as f64 - (10.0 / 255.0 - 0.485) / 0.229).abs() < 1e-5);
    let bad = Array4::<u8>::zeros((1, 4, 4, 1));
    assert!(matches!(preprocess(bad.view(), 8, Preset::Caffe), Err(KernelError::Shape { .. })));
    assert!("keras".parse::<Preset>().is_err());
}

#[test]
fn maxpool_ties_go_to_the_first_maximum() {
    let x = Array4::<f32>::from_elem((1, 1, 4, 4), 2.0);
    let out = maxpool2d_forward(x.view(), &Window2d::VGG_POOL).unwrap();
    let want = Array4::from_shape_vec((1, 1, 2, 2), vec![0u32, 2, 8, 10]).unwrap();
    assert_eq!(out.argmax, want);
}
