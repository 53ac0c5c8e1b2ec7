//! Fraction of FMA peak of the VGG19 224×224 → fc7 forward (batch 8), by
//! CPU time instead of wall time, for a machine other processes share:
//!
//! ```text
//! LML_MICROKERNEL=avx2 cargo run --release -p lml-benches --example cpu_fraction
//! ```
//!
//! Criterion's wall-clock figures (`--bench vgg`, `--bench peak`) are the
//! reference on a quiet machine. When other processes take cores, a thread
//! is descheduled part of the time and wall time overstates its work; the
//! CPU time this process was given does not (it is what the OS charged it,
//! `utime + stime` in `/proc/self/stat`). The fraction is then
//! `(FLOPs / CPU s of the forward) / (FLOPs / CPU s of the FMA probe)` with
//! the same thread count. It is conservative: CPU time also counts rayon
//! workers spinning while they wait, and caches are shared with the other
//! processes. Prints the load average before and after each measurement.

use std::time::Instant;

use lml_benches::{random_input, weights_dir};
use lml_kernel::vgg::flops_per_image;
use lml_kernel::{Cut, Vgg19};

/// CPU seconds this process has used (all its threads, live and exited).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name, in clock ticks.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0 // CLK_TCK is 100 on Linux
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let vgg = Vgg19::open(weights_dir(), 224, Cut::Fc7).unwrap();
    let x = random_input(8, 3, 224, 1);
    let flops = 8.0 * flops_per_image(224, Cut::Fc7) as f64;
    let reps = 3;
    for threads in [1usize, 2] {
        let pool = lml_kernel::parallel::thread_pool(threads).unwrap();
        pool.install(|| vgg.forward(x.view()).unwrap()); // pack filters, page in weights
        let before = load();
        // The FMA probe: `threads` threads of chains on the widest vectors (3.84 GFLOP each), 60 times.
        let (c0, t0) = (cpu_seconds(), Instant::now());
        let calls = 60;
        for _ in 0..calls {
            std::hint::black_box(lml_kernel::gemm::fma_peak_gflops(threads));
        }
        let peak_flops = (calls * threads) as f64 * lml_kernel::gemm::FMA_PROBE_FLOPS_PER_THREAD as f64;
        let (peak_cpu, peak_wall) = (cpu_seconds() - c0, t0.elapsed().as_secs_f64());
        let (c1, t1) = (cpu_seconds(), Instant::now());
        for _ in 0..reps {
            pool.install(|| vgg.forward(x.view()).unwrap());
        }
        let (vgg_cpu, vgg_wall) = (cpu_seconds() - c1, t1.elapsed().as_secs_f64());
        let peak_rate = peak_flops / peak_cpu; // FLOP per CPU second (one thread's worth)
        let vgg_rate = reps as f64 * flops / vgg_cpu;
        println!(
            "{threads}t {}: peak {:.1} GFLOP/s per thread (CPU time), forward {:.1} GFLOP/s per thread = {:.1}% of peak; \
             wall: peak {:.1} GFLOP/s, forward {:.3} s per batch of 8; load {before} → {}",
            vgg.microkernel(),
            peak_rate / 1e9,
            vgg_rate / 1e9,
            100.0 * vgg_rate / peak_rate,
            peak_flops / peak_wall / 1e9,
            vgg_wall / reps as f64,
            load()
        );
    }
}
