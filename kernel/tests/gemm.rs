//! The packed GEMM's one test suite, run over every microkernel this CPU can
//! execute (the generic one always; the output names each kernel and its
//! case count, and the kernels this CPU lacks).
//!
//! Integer-valued operands make every product and partial sum exact in f32,
//! so every kernel must match the f64 reference bit for bit whatever its
//! rounding (fused or not); outputs start as NaN to catch unwritten elements.

mod common;

use common::each_microkernel;
use lml_kernel::gemm::{
    gemm_gather, gemm_gather_fused, gemm_packed, gemm_packed_fused, Epilogue, Microkernel, PackedA, PanelRow, RowSink,
    Scratch, Segment, KC,
};
use ndarray::{s, Array2};

fn a_matrix(m: usize, k: usize) -> Array2<f32> {
    Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0)
}

fn b_matrix(k: usize, n: usize) -> Array2<f32> {
    Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j * 2) % 7) as f32 - 3.0)
}

/// `C = A·B` through both entry points — B packed row by row, and B read in
/// place at odd offsets — against the f64 reference, bit for bit.
fn plain_case(kernel: Microkernel, m: usize, k: usize, n: usize) {
    let (a, b) = (a_matrix(m, k), b_matrix(k, n));
    let packed = PackedA::pack(a.view(), kernel);
    let mut c = vec![f32::NAN; m * n];
    gemm_packed(&packed, n, |kk, row| row.copy(0, b.row(kk).as_slice().unwrap()), &mut c, &mut Scratch::default());
    // The same B read in place: row kk lives at offset kk·(n + 40) + 3; the
    // floats between rows are NaN, so a read of the wrong column shows.
    let stride = n + 40;
    let mut flat = vec![f32::NAN; k * stride + 64];
    for kk in 0..k {
        flat[kk * stride + 3..kk * stride + 3 + n].copy_from_slice(b.row(kk).as_slice().unwrap());
    }
    let offsets: Vec<usize> = (0..k).map(|kk| kk * stride + 3).collect();
    let mut g = vec![f32::NAN; m * n];
    gemm_gather(&packed, n, &flat, &offsets, &mut g);
    for i in 0..m {
        for j in 0..n {
            let r: f64 = (0..k).map(|l| a[[i, l]] as f64 * b[[l, j]] as f64).sum();
            assert_eq!(c[i * n + j] as f64, r, "{kernel} packed m{m} k{k} n{n} ({i},{j})");
            assert_eq!(g[i * n + j] as f64, r, "{kernel} gather m{m} k{k} n{n} ({i},{j})");
        }
    }
}

/// Every size 0..20 in m and n for short depths (every tile edge of every
/// kernel: MR ≤ 8, NR ≤ 32 is covered by the second sweep).
#[test]
fn exact_for_all_small_sizes() {
    each_microkernel("exact_for_all_small_sizes", |kernel| {
        let mut cases = 0;
        for m in 0..20 {
            for n in 0..20 {
                for k in [0, 1, 2, 7] {
                    plain_case(kernel, m, k, n);
                    cases += 1;
                }
            }
        }
        cases
    });
}

/// Sizes around each kernel's own tile and the k-block edges.
#[test]
fn exact_for_sizes_around_tile_and_block_edges() {
    each_microkernel("exact_for_sizes_around_tile_and_block_edges", |kernel| {
        let (mr, nr) = (kernel.mr(), kernel.nr());
        let mut cases = 0;
        for m in [1, mr - 1, mr, mr + 1, 2 * mr + 3] {
            for k in [KC - 1, KC, KC + 1, 2 * KC + 7] {
                for n in [1, nr - 1, nr, nr + 1, 3 * nr + 5] {
                    plain_case(kernel, m, k, n);
                    cases += 1;
                }
            }
        }
        cases
    });
}

/// The fused epilogue: every column lands in its segment (cut at odd
/// places, so tiles straddle segments; rows strided past the columns) as
/// `relu(A·B + bias)`, zero where `keep` is false, bit for bit the f64
/// reference; nothing outside the segments is written.
#[test]
fn fused_epilogue_places_every_column() {
    each_microkernel("fused_epilogue_places_every_column", |kernel| {
        let (mr, nr) = (kernel.mr(), kernel.nr());
        let mut cases = 0;
        for m in [1, mr - 1, mr, 2 * mr + 3] {
            for k in [0, 5, KC, KC + 9] {
                for n in [1, nr, 3 * nr + 5] {
                    for cuts in [vec![], vec![7], vec![nr, nr + 1, 2 * nr + 3]] {
                        fused_case(kernel, m, k, n, &cuts);
                        cases += 1;
                    }
                }
            }
        }
        cases
    });
}

fn fused_case(kernel: Microkernel, m: usize, k: usize, n: usize, cuts: &[usize]) {
    let (a, b) = (a_matrix(m, k), b_matrix(k, n));
    let bias: Vec<f32> = (0..m).map(|i| (i % 5) as f32 - 2.0).collect();
    let keep = |j: usize| j % 5 != 3;
    let keep_bits = |j0: usize, cols: usize| (0..cols).filter(|&t| keep(j0 + t)).fold(0, |b, t| b | 1 << t);
    let packed = PackedA::pack(a.view(), kernel);
    // Segment bounds: 0, the cuts inside n, n.
    let mut bounds: Vec<usize> = std::iter::once(0).chain(cuts.iter().copied().filter(|&c| c < n)).collect();
    bounds.push(n);
    // Each segment's rows are 9 floats longer than its columns (never written).
    let mut stores: Vec<Array2<f32>> =
        bounds.windows(2).map(|w| Array2::from_elem((m, w[1] - w[0] + 9), f32::NAN)).collect();
    let expect = |i: usize, j: usize| -> f32 {
        let r: f64 = (0..k).map(|l| a[[i, l]] as f64 * b[[l, j]] as f64).sum::<f64>() + bias[i] as f64;
        if keep(j) {
            r.max(0.0) as f32
        } else {
            0.0
        }
    };
    for gather_b in [false, true] {
        for s in stores.iter_mut() {
            s.fill(f32::NAN);
        }
        let mut segments: Vec<Segment<'_>> = stores
            .iter_mut()
            .zip(bounds.windows(2))
            .map(|(s, w)| Segment { col0: w[0], view: s.slice_mut(s![.., ..w[1] - w[0]]) })
            .collect();
        let mut e = Epilogue { bias: &bias, relu: true, segments: &mut segments, keep: Some(&keep_bits) };
        let mut partial = Vec::new();
        if gather_b {
            // Panels start 5 floats apart beyond their width (the gaps are never read).
            let nr = kernel.nr();
            let panels: Vec<usize> = (0..n.div_ceil(nr)).map(|jr| jr * (nr + 5)).collect();
            let stride = panels.len() * (nr + 5) + 64;
            let mut flat = vec![f32::NAN; k * stride + 64];
            for kk in 0..k {
                for j in 0..n {
                    flat[kk * stride + panels[j / nr] + j % nr] = b[[kk, j]];
                }
                // The columns past n in the last panel are read, their results discarded.
                for j in n..n.next_multiple_of(nr) {
                    flat[kk * stride + panels[j / nr] + j % nr] = 0.0;
                }
            }
            let offsets: Vec<usize> = (0..k).map(|kk| kk * stride).collect();
            gemm_gather_fused(&packed, n, &flat, &panels, &offsets, &mut e, &mut partial);
        } else {
            let fill = |kk: usize, row: &mut PanelRow<'_>| row.copy(0, b.row(kk).as_slice().unwrap());
            gemm_packed_fused(&packed, n, fill, &mut e, &mut Scratch::default());
        }
        for (s, w) in stores.iter().zip(bounds.windows(2)) {
            for i in 0..m {
                for t in 0..s.ncols() {
                    let got = s[[i, t]];
                    if t < w[1] - w[0] {
                        let want = expect(i, w[0] + t);
                        assert_eq!(
                            got,
                            want,
                            "{kernel} m{m} k{k} n{n} cuts {cuts:?} gather {gather_b} ({i},{})",
                            w[0] + t
                        );
                    } else {
                        assert!(got.is_nan(), "{kernel} m{m} k{k} n{n}: wrote outside a segment");
                    }
                }
            }
        }
    }
}

/// ReLU keeps NaN (so a corrupt input shows in the output instead of
/// turning into zeros), in every tile position, whole and edge tiles alike.
#[test]
fn relu_keeps_nan() {
    each_microkernel("relu_keeps_nan", |kernel| {
        let (mr, nr) = (kernel.mr(), kernel.nr());
        let (m, k, n) = (mr + 1, 3, nr + 1);
        let a = Array2::<f32>::from_elem((m, k), -1.0);
        let mut b = Array2::<f32>::from_elem((k, n), 1.0);
        let nan_cols = [0, nr - 1, nr];
        for &j in &nan_cols {
            b[[1, j]] = f32::NAN;
        }
        let packed = PackedA::pack(a.view(), kernel);
        let bias = vec![0.0f32; m];
        let mut out = Array2::from_elem((m, n), 7.0f32);
        let mut segments = [Segment { col0: 0, view: out.view_mut() }];
        let mut e = Epilogue { bias: &bias, relu: true, segments: &mut segments, keep: None };
        let fill = |kk: usize, row: &mut PanelRow<'_>| row.copy(0, b.row(kk).as_slice().unwrap());
        gemm_packed_fused(&packed, n, fill, &mut e, &mut Scratch::default());
        for i in 0..m {
            for j in 0..n {
                let v = out[[i, j]];
                if nan_cols.contains(&j) {
                    assert!(v.is_nan(), "{kernel}: ({i},{j}) is {v}, expected NaN");
                } else {
                    assert_eq!(v, 0.0, "{kernel}: ({i},{j}) relu(-3)");
                }
            }
        }
        m * n
    });
}

/// Packed B rows written piece by piece, with runs that cross panel edges
/// (NEON's 12-column panels are not a power of two).
#[test]
fn panel_rows_split_runs_at_panel_edges() {
    each_microkernel("panel_rows_split_runs_at_panel_edges", |kernel| {
        let nr = kernel.nr();
        let (m, k, n) = (3, 2, 3 * nr + 5);
        let a = Array2::<f32>::from_elem((m, k), 1.0);
        let packed = PackedA::pack(a.view(), kernel);
        let mut c = vec![f32::NAN; m * n];
        // Row 0: column j holds j, written as a fill, a copy across two
        // panel edges, and single sets; row 1: zeros.
        gemm_packed(
            &packed,
            n,
            |kk, row| {
                if kk == 0 {
                    let values: Vec<f32> = (0..n).map(|j| j as f32).collect();
                    row.fill(0, 1, 0.0);
                    row.copy(1, &values[1..2 * nr + 3]);
                    for (j, &v) in values.iter().enumerate().skip(2 * nr + 3) {
                        row.set(j, v);
                    }
                } else {
                    row.fill(0, n, 0.0);
                }
            },
            &mut c,
            &mut Scratch::default(),
        );
        for i in 0..m {
            for j in 0..n {
                assert_eq!(c[i * n + j], j as f32, "{kernel} ({i},{j})");
            }
        }
        1
    });
}
