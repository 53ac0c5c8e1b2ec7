//! Packing: the left operand into `MR`-tall panels once ([`PackedA`]), the
//! right operand row by row into `NR`-wide panels as it is generated
//! ([`PanelRow`], through the [`RowSink`] interface that im2col writes to).

use super::microkernel::Microkernel;

/// Rows of `B` (depth) per block: a 256 × 32 f32 B panel is 32 KB (L1 on
/// Zen 4); the narrower kernels' panels are smaller (NEON 12 KB of
/// Neoverse N1's 64 KB).
pub const KC: usize = 256;

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
    /// If `kernel` is not available on this CPU (a caller bug: use
    /// [`Microkernel::select`] or [`Microkernel::require`]).
    pub fn pack(a: ndarray::ArrayView2<'_, f32>, kernel: Microkernel) -> Self {
        assert!(kernel.available(), "{kernel} is not supported by this CPU");
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

    /// The k-block starting at depth `k0` with `kb` rows: `⌈m/MR⌉` panels of `kb·MR` floats.
    pub(crate) fn block(&self, k0: usize, kb: usize) -> &[f32] {
        let m_pad = self.m.div_ceil(self.kernel.mr()) * self.kernel.mr();
        &self.data[k0 * m_pad..(k0 + kb) * m_pad]
    }
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
/// `(j / NR)·kb·NR + kk·NR + j % NR`, so a run of columns is split at panel
/// edges. `NR` need not be a power of two (NEON's is 12): a run costs one
/// division, then walks the panels.
pub struct PanelRow<'a> {
    block: &'a mut [f32],
    nr: usize,
    /// Floats per panel, `kb·NR`.
    panel: usize,
    /// Offset of this row inside a panel, `kk·NR`.
    row: usize,
}

impl<'a> PanelRow<'a> {
    pub(crate) fn new(block: &'a mut [f32], kb: usize, nr: usize, kk: usize) -> Self {
        PanelRow { block, nr, panel: kb * nr, row: kk * nr }
    }

    /// Calls `f(block, offset in the block, offset in the run, length)`
    /// for the pieces of the run of `len` columns from `j`, one per panel it touches.
    #[inline]
    fn pieces(&mut self, j: usize, len: usize, mut f: impl FnMut(&mut [f32], usize, usize, usize)) {
        let (mut p, mut t) = (j / self.nr, j % self.nr);
        let mut done = 0;
        while done < len {
            let run = (self.nr - t).min(len - done);
            f(self.block, p * self.panel + self.row + t, done, run);
            done += run;
            p += 1;
            t = 0;
        }
    }
}

impl RowSink for PanelRow<'_> {
    #[inline]
    fn copy(&mut self, j: usize, src: &[f32]) {
        self.pieces(j, src.len(), |block, o, s, run| block[o..o + run].copy_from_slice(&src[s..s + run]));
    }
    #[inline]
    fn fill(&mut self, j: usize, len: usize, v: f32) {
        self.pieces(j, len, |block, o, _, run| block[o..o + run].fill(v));
    }
    #[inline]
    fn set(&mut self, j: usize, v: f32) {
        let o = (j / self.nr) * self.panel + self.row + j % self.nr;
        self.block[o] = v;
    }
}
