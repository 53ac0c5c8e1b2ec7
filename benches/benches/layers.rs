//! Per-layer throughput on the real VGG19 shapes: the 16 convolutions at
//! 224×224 (batch 8) by the direct algorithm the network runs (`conv224`)
//! and by Winograd F(4×4, 3×3) and F(2×2, 3×3) (`winograd224`: throughput
//! in nominal FLOPs, those of the direct convolution, so it can pass the
//! FMA peak), fc6 at batch 1 (memory-bound) and the raw packed GEMM.
//!
//! The convolutions and fc6 run on the microkernel `Microkernel::select`
//! picks: the fastest this CPU runs, or the one `LML_MICROKERNEL` names
//! (`LML_MICROKERNEL=avx2 cargo bench -p lml-benches --bench layers -- conv224`);
//! its name is part of every benchmark id. The GEMM group runs every kernel
//! this CPU runs, and `matrixmultiply`, on the same product.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lml_benches::{conv_table, random_input};
use lml_kernel::gemm::{gemm_packed, Microkernel, PackedA, RowSink, Scratch};
use lml_kernel::geometry::Window2d;
use lml_kernel::layers::conv2d::{conv2d_forward_into, conv2d_padded, pack_filters, ConvAlgorithm};
use lml_kernel::layers::dense_forward_on;
use lml_kernel::layers::{conv2d_winograd, PaddedLayout, WinogradFilters, WinogradTile};
use ndarray::{Array1, Array2};

fn conv_layers(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv224");
    g.sample_size(10);
    let kernel = Microkernel::select().expect("LML_MICROKERNEL");
    eprintln!("conv224: microkernel {kernel}");
    for threads in [1usize, 2] {
        let pool = lml_kernel::parallel::thread_pool(threads).unwrap();
        for shape in conv_table(224) {
            // Batch 8 spreads the layer over threads like the real forward.
            let batch = 8;
            let x = random_input(batch, shape.in_channels, shape.side, 1);
            let w = random_input(shape.out_channels, shape.in_channels, 3, 2).mapv(|v| v * 0.05);
            let bias = Array1::<f32>::zeros(shape.out_channels);
            let packed = Some(pack_filters(w.view(), kernel).unwrap());
            let window = Window2d::VGG_CONV;
            let algo = ConvAlgorithm::choose(packed.is_some(), (shape.side, shape.side), &window);
            g.throughput(Throughput::Elements(shape.flops() * batch as u64));
            let id = BenchmarkId::new(format!("{kernel}/{threads}t"), shape.name);
            match (algo, packed.as_ref()) {
                // As in the network: from the previous layer's padded output to the next one's input.
                (ConvAlgorithm::Implicit, Some(p)) => {
                    let lin = PaddedLayout::conv_input(batch, shape.in_channels, shape.side, shape.side, &window);
                    let lout = lin.conv_output(shape.out_channels, &window);
                    let mut input = vec![0.0; lin.len()];
                    lin.fill(&mut input, x.view()).unwrap();
                    let mut out = vec![0.0; lout.len()];
                    g.bench_function(id, |b| {
                        b.iter(|| {
                            pool.install(|| conv2d_padded(&input, &lin, p, bias.view(), &window, true, &mut out, &lout))
                                .unwrap()
                        })
                    });
                }
                // NCHW in and out; output and scratch reused across iterations, as in the network.
                (_, p) => {
                    let mut out = ndarray::Array4::<f32>::zeros((batch, shape.out_channels, shape.side, shape.side));
                    let mut scratch = Vec::new();
                    g.bench_function(id, |b| {
                        b.iter(|| {
                            pool.install(|| {
                                let (out, scratch) = (out.view_mut(), &mut scratch);
                                conv2d_forward_into(
                                    x.view(),
                                    w.view(),
                                    p,
                                    bias.view(),
                                    &window,
                                    true,
                                    algo,
                                    out,
                                    scratch,
                                )
                            })
                            .unwrap()
                        })
                    });
                }
            }
        }
    }
    g.finish();
}

/// The 16 convolutions by Winograd, padded input to padded output as in the
/// network, batch 8, 1 and 2 threads; ids `{kernel}/{threads}t/{f4|f2}`.
fn winograd_layers(c: &mut Criterion) {
    let mut g = c.benchmark_group("winograd224");
    g.sample_size(10);
    let kernel = Microkernel::select().expect("LML_MICROKERNEL");
    let window = Window2d::VGG_CONV;
    for threads in [1usize, 2] {
        let pool = lml_kernel::parallel::thread_pool(threads).unwrap();
        for shape in conv_table(224) {
            let batch = 8;
            let x = random_input(batch, shape.in_channels, shape.side, 1);
            let w = random_input(shape.out_channels, shape.in_channels, 3, 2).mapv(|v| v * 0.05);
            let bias = Array1::<f32>::zeros(shape.out_channels);
            let lin = PaddedLayout::conv_input(batch, shape.in_channels, shape.side, shape.side, &window);
            let lout = lin.conv_output(shape.out_channels, &window);
            let mut input = vec![0.0; lin.len()];
            lin.fill(&mut input, x.view()).unwrap();
            let mut out = vec![0.0; lout.len()];
            g.throughput(Throughput::Elements(shape.flops() * batch as u64));
            for tile in WinogradTile::ALL {
                let f = WinogradFilters::new(w.view(), tile, kernel).unwrap();
                let id = BenchmarkId::new(format!("{kernel}/{threads}t/{}", tile.name()), shape.name);
                g.bench_function(id, |b| {
                    b.iter(|| {
                        pool.install(|| conv2d_winograd(&input, &lin, &f, bias.view(), &window, true, &mut out, &lout))
                            .unwrap()
                    })
                });
            }
        }
    }
    g.finish();
}

fn fc6_batch1(c: &mut Criterion) {
    let mut g = c.benchmark_group("fc6");
    g.sample_size(20);
    let w = Array2::<f32>::from_elem((4096, 25088), 0.001);
    let b = Array1::<f32>::zeros(4096);
    let x = Array2::<f32>::from_elem((1, 25088), 0.5);
    let kernel = Microkernel::select().expect("LML_MICROKERNEL");
    // Bytes of weights streamed per call: compare with peak/stream_read_411MB.
    g.throughput(Throughput::Bytes((w.len() * 4) as u64));
    for threads in [1usize, 2] {
        let pool = lml_kernel::parallel::thread_pool(threads).unwrap();
        g.bench_function(format!("batch1/{kernel}/{threads}t"), |bch| {
            bch.iter(|| pool.install(|| dense_forward_on(x.view(), w.view(), b.view(), true, kernel).unwrap()))
        });
    }
    // The same product through matrixmultiply (which packs the weights first).
    let mut y = Array2::<f32>::zeros((1, 4096));
    g.bench_function("batch1/matrixmultiply/1t", |bch| {
        bch.iter(|| lml_kernel::gemm::sgemm(1.0, x.view(), w.t(), 0.0, y.view_mut()))
    });
    g.finish();
}

fn packed_gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    g.sample_size(20);
    // block4_conv2's GEMM for one 512-column tile: [512 × 4608] · [4608 × 512].
    let (m, k, n) = (512, 4608, 512);
    let a = Array2::<f32>::from_elem((m, k), 0.01);
    let bm = Array2::<f32>::from_elem((k, n), 0.02);
    let mut out = vec![0.0f32; m * n];
    let mut scratch = Scratch::default();
    g.throughput(Throughput::Elements(lml_kernel::gemm::flops(m, k, n)));
    for kernel in Microkernel::runnable() {
        let packed = PackedA::pack(a.view(), kernel);
        g.bench_function(format!("packed_{kernel}_{m}x{k}x{n}/1t"), |bch| {
            bch.iter(|| {
                gemm_packed(&packed, n, |kk, row| row.copy(0, bm.row(kk).as_slice().unwrap()), &mut out, &mut scratch)
            })
        });
    }
    let mut outm = Array2::<f32>::zeros((m, n));
    g.bench_function(format!("matrixmultiply_{m}x{k}x{n}/1t"), |bch| {
        bch.iter(|| lml_kernel::gemm::sgemm(1.0, a.view(), bm.view(), 0.0, outm.view_mut()))
    });
    g.finish();
}

/// One VGG layer (block4_conv2: 28×28, 512 → 512, batch 1, 1 thread) by
/// every algorithm on every kernel this CPU runs, and by `matrixmultiply`
/// (the portable algorithm): where the portable path would still win.
fn conv_algorithms(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv_algorithms");
    g.sample_size(10);
    let shape = conv_table(224).into_iter().find(|s| s.name == "block4_conv2").expect("a VGG19 layer");
    let x = random_input(1, shape.in_channels, shape.side, 1);
    let w = random_input(shape.out_channels, shape.in_channels, 3, 2).mapv(|v| v * 0.05);
    let bias = Array1::<f32>::zeros(shape.out_channels);
    let window = Window2d::VGG_CONV;
    g.throughput(Throughput::Elements(shape.flops()));
    let pool = lml_kernel::parallel::thread_pool(1).unwrap();
    let mut out = ndarray::Array4::<f32>::zeros((1, shape.out_channels, shape.side, shape.side));
    let mut scratch = Vec::new();
    let mut runs = vec![(ConvAlgorithm::Portable, None)];
    for kernel in Microkernel::runnable() {
        runs.push((ConvAlgorithm::PackedIm2col, Some(kernel)));
        runs.push((ConvAlgorithm::Implicit, Some(kernel)));
    }
    for (algo, kernel) in runs {
        let packed = kernel.map(|k| pack_filters(w.view(), k).unwrap());
        let name = kernel.map_or("matrixmultiply".to_string(), |k| k.to_string());
        g.bench_function(BenchmarkId::new(format!("{algo:?}"), format!("{}/{name}", shape.name)), |b| {
            b.iter(|| {
                pool.install(|| {
                    let (out, scratch) = (out.view_mut(), &mut scratch);
                    conv2d_forward_into(
                        x.view(),
                        w.view(),
                        packed.as_ref(),
                        bias.view(),
                        &window,
                        true,
                        algo,
                        out,
                        scratch,
                    )
                })
                .unwrap()
            })
        });
    }
    g.finish();
}

/// Where `matrixmultiply` still serves: dense layers past the dot-product
/// path's batch (`DOT_MAX_BATCH` = 16). The head step's product (batch 256,
/// 4096 → 10) and fc7 at batch 64 (4096 → 4096), one thread, by
/// `matrixmultiply`, by the dot-product kernel on every kernel this CPU runs,
/// and by the packed GEMM (filters-as-A: `W` packed once, `xᵀ` packed per call).
fn dense_large_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("dense_large_batch");
    g.sample_size(10);
    for (name, batch, inputs, outputs) in [("head_256x4096x10", 256, 4096, 10), ("fc7_64x4096x4096", 64, 4096, 4096)] {
        let x = Array2::from_shape_fn((batch, inputs), |(i, j)| ((i * 7 + j * 3) % 11) as f32 * 0.1 - 0.5);
        let w = Array2::from_shape_fn((outputs, inputs), |(i, j)| ((i * 5 + j * 2) % 7) as f32 * 0.01 - 0.03);
        g.throughput(Throughput::Elements(lml_kernel::gemm::flops(batch, inputs, outputs)));
        let mut y = Array2::<f32>::zeros((batch, outputs));
        g.bench_function(format!("{name}/matrixmultiply/1t"), |b| {
            b.iter(|| lml_kernel::gemm::sgemm(1.0, x.view(), w.t(), 0.0, y.view_mut()))
        });
        let xr: Vec<&[f32]> = x.outer_iter().map(|r| r.to_slice().unwrap()).collect();
        let wr: Vec<&[f32]> = w.outer_iter().map(|r| r.to_slice().unwrap()).collect();
        let mut yd = vec![0.0f32; batch * outputs];
        for kernel in Microkernel::runnable() {
            g.bench_function(format!("{name}/dot_{kernel}/1t"), |b| {
                b.iter(|| lml_kernel::gemm::dense_rows(kernel, inputs, &xr, &wr, &mut yd))
            });
            let packed = PackedA::pack(w.view(), kernel);
            let mut out = vec![0.0f32; outputs * batch];
            let mut scratch = Scratch::default();
            g.bench_function(format!("{name}/packed_{kernel}/1t"), |b| {
                b.iter(|| {
                    gemm_packed(
                        &packed,
                        batch,
                        |kk, row| {
                            for (j, v) in x.column(kk).iter().enumerate() {
                                row.set(j, *v);
                            }
                        },
                        &mut out,
                        &mut scratch,
                    )
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, packed_gemm, fc6_batch1, conv_layers, winograd_layers, conv_algorithms, dense_large_batch);
criterion_main!(benches);
