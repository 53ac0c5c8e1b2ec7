//! Shared fixtures for the benchmarks: random VGG19 weights on disk, the
//! named table of VGG19's convolution shapes, and the Lambda memory size per vCPU count.
//!
//! Throughputs are reported by criterion as "elements per second" where one
//! element is one floating-point operation (or one byte, for bandwidth), so
//! `Gelem/s` reads as GFLOP/s (GB/s).

use std::path::PathBuf;

use lml_kernel::vgg::{random_weights, LayerKind, MODEL, VGG19};
use lml_kernel::weights::{WeightStore, MANIFEST};
use lml_kernel::{Cut, Preset};
use ndarray::Array4;
use rand::{Rng, SeedableRng};

/// The cargo target directory (benchmark fixtures are kept there).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// A directory of random VGG19 weights (to fc7), generated once under the
/// target directory and reused by later runs.
pub fn weights_dir() -> PathBuf {
    let dir = target_dir().join("bench-weights-vgg19");
    if !dir.join(MANIFEST).exists() {
        let w = random_weights(1, Cut::Fc7);
        WeightStore::write(&dir, MODEL, Preset::Torchvision, w.iter().map(|(n, a)| (n.clone(), a.view())))
            .expect("writing benchmark weights");
    }
    dir
}

/// One convolution of VGG19 at a given input side.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    /// Keras-style name, e.g. `block3_conv2`.
    pub name: &'static str,
    /// torchvision key, e.g. `features.12`.
    pub key: &'static str,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Spatial side of the layer's input (and output).
    pub side: usize,
}

impl ConvShape {
    /// FLOPs of one image through this layer.
    pub fn flops(&self) -> u64 {
        2 * (self.side * self.side * 9 * self.in_channels * self.out_channels) as u64
    }
}

/// The 16 convolutions of VGG19 with their spatial size for a `size × size` input.
pub fn conv_table(size: usize) -> Vec<ConvShape> {
    let mut side = size;
    let mut out = Vec::new();
    for layer in &VGG19 {
        match layer.kind {
            LayerKind::Conv { in_channels, out_channels } => {
                out.push(ConvShape { name: layer.keras, key: layer.name, in_channels, out_channels, side })
            }
            LayerKind::MaxPool => side /= 2,
            LayerKind::Dense { .. } => {}
        }
    }
    out
}

/// The smallest Lambda memory size (MB) that runs `vcpus` compute threads
/// with a full vCPU each, or the largest size if none does (6 threads get
/// 5.79 vCPUs at 10,240 MB): the rule is `lml_lambda::cost`'s.
pub fn lambda_memory_mb(vcpus: usize) -> u32 {
    use lml_lambda::cost::{MAX_MEMORY_MB, MB_PER_VCPU};
    u32::try_from(vcpus).unwrap_or(u32::MAX).saturating_mul(MB_PER_VCPU).min(MAX_MEMORY_MB)
}

/// A deterministic random batch `[n, c, s, s]` in `[-1, 1)`.
pub fn random_input(n: usize, c: usize, s: usize, seed: u64) -> Array4<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array4::from_shape_simple_fn((n, c, s, s), || rng.random_range(-1.0f32..1.0))
}
