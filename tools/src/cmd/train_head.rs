//! `lml train-head`: the softmax head on cached features in one process, saved as .npy.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use lml_kernel::npy::write_npy_atomic;
use lml_kernel::optim::Sgd;
use lml_kernel::trainer::{FeatureSource, Trainer};
use lml_lambda::JobSpec;
use lml_tools::job::DEFAULT_WORKERS;

#[derive(Parser)]
pub struct Args {
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
    /// Mini-batch size: by default, one step of the distributed job's default
    /// round (its default workers × batch per worker).
    #[arg(long, default_value_t = DEFAULT_WORKERS * JobSpec::default().batch)]
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
    #[arg(long, default_value_t = JobSpec::default().seed)]
    seed: u64,
    /// Folder to save the head into: head.weight.npy, head.bias.npy, the
    /// standardisation (stats.mean.npy, stats.scale.npy), classes.txt, head.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(args: &Args) -> Result<()> {
    let (pool, _) = lml_tools::bars::pool(args.threads)?;
    pool.install(|| train_head(args))
}

fn train_head(args: &Args) -> Result<()> {
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
