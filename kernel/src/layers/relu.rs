//! Rectified linear unit.

use ndarray::{ArrayView, ArrayViewMut, Dimension, Zip};

/// In place: `x ← max(0, x)`. NaN stays NaN.
pub fn relu_inplace<D: Dimension>(mut x: ArrayViewMut<'_, f32, D>) {
    x.mapv_inplace(|v| if v < 0.0 { 0.0 } else { v });
}

/// Backward through a ReLU, given the forward *output* `y`:
/// `∂L/∂x = ∂L/∂y · [y > 0]`, written over `grad`.
///
/// Using the output rather than the input lets a fused conv/dense + ReLU pass
/// keep only one tensor. At `x = 0` the subgradient 0 is used.
///
/// # Panics
/// If `grad` and `output` differ in shape (a kernel bug, not user input).
pub fn relu_backward<D: Dimension>(mut grad: ArrayViewMut<'_, f32, D>, output: ArrayView<'_, f32, D>) {
    Zip::from(&mut grad).and(&output).for_each(|g, &y| {
        if y <= 0.0 {
            *g = 0.0;
        }
    });
}
