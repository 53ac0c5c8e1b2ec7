//! The aarch64 NEON microkernel: `C[8×12] (+)= Σ_k A[:, k] ⊗ B[k, :]` on
//! 128-bit vectors (the contract of [`super::tile`]).
//!
//! # Why 8 × 12
//! AArch64 has 32 vector registers of 4 floats. Each `k` step loads the 12
//! floats of a B row as 3 vectors and the 8 floats of the A panel as 2
//! vectors, then issues one `fmla v.4s, b.4s, a.s[lane]` per (row, B vector):
//! 24 independent FMAs into 24 accumulator registers. 24 + 3 + 2 = 29 of 32
//! registers, the most accumulators that leave room for both operands (8 × 16
//! would need 32 accumulators alone). The lane-indexed FMA takes the A value
//! straight from a vector register, so A needs no broadcast instructions:
//! 5 loads feed 24 FMAs, well inside Neoverse N1's 2 loads per cycle next to
//! its 2 FMA pipes (12 cycles of FMAs per step), and 24 chains cover the FMA
//! latency × throughput product (4 cycles × 2 pipes = 8) three times over.
//! The rows are the filters' output channels: 8 divides every VGG channel
//! count (a 12-row tile would compute 72 rows for 64). The columns (output
//! pixels) are the vector dimension, so the implicit convolution's B rows,
//! read in place from the padded layout, are plain contiguous loads.
//! tract's `arm64simd_mmm_f32_12x8` kernel is the same register plan with
//! the roles of A and B exchanged.
//!
//! The release build's `k` loop (`aarch64-linux-gnu-objdump -d` of the
//! cross-compiled `liblml_kernel.rlib`) is exactly that: 24 `fmla .4s, .s[l]`,
//! `ldp q`+`ldr q` for the B row, `ldp q` for the A panel, `ldr x` for the
//! row offset, `add`, `subs`, `b.ne` (plus `add`, `prfm` when prefetching):
//! 30–32 instructions, 6 load µops and no spill per 24 FMAs, so on N1 (4-wide
//! dispatch, two loads and two FMAs per cycle) the FMA pipes set the pace.

use core::arch::aarch64::*;

use super::tile::{SweepTile, TileStore};

/// Rows of the NEON tile.
pub const NEON_MR: usize = 8;
/// Columns of the NEON tile.
pub const NEON_NR: usize = 12;

/// The NEON 8×12 tile (see the module docs and [`super::tile`]).
///
/// # Safety
/// The contract of [`super::tile`] with `MR = 8`, `NR = 12` (NEON is part of
/// the aarch64 baseline, so every aarch64 CPU runs it).
#[target_feature(enable = "neon")]
pub unsafe fn kernel_neon(kb: usize, a: *const f32, b: *const f32, offsets: *const usize, st: &TileStore) {
    if st.prefetch_b != 0 {
        // SAFETY: forwarded from the caller's contract.
        unsafe { tile_neon::<true>(kb, a, b, offsets, st) }
    } else {
        // SAFETY: as above.
        unsafe { tile_neon::<false>(kb, a, b, offsets, st) }
    }
}

/// [`kernel_neon`] on each tile of `tiles` in turn, for the row panel at
/// output row `row0` (see [`SweepTile::store`]): one call for a run of tiles.
///
/// # Safety
/// As [`kernel_neon`] for every tile's store.
#[target_feature(enable = "neon")]
pub unsafe fn sweep_neon(
    kb: usize,
    a: *const f32,
    offsets: *const usize,
    st: &TileStore,
    row0: usize,
    tiles: &[SweepTile],
) {
    for t in tiles {
        let s = t.store(st, row0);
        // SAFETY: forwarded from the caller's contract, tile by tile.
        unsafe {
            if st.prefetch_b != 0 {
                tile_neon::<true>(kb, a, t.b, offsets, &s)
            } else {
                tile_neon::<false>(kb, a, t.b, offsets, &s)
            }
        }
    }
}

/// [`kernel_neon`] with the prefetch decided at compile time.
///
/// # Safety
/// As [`kernel_neon`].
#[target_feature(enable = "neon")]
#[inline]
unsafe fn tile_neon<const PREFETCH: bool>(
    kb: usize,
    a: *const f32,
    b: *const f32,
    offsets: *const usize,
    st: &TileStore,
) {
    let zero = vdupq_n_f32(0.0);
    // c[i][v]: row i, columns 4v .. 4v + 4.
    let mut c = [[zero; 3]; NEON_MR];
    let mut a = a;
    for kk in 0..kb {
        // SAFETY: `offsets` has kb entries; the addressed B row holds 12
        // readable floats and the A panel 8 per step (caller's contract).
        let (b0, b1, b2, a0, a1) = unsafe {
            let row = b.add(*offsets.add(kk));
            if PREFETCH {
                // A hint into L2 (the next panel's row: 48 bytes, one line);
                // PRFM never faults, so the address may lie past the buffer.
                let ahead = row.wrapping_add(st.prefetch_b);
                core::arch::asm!("prfm pldl2keep, [{p}]", p = in(reg) ahead, options(nostack, readonly, preserves_flags));
            }
            (vld1q_f32(row), vld1q_f32(row.add(4)), vld1q_f32(row.add(8)), vld1q_f32(a), vld1q_f32(a.add(4)))
        };
        macro_rules! rows {
            ($av:ident, $base:expr, $($lane:literal)*) => {$(
                c[$base + $lane][0] = vfmaq_laneq_f32::<$lane>(c[$base + $lane][0], b0, $av);
                c[$base + $lane][1] = vfmaq_laneq_f32::<$lane>(c[$base + $lane][1], b1, $av);
                c[$base + $lane][2] = vfmaq_laneq_f32::<$lane>(c[$base + $lane][2], b2, $av);
            )*};
        }
        rows!(a0, 0, 0 1 2 3);
        rows!(a1, 4, 0 1 2 3);
        // SAFETY: advancing within (or one past the end of) the A panel.
        a = unsafe { a.add(NEON_MR) };
    }
    // Lane masks from the keep bits: all ones where the bit is set.
    let lanes: [u32; 4] = [1, 2, 4, 8];
    // SAFETY: `lanes` holds 4 readable u32.
    let lanes = unsafe { vld1q_u32(lanes.as_ptr()) };
    let masks = [0, 4, 8].map(|shift| vtstq_u32(vdupq_n_u32(st.keep >> shift), lanes));
    let masked = st.keep & 0xfff != 0xfff;
    for (i, row) in c.iter().enumerate() {
        if i >= st.rows {
            break;
        }
        let mut v = *row;
        // SAFETY: rows `i < st.rows` of `prev` and `out` hold 12 floats and
        // `bias` st.rows (caller's contract); null pointers are not dereferenced.
        unsafe {
            if !st.prev.is_null() {
                let p = st.prev.add(i * st.ld_prev);
                for (t, x) in v.iter_mut().enumerate() {
                    *x = vaddq_f32(*x, vld1q_f32(p.add(4 * t)));
                }
            }
            if !st.bias.is_null() {
                let bi = vdupq_n_f32(*st.bias.add(i));
                for x in v.iter_mut() {
                    *x = vaddq_f32(*x, bi);
                }
            }
            if st.relu {
                // FMAX returns NaN when either operand is NaN: NaN stays NaN.
                for x in v.iter_mut() {
                    *x = vmaxq_f32(zero, *x);
                }
            }
            if masked {
                for (x, m) in v.iter_mut().zip(masks) {
                    *x = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(*x), m));
                }
            }
            let p = st.out.add(i * st.ld_out);
            for (t, x) in v.iter().enumerate() {
                vst1q_f32(p.add(4 * t), *x);
            }
        }
    }
}

/// Sixteen independent FMA chains of 4 lanes, `iters` steps each (the
/// FMA-peak probe; 16 chains cover 4 pipes × 4 cycles of latency).
/// Returns a value that depends on every chain.
#[target_feature(enable = "neon")]
pub fn fma_chains(iters: u64) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 16];
    let (a, b) = (vdupq_n_f32(0.999_999), vdupq_n_f32(1e-7));
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = vfmaq_f32(b, *r, a);
        }
    }
    let s = acc.iter().fold(vdupq_n_f32(0.0), |s, &r| vaddq_f32(s, r));
    vaddvq_f32(s)
}

/// Lanes per chain step of [`fma_chains`]: 16 chains × 4 lanes.
pub const FMA_CHAIN_LANES: u64 = 64;

/// Dot products of 4 rows of `W` with up to 4 rows of `x`, `k` floats each:
/// `out[r][i] = Σ_t w[r][t]·x[i][t]` for `i < nx` (other entries untouched).
/// 16 accumulators, 4 `W` vectors and one `x` vector: 21 of 32 registers.
///
/// # Safety
/// The 4 `w` pointers and the first `nx` `x` pointers must each point to
/// `k` readable floats; `nx <= 4`.
#[target_feature(enable = "neon")]
pub unsafe fn dot4_neon(k: usize, w: [*const f32; 4], x: [*const f32; 4], nx: usize, out: &mut [[f32; 4]; 4]) {
    let mut acc = [[vdupq_n_f32(0.0); 4]; 4];
    let full = k / 4 * 4;
    let mut t = 0;
    macro_rules! sweep {
        ($nx:expr) => {
            while t < full {
                // SAFETY: t + 4 <= k, within every row (caller's contract).
                unsafe {
                    let wv = [
                        vld1q_f32(w[0].add(t)),
                        vld1q_f32(w[1].add(t)),
                        vld1q_f32(w[2].add(t)),
                        vld1q_f32(w[3].add(t)),
                    ];
                    for i in 0..$nx {
                        let xv = vld1q_f32(x[i].add(t));
                        for r in 0..4 {
                            acc[r][i] = vfmaq_f32(acc[r][i], wv[r], xv);
                        }
                    }
                }
                t += 4;
            }
        };
    }
    match nx {
        1 => sweep!(1),
        2 => sweep!(2),
        3 => sweep!(3),
        _ => sweep!(4),
    }
    for r in 0..4 {
        for i in 0..nx.min(4) {
            let mut s = vaddvq_f32(acc[r][i]);
            for tt in full..k {
                // SAFETY: tt < k.
                s += unsafe { *w[r].add(tt) * *x[i].add(tt) };
            }
            out[r][i] = s;
        }
    }
}
