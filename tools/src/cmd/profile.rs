//! `lml profile`: per-layer timing of a VGG19 forward, and peak memory.

use std::time::Instant;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use lml_kernel::vgg::{flops_per_image, LayerKind, VGG19};
use lml_kernel::{Cut, Vgg19};
use lml_tools::work::weights_or_random;
use ndarray::Array4;

#[derive(Parser)]
pub struct Args {
    /// VGG19 weight directory; random weights are generated in --workdir if absent.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Where random weights are generated and kept.
    #[arg(long, default_value = "runs/demo")]
    workdir: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Network input side.
    #[arg(long, default_value_t = 224)]
    input_size: usize,
    /// Feature cut: pool5, fc6 or fc7.
    #[arg(long, default_value = "fc7")]
    cut: Cut,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed repetitions after one warm-up pass.
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// FLOPs of one image through table layer `name` at input side `size`.
fn layer_flops(name: &str, size: usize) -> u64 {
    let mut s = size as u64;
    for layer in &VGG19 {
        let f = match layer.kind {
            LayerKind::Conv { in_channels, out_channels } => 2 * s * s * 9 * (in_channels * out_channels) as u64,
            LayerKind::Dense { in_features, out_features } => 2 * (in_features * out_features) as u64,
            LayerKind::MaxPool => {
                s /= 2;
                0
            }
        };
        if layer.name == name {
            return f;
        }
    }
    0
}

pub fn run(args: &Args) -> Result<()> {
    let (pool, threads) = lml_tools::bars::pool(args.threads)?;
    pool.install(|| profile(args, threads))
}

fn profile(args: &Args, threads: usize) -> Result<()> {
    let weights = weights_or_random(args.weights.as_deref(), &args.workdir, 1, args.cut)?;
    let vgg = Vgg19::open(&weights, args.input_size, args.cut)?;
    let s = args.input_size;
    let x = Array4::<f32>::from_shape_fn((args.batch, 3, s, s), |(n, c, y, x)| {
        ((n + c * 7 + y * 3 + x) % 17) as f32 / 8.0 - 1.0
    });
    vgg.forward(x.view())?; // warm-up: page in weights, pack filters
    let mut per_layer: Vec<(&'static str, f64)> = VGG19[..args.cut.layers()].iter().map(|l| (l.name, 0.0)).collect();
    let t0 = Instant::now();
    for _ in 0..args.reps {
        let mut last = Instant::now();
        let mut i = 0;
        vgg.forward_observed(x.view(), |_, _| {
            let now = Instant::now();
            per_layer[i].1 += (now - last).as_secs_f64();
            last = now;
            i += 1;
        })?;
    }
    let total = t0.elapsed().as_secs_f64() / args.reps as f64;
    let peak = lml_kernel::gemm::fma_peak_gflops(threads);
    println!(
        "VGG19 to {:?}, {s}×{s}, batch {}, {threads} threads, {} microkernel, convolutions {} (LML_CONV); FMA peak {peak:.1} GFLOP/s ({} chains)",
        args.cut,
        args.batch,
        vgg.microkernel(),
        vgg.conv_policy(),
        lml_kernel::gemm::fma_probe_isa()
    );
    println!("(GFLOP/s: nominal FLOPs of the direct convolution over time, so Winograd layers can pass the peak)");
    let plan = vgg.conv_plan();
    println!("{:<14} {:>10} {:>10} {:>8}  algorithm", "layer", "ms", "GFLOP/s", "% peak");
    for (name, secs) in &per_layer {
        let secs = secs / args.reps as f64;
        let gf = layer_flops(name, s) as f64 * args.batch as f64 / secs / 1e9;
        let algo = plan.iter().find(|(n, _)| n == name).map(|(_, a)| format!("{a:?}")).unwrap_or_default();
        println!("{name:<14} {:>10.2} {:>10.1} {:>7.1}%  {algo}", secs * 1e3, gf, 100.0 * gf / peak);
    }
    let gf = flops_per_image(s, args.cut) as f64 * args.batch as f64 / total / 1e9;
    println!(
        "total          {:>10.2} {gf:>10.1} {:>7.1}%   {:.2} img/s",
        total * 1e3,
        100.0 * gf / peak,
        args.batch as f64 / total
    );
    if let Some(mib) = peak_rss_mib() {
        println!("peak RSS {mib:.0} MiB (VmHWM: weights mapped and touched, activations, packed filters)");
    }
    Ok(())
}
