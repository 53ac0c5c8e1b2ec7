//! `lml`: command-line tools for the serverless VGG19 trainer.

mod plan;
mod profile;
mod train;

use lml_tools::synth;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lml_kernel::dataset::ImageDataset;
use lml_kernel::npy::write_npy_atomic;
use lml_kernel::optim::Sgd;
use lml_kernel::trainer::{FeatureSource, InMemoryFeatures, Trainer};
use lml_kernel::vgg::{random_weights, MODEL};
use lml_kernel::weights::WeightStore;
use lml_kernel::{Cut, Preset, Vgg19};
use ndarray::{s, Array2};

#[derive(Parser)]
#[command(name = "lml", version, about = "Train a softmax head on frozen VGG19 features, locally or on AWS Lambda")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a softmax head with N parallel workers on the local runtime
    /// (the start / worker / combine protocol, as on AWS Lambda), with a
    /// live progress display. Generates a learnable dataset if given no data.
    Train(Box<train::TrainArgs>),
    /// Estimate what a job would cost and take on AWS Lambda.
    Plan(plan::PlanArgs),
    /// Print a job's progress and final accuracy.
    Status(train::StatusArgs),
    /// Ask a running job to stop after the round in progress.
    Stop(train::StopArgs),
    /// Kernel demo: generate images (and random VGG19 weights unless given),
    /// extract frozen features, train the softmax head, report test accuracy.
    Demo(DemoArgs),
    /// Time one VGG19 forward layer by layer (GFLOP/s against a measured FMA
    /// peak) and report the process's peak resident memory.
    Profile(ProfileArgs),
    /// Convert the official CIFAR-10 archive (`cifar-10-binary.tar.gz` or
    /// `cifar-10-python.tar.gz`, or an extracted folder) into memory-mappable .npy files.
    #[command(name = "prepare-cifar10")]
    PrepareCifar10(PrepareArgs),
    /// Run the frozen VGG19 over a prepared split once and cache the features
    /// (sharded, resumable; shards are merged when all exist).
    #[command(name = "extract-features")]
    ExtractFeatures(ExtractArgs),
    /// Convert a VGG19 checkpoint (torchvision or timm `.safetensors`, or a
    /// Keras `.h5`) into the kernel's .npy weight directory.
    ///
    /// Keras files are read as Keras' loader reads them, in every layout Keras
    /// has written: the Applications files Keras downloads
    /// (vgg19_weights_tf_dim_ordering_tf_kernels.h5, full or _notop), Keras 2
    /// save_weights / save (.h5, weights under model_weights), and Keras 3
    /// .weights.h5. A _notop file converts to pool5, a full one to fc7.
    #[command(name = "convert-weights")]
    ConvertWeights {
        /// The checkpoint: `.safetensors`, or `.h5` (Keras; preset caffe is recorded).
        #[arg(long)]
        input: PathBuf,
        /// Weight directory to create.
        #[arg(long)]
        out: PathBuf,
        /// Input normalisation the weights were trained with (torchvision for torchvision/timm checkpoints).
        #[arg(long, default_value = "torchvision")]
        preset: Preset,
    },
    /// Download the official CIFAR-10 archive (MD5-checked, resumable).
    Fetch {
        /// Which archive: binary (what prepare-cifar10 reads fastest) or python.
        #[arg(long, default_value = "binary")]
        format: String,
        /// Folder to download into.
        #[arg(long, default_value = "data")]
        out: PathBuf,
        /// Override the URL (a mirror); the published MD5 is still checked unless --md5 is given.
        #[arg(long)]
        url: Option<String>,
        /// Override the expected MD5 (hex).
        #[arg(long)]
        md5: Option<String>,
    },
    /// Train the softmax head on cached features (single process; the
    /// distributed job is `train`, issue 4), and save it as .npy.
    #[command(name = "train-head")]
    TrainHead(TrainHeadArgs),
    /// Generate format-exact fixtures for tests and demos.
    #[command(subcommand)]
    Synth(SynthCommand),
}

#[derive(Parser)]
struct PrepareArgs {
    /// `cifar-10-binary.tar.gz` or `cifar-10-python.tar.gz`, or a folder holding their members.
    #[arg(long)]
    input: PathBuf,
    /// Output folder for train_x.npy, train_y.npy, test_x.npy, test_y.npy, classes.txt.
    #[arg(long)]
    out: PathBuf,
    /// Records each .bin must hold (10000 in the official archive).
    #[arg(long, default_value_t = lml_tools::cifar::OFFICIAL_RECORDS_PER_BATCH, value_parser = parse_records_per_batch)]
    records_per_batch: usize,
    /// Replace existing outputs.
    #[arg(long)]
    force: bool,
}

#[derive(Parser)]
struct ExtractArgs {
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

#[derive(Parser)]
struct TrainHeadArgs {
    /// Folder with train_features.npy / train_y.npy (and test_* to evaluate), from extract-features.
    #[arg(long)]
    features: PathBuf,
    /// Number of classes (default: the class list `classes.txt` in --features,
    /// else the largest train or test label + 1).
    #[arg(long)]
    classes: Option<usize>,
    /// Epochs.
    #[arg(long, default_value_t = lml_kernel::trainer::DEFAULT_EPOCHS)]
    epochs: u64,
    /// Mini-batch size (the distributed default is 4 workers × 64).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Base learning rate, for standardised features.
    #[arg(long, default_value_t = Sgd::default().lr)]
    lr: f32,
    /// SGD momentum.
    #[arg(long, default_value_t = Sgd::default().momentum)]
    momentum: f32,
    /// L2 weight decay.
    #[arg(long, default_value_t = Sgd::default().weight_decay)]
    weight_decay: f32,
    /// Learning-rate schedule over the run: cosine (decays to 0) or constant.
    #[arg(long, default_value_t = lml_kernel::optim::LrSchedule::default())]
    schedule: lml_kernel::optim::LrSchedule,
    /// Train on the features as they are instead of standardised.
    #[arg(long)]
    no_standardize: bool,
    /// Seed of the example order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Folder to save the head into: head.weight.npy, head.bias.npy, the
    /// standardisation (stats.mean.npy, stats.scale.npy), classes.txt, head.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_records_per_batch(s: &str) -> std::result::Result<usize, String> {
    let n: usize = s.trim().parse().map_err(|_| format!("{s:?} is not a count of records"))?;
    lml_tools::cifar::check_records_per_batch(n).map_err(|e| e.to_string())
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

#[derive(Subcommand)]
enum SynthCommand {
    /// A CIFAR-10 archive (`cifar-10-binary.tar.gz` or `cifar-10-python.tar.gz` layout) of generated images.
    Cifar10 {
        /// Archive to write.
        #[arg(long)]
        out: PathBuf,
        /// Which distribution: binary or python.
        #[arg(long, default_value = "binary")]
        format: String,
        /// Records in each of the six .bin members.
        #[arg(long, default_value_t = 1000)]
        per_batch: usize,
        /// Seed of the generated images.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Random VGG19 weights as a Keras `.h5`.
    Vgg19KerasH5 {
        /// File to write.
        #[arg(long)]
        out: PathBuf,
        /// Which Keras layout: applications-2017 (Keras 1 save_weights, as in
        /// vgg19_weights_tf_dim_ordering_tf_kernels.h5), keras2 (save_weights
        /// to .h5) or keras3 (.weights.h5).
        #[arg(long, default_value = "applications-2017")]
        layout: lml_tools::keras::KerasLayout,
        /// Deepest layer included: pool5, fc6 or fc7.
        #[arg(long, default_value = "fc7")]
        cut: Cut,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Random VGG19 weights as a `.safetensors` checkpoint (torchvision or timm keys).
    Vgg19Safetensors {
        /// File to write.
        #[arg(long)]
        out: PathBuf,
        /// Key layout: torchvision or timm.
        #[arg(long, default_value = "torchvision")]
        layout: String,
        /// Deepest layer included: pool5, fc6 or fc7.
        #[arg(long, default_value = "fc7")]
        cut: Cut,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Parser)]
struct ProfileArgs {
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

#[derive(Parser)]
struct DemoArgs {
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

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Train(args) => train::train(&args),
        Command::Status(args) => train::status(&args),
        Command::Plan(args) => plan::plan(&args),
        Command::Stop(args) => train::stop(&args),
        Command::Demo(args) => {
            let threads = args.threads.unwrap_or_else(default_threads);
            let pool = lml_kernel::parallel::thread_pool(threads)?;
            pool.install(|| demo(&args, threads))
        }
        Command::PrepareCifar10(args) => prepare_cifar10(&args),
        Command::ExtractFeatures(args) => {
            let threads = args.threads.unwrap_or_else(default_threads);
            let pool = lml_kernel::parallel::thread_pool(threads)?;
            pool.install(|| extract_features(&args))
        }
        Command::Synth(SynthCommand::Cifar10 { out, format, per_batch, seed }) => {
            match format.as_str() {
                "binary" => lml_tools::cifar::write_binary_archive(&out, per_batch, seed),
                "python" => lml_tools::cifar::write_python_archive(&out, per_batch, seed),
                other => bail!("--format {other:?}: expected binary or python"),
            }
            .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} ({} train + {} test records)", out.display(), 5 * per_batch, per_batch);
            Ok(())
        }
        Command::Fetch { format, out, url, md5 } => {
            use lml_tools::fetch::{fetch, CIFAR10_BINARY, CIFAR10_PYTHON};
            let remote = match format.as_str() {
                "binary" => CIFAR10_BINARY,
                "python" => CIFAR10_PYTHON,
                other => bail!("--format {other:?}: expected binary or python"),
            };
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let dest = out.join(remote.file);
            let url = url.unwrap_or_else(|| remote.url.to_string());
            let pb = ProgressBar::new(0);
            pb.set_style(
                ProgressStyle::with_template("{bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                    .expect("valid template"),
            );
            let got = fetch(&url, &dest, md5.as_deref().unwrap_or(remote.md5), &mut |done, total| {
                if let Some(t) = total {
                    pb.set_length(t);
                }
                pb.set_position(done);
            });
            pb.finish_and_clear();
            let got = got?;
            println!("{} ready ({} bytes downloaded now, MD5 verified)", dest.display(), got);
            Ok(())
        }
        Command::TrainHead(args) => {
            let threads = args.threads.unwrap_or_else(default_threads);
            let pool = lml_kernel::parallel::thread_pool(threads)?;
            pool.install(|| train_head(&args))
        }
        Command::ConvertWeights { input, out, preset } => {
            let ext = input.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
            let c = match ext.as_str() {
                "h5" | "hdf5" => lml_tools::convert::convert_keras_h5(&input, &out)?,
                "safetensors" => lml_tools::convert::convert_safetensors(&input, &out, preset)?,
                other => bail!("{}: unknown checkpoint type {other:?} (expected .safetensors or .h5)", input.display()),
            };
            println!(
                "wrote {}: {} tensors, usable to cut {:?}{}",
                out.display(),
                c.tensors,
                c.cut,
                if c.ignored.is_empty() { String::new() } else { format!("; ignored {}", c.ignored.join(", ")) }
            );
            Ok(())
        }
        Command::Synth(SynthCommand::Vgg19KerasH5 { out, layout, cut, seed }) => {
            let w = random_weights(seed, cut);
            lml_tools::keras::write_keras_h5(&out, &w, layout)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
            println!("wrote {} ({} layers with weights, Keras layout {layout:?})", out.display(), w.len() / 2);
            Ok(())
        }
        Command::Synth(SynthCommand::Vgg19Safetensors { out, layout, cut, seed }) => {
            let mut w = random_weights(seed, cut);
            match layout.as_str() {
                "torchvision" => {}
                "timm" => w = lml_tools::convert::to_timm_layout(w),
                other => bail!("--layout {other:?}: expected torchvision or timm"),
            }
            let views: Vec<_> = w.iter().map(|(n, a)| (n.clone(), a.view())).collect();
            lml_tools::convert::write_safetensors(&out, &views)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} ({} tensors, {layout} keys)", out.display(), views.len());
            Ok(())
        }
        Command::Profile(args) => {
            let threads = args.threads.unwrap_or_else(default_threads);
            let pool = lml_kernel::parallel::thread_pool(threads)?;
            pool.install(|| profile::run(&args, threads))
        }
    }
}

fn prepare_cifar10(args: &PrepareArgs) -> Result<()> {
    let total = (args.records_per_batch as u64).saturating_mul(6);
    let pb = bar(total, "records");
    let prepared = lml_tools::cifar::prepare(&args.input, &args.out, args.records_per_batch, args.force, &mut |n| {
        pb.inc(n as u64)
    });
    pb.finish_and_clear();
    let prepared = prepared?;
    println!(
        "wrote {}: {} train + {} test images, classes {}",
        args.out.display(),
        prepared.train,
        prepared.test,
        prepared.classes.join(", ")
    );
    Ok(())
}

fn extract_features(args: &ExtractArgs) -> Result<()> {
    use lml_tools::features::{extract_shard, merge, shard_rows};
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
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} images {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(args.split.clone());
    let mut computed = 0;
    for &i in &todo {
        if extract_shard(&vgg, &data, &args.out, &args.split, (i, count), args.dtype, &mut |n| pb.inc(n as u64))? {
            computed += 1;
        }
    }
    pb.finish_and_clear();
    println!("{} shard(s) of {count} computed, {} already there", computed, todo.len() - computed);
    let note = serde_json::json!({
        "format": "lml-features/1",
        "split": args.split,
        "images": data.len(),
        "dim": vgg.feature_dim(),
        "dtype": args.dtype.descr(),
        "cut": args.cut,
        "input_size": args.input_size,
        "preset": vgg.preset(),
        "weights": args.weights.canonicalize().unwrap_or_else(|_| args.weights.clone()),
        "shards": count,
    });
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

fn train_head(args: &TrainHeadArgs) -> Result<()> {
    use lml_kernel::dataset::{class_count, read_class_list, CLASS_LIST};
    use lml_kernel::standardize::FeatureStats;
    use lml_kernel::trainer::CachedFeatures;
    let paths = |split: &str| {
        (args.features.join(format!("{split}_features.npy")), args.features.join(format!("{split}_y.npy")))
    };
    let open = |split: &str| {
        let (f, y) = paths(split);
        CachedFeatures::open(&f, &y)
            .with_context(|| format!("opening cached {split} features in {}", args.features.display()))
    };
    let train = open("train")?;
    let test = if args.features.join("test_features.npy").exists() { Some(open("test")?) } else { None };
    // Classes: every label file checked against the class list (or a sane
    // bound) before a head is allocated.
    let names = read_class_list(&args.features.join(CLASS_LIST))?;
    let mut label_files = vec![(paths("train").1, lml_kernel::dataset::read_labels(&paths("train").1)?)];
    if test.is_some() {
        label_files.push((paths("test").1, lml_kernel::dataset::read_labels(&paths("test").1)?));
    }
    let files: Vec<(&Path, &[u32])> = label_files.iter().map(|(p, l)| (p.as_path(), l.as_slice())).collect();
    let classes = match args.classes {
        Some(c) => {
            if names.as_ref().is_some_and(|n| n.len() != c) {
                bail!(
                    "--classes {c}, but {} names {}",
                    args.features.join(CLASS_LIST).display(),
                    names.map_or(0, |n| n.len())
                );
            }
            for (p, l) in &files {
                lml_kernel::dataset::check_labels(p, l, c, &format!("--classes {c}"))?;
            }
            c
        }
        None => class_count(&files, names.as_deref())?,
    };
    let sgd = Sgd { lr: args.lr, momentum: args.momentum, weight_decay: args.weight_decay };
    let mut trainer = Trainer::new(classes, train.feature_dim(), sgd, args.batch, args.seed)?;
    let total_steps =
        trainer.steps_per_epoch(train.len()).checked_mul(args.epochs).context("--epochs: too many steps")?;
    trainer = trainer.with_schedule(args.schedule, total_steps);
    if !args.no_standardize {
        trainer = trainer.with_stats(FeatureStats::compute_all(&train)?)?;
    }
    eprintln!(
        "{} training examples × {} features, {classes} classes; lr {} ({} schedule), weight decay {}, {} features",
        train.len(),
        train.feature_dim(),
        args.lr,
        args.schedule,
        args.weight_decay,
        if args.no_standardize { "raw" } else { "standardised" }
    );
    for epoch in 0..args.epochs {
        let t = Instant::now();
        let e = trainer.epoch(&train, epoch, |_, _| {})?;
        let secs = t.elapsed().as_secs_f64();
        if let Some(d) = trainer.divergence(e.loss()) {
            bail!(
                "diverged: {d} in epoch {} (lr {}): {}",
                epoch + 1,
                args.lr,
                if args.no_standardize {
                    "drop --no-standardize, or lower --lr"
                } else {
                    "lower --lr or raise --weight-decay"
                }
            );
        }
        let test_part = match &test {
            Some(t) => {
                let v = trainer.evaluate(t)?;
                format!("  test loss {:.4}  test acc {:.3}", v.loss(), v.accuracy())
            }
            None => String::new(),
        };
        println!(
            "epoch {:>3}  train loss {:.4}  train acc {:.3}{test_part}  ({:.0} ms, {:.0} examples/s)",
            epoch + 1,
            e.loss(),
            e.accuracy(),
            secs * 1e3,
            e.count as f64 / secs
        );
    }
    if let Some(out) = &args.out {
        save_head(out, &trainer, names.as_deref())?;
        println!("saved the head to {}", out.display());
    }
    Ok(())
}

/// Writes a trained head: its tensors, the standardisation it expects
/// (`logits = ((x − mean) / scale)·Wᵀ + b`), the class names, and
/// `head.json` saying which is which.
fn save_head(out: &Path, trainer: &Trainer, names: Option<&[String]>) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, t) in trainer.head.tensors() {
        write_npy_atomic(out.join(format!("{name}.npy")), &t)?;
    }
    if let Some(stats) = &trainer.stats {
        for (name, t) in stats.tensors() {
            write_npy_atomic(out.join(format!("{name}.npy")), &t)?;
        }
    }
    if let Some(names) = names {
        let text = names.join("\n") + "\n";
        lml_kernel::npy::publish_atomic(&out.join(lml_kernel::dataset::CLASS_LIST), |w| {
            std::io::Write::write_all(w, text.as_bytes())
        })?;
    }
    let manifest = serde_json::json!({
        "format": "lml-head/1",
        "classes": trainer.head.classes(),
        "features": trainer.head.feature_dim(),
        "standardized": trainer.stats.is_some(),
        "logits": if trainer.stats.is_some() {
            "((x - stats.mean) / stats.scale) · head.weightᵀ + head.bias"
        } else {
            "x · head.weightᵀ + head.bias"
        },
        "class_names": names.map_or(serde_json::Value::Null, |n| serde_json::json!(n)),
    });
    let text = serde_json::to_vec_pretty(&manifest)?;
    lml_kernel::npy::publish_atomic(&out.join("head.json"), |w| std::io::Write::write_all(w, &text))?;
    Ok(())
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The weight directory to use: the given one, or random weights for `cut`
/// generated once under `workdir`.
fn weights_or_random(weights: Option<&Path>, workdir: &Path, seed: u64, cut: Cut) -> Result<PathBuf> {
    if let Some(w) = weights {
        return Ok(w.to_path_buf());
    }
    let dir = workdir.join(format!("random-weights-{seed}-{}", format!("{cut:?}").to_lowercase()));
    if !dir.join(lml_kernel::weights::MANIFEST).exists() {
        std::fs::create_dir_all(workdir).with_context(|| format!("creating {}", workdir.display()))?;
        eprintln!("generating random VGG19 weights to {cut:?} in {} (no --weights given)", dir.display());
        let w = random_weights(seed, cut);
        WeightStore::write(&dir, MODEL, Preset::Torchvision, w.iter().map(|(n, a)| (n.clone(), a.view())))?;
    }
    Ok(dir)
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Writes `name_x.npy` / `name_y.npy` under `dir` unless they already exist.
fn ensure_images(dir: &Path, name: &str, n: usize, classes: usize, seed: u64) -> Result<ImageDataset> {
    let (xp, yp) = (dir.join(format!("{name}_x.npy")), dir.join(format!("{name}_y.npy")));
    let fresh = ImageDataset::open(&xp, &yp).ok().filter(|d| d.len() == n);
    if let Some(d) = fresh {
        return Ok(d);
    }
    let (x, y) = synth::images(n, classes, 32, seed);
    write_npy_atomic(&xp, &x)?;
    write_npy_atomic(&yp, &y)?;
    Ok(ImageDataset::open(&xp, &yp)?)
}

fn extract(vgg: &Vgg19, data: &ImageDataset, what: &str) -> Result<InMemoryFeatures> {
    let n = data.len();
    let mut features = Array2::<f32>::zeros((n, vgg.feature_dim()));
    let pb = bar(n as u64, what);
    let chunk = 32;
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let f = vgg.features(data.images().slice(s![start..end, .., .., ..]))?;
        features.slice_mut(s![start..end, ..]).assign(&f);
        pb.inc((end - start) as u64);
    }
    pb.finish();
    Ok(InMemoryFeatures { features, labels: data.labels().to_vec() })
}

fn demo(args: &DemoArgs, threads: usize) -> Result<()> {
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
    let train_f = extract(&vgg, &train, "train feats")?;
    let test_f = extract(&vgg, &test, "test feats")?;
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
