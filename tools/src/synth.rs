//! Generated image datasets with learnable class structure.
//!
//! Class `c` of `k` is a sinusoidal grating at orientation `c·π/k`, tinted
//! with a class colour; each image gets a random phase, frequency jitter,
//! brightness and per-pixel noise. The classes are separable by orientation
//! and colour but no two images are the same, so a classifier has to learn.

use ndarray::{Array1, Array4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` RGB images `[n, size, size, 3]` and their labels in `0..classes`.
pub fn images(n: usize, classes: usize, size: usize, seed: u64) -> (Array4<u8>, Array1<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = Array4::<u8>::zeros((n, size, size, 3));
    let mut y = Array1::<u8>::zeros(n);
    for i in 0..n {
        let c = rng.random_range(0..classes);
        y[i] = c as u8;
        let theta = c as f32 * std::f32::consts::PI / classes as f32;
        let (dx, dy) = (theta.cos(), theta.sin());
        let freq = 0.5 + rng.random_range(-0.05..0.05f32);
        let phase = rng.random_range(0.0..std::f32::consts::TAU);
        let tint = [
            0.5 + 0.5 * (c as f32 * 2.1).sin(),
            0.5 + 0.5 * (c as f32 * 1.3 + 1.0).sin(),
            0.5 + 0.5 * (c as f32 * 0.7 + 2.0).sin(),
        ];
        let brightness = rng.random_range(0.7..1.0f32);
        for r in 0..size {
            for col in 0..size {
                let wave = 0.5 + 0.5 * ((r as f32 * dy + col as f32 * dx) * freq + phase).sin();
                for ch in 0..3 {
                    let noise = rng.random_range(-0.15..0.15f32);
                    let v = (wave * tint[ch] * brightness + noise).clamp(0.0, 1.0);
                    x[[i, r, col, ch]] = (v * 255.0).round() as u8;
                }
            }
        }
    }
    (x, y)
}
