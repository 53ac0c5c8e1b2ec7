//! Turning `uint8` images into network input: resize and normalise.
//!
//! Images arrive as `[N, H, W, 3]` `u8` in RGB order (CIFAR-10's layout after
//! `prepare-cifar10`). The network wants `[N, 3, S, S]` f32 (NCHW). Resizing is
//! bilinear with half-pixel centres (`align_corners = False`, as PyTorch's
//! `F.interpolate(mode="bilinear")`, TensorFlow 2's `tf.image.resize` and
//! OpenCV's `INTER_LINEAR`): output pixel `i` samples input coordinate
//! `(i + ½)·H/S − ½`, clamped to the image. It is done on the fly per batch,
//! so 32×32 data never exists at 224×224 on disk.
//!
//! [`resize`] changes an image's size *before* that, in `u8`: a new image of
//! another size than the training images is first brought to their size
//! (see [`crate::classifier`]), with a triangle filter that is the same
//! bilinear interpolation when enlarging and widens to the scale factor when
//! shrinking, so that every input pixel counts (antialiasing).

use ndarray::{Array3, Array4, ArrayView3, ArrayView4, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{KernelError, Result};

/// Input normalisation. It must match the source of the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Keras Applications / Caffe VGG weights: channels reordered RGB → BGR,
    /// then the ImageNet means `(103.939, 116.779, 123.68)` (B, G, R)
    /// subtracted from `0..255` values; no scaling.
    Caffe,
    /// torchvision weights: `x/255`, then `(x − mean)/std` per RGB channel with
    /// mean `(0.485, 0.456, 0.406)` and std `(0.229, 0.224, 0.225)`.
    Torchvision,
}

impl Preset {
    /// For each output channel: `(source RGB channel, scale, offset)`, so that
    /// `out = v·scale + offset` for the 0..255 value `v`.
    pub fn channel_affine(self) -> [(usize, f32, f32); 3] {
        match self {
            Preset::Caffe => [(2, 1.0, -103.939), (1, 1.0, -116.779), (0, 1.0, -123.68)],
            Preset::Torchvision => {
                let mean = [0.485f32, 0.456, 0.406];
                let std = [0.229f32, 0.224, 0.225];
                [0, 1, 2].map(|c| (c, 1.0 / (255.0 * std[c]), -mean[c] / std[c]))
            }
        }
    }
}

impl std::str::FromStr for Preset {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "caffe" => Ok(Preset::Caffe),
            "torchvision" => Ok(Preset::Torchvision),
            _ => Err(KernelError::invalid("preset", format!("{s:?} (expected \"caffe\" or \"torchvision\")"))),
        }
    }
}

/// Interpolation taps for one axis: `(lo, hi, weight of hi)` per output index.
fn taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    (0..n_out)
        .map(|i| {
            let s = ((i as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).clamp(0.0, (n_in - 1) as f64);
            let lo = s.floor() as usize;
            (lo, (lo + 1).min(n_in - 1), (s - lo as f64) as f32)
        })
        .collect()
}

/// Resizes and normalises a batch of RGB `u8` images.
///
/// # Arguments
/// * `images` — `[N, H, W, 3]`, RGB.
/// * `size` — output side `S` (the image is resized to `S × S`).
/// * `preset` — normalisation matching the weights.
///
/// # Shapes
/// Returns `[N, 3, S, S]` in the preset's channel order.
///
/// # Errors
/// [`KernelError::Shape`] if the last axis is not 3 or a side is zero;
/// [`KernelError::Invalid`] if `size` is zero.
pub fn preprocess(images: ArrayView4<'_, u8>, size: usize, preset: Preset) -> Result<Array4<f32>> {
    let (n, h, w, c) = images.dim();
    if c != 3 || h == 0 || w == 0 {
        return Err(KernelError::shape("images", "[N, H>0, W>0, 3] (RGB)", images.shape()));
    }
    if size == 0 {
        return Err(KernelError::invalid("input size", "must be positive"));
    }
    let (ty, tx) = (taps(h, size), taps(w, size));
    let affine = preset.channel_affine();
    let mut out = Array4::<f32>::zeros((n, 3, size, size));
    out.outer_iter_mut().into_par_iter().zip(images.outer_iter().into_par_iter()).for_each(|(mut dst, src)| {
        for (oc, &(sc, scale, offset)) in affine.iter().enumerate() {
            let plane = src.index_axis(Axis(2), sc);
            let mut d = dst.index_axis_mut(Axis(0), oc);
            for (i, &(y0, y1, fy)) in ty.iter().enumerate() {
                for (j, &(x0, x1, fx)) in tx.iter().enumerate() {
                    let p = |y: usize, x: usize| plane[[y, x]] as f32;
                    let top = p(y0, x0) + (p(y0, x1) - p(y0, x0)) * fx;
                    let bottom = p(y1, x0) + (p(y1, x1) - p(y1, x0)) * fx;
                    d[[i, j]] = (top + (bottom - top) * fy) * scale + offset;
                }
            }
        }
    });
    Ok(out)
}

/// Triangle-filter taps of one axis from `n_in` to `n_out` samples: per
/// output index, the first input index and the normalised weights of the
/// inputs from there on. Output `i` is centred on input coordinate
/// `c = (i + ½)·n_in/n_out − ½` (half-pixel centres, as [`preprocess`]);
/// input `j` weighs `max(0, 1 − |j − c| / r)` with `r = max(1, n_in/n_out)`,
/// then the weights are divided by their sum (which renormalises at the edges).
fn triangle_taps(n_in: usize, n_out: usize) -> Vec<(usize, Vec<f32>)> {
    let ratio = n_in as f64 / n_out as f64;
    let widen = ratio.max(1.0);
    (0..n_out)
        .map(|i| {
            let centre = (i as f64 + 0.5) * ratio;
            let left = ((centre - widen).floor().max(0.0) as usize).min(n_in - 1);
            let right = ((centre + widen).ceil() as usize).clamp(left + 1, n_in);
            let c = centre - 0.5;
            let w: Vec<f64> = (left..right).map(|j| (1.0 - ((j as f64 - c) / widen).abs()).max(0.0)).collect();
            // The input nearest `c` is within ½ of it, so its weight is at least ½: the sum is positive.
            let sum: f64 = w.iter().sum();
            (left, w.iter().map(|v| (v / sum) as f32).collect())
        })
        .collect()
}

/// Resizes one `u8` image to `out_h × out_w` with a triangle filter:
/// bilinear interpolation (half-pixel centres, as [`preprocess`]) when
/// enlarging, widened to the scale factor when shrinking so that the result
/// averages every input pixel instead of sampling a few (antialiasing; the
/// filter of `image::imageops::FilterType::Triangle` and of PIL's
/// `BILINEAR`). Rows first, then columns, in f32; each value is rounded to
/// the nearest integer in `0..=255` once, at the end. An image already of
/// that size is returned unchanged.
///
/// # Arguments
/// * `image` — `[H, W, C]`, any channel count (RGB for the network).
/// * `(out_h, out_w)` — the new size.
///
/// # Shapes
/// Returns `[out_h, out_w, C]`.
///
/// # Errors
/// [`KernelError::Shape`] if a side of `image` is zero;
/// [`KernelError::Invalid`] if a side of the new size is zero.
pub fn resize(image: ArrayView3<'_, u8>, (out_h, out_w): (usize, usize)) -> Result<Array3<u8>> {
    let (h, w, c) = image.dim();
    if h == 0 || w == 0 {
        return Err(KernelError::shape("image", "[H>0, W>0, C]", image.shape()));
    }
    if out_h == 0 || out_w == 0 {
        return Err(KernelError::invalid("resized size", format!("{out_h}×{out_w} has a zero side")));
    }
    if (h, w) == (out_h, out_w) {
        return Ok(image.to_owned());
    }
    let (ty, tx) = (triangle_taps(h, out_h), triangle_taps(w, out_w));
    // Rows: [out_h, W, C] in f32.
    let mut rows = ndarray::Array3::<f32>::zeros((out_h, w, c));
    for (mut dst, (y0, wy)) in rows.outer_iter_mut().zip(&ty) {
        for (k, &wk) in wy.iter().enumerate() {
            let src = image.index_axis(Axis(0), y0 + k);
            dst.zip_mut_with(&src, |d, &s| *d += wk * f32::from(s));
        }
    }
    let mut out = Array3::<u8>::zeros((out_h, out_w, c));
    for (mut dst, src) in out.outer_iter_mut().zip(rows.outer_iter()) {
        for (j, (x0, wx)) in tx.iter().enumerate() {
            for ch in 0..c {
                let v: f32 = wx.iter().enumerate().map(|(k, &wk)| wk * src[[x0 + k, ch]]).sum();
                dst[[j, ch]] = v.clamp(0.0, 255.0).round() as u8;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_constants_and_sizes_and_averages_when_halving() {
        let img = Array3::<u8>::from_elem((7, 5, 3), 200);
        for size in [(1, 1), (3, 2), (7, 5), (20, 31)] {
            let r = resize(img.view(), size).unwrap();
            assert_eq!(r.dim(), (size.0, size.1, 3));
            assert!(r.iter().all(|&v| v == 200), "a constant image stays constant at {size:?}");
        }
        // Halving a 1-row image: triangle of radius 2 around each pair's
        // centre gives weights 1/8, 3/8, 3/8, 1/8 (renormalised at the edges).
        let row = ndarray::Array3::from_shape_vec((1, 4, 1), vec![0u8, 80, 160, 240]).unwrap();
        let r = resize(row.view(), (1, 2)).unwrap();
        // Left: weights of inputs 0..3 are 3/8, 3/8, 1/8 → /7·8: (0·3 + 80·3 + 160)/7.
        assert_eq!(r[[0, 0, 0]], ((80.0 * 3.0 + 160.0) / 7.0f32).round() as u8);
        assert_eq!(r[[0, 1, 0]], ((80.0 + 160.0 * 3.0 + 240.0 * 3.0) / 7.0f32).round() as u8);
        // Doubling is bilinear with half-pixel centres: 0, ¼, ¾ between samples.
        let r = resize(row.view(), (1, 8)).unwrap();
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [0, 20, 60, 100, 140, 180, 220, 240]);
        assert!(resize(row.view(), (0, 3)).is_err());
        assert!(resize(ndarray::Array3::<u8>::zeros((0, 3, 3)).view(), (2, 2)).is_err());
    }
}
