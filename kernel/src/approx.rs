//! The one place that names floating-point tolerances.
//!
//! Fast paths compute in f32 and are compared with the f64
//! [`reference`](crate::reference). A comparison passes when, for every
//! element, `|actual − expected| ≤ rtol·|expected| + atol·max|expected|`:
//! the absolute part is scaled by the tensor's largest magnitude so that the
//! same tolerance works for activations of any scale.

use ndarray::{ArrayView, Dimension};

/// How close a fast result must be to its reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Approximation {
    /// Bit-for-bit (integer-valued inputs, data movement).
    Exact,
    /// One layer in f32 against f64: sums of up to a few thousand terms.
    Close,
    /// One Winograd convolution in f32 against f64: the transforms add
    /// rounding that grows with the tile (F(4×4, 3×3)'s output transform
    /// scales by up to 8), so the absolute part is looser than [`Close`](Self::Close).
    /// Measured on every VGG19 layer at 224×224 (He-initialised weights), one
    /// F(4×4) layer from its own input errs by at most 7.8e-6 of the output's
    /// largest magnitude (1.6e-6 in block 5); 5e-5 leaves a margin of 6.
    Winograd,
    /// A whole network (19 layers of f32 rounding compound), or a
    /// finite-difference estimate of a gradient.
    Approximate,
    /// A whole VGG19 forward, any convolution algorithm, against the f64
    /// reference chain: every feature within 1e-4 of the features' largest
    /// magnitude (He-initialised weights; the per-layer errors are in the README).
    Features,
}

impl Approximation {
    /// `(rtol, atol)` where `atol` is relative to the tensor's largest magnitude.
    pub const fn tolerances(self) -> (f64, f64) {
        match self {
            Approximation::Exact => (0.0, 0.0),
            Approximation::Close => (1e-4, 1e-5),
            Approximation::Winograd => (1e-4, 5e-5),
            Approximation::Approximate => (2e-3, 1e-3),
            Approximation::Features => (0.0, 1e-4),
        }
    }
}

/// Compares `actual` (f32) with `expected` (f64); on failure, returns a
/// message naming the worst element.
pub fn check_close<D: Dimension>(
    what: &str,
    actual: ArrayView<'_, f32, D>,
    expected: ArrayView<'_, f64, D>,
    approx: Approximation,
) -> Result<(), String> {
    if actual.shape() != expected.shape() {
        return Err(format!("{what}: shape {:?} vs expected {:?}", actual.shape(), expected.shape()));
    }
    let (rtol, atol) = approx.tolerances();
    let scale = expected.iter().fold(0.0f64, |m, &e| m.max(e.abs()));
    let mut worst: Option<(usize, f64, f64, f64)> = None;
    for (i, (&a, &e)) in actual.iter().zip(expected.iter()).enumerate() {
        let err = (a as f64 - e).abs();
        let allowed = rtol * e.abs() + atol * scale;
        let bad = err > allowed || (a.is_nan() != e.is_nan());
        if bad && worst.is_none_or(|w| err - allowed > w.3) {
            worst = Some((i, a as f64, e, err - allowed));
        }
    }
    match worst {
        None => Ok(()),
        Some((i, a, e, _)) => Err(format!(
            "{what}: element {i} (row-major) is {a}, expected {e} ({approx:?}: rtol {rtol}, atol {atol}·{scale:.3e})"
        )),
    }
}

/// Like [`check_close`], for results that are sums with cancellation (e.g. a
/// bias gradient `Σ gy` whose terms nearly cancel): the allowed error is
/// relative to `magnitude`, the same sum taken over the terms' absolute values,
/// which is what bounds floating-point summation error
/// (`|fl(Σx) − Σx| ≤ γ_n·Σ|x|`). The tolerances are the named ones.
pub fn check_close_to_magnitude<D: Dimension>(
    what: &str,
    actual: ArrayView<'_, f32, D>,
    expected: ArrayView<'_, f64, D>,
    magnitude: ArrayView<'_, f64, D>,
    approx: Approximation,
) -> Result<(), String> {
    if actual.shape() != expected.shape() || magnitude.shape() != expected.shape() {
        return Err(format!("{what}: shape {:?} vs expected {:?}", actual.shape(), expected.shape()));
    }
    let (rtol, atol) = approx.tolerances();
    let scale = magnitude.iter().fold(0.0f64, |m, &e| m.max(e.abs()));
    for (i, ((&a, &e), &m)) in actual.iter().zip(expected.iter()).zip(magnitude.iter()).enumerate() {
        let err = (a as f64 - e).abs();
        if err > rtol * m.abs() + atol * scale || a.is_nan() != e.is_nan() {
            return Err(format!(
                "{what}: element {i} (row-major) is {a}, expected {e} (terms' magnitude {m:.3e}; {approx:?}: rtol {rtol}, atol {atol}·{scale:.3e})"
            ));
        }
    }
    Ok(())
}

/// Panics with [`check_close`]'s message on failure.
#[track_caller]
pub fn assert_close<D: Dimension>(
    what: &str,
    actual: ArrayView<'_, f32, D>,
    expected: ArrayView<'_, f64, D>,
    approx: Approximation,
) {
    if let Err(msg) = check_close(what, actual, expected, approx) {
        panic!("{msg}");
    }
}
