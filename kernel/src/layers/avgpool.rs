//! Adaptive average pooling (torchvision's `AdaptiveAvgPool2d`).
//!
//! Output cell `i` of `out` averages input rows `⌊i·H/out⌋ .. ⌈(i+1)·H/out⌉`
//! (likewise for columns). VGG19 pools to 7×7 before the classifier: at a
//! 224×224 input this is the identity; at 32×32 (pool5 is 1×1) it replicates
//! each channel 49 times, which is what torchvision computes.

use ndarray::{Array4, ArrayView4};

use crate::error::{KernelError, Result};

/// The input range `[⌊i·input/out⌋, ⌈(i+1)·input/out⌉)` that output cell
/// `i` of `out` averages along an axis of `input` values (torchvision's rule).
pub fn adaptive_pool_window(i: usize, input: usize, out: usize) -> (usize, usize) {
    ((i * input) / out, ((i + 1) * input).div_ceil(out))
}

/// Adaptive average pooling forward: `[N, C, H, W] → [N, C, OH, OW]`.
///
/// # Errors
/// [`KernelError::Invalid`] if an input or output side is zero.
pub fn adaptive_avgpool2d_forward(input: ArrayView4<'_, f32>, out_hw: (usize, usize)) -> Result<Array4<f32>> {
    let (n, c, h, w) = input.dim();
    let (oh, ow) = out_hw;
    if h == 0 || w == 0 || oh == 0 || ow == 0 {
        return Err(KernelError::invalid("adaptive average pool", format!("{h}×{w} → {oh}×{ow}")));
    }
    if (h, w) == (oh, ow) {
        return Ok(input.to_owned());
    }
    Ok(Array4::from_shape_fn((n, c, oh, ow), |(b, ch, i, j)| {
        let (y0, y1) = adaptive_pool_window(i, h, oh);
        let (x0, x1) = adaptive_pool_window(j, w, ow);
        let mut s = 0.0f32;
        for y in y0..y1 {
            for x in x0..x1 {
                s += input[[b, ch, y, x]];
            }
        }
        s / ((y1 - y0) * (x1 - x0)) as f32
    }))
}

/// Adaptive average pooling backward: spreads each output gradient evenly
/// over the inputs it averaged. Returns `[N, C, H, W]`.
///
/// # Errors
/// [`KernelError::Invalid`] if a side is zero.
pub fn adaptive_avgpool2d_backward(grad_out: ArrayView4<'_, f32>, input_hw: (usize, usize)) -> Result<Array4<f32>> {
    let (n, c, oh, ow) = grad_out.dim();
    let (h, w) = input_hw;
    if h == 0 || w == 0 || oh == 0 || ow == 0 {
        return Err(KernelError::invalid("adaptive average pool", format!("{h}×{w} → {oh}×{ow}")));
    }
    let mut g = Array4::<f32>::zeros((n, c, h, w));
    for b in 0..n {
        for ch in 0..c {
            for i in 0..oh {
                let (y0, y1) = adaptive_pool_window(i, h, oh);
                for j in 0..ow {
                    let (x0, x1) = adaptive_pool_window(j, w, ow);
                    let share = grad_out[[b, ch, i, j]] / ((y1 - y0) * (x1 - x0)) as f32;
                    for y in y0..y1 {
                        for x in x0..x1 {
                            g[[b, ch, y, x]] += share;
                        }
                    }
                }
            }
        }
    }
    Ok(g)
}
