//! x86-64 input transform of Winograd F(4×4, 3×3) in AVX2 + FMA, run by
//! [`super::winograd`] for the x86 microkernels (their panel widths, 16 and
//! 32, are whole blocks of [`BLOCK`] tiles).
//!
//! Per channel, the task's tiles go in aligned blocks of eight. Each tile's
//! patch is read as six rows of eight floats (its six columns and two
//! unused), the vertical pass `Bᵀ d` runs on those rows as they are (one
//! tile, eight columns in the lanes), an 8×8 transpose per row of the result
//! puts the eight tiles in the lanes, and the horizontal pass `(Bᵀ d) B`
//! runs across the block, its 36 vectors stored straight into the packed
//! `V` panels. The portable transform it replaces gathers each patch column
//! over the tiles with scalar moves through two scratch passes; here the
//! only scratch is the block's 6 × 8 vertical results (1.5 KB, in L1).
//! The vertical pass does twice the arithmetic it needs (neighbouring
//! patches share two columns, and two lanes are unused): cheaper than
//! shuffling the phases apart before it.

use core::arch::x86_64::*;

/// Tiles per block: the lanes of one `__m256`.
pub(super) const BLOCK: usize = 8;

/// Where one tile's 6×6 input patch lies in its channel's plane.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Patch {
    /// Offset of the patch's top-left float from the start of the plane.
    pub at: usize,
    /// Rows and columns of the patch inside the frame (those past it are
    /// zeros); 0 rows for a padding tile past the task's last.
    pub rows: usize,
    pub cols: usize,
    /// Whether the six rows can be read whole: six rows and columns, and
    /// eight floats of the last row inside the plane.
    pub whole: bool,
}

/// Whether this CPU runs [`input_f4_channel`].
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// `Bᵀ x` of F(4×4, 3×3) on six vectors (the same sums as the portable
/// `F4T::input`, with multiply-adds).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn bt(x: [__m256; 6]) -> [__m256; 6] {
    let [x0, x1, x2, x3, x4, x5] = x;
    let (four, five, two) = (_mm256_set1_ps(4.0), _mm256_set1_ps(5.0), _mm256_set1_ps(2.0));
    let x42 = _mm256_sub_ps(x4, x2);
    let x13 = _mm256_sub_ps(x1, x3);
    [
        _mm256_fmadd_ps(four, x0, _mm256_fnmadd_ps(five, x2, x4)),
        _mm256_fnmadd_ps(four, _mm256_add_ps(x1, x2), _mm256_add_ps(x3, x4)),
        _mm256_fmadd_ps(four, _mm256_sub_ps(x1, x2), _mm256_sub_ps(x4, x3)),
        _mm256_fnmadd_ps(two, x13, x42),
        _mm256_fmadd_ps(two, x13, x42),
        _mm256_fmadd_ps(four, x1, _mm256_fnmadd_ps(five, x3, x5)),
    ]
}

/// Columns 0..6 of the 8×8 matrix whose rows are `r`: `out[s]` lane `l` is `r[l]` lane `s`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn transpose6(r: [__m256; 8]) -> [__m256; 6] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    // Columns s and s + 4 of rows 0..4 (u0..u3) and rows 4..8 (u4..u7).
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
    ]
}

/// `Bᵀ d` of one patch: six vectors, row `i` of the result over the patch's
/// eight columns (the last two meaningless).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn vertical(plane: &[f32], wp: usize, p: &Patch) -> [__m256; 6] {
    if p.whole {
        let src = &plane[p.at..p.at + 5 * wp + 8];
        // SAFETY: row r's eight floats end at r·wp + 8 ≤ src.len().
        bt(std::array::from_fn(|r| unsafe { _mm256_loadu_ps(src.as_ptr().add(r * wp)) }))
    } else {
        let mut patch = [[0.0f32; 8]; 6];
        for (r, row) in patch.iter_mut().enumerate().take(p.rows) {
            let at = p.at + r * wp;
            row[..p.cols].copy_from_slice(&plane[at..at + p.cols]);
        }
        // SAFETY: each row is eight floats.
        bt(std::array::from_fn(|r| unsafe { _mm256_loadu_ps(patch[r].as_ptr()) }))
    }
}

/// `V_ξ[ch, t] = (Bᵀ d B)[i, j]` (`ξ = 6i + j`) of one channel for every
/// tile `t` of the task, into the packed panels of `v`: `V_ξ[ch, t]` at
/// `((t / nr)·36 + ξ)·c_in·nr + ch·nr + t % nr`.
///
/// # Arguments
/// * `plane` — the channel's padded plane (rows of `wp` floats).
/// * `patches` — per tile, where its patch lies; a whole number of
///   [`BLOCK`]s (padding tiles with 0 rows).
/// * `nr` — the panel width, a multiple of [`BLOCK`].
///
/// # Panics
/// If a patch or a panel falls outside its buffer (never for the task
/// `super::winograd` builds).
#[target_feature(enable = "avx2,fma")]
pub(super) fn input_f4_channel(
    plane: &[f32],
    wp: usize,
    patches: &[Patch],
    v: &mut [f32],
    (ch, c_in, nr): (usize, usize, usize),
) {
    assert!(patches.len().is_multiple_of(BLOCK) && nr.is_multiple_of(BLOCK), "whole blocks of tiles and panels");
    let row_stride = c_in * nr;
    // A block's vertical results: cols[l][i] is row i of tile l's Bᵀ d.
    // Written in place, block after block (zeroing or moving its 1.5 KB per
    // block costs a memset or memcpy call each).
    let mut cols = [[_mm256_setzero_ps(); 6]; BLOCK];
    for (b, block) in patches.chunks_exact(BLOCK).enumerate() {
        for (l, p) in block.iter().enumerate() {
            cols[l] = vertical(plane, wp, p);
        }
        let t = b * BLOCK;
        let base = (t / nr) * 36 * row_stride + ch * nr + t % nr;
        #[allow(clippy::needless_range_loop)] // i picks row i of every tile's result
        for i in 0..6 {
            let y = bt(transpose6(std::array::from_fn(|l| cols[l][i])));
            for (j, y) in y.iter().enumerate() {
                let at = base + (6 * i + j) * row_stride;
                let dst = &mut v[at..at + BLOCK];
                // SAFETY: dst holds eight floats.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), *y) };
            }
        }
    }
}

/// `Aᵀ x` of F(4×4, 3×3) on six vectors (the portable `F4T::output`'s sums).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn at(x: [__m256; 6]) -> [__m256; 4] {
    let [x0, x1, x2, x3, x4, x5] = x;
    let (s12, d12) = (_mm256_add_ps(x1, x2), _mm256_sub_ps(x1, x2));
    let (s34, d34) = (_mm256_add_ps(x3, x4), _mm256_sub_ps(x3, x4));
    [
        _mm256_add_ps(_mm256_add_ps(x0, s12), s34),
        _mm256_fmadd_ps(_mm256_set1_ps(2.0), d34, d12),
        _mm256_fmadd_ps(_mm256_set1_ps(4.0), s34, s12),
        _mm256_fmadd_ps(_mm256_set1_ps(8.0), d34, _mm256_add_ps(d12, x5)),
    ]
}

/// `relu?(Aᵀ M A + b)` of one output channel for every tile of the task,
/// rows of the tiles side by side: output `(r, p)` of tile `t` at
/// `y[r·4·lanes + 4t + p]`, `lanes = tiles` rounded up to [`BLOCK`].
///
/// Per block of eight tiles: the vertical pass `Aᵀ M` over the 36 product
/// rows, the horizontal pass per output row, bias and ReLU, and a 4×8
/// transpose that lays each tile's four columns next to its neighbour's.
///
/// # Arguments
/// * `m` — the channel's products, `M_ξ[t]` at `ξ·tiles + t`, readable
///   for whole blocks (`35·tiles + lanes` floats at least).
///
/// # Panics
/// If `m` or `y` is shorter than that.
#[target_feature(enable = "avx2,fma")]
pub(super) fn output_f4_channel(m: &[f32], tiles: usize, bias: f32, relu: bool, y: &mut [f32]) {
    let lanes = tiles.next_multiple_of(BLOCK);
    let row = 4 * lanes;
    assert!(m.len() >= 35 * tiles + lanes && y.len() >= 4 * row, "whole blocks of products and outputs");
    let (b, zero) = (_mm256_set1_ps(bias), _mm256_setzero_ps());
    for u in (0..lanes).step_by(BLOCK) {
        // z[j][r] = Σ_i Aᵀ[r][i]·M_{6i+j}: the vertical pass, column j of every tile.
        let z: [[__m256; 4]; 6] = std::array::from_fn(|j| {
            at(std::array::from_fn(|i| {
                let src = &m[(6 * i + j) * tiles + u..][..BLOCK];
                // SAFETY: src holds eight floats.
                unsafe { _mm256_loadu_ps(src.as_ptr()) }
            }))
        });
        for r in 0..4 {
            let mut o = at(std::array::from_fn(|j| z[j][r]));
            for v in &mut o {
                *v = _mm256_add_ps(*v, b);
                if relu {
                    *v = _mm256_max_ps(*v, zero);
                }
            }
            // Tiles in lanes → each tile's four columns in a row: rows of
            // tiles (0, 4), (1, 5), (2, 6), (3, 7), then pairs in order.
            let a0 = _mm256_unpacklo_ps(o[0], o[1]);
            let a1 = _mm256_unpackhi_ps(o[0], o[1]);
            let a2 = _mm256_unpacklo_ps(o[2], o[3]);
            let a3 = _mm256_unpackhi_ps(o[2], o[3]);
            let t04 = _mm256_shuffle_ps::<0x44>(a0, a2);
            let t15 = _mm256_shuffle_ps::<0xEE>(a0, a2);
            let t26 = _mm256_shuffle_ps::<0x44>(a1, a3);
            let t37 = _mm256_shuffle_ps::<0xEE>(a1, a3);
            let out = [
                _mm256_permute2f128_ps::<0x20>(t04, t15),
                _mm256_permute2f128_ps::<0x20>(t26, t37),
                _mm256_permute2f128_ps::<0x31>(t04, t15),
                _mm256_permute2f128_ps::<0x31>(t26, t37),
            ];
            let dst = &mut y[r * row + 4 * u..][..4 * BLOCK];
            for (k, v) in out.into_iter().enumerate() {
                // SAFETY: dst holds 32 floats.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(8 * k), v) };
            }
        }
    }
}

/// Asks for every cache line of `data` (a hint: `prefetcht0`, which never
/// faults). The transforms call it one channel ahead: their inputs at 224×224
/// (and their outputs, written a row at a time) lie far apart in memory,
/// a plane per channel, where the hardware prefetchers do not follow.
pub(super) fn prefetch(data: &[f32]) {
    let p = data.as_ptr().cast::<i8>();
    let bytes = std::mem::size_of_val(data);
    for at in (0..bytes).step_by(64) {
        // SAFETY: a prefetch never faults; the address is inside `data`.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(at)) };
    }
    if bytes > 0 {
        // The last line, when `data` starts past a line's start.
        // SAFETY: as above.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(bytes - 1)) };
    }
}
