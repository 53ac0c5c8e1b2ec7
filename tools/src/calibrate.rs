//! Compute speeds for `lml plan`: measured on the current machine by
//! `lml plan --calibrate`, kept per architecture in a small JSON file, or
//! the documented per-architecture defaults below.
//!
//! A speed is seconds of one thread on one full vCPU per unit of work: one
//! 224×224 image through VGG19 to fc7, one 32×32 image to pool5, one cached
//! 4096-d feature row through a head step (gradient + SGD update). The
//! planner divides by the vCPU share a function's memory buys
//! ([`lml_lambda::cost::seconds_per_example`]).
//!
//! # The file
//! `$LML_CALIBRATION` if set, else `$XDG_CACHE_HOME/lml/calibration.json`,
//! else `$HOME/.cache/lml/calibration.json` ([`default_path`]); `lml plan
//! --calibration PATH` overrides all three. It holds at most one entry per
//! architecture (a new calibration on the same architecture replaces the
//! old one), so calibrating once on an x86_64 machine and once on an arm64
//! machine, with the same file, gives `plan` measured speeds for both:
//!
//! ```json
//! {"version": 1, "entries": [{"arch": "x86_64", "microkernel": "avx2",
//!   "cpu": "AMD EPYC 9R14", "threads": 1, "unix_time": 1796000000,
//!   "speeds": {"image_224_fc7_s": 0.41, "image_32_pool5_s": 0.0115, "feature_row_s": 4.8e-6}}]}
//! ```

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lml_kernel::gemm::Microkernel;
use lml_kernel::optim::Sgd;
use lml_kernel::trainer::{Head, HeadVelocity};
use lml_kernel::vgg::{random_weights, MODEL};
use lml_kernel::weights::WeightStore;
use lml_kernel::{Cut, Preset, Vgg19};
use ndarray::{Array2, Array4};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The environment variable naming the calibration file (see [`default_path`]).
pub const CALIBRATION_ENV: &str = "LML_CALIBRATION";

/// The file format's version.
pub const VERSION: u32 = 1;

/// Errors of reading, writing or measuring a calibration.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("calibration file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("calibration file {path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("no calibration file path: set {CALIBRATION_ENV}, XDG_CACHE_HOME or HOME, or pass --calibration")]
    NoPath,
    #[error("calibration: {0}")]
    Kernel(#[from] lml_kernel::KernelError),
    #[error("calibration: {0}")]
    Invalid(String),
}

/// A CPU architecture Lambda offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Lambda's `x86_64`.
    X86_64,
    /// Lambda's `arm64` (Graviton2).
    Aarch64,
}

impl Arch {
    /// Both, in the order `plan` prints them.
    pub const ALL: [Arch; 2] = [Arch::Aarch64, Arch::X86_64];

    /// The architecture this program was built for, if Lambda offers it.
    pub fn current() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// Lambda's name for it (`Architectures` in a function configuration).
    pub const fn lambda_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "arm64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.lambda_name())
    }
}

/// Seconds per unit of work on one thread with a full vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Speeds {
    /// One 224×224 image through VGG19 to fc7 (batch 8).
    pub image_224_fc7_s: f64,
    /// One 32×32 image through VGG19 to pool5 (batch 64).
    pub image_32_pool5_s: f64,
    /// One cached 4096-d feature row through a head step (batch 256).
    pub feature_row_s: f64,
}

impl Speeds {
    fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("image_224_fc7_s", self.image_224_fc7_s),
            ("image_32_pool5_s", self.image_32_pool5_s),
            ("feature_row_s", self.feature_row_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} is {v}, expected a positive number of seconds"));
            }
        }
        Ok(())
    }
}

/// The x86_64 default: measured on the development machine (AMD EPYC Zen 4,
/// one thread) with the AVX2 kernel forced, since Lambda's x86_64 hosts are
/// not guaranteed AVX-512:
/// * 224 → fc7: 98.8 GFLOP/s per thread by CPU time (3.18 s per batch of 8
///   of 39.26 GFLOP each), `LML_MICROKERNEL=avx2 cargo run --release -p
///   lml-benches --example cpu_fraction` (the machine was shared, load 3.3:
///   CPU time counts only the time the thread ran);
/// * 32 → pool5: 175 img/s on 2 threads with AVX-512 (`cargo bench -p
///   lml-benches --bench vgg -- vgg19_32_pool5`, quiet machine), × 1.036, the
///   AVX-512 / AVX2 ratio measured at 224 (102.4 / 98.8 GFLOP/s);
/// * head: 0.24 s per epoch of 50,000 rows at batch 256 (`cargo bench -p
///   lml-benches --bench head -- head_epoch_cached/50000`).
///
/// One thread here has a whole Zen 4 core; Lambda's x86_64 CPUs differ
/// (clock, AVX-512 or not), and an x86 vCPU is one hyperthread of a core
/// ("each vCPU is a thread of a CPU core, except for T2 instances and
/// instances powered by AWS Graviton processors": Amazon EC2 User Guide,
/// "CPU options"), which two busy FMA-bound threads share. So this is an
/// optimistic default for Lambda x86_64; `lml plan --calibrate` on the
/// target replaces it.
pub const X86_64_DEFAULT: Speeds = Speeds {
    image_224_fc7_s: 3.18 / 8.0,
    image_32_pool5_s: 2.0 / 175.0 * (102.4 / 98.8),
    feature_row_s: 0.24 / 50_000.0,
};

/// FP32 FMA peak of one thread of the development machine (GFLOP/s), by CPU
/// time: `cargo run --release -p lml-benches --example cpu_fraction`
/// (113–117 over six runs; `cargo bench -p lml-benches --bench peak --
/// fma_f32/1t` agrees on a quiet machine).
pub const DEVELOPMENT_PEAK_GFLOPS: f64 = 116.0;

/// FP32 peak of one Graviton2 core (GFLOP/s): 2.5 GHz × 2 FMA pipes × 4
/// lanes × 2 FLOPs.
///
/// Sources: Graviton2 is 64 Neoverse N1 cores at 2.5 GHz, one core per vCPU
/// (WikiChip "AWS Graviton2"; AnandTech, "Amazon's Arm-based Graviton2
/// Against AMD and Intel", 2020; AWS whitepaper "AWS Graviton Performance
/// Testing": "every vCPU is a physical core"); Lambda's arm64 runs on
/// Graviton2 (AWS Lambda Developer Guide, "Instruction set architecture").
/// N1 issues 128-bit ASIMD FP multiply-accumulates (`fmla`, by-element
/// included) to either of its two FP/ASIMD pipes V0 and V1 with latency 4
/// (Arm Neoverse N1 Software Optimization Guide, as encoded in GCC's
/// `gcc/config/aarch64/neoverse-n1.md`: `neon_fp_mla_s_q`,
/// `neon_fp_mla_s_scalar_q` → `neon1_v` = V0 | V1, latency 4).
pub const GRAVITON2_PEAK_GFLOPS: f64 = 2.5 * 2.0 * 4.0 * 2.0;

/// The arm64 default, a model (no arm64 machine was available to time):
/// [`X86_64_DEFAULT`] scaled by the ratio of per-thread peaks,
/// `DEVELOPMENT_PEAK_GFLOPS / GRAVITON2_PEAK_GFLOPS` (2.9×): 1.15 s per
/// 224×224 image per Graviton2 core, 34 GFLOP/s.
///
/// That is, the NEON kernel is assumed to reach the same fraction of its
/// core's peak as the AVX2 kernel reaches here (85% at 224×224 → fc7). Why it
/// should: both are FMA-issue-bound with room to spare elsewhere. Per `k`
/// step the NEON 8 × 12 kernel issues 24 `fmla` (12 cycles on two pipes) and
/// 5 vector loads + 1 offset load (3 cycles on N1's two load pipes), with 24
/// independent accumulators against the 8 that 4-cycle latency × 2 pipes
/// needs; the AVX2 6 × 16 kernel issues 12 FMAs and 8 loads (2 rows of B,
/// 6 broadcasts) per step on Zen 4's 2 FMA and 3 load pipes. Neither spills
/// (NEON: 29 of 32 vector registers; AVX2: 15 of 16). The head step
/// (memory- and latency-bound small GEMMs) is scaled the same way, which is
/// the least certain part of the model. `lml plan --calibrate` on an arm64
/// machine (e.g. a Graviton2 EC2 instance) replaces the model with a measurement.
pub fn aarch64_default() -> Speeds {
    let slower = DEVELOPMENT_PEAK_GFLOPS / GRAVITON2_PEAK_GFLOPS;
    Speeds {
        image_224_fc7_s: X86_64_DEFAULT.image_224_fc7_s * slower,
        image_32_pool5_s: X86_64_DEFAULT.image_32_pool5_s * slower,
        feature_row_s: X86_64_DEFAULT.feature_row_s * slower,
    }
}

/// The documented default for `arch` (see [`X86_64_DEFAULT`], [`aarch64_default`]).
pub fn default_speeds(arch: Arch) -> Speeds {
    match arch {
        Arch::X86_64 => X86_64_DEFAULT,
        Arch::Aarch64 => aarch64_default(),
    }
}

/// One machine's measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub arch: Arch,
    /// The GEMM microkernel the forward ran on (`avx512`, `avx2`, `neon`, `generic`).
    pub microkernel: String,
    /// The CPU's model name (`/proc/cpuinfo`), or "unknown".
    pub cpu: String,
    /// Threads the work was timed on (the speeds are per thread).
    pub threads: usize,
    /// When it was measured (seconds since the Unix epoch).
    pub unix_time: u64,
    pub speeds: Speeds,
}

/// The calibration file: at most one [`Calibration`] per architecture.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationFile {
    pub version: u32,
    pub entries: Vec<Calibration>,
}

impl CalibrationFile {
    /// Reads and validates `path`; a missing file is an empty calibration.
    ///
    /// # Errors
    /// [`CalibrationError::Io`] if it cannot be read; [`CalibrationError::Format`]
    /// if it is not the format above (unknown fields, another version, an
    /// architecture twice, a speed that is not a positive number).
    pub fn load(path: &Path) -> Result<Self, CalibrationError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CalibrationFile::default()),
            Err(source) => return Err(CalibrationError::Io { path: path.to_owned(), source }),
        };
        let format = |message: String| CalibrationError::Format { path: path.to_owned(), message };
        let file: CalibrationFile = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
        if file.version != VERSION {
            return Err(format(format!("version {}, expected {VERSION}", file.version)));
        }
        for (i, e) in file.entries.iter().enumerate() {
            e.speeds.check().map_err(|m| format(format!("{} entry: {m}", e.arch)))?;
            if e.threads == 0 {
                return Err(format(format!("{} entry: threads is 0", e.arch)));
            }
            if file.entries[..i].iter().any(|o| o.arch == e.arch) {
                return Err(format(format!("{} appears twice", e.arch)));
            }
        }
        Ok(file)
    }

    /// The entry for `arch`, if calibrated.
    pub fn get(&self, arch: Arch) -> Option<&Calibration> {
        self.entries.iter().find(|e| e.arch == arch)
    }

    /// Adds `entry`, replacing any entry of the same architecture.
    pub fn insert(&mut self, entry: Calibration) {
        self.version = VERSION;
        self.entries.retain(|e| e.arch != entry.arch);
        self.entries.push(entry);
        self.entries.sort_by_key(|e| e.arch.lambda_name());
    }

    /// Writes the file: to a temporary beside it, fsynced, then renamed
    /// over `path` (a reader never sees a half-written file). Creates the
    /// parent directory.
    ///
    /// # Errors
    /// [`CalibrationError::Io`] naming the path that failed.
    pub fn save(&self, path: &Path) -> Result<(), CalibrationError> {
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| CalibrationError::Io { path: p, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let name = path
            .file_name()
            .ok_or_else(|| CalibrationError::Format { path: path.to_owned(), message: "not a file name".into() })?;
        let tmp = path.with_file_name(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
        let json = serde_json::to_string_pretty(self).expect("a calibration serialises");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(json.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()
        };
        if let Err(e) = write().and_then(|()| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(path)(e));
        }
        Ok(())
    }
}

/// The calibration file's path when none is given: `$LML_CALIBRATION`, else
/// `$XDG_CACHE_HOME/lml/calibration.json`, else `$HOME/.cache/lml/calibration.json`.
///
/// # Errors
/// [`CalibrationError::NoPath`] if none of the three variables is set (non-empty).
pub fn default_path() -> Result<PathBuf, CalibrationError> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = var(CALIBRATION_ENV) {
        return Ok(p);
    }
    if let Some(cache) = var("XDG_CACHE_HOME") {
        return Ok(cache.join("lml").join("calibration.json"));
    }
    var("HOME").map(|h| h.join(".cache").join("lml").join("calibration.json")).ok_or(CalibrationError::NoPath)
}

/// How much work a calibration times (each after one untimed warm-up run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// 224×224 images per forward to fc7.
    pub images_224: usize,
    /// 32×32 images per forward to pool5.
    pub images_32: usize,
    /// Feature rows through head steps of 256.
    pub feature_rows: usize,
}

impl Default for Workload {
    /// The benchmarks' batches (8 at 224, 64 at 32) and 8,192 feature rows:
    /// about 4 s at 224 and 1 s for the rest on one Zen 4 thread, warm-ups included.
    fn default() -> Self {
        Workload { images_224: 8, images_32: 64, feature_rows: 8192 }
    }
}

/// Writes random VGG19 weights to fc7 into `dir` (timing does not depend on
/// the values; 548 MB).
///
/// # Errors
/// As [`WeightStore::write`].
pub fn write_random_weights(dir: &Path) -> Result<(), CalibrationError> {
    let w = random_weights(1, Cut::Fc7);
    WeightStore::write(dir, MODEL, Preset::Torchvision, w.iter().map(|(n, a)| (n.clone(), a.view())))?;
    Ok(())
}

/// Times `work` on this machine on one thread: a forward of
/// `work.images_224` 224×224 images to fc7 and of `work.images_32` 32×32
/// images to pool5 over the VGG19 weights in `weights`, and head steps
/// (batch 256, 4096 → 10) over `work.feature_rows` random rows. The forward
/// runs on the microkernel [`Microkernel::select`] picks (`LML_MICROKERNEL`
/// forces one).
///
/// # Errors
/// [`CalibrationError::Invalid`] on a workload with a zero count or an
/// architecture Lambda does not offer; kernel errors (weights missing or
/// malformed, an unknown `LML_MICROKERNEL`).
pub fn measure(weights: &Path, work: Workload) -> Result<Calibration, CalibrationError> {
    if work.images_224 == 0 || work.images_32 == 0 || work.feature_rows == 0 {
        return Err(CalibrationError::Invalid(format!("every count of {work:?} must be positive")));
    }
    let arch = Arch::current()
        .ok_or_else(|| CalibrationError::Invalid(format!("{} is not a Lambda architecture", std::env::consts::ARCH)))?;
    let pool = lml_kernel::parallel::thread_pool(1)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);

    let mut forward = |size: usize, cut: Cut, n: usize| -> Result<(Microkernel, f64), CalibrationError> {
        let vgg = Vgg19::open(weights, size, cut)?;
        let x = Array4::from_shape_simple_fn((n, 3, size, size), || rng.random_range(-1.0f32..1.0));
        // The warm-up packs the filters and pages the weights in.
        pool.install(|| vgg.forward(x.view()))?;
        let start = Instant::now();
        pool.install(|| vgg.forward(x.view()))?;
        Ok((vgg.microkernel(), start.elapsed().as_secs_f64() / n as f64))
    };
    let (kernel, image_224_fc7_s) = forward(224, Cut::Fc7, work.images_224)?;
    let (_, image_32_pool5_s) = forward(32, Cut::Pool5, work.images_32)?;

    let rows = work.feature_rows;
    let x = Array2::from_shape_simple_fn((rows, 4096), || rng.random_range(0.0f32..2.0));
    let labels: Vec<u32> = (0..rows).map(|i| (i % 10) as u32).collect();
    let (sgd, mut head) = (Sgd::default(), Head::new(10, 4096, 1));
    let mut velocity = HeadVelocity::zeros_like(&head);
    let mut pass = || -> Result<f64, CalibrationError> {
        let start = Instant::now();
        for s in (0..rows).step_by(256) {
            let e = (s + 256).min(rows);
            let grad = pool.install(|| head.gradient(x.slice(ndarray::s![s..e, ..]), &labels[s..e]))?;
            head.apply(&grad, &sgd, &mut velocity)?;
        }
        Ok(start.elapsed().as_secs_f64() / rows as f64)
    };
    pass()?;
    let feature_row_s = pass()?;

    let speeds = Speeds { image_224_fc7_s, image_32_pool5_s, feature_row_s };
    speeds.check().map_err(CalibrationError::Invalid)?;
    let unix_time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(Calibration { arch, microkernel: kernel.name().to_string(), cpu: cpu_model(), threads: 1, unix_time, speeds })
}

/// The CPU's model name from `/proc/cpuinfo` (`model name` on x86,
/// otherwise the implementer and part numbers on aarch64), or "unknown".
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines().filter_map(|l| l.split_once(':')).find(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_string())
    };
    if let Some(name) = field("model name") {
        return name;
    }
    match (field("CPU implementer"), field("CPU part")) {
        // Arm Ltd's part 0xd0c is the Neoverse N1 (Graviton2).
        (Some(i), Some(p)) if i == "0x41" && p == "0xd0c" => "Neoverse N1".to_string(),
        (Some(i), Some(p)) => format!("implementer {i}, part {p}"),
        _ => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arch: Arch, s: f64) -> Calibration {
        Calibration {
            arch,
            microkernel: "generic".into(),
            cpu: "test".into(),
            threads: 1,
            unix_time: 1,
            speeds: Speeds { image_224_fc7_s: s, image_32_pool5_s: s / 50.0, feature_row_s: s / 1e5 },
        }
    }

    #[test]
    fn the_arm64_model_is_the_x86_measurement_scaled_by_peaks() {
        assert_eq!(GRAVITON2_PEAK_GFLOPS, 40.0);
        let (x, a) = (default_speeds(Arch::X86_64), default_speeds(Arch::Aarch64));
        let ratio = a.image_224_fc7_s / x.image_224_fc7_s;
        assert!((ratio - DEVELOPMENT_PEAK_GFLOPS / 40.0).abs() < 1e-12 && ratio > 2.0, "{ratio}");
        assert!((a.feature_row_s / x.feature_row_s - ratio).abs() < 1e-12);
        x.check().unwrap();
        a.check().unwrap();
    }

    #[test]
    fn file_round_trips_one_entry_per_architecture() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("calibration.json");
        assert_eq!(CalibrationFile::load(&path).unwrap(), CalibrationFile::default());
        let mut file = CalibrationFile::default();
        file.insert(entry(Arch::X86_64, 0.5));
        file.insert(entry(Arch::Aarch64, 1.5));
        file.insert(entry(Arch::X86_64, 0.25));
        file.save(&path).unwrap();
        let back = CalibrationFile::load(&path).unwrap();
        assert_eq!(back, file);
        assert_eq!(back.entries.len(), 2);
        assert_eq!(back.get(Arch::X86_64).unwrap().speeds.image_224_fc7_s, 0.25);
        // No temporary is left beside it.
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("calibration.json")]);
    }

    #[test]
    fn malformed_files_are_errors_naming_the_file_and_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let mut twice = CalibrationFile::default();
        twice.insert(entry(Arch::X86_64, 0.5));
        twice.entries.push(entry(Arch::X86_64, 0.5));
        let twice = serde_json::to_string(&twice).unwrap();
        let good = r#"{"arch":"x86_64","microkernel":"avx2","cpu":"c","threads":1,"unix_time":0,"speeds":{"image_224_fc7_s":0.4,"image_32_pool5_s":0.01,"feature_row_s":1e-6}}"#;
        let cases = [
            ("{", "EOF"),
            (r#"{"version":2,"entries":[]}"#, "version 2, expected 1"),
            (r#"{"version":1,"entries":[],"extra":0}"#, "unknown field"),
            (&format!(r#"{{"version":1,"entries":[{}]}}"#, good.replace(r#""cpu":"c","#, "")), "missing field `cpu`"),
            (&format!(r#"{{"version":1,"entries":[{}]}}"#, good.replace("0.4", "-1")), "image_224_fc7_s is -1"),
            (
                &format!(r#"{{"version":1,"entries":[{}]}}"#, good.replace("\"threads\":1", "\"threads\":0")),
                "threads is 0",
            ),
            (&format!(r#"{{"version":1,"entries":[{}]}}"#, good.replace("x86_64", "riscv")), "unknown variant"),
            (&twice, "x86_64 appears twice"),
        ];
        for (text, expected) in cases {
            std::fs::write(&path, text).unwrap();
            let err = CalibrationFile::load(&path).unwrap_err().to_string();
            assert!(err.contains("c.json") && err.contains(expected), "{text}: {err}");
        }
        std::fs::write(&path, format!(r#"{{"version":1,"entries":[{good}]}}"#)).unwrap();
        assert_eq!(CalibrationFile::load(&path).unwrap().get(Arch::X86_64).unwrap().microkernel, "avx2");
    }

    #[test]
    fn measuring_a_zero_workload_is_refused() {
        let err = measure(Path::new("/nonexistent"), Workload { images_224: 0, ..Workload::default() }).unwrap_err();
        assert!(err.to_string().contains("must be positive"), "{err}");
    }
}
