//! Turning `uint8` images into network input: resize and normalise.
//!
//! Images arrive as `[N, H, W, 3]` `u8` in RGB order (CIFAR-10's layout after
//! `prepare-cifar10`). The network wants `[N, 3, S, S]` f32 (NCHW). Resizing is
//! bilinear with half-pixel centres (`align_corners = False`, as PyTorch's
//! `F.interpolate(mode="bilinear")`, TensorFlow 2's `tf.image.resize` and
//! OpenCV's `INTER_LINEAR`): output pixel `i` samples input coordinate
//! `(i + ½)·H/S − ½`, clamped to the image. It is done on the fly per batch,
//! so 32×32 data never exists at 224×224 on disk.

use ndarray::{Array4, ArrayView4, Axis};
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
