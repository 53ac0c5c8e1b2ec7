//! Softmax cross-entropy with its fused backward.

use ndarray::{Array2, ArrayView2};

use crate::error::{KernelError, Result};

/// Loss, gradient and accuracy of a batch under softmax cross-entropy.
#[derive(Clone, Debug)]
pub struct SoftmaxCrossEntropy {
    /// `Σ_n −log softmax(z_n)[y_n]`: the *sum* over the batch (divide by
    /// `count` for the mean), so that sums from several workers add exactly.
    pub loss_sum: f64,
    /// `∂(loss_sum)/∂z = softmax(z) − onehot(y)`, `[N, classes]`.
    pub grad: Array2<f32>,
    /// Examples whose arg-max logit equals the label (first maximum wins).
    pub correct: usize,
    /// Batch size `N`.
    pub count: usize,
}

/// Numerically stable softmax cross-entropy over `logits [N, classes]`.
///
/// With `m = max_j z_j`: `log softmax(z)_j = z_j − m − log Σ_i exp(z_i − m)`.
/// The exponent sum is accumulated in f64.
///
/// # Errors
/// [`KernelError::Shape`] if `labels.len() != N`; [`KernelError::Label`] if a
/// label is `>= classes`.
pub fn softmax_cross_entropy(logits: ArrayView2<'_, f32>, labels: &[u32]) -> Result<SoftmaxCrossEntropy> {
    let (n, classes) = logits.dim();
    if labels.len() != n {
        return Err(KernelError::shape("labels", format!("[{n}] (one per logit row)"), &[labels.len()]));
    }
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
        return Err(KernelError::Label { index, label, classes });
    }
    let mut grad = Array2::<f32>::zeros((n, classes));
    let mut loss_sum = 0.0f64;
    let mut correct = 0;
    for ((z, mut g), &label) in logits.outer_iter().zip(grad.outer_iter_mut()).zip(labels) {
        let (mut arg, mut m) = (0usize, f32::NEG_INFINITY);
        for (j, &v) in z.iter().enumerate() {
            if v > m {
                (arg, m) = (j, v);
            }
        }
        let sum: f64 = z.iter().map(|&v| ((v - m) as f64).exp()).sum();
        let log_sum = sum.ln();
        loss_sum += log_sum - (z[label as usize] - m) as f64;
        for (gj, &v) in g.iter_mut().zip(z.iter()) {
            *gj = (((v - m) as f64 - log_sum).exp()) as f32;
        }
        g[label as usize] -= 1.0;
        correct += usize::from(arg == label as usize);
    }
    Ok(SoftmaxCrossEntropy { loss_sum, grad, correct, count: n })
}

/// Softmax probabilities of `logits [N, classes]`, row by row:
/// `p_j = exp(z_j − m) / Σ_i exp(z_i − m)` with `m = max_j z_j`, the sum in
/// f64 (as [`softmax_cross_entropy`]). Returns `[N, classes]`.
pub fn softmax(logits: ArrayView2<'_, f32>) -> Array2<f32> {
    let mut p = Array2::<f32>::zeros(logits.raw_dim());
    for (z, mut out) in logits.outer_iter().zip(p.outer_iter_mut()) {
        let m = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let sum: f64 = z.iter().map(|&v| ((v - m) as f64).exp()).sum();
        for (o, &v) in out.iter_mut().zip(z.iter()) {
            *o = (((v - m) as f64).exp() / sum) as f32;
        }
    }
    p
}

/// Index of the largest value (the first one on ties), as
/// [`softmax_cross_entropy`] counts a prediction; `None` when empty.
pub fn argmax(values: &[f32]) -> Option<usize> {
    if values.is_empty() {
        return None;
    }
    let (mut arg, mut m) = (0usize, f32::NEG_INFINITY);
    for (j, &v) in values.iter().enumerate() {
        if v > m {
            (arg, m) = (j, v);
        }
    }
    Some(arg)
}
