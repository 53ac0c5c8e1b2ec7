//! Slow, obviously correct f64 implementations of every layer.
//!
//! These are kept forever beside the fast paths: every fast layer is tested
//! against them. They take the same f32 inputs and compute in f64 with plain
//! loops that follow the textbook definitions, sharing no code with the fast
//! paths except [`Window2d`]'s output-size formula.

use ndarray::{Array1, Array2, Array4, ArrayView1, ArrayView2, ArrayView4};

use crate::geometry::Window2d;

/// Reads `x[n, c, y, x]` with zero padding outside the plane.
fn at(x: &ArrayView4<'_, f32>, n: usize, c: usize, y: isize, xx: isize) -> Option<f64> {
    let (_, _, h, w) = x.dim();
    if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
        None
    } else {
        Some(x[[n, c, y as usize, xx as usize]] as f64)
    }
}

/// `y[n,o,i,j] = b[o] + Σ_{c,ky,kx} W[o,c,ky,kx]·x[n,c,i·s−p+ky, j·s−p+kx]`, then optional ReLU.
pub fn conv2d(
    x: ArrayView4<'_, f32>,
    w: ArrayView4<'_, f32>,
    b: ArrayView1<'_, f32>,
    g: &Window2d,
    relu: bool,
) -> Array4<f64> {
    let (n, _, h, wd) = x.dim();
    let o = w.shape()[0];
    Array4::from_shape_fn((n, o, g.out_h(h), g.out_w(wd)), |(n_, o_, i, j)| conv2d_at(x, w, b, g, relu, (n_, o_, i, j)))
}

/// One output element `y[n, o, i, j]` of [`conv2d`] (to spot-check large layers).
pub fn conv2d_at(
    x: ArrayView4<'_, f32>,
    w: ArrayView4<'_, f32>,
    b: ArrayView1<'_, f32>,
    g: &Window2d,
    relu: bool,
    (n, o, i, j): (usize, usize, usize, usize),
) -> f64 {
    let (_, c, kh, kw) = w.dim();
    let mut s = b[o] as f64;
    for c_ in 0..c {
        for ky in 0..kh {
            for kx in 0..kw {
                let y = (i * g.stride.0 + ky) as isize - g.pad.0 as isize;
                let xx = (j * g.stride.1 + kx) as isize - g.pad.1 as isize;
                if let Some(v) = at(&x, n, c_, y, xx) {
                    s += w[[o, c_, ky, kx]] as f64 * v;
                }
            }
        }
    }
    if relu {
        s.max(0.0)
    } else {
        s
    }
}

/// torchvision's `AdaptiveAvgPool2d`: cell `i` averages rows `⌊i·H/OH⌋ .. ⌈(i+1)·H/OH⌉`.
pub fn adaptive_avgpool2d(x: ArrayView4<'_, f32>, out: (usize, usize)) -> Array4<f64> {
    let (n, c, h, w) = x.dim();
    Array4::from_shape_fn((n, c, out.0, out.1), |(b, ch, i, j)| {
        let (y0, y1) = (i * h / out.0, ((i + 1) * h).div_ceil(out.0));
        let (x0, x1) = (j * w / out.1, ((j + 1) * w).div_ceil(out.1));
        let mut s = 0.0;
        for y in y0..y1 {
            for xx in x0..x1 {
                s += x[[b, ch, y, xx]] as f64;
            }
        }
        s / ((y1 - y0) * (x1 - x0)) as f64
    })
}

/// Gradients of [`conv2d`] (no ReLU) for upstream gradient `gy`:
/// `(∂L/∂x, ∂L/∂W, ∂L/∂b)`, by direct scatter of every term.
pub fn conv2d_backward(
    x: ArrayView4<'_, f32>,
    w: ArrayView4<'_, f32>,
    gy: ArrayView4<'_, f32>,
    g: &Window2d,
) -> (Array4<f64>, Array4<f64>, Array1<f64>) {
    let (n, c, h, wd) = x.dim();
    let (o, _, kh, kw) = w.dim();
    let (_, _, oh, ow) = gy.dim();
    let mut gx = Array4::<f64>::zeros((n, c, h, wd));
    let mut gw = Array4::<f64>::zeros((o, c, kh, kw));
    let mut gb = Array1::<f64>::zeros(o);
    for b_ in 0..n {
        for o_ in 0..o {
            for i in 0..oh {
                for j in 0..ow {
                    let d = gy[[b_, o_, i, j]] as f64;
                    gb[o_] += d;
                    for c_ in 0..c {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let y = (i * g.stride.0 + ky) as isize - g.pad.0 as isize;
                                let xx = (j * g.stride.1 + kx) as isize - g.pad.1 as isize;
                                if let Some(v) = at(&x, b_, c_, y, xx) {
                                    gw[[o_, c_, ky, kx]] += d * v;
                                    gx[[b_, c_, y as usize, xx as usize]] += d * w[[o_, c_, ky, kx]] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    (gx, gw, gb)
}

/// Max over each window, ignoring padding.
pub fn maxpool2d(x: ArrayView4<'_, f32>, g: &Window2d) -> Array4<f64> {
    let (n, c, h, w) = x.dim();
    Array4::from_shape_fn((n, c, g.out_h(h), g.out_w(w)), |(b, ch, i, j)| {
        let mut m = f64::NEG_INFINITY;
        for ky in 0..g.kernel.0 {
            for kx in 0..g.kernel.1 {
                let y = (i * g.stride.0 + ky) as isize - g.pad.0 as isize;
                let xx = (j * g.stride.1 + kx) as isize - g.pad.1 as isize;
                if let Some(v) = at(&x, b, ch, y, xx) {
                    m = m.max(v);
                }
            }
        }
        m
    })
}

/// `y[n, o] = b[o] + Σ_i x[n, i]·W[o, i]`, then optional ReLU.
pub fn dense(x: ArrayView2<'_, f32>, w: ArrayView2<'_, f32>, b: ArrayView1<'_, f32>, relu: bool) -> Array2<f64> {
    Array2::from_shape_fn((x.nrows(), w.nrows()), |(n, o)| {
        let s: f64 = b[o] as f64 + (0..x.ncols()).map(|i| x[[n, i]] as f64 * w[[o, i]] as f64).sum::<f64>();
        if relu {
            s.max(0.0)
        } else {
            s
        }
    })
}

/// `(Σ_n −log softmax(z_n)[y_n], softmax(z) − onehot(y))`, computed directly in f64.
pub fn softmax_cross_entropy(z: ArrayView2<'_, f32>, labels: &[u32]) -> (f64, Array2<f64>) {
    let mut loss = 0.0;
    let mut grad = Array2::<f64>::zeros(z.raw_dim());
    for (n, row) in z.outer_iter().enumerate() {
        let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let denom: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        for (j, &v) in row.iter().enumerate() {
            let p = (v as f64 - m).exp() / denom;
            grad[[n, j]] = p - if j == labels[n] as usize { 1.0 } else { 0.0 };
        }
        loss -= ((row[labels[n] as usize] as f64 - m).exp() / denom).ln();
    }
    (loss, grad)
}

/// Bilinear resize of one `[C, H, W]` image with half-pixel centres
/// (`align_corners = False`): output pixel `i` samples input coordinate
/// `(i + 0.5)·H/OH − 0.5`, clamped to `[0, H − 1]`.
pub fn resize_bilinear(x: ndarray::ArrayView3<'_, f64>, out: (usize, usize)) -> ndarray::Array3<f64> {
    let (c, h, w) = x.dim();
    let coord = |i: usize, n_in: usize, n_out: usize| -> (usize, usize, f64) {
        let s = ((i as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).clamp(0.0, (n_in - 1) as f64);
        let lo = s.floor() as usize;
        let hi = (lo + 1).min(n_in - 1);
        (lo, hi, s - lo as f64)
    };
    ndarray::Array3::from_shape_fn((c, out.0, out.1), |(ch, i, j)| {
        let (y0, y1, fy) = coord(i, h, out.0);
        let (x0, x1, fx) = coord(j, w, out.1);
        let top = x[[ch, y0, x0]] * (1.0 - fx) + x[[ch, y0, x1]] * fx;
        let bottom = x[[ch, y1, x0]] * (1.0 - fx) + x[[ch, y1, x1]] * fx;
        top * (1.0 - fy) + bottom * fy
    })
}
