//! The microkernel contract: what every architecture's kernel computes and
//! how it finishes a tile. This module depends on nothing else in the GEMM,
//! so the kernels (`generic`, `x86`, `neon`) and the driver all import it
//! and none imports another.
//!
//! A microkernel of tile `MR × NR` computes, for one `MR`-tall panel of the
//! packed left operand and `NR` columns of the right one,
//!
//! ```text
//! acc[i][t] = Σ_{kk < kb} a[kk·MR + i] · b[offsets[kk] + t]      i < MR, t < NR
//! ```
//!
//! with the accumulators in registers for the whole `kk` loop (the A panel
//! is `MR` contiguous floats per `kk`; row `kk` of B is `NR` contiguous floats
//! at an offset from a table, so the same kernel reads packed B panels,
//! `offsets[kk] = kk·NR`, and B in place, an implicit convolution's shifted
//! rows). It then stores the tile as a `TileStore` says:
//!
//! ```text
//! out[i][t] = keep_t ? f(acc[i][t] + prev[i][t]) : 0      i < rows, t < NR
//! f(z)      = relu ? max(0, z + bias[i]) : z + bias[i]    (NaN stays NaN)
//! ```
//!
//! each of `prev`, `bias`, `relu` and the `keep` mask optional. Rows `rows..MR`
//! may be computed (the packed A rows past `m` are zeros; the AVX2 kernel
//! skips them) but are neither read from `prev` nor stored.
//!
//! Every kernel has the signature
//! `unsafe fn(kb: usize, a: *const f32, b: *const f32, offsets: *const usize, st: &TileStore)`
//! and the same safety contract: the CPU supports the kernel's instructions;
//! `a` points to `kb·MR` readable floats, `offsets` to `kb` entries, and
//! `b + offsets[kk] .. + NR` is readable for every `kk`; `st.out` points to
//! `st.rows ≤ MR` rows of `NR` writable floats spaced `st.ld_out` apart,
//! `st.prev` (if not null) to as many readable rows `st.ld_prev` apart, and
//! `st.bias` (if not null) to `st.rows` readable floats.

/// How a microkernel finishes a tile (see the [module docs](self)). Raw
/// pointers because the tile is written straight into its destination (the
/// task's part of a layer's output).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TileStore {
    /// Partial sums to add (`rows` rows of `NR` floats, `ld_prev` apart), or null.
    pub prev: *const f32,
    /// Row stride of `prev`, in floats.
    pub ld_prev: usize,
    /// Destination: `rows` rows of `NR` floats, `ld_out` apart.
    pub out: *mut f32,
    /// Row stride of `out`, in floats.
    pub ld_out: usize,
    /// Rows of the tile to read from `prev` and store, `1..=MR`.
    pub rows: usize,
    /// `rows` floats added row-wise, or null.
    pub bias: *const f32,
    /// Apply `max(0, ·)` (NaN stays NaN).
    pub relu: bool,
    /// Bit `t` set: column `t` keeps its value; clear: written as zero.
    pub keep: u32,
    /// If not 0: prefetch (into L2) the bytes this many floats past each B
    /// row read, i.e. the next panel's rows when B is read in place. A hint:
    /// kernels without a prefetch ignore it.
    pub prefetch_b: usize,
}

impl TileStore {
    /// Store `rows` rows (adding `prev` if not null) with no bias, ReLU or masking.
    pub fn plain(prev: *const f32, out: *mut f32, ld: usize, rows: usize) -> Self {
        TileStore {
            prev,
            ld_prev: ld,
            out,
            ld_out: ld,
            rows,
            bias: std::ptr::null(),
            relu: false,
            keep: u32::MAX,
            prefetch_b: 0,
        }
    }
}

/// One tile of a row sweep (a run of a row panel's column tiles done in one
/// kernel call, so the per-tile call and set-up cost is paid once per run:
/// what matters for short products, whose tiles take only a few hundred
/// cycles). It holds what differs between the run's tiles, given for the
/// row panel at output row 0; [`store`](Self::store) completes it with what
/// they share.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SweepTile {
    /// The tile's B panel (row `kk` at `b + offsets[kk]`).
    pub b: *const f32,
    /// Its output at row 0 (`NR` floats a row, `ld_out` apart).
    pub out: *mut f32,
    /// Row stride of `out`, in floats.
    pub ld_out: usize,
    /// Its partial sums at row 0 (`ld_prev` of the shared store apart), or null.
    pub prev: *const f32,
    /// Its column mask (see [`TileStore::keep`]).
    pub keep: u32,
    /// Its B prefetch distance, used when the shared store's is not 0.
    pub prefetch_b: usize,
}

impl SweepTile {
    /// The tile's store for the row panel whose first output row is `row0`:
    /// `rows`, `bias`, `relu` and `ld_prev` from `shared` (whose `bias`
    /// already points at row `row0`), its own pointers moved down `row0`
    /// rows; its own prefetch distance if `shared.prefetch_b != 0`, else none.
    #[inline(always)]
    pub fn store(&self, shared: &TileStore, row0: usize) -> TileStore {
        TileStore {
            prev: if self.prev.is_null() { self.prev } else { self.prev.wrapping_add(row0 * shared.ld_prev) },
            ld_prev: shared.ld_prev,
            out: self.out.wrapping_add(row0 * self.ld_out),
            ld_out: self.ld_out,
            rows: shared.rows,
            bias: shared.bias,
            relu: shared.relu,
            keep: self.keep,
            prefetch_b: if shared.prefetch_b != 0 { self.prefetch_b } else { 0 },
        }
    }
}
