//! Whole-network throughput: VGG19 at 224×224 through fc7 (batch 8, 1 and 2
//! threads), conv-only at 32×32 (batch 64), and one training step (forward of
//! a batch of 8 images + head update) at 1..6 threads labelled with the Lambda
//! memory size that buys that many vCPUs.
//!
//! Everything runs on the microkernel `Microkernel::select` picks (the
//! fastest this CPU runs, or the one `LML_MICROKERNEL` names:
//! `LML_MICROKERNEL=avx2 cargo bench -p lml-benches --bench vgg -- vgg19_224_fc7`);
//! its name is part of every benchmark id. The convolutions run the
//! algorithms the default policy (`auto`) chooses; the forwards are also
//! run with every convolution forced direct and forced Winograd (ids with
//! the policy's name: `…/direct/…`, `…/winograd-f4/…`, `…/winograd-f2/…`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lml_benches::{lambda_memory_mb, random_input, weights_dir};
use lml_kernel::layers::conv2d::ConvPolicy;
use lml_kernel::optim::Sgd;
use lml_kernel::trainer::{Head, HeadVelocity};
use lml_kernel::vgg::flops_per_image;
use lml_kernel::{Cut, Vgg19};

fn forward_224(c: &mut Criterion) {
    let vgg = Vgg19::open(weights_dir(), 224, Cut::Fc7).unwrap();
    let x = random_input(8, 3, 224, 1);
    let mut g = c.benchmark_group("vgg19_224_fc7");
    g.sample_size(10);
    // Elements = nominal FLOPs (39.26 GFLOP per image).
    g.throughput(Throughput::Elements(8 * flops_per_image(224, Cut::Fc7)));
    for threads in [1usize, 2] {
        let pool = lml_kernel::parallel::thread_pool(threads).unwrap();
        for policy in ConvPolicy::ALL {
            let vgg = vgg.clone().with_conv_policy(policy);
            pool.install(|| vgg.forward(x.view()).unwrap()); // page in weights, pack filters
            let id = match policy {
                ConvPolicy::Auto => format!("{}/batch8/{threads}t", vgg.microkernel()),
                _ => format!("{}/{policy}/batch8/{threads}t", vgg.microkernel()),
            };
            g.bench_function(id, |b| b.iter(|| pool.install(|| vgg.forward(x.view()).unwrap())));
        }
    }
    g.finish();
}

fn conv_32(c: &mut Criterion) {
    let vgg = Vgg19::open(weights_dir(), 32, Cut::Pool5).unwrap();
    let x = random_input(64, 3, 32, 2);
    let mut g = c.benchmark_group("vgg19_32_pool5");
    g.sample_size(10);
    g.throughput(Throughput::Elements(64 * flops_per_image(32, Cut::Pool5)));
    let pool = lml_kernel::parallel::thread_pool(2).unwrap();
    for policy in [ConvPolicy::Auto, ConvPolicy::Direct] {
        let vgg = vgg.clone().with_conv_policy(policy);
        pool.install(|| vgg.forward(x.view()).unwrap());
        let id = match policy {
            ConvPolicy::Auto => format!("{}/batch64/2t", vgg.microkernel()),
            _ => format!("{}/{policy}/batch64/2t", vgg.microkernel()),
        };
        g.bench_function(id, |b| b.iter(|| pool.install(|| vgg.forward(x.view()).unwrap())));
    }
    g.finish();
}

fn step_vs_memory(c: &mut Criterion) {
    let vgg = Vgg19::open(weights_dir(), 224, Cut::Fc7).unwrap();
    let images =
        ndarray::Array4::<u8>::from_shape_fn((8, 32, 32, 3), |(n, y, x, ch)| (n * 31 + y * 7 + x * 3 + ch) as u8);
    let labels: Vec<u32> = (0..8).collect();
    let sgd = Sgd::default();
    let mut g = c.benchmark_group("train_step_224_batch8");
    g.sample_size(10);
    g.throughput(Throughput::Elements(8));
    for vcpus in 1..=6usize {
        let pool = lml_kernel::parallel::thread_pool(vcpus).unwrap();
        let mut head = Head::new(10, 4096, 1);
        let mut vel = HeadVelocity::zeros_like(&head);
        pool.install(|| vgg.features(images.view()).unwrap());
        let id =
            BenchmarkId::new(format!("{}/{}MB", vgg.microkernel(), lambda_memory_mb(vcpus)), format!("{vcpus}vcpu"));
        g.bench_function(id, |b| {
            b.iter(|| {
                pool.install(|| {
                    let f = vgg.features(images.view()).unwrap();
                    let grad = head.gradient(f.view(), &labels).unwrap();
                    head.apply(&grad, &sgd, &mut vel).unwrap();
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, forward_224, conv_32, step_vs_memory);
criterion_main!(benches);
