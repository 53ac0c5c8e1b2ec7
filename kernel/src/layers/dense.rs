//! Fully connected layer, `y = x·Wᵀ + b`, with optional fused ReLU.
//!
//! The weight is `[out, in]` (torchvision's `nn.Linear` layout), so a row of
//! `W` is one output feature's contiguous filter. The forward pass splits the
//! output features into column blocks, one rayon task each: every task streams
//! its own rows of `W` once, which is what matters for fc6 (411 MB of weights
//! at batch 1 is memory-bound, not compute-bound).

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::gemm::{dense_rows, sgemm};

/// Output features per forward task: a 64-row block of fc6 is 6.4 MB.
const FEATURES_PER_TASK: usize = 64;
/// Largest batch for the dot-product path; larger batches use `sgemm`, which
/// blocks the batch dimension and reuses each weight more.
const DOT_MAX_BATCH: usize = 16;

fn check_dense(x: &[usize], w: &[usize], b: usize) -> Result<()> {
    if w[1] != x[1] {
        return Err(KernelError::shape("dense weight", format!("[out, {}]", x[1]), w));
    }
    if b != w[0] {
        return Err(KernelError::shape("dense bias", format!("[{}]", w[0]), &[b]));
    }
    Ok(())
}

/// Dense forward: `y[n, o] = Σ_i x[n, i]·W[o, i] + b[o]`, then ReLU if `relu`.
///
/// # Arguments
/// * `x` — `[N, in]`; `weight` — `[out, in]`; `bias` — `[out]`.
///
/// # Shapes
/// Returns `[N, out]`.
///
/// # Errors
/// [`KernelError::Shape`] if `in` or `out` disagree between the arguments.
pub fn dense_forward(
    x: ArrayView2<'_, f32>,
    weight: ArrayView2<'_, f32>,
    bias: ArrayView1<'_, f32>,
    relu: bool,
) -> Result<Array2<f32>> {
    check_dense(x.shape(), weight.shape(), bias.len())?;
    let (n, out) = (x.nrows(), weight.nrows());
    let mut y = Array2::<f32>::zeros((n, out));
    if n == 0 || out == 0 {
        return Ok(y);
    }
    // Small batches (the frozen classifier at batch 1..32): a batch of dot
    // products that streams each row of W exactly once, front to back.
    let x_rows: Option<Vec<&[f32]>> =
        if n <= DOT_MAX_BATCH { x.outer_iter().map(|r| r.to_slice()).collect() } else { None };
    y.axis_chunks_iter_mut(Axis(1), FEATURES_PER_TASK)
        .into_par_iter()
        .zip(weight.axis_chunks_iter(Axis(0), FEATURES_PER_TASK).into_par_iter())
        .zip(bias.axis_chunks_iter(Axis(0), FEATURES_PER_TASK).into_par_iter())
        .for_each(|((mut y_blk, w_blk), b_blk)| {
            let w_rows: Option<Vec<&[f32]>> = w_blk.outer_iter().map(|r| r.to_slice()).collect();
            let done = match (&x_rows, &w_rows) {
                (Some(xr), Some(wr)) => {
                    let mut tmp = vec![0.0f32; n * wr.len()];
                    let ok = dense_rows(x.ncols(), xr, wr, &mut tmp);
                    if ok {
                        y_blk.assign(&ArrayView2::from_shape((n, wr.len()), &tmp).expect("sized n × cols"));
                    }
                    ok
                }
                _ => false,
            };
            if !done {
                sgemm(1.0, x, w_blk.t(), 0.0, y_blk.view_mut());
            }
            for mut row in y_blk.outer_iter_mut() {
                row.zip_mut_with(&b_blk, |v, &b| {
                    let z = *v + b;
                    *v = if relu && z < 0.0 { 0.0 } else { z };
                });
            }
        });
    Ok(y)
}

/// Gradients of a dense layer.
#[derive(Clone, Debug)]
pub struct DenseGrads {
    /// `∂L/∂x = gy·W`, `[N, in]`.
    pub input: Array2<f32>,
    /// `∂L/∂W = gyᵀ·x`, `[out, in]`, summed over the batch.
    pub weight: Array2<f32>,
    /// `∂L/∂b = Σ_n gy[n]`, `[out]`.
    pub bias: Array1<f32>,
}

/// Dense backward (without the fused ReLU: mask `grad_out` with
/// [`relu_backward`](crate::layers::relu::relu_backward) first when the forward used it).
///
/// # Arguments
/// * `x` — forward input `[N, in]`; `weight` — `[out, in]`; `grad_out` — `[N, out]`.
/// * `need_input_grad` — skip `∂L/∂x` (returned empty, `[N, 0]`) when the
///   input is not trainable, e.g. for a head on frozen features.
///
/// # Errors
/// [`KernelError::Shape`] if the shapes disagree.
pub fn dense_backward(
    x: ArrayView2<'_, f32>,
    weight: ArrayView2<'_, f32>,
    grad_out: ArrayView2<'_, f32>,
    need_input_grad: bool,
) -> Result<DenseGrads> {
    check_dense(x.shape(), weight.shape(), weight.nrows())?;
    if grad_out.dim() != (x.nrows(), weight.nrows()) {
        return Err(KernelError::shape(
            "dense grad_out",
            format!("[{}, {}]", x.nrows(), weight.nrows()),
            grad_out.shape(),
        ));
    }
    let (n, inp) = x.dim();
    let out = weight.nrows();
    let mut gw = Array2::<f32>::zeros((out, inp));
    gw.axis_chunks_iter_mut(Axis(0), FEATURES_PER_TASK)
        .into_par_iter()
        .zip(grad_out.axis_chunks_iter(Axis(1), FEATURES_PER_TASK).into_par_iter())
        .for_each(|(mut gw_blk, gy_blk)| sgemm(1.0, gy_blk.t(), x, 0.0, gw_blk.view_mut()));
    let gb = grad_out.sum_axis(Axis(0));
    let gx = if need_input_grad {
        let mut gx = Array2::<f32>::zeros((n, inp));
        gx.axis_chunks_iter_mut(Axis(1), 1024)
            .into_par_iter()
            .zip(weight.axis_chunks_iter(Axis(1), 1024).into_par_iter())
            .for_each(|(mut gx_blk, w_blk)| sgemm(1.0, grad_out, w_blk, 0.0, gx_blk.view_mut()));
        gx
    } else {
        Array2::zeros((n, 0))
    };
    Ok(DenseGrads { input: gx, weight: gw, bias: gb })
}
