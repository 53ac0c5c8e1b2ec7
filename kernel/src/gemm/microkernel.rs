//! Which microkernel runs: the list, run-time detection, the
//! `LML_MICROKERNEL` override, and dispatch to the per-architecture code.

use std::fmt;
use std::str::FromStr;

use super::tile::{SweepTile, TileStore};
use crate::error::{KernelError, Result};

/// The environment variable that forces a microkernel (`generic`, `avx2`,
/// `avx512` or `neon`); see [`Microkernel::select`].
pub const MICROKERNEL_ENV: &str = "LML_MICROKERNEL";

/// A register-blocked GEMM microkernel (tile `mr × nr`, see [`super::tile`]).
///
/// Every machine runs [`Generic`](Microkernel::Generic); the others need
/// their instruction set, checked at run time by [`available`](Self::available).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Microkernel {
    /// x86-64 AVX-512F, 8 × 32 (16 zmm accumulators).
    Avx512,
    /// x86-64 AVX2 + FMA, 6 × 16 (12 ymm accumulators).
    Avx2,
    /// aarch64 NEON, 8 × 12 (24 accumulators, lane-indexed FMAs).
    Neon,
    /// Plain Rust, 4 × 8, any CPU.
    Generic,
}

impl Microkernel {
    /// Every kernel, fastest first: [`detect`](Self::detect) picks the first available.
    pub const ALL: [Microkernel; 4] = [Microkernel::Avx512, Microkernel::Avx2, Microkernel::Neon, Microkernel::Generic];

    /// The fastest kernel this CPU runs (at worst [`Generic`](Microkernel::Generic)).
    pub fn detect() -> Self {
        Self::ALL.into_iter().find(|k| k.available()).unwrap_or(Microkernel::Generic)
    }

    /// Every kernel this CPU runs, fastest first; never empty (the generic
    /// kernel runs everywhere).
    pub fn runnable() -> Vec<Self> {
        Self::ALL.into_iter().filter(|k| k.available()).collect()
    }

    /// The kernels this CPU cannot run.
    pub fn unavailable() -> Vec<Self> {
        Self::ALL.into_iter().filter(|k| !k.available()).collect()
    }

    /// The kernel named by [`MICROKERNEL_ENV`] if it is set, else [`detect`](Self::detect).
    ///
    /// # Errors
    /// [`KernelError::Invalid`] if the variable names no kernel, names one
    /// this CPU cannot run, or is not Unicode: a forced kernel is never
    /// silently replaced by another.
    pub fn select() -> Result<Self> {
        match std::env::var(MICROKERNEL_ENV) {
            Ok(value) => Self::from_override(&value),
            Err(std::env::VarError::NotPresent) => Ok(Self::detect()),
            Err(std::env::VarError::NotUnicode(v)) => {
                Err(KernelError::invalid(MICROKERNEL_ENV, format!("{v:?} is not a microkernel name")))
            }
        }
    }

    /// The kernel an override value names, if this CPU runs it.
    ///
    /// # Errors
    /// As [`select`](Self::select).
    pub fn from_override(value: &str) -> Result<Self> {
        let kernel: Microkernel = value.parse()?;
        kernel.require()
    }

    /// `Ok(self)` if this CPU runs the kernel.
    ///
    /// # Errors
    /// [`KernelError::Invalid`] naming the kernel and the ones this CPU runs.
    pub fn require(self) -> Result<Self> {
        if self.available() {
            return Ok(self);
        }
        let runs: Vec<&str> = Self::runnable().into_iter().map(Self::name).collect();
        Err(KernelError::invalid(
            "microkernel",
            format!("{self} is not supported by this CPU (it runs: {})", runs.join(", ")),
        ))
    }

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            Microkernel::Generic => true,
            #[cfg(target_arch = "x86_64")]
            Microkernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Microkernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "aarch64")]
            Microkernel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)] // which arms remain depends on the target
            _ => false,
        }
    }

    /// The name [`select`](Self::select) and [`FromStr`] accept.
    pub const fn name(self) -> &'static str {
        match self {
            Microkernel::Avx512 => "avx512",
            Microkernel::Avx2 => "avx2",
            Microkernel::Neon => "neon",
            Microkernel::Generic => "generic",
        }
    }

    /// Rows of a C tile.
    pub const fn mr(self) -> usize {
        match self {
            Microkernel::Avx512 => 8,
            Microkernel::Avx2 => 6,
            Microkernel::Neon => 8,
            Microkernel::Generic => super::generic::GENERIC_MR,
        }
    }

    /// Columns of a C tile.
    pub const fn nr(self) -> usize {
        match self {
            Microkernel::Avx512 => 32,
            Microkernel::Avx2 => 16,
            Microkernel::Neon => 12,
            Microkernel::Generic => super::generic::GENERIC_NR,
        }
    }

    /// Runs the kernel on one tile: `C[mr×nr] = A panel · B`, B row `kk`
    /// being the `nr` floats at `b + offsets[kk]`, finished as `st` says.
    ///
    /// # Safety
    /// The kernel must be [`available`](Self::available), and the pointers
    /// must satisfy the contract of [`super::tile`] for this kernel's `mr × nr`.
    #[inline]
    pub(crate) unsafe fn run(self, kb: usize, a: *const f32, b: *const f32, offsets: *const usize, st: &TileStore) {
        debug_assert!(st.rows >= 1 && st.rows <= self.mr());
        // SAFETY: forwarded from the caller's contract; each arm's CPU
        // features are those `available` checked.
        unsafe {
            match self {
                #[cfg(target_arch = "x86_64")]
                Microkernel::Avx512 => super::x86::kernel_avx512(kb, a, b, offsets, st),
                #[cfg(target_arch = "x86_64")]
                Microkernel::Avx2 => super::x86::kernel_avx2(kb, a, b, offsets, st),
                #[cfg(target_arch = "aarch64")]
                Microkernel::Neon => super::neon::kernel_neon(kb, a, b, offsets, st),
                Microkernel::Generic => super::generic::kernel_generic(kb, a, b, offsets, st),
                #[allow(unreachable_patterns)]
                other => unreachable!("{other} is not available on this architecture"),
            }
        }
    }

    /// Runs the kernel on each tile of `tiles` in turn, for the row panel
    /// whose A panel is `a` and whose first output row is `row0`, each tile's
    /// store completed from `st` (see [`SweepTile::store`]). The same results
    /// as [`run`](Self::run) tile by tile, with the call and set-up paid once
    /// for the run (a target-feature function is never inlined into its caller).
    ///
    /// # Safety
    /// As [`run`](Self::run) for every tile's store.
    pub(crate) unsafe fn sweep(
        self,
        kb: usize,
        a: *const f32,
        offsets: *const usize,
        st: &TileStore,
        row0: usize,
        tiles: &[SweepTile],
    ) {
        debug_assert!(st.rows >= 1 && st.rows <= self.mr());
        // SAFETY: forwarded from the caller's contract; each arm's CPU
        // features are those `available` checked.
        unsafe {
            match self {
                #[cfg(target_arch = "x86_64")]
                Microkernel::Avx512 => super::x86::sweep_avx512(kb, a, offsets, st, row0, tiles),
                #[cfg(target_arch = "x86_64")]
                Microkernel::Avx2 => super::x86::sweep_avx2(kb, a, offsets, st, row0, tiles),
                #[cfg(target_arch = "aarch64")]
                Microkernel::Neon => super::neon::sweep_neon(kb, a, offsets, st, row0, tiles),
                _ => {
                    for t in tiles {
                        self.run(kb, a, t.b, offsets, &t.store(st, row0));
                    }
                }
            }
        }
    }
}

// The tile sizes above must be the kernels' own.
#[cfg(target_arch = "x86_64")]
const _: () = assert!(
    super::x86::AVX512_MR == Microkernel::Avx512.mr()
        && super::x86::AVX512_NR == Microkernel::Avx512.nr()
        && super::x86::AVX2_MR == Microkernel::Avx2.mr()
        && super::x86::AVX2_NR == Microkernel::Avx2.nr()
);
#[cfg(target_arch = "aarch64")]
const _: () = assert!(super::neon::NEON_MR == Microkernel::Neon.mr() && super::neon::NEON_NR == Microkernel::Neon.nr());
// Keep masks are u32 (one bit per column) and the edge buffer holds 8 × 32 floats.
const _: () = {
    let mut i = 0;
    while i < Microkernel::ALL.len() {
        let k = Microkernel::ALL[i];
        assert!(k.nr() <= 32 && k.mr() <= 8 && k.mr() >= 1);
        i += 1;
    }
};

impl fmt::Display for Microkernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Microkernel {
    type Err = KernelError;

    /// Parses a [`name`](Microkernel::name) (ASCII case-insensitive, surrounding blanks ignored).
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim();
        Self::ALL.into_iter().find(|k| k.name().eq_ignore_ascii_case(wanted)).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.into_iter().map(Self::name).collect();
            KernelError::invalid("microkernel", format!("unknown microkernel {s:?} (known: {})", names.join(", ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_errors() {
        for k in Microkernel::ALL {
            assert_eq!(k.name().parse::<Microkernel>().unwrap(), k);
            assert_eq!(k.name().to_uppercase().parse::<Microkernel>().unwrap(), k);
        }
        let err = "avx3".parse::<Microkernel>().unwrap_err().to_string();
        assert!(err.contains("unknown microkernel \"avx3\""), "{err}");
        assert!(err.contains("avx512, avx2, neon, generic"), "{err}");
    }

    #[test]
    fn overrides_name_a_runnable_kernel_or_fail() {
        assert_eq!(Microkernel::from_override("generic").unwrap(), Microkernel::Generic);
        for k in Microkernel::runnable() {
            assert_eq!(Microkernel::from_override(k.name()).unwrap(), k);
        }
        for k in Microkernel::unavailable() {
            let err = Microkernel::from_override(k.name()).unwrap_err().to_string();
            assert!(err.contains(&format!("{k} is not supported by this CPU")), "{err}");
        }
        assert!(Microkernel::from_override("").is_err());
        assert!(Microkernel::from_override("fastest").is_err());
    }

    #[test]
    fn detect_picks_the_first_runnable_kernel() {
        let runnable = Microkernel::runnable();
        assert_eq!(runnable.last(), Some(&Microkernel::Generic));
        assert_eq!(Microkernel::detect(), runnable[0]);
    }
}
