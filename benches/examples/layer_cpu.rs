//! Per-layer CPU seconds of a VGG19 forward on one thread (default 224×224
//! → fc7, batch 8) for every microkernel this CPU runs, side by side, by CPU
//! time (so it stays meaningful while other processes share the machine):
//!
//! ```text
//! cargo run --release -p lml-benches --example layer_cpu
//! SIZE=32 CUT=pool5 BATCH=64 REPS=5 cargo run --release -p lml-benches --example layer_cpu
//! ```
//!
//! With one compute thread the process's CPU time between two layers is that
//! layer's; `/proc/self/stat` counts in 10 ms ticks, so each forward is
//! repeated and the per-layer sums are printed.

use lml_benches::{random_input, weights_dir};
use lml_kernel::gemm::Microkernel;
use lml_kernel::{Cut, Vgg19};

/// CPU seconds this process has used (see `cpu_fraction.rs`).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn main() {
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (reps, size, batch) = (env("REPS", 3), env("SIZE", 224), env("BATCH", 8));
    let cut: Cut = std::env::var("CUT").ok().map_or(Cut::Fc7, |c| c.parse().expect("CUT: pool5, fc6 or fc7"));
    let x = random_input(batch, 3, size, 1);
    let pool = lml_kernel::parallel::thread_pool(1).unwrap();
    let kernels: Vec<Microkernel> =
        Microkernel::runnable().into_iter().filter(|k| *k != Microkernel::Generic).collect();
    let mut table: Vec<(String, Vec<f64>)> = Vec::new();
    for (col, &kernel) in kernels.iter().enumerate() {
        let vgg = Vgg19::open(weights_dir(), size, cut).unwrap().with_microkernel(kernel).unwrap();
        pool.install(|| vgg.forward(x.view()).unwrap());
        for _ in 0..reps {
            let mut last = cpu_seconds();
            let mut row = 0;
            pool.install(|| {
                vgg.forward_observed(x.view(), |name, _| {
                    let now = cpu_seconds();
                    if table.len() <= row {
                        table.push((name.to_string(), vec![0.0; kernels.len()]));
                    }
                    table[row].1[col] += now - last;
                    row += 1;
                    last = now;
                })
                .unwrap()
            });
        }
    }
    print!("{:<16}", "layer (CPU s)");
    for k in &kernels {
        print!("{:>10}", k.to_string());
    }
    println!();
    let mut total = vec![0.0; kernels.len()];
    for (name, secs) in &table {
        print!("{name:<16}");
        for (i, s) in secs.iter().enumerate() {
            print!("{:>10.3}", s / reps as f64);
            total[i] += s / reps as f64;
        }
        println!();
    }
    print!("{:<16}", "total");
    for t in total {
        print!("{t:>10.3}");
    }
    println!();
}
