//! 2-D convolution by im2col + GEMM, with fused bias and ReLU.
//!
//! Layout is NCHW for activations and OIHW for weights (torchvision's). With
//! `K = C·KH·KW` and the batch's output positions laid side by side as
//! columns (image-major, then `oy·OW + ox`), the convolution is one product
//!
//! ```text
//! Y[O, N·OH·OW] = W[O, K] · col[K, N·OH·OW]      then + b[o], ReLU (if fused)
//! ```
//!
//! where row `(c, ky, kx)` of `col` holds the input pixel each output position
//! sees through that tap (zero in the padding). The product is cut into
//! tasks of at most [`TILE_COLUMNS`] columns, spread over the current rayon
//! pool; a task may span several images (VGG's conv5 at 32×32 has 2×2
//! outputs per image). `col` is never materialised for more than one task.
//!
//! Four strategies ([`ConvAlgorithm`]):
//! * **implicit** (stride 1): the input is kept in a [`PaddedLayout`] in
//!   which each row of `col` is a shifted view, read in place by the
//!   microkernel ([`gemm_gather_fused`]); the output is written, finished,
//!   into the next layer's padded layout ([`conv2d_padded`]);
//! * **packed im2col** (any stride): each row of `col` is generated straight
//!   into the microkernel's panel layout ([`gemm_packed_fused`]);
//! * **Winograd** (3×3, stride 1): fewer multiplications, through the same
//!   packed microkernels, padded layout to padded layout (see [`winograd`](super::winograd));
//! * **portable**: the task's `col` block is gathered into a buffer and
//!   multiplied by [`sgemm`] (`matrixmultiply`). Kept as a yardstick for the
//!   tests and benchmarks: the packed strategies run on every CPU (the
//!   generic [`Microkernel`] included), so they are what the automatic choice takes.
//!
//! The packed strategies add the bias, apply ReLU and store each tile
//! straight from the microkernel's registers into the output. Each output
//! element is the same sum in the same order whatever the tiling, so results
//! do not depend on the thread count (they may differ between microkernels
//! in the last bits: the generic one rounds products and sums separately).

use ndarray::{s, Array1, Array2, Array4, ArrayView1, ArrayView2, ArrayView4, ArrayViewMut2, ArrayViewMut3, Axis, Zip};
use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::gemm::{
    gemm_gather_fused, gemm_packed_fused, sgemm, Epilogue, Microkernel, PackedA, RowSink, Scratch, Segment, SHORT_DEPTH,
};
use crate::geometry::Window2d;
use crate::layers::padded::PaddedLayout;
use crate::layers::winograd::{conv2d_winograd, WinogradFilters, WinogradTile};

/// Target number of output columns per task.
pub const TILE_COLUMNS: usize = 512;
const MIN_TILE_COLUMNS: usize = 64;
/// Widest task of an implicit convolution whose products are at most
/// [`SHORT_DEPTH`] deep. conv1_1 at 224, batch 8, quiet, Zen 4 AVX-512,
/// 1 thread: 16.0 ms at 512 columns, 15.5 at 1024, 15.4 at 2048, 15.3 at 4096.
const SHORT_TILE_COLUMNS: usize = 2048;

/// Checks `input [N, C, H, W]` against `weight [O, C, KH, KW]` and `bias [O]`;
/// returns `(out_h, out_w)`.
pub(crate) fn check_conv(input: &[usize], weight: &[usize], bias: usize, window: &Window2d) -> Result<(usize, usize)> {
    let (c, h, w) = (input[1], input[2], input[3]);
    if weight[1] != c || (weight[2], weight[3]) != window.kernel {
        return Err(KernelError::shape(
            "conv2d weight",
            format!("[O, {c}, {}, {}]", window.kernel.0, window.kernel.1),
            weight,
        ));
    }
    if bias != weight[0] {
        return Err(KernelError::shape("conv2d bias", format!("[{}]", weight[0]), &[bias]));
    }
    window.validate(h, w)?;
    Ok((window.out_h(h), window.out_w(w)))
}

/// The filters as a `[O, K]` matrix (they must be in standard layout).
fn filter_matrix<'a>(weight: ArrayView4<'a, f32>) -> Result<ArrayView2<'a, f32>> {
    let o = weight.shape()[0];
    let k = weight.len() / o.max(1);
    weight
        .into_shape_with_order((o, k))
        .map_err(|_| KernelError::shape("conv2d weight layout", "standard (C-contiguous) OIHW", &[]))
}

/// Packs filters `[O, C, KH, KW]` for the packed strategies with `kernel`.
///
/// # Errors
/// [`KernelError::Shape`] if the weight is not in standard layout;
/// [`KernelError::Invalid`] if `kernel` is not available on this CPU.
pub fn pack_filters(weight: ArrayView4<'_, f32>, kernel: Microkernel) -> Result<PackedA> {
    kernel.require()?;
    Ok(PackedA::pack(filter_matrix(weight)?, kernel))
}

/// Writes row `(ky, kx)` of one channel's im2col matrix, for the output
/// positions `p0 .. p0 + len` of one image, to columns `j0 .. j0 + len` of `dst`.
///
/// `plane` is the channel `[H, W]` in standard layout.
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col_row<S: RowSink + ?Sized>(
    plane: ArrayView2<'_, f32>,
    window: &Window2d,
    (ky, kx): (usize, usize),
    out_w: usize,
    p0: usize,
    len: usize,
    dst: &mut S,
    j0: usize,
) {
    let (h, w) = plane.dim();
    let (x_lo, x_hi) = window.valid_out_x(kx, w, out_w);
    let sx = window.stride.1;
    let mut j = 0;
    while j < len {
        let p = p0 + j;
        let (oy, ox0) = (p / out_w, p % out_w);
        let seg = (out_w - ox0).min(len - j);
        let at = j0 + j;
        j += seg;
        let Some(iy) = window.input_y(oy, ky, h) else {
            dst.fill(at, seg, 0.0);
            continue;
        };
        let src = plane.row(iy);
        let src = src.as_slice().expect("standard layout rows are contiguous");
        // Output columns ox0 .. ox0+seg; those in [lo, hi) read the input.
        let lo = x_lo.clamp(ox0, ox0 + seg);
        let hi = x_hi.clamp(lo, ox0 + seg);
        dst.fill(at, lo - ox0, 0.0);
        dst.fill(at + (hi - ox0), ox0 + seg - hi, 0.0);
        if hi > lo {
            let first = lo * sx + kx - window.pad.1;
            if sx == 1 {
                dst.copy(at + (lo - ox0), &src[first..first + (hi - lo)]);
            } else {
                for (i, x) in (first..).step_by(sx).take(hi - lo).enumerate() {
                    dst.set(at + (lo - ox0) + i, src[x]);
                }
            }
        }
    }
}

/// Where a task's columns come from: output positions `p0 .. p0 + cols` of
/// image `img` are the task's columns `col0 .. col0 + cols`.
#[derive(Clone, Copy, Debug)]
struct Origin {
    img: usize,
    p0: usize,
    col0: usize,
    cols: usize,
}

/// Writes one im2col row for one piece: `(origin, channel plane, (ky, kx))`.
type PieceRowWriter<'w> = dyn FnMut(&Origin, ArrayView2<'_, f32>, (usize, usize)) + 'w;

/// A contiguous range of the batch's output columns (image-major): where
/// each piece comes from, and the output `[O, cols]` it goes to.
struct Task<'a> {
    width: usize,
    origins: Vec<Origin>,
    segments: Vec<Segment<'a>>,
}

impl Task<'_> {
    fn empty() -> Self {
        Task { width: 0, origins: Vec::new(), segments: Vec::new() }
    }
}

/// Width of the tasks that cut `total` columns for `threads` threads: a
/// multiple of `unit` in `MIN_TILE_COLUMNS ..= max` for which the thread
/// with the most tasks has the least work (`⌈tasks / threads⌉ · width`, within
/// 2%), the widest such (wider tasks reuse each packed filter block longer).
/// A fixed five tasks per thread left VGG's 14×14 layers with 9⅓ tasks for
/// 2 threads (1.87× the 1-thread speed).
fn task_width(total: usize, threads: usize, unit: usize, max: usize) -> usize {
    let threads = threads.max(1);
    let widths = (MIN_TILE_COLUMNS.div_ceil(unit)..=max / unit).map(|units| units * unit);
    let slowest = |w: usize| total.div_ceil(w).div_ceil(threads) * w;
    let best = widths.clone().map(slowest).min().expect("a non-empty range");
    widths.filter(|&w| slowest(w) * 100 <= best * 102).max().expect("the best width qualifies")
}

/// Cuts the output `[N, O, P]`, seen as `N·P` columns, into tasks of equal
/// width ([`task_width`]); a task may span several images.
fn split_tasks(out: ArrayViewMut3<'_, f32>) -> Vec<Task<'_>> {
    let (n, _, positions) = out.dim();
    let total = n * positions;
    let width = task_width(total, rayon::current_num_threads(), 32, TILE_COLUMNS);
    let mut tasks: Vec<Task<'_>> = Vec::with_capacity(total.div_ceil(width));
    let mut current = Task::empty();
    let mut images = out;
    for img in 0..n {
        let (image, others) = images.split_at(Axis(0), 1);
        images = others;
        let mut rest = image.index_axis_move(Axis(0), 0);
        let mut p0 = 0;
        while p0 < positions {
            let cols = (width - current.width).min(positions - p0);
            let (head, tail) = rest.split_at(Axis(1), cols);
            current.origins.push(Origin { img, p0, col0: current.width, cols });
            current.segments.push(Segment { col0: current.width, view: head });
            current.width += cols;
            rest = tail;
            p0 += cols;
            if current.width == width {
                tasks.push(std::mem::replace(&mut current, Task::empty()));
            }
        }
    }
    if current.width > 0 {
        tasks.push(current);
    }
    tasks
}

/// Convolution forward: `y = conv(x, W) + b`, then ReLU if `relu`.
///
/// Uses the packed strategies with the microkernel [`Microkernel::select`]
/// picks (packing the filters on every call: use [`conv2d_forward_with`]
/// with filters packed once by [`pack_filters`] to avoid that).
///
/// # Arguments
/// * `input` — activations `[N, C, H, W]`, any strides.
/// * `weight` — filters `[O, C, KH, KW]`; must be in standard (C) layout.
/// * `bias` — `[O]`.
/// * `window` — kernel size (must equal `(KH, KW)`), stride and zero padding.
/// * `relu` — apply `max(0, ·)` to the result (fused into the same pass).
///
/// # Shapes
/// Returns `[N, O, OH, OW]` with `OH = window.out_h(H)`, `OW = window.out_w(W)`.
///
/// # Errors
/// [`KernelError::Shape`] if the weight's channels or kernel size disagree with
/// the input and window, the bias length with `O`, or the weight is not in
/// standard layout; [`KernelError::Invalid`] if the window does not fit the
/// input or is degenerate, or `LML_MICROKERNEL` names no kernel this CPU runs.
pub fn conv2d_forward(
    input: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    bias: ArrayView1<'_, f32>,
    window: &Window2d,
    relu: bool,
) -> Result<Array4<f32>> {
    check_conv(input.shape(), weight.shape(), bias.len(), window)?;
    let packed = pack_filters(weight, Microkernel::select()?)?;
    conv2d_forward_with(input, weight, Some(&packed), bias, window, relu)
}

/// How a convolution is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// im2col blocks multiplied by `matrixmultiply`.
    Portable,
    /// im2col rows generated straight into the microkernel's panels.
    PackedIm2col,
    /// Implicit GEMM for stride 1: the padded input is laid out so that each
    /// im2col row is a shifted view of it, read in place by the microkernel.
    /// Pays `Wp − OW` wasted columns per output row, so it is chosen only
    /// where that is little ([`IMPLICIT_MAX_WASTE`]).
    Implicit,
    /// Winograd minimal filtering `F(m×m, 3×3)` for 3×3 stride-1 windows:
    /// `α²/9m²` of the direct multiplications (see [`super::winograd`]).
    Winograd(WinogradTile),
}

/// Largest ratio of computed to output columns for which
/// [`ConvAlgorithm::Implicit`] is chosen automatically. The implicit GEMM
/// computes `OH` rows of `Wp` columns per image, rounded up to whole panels,
/// for `OH·OW` outputs; the choice rounds to 32 columns, the widest panel
/// (AVX-512's), so it holds for every kernel: at 224×224 the VGG blocks waste
/// 1.009, 1.018, 1.041, 1.102 and 1.143, all below the cost of packing
/// im2col rows (measured equal or slower from block 4 on, 7–15% of a layer).
pub const IMPLICIT_MAX_WASTE: f64 = 1.15;

impl ConvAlgorithm {
    /// The algorithm [`conv2d_forward_with`] uses for this input and window.
    pub fn choose(packed: bool, input_hw: (usize, usize), window: &Window2d) -> Self {
        if !packed {
            return ConvAlgorithm::Portable;
        }
        let (h, w) = input_hw;
        let wp = PaddedLayout::conv_row(w, window);
        let (oh, ow) = (window.out_h(h), window.out_w(w));
        let waste = (oh * wp).next_multiple_of(32) as f64 / (oh * ow).max(1) as f64;
        if window.stride == (1, 1) && waste <= IMPLICIT_MAX_WASTE {
            ConvAlgorithm::Implicit
        } else {
            ConvAlgorithm::PackedIm2col
        }
    }
}

/// The environment variable that forces the convolution algorithms of a
/// network ([`ConvPolicy::select`]): `auto`, `direct`, `winograd-f2` or `winograd-f4`.
pub const CONV_ENV: &str = "LML_CONV";

/// Which algorithms a network's convolutions may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConvPolicy {
    /// Per layer, the algorithm measured fastest ([`ConvPolicy::algorithm`]).
    #[default]
    Auto,
    /// The direct algorithms only ([`ConvAlgorithm::choose`]): the speed reference.
    Direct,
    /// Winograd with this tile on every 3×3 stride-1 layer, direct elsewhere.
    Winograd(WinogradTile),
}

impl ConvPolicy {
    /// Every policy, in the order of [`name`](Self::name)s `auto`, `direct`, `winograd-f4`, `winograd-f2`.
    pub const ALL: [ConvPolicy; 4] = [
        ConvPolicy::Auto,
        ConvPolicy::Direct,
        ConvPolicy::Winograd(WinogradTile::F4),
        ConvPolicy::Winograd(WinogradTile::F2),
    ];

    /// The name [`select`](Self::select) and [`FromStr`](std::str::FromStr) accept.
    pub const fn name(self) -> &'static str {
        match self {
            ConvPolicy::Auto => "auto",
            ConvPolicy::Direct => "direct",
            ConvPolicy::Winograd(WinogradTile::F4) => "winograd-f4",
            ConvPolicy::Winograd(WinogradTile::F2) => "winograd-f2",
        }
    }

    /// The policy [`CONV_ENV`] names if it is set, else [`Auto`](Self::Auto).
    ///
    /// # Errors
    /// [`KernelError::Invalid`] if the variable names no policy or is not Unicode.
    pub fn select() -> Result<Self> {
        match std::env::var(CONV_ENV) {
            Ok(value) => value.parse(),
            Err(std::env::VarError::NotPresent) => Ok(ConvPolicy::Auto),
            Err(std::env::VarError::NotUnicode(v)) => {
                Err(KernelError::invalid(CONV_ENV, format!("{v:?} is not a convolution policy")))
            }
        }
    }

    /// The algorithm for a convolution of `c → o` channels over an `h × w`
    /// input with `window`, its filters packed for a microkernel.
    pub fn algorithm(self, (c, o): (usize, usize), input_hw: (usize, usize), window: &Window2d) -> ConvAlgorithm {
        let direct = ConvAlgorithm::choose(true, input_hw, window);
        let winograd_fits =
            window.kernel == (3, 3) && window.stride == (1, 1) && window.validate(input_hw.0, input_hw.1).is_ok();
        match self {
            ConvPolicy::Direct => direct,
            ConvPolicy::Winograd(tile) if winograd_fits => ConvAlgorithm::Winograd(tile),
            ConvPolicy::Winograd(_) => direct,
            ConvPolicy::Auto if winograd_fits => {
                let out_hw = (window.out_h(input_hw.0), window.out_w(input_hw.1));
                winograd_tile((c, o), out_hw).map_or(direct, ConvAlgorithm::Winograd)
            }
            ConvPolicy::Auto => direct,
        }
    }
}

/// Fewest input and output channels for which [`ConvPolicy::Auto`] runs
/// Winograd: with 3 input channels (VGG's conv1_1) the transforms cost more
/// than the 27-deep products they save (measured 0.5× the direct speed at
/// 224 and at 32), from 64 on it is faster on every VGG19 layer measured.
pub const WINOGRAD_MIN_CHANNELS: usize = 64;

/// Largest ratio of Winograd's multiplications to the direct convolution's
/// (tile waste included, [`WinogradTile::work_ratio`]) for which
/// [`ConvPolicy::Auto`] runs Winograd.
pub const WINOGRAD_MAX_WORK: f64 = 0.5;

/// The Winograd tile [`ConvPolicy::Auto`] runs a 3×3 stride-1 convolution of
/// `c → o` channels with an `h × w` output with, if any: the tile doing the fewest
/// multiplications, F(4×4) on a tie (its transforms cost less per
/// multiplication saved). Measured per VGG19 layer (CPU time, AMD EPYC Zen 4,
/// `cargo run --release -p lml-benches --example conv_cpu_time`): at 224×224
/// F(4×4) beats direct by 1.5× (block 1) to 2.4× (block 4) and F(2×2) on
/// every layer, 14×14 included (its 31% partial-tile waste still leaves
/// 0.33 of the multiplications, F(2×2)'s 0.44); at 32×32, F(4×4) on blocks
/// 1–4 (1.4–2.7×), and on block 5's 2×2 images F(2×2) (2.5×), where F(4×4)
/// computes a whole 4×4 tile for 4 outputs (work ratio 1.0, 1.07×).
pub fn winograd_tile((c, o): (usize, usize), (h, w): (usize, usize)) -> Option<WinogradTile> {
    if c < WINOGRAD_MIN_CHANNELS || o < WINOGRAD_MIN_CHANNELS {
        return None;
    }
    let best = WinogradTile::ALL
        .into_iter()
        .min_by(|a, b| a.work_ratio((h, w)).total_cmp(&b.work_ratio((h, w))))
        .expect("two tiles");
    (best.work_ratio((h, w)) <= WINOGRAD_MAX_WORK).then_some(best)
}

impl std::fmt::Display for ConvPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ConvPolicy {
    type Err = KernelError;

    /// Parses a [`name`](ConvPolicy::name) (ASCII case-insensitive, surrounding blanks ignored).
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim();
        Self::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(wanted)).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.into_iter().map(Self::name).collect();
            KernelError::invalid(CONV_ENV, format!("unknown convolution policy {s:?} (known: {})", names.join(", ")))
        })
    }
}

/// [`conv2d_forward`] with a chosen strategy: `packed` filters (from
/// [`pack_filters`] of the same `weight`) select the packed algorithms (see
/// [`ConvAlgorithm::choose`]), `None` the portable one.
///
/// # Errors
/// As [`conv2d_forward`], plus [`KernelError::Shape`] if `packed` was not
/// made from filters of this shape.
pub fn conv2d_forward_with(
    input: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    packed: Option<&PackedA>,
    bias: ArrayView1<'_, f32>,
    window: &Window2d,
    relu: bool,
) -> Result<Array4<f32>> {
    let algo = ConvAlgorithm::choose(packed.is_some(), (input.shape()[2], input.shape()[3]), window);
    conv2d_forward_algorithm(input, weight, packed, bias, window, relu, algo)
}

/// [`conv2d_forward_with`] with the algorithm forced (for tests and benchmarks).
///
/// # Errors
/// As [`conv2d_forward_with`], plus [`KernelError::Invalid`] if `algorithm`
/// needs packed filters that were not given, or is `Implicit` with a stride
/// other than 1, or `Winograd` with a window other than 3×3 stride 1.
/// (`Winograd` transforms the filters on every call, for the microkernel
/// `packed` is for: use [`conv2d_winograd`] with [`WinogradFilters`] made once.)
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward_algorithm(
    input: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    packed: Option<&PackedA>,
    bias: ArrayView1<'_, f32>,
    window: &Window2d,
    relu: bool,
    algorithm: ConvAlgorithm,
) -> Result<Array4<f32>> {
    let (oh, ow) = check_conv(input.shape(), weight.shape(), bias.len(), window)?;
    let mut out = Array4::<f32>::zeros((input.shape()[0], weight.shape()[0], oh, ow));
    conv2d_forward_into(input, weight, packed, bias, window, relu, algorithm, out.view_mut(), &mut Vec::new())?;
    Ok(out)
}

/// [`conv2d_forward_algorithm`] writing into `out` (`[N, O, OH, OW]`, every
/// element overwritten, so it may hold anything on entry). `scratch` holds
/// the implicit algorithm's padded input and is grown as needed; reusing both
/// across calls avoids faulting in fresh memory (first touch of fresh pages costs
/// 0.43 ms per MB on the development VM, 10.8× a rewrite; see the `peak` bench).
///
/// # Errors
/// As [`conv2d_forward_algorithm`], plus [`KernelError::Shape`] if `out` has the wrong shape.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward_into(
    input: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    packed: Option<&PackedA>,
    bias: ArrayView1<'_, f32>,
    window: &Window2d,
    relu: bool,
    algorithm: ConvAlgorithm,
    mut out: ndarray::ArrayViewMut4<'_, f32>,
    scratch: &mut Vec<f32>,
) -> Result<()> {
    let (oh, ow) = check_conv(input.shape(), weight.shape(), bias.len(), window)?;
    let expected = [input.shape()[0], weight.shape()[0], oh, ow];
    if out.shape() != expected {
        return Err(KernelError::shape("conv2d output", format!("{expected:?}"), out.shape()));
    }
    let packed = match (algorithm, packed) {
        (ConvAlgorithm::Portable, _) => None,
        (_, Some(p)) => Some(p),
        (_, None) => {
            return Err(KernelError::invalid("conv2d algorithm", format!("{algorithm:?} needs packed filters")))
        }
    };
    if algorithm == ConvAlgorithm::Implicit && window.stride != (1, 1) {
        return Err(KernelError::invalid("conv2d algorithm", "Implicit needs stride 1"));
    }
    let n = input.shape()[0];
    let o = weight.shape()[0];
    let w2 = filter_matrix(weight)?;
    let k = w2.ncols();
    if let Some(p) = packed {
        if (p.rows(), p.depth()) != (o, k) {
            return Err(KernelError::shape("packed conv2d filters", format!("[{o}, {k}]"), &[p.rows(), p.depth()]));
        }
    }
    let positions = oh * ow;
    if n == 0 || o == 0 || positions == 0 {
        return Ok(());
    }
    if let (ConvAlgorithm::Winograd(tile), Some(p)) = (algorithm, packed) {
        if window.kernel != (3, 3) || window.stride != (1, 1) {
            return Err(KernelError::invalid("conv2d algorithm", "Winograd needs a 3×3 window with stride 1"));
        }
        let filters = WinogradFilters::new(weight, tile, p.kernel())?;
        let (c, h, w) = (input.shape()[1], input.shape()[2], input.shape()[3]);
        let lin = PaddedLayout::conv_input(n, c, h, w, window);
        let lout = lin.conv_output(o, window);
        if scratch.len() < lin.len() + lout.len() {
            scratch.resize(lin.len() + lout.len(), 0.0);
        }
        let (pin, pout) = scratch.split_at_mut(lin.len());
        lin.fill(pin, input)?;
        conv2d_winograd(pin, &lin, &filters, bias, window, relu, pout, &lout)?;
        Zip::from(&mut out).and(lout.view(pout)).par_for_each(|d, &s| *d = s);
        return Ok(());
    }
    if let (ConvAlgorithm::Implicit, Some(p)) = (algorithm, packed) {
        let (c, h, w) = (input.shape()[1], input.shape()[2], input.shape()[3]);
        let lin = PaddedLayout::conv_input(n, c, h, w, window);
        let lout = lin.conv_output(o, window);
        if scratch.len() < lin.len() + lout.len() {
            scratch.resize(lin.len() + lout.len(), 0.0);
        }
        let (pin, pout) = scratch.split_at_mut(lin.len());
        lin.fill(pin, input)?;
        conv2d_padded(pin, &lin, p, bias, window, relu, pout, &lout)?;
        Zip::from(&mut out).and(lout.view(pout)).par_for_each(|d, &s| *d = s);
        return Ok(());
    }
    let input = input.as_standard_layout();
    let bias = bias.to_vec();
    let bias_s = &bias[..];
    let (kh, kw) = window.kernel;
    let out3 = out
        .view_mut()
        .into_shape_with_order((n, o, positions))
        .map_err(|_| KernelError::shape("conv2d output layout", "standard (C-contiguous)", &[]))?;
    let tasks = split_tasks(out3);

    tasks.into_par_iter().for_each_init(
        || (Scratch::default(), Vec::<f32>::new(), Vec::<f32>::new()),
        |(scratch, tmp, col), mut task| {
            let width = task.width;
            // Row (c, ky, kx) of this task's im2col block, written piece by piece.
            let origins = &task.origins;
            let fill = |row: usize, dst: &mut PieceRowWriter<'_>| {
                let (c, tap) = (row / (kh * kw), row % (kh * kw));
                for origin in origins {
                    dst(origin, input.slice(s![origin.img, c, .., ..]), (tap / kw, tap % kw));
                }
            };
            match packed {
                Some(p) => {
                    let mut epilogue = Epilogue { bias: bias_s, relu, segments: &mut task.segments, keep: None };
                    gemm_packed_fused(
                        p,
                        width,
                        |row, sink| {
                            fill(row, &mut |o, plane, tap| {
                                im2col_row(plane, window, tap, ow, o.p0, o.cols, sink, o.col0)
                            })
                        },
                        &mut epilogue,
                        scratch,
                    )
                }
                None => {
                    col.resize(k * width, 0.0);
                    for (row, dst) in col.chunks_mut(width).enumerate() {
                        fill(row, &mut |o, plane, tap| im2col_row(plane, window, tap, ow, o.p0, o.cols, dst, o.col0));
                    }
                    tmp.resize(o * width, 0.0);
                    let colv = ArrayView2::from_shape((k, width), &col[..]).expect("sized k × width");
                    let tmpv = ArrayViewMut2::from_shape((o, width), &mut tmp[..]).expect("sized o × width");
                    sgemm(1.0, w2, colv, 0.0, tmpv);
                    // Bias, ReLU, and scatter to NCHW.
                    for seg in task.segments.iter_mut() {
                        let cols = seg.view.ncols();
                        for (oc, (mut dst, &b)) in seg.view.outer_iter_mut().zip(bias_s).enumerate() {
                            let src = &tmp[oc * width + seg.col0..][..cols];
                            for (d, &v) in dst.iter_mut().zip(src) {
                                let z = v + b;
                                *d = if relu && z < 0.0 { 0.0 } else { z };
                            }
                        }
                    }
                }
            }
        },
    );
    Ok(())
}

/// Implicit-GEMM convolution (stride 1) from one [`PaddedLayout`] to
/// another, with fused bias and ReLU: `out = relu?(conv(x, W) + b)`.
///
/// Virtual column `j = n·Hp·Wp + oy·Wp + ox` (for all `oy < Hp`, `ox < Wp`)
/// is output `(n, oy, ox)` when `oy < OH` and `ox < OW`; im2col row
/// `(c, ky, kx)` at column `j` is `input[c·plane + ky·Wp + kx + j]`, so the
/// microkernel reads B in place through a per-row offset table, and writes
/// column `j` of every output channel to `out[o·plane' + origin' + j]`, the
/// columns that are not outputs as zeros (they are the output frame).
///
/// # Arguments
/// * `input`, `in_layout` — activations `[N, C, H, W]` with frame zeros,
///   `in_layout.top == window.pad`, frame at least `H + 2·pad.0 × W + 2·pad.1`.
/// * `packed` — filters `[O, C·KH·KW]` packed by [`pack_filters`].
/// * `bias` — `[O]`.
/// * `out`, `out_layout` — `[N, O, OH, OW]`, same frame size as the input,
///   `top` at most `(Hp − OH, Wp − OW)` (see [`PaddedLayout::conv_output`]);
///   every float of its [`len`](PaddedLayout::len) is written.
///
/// # Errors
/// [`KernelError::Invalid`] if the window's stride is not 1 or a layout does
/// not fit the convolution or its buffer; [`KernelError::Shape`] if the
/// packed filters or bias disagree with the layouts and window.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_padded(
    input: &[f32],
    in_layout: &PaddedLayout,
    packed: &PackedA,
    bias: ArrayView1<'_, f32>,
    window: &Window2d,
    relu: bool,
    out: &mut [f32],
    out_layout: &PaddedLayout,
) -> Result<()> {
    let PaddedLayout { n, c, h, w, hp, wp, plane, .. } = *in_layout;
    in_layout.check("conv2d padded input", input.len())?;
    out_layout.check("conv2d padded output", out.len())?;
    window.validate(h, w)?;
    if window.stride != (1, 1) {
        return Err(KernelError::invalid("conv2d padded", "the implicit algorithm needs stride 1"));
    }
    let (kh, kw) = window.kernel;
    let (oh, ow) = (window.out_h(h), window.out_w(w));
    let o = packed.rows();
    if (packed.depth(), bias.len()) != (c * kh * kw, o) {
        return Err(KernelError::shape(
            "packed conv2d filters and bias",
            format!("[O, {}] and [O]", c * kh * kw),
            &[packed.rows(), packed.depth(), bias.len()],
        ));
    }
    let image = in_layout.image();
    let virt = n * image;
    let reach = (kh - 1) * wp + kw - 1 + packed.kernel().nr();
    if in_layout.top != window.pad || hp < h + 2 * window.pad.0 || wp < w + window.pad.1 || plane < virt + reach {
        return Err(KernelError::invalid("conv2d padded input", format!("{in_layout:?} does not fit {window:?}")));
    }
    let fits = (out_layout.n, out_layout.c, out_layout.h, out_layout.w) == (n, o, oh, ow)
        && (out_layout.hp, out_layout.wp) == (hp, wp)
        && out_layout.top.0 <= hp - oh
        && out_layout.top.1 <= wp - ow;
    if !fits {
        return Err(KernelError::invalid(
            "conv2d padded output",
            format!("{out_layout:?} is not [{n}, {o}, {oh}, {ow}] in the input's {hp}×{wp} frame"),
        ));
    }
    let offsets: Vec<usize> =
        (0..c).flat_map(|ch| (0..kh).flat_map(move |ky| (0..kw).map(move |kx| ch * plane + ky * wp + kx))).collect();
    let bias = bias.to_vec();
    let nr = packed.kernel().nr();
    // Bits of the output columns among virtual columns v .. v + cols (cols ≤ 32).
    let valid = |v: usize, cols: usize| -> u32 {
        let r = v % image;
        let (mut y, mut x) = (r / wp, r % wp);
        if y < oh && x + cols <= ow {
            return u32::MAX >> (32 - cols);
        }
        let mut bits = 0;
        for t in 0..cols {
            if y < oh && x < ow {
                bits |= 1 << t;
            }
            x += 1;
            if x == wp {
                (x, y) = (0, (y + 1) % hp);
            }
        }
        bits
    };

    // Only the virtual columns of output rows are computed: per image, its
    // first OH·Wp columns, rounded up to whole panels while that stays inside
    // the image. The rest of each image (bottom frame rows) is only zeroed.
    let span = (oh * wp).next_multiple_of(nr).min(image);
    // Tasks are whole panels, so that no panel straddles two pieces (the
    // microkernel reads a panel's B columns as one contiguous run): 32
    // columns (the widths measured on x86) where the panel divides it, the
    // panel width itself otherwise (NEON's 12).
    let unit = if 32 % nr == 0 { 32 } else { nr };
    // Short products (conv1_1) take wider tasks: each row panel's pass then
    // writes longer runs of its output planes (see `gemm::SHORT_DEPTH`).
    let max = if packed.depth() <= SHORT_DEPTH { SHORT_TILE_COLUMNS } else { TILE_COLUMNS };
    let width = task_width(n * span, rayon::current_num_threads(), unit, max);
    // Output column of virtual column v: v + shift. Walk the [O, plane]
    // output in column order, zeroing what no task writes and handing each
    // task the views of its pieces.
    let shift = out_layout.origin();
    let mut rest = ArrayViewMut2::from_shape((o, out_layout.plane), &mut out[..out_layout.len()]).expect("o planes");
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
    let mut tasks: Vec<ImplicitTask<'_>> = Vec::new();
    let mut current = ImplicitTask::default();
    for img in 0..n {
        let mut v = img * image;
        let end = v + span;
        while v < end {
            let len = (width - current.width).min(end - v);
            current.pieces.push((v, current.width));
            current.segments.push(Segment { col0: current.width, view: take(v + shift, len) });
            current.width += len;
            v += len;
            if current.width == width {
                tasks.push(std::mem::take(&mut current));
            }
        }
    }
    if current.width > 0 {
        tasks.push(current);
    }
    let plane_out = out_layout.plane;
    take(plane_out, 0);
    tasks.into_par_iter().for_each_init(
        || (Vec::<f32>::new(), Vec::<usize>::new()),
        |(partial, panels), mut task| {
            // Virtual column of task column t.
            let pieces = &task.pieces;
            let virtual_col = |t: usize| {
                let &(v0, col0) = pieces.iter().rev().find(|&&(_, col0)| col0 <= t).expect("piece 0 starts at 0");
                v0 + (t - col0)
            };
            panels.clear();
            panels.extend((0..task.width).step_by(nr).map(virtual_col));
            let keep = |t: usize, cols: usize| valid(virtual_col(t), cols);
            let mut epilogue = Epilogue { bias: &bias, relu, segments: &mut task.segments, keep: Some(&keep) };
            gemm_gather_fused(packed, task.width, input, panels, &offsets, &mut epilogue, partial);
        },
    );
    Ok(())
}

/// Part of the implicit convolution: task columns laid over runs of virtual
/// columns (`(first virtual column, first task column)` per piece), and the
/// output views the pieces fill.
#[derive(Default)]
struct ImplicitTask<'a> {
    width: usize,
    pieces: Vec<(usize, usize)>,
    segments: Vec<Segment<'a>>,
}

/// Gradients of a convolution.
#[derive(Clone, Debug)]
pub struct Conv2dGrads {
    /// `∂L/∂x`, `[N, C, H, W]`.
    pub input: Array4<f32>,
    /// `∂L/∂W`, `[O, C, KH, KW]`, summed over the batch.
    pub weight: Array4<f32>,
    /// `∂L/∂b`, `[O]`, summed over the batch.
    pub bias: Array1<f32>,
}

/// Convolution backward (without the fused ReLU: mask `grad_out` with
/// [`relu_backward`](crate::layers::relu::relu_backward) first when the forward used it).
///
/// ```text
/// ∂L/∂b[o]  = Σ_n Σ_p gy[n, o, p]
/// ∂L/∂W     = Σ_n gy[n] · col_nᵀ          ([O, P] · [P, K])
/// ∂L/∂x[n]  = col2im(Wᵀ · gy[n])           ([K, O] · [O, P], scattered back)
/// ```
///
/// # Arguments
/// * `input` — the forward input `[N, C, H, W]`.
/// * `weight` — the forward filters `[O, C, KH, KW]` (standard layout).
/// * `grad_out` — `∂L/∂y`, `[N, O, OH, OW]`.
///
/// # Errors
/// As [`conv2d_forward`], plus [`KernelError::Shape`] if `grad_out` is not the
/// forward output's shape.
///
/// Work is parallel across images; per-image weight gradients are summed in
/// image order, so the result does not depend on the thread count.
pub fn conv2d_backward(
    input: ArrayView4<'_, f32>,
    weight: ArrayView4<'_, f32>,
    grad_out: ArrayView4<'_, f32>,
    window: &Window2d,
) -> Result<Conv2dGrads> {
    let (oh, ow) = check_conv(input.shape(), weight.shape(), weight.shape()[0], window)?;
    let (n, c, h, w) = input.dim();
    let o = weight.shape()[0];
    if grad_out.dim() != (n, o, oh, ow) {
        return Err(KernelError::shape("conv2d grad_out", format!("[{n}, {o}, {oh}, {ow}]"), grad_out.shape()));
    }
    let k = weight.len() / o.max(1);
    let w2 = weight
        .to_shape((o, k))
        .map_err(|_| KernelError::shape("conv2d weight layout", "standard (C-contiguous) OIHW", weight.shape()))?;
    let positions = oh * ow;
    let mut grad_input = Array4::<f32>::zeros((n, c, h, w));

    let per_image: Vec<(Array2<f32>, Array1<f32>)> = grad_input
        .outer_iter_mut()
        .into_par_iter()
        .enumerate()
        .map(|(img, mut gx)| {
            let gy = grad_out
                .index_axis(Axis(0), img)
                .to_shape((o, positions))
                .expect("reshape of one image's gradient")
                .into_owned();
            let mut col = Array2::<f32>::zeros((k, positions));
            let (kh, kw) = window.kernel;
            for (row, mut dst) in col.outer_iter_mut().enumerate() {
                let (c, tap) = (row / (kh * kw), row % (kh * kw));
                let plane = input.slice(s![img, c, .., ..]);
                im2col_row(
                    plane,
                    window,
                    (tap / kw, tap % kw),
                    ow,
                    0,
                    positions,
                    dst.as_slice_mut().expect("fresh row"),
                    0,
                );
            }
            let mut gw = Array2::<f32>::zeros((o, k));
            sgemm(1.0, gy.view(), col.t(), 0.0, gw.view_mut());
            let gb = gy.sum_axis(Axis(1));
            // Reuse `col` for the column gradient Wᵀ · gy.
            sgemm(1.0, w2.t(), gy.view(), 0.0, col.view_mut());
            col2im_add(col.view(), window, ow, gx.view_mut());
            (gw, gb)
        })
        .collect();

    let mut gw = Array2::<f32>::zeros((o, k));
    let mut gb = Array1::<f32>::zeros(o);
    for (w_i, b_i) in &per_image {
        gw += w_i;
        gb += b_i;
    }
    Ok(Conv2dGrads {
        input: grad_input,
        weight: gw.into_shape_with_order(weight.raw_dim()).expect("o×k has O·C·KH·KW elements"),
        bias: gb,
    })
}

/// Scatter-adds a column matrix `[K, OH·OW]` back into one image `[C, H, W]`.
fn col2im_add(col: ArrayView2<'_, f32>, window: &Window2d, out_w: usize, mut image: ndarray::ArrayViewMut3<'_, f32>) {
    let (c_in, h, w) = image.dim();
    let (kh, kw) = window.kernel;
    let positions = col.ncols();
    for c in 0..c_in {
        let mut plane = image.index_axis_mut(Axis(0), c);
        for ky in 0..kh {
            for kx in 0..kw {
                let row = col.row((c * kh + ky) * kw + kx);
                for p in 0..positions {
                    let (oy, ox) = (p / out_w, p % out_w);
                    if let (Some(iy), Some(ix)) = (window.input_y(oy, ky, h), window.input_x(ox, kx, w)) {
                        plane[[iy, ix]] += row[p];
                    }
                }
            }
        }
    }
}
