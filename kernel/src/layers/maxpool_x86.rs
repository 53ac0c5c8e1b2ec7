//! x86-64 loops of the 2×2 stride-2 max-pool (AVX2 and AVX-512F), chosen at
//! run time by [`super::maxpool`]'s `PoolIsa`.
//!
//! Every loop computes, per output, the *leftmost maximum* of its window in
//! row-major order (`r0[2x], r0[2x+1], r1[2x], r1[2x+1]`): NaN ranks above
//! every number, the first NaN wins, and of equal values (`-0.0 == +0.0`)
//! the first wins — bit for bit the scalar reference in `maxpool.rs`. The
//! pairs of each row are reduced first (a deinterleave into even and odd
//! columns), then the two rows, which keeps that order; the argmax loops
//! carry the winner's offset (`0, 1, W, W + 1`) through the same selects.
//!
//! The values-only loops (the frozen forward's) read each input row in
//! runs of [`CHUNK`] outputs (512 bytes a row): the top row's pair maxima of
//! a run wait in registers while the bottom row's run streams in. Reading
//! both rows a line at a time in turn (two streams one row apart) ran pool1
//! at about half the read bandwidth on Zen 4 (criterion `--bench pool`:
//! 12.1–12.5 ms before, 6.0–6.2 ms with runs, 1 thread). In a throwaway
//! harness (not kept), 256-byte runs were as slow as lines, and keeping the
//! maxima in a stack buffer made the speed depend on where the buffer lay
//! relative to the output (4.9 to 7.0 ms; likely 4K aliasing of its loads
//! with the pending stores), so they live in registers: four zmm, eight ymm.
//!
//! Each function returns how many outputs it wrote; the caller finishes the
//! rest with the scalar loop. AVX-512 does every row (masked loads and
//! stores for the tail). AVX2 has no cheap masked store, so a row of at
//! least 8 outputs ends with one more 8-output block placed flush with its
//! end, recomputing a few outputs with the same operations (the same bits);
//! values-only rows of 4 to 7 outputs take one or two such 4-output blocks
//! (pool5 at 224, 7 outputs, and pool3 at 32×32, 4, would otherwise be all
//! scalar). Only rows under 4 outputs (argmax: under 8) stay scalar.

use core::arch::x86_64::*;

use super::maxpool::CHUNK;

/// Lanes where `b` replaces `a` as the leftmost maximum: `a` is not NaN and
/// `b` is larger or NaN (`!(b <= a)` is true for `b > a` and for either NaN).
#[target_feature(enable = "avx2")]
#[inline]
fn takes_avx2(a: __m256, b: __m256) -> __m256 {
    _mm256_and_ps(_mm256_cmp_ps::<_CMP_NLE_UQ>(b, a), _mm256_cmp_ps::<_CMP_ORD_Q>(a, a))
}

/// The 8 even and the 8 odd floats of `lo ++ hi` (16 consecutive inputs),
/// in the lane order `[0 1 4 5 2 3 6 7]` of `_mm256_shuffle_ps`; undone by [`in_order`].
#[target_feature(enable = "avx2")]
#[inline]
fn deinterleave_avx2(lo: __m256, hi: __m256) -> (__m256, __m256) {
    (_mm256_shuffle_ps::<0x88>(lo, hi), _mm256_shuffle_ps::<0xDD>(lo, hi))
}

/// Puts the 64-bit pairs of a [`deinterleave_avx2`] result back in output order.
#[target_feature(enable = "avx2")]
#[inline]
fn in_order(v: __m256i) -> __m256i {
    _mm256_permute4x64_epi64::<0xD8>(v)
}

/// The leftmost maximum of each pair of the 16 inputs at `p`, in
/// [`deinterleave_avx2`]'s lane order, and the lanes where the odd input won.
///
/// # Safety
/// `p .. p + 16` must be readable; the CPU must have AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn pairs_avx2(p: *const f32) -> (__m256, __m256) {
    // SAFETY: the caller's contract.
    let (e, o) = unsafe { deinterleave_avx2(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) };
    let t = takes_avx2(e, o);
    (_mm256_blendv_ps(e, o, t), t)
}

/// [`pairs_avx2`] on 8 inputs, the leftmost maximum of each pair in output order.
///
/// # Safety
/// `p .. p + 8` must be readable; the CPU must have AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn pairs_128(p: *const f32) -> __m128 {
    // SAFETY: the caller's contract.
    let (lo, hi) = unsafe { (_mm_loadu_ps(p), _mm_loadu_ps(p.add(4))) };
    // The even and odd floats of `lo ++ hi`, each in order.
    let (e, o) = (_mm_shuffle_ps::<0x88>(lo, hi), _mm_shuffle_ps::<0xDD>(lo, hi));
    _mm_blendv_ps(e, o, takes_128(e, o))
}

/// [`takes_avx2`] on 4 lanes.
#[target_feature(enable = "avx2")]
#[inline]
fn takes_128(a: __m128, b: __m128) -> __m128 {
    _mm_and_ps(_mm_cmp_ps::<_CMP_NLE_UQ>(b, a), _mm_cmp_ps::<_CMP_ORD_Q>(a, a))
}

/// Outputs `x .. x + 4` of a row.
///
/// # Safety
/// Inputs `2x .. 2x + 8` of both rows must be readable and outputs `x .. x + 4` writable; AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn block_128(p0: *const f32, p1: *const f32, d: *mut f32, x: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        let (top, bottom) = (pairs_128(p0.add(2 * x)), pairs_128(p1.add(2 * x)));
        _mm_storeu_ps(d.add(x), _mm_blendv_ps(top, bottom, takes_128(top, bottom)));
    }
}

/// Outputs `x .. x + 8` of a row from the top row's pair maxima `top`.
///
/// # Safety
/// Inputs `2x .. 2x + 16` of the bottom row must be readable and outputs `x .. x + 8` writable; AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn finish_avx2(top: __m256, p1: *const f32, d: *mut f32, x: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        let bottom = pairs_avx2(p1.add(2 * x)).0;
        let m = _mm256_blendv_ps(top, bottom, takes_avx2(top, bottom));
        _mm256_storeu_ps(d.add(x), _mm256_castsi256_ps(in_order(_mm256_castps_si256(m))));
    }
}

/// Values-only pooling of one output row, AVX2: `dst[x] = max(r0[2x], r0[2x+1], r1[2x], r1[2x+1])`
/// in runs of [`CHUNK`], the last block flush with the row's end. Returns
/// `dst.len()`, or 0 for rows under 4 outputs (left to the scalar loop).
///
/// # Panics
/// If a row holds fewer than `2·dst.len()` floats.
#[target_feature(enable = "avx2")]
pub(super) fn row_avx2(r0: &[f32], r1: &[f32], dst: &mut [f32]) -> usize {
    let n = dst.len();
    let (r0, r1) = (&r0[..2 * n], &r1[..2 * n]);
    let (p0, p1, d) = (r0.as_ptr(), r1.as_ptr(), dst.as_mut_ptr());
    if n < 8 {
        if n >= 4 {
            // SAFETY: blocks at 0 and n - 4 ≥ 0 read inputs below 2n and write outputs below n.
            unsafe {
                block_128(p0, p1, d, 0);
                block_128(p0, p1, d, n - 4);
            }
            return n;
        }
        return 0;
    }
    let done = n - n % 8;
    for start in (0..done).step_by(CHUNK) {
        let blocks = ((done - start) / 8).min(CHUNK / 8);
        let mut tops = [_mm256_setzero_ps(); CHUNK / 8];
        for (b, top) in tops.iter_mut().enumerate().take(blocks) {
            // SAFETY: inputs 2x .. 2x + 16 ≤ 2·done (x = start + 8b) lie in `r0` (sliced above).
            *top = unsafe { pairs_avx2(p0.add(2 * (start + 8 * b))) }.0;
        }
        for (b, &top) in tops.iter().enumerate().take(blocks) {
            // SAFETY: as above for `r1`; outputs x .. x + 8 ≤ done lie in `dst`.
            unsafe { finish_avx2(top, p1, d, start + 8 * b) };
        }
    }
    if done < n {
        // SAFETY: x = n - 8 ≥ 0: inputs 2x .. 2n lie in both rows, outputs x .. n in `dst`.
        unsafe { finish_avx2(pairs_avx2(p0.add(2 * (n - 8))).0, p1, d, n - 8) };
    }
    n
}

/// [`row_avx2`] with argmax, one pass over both rows: also `idx[x] = base + 2x + o`, `o ∈ {0, 1, w, w + 1}`
/// the offset of the chosen input (`base` = flat index of `r0[0]` in the plane,
/// `w` = the plane's width). Returns `dst.len()`, or 0 for rows under 8 outputs.
///
/// # Panics
/// If a row holds fewer than `2·dst.len()` floats or `idx` is shorter than `dst`.
#[target_feature(enable = "avx2")]
pub(super) fn row_argmax_avx2(r0: &[f32], r1: &[f32], base: u32, w: u32, dst: &mut [f32], idx: &mut [u32]) -> usize {
    let n = dst.len();
    if n < 8 {
        return 0;
    }
    let (r0, r1, idx) = (&r0[..2 * n], &r1[..2 * n], &mut idx[..n]);
    let (p0, p1, d, ip) = (r0.as_ptr(), r1.as_ptr(), dst.as_mut_ptr(), idx.as_mut_ptr());
    let one = _mm256_set1_epi32(1);
    let wv = _mm256_set1_epi32(w as i32);
    let lanes = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    // Whole blocks, then one flush with the end when 8 does not divide n.
    let last = n - 8;
    for x in (0..last).step_by(8).chain(std::iter::once(last)) {
        // SAFETY: x ≤ n - 8: inputs 2x .. 2x + 16 lie in both rows (sliced
        // above), outputs x .. x + 8 in `dst` and `idx`.
        unsafe {
            let ((top, ta), (bottom, tb)) = (pairs_avx2(p0.add(2 * x)), pairs_avx2(p1.add(2 * x)));
            let t = takes_avx2(top, bottom);
            let m = _mm256_blendv_ps(top, bottom, t);
            let off_top = _mm256_and_si256(_mm256_castps_si256(ta), one);
            let off_bottom = _mm256_add_epi32(_mm256_and_si256(_mm256_castps_si256(tb), one), wv);
            let off =
                _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(off_top), _mm256_castsi256_ps(off_bottom), t));
            let at = _mm256_add_epi32(_mm256_set1_epi32(base.wrapping_add(2 * x as u32) as i32), lanes);
            _mm256_storeu_ps(d.add(x), _mm256_castsi256_ps(in_order(_mm256_castps_si256(m))));
            _mm256_storeu_si256(ip.add(x).cast(), _mm256_add_epi32(at, in_order(off)));
        }
    }
    n
}

/// Indices of the even and the odd floats of two concatenated zmm registers.
#[target_feature(enable = "avx512f")]
#[inline]
fn even_odd_512() -> (__m512i, __m512i) {
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    (even, _mm512_add_epi32(even, _mm512_set1_epi32(1)))
}

/// AVX-512 form of [`takes_avx2`], as a mask.
#[target_feature(enable = "avx512f")]
#[inline]
fn takes_512(a: __m512, b: __m512) -> __mmask16 {
    _mm512_mask_cmp_ps_mask::<_CMP_NLE_UQ>(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(a, a), b, a)
}

/// Load masks for the `2·n` inputs and store mask for the `n ≤ 16` outputs of one block.
fn block_masks(n: usize) -> (__mmask16, __mmask16, __mmask16) {
    debug_assert!(n <= 16);
    let inputs = if n == 16 { u32::MAX } else { (1u32 << (2 * n)) - 1 };
    (inputs as u16, (inputs >> 16) as u16, ((1u32 << n) - 1) as u16)
}

/// Shortest output row for which the AVX-512 argmax loop prefetches its
/// inputs ahead. Measured under load (batch 8, 1 thread, CPU time, Zen 4):
/// pool1 (112 outputs a row) 17.7 → 16.5 ms; pool3 (28 a row) was slower
/// with an unconditional prefetch, whose lines there lie rows ahead.
const PREFETCH_MIN_OUTPUTS: usize = 64;

/// Asks for the inputs 256 floats (1 KiB, 16 lines) ahead of column `at`
/// of both rows: four lines a 16-output step, the step's consumption.
#[target_feature(enable = "avx512f")]
#[inline]
fn prefetch_ahead(p0: *const f32, p1: *const f32, at: usize) {
    // A prefetch never faults (a safe intrinsic), so the address (wrapping
    // arithmetic, possibly past the row) need not be valid.
    for p in [p0, p1] {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(at + 256).cast());
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(at + 272).cast());
    }
}

/// The leftmost maximum of each pair of the `2·n` inputs at `p` (`n ≤ 16`
/// outputs, lanes past `n` zero), and the lanes where the odd input won.
///
/// # Safety
/// `p .. p + 2n` must be readable; the CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn pairs_512(p: *const f32, n: usize, even: __m512i, odd: __m512i) -> (__m512, __mmask16) {
    let (k_lo, k_hi, _) = block_masks(n);
    // SAFETY: the masks enable only the caller's `2n` readable inputs;
    // masked-off lanes are neither read nor fault.
    let (lo, hi) = unsafe { (_mm512_maskz_loadu_ps(k_lo, p), _mm512_maskz_loadu_ps(k_hi, p.add(16))) };
    let (e, o) = (_mm512_permutex2var_ps(lo, even, hi), _mm512_permutex2var_ps(lo, odd, hi));
    let t = takes_512(e, o);
    (_mm512_mask_blend_ps(t, e, o), t)
}

/// Values-only pooling of one output row, AVX-512F, every output (whole
/// blocks of 16, the tail through masked loads and stores), in runs of
/// [`CHUNK`]. Returns `dst.len()`.
///
/// # Panics
/// If a row holds fewer than `2·dst.len()` floats.
#[target_feature(enable = "avx512f")]
pub(super) fn row_avx512(r0: &[f32], r1: &[f32], dst: &mut [f32]) -> usize {
    let ow = dst.len();
    let (r0, r1) = (&r0[..2 * ow], &r1[..2 * ow]);
    let (p0, p1, d) = (r0.as_ptr(), r1.as_ptr(), dst.as_mut_ptr());
    let (even, odd) = even_odd_512();
    for start in (0..ow).step_by(CHUNK) {
        let blocks = (ow - start).div_ceil(16).min(CHUNK / 16);
        let mut tops = [_mm512_setzero_ps(); CHUNK / 16];
        for (b, top) in tops.iter_mut().enumerate().take(blocks) {
            let x = start + 16 * b;
            // SAFETY: inputs 2x .. 2·min(x + 16, ow) lie in `r0` (sliced above).
            *top = unsafe { pairs_512(p0.add(2 * x), (ow - x).min(16), even, odd) }.0;
        }
        for (b, &top) in tops.iter().enumerate().take(blocks) {
            let x = start + 16 * b;
            let n = (ow - x).min(16);
            // SAFETY: as above for `r1`; the store mask enables only outputs
            // x .. x + n ≤ ow of `dst` (masked-off lanes are not written).
            unsafe {
                let bottom = pairs_512(p1.add(2 * x), n, even, odd).0;
                let m = _mm512_mask_blend_ps(takes_512(top, bottom), top, bottom);
                _mm512_mask_storeu_ps(d.add(x), block_masks(n).2, m);
            }
        }
    }
    ow
}

/// [`row_argmax_avx2`] on AVX-512F, every output. Returns `dst.len()`.
///
/// # Panics
/// If a row holds fewer than `2·dst.len()` floats or `idx` is shorter than `dst`.
#[target_feature(enable = "avx512f")]
pub(super) fn row_argmax_avx512(r0: &[f32], r1: &[f32], base: u32, w: u32, dst: &mut [f32], idx: &mut [u32]) -> usize {
    let ow = dst.len();
    let (r0, r1, idx) = (&r0[..2 * ow], &r1[..2 * ow], &mut idx[..ow]);
    let (p0, p1, d, ip) = (r0.as_ptr(), r1.as_ptr(), dst.as_mut_ptr(), idx.as_mut_ptr());
    let (even, odd) = even_odd_512();
    let one = _mm512_set1_epi32(1);
    let wv = _mm512_set1_epi32(w as i32);
    let w1 = _mm512_add_epi32(wv, one);
    let long = ow >= PREFETCH_MIN_OUTPUTS;
    for x in (0..ow).step_by(16) {
        let n = (ow - x).min(16);
        let k_out = block_masks(n).2;
        // SAFETY: as in `row_avx512`; `idx` has `ow` entries.
        unsafe {
            if long {
                prefetch_ahead(p0, p1, 2 * x);
            }
            let (top, ta) = pairs_512(p0.add(2 * x), n, even, odd);
            let (bottom, tb) = pairs_512(p1.add(2 * x), n, even, odd);
            let t = takes_512(top, bottom);
            let off = _mm512_mask_blend_epi32(t, _mm512_maskz_mov_epi32(ta, one), _mm512_mask_blend_epi32(tb, wv, w1));
            let at = _mm512_add_epi32(_mm512_set1_epi32(base.wrapping_add(2 * x as u32) as i32), even);
            _mm512_mask_storeu_ps(d.add(x), k_out, _mm512_mask_blend_ps(t, top, bottom));
            _mm512_mask_storeu_epi32(ip.add(x).cast(), k_out, _mm512_add_epi32(at, off));
        }
    }
    ow
}
