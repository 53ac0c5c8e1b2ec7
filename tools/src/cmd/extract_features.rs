//! `lml extract-features`: the frozen VGG19 over a prepared split, once, into the feature cache.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use lml_kernel::dataset::ImageDataset;
use lml_kernel::{Cut, Vgg19};

#[derive(Parser)]
pub struct Args {
    /// Folder with {split}_x.npy and {split}_y.npy (from prepare-cifar10).
    #[arg(long)]
    data: PathBuf,
    /// Which split: train or test.
    #[arg(long, default_value = "train")]
    split: String,
    /// VGG19 weight directory.
    #[arg(long)]
    weights: PathBuf,
    /// Output folder for the shards and the merged cache.
    #[arg(long)]
    out: PathBuf,
    /// Feature cut: pool5, fc6 or fc7.
    #[arg(long, default_value = "fc7")]
    cut: Cut,
    /// Network input side (multiple of 32).
    #[arg(long, default_value_t = 32)]
    input_size: usize,
    /// Compute only shard i of n, as `i/n` (several workers can share a split).
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// Number of shards when --shard is not given (all missing ones are computed).
    #[arg(long, default_value_t = 10, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    shards: usize,
    /// Storage type of the cache: f32, or f16 (half the size, ≤ 2⁻¹¹ relative rounding).
    #[arg(long, default_value = "f32")]
    dtype: lml_tools::features::Dtype,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_shard(s: &str) -> std::result::Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or_else(|| format!("{s:?}: expected i/n, e.g. 3/10"))?;
    let i: usize = i.trim().parse().map_err(|_| format!("{s:?}: shard index is not a number"))?;
    let n: usize = n.trim().parse().map_err(|_| format!("{s:?}: shard count is not a number"))?;
    if n == 0 || i >= n {
        return Err(format!("{s:?}: need 0 <= i < n"));
    }
    Ok((i, n))
}

pub fn run(args: &Args) -> Result<()> {
    let (pool, _) = lml_tools::bars::pool(args.threads)?;
    pool.install(|| extract(args))
}

fn extract(args: &Args) -> Result<()> {
    use lml_tools::features::{extract_shard, merge, shard_rows, CacheNote, CACHE_FORMAT};
    let (x, y) = (args.data.join(format!("{}_x.npy", args.split)), args.data.join(format!("{}_y.npy", args.split)));
    let data = ImageDataset::open(&x, &y)?;
    let vgg = Vgg19::open(&args.weights, args.input_size, args.cut)
        .with_context(|| format!("opening VGG19 weights in {}", args.weights.display()))?;
    let count = args.shard.map_or(args.shards, |(_, n)| n);
    if count > data.len().max(1) {
        bail!("--shards {count}: more shards than the {} images in {}", data.len(), x.display());
    }
    let (todo, count): (Vec<usize>, usize) = match args.shard {
        Some((i, n)) => (vec![i], n),
        None => ((0..args.shards).collect(), args.shards),
    };
    let total: usize = todo.iter().map(|&i| shard_rows(data.len(), i, count)).map(|(a, b)| b - a).sum();
    let pb = lml_tools::bars::image_bar(total as u64, &args.split);
    let mut computed = 0;
    for &i in &todo {
        if extract_shard(&vgg, &data, &args.out, &args.split, (i, count), args.dtype, &mut |n| pb.inc(n as u64))? {
            computed += 1;
        }
    }
    pb.finish_and_clear();
    println!("{} shard(s) of {count} computed, {} already there", computed, todo.len() - computed);
    let note = CacheNote {
        format: CACHE_FORMAT.into(),
        split: args.split.clone(),
        images: data.len(),
        dim: vgg.feature_dim(),
        dtype: args.dtype.descr().into(),
        cut: args.cut,
        input_size: args.input_size,
        preset: vgg.preset(),
        weights: args.weights.canonicalize().unwrap_or_else(|_| args.weights.clone()),
        shards: count,
        image_size: Some(data.image_size().into()),
    };
    match merge(&args.out, &args.split, count, &y, &note)? {
        Some(p) => {
            if lml_tools::features::carry_class_list(&args.data, &args.out)? {
                println!("class list copied to {}", args.out.join(lml_kernel::dataset::CLASS_LIST).display());
            }
            println!("features ready: {} ({} × {})", p.display(), data.len(), vgg.feature_dim())
        }
        None => println!("waiting for the other shards before merging into {}_features.npy", args.split),
    }
    Ok(())
}
