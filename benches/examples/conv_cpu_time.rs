//! Direct vs Winograd convolution per VGG19 layer and for the whole network,
//! timed by CPU time, for a machine other processes load:
//!
//! ```text
//! cargo run --release -p lml-benches --example conv_cpu_time [-- LAYER_FILTER]
//! SIZE=32 BATCH=64 cargo run --release -p lml-benches --example conv_cpu_time
//! ```
//!
//! Every layer of [`conv_table`] at 224×224, batch 8 (or `SIZE`, `BATCH`),
//! padded input to padded output as in the network, by the direct algorithm
//! (the implicit GEMM, or packed im2col where the network runs it) and by
//! Winograd F(4×4, 3×3) and F(2×2, 3×3); then the whole forward (to fc7 at
//! 224, to pool5 otherwise) under each [`ConvPolicy`]; at 1 and 2 threads.
//! Criterion's wall-clock figures (`--bench layers -- conv224`, `--bench vgg`)
//! are the reference on a quiet machine; here a layer's time is the CPU
//! time its threads ran (`sum_exec_runtime` of every thread of this process,
//! `/proc/self/task/*/schedstat`, in ns) divided by the thread count, so a
//! thread descheduled by another process is not charged for it. It errs
//! slow: rayon's idle workers spin a little while they wait, and caches are
//! shared with the other processes. "Effective GFLOP/s" is the direct
//! convolution's nominal FLOPs over that time, so Winograd can pass the
//! FMA peak. Prints the load average with each table. `WINOGRAD_TASK_TILES`
//! overrides the target tiles per Winograd task (`winograd::TASK_TILES`).

use std::time::Instant;

use lml_benches::{conv_table, random_input, weights_dir, ConvShape};
use lml_kernel::gemm::Microkernel;
use lml_kernel::geometry::Window2d;
use lml_kernel::layers::conv2d::{conv2d_forward_into, conv2d_padded, pack_filters, ConvAlgorithm, ConvPolicy};
use lml_kernel::layers::winograd::conv2d_winograd_tasks;
use lml_kernel::layers::{PaddedLayout, WinogradFilters, WinogradTile};
use lml_kernel::vgg::flops_per_image;
use lml_kernel::{Cut, Vgg19};
use ndarray::Array1;

/// CPU nanoseconds run by every live thread of this process.
fn cpu_ns() -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/task").expect("/proc/self/task").flatten() {
        let stat = std::fs::read_to_string(entry.path().join("schedstat")).unwrap_or_default();
        total += stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    total
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// CPU seconds per thread and wall seconds of one call of `f`: one warm-up
/// call, then calls until a second of CPU time (at least 3).
fn time(threads: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let (c0, t0) = (cpu_ns(), Instant::now());
    let mut calls = 0;
    while calls < 3 || cpu_ns() - c0 < 1_000_000_000 {
        f();
        calls += 1;
    }
    let cpu = (cpu_ns() - c0) as f64 * 1e-9 / threads as f64 / calls as f64;
    (cpu, t0.elapsed().as_secs_f64() / calls as f64)
}

fn layer_row(shape: &ConvShape, batch: usize, threads: usize, kernel: Microkernel, task_tiles: usize) -> String {
    let window = Window2d::VGG_CONV;
    let x = random_input(batch, shape.in_channels, shape.side, 1);
    let w = random_input(shape.out_channels, shape.in_channels, 3, 2).mapv(|v| v * 0.05);
    let bias = Array1::<f32>::zeros(shape.out_channels);
    let lin = PaddedLayout::conv_input(batch, shape.in_channels, shape.side, shape.side, &window);
    let lout = lin.conv_output(shape.out_channels, &window);
    let mut input = vec![0.0; lin.len()];
    lin.fill(&mut input, x.view()).unwrap();
    let mut out = vec![0.0; lout.len()];
    let pool = lml_kernel::parallel::thread_pool(threads).unwrap();
    let flops = (shape.flops() * batch as u64) as f64;
    let mut cells = Vec::new();
    let packed = pack_filters(w.view(), kernel).unwrap();
    let algo = ConvAlgorithm::choose(true, (shape.side, shape.side), &window);
    let mut plain = ndarray::Array4::<f32>::zeros((batch, shape.out_channels, shape.side, shape.side));
    let mut scratch = Vec::new();
    let (cpu, _) = time(threads, || {
        pool.install(|| match algo {
            ConvAlgorithm::Implicit => {
                conv2d_padded(&input, &lin, &packed, bias.view(), &window, true, &mut out, &lout)
            }
            _ => conv2d_forward_into(
                x.view(),
                w.view(),
                Some(&packed),
                bias.view(),
                &window,
                true,
                algo,
                plain.view_mut(),
                &mut scratch,
            ),
        })
        .unwrap()
    });
    cells.push(format!("{algo:?} {:.1} ms, {:.0}", cpu * 1e3, flops / cpu / 1e9));
    let direct = cpu;
    for tile in WinogradTile::ALL {
        let f = WinogradFilters::new(w.view(), tile, kernel).unwrap();
        let (cpu, _) = time(threads, || {
            pool.install(|| {
                conv2d_winograd_tasks(&input, &lin, &f, bias.view(), &window, true, &mut out, &lout, task_tiles)
            })
            .unwrap()
        });
        cells.push(format!("{:.1} ms, {:.0} ({:.2}×)", cpu * 1e3, flops / cpu / 1e9, direct / cpu));
    }
    format!("| {} | {} |", shape.name, cells.join(" | "))
}

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let kernel = Microkernel::select().expect("LML_MICROKERNEL");
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let task_tiles = env("WINOGRAD_TASK_TILES", lml_kernel::layers::winograd::TASK_TILES);
    let (size, batch) = (env("SIZE", 224), env("BATCH", 8));
    let threads_list: Vec<usize> = match std::env::var("THREADS") {
        Ok(t) => t.split(',').filter_map(|v| v.parse().ok()).collect(),
        Err(_) => vec![1, 2],
    };
    for &threads in &threads_list {
        println!(
            "\n{threads} thread(s), {kernel}, batch {batch}, {size}×{size}, Winograd tasks of ≤ {task_tiles} tiles; load {}",
            load()
        );
        println!("| layer | direct: CPU time, GFLOP/s | Winograd F4 | Winograd F2 |");
        println!("|---|---|---|---|");
        for shape in conv_table(size).iter().filter(|s| s.name.contains(&filter)) {
            println!("{}", layer_row(shape, batch, threads, kernel, task_tiles));
        }
        println!("load {}", load());
    }
    if !filter.is_empty() {
        return;
    }
    let cut = if size == 224 { Cut::Fc7 } else { Cut::Pool5 };
    let x = random_input(batch, 3, size, 1);
    let flops = batch as f64 * flops_per_image(size, cut) as f64;
    for &threads in &threads_list {
        let pool = lml_kernel::parallel::thread_pool(threads).unwrap();
        let mut cells = Vec::new();
        for policy in ConvPolicy::ALL {
            let vgg = Vgg19::open(weights_dir(), size, cut).unwrap().with_conv_policy(policy);
            let (cpu, _) = time(threads, || {
                pool.install(|| vgg.forward(x.view()).unwrap());
            });
            cells.push(format!(
                "{policy}: {:.3} s ({:.2} img/s, {:.0} GFLOP/s)",
                cpu,
                batch as f64 / cpu,
                flops / cpu / 1e9
            ));
        }
        println!(
            "VGG19 {size} → {cut:?}, batch {batch}, {threads} thread(s), CPU time: {}; load {}",
            cells.join("; "),
            load()
        );
    }
}
