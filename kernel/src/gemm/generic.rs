//! The portable microkernel: plain Rust over fixed-size arrays, correct on
//! every target, vectorised by the compiler where it can.
//!
//! It keeps the `MR × NR` accumulators in a `[[f32; NR]; MR]` whose loops
//! the compiler unrolls completely. The tile is sized for the smallest
//! vector register file it will meet, x86-64's baseline SSE2 (16 registers of
//! 4 floats): 4 × 8 is 8 accumulator registers plus 2 for the B row and 1
//! for the broadcast A value, so nothing spills; aarch64 (32 NEON registers)
//! has its own kernel. Products and sums are separate roundings (`a·b + c`,
//! no fused multiply-add: Rust does not contract them, and a software `fma`
//! is far slower where the CPU has none), so results may differ from the FMA
//! kernels' in the last bits.

use super::tile::TileStore;

/// Rows of the generic tile (4 divides every VGG channel count).
pub const GENERIC_MR: usize = 4;
/// Columns of the generic tile.
pub const GENERIC_NR: usize = 8;

/// The generic `MR × NR` tile (see [`super::tile`] for the contract).
///
/// # Safety
/// As every microkernel (see [`super::tile`]) with `MR = GENERIC_MR`,
/// `NR = GENERIC_NR`; it needs no CPU feature.
pub unsafe fn kernel_generic(kb: usize, a: *const f32, b: *const f32, offsets: *const usize, st: &TileStore) {
    // SAFETY: forwarded from the caller's contract.
    unsafe { tile::<GENERIC_MR, GENERIC_NR>(kb, a, b, offsets, st) }
}

/// # Safety
/// As [`kernel_generic`] for an `MR × NR` tile.
#[inline(always)]
unsafe fn tile<const MR: usize, const NR: usize>(
    kb: usize,
    a: *const f32,
    b: *const f32,
    offsets: *const usize,
    st: &TileStore,
) {
    let mut acc = [[0.0f32; NR]; MR];
    for kk in 0..kb {
        // SAFETY: `offsets` has kb entries; B row kk holds NR readable floats
        // and the A panel MR floats per step (caller's contract). f32 arrays
        // need only f32 alignment, which the element pointers have.
        let (ak, bk) =
            unsafe { (a.add(kk * MR).cast::<[f32; MR]>().read(), b.add(*offsets.add(kk)).cast::<[f32; NR]>().read()) };
        for (row, ai) in acc.iter_mut().zip(ak) {
            for (c, bj) in row.iter_mut().zip(bk) {
                *c += ai * bj;
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(st.rows.min(MR)) {
        let mut z = *row;
        // `prev` may be the very tile `out` points to (a product accumulated
        // in place), so both are accessed by value through raw pointers, never
        // as references that would alias.
        if !st.prev.is_null() {
            // SAFETY: row i < st.rows of `prev` holds NR readable floats (caller's contract).
            let p = unsafe { st.prev.add(i * st.ld_prev).cast::<[f32; NR]>().read() };
            for (v, pv) in z.iter_mut().zip(p) {
                *v += pv;
            }
        }
        if !st.bias.is_null() {
            // SAFETY: `bias` holds st.rows floats (caller's contract).
            let bi = unsafe { *st.bias.add(i) };
            for v in z.iter_mut() {
                *v += bi;
            }
        }
        for (t, v) in z.iter_mut().enumerate() {
            // `v < 0` is false for NaN, so NaN stays NaN (as `max(0, NaN)` in the vector kernels).
            if st.relu && *v < 0.0 {
                *v = 0.0;
            }
            if st.keep >> t & 1 == 0 {
                *v = 0.0;
            }
        }
        // SAFETY: row i < st.rows of `out` holds NR writable floats (caller's contract).
        unsafe { st.out.add(i * st.ld_out).cast::<[f32; NR]>().write(z) };
    }
}
