//! Register-blocked x86-64 microkernels: `C[MR×NR] (+)= Σ_k A[:, k] ⊗ B[k, :]`.
//!
//! Both kernels follow the contract of [`super::tile`]: a packed A panel
//! (`MR` contiguous floats per `k`) and `NR` contiguous floats of B per `k` at
//! an offset from a table, so the same kernel serves packed B panels and B
//! read in place.
//! The accumulators live in registers for the whole `k` loop: each step loads
//! `NR` floats of B as vectors, broadcasts the `MR` floats of A, and issues
//! `MR·NR/lanes` independent FMAs (16 on AVX-512, 12 on AVX2: more than the
//! FMA latency × throughput product of 8, so the FMA units never wait).

use core::arch::x86_64::*;

use super::tile::{SweepTile, TileStore};

/// Asks for the C tile's cache lines before the k loop: the rows of `prev`
/// and of `out`, `row_bytes` each. Partial sums and outputs are usually far
/// out of cache by the time their tile comes round again; fetched at the
/// start, their misses overlap the `kb` FMA steps instead of stalling the
/// stores at the end. Measured under load (VGG19 224 → fc7, batch 8,
/// CPU-time fraction of peak, AMD EPYC Zen 4): AVX2 79.6/80.4% → 82.5/82.4%
/// at 1 thread, 78.8/77.9% → 82.5/82.5% at 2; AVX-512 unchanged at 1
/// thread, +1 to 2 points at 2. (`prefetcht0` for `out` too: a prefetch for
/// ownership needs the `prfchw` feature, which these kernels do not enable.)
///
/// Prefetches are hints and never fault, so the addresses (computed with
/// wrapping arithmetic) need not be valid.
#[inline(always)]
fn prefetch_c_tile(st: &TileStore, row_bytes: usize) {
    let lines = |row: *const f32| {
        let row = row as *const i8;
        // Every line of the row: from its first byte in steps of 64, and its
        // last byte (a further line when the row is not line-aligned).
        let mut at = 0;
        while at < row_bytes {
            // SAFETY: a prefetch never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(at)) };
            at += 64;
        }
        // SAFETY: as above.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(row_bytes - 1)) };
    };
    for i in 0..st.rows {
        if !st.prev.is_null() {
            lines(st.prev.wrapping_add(i * st.ld_prev));
        }
        lines(st.out.wrapping_add(i * st.ld_out).cast_const());
    }
}

/// AVX-512F: 8 rows × 32 columns (16 zmm accumulators). 8 divides every
/// VGG channel count (a 12-row kernel computes 72 rows for 64).
pub const AVX512_MR: usize = 8;
/// See [`AVX512_MR`].
pub const AVX512_NR: usize = 32;
/// AVX2 + FMA: 6 rows × 16 columns (12 ymm accumulators).
pub const AVX2_MR: usize = 6;
/// See [`AVX2_MR`].
pub const AVX2_NR: usize = 16;

/// AVX-512 8×32 tile. Row `kk` of the B panel is the 32 floats at
/// `b + offsets[kk]`: `offsets[kk] = kk·32` for a packed panel, or the row's
/// place in the padded input for an implicit-GEMM convolution (no packing).
///
/// # Safety
/// The CPU must support AVX-512F; otherwise the contract of [`super::tile`]
/// with `MR = 8`, `NR = 32`.
#[target_feature(enable = "avx512f")]
pub unsafe fn kernel_avx512(kb: usize, a: *const f32, b: *const f32, offsets: *const usize, st: &TileStore) {
    if st.prefetch_b != 0 {
        // SAFETY: forwarded from the caller's contract.
        unsafe { tile_avx512::<true>(kb, a, b, offsets, st) }
    } else {
        // SAFETY: as above.
        unsafe { tile_avx512::<false>(kb, a, b, offsets, st) }
    }
}

/// [`kernel_avx512`] on each tile of `tiles` in turn, for the row panel at
/// output row `row0`, their shared store fields from `st` (see
/// [`SweepTile::store`]): one call for a run of tiles.
///
/// # Safety
/// As [`kernel_avx512`] for every tile's store.
#[target_feature(enable = "avx512f")]
pub unsafe fn sweep_avx512(
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
                tile_avx512::<true>(kb, a, t.b, offsets, &s)
            } else {
                tile_avx512::<false>(kb, a, t.b, offsets, &s)
            }
        }
    }
}

/// [`kernel_avx512`] with the prefetch decided at compile time (no test in the loop).
///
/// # Safety
/// As [`kernel_avx512`].
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_avx512<const PREFETCH: bool>(
    kb: usize,
    a: *const f32,
    b: *const f32,
    offsets: *const usize,
    st: &TileStore,
) {
    prefetch_c_tile(st, AVX512_NR * 4);
    let mut c0 = [_mm512_setzero_ps(); AVX512_MR];
    let mut c1 = [_mm512_setzero_ps(); AVX512_MR];
    let mut a = a;
    for kk in 0..kb {
        // SAFETY: `offsets` has kb entries; the addressed B row holds 32 readable floats.
        let (b0, b1) = unsafe {
            let row = b.add(*offsets.add(kk));
            if PREFETCH {
                // A hint only: the address may lie past the buffer (wrapping_add), prefetches never fault.
                let ahead = row.wrapping_add(st.prefetch_b) as *const i8;
                _mm_prefetch::<_MM_HINT_T1>(ahead);
                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64));
                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(128));
            }
            (_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16)))
        };
        for i in 0..AVX512_MR {
            // SAFETY: within the `kb·8` floats of the A panel.
            let ai = _mm512_set1_ps(unsafe { *a.add(i) });
            c0[i] = _mm512_fmadd_ps(ai, b0, c0[i]);
            c1[i] = _mm512_fmadd_ps(ai, b1, c1[i]);
        }
        // SAFETY: advancing within (or one past the end of) the A panel.
        a = unsafe { a.add(AVX512_MR) };
    }
    let zero = _mm512_setzero_ps();
    let (k0, k1) = (st.keep as u16, (st.keep >> 16) as u16);
    // A constant trip count keeps the accumulators in registers; rows past
    // `st.rows` are skipped inside.
    for i in 0..AVX512_MR {
        if i >= st.rows {
            break;
        }
        let (mut v0, mut v1) = (c0[i], c1[i]);
        // SAFETY: rows `i < st.rows` of `prev` and `out` hold 32 floats and
        // `bias` st.rows (caller's contract); null pointers are not dereferenced.
        unsafe {
            if !st.prev.is_null() {
                let p = st.prev.add(i * st.ld_prev);
                v0 = _mm512_add_ps(v0, _mm512_loadu_ps(p));
                v1 = _mm512_add_ps(v1, _mm512_loadu_ps(p.add(16)));
            }
            if !st.bias.is_null() {
                let bi = _mm512_set1_ps(*st.bias.add(i));
                v0 = _mm512_add_ps(v0, bi);
                v1 = _mm512_add_ps(v1, bi);
            }
            if st.relu {
                // max(0, NaN) is NaN: the second operand is returned when either is NaN.
                v0 = _mm512_max_ps(zero, v0);
                v1 = _mm512_max_ps(zero, v1);
            }
            if st.keep != u32::MAX {
                v0 = _mm512_maskz_mov_ps(k0, v0);
                v1 = _mm512_maskz_mov_ps(k1, v1);
            }
            let p = st.out.add(i * st.ld_out);
            _mm512_storeu_ps(p, v0);
            _mm512_storeu_ps(p.add(16), v1);
        }
    }
}

/// Calls `f::<PREFETCH, R>(args)` for the store `st`: whether it prefetches
/// B, and its live row count (a `R`-row variant runs rows `0..R`).
macro_rules! avx2_variant {
    ($st:expr, $f:ident($($arg:expr),*)) => {
        match ($st.prefetch_b != 0, $st.rows) {
            (true, 0..=1) => $f::<true, 1>($($arg),*),
            (true, 2) => $f::<true, 2>($($arg),*),
            (true, 3) => $f::<true, 3>($($arg),*),
            (true, 4) => $f::<true, 4>($($arg),*),
            (true, 5) => $f::<true, 5>($($arg),*),
            (true, _) => $f::<true, AVX2_MR>($($arg),*),
            (false, 0..=1) => $f::<false, 1>($($arg),*),
            (false, 2) => $f::<false, 2>($($arg),*),
            (false, 3) => $f::<false, 3>($($arg),*),
            (false, 4) => $f::<false, 4>($($arg),*),
            (false, 5) => $f::<false, 5>($($arg),*),
            (false, _) => $f::<false, AVX2_MR>($($arg),*),
        }
    };
}

/// AVX2 + FMA 6×16 tile, reading B rows through `offsets` (see [`kernel_avx512`]).
///
/// A panel with fewer than 6 live rows (the last panel of a layer whose
/// channel count is not a multiple of 6: 64 = 10·6 + 4, 128 = 21·6 + 2) runs
/// only its live rows: a `rows`-row kernel does `rows/6` of the FMAs instead of
/// multiplying zeros (VGG19's 64- and 128-channel blocks lost 3% to that).
///
/// # Safety
/// The CPU must support AVX2 and FMA; otherwise the contract of
/// [`super::tile`] with `MR = 6`, `NR = 16`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn kernel_avx2(kb: usize, a: *const f32, b: *const f32, offsets: *const usize, st: &TileStore) {
    // SAFETY: forwarded from the caller's contract; a `R`-row kernel reads
    // the first `R ≥ st.rows` floats of each 6-float A step.
    unsafe { avx2_variant!(st, tile_avx2(kb, a, b, offsets, st)) }
}

/// [`kernel_avx2`] on each tile of `tiles` in turn (see [`sweep_avx512`]).
///
/// # Safety
/// As [`kernel_avx2`] for every tile's store.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn sweep_avx2(
    kb: usize,
    a: *const f32,
    offsets: *const usize,
    st: &TileStore,
    row0: usize,
    tiles: &[SweepTile],
) {
    // SAFETY: as in `kernel_avx2`, tile by tile.
    unsafe { avx2_variant!(st, sweep_avx2_with(kb, a, offsets, st, row0, tiles)) }
}

/// [`sweep_avx2`] with the prefetch and the live row count decided at compile time.
///
/// # Safety
/// As [`sweep_avx2`], with `st.rows ≤ R ≤ AVX2_MR`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn sweep_avx2_with<const PREFETCH: bool, const R: usize>(
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
        unsafe { tile_avx2::<PREFETCH, R>(kb, a, t.b, offsets, &s) }
    }
}

/// [`kernel_avx2`] with the prefetch and the live row count `R ≤ 6` decided
/// at compile time.
///
/// # Safety
/// As [`kernel_avx2`], with `st.rows ≤ R ≤ AVX2_MR`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile_avx2<const PREFETCH: bool, const R: usize>(
    kb: usize,
    a: *const f32,
    b: *const f32,
    offsets: *const usize,
    st: &TileStore,
) {
    prefetch_c_tile(st, AVX2_NR * 4);
    // Fewer than 8 accumulators cannot cover 2 FMA ports × 4 cycles of
    // latency: for R ≤ 2 odd k steps go to a second set, added at the end.
    let split = R <= 2;
    let mut c0 = [_mm256_setzero_ps(); R];
    let mut c1 = [_mm256_setzero_ps(); R];
    let mut d0 = [_mm256_setzero_ps(); R];
    let mut d1 = [_mm256_setzero_ps(); R];
    // One k step into (acc0, acc1): B row `kk`, A step `kk`.
    let step = |kk: usize, acc0: &mut [__m256; R], acc1: &mut [__m256; R]| {
        // SAFETY: `offsets` has kb entries; the addressed B row holds 16
        // readable floats; A step `kk` is within the `kb·6` floats of the panel.
        unsafe {
            let row = b.add(*offsets.add(kk));
            if PREFETCH {
                // A hint only: the address may lie past the buffer (wrapping_add), prefetches never fault.
                let ahead = row.wrapping_add(st.prefetch_b) as *const i8;
                _mm_prefetch::<_MM_HINT_T1>(ahead);
                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64));
            }
            let (b0, b1) = (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8)));
            let ak = a.add(kk * AVX2_MR);
            for i in 0..R {
                let ai = _mm256_set1_ps(*ak.add(i));
                acc0[i] = _mm256_fmadd_ps(ai, b0, acc0[i]);
                acc1[i] = _mm256_fmadd_ps(ai, b1, acc1[i]);
            }
        }
    };
    if split {
        let mut kk = 0;
        while kk + 1 < kb {
            step(kk, &mut c0, &mut c1);
            step(kk + 1, &mut d0, &mut d1);
            kk += 2;
        }
        if kk < kb {
            step(kk, &mut c0, &mut c1);
        }
    } else {
        for kk in 0..kb {
            step(kk, &mut c0, &mut c1);
        }
    }
    if split {
        for i in 0..R {
            c0[i] = _mm256_add_ps(c0[i], d0[i]);
            c1[i] = _mm256_add_ps(c1[i], d1[i]);
        }
    }
    let zero = _mm256_setzero_ps();
    // Lane masks from the keep bits: all ones where the bit is set.
    let lanes = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    let lane_mask = |bits: u32| {
        let sel = _mm256_and_si256(_mm256_set1_epi32(bits as i32), lanes);
        _mm256_castsi256_ps(_mm256_cmpeq_epi32(sel, lanes))
    };
    let (m0, m1) = (lane_mask(st.keep & 0xff), lane_mask((st.keep >> 8) & 0xff));
    for i in 0..R {
        if i >= st.rows {
            break;
        }
        let (mut v0, mut v1) = (c0[i], c1[i]);
        // SAFETY: rows `i < st.rows` of `prev` and `out` hold 16 floats and
        // `bias` st.rows (caller's contract); null pointers are not dereferenced.
        unsafe {
            if !st.prev.is_null() {
                let p = st.prev.add(i * st.ld_prev);
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(p));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(p.add(8)));
            }
            if !st.bias.is_null() {
                let bi = _mm256_set1_ps(*st.bias.add(i));
                v0 = _mm256_add_ps(v0, bi);
                v1 = _mm256_add_ps(v1, bi);
            }
            if st.relu {
                v0 = _mm256_max_ps(zero, v0);
                v1 = _mm256_max_ps(zero, v1);
            }
            if st.keep & 0xffff != 0xffff {
                v0 = _mm256_and_ps(v0, m0);
                v1 = _mm256_and_ps(v1, m1);
            }
            let p = st.out.add(i * st.ld_out);
            _mm256_storeu_ps(p, v0);
            _mm256_storeu_ps(p.add(8), v1);
        }
    }
}

/// FLOPs per step of [`fma_chains`]: 12 chains × 8 lanes × 2.
pub const FMA_CHAIN_FLOPS_AVX2: u64 = 192;

/// Twelve independent FMA chains of 8 lanes, `iters` steps each (the
/// FMA-peak probe on AVX2 CPUs: 12 chains cover 2 ports × 4 cycles of latency
/// with room to spare).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn fma_chains(iters: u64) -> f32 {
    let mut acc = [_mm256_set1_ps(0.0); 12];
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let mut s = _mm256_setzero_ps();
    for r in acc {
        s = _mm256_add_ps(s, r);
    }
    let mut out = [0f32; 8];
    // SAFETY: `out` holds 8 floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

/// FLOPs per step of [`fma_chains_avx512`]: 24 chains × 16 lanes × 2.
pub const FMA_CHAIN_FLOPS_AVX512: u64 = 768;

/// Twenty-four independent FMA chains of 16 lanes, `iters` steps each (the
/// FMA-peak probe on AVX-512 CPUs). Two full 512-bit FMA ports of 4-cycle
/// latency need 8 chains in flight; 24 leave the scheduler slack. On CPUs
/// that split 512-bit FMAs in two (Zen 4) it measures the same rate as AVX2.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn fma_chains_avx512(iters: u64) -> f32 {
    let mut acc = [_mm512_set1_ps(0.0); 24];
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for r in acc {
        s = _mm512_add_ps(s, r);
    }
    _mm512_reduce_add_ps(s)
}

/// Dot products of 4 rows of `W` with up to 4 rows of `x`, `k` floats each:
/// `out[r][i] = Σ_t w[r][t]·x[i][t]` for `i < nx` (other entries untouched).
///
/// Each `W` row is read once, front to back — four sequential streams, which
/// the hardware prefetchers follow — and each vector of it feeds `nx` FMAs.
///
/// # Safety
/// The CPU must support AVX-512F; the 4 `w` pointers and the first `nx` `x`
/// pointers must each point to `k` readable floats; `nx <= 4`.
#[target_feature(enable = "avx512f")]
pub unsafe fn dot4_avx512(k: usize, w: [*const f32; 4], x: [*const f32; 4], nx: usize, out: &mut [[f32; 4]; 4]) {
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    let full = k / 16 * 16;
    let mut t = 0;
    // Specialise on the image count so the inner loops fully unroll.
    macro_rules! sweep {
        ($nx:expr) => {
            while t < full {
                // SAFETY: t + 16 <= k, within every row (caller's contract).
                unsafe {
                    let wv = [
                        _mm512_loadu_ps(w[0].add(t)),
                        _mm512_loadu_ps(w[1].add(t)),
                        _mm512_loadu_ps(w[2].add(t)),
                        _mm512_loadu_ps(w[3].add(t)),
                    ];
                    for i in 0..$nx {
                        let xv = _mm512_loadu_ps(x[i].add(t));
                        for r in 0..4 {
                            acc[r][i] = _mm512_fmadd_ps(wv[r], xv, acc[r][i]);
                        }
                    }
                }
                t += 16;
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
            let mut s = _mm512_reduce_add_ps(acc[r][i]);
            for tt in full..k {
                // SAFETY: tt < k.
                s += unsafe { *w[r].add(tt) * *x[i].add(tt) };
            }
            out[r][i] = s;
        }
    }
}

/// [`dot4_avx512`] on AVX2 + FMA for up to 2 rows of `x`: 8 accumulators
/// of 8 lanes, 4 `W` vectors and one `x` vector stay within the 16 ymm registers.
///
/// # Safety
/// The CPU must support AVX2 and FMA; the 4 `w` pointers and the first `nx`
/// `x` pointers must each point to `k` readable floats; `nx <= 2`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot4_avx2(k: usize, w: [*const f32; 4], x: [*const f32; 4], nx: usize, out: &mut [[f32; 4]; 4]) {
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    let full = k / 8 * 8;
    let mut t = 0;
    macro_rules! sweep {
        ($nx:expr) => {
            while t < full {
                // SAFETY: t + 8 <= k, within every row (caller's contract).
                unsafe {
                    let wv = [
                        _mm256_loadu_ps(w[0].add(t)),
                        _mm256_loadu_ps(w[1].add(t)),
                        _mm256_loadu_ps(w[2].add(t)),
                        _mm256_loadu_ps(w[3].add(t)),
                    ];
                    for i in 0..$nx {
                        let xv = _mm256_loadu_ps(x[i].add(t));
                        for r in 0..4 {
                            acc[r][i] = _mm256_fmadd_ps(wv[r], xv, acc[r][i]);
                        }
                    }
                }
                t += 8;
            }
        };
    }
    match nx {
        1 => sweep!(1),
        _ => sweep!(2),
    }
    for r in 0..4 {
        for i in 0..nx.min(2) {
            let mut lanes = [0.0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][i]) };
            let mut s: f32 = lanes.iter().sum();
            for tt in full..k {
                // SAFETY: tt < k.
                s += unsafe { *w[r].add(tt) * *x[i].add(tt) };
            }
            out[r][i] = s;
        }
    }
}
