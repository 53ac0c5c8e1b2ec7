//! The tile driver: the packed and implicit GEMMs over any [`Microkernel`],
//! `C[m×n] = A[m×k] · B[k×n]`, C row-major or finished by an [`Epilogue`].
//!
//! Built for convolution, where `A` is a layer's filters (packed once and
//! reused for every tile of every batch) and `B` is the im2col matrix of a
//! tile, which never exists in full: [`gemm_packed`] asks a closure for one
//! row of `B` at a time and packs it straight into the kernel's panel layout,
//! and [`gemm_gather`] reads `B` in place through a table of row offsets (the
//! implicit convolution).
//!
//! # Blocking (BLIS order)
//! ```text
//! for each k-block of KC rows:               B block KC × n packed (L2)
//!     for each NR-wide B panel (jr):          B panel KC × NR      (L1)
//!         for each MR-tall A panel (ir):      A panel MR × KC      (L2, streamed)
//!             microkernel: C[ir, jr] (+)= A panel · B panel   (registers)
//! ```
//! The first k-block stores into `C`, later ones accumulate, so each element
//! of `C` is summed in the same order whatever `n` and the tiling are. A tile
//! whose rows run past `m` is still stored from the registers (the kernel
//! stores only `rows`); one whose columns run past `n`, or that straddles two
//! output segments, goes through a scratch tile and a scalar pass.

use ndarray::ArrayViewMut2;

use super::microkernel::Microkernel;
use super::pack::{PackedA, PanelRow, RowSink, KC};
use super::tile::{SweepTile, TileStore};

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

/// A tile written in place: pointer to its first output, row stride, keep bits.
type DirectTile = (*mut f32, usize, u32);

/// Deepest k-block whose tiles go row panel by row panel (every column
/// panel of A's first `mr` rows, then the next `mr` rows, …) instead of
/// column panel by column panel. A tile this short spends as long storing
/// its outputs as multiplying, so what matters is where the stores go: `mr`
/// output rows (channel planes) written front to back at a time, not every
/// row a panel at a time (64 interleaved write streams for conv1_1). B is
/// then read once per row panel, which a short block can afford: it stays in
/// L1/L2. conv1_1 (27 deep) at 224, batch 8, quiet criterion, Zen 4
/// AVX-512: 18.8 → 16.0 ms at 1 thread, 9.9 → 8.1 ms at 2 (63 → 75% of the
/// FMA peak). Every deeper block keeps the column-panel order, whose B panel
/// stays in L1 across A's row panels.
///
/// A short tile is also cheap enough (27 k-steps: ~160 cycles of FMAs on
/// AVX2) for the call and set-up around it to count, so a row panel's
/// in-place tiles run in one kernel call each (`Microkernel::sweep`): the
/// conv1_1-shaped product of `examples/short_gemm_min.rs`, AVX2, Zen 3,
/// fastest call, two builds run side by side on a contended VM: 49.8–53.5 →
/// 45.4–48.0 µs plain, 52.8–56.6 → 48.9–50.5 µs fused.
pub const SHORT_DEPTH: usize = 32;

/// One k-block of the product, tile by tile, where `b_panel(jr)` is the base
/// pointer of B panel `jr` and B row `kk` of it is at `offsets[kk]` from that
/// base; row panel by row panel when `kb ≤` [`SHORT_DEPTH`], column panel by
/// column panel otherwise.
///
/// Without `epilogue`, every `mr × nr` tile of the row-major `m × n` slice
/// `c` is stored (or, when `accumulate`, added to). With one (the last
/// k-block), the tiles of `c` are only read (when `accumulate`) and the
/// finished values go to the epilogue's segments: straight from the
/// registers for tiles of whole panels inside one segment (the last row
/// panel's `rows < mr` included), through a scalar pass otherwise.
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
    let (panels_n, panels_m) = (n.div_ceil(nr), m.div_ceil(mr));
    // Per column panel, with an epilogue: a whole panel inside one segment
    // with unit column stride is written in place (pointer to its column j0,
    // row stride, keep bits). Without one, nothing is found or allocated.
    let mut seg = 0;
    let with_epilogue = if epilogue.is_some() { panels_n } else { 0 };
    let directs: Vec<Option<DirectTile>> = (0..with_epilogue)
        .map(|jr| {
            let j0 = jr * nr;
            match epilogue.as_deref_mut() {
                Some(e) if j0 + nr <= n => {
                    seg = e.find(j0, seg);
                    let keep = e.keep_bits(j0, nr);
                    let s = &mut e.segments[seg];
                    let inside = j0 + nr <= s.col0 + s.view.ncols();
                    let (rs, cs) = (s.view.strides()[0], s.view.strides()[1]);
                    let base = s.view.as_mut_ptr();
                    // SAFETY: column j0 − col0 < ncols of row 0 lies inside the view (`inside`, unit column stride).
                    (inside && cs == 1 && rs >= 0).then(|| (unsafe { base.add(j0 - s.col0) }, rs as usize, keep))
                }
                _ => None,
            }
        })
        .collect();
    // Short blocks: each column panel's tile as a sweep tile where it is
    // stored in place (from the registers: a whole panel inside one segment,
    // or inside `c` without an epilogue); the others go through `tile`.
    let short = kb <= SHORT_DEPTH;
    let c_base = c.as_mut_ptr();
    let (bias, relu) = epilogue.as_ref().map_or((std::ptr::null(), false), |e| (e.bias.as_ptr(), e.relu));
    let sweeps: Vec<Option<SweepTile>> = (0..if short { panels_n } else { 0 })
        .map(|jr| {
            let j0 = jr * nr;
            let (out, ld_out, keep) = match epilogue {
                Some(_) => directs[jr]?,
                None if j0 + nr <= n => (c_base.wrapping_add(j0), n, u32::MAX),
                None => return None,
            };
            let prev = if accumulate { c_base.wrapping_add(j0).cast_const() } else { std::ptr::null() };
            Some(SweepTile { b: b_panel(jr), out, ld_out, prev, keep, prefetch_b: prefetch_next(jr) })
        })
        .collect();
    let mut tile = |jr: usize, ir: usize| {
        let j0 = jr * nr;
        let cols = nr.min(n - j0);
        let bp = b_panel(jr);
        let direct = directs.get(jr).copied().flatten();
        {
            let apanel = &ablock[ir * kb * mr..(ir + 1) * kb * mr];
            let rows = mr.min(m - ir * mr);
            let corner = ir * mr * n + j0;
            // The first tile of a panel prefetches the next panel's B rows.
            let prefetch_b = if ir == 0 { prefetch_next(jr) } else { 0 };
            match (&epilogue, direct) {
                (None, _) if cols == nr => {
                    // One pointer for reading and writing the C tile.
                    let out = c[corner..].as_mut_ptr();
                    let prev = if accumulate { out.cast_const() } else { std::ptr::null() };
                    let st = TileStore { prefetch_b, ..TileStore::plain(prev, out, n, rows) };
                    // SAFETY: A panel of kb·mr floats (sliced); B rows readable
                    // (caller's contract); the C tile's rows ir·mr .. ir·mr + rows ≤ m
                    // and columns j0 .. j0 + nr ≤ n lie inside the m × n slice `c`.
                    unsafe { kernel.run(kb, apanel.as_ptr(), bp, offsets.as_ptr(), &st) };
                }
                (Some(e), Some((base, ld, keep))) => {
                    // Partial sums from `c`, results to the segment: two buffers.
                    let prev = if accumulate { c[corner..].as_ptr() } else { std::ptr::null() };
                    let st = TileStore {
                        prev,
                        ld_prev: n,
                        // SAFETY: rows ir·mr .. ir·mr + rows ≤ m of the segment,
                        // whose columns j0 .. j0 + nr it holds (checked above).
                        out: unsafe { base.add(ir * mr * ld) },
                        ld_out: ld,
                        rows,
                        bias: e.bias[ir * mr..].as_ptr(),
                        relu: e.relu,
                        keep,
                        prefetch_b,
                    };
                    // SAFETY: as above; `prev` is the C tile when accumulating;
                    // `bias` has `rows` entries from ir·mr.
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
                    let st = TileStore { prefetch_b, ..TileStore::plain(prev, edge.as_mut_ptr(), nr, rows) };
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
    };
    if short {
        // Runs of in-place tiles in one kernel call each (see `SweepTile`).
        let prefetch = sweeps.iter().flatten().any(|t| t.prefetch_b != 0);
        let tiles: Vec<SweepTile> = sweeps.iter().flatten().copied().collect();
        for ir in 0..panels_m {
            let shared = TileStore {
                prev: std::ptr::null(),
                ld_prev: n,
                out: std::ptr::null_mut(),
                ld_out: 0,
                rows: mr.min(m - ir * mr),
                bias: if bias.is_null() { bias } else { bias.wrapping_add(ir * mr) },
                relu,
                keep: u32::MAX,
                // The first row panel prefetches the next panels' B rows, as `tile` does.
                prefetch_b: usize::from(prefetch && ir == 0),
            };
            let apanel = ablock[ir * kb * mr..(ir + 1) * kb * mr].as_ptr();
            let (mut jr, mut next) = (0, 0);
            while jr < panels_n {
                let run = sweeps[jr..].iter().take_while(|t| t.is_some()).count();
                if run == 0 {
                    tile(jr, ir);
                    jr += 1;
                    continue;
                }
                // SAFETY: each tile's store is the one `tile` would give it:
                // the A panel of row panel ir (sliced), its B panel, its
                // output and partial sums moved down to row ir·mr, `rows`
                // rows of bias (null without an epilogue); see `tile`.
                unsafe { kernel.sweep(kb, apanel, offsets.as_ptr(), &shared, ir * mr, &tiles[next..next + run]) };
                (jr, next) = (jr + run, next + run);
            }
        }
    } else {
        for jr in 0..panels_n {
            (0..panels_m).for_each(|ir| tile(jr, ir));
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
        let (m, k) = (a.rows(), a.depth());
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
    let nr = a.kernel().nr();
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
    let (m, k) = (a.rows(), a.depth());
    assert_eq!(offsets.len(), k, "gemm_gather: {} offsets for depth {k}", offsets.len());
    if target.trivial(a, n, "gemm_gather") {
        return;
    }
    let kernel = a.kernel();
    let nr = kernel.nr();
    assert_eq!(panels.len(), n.div_ceil(nr), "gemm_gather: {} panel starts for {n} columns", panels.len());
    let max_offset = offsets.iter().copied().max().unwrap_or(0);
    let max_panel = panels.iter().copied().max().unwrap_or(0);
    let reach = max_panel + max_offset + nr;
    assert!(reach <= b.len(), "gemm_gather: B reads up to {reach} of {}", b.len());
    for k0 in (0..k).step_by(KC) {
        let kb = KC.min(k - k0);
        let ablock = a.block(k0, kb);
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
    let (m, k) = (a.rows(), a.depth());
    if target.trivial(a, n, "gemm_packed") {
        return;
    }
    let kernel = a.kernel();
    let nr = kernel.nr();
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
        let ablock = a.block(k0, kb);
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
