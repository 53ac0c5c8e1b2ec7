//! The small-batch dense kernel: a batch of dot products that streams each
//! weight row once (fc6 at batch 1 reads 411 MB for 0.2 GFLOP, so memory,
//! not arithmetic, sets its speed), on the same [`Microkernel`] choice as
//! the GEMM.

use super::microkernel::Microkernel;

/// `y[i, o] = Σ_t x[i, t]·w[o, t]` for a block of `W` rows, on `kernel`'s
/// instruction set: `y` row-major `[x.len(), w.len()]`.
///
/// Rows of `W` are taken four at a time and each is read front to back
/// (four sequential streams, which hardware prefetchers follow), each vector
/// of it feeding the dot products of up to four rows of `x` (two on AVX2,
/// whose 16 registers hold 4 × 2 accumulators next to the operands).
///
/// # Panics
/// If a row length differs from `k`, `y` has the wrong length, or `kernel`
/// is not available on this CPU (a caller bug: use [`Microkernel::select`]).
pub fn dense_rows(kernel: Microkernel, k: usize, x: &[&[f32]], w: &[&[f32]], y: &mut [f32]) {
    assert!(x.iter().chain(w).all(|r| r.len() == k), "dense_rows: rows must hold {k} floats");
    assert_eq!(y.len(), x.len() * w.len(), "dense_rows: output size");
    assert!(kernel.available(), "{kernel} is not supported by this CPU");
    let group = if kernel == Microkernel::Avx2 { 2 } else { 4 };
    let cols = w.len();
    for (r0, wr) in w.chunks(4).enumerate().map(|(i, c)| (4 * i, c)) {
        // Pad a short group by repeating its first row (results discarded).
        let wg = [0, 1, 2, 3].map(|r| *wr.get(r).unwrap_or(&wr[0]));
        for (i0, xs) in x.chunks(group).enumerate().map(|(i, c)| (group * i, c)) {
            let xg = [0, 1, 2, 3].map(|i| *xs.get(i).unwrap_or(&xs[0]));
            let mut out = [[0.0f32; 4]; 4];
            dot4(kernel, k, wg, xg, xs.len(), &mut out);
            for (r, row) in out.iter().enumerate().take(wr.len()) {
                for (i, &v) in row.iter().enumerate().take(xs.len()) {
                    y[(i0 + i) * cols + r0 + r] = v;
                }
            }
        }
    }
}

/// `out[r][i] = Σ_t w[r][t]·x[i][t]` for `r < 4`, `i < nx` (other entries
/// untouched); `nx ≤ 4`, or `≤ 2` on AVX2.
fn dot4(kernel: Microkernel, k: usize, w: [&[f32]; 4], x: [&[f32]; 4], nx: usize, out: &mut [[f32; 4]; 4]) {
    let wp = w.map(<[f32]>::as_ptr);
    let xp = x.map(<[f32]>::as_ptr);
    match kernel {
        // SAFETY (every arm): the rows hold `k` floats (asserted by the
        // caller), `nx` is within the arm's limit, and the kernel's CPU
        // features were checked by the caller (`available`).
        #[cfg(target_arch = "x86_64")]
        Microkernel::Avx512 => unsafe { super::x86::dot4_avx512(k, wp, xp, nx, out) },
        #[cfg(target_arch = "x86_64")]
        Microkernel::Avx2 => unsafe { super::x86::dot4_avx2(k, wp, xp, nx, out) },
        #[cfg(target_arch = "aarch64")]
        Microkernel::Neon => unsafe { super::neon::dot4_neon(k, wp, xp, nx, out) },
        _ => {
            let _ = (wp, xp);
            dot4_generic(k, w, x, nx, out)
        }
    }
}

/// [`dot4`] in plain Rust: 8-lane partial sums the compiler may vectorise.
fn dot4_generic(k: usize, w: [&[f32]; 4], x: [&[f32]; 4], nx: usize, out: &mut [[f32; 4]; 4]) {
    const L: usize = 8;
    let full = k / L * L;
    for (i, xi) in x.iter().enumerate().take(nx.min(4)) {
        let mut acc = [[0.0f32; L]; 4];
        for t in (0..full).step_by(L) {
            let xv = &xi[t..t + L];
            for (a, wr) in acc.iter_mut().zip(&w) {
                for ((s, &wv), &xv) in a.iter_mut().zip(&wr[t..t + L]).zip(xv) {
                    *s += wv * xv;
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let tail: f32 = (full..k).map(|t| w[r][t] * xi[t]).sum();
            out[r][i] = a.iter().sum::<f32>() + tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Integer data: exact sums, so every kernel matches the f64 reference
    /// bit for bit, for every batch 0..=9 and row count 0..=9 (short groups
    /// of both) and lengths around the vector widths.
    #[test]
    fn dense_rows_exact_on_every_kernel() {
        let mut ran = Vec::new();
        for kernel in Microkernel::runnable() {
            let mut cases = 0;
            for k in [0, 1, 7, 8, 15, 16, 17, 33, 100] {
                for nx in 0..=9 {
                    for nw in 0..=9 {
                        let xs: Vec<Vec<f32>> =
                            (0..nx).map(|i| (0..k).map(|t| ((i * 3 + t * 5) % 7) as f32 - 3.0).collect()).collect();
                        let ws: Vec<Vec<f32>> =
                            (0..nw).map(|o| (0..k).map(|t| ((o * 2 + t * 7) % 9) as f32 - 4.0).collect()).collect();
                        let x: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
                        let w: Vec<&[f32]> = ws.iter().map(Vec::as_slice).collect();
                        let mut y = vec![f32::NAN; nx * nw];
                        dense_rows(kernel, k, &x, &w, &mut y);
                        for i in 0..nx {
                            for o in 0..nw {
                                let r: f64 = (0..k).map(|t| xs[i][t] as f64 * ws[o][t] as f64).sum();
                                assert_eq!(y[i * nw + o] as f64, r, "{kernel} k{k} x{nx} w{nw} ({i},{o})");
                            }
                        }
                        cases += 1;
                    }
                }
            }
            ran.push(format!("{kernel} ({cases} cases)"));
        }
        let missing: Vec<String> = Microkernel::unavailable().iter().map(|k| k.to_string()).collect();
        eprintln!(
            "dense_rows_exact_on_every_kernel: ran on {}; not supported by this CPU: {}",
            ran.join(", "),
            if missing.is_empty() { "none".to_string() } else { missing.join(", ") }
        );
    }
}
