//! Window geometry shared by convolution and pooling.
//!
//! A [`Window2d`] slides a `kernel.0 × kernel.1` window over a padded input
//! with a stride. For an input of height `h`:
//!
//! ```text
//! out_h = (h + 2·pad.0 − kernel.0) / stride.0 + 1      (floor division)
//! ```
//!
//! and likewise for the width. Output position `(oy, ox)` reads the input at
//! `iy = oy·stride.0 − pad.0 + ky`, `ix = ox·stride.1 − pad.1 + kx`; positions
//! outside the input are padding (zero for convolution, never chosen for max-pool).

use crate::error::{KernelError, Result};

/// Kernel size, stride and zero padding of a 2-D sliding window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window2d {
    /// Window height and width.
    pub kernel: (usize, usize),
    /// Vertical and horizontal step.
    pub stride: (usize, usize),
    /// Rows and columns of padding on each side.
    pub pad: (usize, usize),
}

impl Window2d {
    /// A square window: `k × k`, stride `s`, padding `p`.
    pub const fn square(k: usize, s: usize, p: usize) -> Self {
        Window2d { kernel: (k, k), stride: (s, s), pad: (p, p) }
    }

    /// VGG's convolution: 3×3, stride 1, padding 1 (keeps the size).
    pub const VGG_CONV: Window2d = Window2d::square(3, 1, 1);
    /// VGG's pooling: 2×2, stride 2, no padding (halves the size).
    pub const VGG_POOL: Window2d = Window2d::square(2, 2, 0);

    /// Checks that the window is usable on an `h × w` input.
    ///
    /// # Errors
    /// [`KernelError::Invalid`] if a kernel or stride is zero, or if the padded
    /// input is smaller than the kernel.
    pub fn validate(&self, h: usize, w: usize) -> Result<()> {
        if self.kernel.0 == 0 || self.kernel.1 == 0 {
            return Err(KernelError::invalid("window", format!("zero kernel size {:?}", self.kernel)));
        }
        if self.stride.0 == 0 || self.stride.1 == 0 {
            return Err(KernelError::invalid("window", format!("zero stride {:?}", self.stride)));
        }
        if h + 2 * self.pad.0 < self.kernel.0 || w + 2 * self.pad.1 < self.kernel.1 {
            return Err(KernelError::invalid(
                "window",
                format!("kernel {:?} with padding {:?} does not fit a {h}×{w} input", self.kernel, self.pad),
            ));
        }
        Ok(())
    }

    /// Output height for an input of height `h` (call [`validate`](Self::validate) first).
    pub const fn out_h(&self, h: usize) -> usize {
        (h + 2 * self.pad.0 - self.kernel.0) / self.stride.0 + 1
    }

    /// Output width for an input of width `w` (call [`validate`](Self::validate) first).
    pub const fn out_w(&self, w: usize) -> usize {
        (w + 2 * self.pad.1 - self.kernel.1) / self.stride.1 + 1
    }

    /// For output column `o` and kernel offset `k`, the input index, or `None` in the padding.
    #[inline]
    pub(crate) fn input_x(&self, o: usize, k: usize, w: usize) -> Option<usize> {
        (o * self.stride.1 + k).checked_sub(self.pad.1).filter(|&x| x < w)
    }

    /// For output row `o` and kernel offset `k`, the input index, or `None` in the padding.
    #[inline]
    pub(crate) fn input_y(&self, o: usize, k: usize, h: usize) -> Option<usize> {
        (o * self.stride.0 + k).checked_sub(self.pad.0).filter(|&y| y < h)
    }

    /// Half-open range `[lo, hi)` of output columns whose input column for
    /// kernel offset `k` lies inside `0..w`.
    #[inline]
    pub(crate) fn valid_out_x(&self, k: usize, w: usize, out_w: usize) -> (usize, usize) {
        valid_range(self.stride.1, self.pad.1, k, w, out_w)
    }
}

/// Outputs `o` in `0..out` with `0 <= o·s + k − p < n`.
#[inline]
fn valid_range(s: usize, p: usize, k: usize, n: usize, out: usize) -> (usize, usize) {
    // o·s + k >= p  <=>  o >= ceil((p − k) / s)
    let lo = if k >= p { 0 } else { (p - k).div_ceil(s) };
    // o·s + k − p <= n − 1  <=>  o <= (n − 1 + p − k) / s
    let hi = if n + p > k { ((n - 1 + p - k) / s + 1).min(out) } else { 0 };
    (lo.min(hi), hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vgg_shapes() {
        assert_eq!(Window2d::VGG_CONV.out_h(224), 224);
        assert_eq!(Window2d::VGG_POOL.out_h(224), 112);
        assert_eq!(Window2d::VGG_POOL.out_w(7), 3);
    }

    #[test]
    fn valid_range_matches_brute_force() {
        for s in 1..4 {
            for p in 0..4 {
                for k in 0..5 {
                    for n in 1..9 {
                        let g = Window2d { kernel: (k + 1, k + 1), stride: (s, s), pad: (p, p) };
                        if g.validate(n, n).is_err() {
                            continue;
                        }
                        let out = g.out_w(n);
                        let (lo, hi) = g.valid_out_x(k, n, out);
                        for o in 0..out {
                            let inside = g.input_x(o, k, n).is_some();
                            assert_eq!(inside, o >= lo && o < hi, "s{s} p{p} k{k} n{n} o{o}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_bad_windows() {
        assert!(Window2d::square(0, 1, 0).validate(4, 4).is_err());
        assert!(Window2d::square(2, 0, 0).validate(4, 4).is_err());
        assert!(Window2d::square(5, 1, 0).validate(4, 4).is_err());
        assert!(Window2d::square(5, 1, 1).validate(4, 4).is_ok());
    }
}
