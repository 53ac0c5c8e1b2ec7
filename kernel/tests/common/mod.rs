//! Shared helpers for the kernel's tests.
#![allow(dead_code)]

use ndarray::{Array, ArrayD, Dimension, IxDyn, ShapeBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Uniform values in `[-1, 1)`, from a seed.
pub fn random<Sh: ShapeBuilder>(shape: Sh, seed: u64) -> Array<f32, Sh::Dim>
where
    Sh::Dim: Dimension,
{
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

/// Integer values in `-4..=4`: products and sums stay exact in f32.
pub fn integers<Sh: ShapeBuilder>(shape: Sh, seed: u64) -> Array<f32, Sh::Dim>
where
    Sh::Dim: Dimension,
{
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array::from_shape_simple_fn(shape, || rng.random_range(-4i32..=4) as f32)
}

/// Central finite-difference gradient of `f` (evaluated in f64 from f32 outputs)
/// with respect to every element of `x`.
pub fn finite_difference(x: &ArrayD<f32>, eps: f32, mut f: impl FnMut(&ArrayD<f32>) -> f64) -> ArrayD<f64> {
    let mut xp = x.clone();
    let mut g = ArrayD::<f64>::zeros(IxDyn(x.shape()));
    for i in 0..x.len() {
        let orig = xp.as_slice().unwrap()[i];
        xp.as_slice_mut().unwrap()[i] = orig + eps;
        let up = f(&xp);
        xp.as_slice_mut().unwrap()[i] = orig - eps;
        let down = f(&xp);
        xp.as_slice_mut().unwrap()[i] = orig;
        g.as_slice_mut().unwrap()[i] = (up - down) / (2.0 * eps as f64);
    }
    g
}

/// `Σ y·r` in f64: a scalar loss whose gradient with respect to `y` is `r`.
pub fn dot<D: Dimension>(y: &Array<f32, D>, r: &Array<f32, D>) -> f64 {
    y.iter().zip(r.iter()).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Runs `case(kernel)` on every microkernel this CPU can execute (the
/// generic one always among them), each call returning how many cases it
/// checked; fails if a kernel checked none. Prints the kernels run, with
/// their case counts, and the ones this CPU cannot execute, so a test's
/// output says what it covered.
pub fn each_microkernel(test: &str, mut case: impl FnMut(lml_kernel::gemm::Microkernel) -> usize) {
    use lml_kernel::gemm::Microkernel;
    let runnable = Microkernel::runnable();
    assert!(runnable.contains(&Microkernel::Generic), "the generic kernel runs everywhere");
    let mut ran = Vec::new();
    for kernel in runnable {
        let cases = case(kernel);
        assert!(cases > 0, "{test}: no case ran on {kernel}");
        ran.push(format!("{kernel} ({cases} cases)"));
    }
    let missing: Vec<String> = Microkernel::unavailable().iter().map(|k| k.to_string()).collect();
    let missing = if missing.is_empty() { "none".to_string() } else { missing.join(", ") };
    eprintln!("{test}: ran on {}; not supported by this CPU: {missing}", ran.join(", "));
}
