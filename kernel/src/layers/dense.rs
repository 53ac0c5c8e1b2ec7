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
use crate::gemm::{dense_rows, sgemm, Microkernel};

/// Output features per forward task: a 64-row block of fc6 is 6.4 MB.
const FEATURES_PER_TASK: usize = 64;
/// Input features per backward task.
const INPUTS_PER_TASK: usize = 512;
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
/// Runs on the microkernel [`Microkernel::select`] picks.
///
/// # Errors
/// [`KernelError::Shape`] if `in` or `out` disagree between the arguments;
/// [`KernelError::Invalid`] if `LML_MICROKERNEL` names no kernel this CPU runs.
pub fn dense_forward(
    x: ArrayView2<'_, f32>,
    weight: ArrayView2<'_, f32>,
    bias: ArrayView1<'_, f32>,
    relu: bool,
) -> Result<Array2<f32>> {
    dense_forward_on(x, weight, bias, relu, Microkernel::select()?)
}

/// [`dense_forward`] on a given microkernel's instruction set.
///
/// # Errors
/// As [`dense_forward`], and [`KernelError::Invalid`] if this CPU cannot run `kernel`.
pub fn dense_forward_on(
    x: ArrayView2<'_, f32>,
    weight: ArrayView2<'_, f32>,
    bias: ArrayView1<'_, f32>,
    relu: bool,
    kernel: Microkernel,
) -> Result<Array2<f32>> {
    check_dense(x.shape(), weight.shape(), bias.len())?;
    kernel.require()?;
    let (n, out) = (x.nrows(), weight.nrows());
    let mut y = Array2::<f32>::zeros((n, out));
    if n == 0 || out == 0 {
        return Ok(y);
    }
    if out <= FEATURES_PER_TASK {
        // Few outputs (a classifier head): split the batch instead, in
        // groups small enough for the dot-product path, so that an example's
        // logits do not depend on the batch it came in.
        y.axis_chunks_iter_mut(Axis(0), DOT_MAX_BATCH)
            .into_par_iter()
            .zip(x.axis_chunks_iter(Axis(0), DOT_MAX_BATCH).into_par_iter())
            .for_each(|(y_blk, x_blk)| dense_block(kernel, x_blk, weight, bias, relu, y_blk));
    } else {
        // Many outputs (fc6, fc7): each task owns a block of W's rows and
        // streams it once.
        y.axis_chunks_iter_mut(Axis(1), FEATURES_PER_TASK)
            .into_par_iter()
            .zip(weight.axis_chunks_iter(Axis(0), FEATURES_PER_TASK).into_par_iter())
            .zip(bias.axis_chunks_iter(Axis(0), FEATURES_PER_TASK).into_par_iter())
            .for_each(|((y_blk, w_blk), b_blk)| dense_block(kernel, x, w_blk, b_blk, relu, y_blk));
    }
    Ok(y)
}

/// `y ← x·Wᵀ + b` (then ReLU) on one block, on the calling thread: a batch
/// of dot products that streams each row of W once, front to back, for up to
/// [`DOT_MAX_BATCH`] rows of `x` (on `kernel`); `sgemm` otherwise.
fn dense_block(
    kernel: Microkernel,
    x: ArrayView2<'_, f32>,
    w: ArrayView2<'_, f32>,
    b: ArrayView1<'_, f32>,
    relu: bool,
    mut y: ndarray::ArrayViewMut2<'_, f32>,
) {
    let done = x.nrows() <= DOT_MAX_BATCH
        && match (contiguous_rows(x), contiguous_rows(w)) {
            (Some(xr), Some(wr)) => {
                let mut tmp = vec![0.0f32; xr.len() * wr.len()];
                dense_rows(kernel, x.ncols(), &xr, &wr, &mut tmp);
                y.assign(&ArrayView2::from_shape((xr.len(), wr.len()), &tmp).expect("sized rows × cols"));
                true
            }
            _ => false,
        };
    if !done {
        sgemm(1.0, x, w.t(), 0.0, y.view_mut());
    }
    for mut row in y.outer_iter_mut() {
        row.zip_mut_with(&b, |v, &bb| {
            let z = *v + bb;
            *v = if relu && z < 0.0 { 0.0 } else { z };
        });
    }
}

/// The rows of `m` as slices, if each is contiguous.
fn contiguous_rows<'a>(m: ArrayView2<'a, f32>) -> Option<Vec<&'a [f32]>> {
    (0..m.nrows()).map(|i| m.index_axis_move(Axis(0), i).to_slice()).collect()
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
    // Column blocks of ∂L/∂W = gyᵀ·x: parallel whatever `out` is (a head has 10 rows).
    let mut gw = Array2::<f32>::zeros((out, inp));
    gw.axis_chunks_iter_mut(Axis(1), INPUTS_PER_TASK)
        .into_par_iter()
        .zip(x.axis_chunks_iter(Axis(1), INPUTS_PER_TASK).into_par_iter())
        .for_each(|(mut gw_blk, x_blk)| sgemm(1.0, grad_out.t(), x_blk, 0.0, gw_blk.view_mut()));
    let gb = grad_out.sum_axis(Axis(0));
    let gx = if need_input_grad {
        let mut gx = Array2::<f32>::zeros((n, inp));
        gx.axis_chunks_iter_mut(Axis(1), INPUTS_PER_TASK)
            .into_par_iter()
            .zip(weight.axis_chunks_iter(Axis(1), INPUTS_PER_TASK).into_par_iter())
            .for_each(|(mut gx_blk, w_blk)| sgemm(1.0, grad_out, w_blk, 0.0, gx_blk.view_mut()));
        gx
    } else {
        Array2::zeros((n, 0))
    };
    Ok(DenseGrads { input: gx, weight: gw, bias: gb })
}
