//! The machine's yardsticks: FP32 FMA peak (1 and 2 threads) and memory
//! streaming bandwidth, against which the kernel's figures are judged.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rayon::prelude::*;

fn fma_peak(c: &mut Criterion) {
    let mut g = c.benchmark_group("peak");
    g.sample_size(10);
    for threads in [1usize, 2] {
        // One call runs `threads` threads of 12 FMA chains × 20 M steps (3.84 GFLOP each).
        g.throughput(Throughput::Elements(threads as u64 * 20_000_000 * 12 * 16));
        g.bench_function(format!("fma_f32/{threads}t"), |b| b.iter(|| lml_kernel::gemm::fma_peak_gflops(threads)));
    }
    g.finish();
}

fn stream(c: &mut Criterion) {
    // The size of fc6's weights: the bytes a batch-1 fc6 must stream.
    let data = vec![1.0f32; 25088 * 4096];
    let mut g = c.benchmark_group("peak");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((data.len() * 4) as u64));
    for threads in [1usize, 2] {
        let pool = lml_kernel::parallel::thread_pool(threads).unwrap();
        g.bench_function(format!("stream_read_411MB/{threads}t"), |b| {
            b.iter(|| {
                pool.install(|| {
                    data.par_chunks(1 << 20)
                        .map(|c| {
                            let mut acc = [0.0f32; 16];
                            for v in c.chunks_exact(16) {
                                for i in 0..16 {
                                    acc[i] += v[i];
                                }
                            }
                            acc.iter().sum::<f32>()
                        })
                        .sum::<f32>()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fma_peak, stream);
criterion_main!(benches);
