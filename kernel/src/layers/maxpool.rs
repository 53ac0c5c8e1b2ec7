//! Max-pooling with argmax indices that the backward pass reuses.

use ndarray::{Array4, ArrayView4, Axis, Zip};
use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::geometry::Window2d;

/// Output of [`maxpool2d_forward`].
#[derive(Clone, Debug)]
pub struct MaxPoolOutput {
    /// Pooled activations `[N, C, OH, OW]`.
    pub output: Array4<f32>,
    /// For each output, the flat index `iy·W + ix` of the chosen input inside
    /// its `[H, W]` plane. Ties go to the first maximum in row-major order.
    pub argmax: Array4<u32>,
}

/// Max-pool forward over every `[H, W]` plane.
///
/// # Arguments
/// * `input` — `[N, C, H, W]`.
/// * `window` — kernel, stride and padding; padded positions are never chosen.
///
/// # Shapes
/// Returns `output` and `argmax` of `[N, C, OH, OW]`.
///
/// # Errors
/// [`KernelError::Invalid`] if the window is degenerate, does not fit, or has
/// padding of at least the kernel size (a window could then see only padding);
/// also if a plane has more than `u32::MAX` elements.
///
/// NaN inputs propagate: a NaN in a window is chosen.
pub fn maxpool2d_forward(input: ArrayView4<'_, f32>, window: &Window2d) -> Result<MaxPoolOutput> {
    let (n, c, h, w) = input.dim();
    check_pool(window, h, w)?;
    if h.checked_mul(w).is_none_or(|p| p > u32::MAX as usize) {
        return Err(KernelError::invalid("max-pool input", format!("plane {h}×{w} too large")));
    }
    let (oh, ow) = (window.out_h(h), window.out_w(w));
    let mut output = Array4::<f32>::zeros((n, c, oh, ow));
    let mut argmax = Array4::<u32>::zeros((n, c, oh, ow));
    let standard = input.as_standard_layout();
    let planes_in = standard.view().into_shape_with_order((n * c, h, w)).expect("standard layout");
    let mut out3 = output.view_mut().into_shape_with_order((n * c, oh, ow)).expect("fresh array");
    let mut arg3 = argmax.view_mut().into_shape_with_order((n * c, oh, ow)).expect("fresh array");
    let fast = *window == Window2d::VGG_POOL;
    Zip::from(out3.outer_iter_mut()).and(arg3.outer_iter_mut()).and(planes_in.outer_iter()).into_par_iter().for_each(
        |(mut out, mut arg, plane)| {
            if let (true, Some(src), Some(dst), Some(idx)) =
                (fast, plane.as_slice(), out.as_slice_mut(), arg.as_slice_mut())
            {
                pool_2x2_plane(src, w, ow, dst, idx);
                return;
            }
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut best = f32::NEG_INFINITY;
                    let mut best_i = u32::MAX;
                    for ky in 0..window.kernel.0 {
                        let Some(iy) = window.input_y(oy, ky, h) else {
                            continue;
                        };
                        for kx in 0..window.kernel.1 {
                            let Some(ix) = window.input_x(ox, kx, w) else {
                                continue;
                            };
                            let v = plane[[iy, ix]];
                            if takes(v, best, best_i) {
                                best = v;
                                best_i = (iy * w + ix) as u32;
                            }
                        }
                    }
                    out[[oy, ox]] = best;
                    arg[[oy, ox]] = best_i;
                }
            }
        },
    );
    Ok(MaxPoolOutput { output, argmax })
}

/// Checks a pooling window on an `h × w` input (padded positions are never
/// chosen, so a window must not be able to see only padding).
fn check_pool(window: &Window2d, h: usize, w: usize) -> Result<()> {
    window.validate(h, w)?;
    if window.pad.0 >= window.kernel.0 || window.pad.1 >= window.kernel.1 {
        return Err(KernelError::invalid(
            "max-pool window",
            format!("padding {:?} must be smaller than the kernel {:?}", window.pad, window.kernel),
        ));
    }
    Ok(())
}

/// Max-pool values only (no argmax), written into `out` (`[N, C, OH, OW]`,
/// every element overwritten): the frozen forward pass, which needs no
/// backward, uses this. Same values as [`maxpool2d_forward`].
///
/// Both `input` and `out` may have any strides (the VGG forward reads and
/// writes [`PaddedLayout`](crate::layers::PaddedLayout) views); rows with
/// unit stride take the vectorised 2×2/2 path.
///
/// # Errors
/// As [`maxpool2d_forward`], plus [`KernelError::Shape`] if `out` has the wrong shape.
pub fn maxpool2d_values_into(
    input: ArrayView4<'_, f32>,
    window: &Window2d,
    mut out: ndarray::ArrayViewMut4<'_, f32>,
) -> Result<()> {
    let (n, c, h, w) = input.dim();
    check_pool(window, h, w)?;
    let (oh, ow) = (window.out_h(h), window.out_w(w));
    if out.shape() != [n, c, oh, ow] {
        return Err(KernelError::shape("max-pool output", format!("[{n}, {c}, {oh}, {ow}]"), out.shape()));
    }
    let fast = *window == Window2d::VGG_POOL;
    // One task per channel, over all images.
    let per_channel = Zip::from(out.axis_iter_mut(Axis(1))).and(input.axis_iter(Axis(1)));
    per_channel.into_par_iter().for_each(|(mut outs, planes)| {
        for (mut out, plane) in outs.outer_iter_mut().zip(planes.outer_iter()) {
            pool_plane(out.view_mut(), plane, window, fast);
        }
    });
    Ok(())
}

/// Max-pools one `[H, W]` plane into `[OH, OW]`, any strides.
fn pool_plane(
    mut out: ndarray::ArrayViewMut2<'_, f32>,
    plane: ndarray::ArrayView2<'_, f32>,
    window: &Window2d,
    fast: bool,
) {
    let (h, w) = plane.dim();
    let oh = out.nrows();
    let isa = pool_isa();
    for oy in 0..oh {
        let mut drow = out.row_mut(oy);
        if fast {
            let (r0, r1) = (plane.row(2 * oy), plane.row(2 * oy + 1));
            if let (Some(r0), Some(r1), Some(dst)) = (r0.as_slice(), r1.as_slice(), drow.as_slice_mut()) {
                isa.row(r0, r1, dst);
                continue;
            }
        }
        for (ox, d) in drow.iter_mut().enumerate() {
            let mut best = f32::NEG_INFINITY;
            for ky in 0..window.kernel.0 {
                let Some(iy) = window.input_y(oy, ky, h) else { continue };
                for kx in 0..window.kernel.1 {
                    let Some(ix) = window.input_x(ox, kx, w) else { continue };
                    best = nan_max(best, plane[[iy, ix]]);
                }
            }
            *d = best;
        }
    }
}

/// Which loop runs the 2×2 stride-2 pool: the widest vector unit this CPU
/// has (checked at run time; the crate itself is built for baseline x86-64),
/// or the scalar loop, which is also the reference the vector loops are
/// tested against bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PoolIsa {
    /// x86-64 AVX-512F: 16 outputs a step, masked tails.
    Avx512,
    /// x86-64 AVX2: 8 outputs a step, the last block flush with the row end; short rows in 4s.
    Avx2,
    /// Plain Rust, any CPU.
    Scalar,
}

impl PoolIsa {
    /// Every loop, fastest first.
    pub(crate) const ALL: [PoolIsa; 3] = [PoolIsa::Avx512, PoolIsa::Avx2, PoolIsa::Scalar];

    /// Whether this CPU runs the loop.
    pub(crate) fn available(self) -> bool {
        match self {
            PoolIsa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            PoolIsa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            PoolIsa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[allow(unreachable_patterns)] // which arms remain depends on the target
            _ => false,
        }
    }

    /// The fastest loop this CPU runs.
    pub(crate) fn detect() -> Self {
        Self::ALL.into_iter().find(|i| i.available()).unwrap_or(PoolIsa::Scalar)
    }

    /// One output row: `dst[x] = max(r0[2x], r0[2x+1], r1[2x], r1[2x+1])`,
    /// the leftmost maximum in that order (see [`nan_max`]).
    ///
    /// # Panics
    /// If a row holds fewer than `2·dst.len()` floats, or `self` is not available.
    pub(crate) fn row(self, r0: &[f32], r1: &[f32], dst: &mut [f32]) {
        assert!(self.available(), "{self:?} pooling is not available on this CPU");
        let done = match self {
            PoolIsa::Scalar => 0,
            // SAFETY (both arms): `available` checked the CPU features.
            #[cfg(target_arch = "x86_64")]
            PoolIsa::Avx512 => unsafe { super::maxpool_x86::row_avx512(r0, r1, dst) },
            #[cfg(target_arch = "x86_64")]
            PoolIsa::Avx2 => unsafe { super::maxpool_x86::row_avx2(r0, r1, dst) },
            #[allow(unreachable_patterns)]
            other => unreachable!("{other:?} is not available on this architecture"),
        };
        if done < dst.len() {
            pool_2x2_row_scalar(&r0[2 * done..], &r1[2 * done..], &mut dst[done..]);
        }
    }

    /// [`row`](Self::row) with argmax: `idx[x]` is `base + 2x` plus the
    /// chosen input's offset `0, 1, w` or `w + 1` (`base` = the flat index of
    /// `r0[0]` in a plane of width `w`).
    ///
    /// # Panics
    /// As [`row`](Self::row), or if `idx` is shorter than `dst`.
    pub(crate) fn row_argmax(self, r0: &[f32], r1: &[f32], base: u32, w: u32, dst: &mut [f32], idx: &mut [u32]) {
        assert!(self.available(), "{self:?} pooling is not available on this CPU");
        let done = match self {
            PoolIsa::Scalar => 0,
            // SAFETY (both arms): `available` checked the CPU features.
            #[cfg(target_arch = "x86_64")]
            PoolIsa::Avx512 => unsafe { super::maxpool_x86::row_argmax_avx512(r0, r1, base, w, dst, idx) },
            #[cfg(target_arch = "x86_64")]
            PoolIsa::Avx2 => unsafe { super::maxpool_x86::row_argmax_avx2(r0, r1, base, w, dst, idx) },
            #[allow(unreachable_patterns)]
            other => unreachable!("{other:?} is not available on this architecture"),
        };
        let base = base.wrapping_add(2 * done as u32);
        pool_2x2_row_argmax_scalar(&r0[2 * done..], &r1[2 * done..], base, w, &mut dst[done..], &mut idx[done..]);
    }
}

/// The loop [`PoolIsa::detect`] picks, detected once.
fn pool_isa() -> PoolIsa {
    static ISA: std::sync::OnceLock<PoolIsa> = std::sync::OnceLock::new();
    *ISA.get_or_init(PoolIsa::detect)
}

/// Outputs in one run of the values-only row loops: each reads a run of
/// the top row (512 bytes), keeps its pair maxima, then reads the bottom
/// row's run. The x86 loops keep the maxima in registers (see
/// `maxpool_x86`); quiet criterion (`--bench pool`), Zen 4, batch 8, 1
/// thread, pool1: 12.1–12.5 ms with both rows read a line at a time in
/// turn, 6.0–6.2 ms in runs of 64. (A throwaway harness, not kept: 4.5–5.0
/// ms for the bare loop at every output alignment; runs of 32 as slow as lines.)
pub(super) const CHUNK: usize = 64;

/// [`PoolIsa::row`]'s portable loop (arm64's): the two-pass form of the
/// vector loops, written so the compiler vectorises it (NEON's `ld2`
/// deinterleaves the pairs); bit for bit [`pool_2x2_row_reference`].
fn pool_2x2_row_scalar(r0: &[f32], r1: &[f32], dst: &mut [f32]) {
    let mut tops = [0.0f32; CHUNK];
    for (run, d) in dst.chunks_mut(CHUNK).enumerate() {
        let n = d.len();
        let at = 2 * CHUNK * run;
        let (a, b, tops) = (&r0[at..at + 2 * n], &r1[at..at + 2 * n], &mut tops[..n]);
        for (t, a) in tops.iter_mut().zip(a.chunks_exact(2)) {
            *t = nan_max(a[0], a[1]);
        }
        for ((d, &t), b) in d.iter_mut().zip(tops.iter()).zip(b.chunks_exact(2)) {
            *d = nan_max(t, nan_max(b[0], b[1]));
        }
    }
}

/// The reference of [`PoolIsa::row`], one output at a time in row-major order.
#[cfg(test)]
fn pool_2x2_row_reference(r0: &[f32], r1: &[f32], dst: &mut [f32]) {
    for (ox, d) in dst.iter_mut().enumerate() {
        *d = nan_max(nan_max(r0[2 * ox], r0[2 * ox + 1]), nan_max(r1[2 * ox], r1[2 * ox + 1]));
    }
}

/// The scalar reference of [`PoolIsa::row_argmax`]: the same comparisons in
/// the same row-major order as the general loop of [`maxpool2d_forward`].
fn pool_2x2_row_argmax_scalar(r0: &[f32], r1: &[f32], base: u32, w: u32, dst: &mut [f32], idx: &mut [u32]) {
    for (ox, (d, i)) in dst.iter_mut().zip(idx.iter_mut()).enumerate() {
        let at = base.wrapping_add(2 * ox as u32);
        let cands = [r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]];
        let offs = [0, 1, w, w + 1];
        let (mut best, mut best_i) = (cands[0], at);
        for t in 1..4 {
            if takes(cands[t], best, best_i) {
                best = cands[t];
                best_i = at + offs[t];
            }
        }
        *d = best;
        *i = best_i;
    }
}

/// `max(a, b)` that propagates NaN, the leftmost maximum: `b` only if it is
/// larger than `a` or the first NaN (as [`takes`] for the argmax variant, so
/// both variants give the same bits, NaN payloads and the sign of zero included).
#[inline(always)]
fn nan_max(a: f32, b: f32) -> f32 {
    // `&` and `|`, not `&&` and `||`: no branches, so loops of it vectorise.
    if !a.is_nan() & ((b > a) | b.is_nan()) {
        b
    } else {
        a
    }
}

/// Whether `v` replaces the running maximum `best` (found at `best_i`,
/// `u32::MAX` before the first element): larger, or the first NaN.
#[inline(always)]
fn takes(v: f32, best: f32, best_i: u32) -> bool {
    v > best || best_i == u32::MAX || v.is_nan() && !best.is_nan()
}

/// The 2×2 stride-2 unpadded case over one contiguous `[H, W]` plane (`W`
/// at most `u32::MAX`, checked by the caller), row by row.
fn pool_2x2_plane(src: &[f32], w: usize, ow: usize, dst: &mut [f32], idx: &mut [u32]) {
    let isa = pool_isa();
    for (oy, (drow, irow)) in dst.chunks_exact_mut(ow).zip(idx.chunks_exact_mut(ow)).enumerate() {
        let (r0, r1) = (&src[2 * oy * w..][..2 * ow], &src[(2 * oy + 1) * w..][..2 * ow]);
        isa.row_argmax(r0, r1, (2 * oy * w) as u32, w as u32, drow, irow);
    }
}

/// Max-pool backward: routes each output gradient to the input it came from.
///
/// ```text
/// ∂L/∂x[n, c, i] = Σ_{o : argmax[n, c, o] = i} gy[n, c, o]
/// ```
///
/// # Arguments
/// * `grad_out` — `∂L/∂y`, `[N, C, OH, OW]`.
/// * `argmax` — from the forward pass, same shape.
/// * `input_hw` — `(H, W)` of the forward input.
///
/// # Errors
/// [`KernelError::Shape`] if `grad_out` and `argmax` differ in shape, or an
/// index lies outside `H·W`.
pub fn maxpool2d_backward(
    grad_out: ArrayView4<'_, f32>,
    argmax: ArrayView4<'_, u32>,
    input_hw: (usize, usize),
) -> Result<Array4<f32>> {
    if grad_out.shape() != argmax.shape() {
        return Err(KernelError::shape(
            "max-pool grad_out",
            format!("{:?} (the argmax shape)", argmax.shape()),
            grad_out.shape(),
        ));
    }
    let (n, c, _, _) = grad_out.dim();
    let (h, w) = input_hw;
    if let Some(&bad) = argmax.iter().find(|&&i| i as usize >= h * w) {
        return Err(KernelError::invalid("max-pool argmax", format!("index {bad} outside a {h}×{w} plane")));
    }
    let mut grad_in = Array4::<f32>::zeros((n, c, h, w));
    let mut gi = grad_in.view_mut().into_shape_with_order((n * c, h * w)).expect("fresh array");
    let (oh, ow) = (grad_out.shape()[2], grad_out.shape()[3]);
    gi.outer_iter_mut().into_par_iter().enumerate().for_each(|(plane, mut g)| {
        let (img, ch) = (plane / c, plane % c);
        for oy in 0..oh {
            for ox in 0..ow {
                g[argmax[[img, ch, oy, ox]] as usize] += grad_out[[img, ch, oy, ox]];
            }
        }
    });
    Ok(grad_in)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Rows drawn from values that stress the selects: ties, both zeros,
    /// infinities, and NaNs with distinct payloads and signs.
    fn nasty_row(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
        let pool = [
            -1.0,
            0.0,
            -0.0,
            1.0,
            2.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(0x7fc0_0001),
            f32::from_bits(0xffc0_0002),
            f32::from_bits(0x7f80_0003), // signalling
        ];
        (0..len)
            .map(
                |_| {
                    if rng.random_bool(0.5) {
                        pool[rng.random_range(0..pool.len())]
                    } else {
                        rng.random_range(-4.0..4.0)
                    }
                },
            )
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Every loop this CPU runs gives the reference's bits, values and
    /// argmax, for widths 0..70 (whole blocks and every tail) and across
    /// run boundaries, rows one float longer than needed (odd input widths),
    /// unaligned starts, and outputs at every offset from a 64-byte boundary.
    #[test]
    fn vector_loops_match_the_scalar_reference_bit_for_bit() {
        let runs: Vec<PoolIsa> = PoolIsa::ALL.into_iter().filter(|i| i.available()).collect();
        let skipped: Vec<PoolIsa> = PoolIsa::ALL.into_iter().filter(|i| !i.available()).collect();
        println!("pooling loops checked: {runs:?}; not on this CPU: {skipped:?}");
        assert!(runs.contains(&PoolIsa::Scalar));
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let sentinel = f32::from_bits(0x7fc0_dead);
        for ow in (0..70).chain([CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 17]) {
            for (extra, start) in [(0, 0), (1, 0), (1, 1), (3, 3)] {
                let w = 2 * ow + extra;
                let (r0, r1) = (nasty_row(&mut rng, w), nasty_row(&mut rng, w));
                let (r0, r1) = (&r0[start.min(extra)..], &r1[start.min(extra)..]);
                let base = 1000 * ow as u32;
                let mut want = vec![f32::NAN; ow];
                let (mut want_v, mut want_i) = (vec![f32::NAN; ow], vec![u32::MAX; ow]);
                pool_2x2_row_reference(r0, r1, &mut want);
                pool_2x2_row_argmax_scalar(r0, r1, base, w as u32, &mut want_v, &mut want_i);
                // The values-only and argmax references agree, bit for bit.
                assert_eq!(bits(&want), bits(&want_v), "ow {ow}");
                for &isa in &runs {
                    for off in 0..16 {
                        let mut got = vec![sentinel; off + ow + 1];
                        isa.row(r0, r1, &mut got[off..off + ow]);
                        let at = format!("{isa:?} values, ow {ow}, start {start}, offset {off}");
                        assert_eq!(bits(&got[off..off + ow]), bits(&want), "{at}");
                        assert!(
                            got[..off].iter().chain(&got[off + ow..]).all(|v| v.to_bits() == 0x7fc0_dead),
                            "{at}: wrote outside the row"
                        );
                    }
                    let (mut v, mut i) = (vec![sentinel; ow + 1], vec![7u32; ow + 1]);
                    isa.row_argmax(r0, r1, base, w as u32, &mut v[..ow], &mut i[..ow]);
                    assert_eq!(bits(&v[..ow]), bits(&want), "{isa:?} argmax values, ow {ow}");
                    assert_eq!(&i[..ow], &want_i[..], "{isa:?} argmax, ow {ow}");
                    assert_eq!((v[ow].to_bits(), i[ow]), (0x7fc0_dead, 7), "{isa:?} wrote past the row");
                }
            }
        }
    }

    /// Hand-picked windows: the first NaN wins, NaN beats infinity, and of
    /// `-0.0` and `+0.0` the first in row-major order wins.
    #[test]
    fn ties_and_nans_pick_the_first_in_row_major_order() {
        let (n1, n2) = (f32::from_bits(0x7fc0_0001), f32::from_bits(0xffc0_0002));
        // (r0 pair, r1 pair, value, offset)
        let cases: [([f32; 2], [f32; 2], f32, u32); 6] = [
            ([-0.0, 0.0], [0.0, -0.0], -0.0, 0),
            ([-1.0, 0.0], [-0.0, 0.0], 0.0, 1),
            ([-1.0, -2.0], [-0.0, 0.0], -0.0, 10),
            ([1.0, f32::INFINITY], [n1, n2], n1, 10),
            ([1.0, n2], [n1, 3.0], n2, 1),
            ([1.0, 2.0], [0.5, 3.0], 3.0, 11),
        ];
        for isa in PoolIsa::ALL.into_iter().filter(|i| i.available()) {
            // 17 copies of each window: whole vector blocks and a tail.
            for (a, b, want, off) in cases {
                let r0: Vec<f32> = a.iter().copied().cycle().take(34).collect();
                let r1: Vec<f32> = b.iter().copied().cycle().take(34).collect();
                let (mut v, mut i) = ([0.0f32; 17], [0u32; 17]);
                isa.row_argmax(&r0, &r1, 0, 10, &mut v, &mut i);
                let mut only = [0.0f32; 17];
                isa.row(&r0, &r1, &mut only);
                for x in 0..17 {
                    assert_eq!(v[x].to_bits(), want.to_bits(), "{isa:?} {a:?} {b:?}");
                    assert_eq!(only[x].to_bits(), want.to_bits(), "{isa:?} {a:?} {b:?}");
                    assert_eq!(i[x], 2 * x as u32 + off, "{isa:?} {a:?} {b:?}");
                }
            }
        }
    }
}
