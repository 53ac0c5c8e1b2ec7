//! `lml plan`: what a job would cost and take on AWS Lambda, on arm64 and
//! x86_64 side by side, from the cost model in `lml_lambda::cost` and the
//! compute speeds of `lml_tools::calibrate` (measured by `lml plan
//! --calibrate`, or the documented per-architecture defaults).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use lml_lambda::cost::{
    compute_threads, seconds_per_example, vcpu_share, Estimate, JobShape, Prices, MAX_MEMORY_MB, MIN_MEMORY_MB,
};
use lml_tools::calibrate::{
    default_path, default_speeds, measure, write_random_weights, Arch, CalibrationFile, Speeds, Workload,
    CALIBRATION_ENV, DEVELOPMENT_PEAK_GFLOPS, GRAVITON2_PEAK_GFLOPS,
};

#[derive(Parser)]
pub struct PlanArgs {
    /// The seed paper's run: 16 workers, 8 GB, CIFAR-10's 50,000 images at
    /// 224×224 through VGG19 at every step, one epoch (other flags still apply).
    #[arg(long)]
    paper: bool,
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Function memory (MB), 128 to 10,240: 1,769 MB buys one vCPU's worth
    /// of CPU time (fractional: 8,192 MB buys 4.63).
    #[arg(long, default_value_t = 8192)]
    memory: u32,
    /// Training examples.
    #[arg(long, default_value_t = 50_000)]
    examples: u64,
    #[arg(long, default_value_t = 1)]
    epochs: u64,
    /// Examples per worker per round.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// What workers read: `features` (cached), `images` (through VGG19 at
    /// every step, as the seed did) or `pipeline` (one job: the workers
    /// extract the features of the training and held-out images once, then
    /// train on them, as `lml train --images` does).
    #[arg(long, default_value = "features")]
    data: String,
    /// Held-out images extracted too by --data pipeline (CIFAR-10's test split).
    #[arg(long, default_value_t = 10_000)]
    held_out: u64,
    /// Input side for --data images: 224 or 32.
    #[arg(long, default_value_t = 224)]
    input_size: usize,
    /// Override the compute seconds per example on one thread with one full
    /// vCPU (both architectures); divided by the vCPU share of --memory.
    #[arg(long)]
    sec_per_example: Option<f64>,
    /// First time a short forward (224×224 to fc7, 32×32 to pool5) and head
    /// steps on this machine, one thread, and store the speeds for this
    /// architecture in the calibration file.
    #[arg(long)]
    calibrate: bool,
    /// The calibration file (default: $LML_CALIBRATION, else
    /// $XDG_CACHE_HOME/lml/calibration.json, else ~/.cache/lml/calibration.json).
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// VGG19 weights for --calibrate (default: random weights, written to a
    /// temporary folder and removed; speed does not depend on the values).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Images per forward for --calibrate: this many at 224×224, 8× as many
    /// at 32×32, 1,024× as many feature rows.
    #[arg(long, default_value_t = Workload::default().images_224)]
    calibrate_batch: usize,
    /// Invocation time limit (s).
    #[arg(long, default_value_t = 900.0)]
    time_limit: f64,
    /// Assumed seconds per worker invocation besides compute (start, reads, publishing, reduction).
    #[arg(long, default_value_t = lml_lambda::cost::DEFAULT_WORKER_OVERHEAD_S)]
    worker_overhead: f64,
    /// Assumed seconds per combine invocation.
    #[arg(long, default_value_t = lml_lambda::cost::DEFAULT_COMBINE_S)]
    combine: f64,
    /// Days the data stays on EFS.
    #[arg(long, default_value_t = 1.0)]
    days: f64,
}

/// What one unit of work is, for the speeds table.
#[derive(Clone, Copy)]
pub(crate) enum Work {
    Image224,
    Image32,
    Feature,
}

impl Work {
    pub(crate) fn seconds(self, s: &Speeds) -> f64 {
        match self {
            Work::Image224 => s.image_224_fc7_s,
            Work::Image32 => s.image_32_pool5_s,
            Work::Feature => s.feature_row_s,
        }
    }
}

pub fn plan(args: &PlanArgs) -> Result<()> {
    let (mut workers, mut memory, mut data, mut input, mut epochs, mut examples) =
        (args.workers, args.memory, args.data.as_str(), args.input_size, args.epochs, args.examples);
    if args.paper {
        (workers, memory, data, input, epochs, examples) = (16, 8192, "images", 224, 1, 50_000);
    }
    if workers == 0 || args.batch == 0 || examples == 0 || epochs == 0 {
        bail!("--workers, --batch, --examples and --epochs must be positive");
    }
    if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&memory) {
        bail!("--memory {memory}: Lambda takes {MIN_MEMORY_MB} to {MAX_MEMORY_MB} MB");
    }
    if let Some(s) = args.sec_per_example {
        if !(s.is_finite() && s > 0.0) {
            bail!("--sec-per-example {s}: expected a positive number of seconds");
        }
    }
    let (work, bytes, stored_gb) = match (data, input) {
        ("images", 224) => (Work::Image224, 3072.0, 0.18 + 0.57),
        ("images", 32) => (Work::Image32, 3072.0, 0.18 + 0.57),
        ("images", s) => {
            bail!("--input-size {s}: the model has speeds for 224 and 32 only; pass --sec-per-example")
        }
        ("features", _) => (Work::Feature, 16384.0, 0.18 + 0.57 + 0.82),
        ("pipeline", _) => return pipeline(args, workers, memory, input, epochs, examples),
        (d, _) => bail!("--data {d:?}: expected features, images or pipeline"),
    };
    let total_examples = examples.checked_mul(epochs).context("--examples × --epochs overflows")?;
    let per_round = (workers as u64).checked_mul(args.batch as u64).context("--workers × --batch overflows")?;
    let rounds = examples.div_ceil(per_round).checked_mul(epochs).context("rounds overflow")?;

    let (path, file) = calibration(args)?;

    let (threads, share) = (compute_threads(memory), vcpu_share(memory));
    println!(
        "{workers} workers × {memory} MB ({threads} compute thread(s) on {share:.2} vCPUs), {examples} examples × {epochs} epoch(s) from {data}{}, batch {} per worker: {rounds} rounds",
        if data == "images" { format!(" at {input}×{input}") } else { String::new() },
        args.batch,
    );
    println!("speeds, seconds per example on one thread with one vCPU (calibration file {}):", path.display());
    let prices = Prices::default();
    let mut estimates: Vec<(Arch, f64, Estimate)> = Vec::new();
    for arch in Arch::ALL {
        let (per_vcpu, source) = match args.sec_per_example {
            Some(s) => (s, "given by --sec-per-example".to_string()),
            None => speed(work, arch, &file),
        };
        println!("  {:<7} {per_vcpu:.3e}  {source}", arch.lambda_name());
        let sec = seconds_per_example(per_vcpu, memory);
        let shape = JobShape {
            workers,
            memory_mb: memory,
            arm64: arch == Arch::Aarch64,
            examples: total_examples,
            rounds,
            seconds_per_example: sec,
            worker_overhead_s: args.worker_overhead,
            combine_s: args.combine,
            time_limit_s: args.time_limit,
            bytes_per_example: bytes,
            parameter_bytes: 2.0 * 4.0 * (4096.0 * 10.0 + 10.0),
            stored_gb,
            stored_days: args.days,
            endpoint_azs: 2,
        };
        estimates.push((arch, sec, shape.estimate(&prices)));
    }
    println!(
        "compute time = seconds per example / {share:.2} vCPUs (memory / {} MB){}",
        lml_lambda::cost::MB_PER_VCPU,
        if threads > 2 { "; linear scaling beyond 2 threads is assumed, not measured" } else { "" }
    );

    let row = |label: &str, f: &dyn Fn(&(Arch, f64, Estimate)) -> String| {
        let cells: Vec<String> = estimates.iter().map(|e| format!("{:>12}", f(e))).collect();
        println!("  {label:<20}{}", cells.join(""));
    };
    row("architecture", &|(a, _, _)| a.lambda_name().to_string());
    row("s per example", &|(_, s, _)| format!("{s:.3e}"));
    row("wall time (h)", &|(_, _, e)| format!("{:.2}", e.hours));
    row("GB-s", &|(_, _, e)| format!("{:.0}", e.gb_seconds));
    row("invocations", &|(_, _, e)| format!("{}", e.requests));
    row("Lambda compute", &|(_, _, e)| format!("${:.4}", e.lambda_compute));
    row("Lambda requests", &|(_, _, e)| format!("${:.4}", e.lambda_requests));
    row("DynamoDB", &|(_, _, e)| format!("${:.4}", e.dynamodb));
    row("EFS storage", &|(_, _, e)| format!("${:.4}", e.efs_storage));
    row("EFS throughput", &|(_, _, e)| format!("${:.4}", e.efs_throughput));
    row("Lambda endpoint", &|(_, _, e)| format!("${:.4}", e.endpoint));
    row("total", &|(_, _, e)| format!("${:.4}", e.total));
    let per_image = |e: &Estimate| e.total / total_examples as f64;
    row("per example", &|(_, _, e)| format!("${:.3e}", per_image(e)));
    println!(
        "  (us-east-1 list prices: ${:.10}/GB-s arm64, ${:.10}/GB-s x86_64, ${:.2} per million requests; EFS {stored_gb:.2} GB for {} day(s); endpoint in 2 AZs; check current prices)",
        prices.gb_second_arm64,
        prices.gb_second_x86_64,
        prices.request * 1e6,
        args.days
    );
    let (cheap, dear) = {
        let (a, b) = (&estimates[0], &estimates[1]);
        if per_image(&a.2) <= per_image(&b.2) {
            (a, b)
        } else {
            (b, a)
        }
    };
    println!(
        "cheaper per example: {} (${:.3e} against ${:.3e} on {}, {:.0}% less)",
        cheap.0,
        per_image(&cheap.2),
        per_image(&dear.2),
        dear.0,
        100.0 * (1.0 - per_image(&cheap.2) / per_image(&dear.2))
    );
    let defaults: Vec<&str> = Arch::ALL
        .iter()
        .filter(|&&a| args.sec_per_example.is_none() && file.get(a).is_none())
        .map(|a| a.lambda_name())
        .collect();
    if !defaults.is_empty() {
        println!(
            "  ({} from defaults, not measured on Lambda: `lml plan --calibrate` on each architecture replaces them)",
            defaults.join(" and ")
        );
    }
    if data == "features" {
        println!("plus extracting the features once: see `lml plan --data images --epochs 1`");
    }
    Ok(())
}

/// The calibration file's path and contents, after `--calibrate` if asked.
fn calibration(args: &PlanArgs) -> Result<(PathBuf, CalibrationFile)> {
    let path = match &args.calibration {
        Some(p) => p.clone(),
        None => default_path()?,
    };
    if args.calibrate {
        calibrate(args, &path)?;
    }
    let file = CalibrationFile::load(&path)?;
    Ok((path, file))
}

/// `--data pipeline`: extraction of the training and held-out images on the
/// job's workers, then `epochs` of training on the cache, per architecture,
/// beside the seed's own run.
fn pipeline(args: &PlanArgs, workers: usize, memory: u32, input: usize, epochs: u64, examples: u64) -> Result<()> {
    let work = match input {
        224 => Work::Image224,
        32 => Work::Image32,
        s => bail!("--input-size {s}: the model has speeds for 224 and 32 only"),
    };
    let images = examples.checked_add(args.held_out).context("--examples + --held-out overflows")?;
    let per_round = (workers as u64).checked_mul(args.batch as u64).context("--workers × --batch overflows")?;
    let rounds = examples.div_ceil(per_round).checked_mul(epochs).context("rounds overflow")?;
    let total_examples = examples.checked_mul(epochs).context("--examples × --epochs overflows")?;
    let shards = lml_lambda::extract::shard_count(
        workers,
        usize::try_from(images).context("--examples too large")?,
        lml_lambda::extract::DEFAULT_SHARD_IMAGES,
    ) as u64;
    let (path, file) = calibration(args)?;
    let (threads, share) = (compute_threads(memory), vcpu_share(memory));
    println!(
        "{workers} workers × {memory} MB ({threads} compute thread(s) on {share:.2} vCPUs): extract {images} images at {input}×{input} to fc7 in {shards} shards of ~{} images, then {epochs} epoch(s) over {examples} cached features, batch {} per worker: {rounds} rounds (one job)",
        images.div_ceil(shards),
        args.batch
    );
    println!(
        "speeds, seconds per image / feature row on one thread with one vCPU (calibration file {}):",
        path.display()
    );
    let prices = Prices::default();
    let mut rows: Vec<(Arch, Estimate, Estimate)> = Vec::new();
    for arch in Arch::ALL {
        let (speeds, source) = match file.get(arch) {
            Some(c) => (c.speeds, format!("calibrated on {} ({} kernel)", c.cpu, c.microkernel)),
            None => (default_speeds(arch), default_note(arch)),
        };
        println!("  {:<7} {:.3e} / {:.3e}  {source}", arch.lambda_name(), work.seconds(&speeds), speeds.feature_row_s);
        let extraction = lml_lambda::cost::ExtractionShape {
            workers,
            memory_mb: memory,
            arm64: arch == Arch::Aarch64,
            images,
            shards,
            seconds_per_image: seconds_per_example(work.seconds(&speeds), memory),
            worker_overhead_s: args.worker_overhead,
            time_limit_s: args.time_limit,
            image_bytes: 3072.0,
            feature_bytes: 16384.0,
            stored_gb: 0.18 + 0.57 + 0.98,
            stored_days: args.days,
            endpoint_azs: 2,
        }
        .estimate(&prices);
        let training = JobShape {
            workers,
            memory_mb: memory,
            arm64: arch == Arch::Aarch64,
            examples: total_examples,
            rounds,
            seconds_per_example: seconds_per_example(speeds.feature_row_s, memory),
            worker_overhead_s: args.worker_overhead,
            combine_s: args.combine,
            time_limit_s: args.time_limit,
            bytes_per_example: 16384.0,
            parameter_bytes: 2.0 * 4.0 * (4096.0 * 10.0 + 10.0),
            stored_gb: 0.0,
            stored_days: 0.0,
            endpoint_azs: 0,
        }
        .estimate(&prices);
        rows.push((arch, extraction, training));
    }
    let row = |label: &str, f: &dyn Fn(&Estimate, &Estimate) -> String| {
        let cells: Vec<String> = rows.iter().map(|(_, x, t)| format!("{:>12}", f(x, t))).collect();
        println!("  {label:<24}{}", cells.join(""));
    };
    let names: Vec<String> = rows.iter().map(|(a, _, _)| format!("{:>12}", a.lambda_name())).collect();
    println!("  {:<24}{}", "architecture", names.join(""));
    row("extraction (min)", &|x, _| format!("{:.1}", x.hours * 60.0));
    row("extraction GB-s", &|x, _| format!("{:.0}", x.gb_seconds));
    row("extraction", &|x, _| format!("${:.4}", x.total));
    row("training (min)", &|_, t| format!("{:.1}", t.hours * 60.0));
    row("training", &|_, t| format!("${:.4}", t.total));
    row("invocations", &|x, t| format!("{}", x.requests + t.requests));
    row("total (min)", &|x, t| format!("{:.1}", (x.hours + t.hours) * 60.0));
    row("total", &|x, t| format!("${:.4}", x.total + t.total));
    println!(
        "compute time = seconds / {share:.2} vCPUs (memory / {} MB){}; the merge copies at an assumed {:.0} MB/s",
        lml_lambda::cost::MB_PER_VCPU,
        if threads > 2 { "; linear scaling beyond 2 threads is assumed, not measured" } else { "" },
        lml_lambda::cost::MERGE_BYTES_PER_S / 1e6
    );
    println!(
        "the seed's own run (its Table 6): 16 workers, 118 minutes for one epoch, the VGG19 forward at every step"
    );
    Ok(())
}

/// Seconds per unit of `work` on one thread with one vCPU of `arch`, from
/// the calibration file or the documented default, and where it came from.
pub(crate) fn speed(work: Work, arch: Arch, file: &CalibrationFile) -> (f64, String) {
    match file.get(arch) {
        Some(c) => (
            work.seconds(&c.speeds),
            format!("calibrated on {} ({} kernel, {} thread)", c.cpu, c.microkernel, c.threads),
        ),
        None => (work.seconds(&default_speeds(arch)), default_note(arch)),
    }
}

/// Says which default `plan` used for `arch` and where it comes from.
fn default_note(arch: Arch) -> String {
    match arch {
        Arch::X86_64 => "default: measured on an AMD EPYC Zen 4 with the AVX2 kernel, one thread on a whole core (lml_tools::calibrate::X86_64_DEFAULT); optimistic for Lambda, whose x86_64 vCPUs are hyperthreads".into(),
        Arch::Aarch64 => format!(
            "default: a model, Graviton2 at the x86_64 default's fraction of peak ({DEVELOPMENT_PEAK_GFLOPS} → {GRAVITON2_PEAK_GFLOPS} GFLOP/s per thread; lml_tools::calibrate::aarch64_default)"
        ),
    }
}

/// Times this machine and stores the result in `path` (see `--calibrate`).
fn calibrate(args: &PlanArgs, path: &Path) -> Result<()> {
    let b = args.calibrate_batch;
    if b == 0 {
        bail!("--calibrate-batch must be positive");
    }
    let work = Workload {
        images_224: b,
        images_32: b.checked_mul(8).context("--calibrate-batch too large")?,
        feature_rows: b.checked_mul(1024).context("--calibrate-batch too large")?,
    };
    let (weights, temporary) = match &args.weights {
        Some(dir) => (dir.clone(), false),
        None => {
            let dir = std::env::temp_dir().join(format!("lml-calibrate-{}", std::process::id()));
            eprintln!("writing random VGG19 weights to {} (removed afterwards)", dir.display());
            write_random_weights(&dir)?;
            (dir, true)
        }
    };
    eprintln!(
        "timing {} images at 224×224, {} at 32×32 and {} feature rows on one thread (each after a warm-up)",
        work.images_224, work.images_32, work.feature_rows
    );
    let measured = measure(&weights, work);
    if temporary {
        let _ = std::fs::remove_dir_all(&weights);
    }
    let c = measured?;
    let mut file = CalibrationFile::load(path)?;
    file.insert(c.clone());
    file.save(path)?;
    let s = c.speeds;
    println!(
        "calibrated {} on {} ({} kernel, 1 thread): {:.4} s per 224×224 image to fc7, {:.3e} s per 32×32 image to pool5, {:.3e} s per feature row; saved to {} (read by plan; {CALIBRATION_ENV} or --calibration choose the file)",
        c.arch,
        c.cpu,
        c.microkernel,
        s.image_224_fc7_s,
        s.image_32_pool5_s,
        s.feature_row_s,
        path.display()
    );
    Ok(())
}
