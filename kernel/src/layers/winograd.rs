//! Winograd convolution for 3×3, stride-1 windows (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", CVPR 2016).
//!
//! Minimal filtering `F(m×m, 3×3)` computes an `m × m` block of outputs from
//! an `α × α` input patch (`α = m + 2`) with `α²` multiplications per
//! channel pair instead of `9·m²`:
//!
//! ```text
//! Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A        g: 3×3 filter, d: α×α patch, Y: m×m
//! ```
//!
//! Summed over input channels, the element-wise products become `α²`
//! independent matrix products, one per transformed position `ξ = (i, j)`:
//!
//! ```text
//! M_ξ[O, T] = U_ξ[O, C] · V_ξ[C, T]      U_ξ = (G g Gᵀ)_ξ per (o, c),  V_ξ = (Bᵀ d B)_ξ per (c, tile)
//! y[o, tile] = Aᵀ M[o, tile] A + b[o]     then ReLU (fused)
//! ```
//!
//! Two tiles ([`WinogradTile`]), with Lavin & Gray's matrices:
//!
//! | tile | α | interpolation points | multiplications vs direct |
//! |---|---|---|---|
//! | `F(2×2, 3×3)` | 4 | 0, 1, −1, ∞ | 16 for 36: 2.25× fewer |
//! | `F(4×4, 3×3)` | 6 | 0, 1, −1, 2, −2, ∞ | 36 for 144: 4× fewer |
//!
//! These are the well-conditioned small points: the transforms' entries stay
//! within ±8 (F4's `Aᵀ`) and `1/24` (its `G`). Measured on every VGG19 layer
//! at 224×224, one F(4×4) layer errs by at most 7.8e-6 of its output's
//! largest magnitude (the direct path: about 1e-6), the tolerance
//! [`Approximation::Winograd`](crate::approx::Approximation::Winograd) holds it to.
//! Larger tiles (F(6×6, 3×3) needs the points ±1/2 as well) lose accuracy
//! fast and are not offered.
//!
//! # Data flow
//! * **Filters**: `U_ξ` computed once (in f64, rounded to f32) and packed for
//!   the extractor's [`Microkernel`] as `α²` [`PackedA`]s ([`WinogradFilters`]):
//!   `α²/9` times the direct path's packed filters (4× for F4, 1.78× for F2).
//! * **Tasks**: the output tiles, in order `(image, tile row, tile column)`,
//!   are cut into tasks of whole microkernel panels, spread over the rayon pool.
//! * **Input transform**: read from the layer's [`PaddedLayout`] (the frame
//!   supplies the zero padding; patches reaching past the frame read zeros),
//!   first down the `α` rows of a strip of tiles (contiguous along `x`),
//!   then, with the `m` phases of `x` split apart so that neighbouring tiles
//!   are neighbouring lanes, along the patches' columns for all the task's
//!   tiles at once, in blocks of 8 lanes written straight into the
//!   microkernel's packed B panels (`V_ξ` as `NR`-wide panels).
//! * **Products**: `α²` GEMMs through the packed frame
//!   ([`gemm_gather_fused`], B read in place from the panels), every
//!   microkernel (AVX-512, AVX2, NEON, generic), each `M_ξ` stored so that
//!   one output channel's `α²` products over the task's tiles are contiguous.
//! * **Output transform**: fused with bias and ReLU and stored straight into
//!   the output's [`PaddedLayout`] (the next convolution's input), frame
//!   zeros included, so layers chain as the implicit GEMM's do.

use ndarray::{Array3, ArrayView1, ArrayView4, ArrayViewMut2, Axis, ShapeBuilder};
use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::gemm::{gemm_gather_fused, Epilogue, Microkernel, PackedA, Segment};
use crate::geometry::Window2d;
use crate::layers::padded::PaddedLayout;

/// Output tile of a Winograd convolution, `F(m×m, 3×3)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WinogradTile {
    /// `F(2×2, 3×3)`: 4×4 patches, 16 products per tile.
    F2,
    /// `F(4×4, 3×3)`: 6×6 patches, 36 products per tile.
    F4,
}

/// A tile's transforms as matrices (for the filter transform and the tests):
/// `bt` is `Bᵀ` (`α × α`), `g` is `G` (`α × 3`), `at` is `Aᵀ` (`m × α`).
#[derive(Clone, Copy, Debug)]
pub struct WinogradMatrices {
    pub bt: &'static [&'static [f64]],
    pub g: &'static [[f64; 3]],
    pub at: &'static [&'static [f64]],
}

const F2_MATRICES: WinogradMatrices = WinogradMatrices {
    bt: &[&[1.0, 0.0, -1.0, 0.0], &[0.0, 1.0, 1.0, 0.0], &[0.0, -1.0, 1.0, 0.0], &[0.0, 1.0, 0.0, -1.0]],
    g: &[[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]],
    at: &[&[1.0, 1.0, 1.0, 0.0], &[0.0, 1.0, -1.0, -1.0]],
};

const F4_MATRICES: WinogradMatrices = WinogradMatrices {
    bt: &[
        &[4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        &[0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        &[0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        &[0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        &[0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        &[0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ],
    g: &[
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ],
    at: &[
        &[1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        &[0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        &[0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        &[0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ],
};

impl WinogradTile {
    /// Every tile, largest first.
    pub const ALL: [WinogradTile; 2] = [WinogradTile::F4, WinogradTile::F2];

    /// Outputs per tile side, `m`.
    pub const fn m(self) -> usize {
        match self {
            WinogradTile::F2 => 2,
            WinogradTile::F4 => 4,
        }
    }

    /// Patch side, `α = m + 2`.
    pub const fn alpha(self) -> usize {
        self.m() + 2
    }

    /// The transforms as matrices.
    pub const fn matrices(self) -> WinogradMatrices {
        match self {
            WinogradTile::F2 => F2_MATRICES,
            WinogradTile::F4 => F4_MATRICES,
        }
    }

    /// `"f2"` or `"f4"`.
    pub const fn name(self) -> &'static str {
        match self {
            WinogradTile::F2 => "f2",
            WinogradTile::F4 => "f4",
        }
    }

    /// Multiply-adds of the products per output, relative to the direct
    /// convolution's 9, for an `h × w` output: `α²/9m²`, times the waste of
    /// the partial tiles at the right and bottom edges.
    pub fn work_ratio(self, (h, w): (usize, usize)) -> f64 {
        let (m, a) = (self.m(), self.alpha());
        let tiles = h.div_ceil(m) * w.div_ceil(m);
        (tiles * a * a) as f64 / (9 * h * w).max(1) as f64
    }
}

impl std::fmt::Display for WinogradTile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.m();
        write!(f, "F({m}×{m},3×3)")
    }
}

/// Filters transformed for one [`WinogradTile`] and packed for one
/// [`Microkernel`]: `α²` matrices `U_ξ [O, C]`, `ξ = i·α + j`, with
/// `U_ξ[o, c] = (G·W[o, c]·Gᵀ)[i, j]` (computed in f64, rounded once).
#[derive(Clone, Debug)]
pub struct WinogradFilters {
    tile: WinogradTile,
    out_channels: usize,
    in_channels: usize,
    u: Vec<PackedA>,
}

impl WinogradFilters {
    /// Transforms and packs 3×3 filters `[O, C, 3, 3]` (any strides).
    ///
    /// # Errors
    /// [`KernelError::Shape`] if the filters are not 3×3;
    /// [`KernelError::Invalid`] if `kernel` is not available on this CPU.
    pub fn new(weight: ArrayView4<'_, f32>, tile: WinogradTile, kernel: Microkernel) -> Result<Self> {
        kernel.require()?;
        let (o, c, kh, kw) = weight.dim();
        if (kh, kw) != (3, 3) {
            return Err(KernelError::shape("winograd filters", "[O, C, 3, 3]", weight.shape()));
        }
        let g = tile.matrices().g;
        let a = tile.alpha();
        // [O, C, α²], one output channel per task.
        let mut u = Array3::<f32>::zeros((o, c, a * a));
        u.outer_iter_mut().into_par_iter().enumerate().for_each(|(oo, mut per_o)| {
            for (cc, mut dst) in per_o.outer_iter_mut().enumerate() {
                let f = |ky: usize, kx: usize| weight[[oo, cc, ky, kx]] as f64;
                // tmp = G·g (α × 3), then U = tmp·Gᵀ.
                let mut tmp = [[0.0f64; 3]; 6];
                for (i, row) in g.iter().enumerate() {
                    for (kx, t) in tmp[i].iter_mut().enumerate() {
                        *t = (0..3).map(|ky| row[ky] * f(ky, kx)).sum();
                    }
                }
                for i in 0..a {
                    for j in 0..a {
                        let v: f64 = (0..3).map(|kx| tmp[i][kx] * g[j][kx]).sum();
                        dst[i * a + j] = v as f32;
                    }
                }
            }
        });
        let u = (0..a * a).into_par_iter().map(|xi| PackedA::pack(u.index_axis(Axis(2), xi), kernel)).collect();
        Ok(WinogradFilters { tile, out_channels: o, in_channels: c, u })
    }

    /// The tile these filters are transformed for.
    pub fn tile(&self) -> WinogradTile {
        self.tile
    }

    /// The microkernel these filters are packed for.
    pub fn kernel(&self) -> Microkernel {
        self.u[0].kernel()
    }

    /// `O`.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// `C`.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }
}

/// Target output tiles per task of [`conv2d_winograd`] (see `tiles_per_task`):
/// measured on VGG19's layers at 224×224, 64 to 512 tiles run within the
/// noise of a loaded machine, 32 slower (every task streams all `α²` filter
/// matrices, 9.4 MB for a 256-channel layer at F(4×4)).
pub const TASK_TILES: usize = 128;

/// Tiles per task: a multiple of the panel width `nr` from half `target`
/// (or less, if there are too few tiles to give every thread a task) to
/// `target` for which the thread with the most tasks has the fewest tiles
/// (within 2%), the widest such. A task reads every `U_ξ` once (all the
/// layer's transformed filters), so narrower tasks read them more often.
fn tiles_per_task(total: usize, threads: usize, nr: usize, target: usize) -> usize {
    let threads = threads.max(1);
    let most = target.div_ceil(nr).max(1);
    let least = most.div_ceil(2).min(total.div_ceil(nr).div_ceil(threads)).max(1);
    let widths = (least..=most).map(|u| u * nr);
    let slowest = |w: usize| total.div_ceil(w).div_ceil(threads) * w;
    let best = widths.clone().map(slowest).min().expect("a non-empty range");
    widths.filter(|&w| slowest(w) * 100 <= best * 102).max().expect("the best width qualifies")
}

/// Lanes a transform works on at once: one block of tiles (or strip
/// columns). Fixed-size blocks, not slices, so that the compiler vectorises
/// every step without runtime alias checks (two SSE or one AVX register).
const L: usize = 8;
type Lanes = [f32; L];

#[inline(always)]
fn add(a: Lanes, b: Lanes) -> Lanes {
    std::array::from_fn(|l| a[l] + b[l])
}

#[inline(always)]
fn sub(a: Lanes, b: Lanes) -> Lanes {
    std::array::from_fn(|l| a[l] - b[l])
}

#[inline(always)]
fn scale(k: f32, a: Lanes) -> Lanes {
    std::array::from_fn(|l| k * a[l])
}

#[inline(always)]
fn load(src: &[f32], at: usize) -> Lanes {
    src[at..at + L].try_into().expect("L floats")
}

#[inline(always)]
fn store(dst: &mut [f32], at: usize, v: Lanes) {
    dst[at..at + L].copy_from_slice(&v);
}

/// The 1-D transforms on blocks of lanes, written out so that each output
/// is a short sum of its nonzero terms (the tests check them against
/// [`WinogradMatrices`]). Arrays are sized for the largest tile; a tile
/// reads and writes its first `A` (or `M`) rows.
trait Transform {
    const M: usize;
    const A: usize;
    /// `out[j] = Σ_r Bᵀ[j][r]·d[r]`.
    fn input(d: &[Lanes; 6]) -> [Lanes; 6];
    /// `out[a] = Σ_i Aᵀ[a][i]·x[i]`.
    fn output(x: &[Lanes; 6]) -> [Lanes; 4];
}

struct F2T;
struct F4T;

const ZERO: Lanes = [0.0; L];

impl Transform for F2T {
    const M: usize = 2;
    const A: usize = 4;

    #[inline(always)]
    fn input(d: &[Lanes; 6]) -> [Lanes; 6] {
        let [x0, x1, x2, x3, ..] = *d;
        [sub(x0, x2), add(x1, x2), sub(x2, x1), sub(x1, x3), ZERO, ZERO]
    }

    #[inline(always)]
    fn output(x: &[Lanes; 6]) -> [Lanes; 4] {
        let [x0, x1, x2, x3, ..] = *x;
        [add(add(x0, x1), x2), sub(sub(x1, x2), x3), ZERO, ZERO]
    }
}

impl Transform for F4T {
    const M: usize = 4;
    const A: usize = 6;

    #[inline(always)]
    fn input(d: &[Lanes; 6]) -> [Lanes; 6] {
        let [x0, x1, x2, x3, x4, x5] = *d;
        let (x42, x13) = (sub(x4, x2), sub(x1, x3));
        [
            add(sub(scale(4.0, x0), scale(5.0, x2)), x4),
            sub(add(x3, x4), scale(4.0, add(x1, x2))),
            add(sub(x4, x3), scale(4.0, sub(x1, x2))),
            sub(x42, scale(2.0, x13)),
            add(x42, scale(2.0, x13)),
            add(sub(scale(4.0, x1), scale(5.0, x3)), x5),
        ]
    }

    #[inline(always)]
    fn output(x: &[Lanes; 6]) -> [Lanes; 4] {
        let [x0, x1, x2, x3, x4, x5] = *x;
        let (s12, d12) = (add(x1, x2), sub(x1, x2));
        let (s34, d34) = (add(x3, x4), sub(x3, x4));
        [
            add(add(x0, s12), s34),
            add(d12, scale(2.0, d34)),
            add(s12, scale(4.0, s34)),
            add(add(d12, scale(8.0, d34)), x5),
        ]
    }
}

/// A run of tiles of one tile row: tiles `q0..q1` of row `ty` of image
/// `img`, the task's columns `t0..t0 + q1 − q0`, and the output it fills:
/// per output row of the tile row, the `[O, cols]` view of that row's padded
/// columns `col0..` (frame columns included at the row's ends).
struct Piece<'a> {
    img: usize,
    ty: usize,
    q0: usize,
    q1: usize,
    t0: usize,
    col0: usize,
    rows: Vec<ArrayViewMut2<'a, f32>>,
}

/// A task: `tiles` consecutive output tiles, as pieces.
struct Task<'a> {
    tiles: usize,
    pieces: Vec<Piece<'a>>,
}

thread_local! {
    /// Each pool thread's buffers, kept across calls: they reach ~20 MB at
    /// VGG's 512-channel layers, and fresh pages cost a fault each on first
    /// touch (0.43 ms per MB on the development VM, see the `peak` bench).
    /// Only `run_task` borrows it, and it spawns no rayon work, so the
    /// borrow is never re-entered.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Per-thread buffers, grown as needed and reused across tasks and calls.
#[derive(Default)]
struct Scratch {
    /// Transformed input as packed B panels, panel by panel, `α²` panels
    /// (one per `V_ξ`) of `C × NR` each: `V_ξ[c, t]` at
    /// `((t / NR)·α² + ξ)·C·NR + c·NR + t % NR`.
    v: Vec<f32>,
    /// Products `M_ξ[o, t]` at `o·α²·T + ξ·T + t`, and `L` floats of slack
    /// (the output transform reads whole blocks of lanes).
    m: Vec<f32>,
    /// Vertical pass of a strip: `α` rows.
    t1: Vec<f32>,
    /// Zeros standing for patch rows past the frame.
    zeros: Vec<f32>,
    /// Patch columns over the task's tiles: `α²` rows.
    cols: Vec<f32>,
    /// The output transform's first pass (`α·m` rows over the task's
    /// tiles) and second (`m²` rows).
    h: Vec<f32>,
    y: Vec<f32>,
    panels: Vec<usize>,
    /// Where each tile's patch lies (the x86 input transform).
    #[cfg(target_arch = "x86_64")]
    patches: Vec<super::winograd_x86::Patch>,
    /// Partial sums of the products between k-blocks (`C` > [`KC`](crate::gemm::KC)).
    partial: Vec<f32>,
}

/// What every task of one convolution reads.
struct Layer<'a> {
    input: &'a [f32],
    lin: PaddedLayout,
    /// Frame offset of the patches: padded coordinates of patch `(0, 0)` of tile `(0, 0)`.
    off: (usize, usize),
    filters: &'a WinogradFilters,
    bias: &'a [f32],
    relu: bool,
    /// Output size, output frame's left columns.
    oh: usize,
    ow: usize,
    left: usize,
    /// B row offsets: `c·NR`.
    offsets: Vec<usize>,
    /// `[O]` zeros: the products are stored without bias (it comes after the output transform).
    zero_bias: Vec<f32>,
    /// Whether F(4×4)'s transforms run the x86 AVX2 + FMA code: for the x86
    /// microkernels (the generic one keeps the portable transforms, which
    /// its tests then cover on x86 too); never off x86.
    x86_f4: bool,
}

impl Layer<'_> {
    /// Where a piece's outputs go, for tiles of `m × m` outputs: columns
    /// `lo..hi` of its view rows (the rest of each row is frame, zeros) and
    /// its first `rows` view rows.
    fn piece_outputs(&self, piece: &Piece<'_>, m: usize) -> (usize, usize, usize) {
        let (x0, x1) = (m * piece.q0, (m * piece.q1).min(self.ow));
        let (lo, hi) = (self.left + x0 - piece.col0, self.left + x1 - piece.col0);
        (lo, hi, m.min(self.oh - m * piece.ty))
    }
}

/// Winograd convolution (3×3, stride 1) from one [`PaddedLayout`] to
/// another, with fused bias and ReLU: `out = relu?(conv(x, W) + b)`.
///
/// # Arguments
/// * `input`, `in_layout` — activations `[N, C, H, W]` with frame zeros,
///   `in_layout.top ≥ window.pad` (the frame supplies the padding; reads
///   past the frame are zeros).
/// * `filters` — from [`WinogradFilters::new`] of `[O, C, 3, 3]`.
/// * `bias` — `[O]`.
/// * `window` — 3×3, stride 1, any padding.
/// * `out`, `out_layout` — `[N, O, OH, OW]` in any consistent padded layout
///   (e.g. [`PaddedLayout::conv_output`], the next convolution's input);
///   every float of its [`len`](PaddedLayout::len) is written (zeros outside the interior).
///
/// # Errors
/// [`KernelError::Invalid`] if the window is not 3×3 with stride 1 or does
/// not fit the input, or a layout does not fit its buffer or the
/// convolution; [`KernelError::Shape`] if the filters or bias disagree with
/// the layouts.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_winograd(
    input: &[f32],
    in_layout: &PaddedLayout,
    filters: &WinogradFilters,
    bias: ArrayView1<'_, f32>,
    window: &Window2d,
    relu: bool,
    out: &mut [f32],
    out_layout: &PaddedLayout,
) -> Result<()> {
    conv2d_winograd_tasks(input, in_layout, filters, bias, window, relu, out, out_layout, TASK_TILES)
}

/// [`conv2d_winograd`] with a chosen target of tiles per task (for the
/// benchmarks that choose it).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn conv2d_winograd_tasks(
    input: &[f32],
    in_layout: &PaddedLayout,
    filters: &WinogradFilters,
    bias: ArrayView1<'_, f32>,
    window: &Window2d,
    relu: bool,
    out: &mut [f32],
    out_layout: &PaddedLayout,
    task_tiles: usize,
) -> Result<()> {
    let PaddedLayout { n, c, h, w, .. } = *in_layout;
    in_layout.check("winograd input", input.len())?;
    out_layout.check("winograd output", out.len())?;
    if window.kernel != (3, 3) || window.stride != (1, 1) {
        return Err(KernelError::invalid("winograd window", format!("{window:?} is not 3×3 with stride 1")));
    }
    window.validate(h, w)?;
    let o = filters.out_channels;
    if (filters.in_channels, bias.len()) != (c, o) {
        return Err(KernelError::shape(
            "winograd filters and bias",
            format!("[O, {c}] and [O]"),
            &[o, filters.in_channels, bias.len()],
        ));
    }
    if in_layout.top.0 < window.pad.0 || in_layout.top.1 < window.pad.1 {
        return Err(KernelError::invalid(
            "winograd input",
            format!("{in_layout:?} has less frame than the padding {:?}", window.pad),
        ));
    }
    let (oh, ow) = (window.out_h(h), window.out_w(w));
    if (out_layout.n, out_layout.c, out_layout.h, out_layout.w) != (n, o, oh, ow) {
        return Err(KernelError::invalid("winograd output", format!("{out_layout:?} is not [{n}, {o}, {oh}, {ow}]")));
    }
    let out = &mut out[..out_layout.len()];
    if n * oh * ow == 0 || o == 0 {
        out.fill(0.0);
        return Ok(());
    }
    match filters.tile {
        WinogradTile::F2 => run::<F2T>(input, in_layout, filters, bias, window, relu, out, out_layout, task_tiles),
        WinogradTile::F4 => run::<F4T>(input, in_layout, filters, bias, window, relu, out, out_layout, task_tiles),
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run<T: Transform>(
    input: &[f32],
    lin: &PaddedLayout,
    filters: &WinogradFilters,
    bias: ArrayView1<'_, f32>,
    window: &Window2d,
    relu: bool,
    out: &mut [f32],
    lout: &PaddedLayout,
    task_tiles: usize,
) {
    let m = T::M;
    let (n, h, w) = (lin.n, lin.h, lin.w);
    let (oh, ow) = (window.out_h(h), window.out_w(w));
    let o = filters.out_channels;
    let nr = filters.kernel().nr();
    let (tiles_y, tiles_x) = (oh.div_ceil(m), ow.div_ceil(m));
    let total = n * tiles_y * tiles_x;
    let width = tiles_per_task(total, rayon::current_num_threads(), nr, task_tiles);

    // Cut the tiles into tasks and the output into the views they fill,
    // walking the [O, plane] output in column order: the frame rows between
    // tile rows are zeroed here, each tile row's columns go to the pieces
    // that cover it (the first and last piece of a row also own its frame columns).
    let mut tasks: Vec<Task<'_>> =
        (0..total.div_ceil(width)).map(|k| Task { tiles: width.min(total - k * width), pieces: Vec::new() }).collect();
    let (wp, image, top) = (lout.wp, lout.image(), lout.top);
    let mut rest = ArrayViewMut2::from_shape((o, lout.plane), out).expect("o planes of the output");
    let mut cursor = 0;
    let mut take = |until: usize, len: usize| {
        let view = std::mem::replace(&mut rest, ArrayViewMut2::from_shape((0, 0), &mut []).expect("empty"));
        let (mut gap, view) = view.split_at(Axis(1), until - cursor);
        gap.fill(0.0);
        let (piece, later) = view.split_at(Axis(1), len);
        rest = later;
        cursor = until + len;
        piece
    };
    for img in 0..n {
        for ty in 0..tiles_y {
            let band = img * tiles_y + ty;
            // The tasks over this tile row: (task, q0, q1).
            let first = band * tiles_x;
            let mut runs = Vec::new();
            let mut q = 0;
            while q < tiles_x {
                let k = (first + q) / width;
                let q1 = ((k + 1) * width - first).min(tiles_x);
                runs.push((k, q, q1));
                q = q1;
            }
            let bounds: Vec<(usize, usize)> = runs
                .iter()
                .map(|&(_, q0, q1)| {
                    let c0 = if q0 == 0 { 0 } else { top.1 + m * q0 };
                    let c1 = if q1 == tiles_x { wp } else { top.1 + m * q1 };
                    (c0, c1)
                })
                .collect();
            let mut views: Vec<Vec<ArrayViewMut2<'_, f32>>> = runs.iter().map(|_| Vec::new()).collect();
            let rows = m.min(oh - m * ty);
            for a in 0..rows {
                let start = img * image + (top.0 + m * ty + a) * wp;
                let mut row = take(start, wp);
                for (r, &(c0, c1)) in bounds.iter().enumerate() {
                    let (head, tail) = row.split_at(Axis(1), c1 - c0);
                    views[r].push(head);
                    row = tail;
                }
            }
            for (&(k, q0, q1), (views, &(c0, _))) in runs.iter().zip(views.into_iter().zip(&bounds)) {
                let t0 = first + q0 - k * width;
                tasks[k].pieces.push(Piece { img, ty, q0, q1, t0, col0: c0, rows: views });
            }
        }
    }
    take(lout.plane, 0);

    let bias = bias.to_vec();
    let layer = Layer {
        input,
        lin: *lin,
        off: (lin.top.0 - window.pad.0, lin.top.1 - window.pad.1),
        filters,
        bias: &bias,
        relu,
        oh,
        ow,
        left: top.1,
        offsets: (0..filters.in_channels).map(|ch| ch * nr).collect(),
        zero_bias: vec![0.0; o],
        x86_f4: x86_f4(filters.kernel()),
    };
    tasks.into_par_iter().for_each(|mut task| {
        SCRATCH.with(|s| run_task::<T>(&layer, &mut task, &mut s.borrow_mut()));
    });
}

/// `buf` grown to at least `len` floats, its first `len`.
fn grown(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

fn run_task<T: Transform>(layer: &Layer<'_>, task: &mut Task<'_>, s: &mut Scratch) {
    let a2 = T::A * T::A;
    let (c, o) = (layer.filters.in_channels, layer.filters.out_channels);
    let nr = layer.filters.kernel().nr();
    let tiles = task.tiles;
    let t_pad = tiles.next_multiple_of(nr);
    let npanels = t_pad / nr;
    let v_len = npanels * c * a2 * nr;
    grown(&mut s.v, v_len);
    let x86 = T::M == 4 && layer.x86_f4;
    if x86 {
        input_f4_x86(layer, task, t_pad, s);
    } else {
        input_transform::<T>(layer, task, t_pad, s);
    }
    // V_ξ's panel jr starts at (jr·α² + ξ)·C·NR, its row c at c·NR from there.
    s.panels.clear();
    s.panels.extend((0..a2).flat_map(|xi| (0..npanels).map(move |jr| (jr * a2 + xi) * c * nr)));
    // M_ξ[o, t] at o·α²·T + ξ·T + t: one output channel's products are contiguous.
    let m_len = a2 * o * tiles;
    let mbuf = grown(&mut s.m, m_len + L);
    for xi in 0..a2 {
        let panels = &s.panels[xi * npanels..(xi + 1) * npanels];
        let view = ArrayViewMut2::from_shape((o, tiles).strides((a2 * tiles, 1)), &mut mbuf[xi * tiles..m_len])
            .expect("M_ξ inside the products");
        let mut segments = [Segment { col0: 0, view }];
        let mut epilogue = Epilogue { bias: &layer.zero_bias, relu: false, segments: &mut segments, keep: None };
        gemm_gather_fused(
            &layer.filters.u[xi],
            tiles,
            &s.v[..v_len],
            panels,
            &layer.offsets,
            &mut epilogue,
            &mut s.partial,
        );
    }
    if x86 {
        output_f4_x86(layer, task, s);
    } else {
        output_transform::<T>(layer, task, s);
    }
}

/// `V_ξ[c, t] = (Bᵀ d B)[i, j]` for every channel and tile of the task, into
/// `s.v` as packed B panels (see [`Scratch::v`]).
///
/// Per channel: each piece's strip goes down its `α` rows (contiguous along
/// `x`), and column `s` of every patch (phase `s % m` of `x`, from tile
/// `s / m` on) goes to row `(i, s)` of `cols` at the tile's task index; then
/// one pass along the patches' columns runs over all the task's tiles in
/// blocks of `L` lanes, which land in whole runs of the panels.
#[inline(never)]
fn input_transform<T: Transform>(layer: &Layer<'_>, task: &Task<'_>, t_pad: usize, s: &mut Scratch) {
    let (m, a) = (T::M, T::A);
    let lin = &layer.lin;
    let (hp, wp) = (lin.hp, lin.wp);
    let c_in = layer.filters.in_channels;
    let nr = layer.filters.kernel().nr();
    // Rows (i, s) of patch columns over the task's tiles, two blocks of
    // slack (a piece's copies write whole blocks from its first tile; the
    // next piece overwrites what lands on its tiles).
    let stride = t_pad + 2 * L;
    let widest = task.pieces.iter().map(|p| p.q1 - p.q0).max().unwrap_or(0);
    let x_max = m * (widest.next_multiple_of(L) + L);
    let cols_buf = grown(&mut s.cols, a * a * stride);
    let t1 = grown(&mut s.t1, a * x_max);
    let zeros = grown(&mut s.zeros, x_max);
    zeros.fill(0.0);
    let zeros = &*zeros;
    for ch in 0..c_in {
        for piece in &task.pieces {
            let nq = piece.q1 - piece.q0;
            // Strip columns x = 0..m·nq + 2 map to padded columns off.1 + m·q0 + x;
            // those at or past the frame's edge (`cols`) and the rest of the
            // row (whole blocks of tiles, and one more) are zeros.
            let x_pad = m * (nq.next_multiple_of(L) + L);
            let col = layer.off.1 + m * piece.q0;
            let cols = (m * nq + 2).min(wp.saturating_sub(col));
            let base = ch * lin.plane + piece.img * lin.image();
            // Vertical pass, down the α rows of the strip (patch rows past the frame are zeros).
            let rows: [&[f32]; 6] = std::array::from_fn(|r| {
                let pr = m * piece.ty + layer.off.0 + r;
                if r < a && pr < hp && cols > 0 {
                    &layer.input[base + pr * wp + col..][..cols]
                } else {
                    &zeros[..cols]
                }
            });
            let whole = cols - cols % L;
            for x in (0..whole).step_by(L) {
                let d: [Lanes; 6] = std::array::from_fn(|r| if r < a { load(rows[r], x) } else { ZERO });
                for (i, v) in T::input(&d).iter().take(a).enumerate() {
                    store(t1, i * x_pad + x, *v);
                }
            }
            if whole < cols {
                let d: [Lanes; 6] = std::array::from_fn(|r| {
                    let mut v = ZERO;
                    if r < a {
                        v[..cols - whole].copy_from_slice(&rows[r][whole..]);
                    }
                    v
                });
                for (i, v) in T::input(&d).iter().take(a).enumerate() {
                    store(t1, i * x_pad + whole, *v);
                }
            }
            let filled = cols.next_multiple_of(L);
            for row in t1[..a * x_pad].chunks_exact_mut(x_pad) {
                row[filled..].fill(0.0);
            }
            // Patch column s < m of tile q is t1[i][m·q + s] (phase s); column
            // s ≥ m is column s − m of tile q + 1.
            for (i, row) in t1[..a * x_pad].chunks_exact(x_pad).enumerate() {
                for (g, xs) in row.chunks_exact(m * L).enumerate() {
                    for k in 0..m {
                        let v: Lanes = std::array::from_fn(|q| xs[m * q + k]);
                        store(cols_buf, (i * a + k) * stride + piece.t0 + g * L, v);
                    }
                }
                for k in m..a {
                    let from = (i * a + k - m) * stride + piece.t0 + 1;
                    let to = (i * a + k) * stride + piece.t0;
                    for u in (0..nq).step_by(L) {
                        let v = load(cols_buf, from + u);
                        store(cols_buf, to + u, v);
                    }
                }
            }
        }
        // Along the patch columns, over every tile of the task, panel by panel.
        for i in 0..a {
            let rows = &cols_buf[i * a * stride..(i + 1) * a * stride];
            for t in (0..t_pad).step_by(L) {
                let d: [Lanes; 6] = std::array::from_fn(|k| if k < a { load(rows, k * stride + t) } else { ZERO });
                let out = T::input(&d);
                // Lanes t .. t + L: one run of a panel unless NR is not a multiple of L (NEON's 12).
                let (panel, lane) = (t / nr, t % nr);
                let run = L.min(nr - lane);
                let at = panel * a * a * c_in * nr + ch * nr + lane;
                for (j, v) in out.iter().take(a).enumerate() {
                    let xi = (i * a + j) * c_in * nr;
                    if run == L {
                        store(&mut s.v, at + xi, *v);
                    } else {
                        s.v[at + xi..at + xi + run].copy_from_slice(&v[..run]);
                        let rest = (L - run).min(t_pad - (t + run));
                        if rest > 0 {
                            let next = (panel + 1) * a * a * c_in * nr + ch * nr + xi;
                            s.v[next..next + rest].copy_from_slice(&v[run..run + rest]);
                        }
                    }
                }
            }
        }
    }
}

/// Whether F(4×4)'s transforms run the x86 code for filters packed for `kernel`.
#[cfg(target_arch = "x86_64")]
fn x86_f4(kernel: Microkernel) -> bool {
    matches!(kernel, Microkernel::Avx2 | Microkernel::Avx512)
        && kernel.nr().is_multiple_of(super::winograd_x86::BLOCK)
        && super::winograd_x86::available()
}

#[cfg(not(target_arch = "x86_64"))]
fn x86_f4(_: Microkernel) -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn input_f4_x86(_: &Layer<'_>, _: &Task<'_>, _: usize, _: &mut Scratch) {
    unreachable!("x86_f4 is false off x86")
}

#[cfg(not(target_arch = "x86_64"))]
fn output_f4_x86(_: &Layer<'_>, _: &mut Task<'_>, _: &mut Scratch) {
    unreachable!("x86_f4 is false off x86")
}

/// [`input_transform`] of F(4×4, 3×3) by the x86 code (see
/// [`super::winograd_x86`]): the task's patches located once, then channel by channel.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn input_f4_x86(layer: &Layer<'_>, task: &Task<'_>, t_pad: usize, s: &mut Scratch) {
    use super::winograd_x86::{input_f4_channel, prefetch, Patch};
    let m = 4;
    let lin = &layer.lin;
    let (hp, wp, plane) = (lin.hp, lin.wp, lin.plane);
    let c_in = layer.filters.in_channels;
    let nr = layer.filters.kernel().nr();
    s.patches.clear();
    s.patches.resize(t_pad, Patch::default());
    for piece in &task.pieces {
        let row = m * piece.ty + layer.off.0;
        for q in piece.q0..piece.q1 {
            let col = layer.off.1 + m * q;
            let at = piece.img * lin.image() + row * wp + col;
            let (rows, cols) = (6.min(hp.saturating_sub(row)), 6.min(wp.saturating_sub(col)));
            let whole = rows == 6 && cols == 6 && at + 5 * wp + 8 <= plane;
            s.patches[piece.t0 + q - piece.q0] = Patch { at, rows, cols, whole };
        }
    }
    for ch in 0..c_in {
        if ch + 1 < c_in {
            let next = &layer.input[(ch + 1) * plane..(ch + 2) * plane];
            for piece in &task.pieces {
                let row = m * piece.ty + layer.off.0;
                let col = layer.off.1 + m * piece.q0;
                let cols = (m * (piece.q1 - piece.q0) + 2).min(wp.saturating_sub(col));
                for r in row..(row + 6).min(hp) {
                    let at = piece.img * lin.image() + r * wp + col;
                    prefetch(&next[at..at + cols]);
                }
            }
        }
        let plane = &layer.input[ch * plane..(ch + 1) * plane];
        // SAFETY: `x86_f4` is set only where `winograd_x86::available()` holds.
        unsafe { input_f4_channel(plane, wp, &s.patches, &mut s.v, (ch, c_in, nr)) };
    }
}

/// [`output_transform`] of F(4×4, 3×3) by the x86 code (see
/// [`super::winograd_x86`]): per output channel, every tile's outputs with
/// each tile's four columns side by side, so a piece's output row is one copy.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn output_f4_x86(layer: &Layer<'_>, task: &mut Task<'_>, s: &mut Scratch) {
    use super::winograd_x86::{output_f4_channel, prefetch, BLOCK};
    let m = 4;
    let o_ch = layer.filters.out_channels;
    let tiles = task.tiles;
    let row = m * tiles.next_multiple_of(BLOCK);
    let mbuf = &s.m[..36 * o_ch * tiles + L];
    let y = grown(&mut s.y, m * row);
    for oc in 0..o_ch {
        // SAFETY: `x86_f4` is set only where `winograd_x86::available()` holds.
        unsafe { output_f4_channel(&mbuf[oc * 36 * tiles..], tiles, layer.bias[oc], layer.relu, y) };
        if oc + 1 < o_ch {
            for piece in &task.pieces {
                for view in &piece.rows {
                    prefetch(view.row(oc + 1).as_slice().expect("output rows have unit column stride"));
                }
            }
        }
        for piece in task.pieces.iter_mut() {
            let (lo, hi, rows) = layer.piece_outputs(piece, m);
            for r in 0..rows {
                let mut view_row = piece.rows[r].row_mut(oc);
                let dst = view_row.as_slice_mut().expect("output rows have unit column stride");
                dst[..lo].fill(0.0);
                dst[hi..].fill(0.0);
                let from = r * row + m * piece.t0;
                dst[lo..hi].copy_from_slice(&y[from..from + hi - lo]);
            }
        }
    }
}

/// `y = relu?(Aᵀ M A + b)` for every output channel and tile of the task,
/// stored into the pieces' output rows (frame columns as zeros). Per output
/// channel, both passes run over all the task's tiles in blocks of `L`
/// (the products' rows are contiguous over tiles); the pieces then take
/// their tiles' outputs, interleaved along each output row.
#[inline(never)]
fn output_transform<T: Transform>(layer: &Layer<'_>, task: &mut Task<'_>, s: &mut Scratch) {
    let (m, a) = (T::M, T::A);
    let o_ch = layer.filters.out_channels;
    let tiles = task.tiles;
    let lanes = tiles.next_multiple_of(L);
    let mbuf = &s.m[..a * a * o_ch * tiles + L];
    let relu = layer.relu;
    // z: α·m rows over the tiles; y: m·m rows (output row r, column p).
    let z = grown(&mut s.h, a * m * lanes);
    let y = grown(&mut s.y, m * m * lanes + L);
    for oc in 0..o_ch {
        let b = layer.bias[oc];
        for u in (0..lanes).step_by(L) {
            // Pass 1, down i: z[j·m + r] = Σ_i Aᵀ[r][i]·M_{i·α+j}[oc, t].
            for j in 0..a {
                let x: [Lanes; 6] =
                    std::array::from_fn(
                        |i| {
                            if i < a {
                                load(mbuf, (oc * a * a + i * a + j) * tiles + u)
                            } else {
                                ZERO
                            }
                        },
                    );
                for (r, v) in T::output(&x).iter().take(m).enumerate() {
                    store(z, (j * m + r) * lanes + u, *v);
                }
            }
            // Pass 2, along j, then bias and ReLU: y[r·m + p] = output (r, p) of each tile.
            for r in 0..m {
                let x: [Lanes; 6] =
                    std::array::from_fn(|j| if j < a { load(z, (j * m + r) * lanes + u) } else { ZERO });
                for (p, v) in T::output(&x).iter().take(m).enumerate() {
                    let v = v.map(|e| {
                        let e = e + b;
                        if relu && e < 0.0 {
                            0.0
                        } else {
                            e
                        }
                    });
                    store(y, (r * m + p) * lanes + u, v);
                }
            }
        }
        for piece in task.pieces.iter_mut() {
            // Output columns of the piece: x = m·q0 .. min(m·q1, OW), at view column left + x − col0.
            let (lo, hi, rows) = layer.piece_outputs(piece, m);
            for r in 0..rows {
                let mut view_row = piece.rows[r].row_mut(oc);
                let dst = view_row.as_slice_mut().expect("output rows have unit column stride");
                dst[..lo].fill(0.0);
                dst[hi..].fill(0.0);
                let mut at = lo;
                let mut t = piece.t0;
                while at < hi {
                    let v: [Lanes; 4] =
                        std::array::from_fn(|p| if p < m { load(y, (r * m + p) * lanes + t) } else { ZERO });
                    let mut row = [0.0f32; 4 * L];
                    for q in 0..L {
                        for p in 0..m {
                            row[q * m + p] = v[p][q];
                        }
                    }
                    // Whole blocks of m·L columns, else tile by tile (fixed-size copies, no call).
                    if at + m * L <= hi {
                        dst[at..at + m * L].copy_from_slice(&row[..m * L]);
                    } else {
                        for (d, v) in dst[at..hi].chunks_mut(m).zip(row.chunks_exact(m)) {
                            if d.len() == m {
                                d.copy_from_slice(&v[..m]);
                            } else {
                                for (d, v) in d.iter_mut().zip(v) {
                                    *d = *v;
                                }
                            }
                        }
                    }
                    at += m * L;
                    t += L;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block transform as a matrix: column `r` is its output for the unit input `r`.
    fn as_matrix(rows_in: usize, rows_out: usize, f: impl Fn(&[Lanes; 6]) -> Vec<Lanes>) -> Vec<Vec<f64>> {
        let columns: Vec<Vec<f64>> = (0..rows_in)
            .map(|r| {
                let unit: [Lanes; 6] = std::array::from_fn(|k| [if k == r { 1.0 } else { 0.0 }; L]);
                let out = f(&unit);
                out.iter()
                    .take(rows_out)
                    .map(|row| {
                        assert!(row.iter().all(|&v| v == row[0]), "every lane computes the same");
                        row[0] as f64
                    })
                    .collect()
            })
            .collect();
        (0..rows_out).map(|j| columns.iter().map(|c| c[j]).collect()).collect()
    }

    fn matrix(rows: &[&[f64]]) -> Vec<Vec<f64>> {
        rows.iter().map(|r| r.to_vec()).collect()
    }

    #[test]
    fn lane_transforms_are_the_matrices() {
        let (f2, f4) = (WinogradTile::F2.matrices(), WinogradTile::F4.matrices());
        assert_eq!(as_matrix(4, 4, |d| F2T::input(d).to_vec()), matrix(f2.bt));
        assert_eq!(as_matrix(4, 2, |d| F2T::output(d).to_vec()), matrix(f2.at));
        assert_eq!(as_matrix(6, 6, |d| F4T::input(d).to_vec()), matrix(f4.bt));
        assert_eq!(as_matrix(6, 4, |d| F4T::output(d).to_vec()), matrix(f4.at));
    }

    /// The minimal-filtering identity `Aᵀ[(G g) ⊙ (Bᵀ d)] = correlation(d, g)`
    /// in f64 for every unit `d` and `g` (the identity is bilinear, so the
    /// units prove it), and so the 2-D nesting.
    #[test]
    fn matrices_compute_the_correlation() {
        for tile in WinogradTile::ALL {
            let (m, a) = (tile.m(), tile.alpha());
            let WinogradMatrices { bt, g, at } = tile.matrices();
            for r in 0..a {
                for k in 0..3 {
                    let gg: Vec<f64> = g.iter().map(|row| row[k]).collect();
                    let bd: Vec<f64> = bt.iter().map(|row| row[r]).collect();
                    for (i, row) in at.iter().enumerate() {
                        let y: f64 = (0..a).map(|x| row[x] * gg[x] * bd[x]).sum();
                        let want = if r == i + k { 1.0 } else { 0.0 };
                        assert!((y - want).abs() < 1e-12, "{tile}: output {i}, d{r}, g{k}: {y}");
                    }
                }
            }
            assert_eq!((bt.len(), g.len(), at.len()), (a, a, m));
        }
    }

    #[test]
    fn task_widths_are_whole_panels_and_balanced() {
        assert_eq!(tiles_per_task(8 * 3136, 2, 32, 128), 128);
        // 16 tiles (one 14×14 image at F4), 2 threads: one panel; 64 tiles: one panel each.
        assert_eq!(tiles_per_task(16, 2, 32, 128), 32);
        assert_eq!(tiles_per_task(64, 2, 32, 128), 32);
        for total in [1, 31, 100, 1000, 6272] {
            for threads in 1..4 {
                let w = tiles_per_task(total, threads, 12, 128);
                assert!(
                    w.is_multiple_of(12) && w <= 132 && (w >= 60 || total <= 60 * threads),
                    "{total} {threads}: {w}"
                );
            }
        }
    }

    #[test]
    fn work_ratios() {
        assert_eq!(WinogradTile::F4.work_ratio((224, 224)), 0.25);
        assert!((WinogradTile::F2.work_ratio((224, 224)) - 16.0 / 36.0).abs() < 1e-12);
        // 14×14 at F4: 4×4 tiles of 4 for 14 outputs a side.
        assert!((WinogradTile::F4.work_ratio((14, 14)) - 16.0 * 36.0 / (9.0 * 196.0)).abs() < 1e-12);
        assert_eq!(WinogradTile::F4.work_ratio((2, 2)), 1.0);
    }
}
