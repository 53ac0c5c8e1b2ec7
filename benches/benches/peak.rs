//! The machine's yardsticks: FP32 FMA peak (1 and 2 threads) and memory
//! streaming bandwidth, against which the kernel's figures are judged.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rayon::prelude::*;

fn fma_peak(c: &mut Criterion) {
    let mut g = c.benchmark_group("peak");
    g.sample_size(10);
    for threads in [1usize, 2] {
        // One call runs `threads` threads of FMA chains on the widest vectors, 3.84 GFLOP each.
        g.throughput(Throughput::Elements(threads as u64 * lml_kernel::gemm::FMA_PROBE_FLOPS_PER_THREAD));
        let isa = lml_kernel::gemm::fma_probe_isa();
        g.bench_function(format!("fma_f32_{isa}/{threads}t"), |b| {
            b.iter(|| lml_kernel::gemm::fma_peak_gflops(threads))
        });
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

/// First touch of freshly allocated memory against rewriting it: the cost
/// that made `Vgg19` keep its activation buffers. 103 MB is one batch-8
/// conv1 output at 224×224 (glibc maps allocations this large fresh each time).
fn first_touch(c: &mut Criterion) {
    let n = 8 * 64 * 224 * 224;
    let mut g = c.benchmark_group("peak");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((n * 4) as u64));
    g.bench_function("fresh_alloc_write_103MB", |b| {
        b.iter(|| {
            let mut v = vec![0.0f32; n];
            v.iter_mut().for_each(|x| *x = 1.0);
            std::hint::black_box(v)
        })
    });
    let mut v = vec![0.0f32; n];
    g.bench_function("rewrite_103MB", |b| b.iter(|| std::hint::black_box(&mut v).iter_mut().for_each(|x| *x = 2.0)));
    g.finish();
}

criterion_group!(benches, fma_peak, stream, first_touch);
criterion_main!(benches);
