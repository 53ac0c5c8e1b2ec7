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

#[cfg(target_arch = "x86_64")]
use super::x86;

// The tile sizes below must be the kernels' own.
#[cfg(target_arch = "x86_64")]
const _: () = assert!(x86::AVX512_MR == 8 && x86::AVX512_NR == 32 && x86::AVX2_MR == 6 && x86::AVX2_NR == 16);

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

    /// Runs the kernel on one tile: `C[mr×nr] (+)= A panel · B`, B row `kk`
    /// being the `nr` floats at `b + offsets[kk]`.
    ///
    /// # Safety
    /// The kernel must be [`available`](Self::available); `a` must hold
    /// `kb·mr` floats, `offsets` `kb` entries, every `b + offsets[kk] .. + nr`
    /// must be readable, and `c` must hold `mr` rows of `nr` floats `ldc` apart.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        self,
        kb: usize,
        a: *const f32,
        b: *const f32,
        offsets: *const usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            match self {
                Microkernel::Avx512 => x86::kernel_avx512(kb, a, b, offsets, c, ldc, accumulate),
                Microkernel::Avx2 => x86::kernel_avx2(kb, a, b, offsets, c, ldc, accumulate),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (kb, a, b, offsets, c, ldc, accumulate);
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

/// One k-block of the product: every `mr × nr` tile of `C` (+)= A block · B,
/// where `b_panel(jr)` is the base pointer of B panel `jr` and B row `kk` of
/// it is at `offsets[kk]` from that base.
///
/// # Safety
/// `ablock` must be the packed k-block (`m_pad × kb` floats) of a `PackedA`
/// whose kernel is available; `offsets.len() == kb`; for every panel `jr` in
/// `0..⌈n/nr⌉` and row `kk`, `b_panel(jr) + offsets[kk] .. + nr` must be readable.
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
) {
    let (mr, nr) = (kernel.mr(), kernel.nr());
    let mut edge = [0.0f32; 8 * 32];
    for jr in 0..n.div_ceil(nr) {
        let cols = nr.min(n - jr * nr);
        let bp = b_panel(jr);
        for ir in 0..m.div_ceil(mr) {
            let apanel = &ablock[ir * kb * mr..(ir + 1) * kb * mr];
            let rows = mr.min(m - ir * mr);
            let corner = ir * mr * n + jr * nr;
            if rows == mr && cols == nr {
                // SAFETY: A panel of kb·mr floats (sliced); B rows readable
                // (caller's contract); the C tile's rows ir·mr.. and columns
                // jr·nr.. lie inside the m × n slice `c`.
                unsafe {
                    kernel.run(kb, apanel.as_ptr(), bp, offsets.as_ptr(), c[corner..].as_mut_ptr(), n, accumulate)
                };
            } else {
                // Edge tile: compute a full tile into `edge`, copy the valid part.
                if accumulate {
                    for i in 0..rows {
                        edge[i * nr..i * nr + cols].copy_from_slice(&c[corner + i * n..][..cols]);
                    }
                }
                // SAFETY: as above, with `edge` as a full mr × nr tile (ldc = nr; mr·nr ≤ 256).
                unsafe { kernel.run(kb, apanel.as_ptr(), bp, offsets.as_ptr(), edge.as_mut_ptr(), nr, accumulate) };
                for i in 0..rows {
                    c[corner + i * n..][..cols].copy_from_slice(&edge[i * nr..i * nr + cols]);
                }
            }
        }
    }
}

/// Checks `C`'s size and handles the empty products (`C` untouched when it
/// has no element, zeroed when `k = 0`); returns whether nothing is left to do.
fn trivial(a: &PackedA, n: usize, c: &mut [f32], who: &str) -> bool {
    let (m, k) = (a.m, a.k);
    assert_eq!(c.len(), m * n, "{who}: C has {} floats, expected {m}×{n}", c.len());
    if k == 0 {
        c.fill(0.0);
    }
    m == 0 || n == 0 || k == 0
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
    let (m, k) = (a.m, a.k);
    assert_eq!(offsets.len(), k, "gemm_gather: {} offsets for depth {k}", offsets.len());
    if trivial(a, n, c, "gemm_gather") {
        return;
    }
    let kernel = a.kernel;
    let (mr, nr) = (kernel.mr(), kernel.nr());
    let n_pad = n.div_ceil(nr) * nr;
    let max_offset = offsets.iter().copied().max().unwrap_or(0);
    assert!(max_offset + n_pad <= b.len(), "gemm_gather: B reads up to {} of {}", max_offset + n_pad, b.len());
    let m_pad = m.div_ceil(mr) * mr;
    for k0 in (0..k).step_by(KC) {
        let kb = KC.min(k - k0);
        let ablock = &a.data[k0 * m_pad..(k0 + kb) * m_pad];
        // SAFETY: panel jr reads b[offsets[kk] + jr·nr .. + nr], inside `b`
        // by the assertion above; `ablock` is this k-block of `a`.
        unsafe {
            multiply_block(kernel, ablock, kb, m, n, |jr| b.as_ptr().add(jr * nr), &offsets[k0..k0 + kb], c, k0 > 0)
        };
    }
}

/// Reusable per-thread buffers for [`gemm_packed`].
#[derive(Default, Debug)]
pub struct Scratch {
    bpack: Vec<f32>,
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
    mut fill_b: impl FnMut(usize, &mut PanelRow<'_>),
    c: &mut [f32],
    scratch: &mut Scratch,
) {
    let (m, k) = (a.m, a.k);
    if trivial(a, n, c, "gemm_packed") {
        return;
    }
    let kernel = a.kernel;
    let (mr, nr) = (kernel.mr(), kernel.nr());
    let m_pad = m.div_ceil(mr) * mr;
    let n_pad = n.div_ceil(nr) * nr;
    scratch.bpack.resize(KC * n_pad, 0.0);
    let offsets: Vec<usize> = (0..KC).map(|kk| kk * nr).collect();
    for k0 in (0..k).step_by(KC) {
        let kb = KC.min(k - k0);
        for kk in 0..kb {
            let mut row = PanelRow::new(&mut scratch.bpack[..kb * n_pad], kb, nr, kk);
            fill_b(k0 + kk, &mut row);
            row.fill(n, n_pad - n, 0.0);
        }
        let bpack = &scratch.bpack[..kb * n_pad];
        let ablock = &a.data[k0 * m_pad..(k0 + kb) * m_pad];
        // SAFETY: panel jr is bpack[jr·kb·nr ..][.. kb·nr], its row kk at kk·nr;
        // `ablock` is this k-block of `a`.
        unsafe {
            multiply_block(kernel, ablock, kb, m, n, |jr| bpack.as_ptr().add(jr * kb * nr), &offsets[..kb], c, k0 > 0)
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
}
