//! Packed GEMM with a pre-packed left operand and a streamed right operand:
//! `C[m×n] = A[m×k] · B[k×n]`, C row-major.
//!
//! Built for convolution, where `A` is a layer's filters (packed once and
//! reused for every tile of every batch) and `B` is the im2col matrix of a
//! tile, which never exists in full: [`gemm_packed`] asks a closure for one
//! row of `B` at a time and packs it straight into the kernel's panel layout.
//!
//! # Blocking (BLIS order)
//! ```text
//! for each k-block of KC rows:               B block KC × n packed (L2)
//!     for each NR-wide B panel (jr):          B panel KC × NR      (L1)
//!         for each MR-tall A panel (ir):      A panel MR × KC      (L2, streamed)
//!             microkernel: C[ir, jr] (+)= A panel · B panel   (registers)
//! ```
//! The first k-block stores into `C`, later ones accumulate, so each element
//! of `C` is summed in the same order whatever `n` and the tiling are.

use ndarray::ArrayViewMut2;

#[cfg(target_arch = "x86_64")]
use super::x86;

// The tile sizes below must be the kernels' own.
#[cfg(target_arch = "x86_64")]
const _: () = assert!(x86::AVX512_MR == 8 && x86::AVX512_NR == 32 && x86::AVX2_MR == 6 && x86::AVX2_NR == 16);

/// How a microkernel finishes a tile: `out = f(acc [+ prev])` row by row,
/// where `f` adds the row's bias, applies ReLU and zeroes the columns not in
/// `keep`, each step optional. Raw pointers because the tile is written
/// straight into its destination (the task's part of a layer's output).
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86 kernels only
pub(crate) struct TileStore {
    /// Partial sums to add (`MR` rows of `NR` floats, `ld_prev` apart), or null.
    pub prev: *const f32,
    /// Row stride of `prev`, in floats.
    pub ld_prev: usize,
    /// Destination: `MR` rows of `NR` floats, `ld_out` apart.
    pub out: *mut f32,
    /// Row stride of `out`, in floats.
    pub ld_out: usize,
    /// `MR` floats added row-wise, or null.
    pub bias: *const f32,
    /// Apply `max(0, ·)` (NaN stays NaN).
    pub relu: bool,
    /// Bit `t` set: column `t` keeps its value; clear: written as zero.
    pub keep: u32,
    /// If not 0: prefetch (into L2) the 192 bytes this many floats past
    /// each B row read, i.e. the next panel's rows when B is read in place.
    pub prefetch_b: usize,
}

impl TileStore {
    /// Store (adding `prev` if not null) with no bias, ReLU or masking.
    fn plain(prev: *const f32, out: *mut f32, ld: usize) -> Self {
        TileStore {
            prev,
            ld_prev: ld,
            out,
            ld_out: ld,
            bias: std::ptr::null(),
            relu: false,
            keep: u32::MAX,
            prefetch_b: 0,
        }
    }
}

/// Rows of `B` (depth) per block: a 256 × 32 f32 B panel is 32 KB (L1 on Zen 4).
pub const KC: usize = 256;

/// A register-blocked microkernel for this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Microkernel {
    /// AVX-512F, 8 × 32.
    Avx512,
    /// AVX2 + FMA, 6 × 16.
    Avx2,
}

impl Microkernel {
    /// The fastest kernel this CPU supports, or `None` (non-x86, or x86 without AVX2+FMA).
    pub fn detect() -> Option<Self> {
        [Microkernel::Avx512, Microkernel::Avx2].into_iter().find(|k| k.available())
    }

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Microkernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Microkernel::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Rows of a C tile.
    pub const fn mr(self) -> usize {
        match self {
            Microkernel::Avx512 => 8,
            Microkernel::Avx2 => 6,
        }
    }

    /// Columns of a C tile.
    pub const fn nr(self) -> usize {
        match self {
            Microkernel::Avx512 => 32,
            Microkernel::Avx2 => 16,
        }
    }

    /// Runs the kernel on one tile: `C[mr×nr] = A panel · B`, B row `kk`
    /// being the `nr` floats at `b + offsets[kk]`, finished as `st` says.
    ///
    /// # Safety
    /// The kernel must be [`available`](Self::available); `a` must hold
    /// `kb·mr` floats, `offsets` `kb` entries, every `b + offsets[kk] .. + nr`
    /// must be readable, and `st`'s pointers must satisfy [`x86::TileStore`]'s
    /// contract for `mr` rows of `nr` floats.
    #[inline]
    unsafe fn run(self, kb: usize, a: *const f32, b: *const f32, offsets: *const usize, st: &TileStore) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            match self {
                Microkernel::Avx512 => x86::kernel_avx512(kb, a, b, offsets, st),
                Microkernel::Avx2 => x86::kernel_avx2(kb, a, b, offsets, st),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (kb, a, b, offsets, st);
            unreachable!("no x86 microkernel is available on this architecture");
        }
    }
}

/// The left operand `A[m×k]`, packed for one [`Microkernel`].
///
/// Layout: k-blocks of [`KC`] rows in order; inside block `p` (depth `kb`),
/// `⌈m/MR⌉` panels of `kb × MR` floats (`MR` contiguous per `k`), rows past
/// `m` zero. Block `p` starts at float `p·KC·m_pad`, `m_pad = ⌈m/MR⌉·MR`.
#[derive(Clone, Debug)]
pub struct PackedA {
    kernel: Microkernel,
    m: usize,
    k: usize,
    data: Vec<f32>,
}

impl PackedA {
    /// Packs `a` (`[m, k]`, any strides) for `kernel`.
    ///
    /// # Panics
    /// If `kernel` is not available on this CPU (a caller bug: use [`Microkernel::detect`]).
    pub fn pack(a: ndarray::ArrayView2<'_, f32>, kernel: Microkernel) -> Self {
        assert!(kernel.available(), "{kernel:?} is not supported by this CPU");
        let (m, k) = a.dim();
        let mr = kernel.mr();
        let m_pad = m.div_ceil(mr) * mr;
        let mut data = vec![0.0f32; m_pad * k];
        for k0 in (0..k).step_by(KC) {
            let kb = KC.min(k - k0);
            let block = &mut data[k0 * m_pad..(k0 + kb) * m_pad];
            for (ir, panel) in block.chunks_exact_mut(kb * mr).enumerate() {
                for i in 0..mr.min(m - ir * mr) {
                    let row = a.row(ir * mr + i);
                    for kk in 0..kb {
                        panel[kk * mr + i] = row[k0 + kk];
                    }
                }
            }
        }
        PackedA { kernel, m, k, data }
    }

    /// Rows `m`.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Depth `k`.
    pub fn depth(&self) -> usize {
        self.k
    }

    /// The kernel this packing is for.
    pub fn kernel(&self) -> Microkernel {
        self.kernel
    }
}

/// A run of output columns: task columns `col0 .. col0 + view.ncols()` are
/// the columns of `view` (`[m, len]`, rows any stride).
#[derive(Debug)]
pub struct Segment<'a> {
    /// First product column this segment receives.
    pub col0: usize,
    /// Its place in the destination, `[m, len]`.
    pub view: ArrayViewMut2<'a, f32>,
}

/// Where a fused product goes: `dst = relu?(A·B + bias)`, column `j` of the
/// product written to the segment that holds it, or zero where `keep` clears
/// its bit (the implicit convolution's wasted columns, which land on the zero
/// borders of the next layer's padded input).
pub struct Epilogue<'s, 'a> {
    /// `[m]`, added to every column of its row.
    pub bias: &'s [f32],
    /// Apply `max(0, ·)` after the bias.
    pub relu: bool,
    /// Segments in column order, covering the columns `0..n` exactly.
    pub segments: &'s mut [Segment<'a>],
    /// Which columns keep their value (`None`: all): `keep(j0, cols)` for
    /// `cols ≤ 32` has bit `t` set when column `j0 + t` does.
    pub keep: Option<&'s dyn Fn(usize, usize) -> u32>,
}

impl Epilogue<'_, '_> {
    /// Checks the bias length and that the segments tile `0..n`.
    fn check(&self, m: usize, n: usize, who: &str) {
        assert_eq!(self.bias.len(), m, "{who}: bias has {} entries for {m} rows", self.bias.len());
        let mut next = 0;
        for s in self.segments.iter() {
            assert_eq!(s.col0, next, "{who}: segments must cover the columns in order");
            assert_eq!(s.view.nrows(), m, "{who}: a segment has {} rows, expected {m}", s.view.nrows());
            next += s.view.ncols();
        }
        assert_eq!(next, n, "{who}: segments cover {next} of {n} columns");
    }

    /// Segment holding column `j`, starting the search at `from`.
    fn find(&self, j: usize, from: usize) -> usize {
        let mut s = from.min(self.segments.len() - 1);
        while s > 0 && self.segments[s].col0 > j {
            s -= 1;
        }
        while j >= self.segments[s].col0 + self.segments[s].view.ncols() {
            s += 1;
        }
        s
    }

    /// Bit `t` set when column `j0 + t` keeps its value.
    fn keep_bits(&self, j0: usize, cols: usize) -> u32 {
        match self.keep {
            None => u32::MAX,
            Some(keep) => keep(j0, cols),
        }
    }

    /// Finishes one value: bias, ReLU, keep.
    #[inline]
    fn finish(&self, row: usize, j: usize, v: f32) -> f32 {
        let z = v + self.bias[row];
        let z = if self.relu && z < 0.0 { 0.0 } else { z };
        match self.keep {
            Some(keep) if keep(j, 1) & 1 == 0 => 0.0,
            _ => z,
        }
    }
}

/// One k-block of the product, tile by tile, where `b_panel(jr)` is the base
/// pointer of B panel `jr` and B row `kk` of it is at `offsets[kk]` from that base.
///
/// Without `epilogue`, every `mr × nr` tile of the row-major `m × n` slice
/// `c` is stored (or, when `accumulate`, added to). With one (the last
/// k-block), the tiles of `c` are only read (when `accumulate`) and the
/// finished values go to the epilogue's segments: straight from the
/// registers for whole tiles inside one segment, through a scalar pass otherwise.
///
/// # Safety
/// `ablock` must be the packed k-block (`m_pad × kb` floats) of a `PackedA`
/// whose kernel is available; `offsets.len() == kb`; for every panel `jr` in
/// `0..⌈n/nr⌉` and row `kk`, `b_panel(jr) + offsets[kk] .. + nr` must be
/// readable; `c` must hold `m × n` floats unless `epilogue` is given and
/// `accumulate` is false; an epilogue must have passed [`Epilogue::check`].
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_block(
    kernel: Microkernel,
    ablock: &[f32],
    kb: usize,
    m: usize,
    n: usize,
    b_panel: impl Fn(usize) -> *const f32,
    offsets: &[usize],
    c: &mut [f32],
    accumulate: bool,
    mut epilogue: Option<&mut Epilogue<'_, '_>>,
    prefetch_next: impl Fn(usize) -> usize,
) {
    let (mr, nr) = (kernel.mr(), kernel.nr());
    let mut edge = [0.0f32; 8 * 32];
    let mut seg = 0;
    for jr in 0..n.div_ceil(nr) {
        let j0 = jr * nr;
        let cols = nr.min(n - j0);
        let bp = b_panel(jr);
        // A whole panel inside one segment with unit column stride is written
        // in place: (pointer to its column j0, row stride, keep bits).
        let direct = match epilogue.as_deref_mut() {
            Some(e) if cols == nr => {
                seg = e.find(j0, seg);
                let keep = e.keep_bits(j0, cols);
                let s = &mut e.segments[seg];
                let inside = j0 + nr <= s.col0 + s.view.ncols();
                let (rs, cs) = (s.view.strides()[0], s.view.strides()[1]);
                let base = s.view.as_mut_ptr();
                // SAFETY: column j0 − col0 < ncols of row 0 lies inside the view (`inside`, unit column stride).
                (inside && cs == 1 && rs >= 0).then(|| (unsafe { base.add(j0 - s.col0) }, rs as usize, keep))
            }
            _ => None,
        };
        for ir in 0..m.div_ceil(mr) {
            let apanel = &ablock[ir * kb * mr..(ir + 1) * kb * mr];
            let rows = mr.min(m - ir * mr);
            let corner = ir * mr * n + j0;
            // The first tile of a panel prefetches the next panel's B rows.
            let prefetch_b = if ir == 0 { prefetch_next(jr) } else { 0 };
            match (&epilogue, direct) {
                (None, _) if rows == mr && cols == nr => {
                    // One pointer for reading and writing the C tile.
                    let out = c[corner..].as_mut_ptr();
                    let prev = if accumulate { out.cast_const() } else { std::ptr::null() };
                    let st = TileStore { prefetch_b, ..TileStore::plain(prev, out, n) };
                    // SAFETY: A panel of kb·mr floats (sliced); B rows readable
                    // (caller's contract); the C tile's rows ir·mr.. and columns
                    // j0.. lie inside the m × n slice `c`.
                    unsafe { kernel.run(kb, apanel.as_ptr(), bp, offsets.as_ptr(), &st) };
                }
                (Some(e), Some((base, ld, keep))) if rows == mr => {
                    // Partial sums from `c`, results to the segment: two buffers.
                    let prev = if accumulate { c[corner..].as_ptr() } else { std::ptr::null() };
                    let st = TileStore {
                        prev,
                        ld_prev: n,
                        // SAFETY: rows ir·mr .. ir·mr + mr < m of the segment,
                        // whose columns j0 .. j0 + nr it holds (checked above).
                        out: unsafe { base.add(ir * mr * ld) },
                        ld_out: ld,
                        bias: e.bias[ir * mr..].as_ptr(),
                        relu: e.relu,
                        keep,
                        prefetch_b,
                    };
                    // SAFETY: as above; `prev` is the C tile when accumulating;
                    // `bias` has mr entries from ir·mr (rows == mr).
                    unsafe { kernel.run(kb, apanel.as_ptr(), bp, offsets.as_ptr(), &st) };
                }
                _ => {
                    // Edge tile: compute a full tile into `edge`, then place the valid part.
                    if accumulate {
                        for i in 0..rows {
                            edge[i * nr..i * nr + cols].copy_from_slice(&c[corner + i * n..][..cols]);
                        }
                    }
                    let prev = if accumulate { edge.as_ptr() } else { std::ptr::null() };
                    let st = TileStore { prefetch_b, ..TileStore::plain(prev, edge.as_mut_ptr(), nr) };
                    // SAFETY: as above, with `edge` as a full mr × nr tile (ld = nr; mr·nr ≤ 256).
                    unsafe { kernel.run(kb, apanel.as_ptr(), bp, offsets.as_ptr(), &st) };
                    match epilogue.as_deref_mut() {
                        None => {
                            for i in 0..rows {
                                c[corner + i * n..][..cols].copy_from_slice(&edge[i * nr..i * nr + cols]);
                            }
                        }
                        Some(e) => {
                            for t in 0..cols {
                                let j = j0 + t;
                                seg = e.find(j, seg);
                                for i in 0..rows {
                                    let row = ir * mr + i;
                                    let v = e.finish(row, j, edge[i * nr + t]);
                                    let s = &mut e.segments[seg];
                                    s.view[[row, j - s.col0]] = v;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Where a product goes: plain `C`, or through an [`Epilogue`] with a buffer
/// for the partial sums between k-blocks.
enum Target<'x, 's, 'a> {
    Plain(&'x mut [f32]),
    Fused(&'x mut Epilogue<'s, 'a>, &'x mut Vec<f32>),
}

impl<'s, 'a> Target<'_, 's, 'a> {
    /// Checks sizes and handles the empty products (nothing written when the
    /// product has no element; zeros, or the epilogue of zeros, when `k = 0`).
    /// Returns whether nothing is left to do.
    fn trivial(&mut self, a: &PackedA, n: usize, who: &str) -> bool {
        let (m, k) = (a.m, a.k);
        match self {
            Target::Plain(c) => {
                assert_eq!(c.len(), m * n, "{who}: C has {} floats, expected {m}×{n}", c.len());
                if k == 0 {
                    c.fill(0.0);
                }
            }
            Target::Fused(e, _) => {
                e.check(m, n, who);
                if k == 0 {
                    for s in 0..e.segments.len() {
                        let (col0, cols) = (e.segments[s].col0, e.segments[s].view.ncols());
                        for row in 0..m {
                            for t in 0..cols {
                                let v = e.finish(row, col0 + t, 0.0);
                                e.segments[s].view[[row, t]] = v;
                            }
                        }
                    }
                }
            }
        }
        m == 0 || n == 0 || k == 0
    }

    /// The partial-sum buffer for the block at `k0` of depth `k`, and the
    /// epilogue if this is the last block. A single-block product needs no buffer.
    fn block(&mut self, m: usize, n: usize, k0: usize, k: usize) -> (&mut [f32], Option<&mut Epilogue<'s, 'a>>) {
        match self {
            Target::Plain(c) => (c, None),
            Target::Fused(e, partial) => {
                if k <= KC {
                    return (&mut [], Some(&mut **e));
                }
                if partial.len() < m * n {
                    partial.resize(m * n, 0.0);
                }
                let last = k0 + KC >= k;
                (&mut partial[..m * n], if last { Some(e) } else { None })
            }
        }
    }
}

/// `C ← A·B` with `B` read in place from `b`: element `(kk, j)` of `B` is
/// `b[offsets[kk] + j]` (implicit GEMM: no packing of B).
///
/// # Arguments
/// * `a` — packed `[m, k]`.
/// * `n` — columns of `B` and `C`.
/// * `b`, `offsets` — `offsets.len() == k`; every `offsets[kk] + j` for
///   `j < n` rounded up to a multiple of NR must index `b` (the tail beyond
///   `n` is read but its results are discarded).
/// * `c` — `m × n` row-major output; overwritten.
///
/// # Panics
/// If `c.len() != m·n`, `offsets.len() != k`, or `b` is too short for the reads above.
pub fn gemm_gather(a: &PackedA, n: usize, b: &[f32], offsets: &[usize], c: &mut [f32]) {
    let nr = a.kernel.nr();
    let panels: Vec<usize> = (0..n.div_ceil(nr)).map(|jr| jr * nr).collect();
    gather(a, n, b, &panels, offsets, Target::Plain(c));
}

/// [`gemm_gather`] with the columns in runs, finished by `epilogue`.
///
/// Column `jr·NR + t` of `B` (`t < NR`, NR = `a.kernel().nr()`) at row `kk`
/// is `b[panels[jr] + offsets[kk] + t]`: each panel of NR columns starts
/// where `panels` says, so a product can skip columns it does not need.
/// The result is `dst = relu?(A·B + bias)` (see [`Epilogue`]), written
/// straight from the microkernel's registers where a tile lies inside one
/// segment. `partial` holds the `m × n` partial sums when `k` spans more
/// than one k-block (grown as needed, reused across calls).
///
/// # Panics
/// If `panels.len() != ⌈n / NR⌉`, `offsets.len() != k`, a panel's reads
/// (`panels[jr] + offsets[kk] + NR`) pass the end of `b`, the epilogue's bias
/// is not `[m]`, or its segments do not tile the columns `0..n` with `m` rows each.
#[allow(clippy::too_many_arguments)]
pub fn gemm_gather_fused(
    a: &PackedA,
    n: usize,
    b: &[f32],
    panels: &[usize],
    offsets: &[usize],
    epilogue: &mut Epilogue<'_, '_>,
    partial: &mut Vec<f32>,
) {
    gather(a, n, b, panels, offsets, Target::Fused(epilogue, partial));
}

fn gather(a: &PackedA, n: usize, b: &[f32], panels: &[usize], offsets: &[usize], mut target: Target<'_, '_, '_>) {
    let (m, k) = (a.m, a.k);
    assert_eq!(offsets.len(), k, "gemm_gather: {} offsets for depth {k}", offsets.len());
    if target.trivial(a, n, "gemm_gather") {
        return;
    }
    let kernel = a.kernel;
    let (mr, nr) = (kernel.mr(), kernel.nr());
    assert_eq!(panels.len(), n.div_ceil(nr), "gemm_gather: {} panel starts for {n} columns", panels.len());
    let max_offset = offsets.iter().copied().max().unwrap_or(0);
    let max_panel = panels.iter().copied().max().unwrap_or(0);
    let reach = max_panel + max_offset + nr;
    assert!(reach <= b.len(), "gemm_gather: B reads up to {reach} of {}", b.len());
    let m_pad = m.div_ceil(mr) * mr;
    for k0 in (0..k).step_by(KC) {
        let kb = KC.min(k - k0);
        let ablock = &a.data[k0 * m_pad..(k0 + kb) * m_pad];
        let (c, epilogue) = target.block(m, n, k0, k);
        // SAFETY: panel jr reads b[panels[jr] + offsets[kk] .. + nr], inside
        // `b` by the assertion above; `ablock` is this k-block of `a`; `c`
        // holds m × n floats (or is unused: a single fused block); the epilogue was checked.
        unsafe {
            multiply_block(
                kernel,
                ablock,
                kb,
                m,
                n,
                |jr| b.as_ptr().add(panels[jr]),
                &offsets[k0..k0 + kb],
                c,
                k0 > 0,
                epilogue,
                // Prefetch the next panel's rows (a distance in floats; none after the last).
                |jr| panels.get(jr + 1).map_or(0, |&next| next.wrapping_sub(panels[jr])),
            )
        };
    }
}

/// Reusable per-thread buffers for [`gemm_packed`].
#[derive(Default, Debug)]
pub struct Scratch {
    bpack: Vec<f32>,
    partial: Vec<f32>,
}

/// Somewhere to write one row of `B`: a plain slice, or a row of packed panels.
pub trait RowSink {
    /// Writes `src` at columns `j .. j + src.len()`.
    fn copy(&mut self, j: usize, src: &[f32]);
    /// Writes `v` at columns `j .. j + len`.
    fn fill(&mut self, j: usize, len: usize, v: f32);
    /// Writes `v` at column `j`.
    fn set(&mut self, j: usize, v: f32);
}

impl RowSink for [f32] {
    #[inline]
    fn copy(&mut self, j: usize, src: &[f32]) {
        self[j..j + src.len()].copy_from_slice(src);
    }
    #[inline]
    fn fill(&mut self, j: usize, len: usize, v: f32) {
        self[j..j + len].fill(v);
    }
    #[inline]
    fn set(&mut self, j: usize, v: f32) {
        self[j] = v;
    }
}

/// Row `kk` of a packed B block: column `j` lives at
/// `(j / NR)·kb·NR + kk·NR + j % NR`, so a run of columns is split at panel edges.
pub struct PanelRow<'a> {
    block: &'a mut [f32],
    /// `log2(NR)`: NR is a power of two, so panel arithmetic is shifts and masks.
    shift: u32,
    /// Floats per panel, `kb·NR`.
    panel: usize,
    /// Offset of this row inside a panel, `kk·NR`.
    row: usize,
}

impl<'a> PanelRow<'a> {
    fn new(block: &'a mut [f32], kb: usize, nr: usize, kk: usize) -> Self {
        debug_assert!(nr.is_power_of_two());
        PanelRow { block, shift: nr.trailing_zeros(), panel: kb * nr, row: kk * nr }
    }

    #[inline]
    fn nr(&self) -> usize {
        1 << self.shift
    }

    #[inline]
    fn at(&self, j: usize) -> usize {
        (j >> self.shift) * self.panel + self.row + (j & (self.nr() - 1))
    }
}

impl RowSink for PanelRow<'_> {
    #[inline]
    fn copy(&mut self, mut j: usize, mut src: &[f32]) {
        while !src.is_empty() {
            let len = (self.nr() - (j & (self.nr() - 1))).min(src.len());
            let o = self.at(j);
            self.block[o..o + len].copy_from_slice(&src[..len]);
            j += len;
            src = &src[len..];
        }
    }
    #[inline]
    fn fill(&mut self, mut j: usize, mut len: usize, v: f32) {
        while len > 0 {
            let run = (self.nr() - (j & (self.nr() - 1))).min(len);
            let o = self.at(j);
            self.block[o..o + run].fill(v);
            j += run;
            len -= run;
        }
    }
    #[inline]
    fn set(&mut self, j: usize, v: f32) {
        let o = self.at(j);
        self.block[o] = v;
    }
}

/// `C ← A·B` where row `kk` of `B` (`n` columns) is written by `fill_b(kk, sink)`.
///
/// # Arguments
/// * `a` — packed `[m, k]`.
/// * `n` — columns of `B` and `C`.
/// * `fill_b` — called exactly once per row `0..k` in increasing order; it
///   must write every column `0..n` of the row through the [`RowSink`]
///   (which writes straight into the kernel's panel layout).
/// * `c` — `m × n` row-major output (`c.len() == m·n`); overwritten.
/// * `scratch` — buffers reused across calls on one thread.
///
/// # Panics
/// If `c.len() != m·n`.
pub fn gemm_packed(
    a: &PackedA,
    n: usize,
    fill_b: impl FnMut(usize, &mut PanelRow<'_>),
    c: &mut [f32],
    scratch: &mut Scratch,
) {
    packed(a, n, fill_b, Target::Plain(c), &mut scratch.bpack);
}

/// [`gemm_packed`] finished by `epilogue` (see [`gemm_gather_fused`]).
///
/// # Panics
/// If the epilogue's bias is not `[m]` or its segments do not tile the
/// columns `0..n` with `m` rows each.
pub fn gemm_packed_fused(
    a: &PackedA,
    n: usize,
    fill_b: impl FnMut(usize, &mut PanelRow<'_>),
    epilogue: &mut Epilogue<'_, '_>,
    scratch: &mut Scratch,
) {
    let Scratch { bpack, partial } = scratch;
    packed(a, n, fill_b, Target::Fused(epilogue, partial), bpack);
}

fn packed(
    a: &PackedA,
    n: usize,
    mut fill_b: impl FnMut(usize, &mut PanelRow<'_>),
    mut target: Target<'_, '_, '_>,
    bpack: &mut Vec<f32>,
) {
    let (m, k) = (a.m, a.k);
    if target.trivial(a, n, "gemm_packed") {
        return;
    }
    let kernel = a.kernel;
    let (mr, nr) = (kernel.mr(), kernel.nr());
    let m_pad = m.div_ceil(mr) * mr;
    let n_pad = n.div_ceil(nr) * nr;
    bpack.resize(KC * n_pad, 0.0);
    let offsets: Vec<usize> = (0..KC).map(|kk| kk * nr).collect();
    for k0 in (0..k).step_by(KC) {
        let kb = KC.min(k - k0);
        for kk in 0..kb {
            let mut row = PanelRow::new(&mut bpack[..kb * n_pad], kb, nr, kk);
            fill_b(k0 + kk, &mut row);
            row.fill(n, n_pad - n, 0.0);
        }
        let bpack = &bpack[..kb * n_pad];
        let ablock = &a.data[k0 * m_pad..(k0 + kb) * m_pad];
        let (c, epilogue) = target.block(m, n, k0, k);
        // SAFETY: panel jr is bpack[jr·kb·nr ..][.. kb·nr], its row kk at kk·nr;
        // `ablock` is this k-block of `a`; `c` and the epilogue as in `gather`.
        unsafe {
            multiply_block(
                kernel,
                ablock,
                kb,
                m,
                n,
                |jr| bpack.as_ptr().add(jr * kb * nr),
                &offsets[..kb],
                c,
                k0 > 0,
                epilogue,
                |_| 0,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Integer-valued operands make every sum exact: the result must equal
    /// the f64 reference bit for bit, for every size around the tile and
    /// block edges, with C prefilled with NaN to catch unwritten elements.
    #[test]
    fn exact_for_sizes_around_tile_edges() {
        for kernel in [Microkernel::Avx512, Microkernel::Avx2].into_iter().filter(|k| k.available()) {
            let (mr, nr) = (kernel.mr(), kernel.nr());
            for m in [1, mr - 1, mr, mr + 1, 2 * mr + 3] {
                for k in [1, 2, KC - 1, KC, KC + 1, 2 * KC + 7] {
                    for n in [1, nr - 1, nr, nr + 1, 3 * nr + 5] {
                        let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
                        let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j * 2) % 7) as f32 - 3.0);
                        let packed = PackedA::pack(a.view(), kernel);
                        let mut c = vec![f32::NAN; m * n];
                        gemm_packed(
                            &packed,
                            n,
                            |kk, row| row.copy(0, b.row(kk).as_slice().unwrap()),
                            &mut c,
                            &mut Scratch::default(),
                        );
                        // The same B read in place: row kk lives at offset kk·(n + 40) + 3.
                        let stride = n + 40;
                        let mut flat = vec![0.0f32; k * stride + 64];
                        for kk in 0..k {
                            flat[kk * stride + 3..kk * stride + 3 + n].copy_from_slice(b.row(kk).as_slice().unwrap());
                        }
                        let offsets: Vec<usize> = (0..k).map(|kk| kk * stride + 3).collect();
                        let mut g = vec![f32::NAN; m * n];
                        gemm_gather(&packed, n, &flat, &offsets, &mut g);
                        for i in 0..m {
                            for j in 0..n {
                                assert_eq!(g[i * n + j], c[i * n + j], "gather {kernel:?} m{m} k{k} n{n} ({i},{j})");
                                let r: f64 = (0..k).map(|l| a[[i, l]] as f64 * b[[l, j]] as f64).sum();
                                assert_eq!(c[i * n + j] as f64, r, "{kernel:?} m{m} k{k} n{n} ({i},{j})");
                            }
                        }
                    }
                }
            }
        }
    }

    /// The fused epilogue: every column lands in its segment (cut at odd
    /// places, so tiles straddle segments; rows strided past the columns) as
    /// `relu(A·B + bias)`, zero where `keep` is false, bit for bit the f64
    /// reference; nothing outside the segments is written.
    #[test]
    fn fused_epilogue_places_every_column() {
        for kernel in [Microkernel::Avx512, Microkernel::Avx2].into_iter().filter(|k| k.available()) {
            let (mr, nr) = (kernel.mr(), kernel.nr());
            for m in [1, mr, 2 * mr + 3] {
                for k in [0, 5, KC, KC + 9] {
                    for n in [1, nr, 3 * nr + 5] {
                        for cuts in [vec![], vec![7], vec![nr, nr + 1, 2 * nr + 3]] {
                            fused_case(kernel, m, k, n, &cuts);
                        }
                    }
                }
            }
        }
    }

    fn fused_case(kernel: Microkernel, m: usize, k: usize, n: usize, cuts: &[usize]) {
        let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j * 2) % 7) as f32 - 3.0);
        let bias: Vec<f32> = (0..m).map(|i| (i % 5) as f32 - 2.0).collect();
        let keep = |j: usize| j % 5 != 3;
        let keep_bits = |j0: usize, cols: usize| (0..cols).filter(|&t| keep(j0 + t)).fold(0, |b, t| b | 1 << t);
        let packed = PackedA::pack(a.view(), kernel);
        // Segment bounds: 0, the cuts inside n, n.
        let mut bounds: Vec<usize> = std::iter::once(0).chain(cuts.iter().copied().filter(|&c| c < n)).collect();
        bounds.push(n);
        // Each segment's rows are 9 floats longer than its columns (never written).
        let mut stores: Vec<Array2<f32>> =
            bounds.windows(2).map(|w| Array2::from_elem((m, w[1] - w[0] + 9), f32::NAN)).collect();
        let expect = |i: usize, j: usize| -> f32 {
            let r: f64 = (0..k).map(|l| a[[i, l]] as f64 * b[[l, j]] as f64).sum::<f64>() + bias[i] as f64;
            if keep(j) {
                r.max(0.0) as f32
            } else {
                0.0
            }
        };
        for gather_b in [false, true] {
            for s in stores.iter_mut() {
                s.fill(f32::NAN);
            }
            let mut segments: Vec<Segment<'_>> = stores
                .iter_mut()
                .zip(bounds.windows(2))
                .map(|(s, w)| Segment { col0: w[0], view: s.slice_mut(ndarray::s![.., ..w[1] - w[0]]) })
                .collect();
            let mut e = Epilogue { bias: &bias, relu: true, segments: &mut segments, keep: Some(&keep_bits) };
            let mut partial = Vec::new();
            if gather_b {
                // Panels start 5 floats apart beyond their width (the gaps are never read).
                let nr = kernel.nr();
                let panels: Vec<usize> = (0..n.div_ceil(nr)).map(|jr| jr * (nr + 5)).collect();
                let stride = panels.len() * (nr + 5) + 64;
                let mut flat = vec![f32::NAN; k * stride + 64];
                for kk in 0..k {
                    for j in 0..n {
                        flat[kk * stride + panels[j / nr] + j % nr] = b[[kk, j]];
                    }
                }
                let offsets: Vec<usize> = (0..k).map(|kk| kk * stride).collect();
                gemm_gather_fused(&packed, n, &flat, &panels, &offsets, &mut e, &mut partial);
            } else {
                let fill = |kk: usize, row: &mut PanelRow<'_>| row.copy(0, b.row(kk).as_slice().unwrap());
                gemm_packed_fused(&packed, n, fill, &mut e, &mut Scratch::default());
            }
            for (s, w) in stores.iter().zip(bounds.windows(2)) {
                for i in 0..m {
                    for t in 0..s.ncols() {
                        let got = s[[i, t]];
                        if t < w[1] - w[0] {
                            let want = expect(i, w[0] + t);
                            assert_eq!(
                                got,
                                want,
                                "{kernel:?} m{m} k{k} n{n} cuts {cuts:?} gather {gather_b} ({i},{})",
                                w[0] + t
                            );
                        } else {
                            assert!(got.is_nan(), "{kernel:?} m{m} k{k} n{n}: wrote outside a segment");
                        }
                    }
                }
            }
        }
    }
}
