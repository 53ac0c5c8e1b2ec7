//! `lml demo`: generated images through VGG19 (random weights unless given),
//! then the softmax head on their features, with test accuracy.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use lml_kernel::dataset::ImageDataset;
use lml_kernel::optim::Sgd;
use lml_kernel::trainer::{FeatureSource, Trainer};
use lml_kernel::{Cut, Vgg19};
use lml_tools::bars::bar;
use lml_tools::features::extract_in_memory;
use lml_tools::work::{ensure_images, weights_or_random};

#[derive(Parser)]
pub struct Args {
    /// Working directory for the generated dataset and weights (reused across runs).
    #[arg(long, default_value = "runs/demo")]
    workdir: PathBuf,
    /// VGG19 weight directory (`.npy` per tensor + manifest.json); random weights if absent.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Training images to generate.
    #[arg(long, default_value_t = 2000)]
    train_images: usize,
    /// Test images to generate.
    #[arg(long, default_value_t = 500)]
    test_images: usize,
    /// Number of classes.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Network input side: 32 (CIFAR-native) or 224 (ImageNet, as in the seed's paper).
    #[arg(long, default_value_t = 32)]
    input_size: usize,
    /// Feature cut: pool5, fc6 or fc7.
    #[arg(long, default_value = "fc7")]
    cut: Cut,
    /// Training epochs of the head.
    #[arg(long, default_value_t = 10)]
    epochs: u64,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 0.01)]
    lr: f32,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Seed for data, weights, initialisation and batch order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(args: &Args) -> Result<()> {
    let (pool, threads) = lml_tools::bars::pool(args.threads)?;
    pool.install(|| demo(args, threads))
}

fn demo(args: &Args, threads: usize) -> Result<()> {
    if args.classes == 0 || args.classes > 256 {
        bail!("--classes must be in 1..=256, got {}", args.classes);
    }
    std::fs::create_dir_all(&args.workdir).with_context(|| format!("creating {}", args.workdir.display()))?;
    let data_dir = args.workdir.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let train = ensure_images(&data_dir, "train", args.train_images, args.classes, args.seed)?;
    let test = ensure_images(&data_dir, "test", args.test_images, args.classes, args.seed + 1)?;

    let weights = weights_or_random(args.weights.as_deref(), &args.workdir, args.seed, args.cut)?;
    let vgg = Vgg19::open(&weights, args.input_size, args.cut)
        .with_context(|| format!("opening VGG19 weights in {}", weights.display()))?;
    eprintln!(
        "VGG19 to {:?} at {}×{} ({} features, {:?} preprocessing), {threads} threads",
        args.cut,
        args.input_size,
        args.input_size,
        vgg.feature_dim(),
        vgg.preset()
    );

    let t = Instant::now();
    let features = |data: &ImageDataset, what: &str| {
        let pb = bar(data.len() as u64, what);
        let f = extract_in_memory(&vgg, data, &mut |n| pb.inc(n as u64));
        pb.finish();
        f
    };
    let train_f = features(&train, "train feats")?;
    let test_f = features(&test, "test feats")?;
    let secs = t.elapsed().as_secs_f64();
    let n = (train.len() + test.len()) as f64;
    let gflop = lml_kernel::vgg::flops_per_image(args.input_size, args.cut) as f64 * n / 1e9;
    eprintln!("features: {n} images in {secs:.2} s = {:.1} img/s, {:.1} GFLOP/s", n / secs, gflop / secs);

    let sgd = Sgd { lr: args.lr, momentum: args.momentum, weight_decay: 0.0 };
    let mut trainer = Trainer::new(args.classes, train_f.feature_dim(), sgd, args.batch, args.seed)?;
    for epoch in 0..args.epochs {
        let t = Instant::now();
        let e = trainer.epoch(&train_f, epoch, |_, _| {})?;
        let v = trainer.evaluate(&test_f)?;
        println!(
            "epoch {:>3}  train loss {:.4}  train acc {:.3}  test loss {:.4}  test acc {:.3}  ({:.0} ms)",
            epoch + 1,
            e.loss(),
            e.accuracy(),
            v.loss(),
            v.accuracy(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let v = trainer.evaluate(&test_f)?;
    println!("final test accuracy {:.3} on {} images ({} classes)", v.accuracy(), v.count, args.classes);
    Ok(())
}
