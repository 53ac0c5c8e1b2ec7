//! Activations in the implicit convolution's padded layout.
//!
//! A [`PaddedLayout`] stores `[N, C, H, W]` activations channel-major, each
//! image inside a zero frame of `Hp × Wp`, the images of one channel side by
//! side, then some slack. The frame columns before a row are also the
//! previous row's right padding, so a 3×3 convolution's input has
//! `Wp = W + 1`, not `W + 2`:
//!
//! ```text
//! element (n, c, y, x) at  c·plane + n·Hp·Wp + (y + top.0)·Wp + (x + top.1)
//! plane = N·Hp·Wp + slack          every other float of the buffer is zero
//! ```
//!
//! This is what the implicit GEMM reads in place (each im2col row is the
//! channel's plane shifted by `ky·Wp + kx`), and what it writes: output
//! position `(n, oy, ox)` is computed at virtual column `n·Hp·Wp + oy·Wp + ox`
//! of the input's frame, so with the same `Hp × Wp` and the interior placed
//! at `top`, column `j` lands at `j + top.0·Wp + top.1`, and the columns that
//! are not outputs (`ox ≥ OW` or `oy ≥ OH`) land exactly on frame positions,
//! which the convolution writes as zeros. A chain of "same" convolutions
//! (odd kernel, padding `(k−1)/2`, stride 1, VGG's 3×3) thus passes its
//! activations on without any copy or re-padding.

use ndarray::{ArrayView4, ArrayViewMut4, Axis, ShapeBuilder, Zip};
use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::geometry::Window2d;

/// Most columns a microkernel tile reads past a GEMM's last column.
const MAX_NR: usize = 32;

/// Shape and placement of padded activations (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PaddedLayout {
    /// Images.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Rows of an image.
    pub h: usize,
    /// Columns of an image.
    pub w: usize,
    /// Frame rows above and columns left of pixel `(0, 0)`.
    pub top: (usize, usize),
    /// Rows of the framed image.
    pub hp: usize,
    /// Columns of the framed image.
    pub wp: usize,
    /// Floats per channel: `n·hp·wp` and the slack after the last image.
    pub plane: usize,
}

impl PaddedLayout {
    /// The input layout of an implicit convolution with `window` over
    /// `[n, c, h, w]`: the window's padding as frame rows above and below
    /// each image and as frame columns before each row (which are also the
    /// previous row's right padding: `Wp = W + pad.1`), and slack for the
    /// reads of the last tile past the last image.
    pub fn conv_input(n: usize, c: usize, h: usize, w: usize, window: &Window2d) -> Self {
        let (hp, wp) = (h + 2 * window.pad.0, Self::conv_row(w, window));
        let plane = n * hp * wp + Self::slack(window, wp);
        PaddedLayout { n, c, h, w, top: window.pad, hp, wp, plane }
    }

    /// Framed row length `Wp` of an implicit convolution's input of width
    /// `w`: rows share their side padding (a row's right frame is the next
    /// row's left one), so `W + pad.1`, unless the outputs and their own
    /// left frame, `OW + (kw − 1)/2`, need more (padding wider than the kernel).
    pub fn conv_row(w: usize, window: &Window2d) -> usize {
        let left = (window.kernel.1.saturating_sub(1)) / 2;
        (w + window.pad.1).max(window.out_w(w) + left)
    }

    /// The layout an implicit convolution with `window` and `out_channels`
    /// filters writes when its input has this layout: the same frame size,
    /// the outputs placed at `((kh−1)/2, (kw−1)/2)`. For a "same" convolution
    /// this is the next one's [`conv_input`](Self::conv_input) layout.
    pub fn conv_output(&self, out_channels: usize, window: &Window2d) -> Self {
        let (kh, kw) = window.kernel;
        PaddedLayout {
            n: self.n,
            c: out_channels,
            h: window.out_h(self.h),
            w: window.out_w(self.w),
            top: ((kh - 1) / 2, (kw - 1) / 2),
            hp: self.hp,
            wp: self.wp,
            plane: self.n * self.hp * self.wp + Self::slack(window, self.wp),
        }
    }

    /// Slack after the last image: the furthest tap `(kh−1)·Wp + kw − 1` past
    /// a column, plus a tile's overhang.
    fn slack(window: &Window2d, wp: usize) -> usize {
        (window.kernel.0.saturating_sub(1)) * wp + window.kernel.1 + MAX_NR
    }

    /// Floats in the buffer, `c·plane`.
    pub fn len(&self) -> usize {
        self.c * self.plane
    }

    /// Whether the buffer holds no float.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Floats per framed image, `hp·wp`.
    pub fn image(&self) -> usize {
        self.hp * self.wp
    }

    /// Where pixel `(0, 0)` of image 0 sits in its channel's plane.
    pub fn origin(&self) -> usize {
        self.top.0 * self.wp + self.top.1
    }

    /// Checks that the layout is consistent and that `len` floats hold it.
    ///
    /// # Errors
    /// [`KernelError::Invalid`] naming `what` if the interior does not fit
    /// the frame or the planes overlap; [`KernelError::Shape`] if `len` is short.
    pub fn check(&self, what: &str, len: usize) -> Result<()> {
        if self.top.0 + self.h > self.hp || self.top.1 + self.w > self.wp {
            return Err(KernelError::invalid(what, format!("{self:?}: the interior does not fit the frame")));
        }
        if self.plane < self.n * self.image() + self.origin() {
            return Err(KernelError::invalid(what, format!("{self:?}: plane too short for its images")));
        }
        if len < self.len() {
            return Err(KernelError::shape(what, format!("at least {} floats", self.len()), &[len]));
        }
        Ok(())
    }

    fn shape_strides(&self) -> ([usize; 4], [usize; 4]) {
        ([self.n, self.c, self.h, self.w], [self.image(), self.plane, self.wp, 1])
    }

    /// The activations `[N, C, H, W]` (strided) inside `data`.
    ///
    /// # Panics
    /// If `data` is shorter than [`len`](Self::len) or the layout is
    /// inconsistent (see [`check`](Self::check)).
    pub fn view<'a>(&self, data: &'a [f32]) -> ArrayView4<'a, f32> {
        let (shape, strides) = self.shape_strides();
        ArrayView4::from_shape(shape.strides(strides), &data[self.origin()..self.len()])
            .expect("layout fits its buffer")
    }

    /// Mutable [`view`](Self::view).
    ///
    /// # Panics
    /// As [`view`](Self::view).
    pub fn view_mut<'a>(&self, data: &'a mut [f32]) -> ArrayViewMut4<'a, f32> {
        let (shape, strides) = self.shape_strides();
        ArrayViewMut4::from_shape(shape.strides(strides), &mut data[self.origin()..self.len()])
            .expect("layout fits its buffer")
    }

    /// Writes `x` (`[N, C, H, W]`, any strides) into `data` and zeros
    /// everywhere else, channel planes in parallel.
    ///
    /// # Errors
    /// [`KernelError::Shape`] if `x` is not `[n, c, h, w]` or `data` is short.
    pub fn fill(&self, data: &mut [f32], x: ArrayView4<'_, f32>) -> Result<()> {
        if x.shape() != [self.n, self.c, self.h, self.w] {
            return Err(KernelError::shape(
                "padded input",
                format!("{:?}", [self.n, self.c, self.h, self.w]),
                x.shape(),
            ));
        }
        self.check("padded input layout", data.len())?;
        self.zero_frame(data);
        let mut interior = self.view_mut(data);
        Zip::from(interior.axis_iter_mut(Axis(1)))
            .and(x.axis_iter(Axis(1)))
            .into_par_iter()
            .for_each(|(mut dst, src)| dst.assign(&src));
        Ok(())
    }

    /// Zeros every float of `data` outside the interior (after the interior
    /// was written through [`view_mut`](Self::view_mut)).
    ///
    /// # Panics
    /// If `data` is shorter than [`len`](Self::len).
    pub fn zero_frame(&self, data: &mut [f32]) {
        let (image, wp, (ty, tx), w) = (self.image(), self.wp, self.top, self.w);
        data[..self.len()].par_chunks_mut(self.plane).for_each(|plane| {
            let (images, slack) = plane.split_at_mut(self.n * image);
            slack.fill(0.0);
            for framed in images.chunks_exact_mut(image) {
                framed[..ty * wp].fill(0.0);
                framed[(ty + self.h) * wp..].fill(0.0);
                for row in framed[ty * wp..(ty + self.h) * wp].chunks_exact_mut(wp) {
                    row[..tx].fill(0.0);
                    row[tx + w..].fill(0.0);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    #[test]
    fn view_and_fill_place_every_element_and_zero_the_rest() {
        let window = Window2d::square(3, 1, 1);
        let l = PaddedLayout::conv_input(2, 3, 4, 5, &window);
        let x = Array4::from_shape_fn((2, 3, 4, 5), |(n, c, y, x)| (1 + n * 1000 + c * 100 + y * 10 + x) as f32);
        let mut data = vec![f32::NAN; l.len()];
        l.fill(&mut data, x.view()).unwrap();
        assert_eq!(l.view(&data), x);
        let nonzero = data.iter().filter(|&&v| v != 0.0).count();
        assert_eq!(nonzero, x.len(), "everything outside the interior is zero");
        // Element (1, 2, 3, 4) at c·plane + n·Hp·Wp + (y+1)·Wp + (x+1).
        assert_eq!(data[2 * l.plane + l.image() + 4 * l.wp + 5], x[[1, 2, 3, 4]]);

        let mut again = vec![f32::NAN; l.len()];
        l.view_mut(&mut again).assign(&x);
        l.zero_frame(&mut again);
        assert_eq!(again, data);
    }

    #[test]
    fn conv_output_of_a_same_convolution_is_the_next_input_layout() {
        let window = Window2d::square(3, 1, 1);
        let l = PaddedLayout::conv_input(2, 3, 8, 6, &window);
        assert_eq!(l.conv_output(7, &window), PaddedLayout::conv_input(2, 7, 8, 6, &window));
    }

    #[test]
    fn bad_shapes_are_errors() {
        let l = PaddedLayout::conv_input(1, 2, 4, 4, &Window2d::square(3, 1, 1));
        let x = Array4::<f32>::zeros((1, 2, 4, 5));
        assert!(matches!(l.fill(&mut vec![0.0; l.len()], x.view()), Err(KernelError::Shape { .. })));
        let x = Array4::<f32>::zeros((1, 2, 4, 4));
        assert!(matches!(l.fill(&mut vec![0.0; l.len() - 1], x.view()), Err(KernelError::Shape { .. })));
        let bad = PaddedLayout { hp: 4, ..l };
        assert!(matches!(bad.check("x", bad.len()), Err(KernelError::Invalid { .. })));
    }
}
