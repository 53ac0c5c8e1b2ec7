//! `lml plan`: what a job would cost and take on AWS Lambda, from the cost
//! model in `lml_lambda::cost` and the compute speeds measured here.

use anyhow::{bail, Result};
use clap::Parser;
use lml_lambda::cost::{JobShape, Prices};
use lml_lambda::services::lambda_threads;

/// Seconds per 224×224 image through VGG19 to fc7 on one thread: 3.034 s per
/// batch of 8 (`cargo bench -p lml-benches --bench vgg -- vgg19_224_fc7`, 1
/// thread, this x86 machine); 2 threads measured 1.536 s (0.99 of linear).
const SECS_224_ONE_THREAD: f64 = 3.034 / 8.0;
/// Seconds per 32×32 image to pool5 on one thread, from 175 img/s on 2
/// threads (`--bench vgg -- vgg19_32_pool5`), assuming linear scaling.
const SECS_32_ONE_THREAD: f64 = 2.0 / 175.0;
/// Seconds per cached 4096-d feature row in a head step: 0.24 s per epoch of
/// 50,000 (`--bench head -- head_epoch`).
const SECS_FEATURE: f64 = 0.24 / 50_000.0;

#[derive(Parser)]
pub struct PlanArgs {
    /// The seed paper's run: 16 workers, 8 GB, CIFAR-10's 50,000 images at
    /// 224×224 through VGG19 at every step, one epoch (other flags still apply).
    #[arg(long)]
    paper: bool,
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Function memory (MB): 1,769 MB per vCPU, at most 6.
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
    /// What workers read: `images` (through VGG19 every step, as the seed did) or `features` (cached).
    #[arg(long, default_value = "features")]
    data: String,
    /// Input side for --data images: 224 or 32.
    #[arg(long, default_value_t = 224)]
    input_size: usize,
    /// Override the compute seconds per example at this memory size.
    #[arg(long)]
    sec_per_example: Option<f64>,
    /// Price x86_64 instead of arm64.
    #[arg(long)]
    x86: bool,
    /// Invocation time limit (s).
    #[arg(long, default_value_t = 900.0)]
    time_limit: f64,
    /// Assumed seconds per worker invocation besides compute (start, reads, publishing, reduction).
    #[arg(long, default_value_t = 0.2)]
    worker_overhead: f64,
    /// Assumed seconds per combine invocation.
    #[arg(long, default_value_t = 0.5)]
    combine: f64,
    /// Days the data stays on EFS.
    #[arg(long, default_value_t = 1.0)]
    days: f64,
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
    let threads = lambda_threads(memory);
    let (per_thread, bytes, stored_gb) = match (data, input) {
        ("images", 224) => (SECS_224_ONE_THREAD, 3072.0, 0.18 + 0.57),
        ("images", 32) => (SECS_32_ONE_THREAD, 3072.0, 0.18 + 0.57),
        ("images", s) => {
            bail!("--input-size {s}: the model has measurements for 224 and 32 only; pass --sec-per-example")
        }
        ("features", _) => (SECS_FEATURE, 16384.0, 0.18 + 0.57 + 0.82),
        (d, _) => bail!("--data {d:?}: expected images or features"),
    };
    let sec = args.sec_per_example.unwrap_or(per_thread / threads as f64);
    let rounds_per_epoch = examples.div_ceil((workers * args.batch) as u64);
    let shape = JobShape {
        workers,
        memory_mb: memory,
        arm64: !args.x86,
        examples: examples * epochs,
        rounds: rounds_per_epoch * epochs,
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
    let e = shape.estimate(&Prices::default());
    println!(
        "{workers} workers × {memory} MB ({threads} vCPU, {}), {examples} examples × {epochs} epoch(s) from {data}{}, batch {} per worker: {} rounds",
        if args.x86 { "x86_64" } else { "arm64" },
        if data == "images" { format!(" at {input}×{input}") } else { String::new() },
        args.batch,
        shape.rounds
    );
    println!(
        "compute {:.3e} s per example per worker{}",
        sec,
        if args.sec_per_example.is_some() {
            " (given)".to_string()
        } else {
            format!(" (measured here on x86 per thread, divided by {threads} vCPUs: beyond 2 threads this is an extrapolation)")
        }
    );
    println!("wall time ≈ {:.2} h; {:.0} GB-s; {} invocations", e.hours, e.gb_seconds, e.requests);
    println!("  Lambda compute   ${:>9.4}", e.lambda_compute);
    println!("  Lambda requests  ${:>9.4}", e.lambda_requests);
    println!("  DynamoDB         ${:>9.4}", e.dynamodb);
    println!("  EFS storage      ${:>9.4}  ({stored_gb:.2} GB for {} day(s))", e.efs_storage, args.days);
    println!("  EFS throughput   ${:>9.4}", e.efs_throughput);
    println!("  Lambda endpoint  ${:>9.4}  (2 AZs)", e.endpoint);
    println!("  total            ${:>9.4}  (us-east-1 list prices; check current prices)", e.total);
    if data == "features" {
        println!("plus extracting the features once: see `lml plan --data images --epochs 1`");
    }
    Ok(())
}
