//! Single-threaded SGEMM: `C ← α·A·B + β·C`.
//!
//! Two paths. [`sgemm`] works on any `ndarray` views on any CPU and is the
//! general path (any strides, transposed operands, `α` and `β`). The packed
//! GEMM is the fast path for convolution: the filters are packed once, the
//! im2col matrix is packed as it is generated or read in place, and a
//! register-blocked microkernel does the arithmetic and finishes each tile
//! (bias, ReLU, masking) on its way out of the registers.
//!
//! ## The packed GEMM: one frame, every architecture through it
//!
//! Shaped as tract's `linalg` is: a frame, a generic kernel, per-architecture kernels.
//!
//! * [`tile`] — the microkernel contract: what a kernel computes over a
//!   packed A panel and `NR`-wide B rows found through an offset table, and
//!   how it stores a tile (`TileStore`: partial sums, bias, ReLU, column mask,
//!   rows). It imports nothing, so nothing cycles through it.
//! * `generic` (4 × 8, plain Rust, every target), `x86` (AVX-512 8 × 32,
//!   AVX2+FMA 6 × 16) and `neon` (aarch64, 8 × 12): the microkernels, each
//!   importing only the contract.
//! * [`microkernel`] — [`Microkernel`]: the list, run-time detection
//!   ([`Microkernel::detect`]), the `LML_MICROKERNEL` override
//!   ([`Microkernel::select`]) and the dispatch.
//! * [`pack`] — [`PackedA`] (filters, packed once per kernel) and
//!   [`PanelRow`] (im2col rows written straight into B panels).
//! * [`driver`] — the tile loops: [`gemm_packed`] (B generated row by row),
//!   [`gemm_gather`] (B read in place: the implicit convolution), and their
//!   fused forms writing through an [`Epilogue`].
//!
//! * `dot` — [`dense_rows`], the small-batch dense kernel (a batch of dot
//!   products streaming each weight row once), on the same kernel choice.
//!
//! Every kernel runs the same driver, so the implicit convolution and the
//! fused epilogue run on every machine; the tests run one suite over every
//! kernel the machine can execute, the generic one always among them.
//!
//! ## Tiles
//!
//! A tile is `MR` output channels × `NR` output pixels; the pixels are the
//! vector dimension (so the implicit convolution's B rows are contiguous
//! loads) and the channels are broadcast. Each tile keeps as many
//! accumulators as the register file allows next to one B row and the A
//! operand, with `MR` dividing VGG's channel counts where it can:
//!
//! | kernel | tile | accumulators | registers used | FMAs per B row |
//! |---|---|---|---|---|
//! | AVX-512 | 8 × 32 | 16 zmm | 16 + 2 B + 1 broadcast of 32 | 16 |
//! | AVX2+FMA | 6 × 16 | 12 ymm | 12 + 2 B + 1 broadcast of 16 | 12 |
//! | NEON | 8 × 12 | 24 q | 24 + 3 B + 2 A (lane-indexed FMA) of 32 | 24 |
//! | generic | 4 × 8 | 8 (SSE2) | 8 + 2 B + 1 of 16 xmm | 8 |
//!
//! Every count of independent FMAs exceeds its core's FMA latency × issue
//! width (8 on Zen 4 and Neoverse N1), so the FMA units never wait on a chain.
//! AVX2's 6 rows compute 66 rows for 64 channels (3%, 0.8% for 256 and 512),
//! the price of 16 registers; NEON's lane-indexed `fmla` needs no broadcast, so
//! its 32 registers hold 24 accumulators (see `neon.rs` for the reasoning).
//!
//! ## `sgemm`
//!
//! `A` is `m × k`, `B` is `k × n`, `C` is `m × n`; every operand may have any
//! strides (transposed views included). With `β = 0`, `C` is only written,
//! never read, so it may hold garbage (even NaN) on entry.
//!
//! The work is done by [`matrixmultiply`], which packs both operands into
//! cache-sized panels and runs a register-blocked microkernel chosen at run
//! time for the CPU (AVX2+FMA on x86-64, NEON on aarch64). It serves the
//! backward passes and large-batch dense layers. It runs on the calling
//! thread only: the kernel's parallelism is one level of rayon tasks above
//! it (across images, tiles or output features), never nested threads.

use ndarray::{ArrayView2, ArrayViewMut2};

mod dot;
pub mod driver;
mod generic;
pub mod microkernel;
#[cfg(target_arch = "aarch64")]
mod neon;
pub mod pack;
pub mod tile;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use dot::dense_rows;
pub use driver::{
    gemm_gather, gemm_gather_fused, gemm_packed, gemm_packed_fused, Epilogue, Scratch, Segment, SHORT_DEPTH,
};
pub use microkernel::{Microkernel, MICROKERNEL_ENV};
pub use pack::{PackedA, PanelRow, RowSink, KC};

/// `C ← α·A·B + β·C` on the calling thread.
///
/// # Shapes
/// `a: [m, k]`, `b: [k, n]`, `c: [m, n]`.
///
/// # Panics
/// If the inner or outer dimensions disagree: shapes are checked by the layers
/// that call this, so a mismatch here is a bug in the kernel, not bad input.
pub fn sgemm(alpha: f32, a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>, beta: f32, mut c: ArrayViewMut2<'_, f32>) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "sgemm: inner dimensions {k} and {k2} differ");
    assert_eq!(c.dim(), (m, n), "sgemm: output is {:?}, expected ({m}, {n})", c.dim());
    if m == 0 || n == 0 {
        return;
    }
    let [rsa, csa] = strides(a.strides());
    let [rsb, csb] = strides(b.strides());
    let [rsc, csc] = strides(c.strides());
    // SAFETY: the pointers come from live ndarray views whose dimensions were
    // checked above, the strides are those of the views (in elements), and
    // `c` is borrowed mutably, so it does not alias `a` or `b`. Views of zero
    // rows or columns are returned early; `k == 0` is handled by matrixmultiply
    // (it then computes `C ← β·C`).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            rsc,
            csc,
        );
    }
}

fn strides(s: &[isize]) -> [isize; 2] {
    [s[0], s[1]]
}

/// Nominal floating-point operations of an `m × k` by `k × n` product (one
/// multiply and one add per term).
pub const fn flops(m: usize, k: usize, n: usize) -> u64 {
    2 * m as u64 * k as u64 * n as u64
}

/// FLOPs one thread of the FMA-peak probe performs, whatever the ISA (the
/// step count is derived from it), so callers never hard-code a lane count:
/// about 0.03 s on one core of 116 GFLOP/s.
pub const FMA_PROBE_FLOPS_PER_THREAD: u64 = 3_840_000_000;

/// Which vectors the FMA-peak probe uses on this CPU: the widest it has
/// (`"avx512"`, `"avx2"`, `"neon"`, or `"portable"`).
pub fn fma_probe_isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return "avx2";
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        return "neon";
    }
    #[allow(unreachable_code)]
    "portable"
}

/// Measures this machine's FP32 multiply-add peak in GFLOP/s with `threads`
/// threads, each running independent FMA chains on the widest vectors the
/// CPU has ([`fma_probe_isa`]: AVX-512 where present, so a CPU with two
/// full-width FMA ports is measured at its real rate) with enough chains for
/// two FMA ports of 4-cycle latency (24 on AVX-512, 12 on AVX2, 16 on NEON),
/// [`FMA_PROBE_FLOPS_PER_THREAD`] FLOPs each.
///
/// This is the yardstick for "fraction of peak" figures; it is measured, not
/// taken from a data sheet, because turbo clocks and virtualisation change it.
pub fn fma_peak_gflops(threads: usize) -> f64 {
    let threads = threads.max(1);
    let start = std::time::Instant::now();
    let flops: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(fma_chains)).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    flops / start.elapsed().as_secs_f64() / 1e9
}

/// Runs the FMA chains of [`fma_probe_isa`] for [`FMA_PROBE_FLOPS_PER_THREAD`]; returns the FLOPs done.
fn fma_chains() -> f64 {
    let total = FMA_PROBE_FLOPS_PER_THREAD;
    #[cfg(target_arch = "x86_64")]
    match fma_probe_isa() {
        "avx512" => {
            // SAFETY: `fma_probe_isa` detected AVX-512F.
            std::hint::black_box(unsafe { x86::fma_chains_avx512(total / x86::FMA_CHAIN_FLOPS_AVX512) });
            return total as f64;
        }
        "avx2" => {
            // SAFETY: `fma_probe_isa` detected AVX2 and FMA.
            std::hint::black_box(unsafe { x86::fma_chains(total / x86::FMA_CHAIN_FLOPS_AVX2) });
            return total as f64;
        }
        _ => {}
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of the aarch64 baseline.
        std::hint::black_box(unsafe { neon::fma_chains(total / (2 * neon::FMA_CHAIN_LANES)) });
        return total as f64;
    }
    // Portable fallback: the compiler vectorises what it can.
    #[allow(unreachable_code)]
    {
        let mut acc = [[0.0f32; 8]; 12];
        for _ in 0..total / 192 {
            for a in acc.iter_mut() {
                for v in a.iter_mut() {
                    *v = v.mul_add(0.999_999, 1e-7);
                }
            }
            std::hint::black_box(&mut acc);
        }
        total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, ShapeBuilder};

    /// Integer-valued inputs make every product and partial sum exact in f32,
    /// so the fast path must match the f64 reference bit for bit.
    fn exact_case(m: usize, k: usize, n: usize, a_f: bool, b_f: bool, c_f: bool) {
        let a = Array2::from_shape_fn((m, k).set_f(a_f), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        let b = Array2::from_shape_fn((k, n).set_f(b_f), |(i, j)| ((i * 5 + j * 2) % 7) as f32 - 3.0);
        let mut c = Array2::from_elem((m, n).set_f(c_f), f32::NAN);
        sgemm(1.0, a.view(), b.view(), 0.0, c.view_mut());
        for i in 0..m {
            for j in 0..n {
                let r: f64 = (0..k).map(|l| a[[i, l]] as f64 * b[[l, j]] as f64).sum();
                assert_eq!(c[[i, j]] as f64, r, "m{m} k{k} n{n} at ({i},{j})");
            }
        }
    }

    #[test]
    fn exact_all_small_sizes_and_layouts() {
        for m in 0..12 {
            for k in 0..12 {
                for n in [0, 1, 5, 8, 13] {
                    for layout in 0..8 {
                        exact_case(m, k, n, layout & 1 != 0, layout & 2 != 0, layout & 4 != 0);
                    }
                }
            }
        }
    }

    #[test]
    fn accumulates_with_beta() {
        let a = Array2::from_elem((3, 4), 1.0f32);
        let b = Array2::from_elem((4, 2), 2.0f32);
        let mut c = Array2::from_elem((3, 2), 1.0f32);
        sgemm(0.5, a.view(), b.view(), 2.0, c.view_mut());
        assert!(c.iter().all(|&x| x == 0.5 * 8.0 + 2.0));
    }
}
