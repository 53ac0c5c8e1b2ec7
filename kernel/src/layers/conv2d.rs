//! 2-D convolution by im2col + GEMM, with fused bias and ReLU.
//!
//! Layout is NCHW for activations and OIHW for weights (torchvision's). For an
//! image `n` and a tile of output positions `p` (flattened `oy·OW + ox`), the
//! tile's im2col matrix `col[K, T]` with `K = C·KH·KW` (row order `c, ky, kx`,
//! the same as the flattened weight) is gathered into a per-task buffer, and
//! one GEMM computes
//!
//! ```text
//! y[n, :, tile] = W[O, K] · col[K, T]      then  + b[o], ReLU (if fused)
//! ```
//!
//! Tiles keep the im2col buffer small (a few MB) instead of materialising a
//! whole image's `K × OH·OW` matrix (115 MB for VGG's conv1_2 at 224×224).
//! Tasks are (image, tile) pairs spread over the current rayon pool; each
//! writes a disjoint column block of the output. Each output element is the
//! same sum in the same order whatever the tiling, so results do not depend
//! on the thread count.

use ndarray::{s, Array1, Array2, Array4, ArrayView1, ArrayView2, ArrayView4, ArrayViewMut2, Axis};
use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::gemm::sgemm;
use crate::geometry::Window2d;

/// Target number of output columns per task; smaller tiles are used when the
/// layer would otherwise give the pool fewer than four tasks per thread.
const TILE_COLUMNS: usize = 256;
const MIN_TILE_COLUMNS: usize = 32;

/// Checks `input [N, C, H, W]` against `weight [O, C, KH, KW]` and `bias [O]`;
/// returns `(out_h, out_w)`.
pub(crate) fn check_conv(
    input: &[usize],
    weight: &[usize],
    bias: usize,
    window: &Window2d,
) -> Result<(usize, usize)> {
    let (c, h, w) = (input[1], input[2], input[3]);
    if weight[1] != c || (weight[2], weight[3]) != window.kernel {
        return Err(KernelError::shape(
            "conv2d weight",
            format!("[O, {c}, {}, {}]", window.kernel.0, window.kernel.1),
            weight,
        ));
    }
    if bias != weight[0] {
        return Err(KernelError::shape(
            "conv2d bias",
            format!("[{}]", weight[0]),
            &[bias],
        ));
    }
    window.validate(h, w)?;
    Ok((window.out_h(h), window.out_w(w)))
}

/// Chooses the tile width so that the pool gets enough tasks to balance.
fn tile_columns(images: usize, positions: usize) -> usize {
    let want_tasks = 4 * rayon::current_num_threads();
    let per_image = want_tasks.div_ceil(images.max(1));
    positions
        .div_ceil(per_image)
        .clamp(MIN_TILE_COLUMNS, TILE_COLUMNS)
        .min(positions.max(1))
}

/// Fills `col[K, T]` with the input patches of output positions `p0 .. p0 + T`.
///
/// `image` is one image `[C, H, W]`; rows of `col` are ordered `(c, ky, kx)`.
pub(crate) fn im2col_tile(
    image: ArrayView4<'_, f32>,
    window: &Window2d,
    out_w: usize,
    p0: usize,
    mut col: ArrayViewMut2<'_, f32>,
) {
    let image = image.index_axis(Axis(0), 0);
    let (c_in, h, w) = image.dim();
    let (kh, kw) = window.kernel;
    let t = col.ncols();
    for c in 0..c_in {
        let plane = image.index_axis(Axis(0), c);
        for ky in 0..kh {
            for kx in 0..kw {
                let mut row = col.row_mut((c * kh + ky) * kw + kx);
                let (x_lo, x_hi) = window.valid_out_x(kx, w, out_w);
                // Walk the tile one output row segment at a time.
                let mut j = 0;
                while j < t {
                    let p = p0 + j;
                    let (oy, ox0) = (p / out_w, p % out_w);
                    let len = (out_w - ox0).min(t - j);
                    let seg = row.slice_mut(s![j..j + len]);
                    fill_segment(seg, plane, window, oy, ox0, ky, kx, h, (x_lo, x_hi));
                    j += len;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn fill_segment(
    mut seg: ndarray::ArrayViewMut1<'_, f32>,
    plane: ArrayView2<'_, f32>,
    window: &Window2d,
    oy: usize,
    ox0: usize,
    ky: usize,
    kx: usize,
    h: usize,
    (x_lo, x_hi): (usize, usize),
) {
    let Some(iy) = window.input_y(oy, ky, h) else {
        seg.fill(0.0);
        return;
    };
    let src = plane.row(iy);
    let sx = window.stride.1;
    for (j, v) in seg.iter_mut().enumerate() {
        let ox = ox0 + j;
        *v = if ox >= x_lo && ox < x_hi {
            src[ox * sx + kx - window.pad.1]
        } else {
            0.0
        };
    }
}

/// Convolution forward: `y = conv(x, W) + b`, then ReLU if `relu`.
///
/// # Arguments
/// * `input` — activations `[N, C, H, W]`, any strides.
/// * `weight` — filters `[O, C, KH, KW]`; must be in standard (C) layout.
/// * `bias` — `[O]`.
/// * `window` — kernel size (must equal `(KH, KW)`), stride and zero padding.
/// * `relu` — apply `max(0, ·)` to the result (fused into the same pass).
///
/// # Shapes
/// Returns `[N, O, OH, OW]` with `OH = window.out_h(H)`, `OW = window.out_w(W)`.
///
/// # Errors
/// [`KernelError::Shape`] if the weight's channels or kernel size disagree with
/// the input and window, or the bias length with `O`; [`KernelError::Invalid`]
/// if the window does not fit the input or is degenerate.
pub fn conv2d_forward(
    input: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    bias: ArrayView1<'_, f32>,
    window: &Window2d,
    relu: bool,
) -> Result<Array4<f32>> {
    let (oh, ow) = check_conv(input.shape(), weight.shape(), bias.len(), window)?;
    let (n, o) = (input.shape()[0], weight.shape()[0]);
    let k = weight.len() / o.max(1);
    let w2 = weight.to_shape((o, k)).map_err(|_| {
        KernelError::shape(
            "conv2d weight layout",
            "standard (C-contiguous) OIHW",
            weight.shape(),
        )
    })?;
    let positions = oh * ow;
    let mut out = Array4::<f32>::zeros((n, o, oh, ow));
    if n == 0 || o == 0 || positions == 0 {
        return Ok(out);
    }
    let tile = tile_columns(n, positions);

    let mut tasks = Vec::new();
    for (img, y) in out.outer_iter_mut().enumerate() {
        let mut rest = y
            .into_shape_with_order((o, positions))
            .expect("fresh array is contiguous");
        let mut p0 = 0;
        while p0 < positions {
            let width = tile.min(positions - p0);
            let (head, tail) = rest.split_at(Axis(1), width);
            tasks.push((img, p0, head));
            rest = tail;
            p0 += width;
        }
    }
    tasks
        .into_par_iter()
        .for_each_init(Vec::new, |buf, (img, p0, mut y_tile)| {
            let t = y_tile.ncols();
            buf.resize(k * t, 0.0);
            let mut col =
                ArrayViewMut2::from_shape((k, t), &mut buf[..]).expect("buffer sized k×t");
            im2col_tile(
                input.slice(s![img..img + 1, .., .., ..]),
                window,
                ow,
                p0,
                col.view_mut(),
            );
            sgemm(1.0, w2.view(), col.view(), 0.0, y_tile.view_mut());
            for (mut row, &b) in y_tile.outer_iter_mut().zip(bias.iter()) {
                if relu {
                    row.mapv_inplace(|v| (v + b).max(0.0));
                } else {
                    row.mapv_inplace(|v| v + b);
                }
            }
        });
    Ok(out)
}

/// Gradients of a convolution.
#[derive(Clone, Debug)]
pub struct Conv2dGrads {
    /// `∂L/∂x`, `[N, C, H, W]`.
    pub input: Array4<f32>,
    /// `∂L/∂W`, `[O, C, KH, KW]`, summed over the batch.
    pub weight: Array4<f32>,
    /// `∂L/∂b`, `[O]`, summed over the batch.
    pub bias: Array1<f32>,
}

/// Convolution backward (without the fused ReLU: mask `grad_out` with
/// [`relu_backward`](crate::layers::relu::relu_backward) first when the forward used it).
///
/// ```text
/// ∂L/∂b[o]  = Σ_n Σ_p gy[n, o, p]
/// ∂L/∂W     = Σ_n gy[n] · col_nᵀ          ([O, P] · [P, K])
/// ∂L/∂x[n]  = col2im(Wᵀ · gy[n])           ([K, O] · [O, P], scattered back)
/// ```
///
/// # Arguments
/// * `input` — the forward input `[N, C, H, W]`.
/// * `weight` — the forward filters `[O, C, KH, KW]` (standard layout).
/// * `grad_out` — `∂L/∂y`, `[N, O, OH, OW]`.
///
/// # Errors
/// As [`conv2d_forward`], plus [`KernelError::Shape`] if `grad_out` is not the
/// forward output's shape.
///
/// Work is parallel across images; per-image weight gradients are summed in
/// image order, so the result does not depend on the thread count.
pub fn conv2d_backward(
    input: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    grad_out: ArrayView4<'_, f32>,
    window: &Window2d,
) -> Result<Conv2dGrads> {
    let (oh, ow) = check_conv(input.shape(), weight.shape(), weight.shape()[0], window)?;
    let (n, c, h, w) = input.dim();
    let o = weight.shape()[0];
    if grad_out.dim() != (n, o, oh, ow) {
        return Err(KernelError::shape(
            "conv2d grad_out",
            format!("[{n}, {o}, {oh}, {ow}]"),
            grad_out.shape(),
        ));
    }
    let k = weight.len() / o.max(1);
    let w2 = weight.to_shape((o, k)).map_err(|_| {
        KernelError::shape(
            "conv2d weight layout",
            "standard (C-contiguous) OIHW",
            weight.shape(),
        )
    })?;
    let positions = oh * ow;
    let mut grad_input = Array4::<f32>::zeros((n, c, h, w));

    let per_image: Vec<(Array2<f32>, Array1<f32>)> = grad_input
        .outer_iter_mut()
        .into_par_iter()
        .enumerate()
        .map(|(img, mut gx)| {
            let gy = grad_out
                .index_axis(Axis(0), img)
                .to_shape((o, positions))
                .expect("reshape of one image's gradient")
                .into_owned();
            let mut col = Array2::<f32>::zeros((k, positions));
            im2col_tile(
                input.slice(s![img..img + 1, .., .., ..]),
                window,
                ow,
                0,
                col.view_mut(),
            );
            let mut gw = Array2::<f32>::zeros((o, k));
            sgemm(1.0, gy.view(), col.t(), 0.0, gw.view_mut());
            let gb = gy.sum_axis(Axis(1));
            // Reuse `col` for the column gradient Wᵀ · gy.
            sgemm(1.0, w2.t(), gy.view(), 0.0, col.view_mut());
            col2im_add(col.view(), window, ow, gx.view_mut());
            (gw, gb)
        })
        .collect();

    let mut gw = Array2::<f32>::zeros((o, k));
    let mut gb = Array1::<f32>::zeros(o);
    for (w_i, b_i) in &per_image {
        gw += w_i;
        gb += b_i;
    }
    Ok(Conv2dGrads {
        input: grad_input,
        weight: gw
            .into_shape_with_order(weight.raw_dim())
            .expect("o×k has O·C·KH·KW elements"),
        bias: gb,
    })
}

/// Scatter-adds a column matrix `[K, OH·OW]` back into one image `[C, H, W]`.
fn col2im_add(
    col: ArrayView2<'_, f32>,
    window: &Window2d,
    out_w: usize,
    mut image: ndarray::ArrayViewMut3<'_, f32>,
) {
    let (c_in, h, w) = image.dim();
    let (kh, kw) = window.kernel;
    let positions = col.ncols();
    for c in 0..c_in {
        let mut plane = image.index_axis_mut(Axis(0), c);
        for ky in 0..kh {
            for kx in 0..kw {
                let row = col.row((c * kh + ky) * kw + kx);
                for p in 0..positions {
                    let (oy, ox) = (p / out_w, p % out_w);
                    if let (Some(iy), Some(ix)) =
                        (window.input_y(oy, ky, h), window.input_x(ox, kx, w))
                    {
                        plane[[iy, ix]] += row[p];
                    }
                }
            }
        }
    }
}
