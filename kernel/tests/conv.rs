//! Convolution against the naive f64 reference, and by finite differences.

mod common;

use common::{dot, each_microkernel, finite_difference, integers, random};
use lml_kernel::approx::{assert_close, check_close, check_close_to_magnitude, Approximation};
use lml_kernel::gemm::Microkernel;
use lml_kernel::geometry::Window2d;
use lml_kernel::layers::conv2d::{
    conv2d_forward_algorithm, conv2d_forward_with, pack_filters, ConvAlgorithm, ConvPolicy, CONV_ENV,
};
use lml_kernel::layers::{conv2d_backward, conv2d_forward, relu_backward, WinogradTile};
use lml_kernel::{reference, KernelError};
use ndarray::{Array1, Array4, Ix4};
use proptest::prelude::*;

/// One convolution case: input `[n, c, h, w]`, `o` filters, a window.
#[derive(Clone, Debug)]
struct ConvProblem {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    window: Window2d,
    relu: bool,
}

impl ConvProblem {
    fn data(&self, seed: u64) -> (Array4<f32>, Array4<f32>, Array1<f32>) {
        let (kh, kw) = self.window.kernel;
        (
            random((self.n, self.c, self.h, self.w), seed),
            random((self.o, self.c, kh, kw), seed + 1),
            random(self.o, seed + 2),
        )
    }

    /// The automatic choice and every algorithm on every microkernel this
    /// CPU can run, against the reference.
    fn check_forward(&self, seed: u64) -> Result<(), String> {
        self.check_forward_on(seed, &algorithms(&self.window, &Microkernel::runnable()))
    }

    /// The automatic choice and the given (algorithm, kernel) pairs, against the reference.
    fn check_forward_on(&self, seed: u64, algos: &[(ConvAlgorithm, Option<Microkernel>)]) -> Result<(), String> {
        let (x, w, b) = self.data(seed);
        let r = reference::conv2d(x.view(), w.view(), b.view(), &self.window, self.relu);
        let y = conv2d_forward(x.view(), w.view(), b.view(), &self.window, self.relu).map_err(|e| e.to_string())?;
        check_close(&format!("{self:?}"), y.view(), r.view(), Approximation::Close)?;
        for &(algo, kernel) in algos {
            let packed = kernel.map(|k| pack_filters(w.view(), k)).transpose().map_err(|e| e.to_string())?;
            let y =
                conv2d_forward_algorithm(x.view(), w.view(), packed.as_ref(), b.view(), &self.window, self.relu, algo)
                    .map_err(|e| e.to_string())?;
            check_close(&format!("{self:?} {algo:?} {kernel:?}"), y.view(), r.view(), tolerance(algo))?;
        }
        Ok(())
    }

    fn check_backward(&self, seed: u64) -> Result<(), String> {
        let (x, w, b) = self.data(seed);
        let y = conv2d_forward(x.view(), w.view(), b.view(), &self.window, false).map_err(|e| e.to_string())?;
        let gy = random(y.raw_dim(), seed + 3);
        let g = conv2d_backward(x.view(), w.view(), gy.view(), &self.window).map_err(|e| e.to_string())?;
        let (rx, rw, rb) = reference::conv2d_backward(x.view(), w.view(), gy.view(), &self.window);
        // Gradients are sums that may cancel: judge them against the sums of
        // their terms' magnitudes (the same reference on |x|, |W|, |gy|).
        let abs = |a: &Array4<f32>| a.mapv(f32::abs);
        let (mx, mw, mb) = reference::conv2d_backward(abs(&x).view(), abs(&w).view(), abs(&gy).view(), &self.window);
        check_close_to_magnitude("grad input", g.input.view(), rx.view(), mx.view(), Approximation::Close)?;
        check_close_to_magnitude("grad weight", g.weight.view(), rw.view(), mw.view(), Approximation::Close)?;
        check_close_to_magnitude("grad bias", g.bias.view(), rb.view(), mb.view(), Approximation::Close)
    }
}

/// The portable algorithm, and every packed algorithm that can run `window`
/// on each of `kernels` (Winograd with both tiles on 3×3 stride-1 windows).
fn algorithms(window: &Window2d, kernels: &[Microkernel]) -> Vec<(ConvAlgorithm, Option<Microkernel>)> {
    let mut out = vec![(ConvAlgorithm::Portable, None)];
    for &k in kernels {
        out.push((ConvAlgorithm::PackedIm2col, Some(k)));
        if window.stride == (1, 1) {
            out.push((ConvAlgorithm::Implicit, Some(k)));
        }
        if window.stride == (1, 1) && window.kernel == (3, 3) {
            out.extend(WinogradTile::ALL.map(|t| (ConvAlgorithm::Winograd(t), Some(k))));
        }
    }
    out
}

/// The tolerance an algorithm is held to against the f64 reference.
fn tolerance(algo: ConvAlgorithm) -> Approximation {
    match algo {
        ConvAlgorithm::Winograd(_) => Approximation::Winograd,
        _ => Approximation::Close,
    }
}

/// 3×3 stride-1 windows with any padding up to 3, on shapes spanning
/// several tiles, panels and k-blocks: every Winograd tile on every kernel.
fn winograd_problem_strategy() -> impl Strategy<Value = ConvProblem> {
    (1usize..4, 1usize..24, 1usize..14, 1usize..14, 1usize..40, 0usize..4, 0usize..4, any::<bool>())
        .prop_map(|(n, c, h, w, o, ph, pw, relu)| ConvProblem {
            n,
            c,
            h,
            w,
            o,
            window: Window2d { kernel: (3, 3), stride: (1, 1), pad: (ph, pw) },
            relu,
        })
        .prop_filter("window must fit", |p| p.window.validate(p.h, p.w).is_ok())
}

fn window_strategy() -> impl Strategy<Value = Window2d> {
    (1usize..4, 1usize..4, 1usize..3, 1usize..3, 0usize..3, 0usize..3).prop_map(|(kh, kw, sh, sw, ph, pw)| Window2d {
        kernel: (kh, kw),
        stride: (sh, sw),
        pad: (ph, pw),
    })
}

fn problem_strategy() -> impl Strategy<Value = ConvProblem> {
    (1usize..3, 1usize..5, 1usize..9, 1usize..9, 1usize..6, window_strategy(), any::<bool>())
        .prop_map(|(n, c, h, w, o, window, relu)| ConvProblem { n, c, h, w, o, window, relu })
        .prop_filter("window must fit", |p| p.window.validate(p.h, p.w).is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn forward_matches_reference(p in problem_strategy(), seed in 0u64..1000) {
        prop_assert!(p.check_forward(seed).is_ok(), "{}", p.check_forward(seed).unwrap_err());
    }

    #[test]
    fn winograd_matches_reference(p in winograd_problem_strategy(), seed in 0u64..1000) {
        let algos: Vec<_> = Microkernel::runnable()
            .into_iter()
            .flat_map(|k| WinogradTile::ALL.map(|t| (ConvAlgorithm::Winograd(t), Some(k))))
            .collect();
        let checked = p.check_forward_on(seed, &algos);
        prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
    }

    #[test]
    fn backward_matches_reference(p in problem_strategy(), seed in 0u64..1000) {
        prop_assert!(p.check_backward(seed).is_ok(), "{}", p.check_backward(seed).unwrap_err());
    }
}

/// VGG's 3×3/1/1 on shapes that exercise tiling (more columns than one tile,
/// a ragged last tile) and many channels.
#[test]
fn vgg_window_tiled_shapes() {
    each_microkernel("vgg_window_tiled_shapes", |kernel| {
        let shapes = [(2, 16, 24, 8), (1, 3, 33, 5), (3, 64, 7, 16), (1, 8, 17, 64)];
        for (n, c, hw, o) in shapes {
            let p = ConvProblem { n, c, h: hw, w: hw, o, window: Window2d::VGG_CONV, relu: true };
            p.check_forward_on(7, &algorithms(&p.window, &[kernel])).unwrap();
        }
        shapes.len()
    });
}

/// Integer-valued data: every sum is exact in f32, so the result is bit-exact.
#[test]
fn exact_on_integer_data() {
    each_microkernel("exact_on_integer_data", |kernel| {
        let mut cases = 0;
        for (window, shape) in [(Window2d::square(3, 2, 1), (2, 5, 11, 9)), (Window2d::VGG_CONV, (3, 30, 20, 17))] {
            let x = integers(shape, 1);
            let w = integers((13, shape.1, 3, 3), 2);
            let b = integers(13, 3);
            let r = reference::conv2d(x.view(), w.view(), b.view(), &window, false);
            // Winograd's transforms divide (G holds 1/2, 1/6, 1/24): not exact.
            let exact =
                algorithms(&window, &[kernel]).into_iter().filter(|(a, _)| !matches!(a, ConvAlgorithm::Winograd(_)));
            for (algo, kernel) in exact {
                let packed = kernel.map(|k| pack_filters(w.view(), k).unwrap());
                let y = conv2d_forward_algorithm(x.view(), w.view(), packed.as_ref(), b.view(), &window, false, algo)
                    .unwrap();
                assert_close(&format!("exact conv {algo:?} {kernel:?}"), y.view(), r.view(), Approximation::Exact);
                cases += 1;
            }
        }
        cases
    });
}

/// Many small images are grouped into one task; tasks must not mix them up.
#[test]
fn grouped_small_images() {
    for (n, hw) in [(40, 2), (7, 4), (64, 1), (5, 16)] {
        let p = ConvProblem { n, c: 9, h: hw, w: hw, o: 14, window: Window2d::VGG_CONV, relu: true };
        p.check_forward(n as u64).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The automatic choice picks the implicit algorithm only where little is wasted.
#[test]
fn algorithm_choice() {
    let c = |hw, w: &Window2d| ConvAlgorithm::choose(true, (hw, hw), w);
    assert_eq!(c(224, &Window2d::VGG_CONV), ConvAlgorithm::Implicit);
    assert_eq!(c(112, &Window2d::VGG_CONV), ConvAlgorithm::Implicit);
    assert_eq!(c(56, &Window2d::VGG_CONV), ConvAlgorithm::Implicit);
    assert_eq!(c(28, &Window2d::VGG_CONV), ConvAlgorithm::Implicit);
    assert_eq!(c(14, &Window2d::VGG_CONV), ConvAlgorithm::Implicit);
    assert_eq!(c(8, &Window2d::VGG_CONV), ConvAlgorithm::PackedIm2col);
    assert_eq!(c(224, &Window2d::square(3, 2, 1)), ConvAlgorithm::PackedIm2col);
    assert_eq!(ConvAlgorithm::choose(false, (224, 224), &Window2d::VGG_CONV), ConvAlgorithm::Portable);
    let x = random((1, 2, 6, 6), 1);
    let w = random((3, 2, 3, 3), 2);
    let b = random(3, 3);
    let err = conv2d_forward_algorithm(
        x.view(),
        w.view(),
        None,
        b.view(),
        &Window2d::VGG_CONV,
        false,
        ConvAlgorithm::Implicit,
    );
    assert!(err.unwrap_err().to_string().contains("needs packed filters"));
    let p = pack_filters(w.view(), Microkernel::detect()).unwrap();
    let strided = Window2d::square(3, 2, 1);
    let err =
        conv2d_forward_algorithm(x.view(), w.view(), Some(&p), b.view(), &strided, false, ConvAlgorithm::Implicit);
    assert!(err.unwrap_err().to_string().contains("stride 1"));
}

#[test]
fn packed_filters_must_match() {
    let x = random((1, 3, 8, 8), 1);
    let w = random((4, 3, 3, 3), 2);
    let other = random((5, 3, 3, 3), 2);
    let b = random(4, 3);
    let packed = pack_filters(other.view(), Microkernel::detect()).unwrap();
    let err = conv2d_forward_with(x.view(), w.view(), Some(&packed), b.view(), &Window2d::VGG_CONV, false).unwrap_err();
    assert!(err.to_string().contains("packed"), "{err}");
    for k in Microkernel::unavailable() {
        let err = pack_filters(w.view(), k).unwrap_err();
        assert!(err.to_string().contains("not supported by this CPU"), "{err}");
    }
}

/// Pinned cases: padding at least the kernel, a kernel as large as the padded
/// input, strides larger than the kernel, a one-pixel image.
#[test]
fn pinned_edge_cases() {
    let cases = [
        ConvProblem { n: 1, c: 2, h: 1, w: 1, o: 3, window: Window2d::square(3, 1, 1), relu: false },
        ConvProblem { n: 1, c: 1, h: 2, w: 5, o: 1, window: Window2d::square(3, 1, 2), relu: false },
        ConvProblem { n: 2, c: 3, h: 4, w: 4, o: 2, window: Window2d::square(6, 1, 1), relu: true },
        ConvProblem { n: 1, c: 2, h: 9, w: 9, o: 2, window: Window2d::square(1, 3, 0), relu: false },
        ConvProblem {
            n: 1,
            c: 1,
            h: 5,
            w: 3,
            o: 1,
            window: Window2d { kernel: (1, 3), stride: (2, 1), pad: (0, 1) },
            relu: false,
        },
    ];
    for p in &cases {
        p.check_forward(11).unwrap_or_else(|e| panic!("{e}"));
        p.check_backward(11).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The backward agrees with finite differences of the forward (ReLU included).
#[test]
fn backward_matches_finite_differences() {
    let window = Window2d::square(3, 2, 1);
    let x = random((2, 3, 5, 6), 21);
    let w = random((4, 3, 3, 3), 22);
    let b = random(4, 23);
    let y = conv2d_forward(x.view(), w.view(), b.view(), &window, true).unwrap();
    let r = random(y.raw_dim(), 24);
    let loss_x = |xx: &ndarray::ArrayD<f32>| {
        let xx = xx.view().into_dimensionality::<Ix4>().unwrap();
        dot(&conv2d_forward(xx, w.view(), b.view(), &window, true).unwrap(), &r)
    };
    let loss_w = |ww: &ndarray::ArrayD<f32>| {
        let ww = ww.view().into_dimensionality::<Ix4>().unwrap();
        dot(&conv2d_forward(x.view(), ww, b.view(), &window, true).unwrap(), &r)
    };
    let loss_b = |bb: &ndarray::ArrayD<f32>| {
        let bb = bb.view().into_dimensionality::<ndarray::Ix1>().unwrap();
        dot(&conv2d_forward(x.view(), w.view(), bb, &window, true).unwrap(), &r)
    };
    let mut gy = r.clone();
    relu_backward(gy.view_mut(), y.view());
    let g = conv2d_backward(x.view(), w.view(), gy.view(), &window).unwrap();
    let eps = 1e-2;
    assert_close(
        "∂/∂x",
        g.input.view().into_dyn(),
        finite_difference(&x.clone().into_dyn(), eps, loss_x).view(),
        Approximation::Approximate,
    );
    assert_close(
        "∂/∂W",
        g.weight.view().into_dyn(),
        finite_difference(&w.clone().into_dyn(), eps, loss_w).view(),
        Approximation::Approximate,
    );
    assert_close(
        "∂/∂b",
        g.bias.view().into_dyn(),
        finite_difference(&b.clone().into_dyn(), eps, loss_b).view(),
        Approximation::Approximate,
    );
}

/// Results do not depend on the number of threads, on any kernel and
/// algorithm (the task widths change with the thread count).
#[test]
fn deterministic_across_thread_counts() {
    let x = random((3, 8, 20, 20), 31);
    let w = random((16, 8, 3, 3), 32);
    let b = random(16, 33);
    each_microkernel("deterministic_across_thread_counts", |kernel| {
        let packed = pack_filters(w.view(), kernel).unwrap();
        let mut cases = 0;
        let winograd = WinogradTile::ALL.map(ConvAlgorithm::Winograd);
        for algo in [ConvAlgorithm::Implicit, ConvAlgorithm::PackedIm2col].into_iter().chain(winograd) {
            let run = |t| {
                lml_kernel::parallel::thread_pool(t).unwrap().install(|| {
                    let window = &Window2d::VGG_CONV;
                    conv2d_forward_algorithm(x.view(), w.view(), Some(&packed), b.view(), window, true, algo).unwrap()
                })
            };
            let one = run(1);
            for t in [2, 3, 5] {
                assert_eq!(one, run(t), "{kernel} {algo:?} {t} threads");
                cases += 1;
            }
        }
        cases
    });
}

#[test]
fn bad_shapes_are_typed_errors() {
    let x = random((1, 3, 8, 8), 1);
    let b = random(4, 2);
    let wrong_c = random((4, 2, 3, 3), 3);
    let err = conv2d_forward(x.view(), wrong_c.view(), b.view(), &Window2d::VGG_CONV, false).unwrap_err();
    assert!(matches!(err, KernelError::Shape { .. }), "{err}");
    assert!(err.to_string().contains("conv2d weight"), "{err}");
    let wrong_k = random((4, 3, 5, 5), 3);
    assert!(conv2d_forward(x.view(), wrong_k.view(), b.view(), &Window2d::VGG_CONV, false).is_err());
    let w = random((4, 3, 3, 3), 3);
    let short_b = random(3, 2);
    let err = conv2d_forward(x.view(), w.view(), short_b.view(), &Window2d::VGG_CONV, false).unwrap_err();
    assert!(err.to_string().contains("bias"), "{err}");
    let too_big = random((4, 3, 11, 11), 3);
    let err = conv2d_forward(x.view(), too_big.view(), b.view(), &Window2d::square(11, 1, 1), false).unwrap_err();
    assert!(matches!(err, KernelError::Invalid { .. }), "{err}");
    let gy = random((1, 4, 7, 8), 4);
    assert!(conv2d_backward(x.view(), w.view(), gy.view(), &Window2d::VGG_CONV).is_err());
}

/// Two "same" convolutions chained through padded layouts, as the VGG
/// forward runs blocks 1–2: the first writes straight into the second's
/// input (its non-output columns land on the frame as zeros), with no copy.
/// Integer data: bit-exact against the reference, and every float outside
/// the interiors zero (the buffers start as NaN). Run at 1, 2 and 3 threads:
/// the task widths change with the thread count, and an image's span must
/// never share a panel with the next image's (the panels are read as one
/// contiguous run, and between two spans lie frame rows).
#[test]
fn padded_chain_is_exact_and_keeps_the_frame_zero() {
    use lml_kernel::layers::conv2d::conv2d_padded;
    use lml_kernel::layers::PaddedLayout;
    each_microkernel("padded_chain_is_exact_and_keeps_the_frame_zero", |kernel| {
        let cases = [
            (2, 3, 9, 13, 8, 5, Window2d::VGG_CONV),
            (1, 4, 40, 33, 16, 9, Window2d::VGG_CONV),
            (3, 2, 6, 5, 3, 4, Window2d::square(5, 1, 2)),
            (2, 5, 7, 8, 10, 3, Window2d { kernel: (3, 1), stride: (1, 1), pad: (1, 0) }),
            // Images smaller than a panel: computed spans cover whole images and panels straddle them.
            (5, 3, 2, 2, 5, 6, Window2d::VGG_CONV),
            (3, 2, 3, 1, 4, 3, Window2d::VGG_CONV),
            // Several images whose spans end inside a task.
            (3, 8, 20, 20, 16, 8, Window2d::VGG_CONV),
        ];
        let threads = [1, 2, 3];
        for (t, (n, c, h, w, o1, o2, window)) in threads.iter().flat_map(|&t| cases.iter().map(move |&c| (t, c))) {
            let pool = lml_kernel::parallel::thread_pool(t).unwrap();
            let (kh, kw) = window.kernel;
            let x = integers((n, c, h, w), 1);
            let (w1, b1) = (integers((o1, c, kh, kw), 2), integers(o1, 3));
            let (w2, b2) = (integers((o2, o1, kh, kw), 4), integers(o2, 5));
            let l0 = PaddedLayout::conv_input(n, c, h, w, &window);
            let l1 = l0.conv_output(o1, &window);
            let l2 = l1.conv_output(o2, &window);
            assert_eq!(l1, PaddedLayout::conv_input(n, o1, h, w, &window), "a same convolution keeps the layout");
            let (mut b0, mut b1buf, mut b2buf) =
                (vec![f32::NAN; l0.len()], vec![f32::NAN; l1.len()], vec![f32::NAN; l2.len()]);
            l0.fill(&mut b0, x.view()).unwrap();
            let p1 = pack_filters(w1.view(), kernel).unwrap();
            let p2 = pack_filters(w2.view(), kernel).unwrap();
            pool.install(|| {
                conv2d_padded(&b0, &l0, &p1, b1.view(), &window, true, &mut b1buf, &l1).unwrap();
                conv2d_padded(&b1buf, &l1, &p2, b2.view(), &window, false, &mut b2buf, &l2).unwrap();
            });
            let r1 = reference::conv2d(x.view(), w1.view(), b1.view(), &window, true);
            let r2 = reference::conv2d(r1.mapv(|v| v as f32).view(), w2.view(), b2.view(), &window, false);
            let what = format!("{kernel} {t} threads {n}×{c}×{h}×{w} {window:?}");
            assert_close(&what, l1.view(&b1buf), r1.view(), Approximation::Exact);
            assert_close(&what, l2.view(&b2buf), r2.view(), Approximation::Exact);
            for (layout, buf) in [(&l1, &b1buf), (&l2, &b2buf)] {
                let mut interior = vec![false; buf.len()];
                let view_start = layout.view(buf).as_ptr() as usize;
                for p in layout.view(buf).iter() {
                    interior[layout.origin() + (p as *const f32 as usize - view_start) / 4] = true;
                }
                for (i, &v) in buf.iter().enumerate().filter(|&(i, _)| !interior[i]) {
                    assert_eq!(v, 0.0, "{what}: float {i} outside the interior is {v}");
                }
            }
        }
        cases.len() * threads.len()
    });
}

#[test]
fn padded_layouts_that_do_not_fit_are_errors() {
    use lml_kernel::layers::conv2d::conv2d_padded;
    use lml_kernel::layers::PaddedLayout;
    let kernel = Microkernel::detect();
    let window = Window2d::VGG_CONV;
    let (w, b) = (random((4, 3, 3, 3), 1), random(4, 2));
    let p = pack_filters(w.view(), kernel).unwrap();
    let lin = PaddedLayout::conv_input(2, 3, 8, 8, &window);
    let lout = lin.conv_output(4, &window);
    let input = vec![0.0; lin.len()];
    let mut out = vec![0.0; lout.len()];
    let run = |lin: &PaddedLayout, lout: &PaddedLayout, out: &mut Vec<f32>| {
        out.resize(lout.len().max(out.len()), 0.0);
        conv2d_padded(&input[..lin.len().min(input.len())], lin, &p, b.view(), &window, true, out, lout)
    };
    let cases = [
        (PaddedLayout { top: (0, 0), ..lin }, lout, "does not fit"),
        (lin, PaddedLayout { c: 5, ..lout }, "is not [2, 4, 8, 8]"),
        (lin, PaddedLayout { wp: lout.wp + 1, ..lout }, "is not"),
        (PaddedLayout { plane: 2 * lin.image() + 11, ..lin }, lout, "does not fit"),
        (PaddedLayout { plane: lin.image(), ..lin }, lout, "plane too short"),
    ];
    for (li, lo, msg) in cases {
        let err = run(&li, &lo, &mut out).unwrap_err();
        assert!(err.to_string().contains(msg), "{err}");
    }
    let short = conv2d_padded(&input[..10], &lin, &p, b.view(), &window, true, &mut out, &lout).unwrap_err();
    assert!(matches!(short, KernelError::Shape { .. }), "{short}");
}

/// Winograd chained through padded layouts as the VGG forward runs it:
/// F(4×4) into F(2×2) into the implicit GEMM, each writing straight into the
/// next one's input. Output buffers start as NaN: every float outside the
/// interiors must come out zero (the frame), every interior value close to
/// the reference chain. Shapes with partial tiles at the right and bottom,
/// images smaller than a tile, tasks spanning images and tile rows split
/// between tasks; 1, 2 and 3 threads (the task widths change with them).
#[test]
fn winograd_padded_chain_keeps_the_frame_zero() {
    use lml_kernel::layers::conv2d::conv2d_padded;
    use lml_kernel::layers::{conv2d_winograd, PaddedLayout, WinogradFilters};
    each_microkernel("winograd_padded_chain_keeps_the_frame_zero", |kernel| {
        let cases =
            [(2, 3, 9, 13, 8, 5), (1, 4, 40, 33, 16, 9), (5, 3, 2, 2, 5, 6), (3, 2, 3, 1, 4, 3), (2, 5, 7, 70, 10, 3)];
        let window = Window2d::VGG_CONV;
        let threads = [1, 2, 3];
        for (t, (n, c, h, w, o1, o2)) in threads.iter().flat_map(|&t| cases.iter().map(move |&c| (t, c))) {
            let pool = lml_kernel::parallel::thread_pool(t).unwrap();
            let x = random((n, c, h, w), 1);
            let (w1, b1) = (random((o1, c, 3, 3), 2), random(o1, 3));
            let (w2, b2) = (random((o2, o1, 3, 3), 4), random(o2, 5));
            let (w3, b3) = (random((o1, o2, 3, 3), 6), random(o1, 7));
            let l0 = PaddedLayout::conv_input(n, c, h, w, &window);
            let (l1, l2) = (l0.conv_output(o1, &window), l0.conv_output(o2, &window));
            let l3 = l2.conv_output(o1, &window);
            let mut b0 = vec![f32::NAN; l0.len()];
            let (mut b1buf, mut b2buf, mut b3buf) =
                (vec![f32::NAN; l1.len()], vec![f32::NAN; l2.len()], vec![f32::NAN; l3.len()]);
            l0.fill(&mut b0, x.view()).unwrap();
            let f1 = WinogradFilters::new(w1.view(), WinogradTile::F4, kernel).unwrap();
            let f2 = WinogradFilters::new(w2.view(), WinogradTile::F2, kernel).unwrap();
            let p3 = pack_filters(w3.view(), kernel).unwrap();
            pool.install(|| {
                conv2d_winograd(&b0, &l0, &f1, b1.view(), &window, true, &mut b1buf, &l1).unwrap();
                conv2d_winograd(&b1buf, &l1, &f2, b2.view(), &window, true, &mut b2buf, &l2).unwrap();
                conv2d_padded(&b2buf, &l2, &p3, b3.view(), &window, false, &mut b3buf, &l3).unwrap();
            });
            // Each layer against the reference from the fast path's own input.
            let what = format!("{kernel} {t} threads {n}×{c}×{h}×{w}");
            let y1 = l1.view(&b1buf).to_owned();
            let y2 = l2.view(&b2buf).to_owned();
            let r1 = reference::conv2d(x.view(), w1.view(), b1.view(), &window, true);
            let r2 = reference::conv2d(y1.view(), w2.view(), b2.view(), &window, true);
            let r3 = reference::conv2d(y2.view(), w3.view(), b3.view(), &window, false);
            assert_close(&format!("{what} F4"), y1.view(), r1.view(), Approximation::Winograd);
            assert_close(&format!("{what} F2"), y2.view(), r2.view(), Approximation::Winograd);
            assert_close(&format!("{what} implicit"), l3.view(&b3buf), r3.view(), Approximation::Close);
            for (layout, buf) in [(&l1, &b1buf), (&l2, &b2buf)] {
                let mut interior = vec![false; buf.len()];
                let view_start = layout.view(buf).as_ptr() as usize;
                for p in layout.view(buf).iter() {
                    interior[layout.origin() + (p as *const f32 as usize - view_start) / 4] = true;
                }
                for (i, &v) in buf.iter().enumerate().filter(|&(i, _)| !interior[i]) {
                    assert_eq!(v, 0.0, "{what}: float {i} outside the interior is {v}");
                }
            }
        }
        cases.len() * threads.len()
    });
}

/// Winograd writes any consistent output layout (here a plain one, no frame)
/// and reads any input frame at least as large as the padding.
#[test]
fn winograd_reads_and_writes_other_layouts() {
    use lml_kernel::layers::{conv2d_winograd, PaddedLayout, WinogradFilters};
    let window = Window2d::VGG_CONV;
    let (n, c, h, w, o) = (2, 3, 10, 7, 5);
    let x = random((n, c, h, w), 1);
    let (wt, b) = (random((o, c, 3, 3), 2), random(o, 3));
    // Input: two frame rows and columns where one is needed, a wide frame.
    let lin = PaddedLayout { n, c, h, w, top: (2, 2), hp: h + 5, wp: w + 4, plane: n * (h + 5) * (w + 4) + 30 };
    // Output: no frame at all (NCHW).
    let lout = PaddedLayout { n, c: o, h, w, top: (0, 0), hp: h, wp: w, plane: n * h * w };
    let mut input = vec![f32::NAN; lin.len()];
    lin.fill(&mut input, x.view()).unwrap();
    let r = reference::conv2d(x.view(), wt.view(), b.view(), &window, false);
    for kernel in Microkernel::runnable() {
        for tile in WinogradTile::ALL {
            let f = WinogradFilters::new(wt.view(), tile, kernel).unwrap();
            let mut out = vec![f32::NAN; lout.len()];
            conv2d_winograd(&input, &lin, &f, b.view(), &window, false, &mut out, &lout).unwrap();
            assert_close(&format!("{kernel} {tile}"), lout.view(&out), r.view(), Approximation::Winograd);
        }
    }
}

#[test]
fn winograd_misuse_is_a_typed_error() {
    use lml_kernel::layers::{conv2d_winograd, PaddedLayout, WinogradFilters};
    let kernel = Microkernel::detect();
    let window = Window2d::VGG_CONV;
    let (w, b) = (random((4, 3, 3, 3), 1), random(4, 2));
    let f = WinogradFilters::new(w.view(), WinogradTile::F4, kernel).unwrap();
    let lin = PaddedLayout::conv_input(2, 3, 8, 8, &window);
    let lout = lin.conv_output(4, &window);
    let input = vec![0.0; lin.len()];
    let mut out = vec![0.0; lout.len()];
    let mut run = |lin: &PaddedLayout,
                   f: &WinogradFilters,
                   bias: ndarray::ArrayView1<'_, f32>,
                   win: &Window2d,
                   lout: &PaddedLayout| {
        out.resize(lout.len().max(out.len()), 0.0);
        conv2d_winograd(&input[..lin.len().min(input.len())], lin, f, bias, win, true, &mut out, lout)
            .unwrap_err()
            .to_string()
    };
    let strided = Window2d::square(3, 2, 1);
    assert!(run(&lin, &f, b.view(), &strided, &lout).contains("not 3×3 with stride 1"));
    let other = WinogradFilters::new(random((4, 2, 3, 3), 1).view(), WinogradTile::F2, kernel).unwrap();
    assert!(run(&lin, &other, b.view(), &window, &lout).contains("winograd filters and bias"));
    assert!(run(&lin, &f, random(3, 1).view(), &window, &lout).contains("winograd filters and bias"));
    assert!(run(&PaddedLayout { top: (0, 1), ..lin }, &f, b.view(), &window, &lout).contains("less frame"));
    assert!(run(&lin, &f, b.view(), &window, &PaddedLayout { c: 5, ..lout }).contains("is not [2, 4, 8, 8]"));
    let big = PaddedLayout::conv_input(3, 3, 8, 8, &window);
    assert!(run(&big, &f, b.view(), &window, &lout).contains("at least"));
    assert!(run(&PaddedLayout { n: 3, ..lin }, &f, b.view(), &window, &lout).contains("plane too short"));
    let err = WinogradFilters::new(random((4, 3, 5, 5), 1).view(), WinogradTile::F4, kernel).unwrap_err();
    assert!(matches!(err, KernelError::Shape { .. }), "{err}");
    for k in Microkernel::unavailable() {
        let err = WinogradFilters::new(w.view(), WinogradTile::F4, k).unwrap_err();
        assert!(err.to_string().contains("not supported by this CPU"), "{err}");
    }
    let x = random((1, 3, 8, 8), 3);
    let p = pack_filters(w.view(), kernel).unwrap();
    let err = conv2d_forward_algorithm(
        x.view(),
        w.view(),
        Some(&p),
        b.view(),
        &strided,
        false,
        ConvAlgorithm::Winograd(WinogradTile::F2),
    );
    assert!(err.unwrap_err().to_string().contains("Winograd needs a 3×3 window"));
}

/// The policies' names round-trip; forced Winograd runs where the window
/// allows it and the direct choice elsewhere.
#[test]
fn conv_policies() {
    for p in ConvPolicy::ALL {
        assert_eq!(p.name().parse::<ConvPolicy>().unwrap(), p);
        assert_eq!(format!(" {} ", p.name().to_uppercase()).parse::<ConvPolicy>().unwrap(), p);
    }
    let err = "winograd-f6".parse::<ConvPolicy>().unwrap_err().to_string();
    assert!(err.contains(CONV_ENV) && err.contains("auto, direct, winograd-f4, winograd-f2"), "{err}");
    let vgg = Window2d::VGG_CONV;
    let strided = Window2d::square(3, 2, 1);
    for hw in [2, 14, 224] {
        let direct = ConvAlgorithm::choose(true, (hw, hw), &vgg);
        assert_eq!(ConvPolicy::Direct.algorithm((64, 64), (hw, hw), &vgg), direct);
        for t in WinogradTile::ALL {
            assert_eq!(ConvPolicy::Winograd(t).algorithm((64, 64), (hw, hw), &vgg), ConvAlgorithm::Winograd(t));
            assert_eq!(ConvPolicy::Winograd(t).algorithm((64, 64), (hw, hw), &strided), ConvAlgorithm::PackedIm2col);
        }
    }
    assert_eq!(ConvPolicy::Auto.algorithm((64, 64), (224, 224), &strided), ConvAlgorithm::PackedIm2col);
    // The automatic choice: F(4×4) where its partial tiles waste little, F(2×2)
    // on 2×2 images, direct with 3 input channels or where no tile saves half.
    let auto = |c, o, hw| ConvPolicy::Auto.algorithm((c, o), (hw, hw), &vgg);
    let f4 = ConvAlgorithm::Winograd(WinogradTile::F4);
    let f2 = ConvAlgorithm::Winograd(WinogradTile::F2);
    for hw in [224, 112, 56, 28, 14, 8, 4] {
        assert_eq!(auto(64, 128, hw), f4, "{hw}");
        assert_eq!(auto(512, 512, hw), f4, "{hw}");
        assert_eq!(auto(3, 64, hw), ConvAlgorithm::choose(true, (hw, hw), &vgg), "{hw}");
    }
    assert_eq!(auto(512, 512, 2), f2);
    assert_eq!(auto(512, 512, 1), ConvAlgorithm::choose(true, (1, 1), &vgg));
    assert_eq!(auto(32, 512, 224), ConvAlgorithm::Implicit);
}
