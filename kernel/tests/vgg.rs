//! The whole VGG19 against the f64 reference, at 32×32 and (sampled) at 224×224.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

mod common;

use common::each_microkernel;
use lml_kernel::approx::{assert_close, check_close, Approximation};
use lml_kernel::gemm::Microkernel;
use lml_kernel::geometry::Window2d;
use lml_kernel::layers::conv2d::{ConvAlgorithm, ConvPolicy};
use lml_kernel::vgg::{random_weights, tensor_specs, LayerKind, CLASSIFIER_IN, MODEL, VGG19};
use lml_kernel::weights::WeightStore;
use lml_kernel::{reference, Cut, KernelError, Preset, Vgg19};
use ndarray::{Array2, Array4, ArrayD, ArrayView1, ArrayView4, Axis, Ix1, Ix2, Ix4};
use rand::{Rng, SeedableRng};

/// One random fc7 weight directory shared by the tests of this file: 574 MB
/// of f32, generated once under the target directory and reused by every
/// test process and later runs (nextest runs each test in its own process,
/// so a per-process temp dir would be written, and leaked, once per test).
fn dir() -> std::path::PathBuf {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vgg19-random-weights-seed7-fc7");
        if !dir.join(lml_kernel::weights::MANIFEST).exists() {
            let w = random_weights(7, Cut::Fc7);
            let written =
                WeightStore::write(&dir, MODEL, Preset::Torchvision, w.iter().map(|(n, a)| (n.clone(), a.view())));
            // Another test process may have published it meanwhile.
            if let Err(e) = written {
                assert!(dir.join(lml_kernel::weights::MANIFEST).exists(), "writing test weights: {e}");
            }
        }
        dir
    })
    .clone()
}

fn input(n: usize, s: usize, seed: u64) -> Array4<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array4::from_shape_simple_fn((n, 3, s, s), || rng.random_range(-2.0f32..2.0))
}

fn load(store: &WeightStore, name: &str) -> ArrayD<f32> {
    store.view(name).unwrap().to_owned()
}

/// The whole network in the reference implementation, rounding to f32
/// between layers; returns the features at pool5, fc6 and fc7.
fn reference_forward(store: &WeightStore, x: &Array4<f32>) -> Vec<Array2<f64>> {
    let conv = |x: ArrayView4<'_, f32>, w: ArrayView4<'_, f32>, b: ArrayView1<'_, f32>| {
        reference::conv2d(x, w, b, &Window2d::VGG_CONV, true)
    };
    reference_chain(store, x, conv, |_, _| {})
}

/// [`reference_forward`] with the convolutions computed by `conv` (an f64
/// implementation), calling `observe(layer, output)` after every layer.
fn reference_chain(
    store: &WeightStore,
    x: &Array4<f32>,
    conv: impl Fn(ArrayView4<'_, f32>, ArrayView4<'_, f32>, ArrayView1<'_, f32>) -> Array4<f64>,
    mut observe: impl FnMut(&str, ndarray::ArrayViewD<'_, f64>),
) -> Vec<Array2<f64>> {
    let n = x.shape()[0];
    let mut act = x.mapv(|v| v as f64);
    let mut flat: Option<Array2<f64>> = None;
    let mut cuts = Vec::new();
    for layer in &VGG19[..Cut::Fc7.layers()] {
        let x32 = act.mapv(|v| v as f32);
        match layer.kind {
            LayerKind::Conv { .. } => {
                let w = load(store, &format!("{}.weight", layer.name)).into_dimensionality::<Ix4>().unwrap();
                let b = load(store, &format!("{}.bias", layer.name)).into_dimensionality::<Ix1>().unwrap();
                act = conv(x32.view(), w.view(), b.view());
            }
            LayerKind::MaxPool => act = reference::maxpool2d(x32.view(), &Window2d::VGG_POOL),
            LayerKind::Dense { .. } => {
                let inp = match flat.take() {
                    Some(f) => f.mapv(|v| v as f32),
                    None => reference::adaptive_avgpool2d(x32.view(), (7, 7))
                        .mapv(|v| v as f32)
                        .into_shape_with_order((n, CLASSIFIER_IN))
                        .unwrap(),
                };
                let w = load(store, &format!("{}.weight", layer.name)).into_dimensionality::<Ix2>().unwrap();
                let b = load(store, &format!("{}.bias", layer.name)).into_dimensionality::<Ix1>().unwrap();
                flat = Some(reference::dense(inp.view(), w.view(), b.view(), true));
                cuts.push(flat.clone().unwrap());
                observe(layer.name, flat.as_ref().unwrap().view().into_dyn());
                continue;
            }
        }
        observe(layer.name, act.view().into_dyn());
        if layer.name == "features.36" {
            let d = act.len() / n;
            cuts.push(act.clone().into_shape_with_order((n, d)).unwrap());
        }
    }
    cuts
}

/// The whole network at 32×32 against the f64 reference chain, to every
/// cut, on every microkernel this CPU runs.
#[test]
fn vgg19_at_32_matches_reference_for_every_cut() {
    let store = WeightStore::open(dir(), MODEL, &tensor_specs(Cut::Fc7)).unwrap();
    let x = input(2, 32, 1);
    let refs = reference_forward(&store, &x);
    each_microkernel("vgg19_at_32_matches_reference_for_every_cut", |kernel| {
        // Two forwards: to pool5 (its own output path) and to fc7, whose
        // fc6 output is observed on the way.
        let mut cases = 0;
        for cut in [Cut::Pool5, Cut::Fc7] {
            let vgg = Vgg19::open(dir(), 32, cut).unwrap().with_microkernel(kernel).unwrap();
            assert_eq!(vgg.microkernel(), kernel);
            let mut fc6 = None;
            let y = vgg
                .forward_observed(x.view(), |name, y| {
                    if name == "classifier.0" {
                        fc6 = Some(y.to_owned());
                    }
                })
                .unwrap();
            assert_eq!(y.shape(), &[2, vgg.feature_dim()]);
            let mut got = vec![(cut, y)];
            if let Some(f) = fc6 {
                got.push((Cut::Fc6, f.into_dimensionality().unwrap()));
            }
            for (cut, y) in got {
                // `refs` holds the cuts in order: pool5, fc6, fc7.
                let r = &refs[cut as usize];
                let what = format!("VGG19 to {cut:?} at 32 on {kernel}");
                assert_close(&what, y.view(), r.view(), Approximation::Approximate);
                assert!(r.iter().any(|&v| v > 0.0), "features must not be all zero");
                cases += 1;
            }
        }
        assert_eq!(cases, 3, "pool5, fc6 and fc7 checked");
        cases
    });
}

/// At 224 the full reference would take minutes, so every layer is checked on
/// sampled outputs, from the fast path's own input to that layer.
#[test]
fn vgg19_at_224_matches_reference_layer_by_layer() {
    let vgg = Vgg19::open(dir(), 224, Cut::Fc7).unwrap();
    let store = WeightStore::open(dir(), MODEL, &tensor_specs(Cut::Fc7)).unwrap();
    let x = input(1, 224, 2);
    let mut outputs: BTreeMap<String, ArrayD<f32>> = BTreeMap::new();
    let feats = vgg
        .forward_observed(x.view(), |name, y| {
            outputs.insert(name.to_string(), y.to_owned());
        })
        .unwrap();
    assert_eq!(feats.shape(), &[1, 4096]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut prev: ArrayD<f32> = x.into_dyn();
    for layer in &VGG19[..Cut::Fc7.layers()] {
        let out = &outputs[layer.name];
        match layer.kind {
            LayerKind::Conv { .. } => {
                let w = load(&store, &format!("{}.weight", layer.name)).into_dimensionality::<Ix4>().unwrap();
                let b = load(&store, &format!("{}.bias", layer.name)).into_dimensionality::<Ix1>().unwrap();
                let p = prev.view().into_dimensionality::<Ix4>().unwrap();
                let o = out.view().into_dimensionality::<Ix4>().unwrap();
                let (_, oc, oh, ow) = o.dim();
                for _ in 0..48 {
                    // Bias samples to the borders, where padding matters.
                    let pick = |rng: &mut rand_chacha::ChaCha8Rng, n: usize| match rng.random_range(0..4) {
                        0 => 0,
                        1 => n - 1,
                        _ => rng.random_range(0..n),
                    };
                    let idx = (0, rng.random_range(0..oc), pick(&mut rng, oh), pick(&mut rng, ow));
                    let r = reference::conv2d_at(p, w.view(), b.view(), &Window2d::VGG_CONV, true, idx);
                    let got = o[idx] as f64;
                    assert!((got - r).abs() <= 1e-4 * r.abs().max(1.0), "{} at {idx:?}: {got} vs {r}", layer.name);
                }
            }
            LayerKind::MaxPool => {
                let r = reference::maxpool2d(prev.view().into_dimensionality::<Ix4>().unwrap(), &Window2d::VGG_POOL);
                assert_close(
                    layer.name,
                    out.view().into_dimensionality::<Ix4>().unwrap(),
                    r.view(),
                    Approximation::Exact,
                );
            }
            LayerKind::Dense { .. } => {
                let inp = if prev.ndim() == 4 {
                    prev.clone().into_shape_with_order(ndarray::IxDyn(&[1, CLASSIFIER_IN])).unwrap()
                } else {
                    prev.clone()
                };
                let w = load(&store, &format!("{}.weight", layer.name)).into_dimensionality::<Ix2>().unwrap();
                let b = load(&store, &format!("{}.bias", layer.name)).into_dimensionality::<Ix1>().unwrap();
                let r = reference::dense(inp.view().into_dimensionality::<Ix2>().unwrap(), w.view(), b.view(), true);
                assert_close(
                    layer.name,
                    out.view().into_dimensionality::<Ix2>().unwrap(),
                    r.view(),
                    Approximation::Close,
                );
            }
        }
        prev = out.clone();
    }
}

#[test]
fn features_are_independent_of_batch_composition_and_threads() {
    let vgg = Vgg19::open(dir(), 32, Cut::Fc7).unwrap();
    let x = input(3, 32, 4);
    let all = vgg.forward(x.view()).unwrap();
    let one = lml_kernel::parallel::thread_pool(1)
        .unwrap()
        .install(|| vgg.forward(x.slice(ndarray::s![1..2, .., .., ..])).unwrap());
    assert_eq!(all.row(1), one.row(0));
}

/// The automatic policy's plan: direct for conv1_1 (3 input channels),
/// Winograd F(4×4) elsewhere at 224; at 32, F(2×2) on block 5's 2×2 maps.
#[test]
fn auto_plan_runs_winograd_where_measured_faster() {
    use lml_kernel::layers::WinogradTile::{F2, F4};
    let plan = |size| Vgg19::open(dir(), size, Cut::Fc7).unwrap().with_conv_policy(ConvPolicy::Auto).conv_plan();
    let at224 = plan(224);
    assert_eq!(at224.len(), 16);
    assert_eq!(at224[0], ("features.0", ConvAlgorithm::Implicit));
    assert!(at224[1..].iter().all(|&(_, a)| a == ConvAlgorithm::Winograd(F4)), "{at224:?}");
    let at32 = plan(32);
    assert_eq!(at32[0], ("features.0", ConvAlgorithm::Implicit));
    assert!(at32[1..12].iter().all(|&(_, a)| a == ConvAlgorithm::Winograd(F4)), "{at32:?}");
    assert!(at32[12..].iter().all(|&(_, a)| a == ConvAlgorithm::Winograd(F2)), "{at32:?}");
    let direct = Vgg19::open(dir(), 224, Cut::Fc7).unwrap().with_conv_policy(ConvPolicy::Direct).conv_plan();
    assert!(direct.iter().all(|&(_, a)| a == ConvAlgorithm::Implicit), "{direct:?}");
}

#[test]
fn bad_configuration_is_a_typed_error() {
    assert!(matches!(Vgg19::open(dir(), 48, Cut::Fc7), Err(KernelError::Invalid { .. })));
    for kernel in Microkernel::unavailable() {
        let err = Vgg19::open(dir(), 32, Cut::Fc7).unwrap().with_microkernel(kernel).unwrap_err();
        assert!(err.to_string().contains("not supported by this CPU"), "{err}");
    }
    let vgg = Vgg19::open(dir(), 32, Cut::Pool5).unwrap();
    let err = vgg.forward(input(1, 64, 1).view()).unwrap_err();
    assert!(err.to_string().contains("[N, 3, 32, 32]"), "{err}");
    assert_eq!(vgg.feature_dim(), 512);
    assert_eq!(Vgg19::open(dir(), 64, Cut::Pool5).unwrap().feature_dim(), 2048);
    // The nominal 39.26 GFLOP per 224×224 image through fc7 (conv + fc6 + fc7).
    let g = lml_kernel::vgg::flops_per_image(224, Cut::Fc7) as f64 / 1e9;
    assert!((g - 39.26).abs() < 0.01, "{g}");
}

/// `relu(conv(x, W) + b)` for VGG's 3×3/1/1 in f64: im2col blocks of about
/// 1024 output positions multiplied by `matrixmultiply`'s f64 GEMM, blocks
/// in parallel. An f64 reference fast enough for the whole network at
/// 224×224, where the naive one takes minutes; checked against it first
/// ([`conv_f64_is_the_reference`]).
fn conv_f64(x: ArrayView4<'_, f32>, w: ArrayView4<'_, f32>, b: ArrayView1<'_, f32>) -> Array4<f64> {
    use rayon::prelude::*;
    let (n, c, h, wd) = x.dim();
    let o = w.shape()[0];
    let wm = w.mapv(f64::from).into_shape_with_order((o, c * 9)).unwrap();
    let rows = (1024 / wd).max(1);
    let mut y = Array4::<f64>::zeros((n, o, h, wd));
    let blocks: Vec<_> = y.axis_chunks_iter_mut(Axis(2), rows).enumerate().collect();
    blocks.into_par_iter().for_each(|(k, mut rows_of_all)| {
        let y0 = k * rows;
        for (img, mut block) in rows_of_all.outer_iter_mut().enumerate() {
            let r = block.shape()[1];
            let mut col = Array2::<f64>::zeros((c * 9, r * wd));
            for ci in 0..c {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let mut dst = col.row_mut(ci * 9 + ky * 3 + kx);
                        for yy in 0..r {
                            let Some(iy) = (y0 + yy + ky).checked_sub(1).filter(|&v| v < h) else { continue };
                            for xx in 0..wd {
                                if let Some(ix) = (xx + kx).checked_sub(1).filter(|&v| v < wd) {
                                    dst[yy * wd + xx] = x[[img, ci, iy, ix]] as f64;
                                }
                            }
                        }
                    }
                }
            }
            let prod = wm.dot(&col);
            for (oc, plane) in block.outer_iter_mut().enumerate() {
                for (v, &p) in plane.into_iter().zip(prod.row(oc)) {
                    *v = (p + b[oc] as f64).max(0.0);
                }
            }
        }
    });
    y
}

#[test]
fn conv_f64_is_the_reference() {
    for (n, c, h, w, o) in [(2, 3, 9, 7, 5), (1, 4, 40, 3, 2)] {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let x = Array4::from_shape_simple_fn((n, c, h, w), || rng.random_range(-1.0f32..1.0));
        let wt = Array4::from_shape_simple_fn((o, c, 3, 3), || rng.random_range(-1.0f32..1.0));
        let b = ndarray::Array1::from_shape_simple_fn(o, || rng.random_range(-1.0f32..1.0));
        let r = reference::conv2d(x.view(), wt.view(), b.view(), &Window2d::VGG_CONV, true);
        let y = conv_f64(x.view(), wt.view(), b.view());
        let err = (&y - &r).iter().fold(0.0f64, |m, e| m.max(e.abs()));
        assert!(err < 1e-12, "{n}×{c}×{h}×{w} → {o}: {err}");
    }
}

/// `max|actual − expected| / max|expected|`.
fn relative_error(actual: ndarray::ArrayViewD<'_, f32>, expected: ndarray::ArrayViewD<'_, f64>) -> f64 {
    let scale = expected.iter().fold(0.0f64, |m, e| m.max(e.abs()));
    let err = actual.iter().zip(expected.iter()).fold(0.0f64, |m, (&a, &e)| m.max((a as f64 - e).abs()));
    err / scale
}

/// Every convolution policy (the automatic choice, direct only, Winograd
/// F(4×4) and F(2×2) everywhere) through the whole network at 224×224 to
/// fc7 against the f64 chain (He-initialised random weights, one image):
/// fc7 and pool5 within 1e-4 of the reference's scale
/// ([`Approximation::Features`]). Prints each layer's error (relative to its
/// output's largest magnitude) under every policy.
#[test]
fn vgg19_at_224_every_conv_policy_within_1e_4_of_the_f64_chain() {
    let store = WeightStore::open(dir(), MODEL, &tensor_specs(Cut::Fc7)).unwrap();
    let x = input(1, 224, 6);
    let mut reference: Vec<(String, ArrayD<f64>)> = Vec::new();
    let cuts = reference_chain(&store, &x, conv_f64, |name, y| reference.push((name.to_string(), y.to_owned())));
    let policies = ConvPolicy::ALL;
    let mut errors = vec![Vec::new(); policies.len()];
    // Every layer's output under Winograd F(4×4), for the layer-local errors below.
    let mut f4_outputs: Vec<ArrayD<f32>> = Vec::new();
    let f4 = ConvPolicy::Winograd(lml_kernel::layers::WinogradTile::F4);
    for (p, policy) in policies.into_iter().enumerate() {
        let vgg = Vgg19::open(dir(), 224, Cut::Fc7).unwrap().with_conv_policy(policy);
        let mut k = 0;
        let fc7 = vgg
            .forward_observed(x.view(), |name, y| {
                let (rname, r) = &reference[k];
                assert_eq!(name, rname);
                if policy == f4 {
                    f4_outputs.push(y.to_owned());
                }
                errors[p].push(relative_error(y.view(), r.view()));
                if name == "features.36" {
                    let y = y.to_owned().into_shape_with_order((1, 512 * 49)).unwrap();
                    let got = check_close("pool5", y.view(), cuts[0].view(), Approximation::Features);
                    assert!(got.is_ok(), "{policy}: {}", got.unwrap_err());
                }
                k += 1;
            })
            .unwrap();
        assert_eq!(k, reference.len(), "every layer observed");
        assert_close(&format!("fc7 under {policy}"), fc7.view(), cuts[2].view(), Approximation::Features);
    }
    // Each F(4×4) convolution against the f64 convolution of its own (fast) input:
    // within the one-layer Winograd tolerance on every real VGG19 shape.
    let mut local = vec![None; reference.len()];
    let mut prev = x.clone().into_dyn();
    for (k, layer) in VGG19[..Cut::Fc7.layers()].iter().enumerate() {
        if let LayerKind::Conv { .. } = layer.kind {
            let w = load(&store, &format!("{}.weight", layer.name)).into_dimensionality::<Ix4>().unwrap();
            let b = load(&store, &format!("{}.bias", layer.name)).into_dimensionality::<Ix1>().unwrap();
            let r = conv_f64(prev.view().into_dimensionality::<Ix4>().unwrap(), w.view(), b.view()).into_dyn();
            let y = f4_outputs[k].view();
            assert_close(
                &format!("{} by F(4×4) from its input", layer.name),
                y.view(),
                r.view(),
                Approximation::Winograd,
            );
            local[k] = Some(relative_error(y, r.view()));
        }
        prev = f4_outputs[k].clone();
    }
    eprintln!("max |error| / max |reference| per layer, cumulative from the input (224×224, 1 image),");
    eprintln!("and F(4×4)'s error in each convolution alone (from its own input):");
    let header: String = policies.map(|p| format!("{:>12}", p.name())).join("");
    eprintln!("{:<14} {header}{:>12}", "layer", "f4 alone");
    for (k, (name, _)) in reference.iter().enumerate() {
        let row: Vec<String> = errors.iter().map(|e| format!("{:>12.2e}", e[k])).collect();
        let alone = local[k].map_or(String::new(), |e| format!("{e:>12.2e}"));
        eprintln!("{name:<14} {}{alone}", row.join(""));
    }
    let plan = Vgg19::open(dir(), 224, Cut::Fc7).unwrap().conv_plan();
    eprintln!("auto plan: {plan:?}");
}

/// Every convolution policy at 32×32 on every microkernel: pool5 within
/// 1e-4 of the f64 reference chain's scale, and Winograd really ran where the
/// policy forces it.
#[test]
fn vgg19_at_32_every_conv_policy_within_1e_4_of_reference() {
    let store = WeightStore::open(dir(), MODEL, &tensor_specs(Cut::Fc7)).unwrap();
    // One image: this test runs 4 policies on every kernel, under qemu too.
    let x = input(1, 32, 1);
    let refs = reference_forward(&store, &x);
    each_microkernel("vgg19_at_32_every_conv_policy_within_1e_4_of_reference", |kernel| {
        for policy in ConvPolicy::ALL {
            let vgg =
                Vgg19::open(dir(), 32, Cut::Pool5).unwrap().with_microkernel(kernel).unwrap().with_conv_policy(policy);
            if let ConvPolicy::Winograd(tile) = policy {
                assert!(vgg.conv_plan().iter().all(|&(_, a)| a == ConvAlgorithm::Winograd(tile)));
            }
            let y = vgg.forward(x.view()).unwrap();
            let what = format!("VGG19 to pool5 at 32 on {kernel} under {policy}");
            assert_close(&what, y.view(), refs[0].view(), Approximation::Features);
        }
        ConvPolicy::ALL.len()
    });
}
