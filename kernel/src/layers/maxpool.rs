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
    for oy in 0..oh {
        let mut drow = out.row_mut(oy);
        if fast {
            let (r0, r1) = (plane.row(2 * oy), plane.row(2 * oy + 1));
            if let (Some(r0), Some(r1), Some(dst)) = (r0.as_slice(), r1.as_slice(), drow.as_slice_mut()) {
                pool_2x2_row(r0, r1, dst);
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

/// One output row of the 2×2/2 pool from input rows `r0`, `r1`. Blocks of
/// 16 outputs in fixed-size arrays (vertical maxima, then pairs) so that the
/// compiler vectorises both steps; the tail is done one by one.
fn pool_2x2_row(r0: &[f32], r1: &[f32], dst: &mut [f32]) {
    const B: usize = 16;
    let ow = dst.len();
    let (r0, r1) = (&r0[..2 * ow], &r1[..2 * ow]);
    let mut blocks = dst.chunks_exact_mut(B);
    for ((d, a), b) in (&mut blocks).zip(r0.chunks_exact(2 * B)).zip(r1.chunks_exact(2 * B)) {
        let mut v = [0.0f32; 2 * B];
        for i in 0..2 * B {
            v[i] = nan_max(a[i], b[i]);
        }
        for i in 0..B {
            d[i] = nan_max(v[2 * i], v[2 * i + 1]);
        }
    }
    let done = ow - ow % B;
    for (ox, d) in blocks.into_remainder().iter_mut().enumerate().map(|(i, d)| (done + i, d)) {
        *d = nan_max(nan_max(r0[2 * ox], r0[2 * ox + 1]), nan_max(r1[2 * ox], r1[2 * ox + 1]));
    }
}

/// `max(a, b)` that propagates NaN (like the argmax variant: a NaN wins).
#[inline(always)]
fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || a >= b {
        if b.is_nan() {
            b
        } else {
            a
        }
    } else {
        b
    }
}

/// Whether `v` replaces the running maximum `best` (found at `best_i`,
/// `u32::MAX` before the first element): larger, or the first NaN.
#[inline(always)]
fn takes(v: f32, best: f32, best_i: u32) -> bool {
    v > best || best_i == u32::MAX || v.is_nan() && !best.is_nan()
}

/// The 2×2 stride-2 unpadded case over one contiguous `[H, W]` plane: the
/// same comparisons in the same row-major order as the general loop, on slices.
fn pool_2x2_plane(src: &[f32], w: usize, ow: usize, dst: &mut [f32], idx: &mut [u32]) {
    for (oy, (drow, irow)) in dst.chunks_exact_mut(ow).zip(idx.chunks_exact_mut(ow)).enumerate() {
        let (r0, r1) = (&src[2 * oy * w..][..2 * ow], &src[(2 * oy + 1) * w..][..2 * ow]);
        let base = (2 * oy * w) as u32;
        for ox in 0..ow {
            let cands = [r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]];
            let offs = [0, 1, w as u32, w as u32 + 1];
            let (mut best, mut best_i) = (cands[0], base + 2 * ox as u32);
            for t in 1..4 {
                if takes(cands[t], best, best_i) {
                    best = cands[t];
                    best_i = base + 2 * ox as u32 + offs[t];
                }
            }
            drow[ox] = best;
            irow[ox] = best_i;
        }
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
