//! `lml train`, `lml status`, `lml stop`: the distributed job on the local runtime.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use lml_kernel::npy::write_npy_atomic;
use lml_kernel::optim::LrSchedule;
use lml_kernel::Cut;
use lml_lambda::event::{Event, JobId, StartEvent};
use lml_lambda::layout::JobDir;
use lml_lambda::progress::{JobStatus, LocalProgress, Progress, ProgressStore, RoundRecord};
use lml_lambda::services::{lambda_threads, SystemClock};
use lml_lambda::{DataSpec, JobSpec, LocalConfig, LocalRuntime, SyncMode};
use serde_json::json;

/// Every default of a job comes from [`JobSpec::default`] (one source: the
/// spec an event without fields gets is what `lml train` runs).
fn spec_default() -> JobSpec {
    JobSpec::default()
}

#[derive(Parser)]
pub struct TrainArgs {
    /// Storage root shared by all invocations (EFS on AWS, a folder here);
    /// data paths must lie under it.
    #[arg(long, default_value = "runs/local")]
    root: PathBuf,
    /// Job id (default: train-<unix seconds>).
    #[arg(long)]
    job: Option<String>,
    /// Restart this job from its last checkpoint instead of starting a new one.
    #[arg(long, conflicts_with = "job")]
    resume: Option<String>,
    /// Parallel workers per round.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Epochs (passes over the training data).
    #[arg(long, default_value_t = spec_default().epochs)]
    epochs: u64,
    /// Total rounds, overriding --epochs.
    #[arg(long)]
    rounds: Option<u64>,
    /// Examples per worker per SGD step (a round is one step over workers × batch).
    #[arg(long, default_value_t = spec_default().batch)]
    batch: usize,
    /// Examples per forward pass inside a worker (the unit of continuation).
    #[arg(long, default_value_t = spec_default().micro_batch)]
    micro_batch: usize,
    /// Base learning rate, for standardised features (every example's squared
    /// norm about 1, whatever the features' scale).
    #[arg(long, default_value_t = spec_default().lr)]
    lr: f32,
    /// SGD momentum.
    #[arg(long, default_value_t = spec_default().momentum)]
    momentum: f32,
    /// L2 regularisation of the head.
    #[arg(long, default_value_t = spec_default().weight_decay)]
    weight_decay: f32,
    /// Learning-rate schedule over the job's rounds: cosine (decays to 0) or constant.
    #[arg(long, default_value_t = spec_default().schedule)]
    schedule: LrSchedule,
    /// Train on the features as they are instead of standardised (per-feature
    /// mean and scale computed at start); the learning rate must then suit their scale.
    #[arg(long)]
    no_standardize: bool,
    /// gradient-sum (one large-batch step per round, the seed's) or model-average.
    #[arg(long, default_value_t = spec_default().sync, value_parser = parse_sync)]
    sync: SyncMode,
    /// SGD steps per worker per round (model-average).
    #[arg(long, default_value_t = spec_default().local_steps)]
    local_steps: usize,
    /// Stop when a round's loss (held-out if evaluated) reaches this.
    #[arg(long)]
    target_loss: Option<f64>,
    /// Seed of the example order (and of generated data).
    #[arg(long, default_value_t = spec_default().seed)]
    seed: u64,
    /// Function memory in MB: 1,769 MB buys one vCPU (compute thread), at most 6.
    #[arg(long, default_value_t = 3538)]
    memory: u32,
    /// Invocation time limit in seconds (Lambda allows up to 900); workers continue themselves before it.
    #[arg(long, default_value_t = 900.0)]
    time_limit: f64,
    /// Most invocations running at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Folder (under --root) with cached train_features.npy / train_y.npy
    /// (and test_* to evaluate), from `lml extract-features`.
    #[arg(long, conflicts_with = "images")]
    features: Option<PathBuf>,
    /// Folder (under --root) with train_x.npy / train_y.npy (and test_*),
    /// from `lml prepare-cifar10`: run through the frozen VGG19 at every step.
    #[arg(long, requires = "weights")]
    images: Option<PathBuf>,
    /// VGG19 weight folder (under --root) for --images.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Network input side for --images (multiple of 32).
    #[arg(long, default_value_t = 32)]
    input_size: usize,
    /// Feature cut for --images.
    #[arg(long, default_value = "fc7")]
    cut: Cut,
    /// Evaluate on at most this many held-out examples (all by default).
    #[arg(long)]
    eval_examples: Option<usize>,
    /// Training images to generate when neither --features nor --images is given.
    #[arg(long, default_value_t = 2000)]
    generate: usize,
}

fn parse_sync(s: &str) -> std::result::Result<SyncMode, String> {
    serde_json::from_value(json!(s)).map_err(|_| format!("{s:?}: expected gradient-sum or model-average"))
}

/// `path` relative to `root`, which it must lie under.
fn under_root(root: &Path, path: &Path, what: &str) -> Result<String> {
    let abs = |p: &Path| p.canonicalize().with_context(|| format!("{what} {}: not found", p.display()));
    let (root_abs, path_abs) = (abs(root)?, abs(path)?);
    let rel = path_abs.strip_prefix(&root_abs).map_err(|_| {
        anyhow::anyhow!(
            "{what} {} is not under the storage root {} (workers only see the root; move it or pass --root)",
            path.display(),
            root.display()
        )
    })?;
    Ok(rel.to_string_lossy().into_owned())
}

/// The data spec and optional eval spec from the arguments, generating a
/// learnable dataset's cached features under the root when none is given.
fn data_specs(args: &TrainArgs) -> Result<(DataSpec, Option<DataSpec>)> {
    let join = |dir: &str, file: &str| if dir.is_empty() { file.to_string() } else { format!("{dir}/{file}") };
    if let Some(images) = &args.images {
        let dir = under_root(&args.root, images, "--images")?;
        let weights = under_root(&args.root, args.weights.as_deref().expect("clap requires it"), "--weights")?;
        let spec = |split: &str| DataSpec {
            features: None,
            images: Some(join(&dir, &format!("{split}_x.npy"))),
            labels: join(&dir, &format!("{split}_y.npy")),
            weights: Some(weights.clone()),
            input_size: Some(args.input_size),
            cut: Some(args.cut),
        };
        let eval = images.join("test_x.npy").exists().then(|| spec("test"));
        return Ok((spec("train"), eval));
    }
    let dir = match &args.features {
        Some(f) => under_root(&args.root, f, "--features")?,
        None => generate(args)?,
    };
    let spec = |split: &str| {
        DataSpec::cached(join(&dir, &format!("{split}_features.npy")), join(&dir, &format!("{split}_y.npy")))
    };
    let eval = args.root.join(&dir).join("test_features.npy").exists().then(|| spec("test"));
    Ok((spec("train"), eval))
}

/// Generated images with learnable classes, through VGG19 (random weights)
/// to fc7, cached under `<root>/generated/`; reused on later runs.
fn generate(args: &TrainArgs) -> Result<String> {
    let dir = args.root.join("generated");
    let n = args.generate;
    let key = format!("n{n}-s{}", args.seed);
    let stamp = dir.join("features.key");
    if std::fs::read_to_string(&stamp).is_ok_and(|k| k == key) {
        return Ok("generated".into());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!(
        "no --features or --images: generating {n} + {} images with learnable classes in {}",
        n / 4,
        dir.display()
    );
    let train = crate::ensure_images(&dir, "train", n, 10, args.seed)?;
    let test = crate::ensure_images(&dir, "test", n / 4, 10, args.seed + 1)?;
    let weights = crate::weights_or_random(None, &dir, args.seed, Cut::Fc7)?;
    let vgg = lml_kernel::Vgg19::open(&weights, 32, Cut::Fc7)?;
    let t = Instant::now();
    for (split, data) in [("train", &train), ("test", &test)] {
        let f = crate::extract(&vgg, data, &format!("{split} feats"))?;
        write_npy_atomic(dir.join(format!("{split}_features.npy")), &f.features)?;
        write_npy_atomic(dir.join(format!("{split}_y.npy")), &ndarray::Array1::from(f.labels.clone()))?;
    }
    eprintln!("cached fc7 features of {} images in {:.1} s", train.len() + test.len(), t.elapsed().as_secs_f64());
    std::fs::write(&stamp, key)?;
    Ok("generated".into())
}

pub fn train(args: &TrainArgs) -> Result<()> {
    std::fs::create_dir_all(&args.root).with_context(|| format!("creating {}", args.root.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let config = LocalConfig {
            memory_mb: args.memory,
            time_limit_ms: (args.time_limit * 1000.0) as u64,
            concurrency: args.concurrency,
            faults: lml_lambda::FaultPlan::from_env()?,
            ..LocalConfig::default()
        };
        let rt = LocalRuntime::start(&args.root, SystemClock, config);
        let job = match &args.resume {
            Some(job) => {
                let job = JobId::new(job)?;
                let out = rt.call(&Event::Resume { job: job.clone() }.to_json()).await?;
                eprintln!("resume {job}: {out:?}");
                job
            }
            None => {
                let (data, eval) = data_specs(args)?;
                let spec = JobSpec {
                    data,
                    eval,
                    classes: None,
                    epochs: args.epochs,
                    rounds: args.rounds,
                    batch: args.batch,
                    micro_batch: args.micro_batch,
                    sync: args.sync,
                    local_steps: args.local_steps,
                    lr: args.lr,
                    momentum: args.momentum,
                    weight_decay: args.weight_decay,
                    schedule: args.schedule,
                    standardize: !args.no_standardize,
                    seed: args.seed,
                    target_loss: args.target_loss,
                    time_limit_ms: ((args.time_limit * 1000.0) as u64).min(lml_lambda::spec::LAMBDA_MAX_MS),
                    safety_ms: ((args.time_limit * 1000.0) as u64 / 10).min(5_000),
                    eval_examples: args.eval_examples,
                    ..spec_default()
                };
                let id = args.job.clone().unwrap_or_else(|| format!("train-{}", lml_lambda::services::Clock::now_ms(&SystemClock) / 1000));
                let job = JobId::new(&id)?;
                let start = Event::Start(StartEvent { job: job.clone(), workers: args.workers, spec: Some(serde_json::to_value(&spec)?) });
                // Synchronously, so a bad spec is reported here, not as a dead letter.
                rt.call(&start.to_json()).await?;
                job
            }
        };
        let jd = JobDir::new(&args.root, &job);
        let cfg = jd.read_config()?;
        eprintln!(
            "job {job}: {} workers × batch {} ({:?}), {} examples, {} rounds ({} per epoch), {} MB → {} thread(s) per invocation; folder {}",
            cfg.workers,
            cfg.spec.batch,
            cfg.spec.sync,
            cfg.examples,
            cfg.total_rounds,
            cfg.rounds_per_epoch,
            args.memory,
            lambda_threads(args.memory),
            jd.dir.display()
        );
        eprintln!(
            "lr {} ({} schedule), momentum {}, weight decay {}, {} features; {}",
            cfg.spec.lr,
            cfg.spec.schedule,
            cfg.spec.momentum,
            cfg.spec.weight_decay,
            if cfg.spec.standardize { "standardised" } else { "raw" },
            classes_line(cfg.classes, &cfg.class_names)
        );
        let store = LocalProgress::new(&args.root);
        let bar = ProgressBar::new(cfg.total_rounds);
        bar.set_style(
            ProgressStyle::with_template("round {pos}/{len} [{bar:30}] {msg} ({elapsed})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        let started = Instant::now();
        let mut shown = 0usize;
        let idle = rt.idle();
        tokio::pin!(idle);
        loop {
            let done = tokio::select! {
                _ = &mut idle => true,
                _ = tokio::time::sleep(Duration::from_millis(250)) => false,
            };
            let p = store.load(&job).await?;
            for r in p.rounds.values().skip(shown) {
                bar.suspend(|| println!("{}", round_line(r)));
            }
            shown = p.rounds.len();
            bar.set_position(shown as u64);
            if let Some(r) = p.rounds.values().last() {
                bar.set_message(format!("loss {:.4} acc {:.3}", r.train.loss, r.train.accuracy));
            }
            if done {
                break;
            }
        }
        bar.finish_and_clear();
        let p = store.load(&job).await?;
        let secs = started.elapsed().as_secs_f64();
        let examples: usize = p.rounds.values().map(|r| r.train.examples).sum();
        println!(
            "{} rounds in {secs:.1} s: {:.2} rounds/s, {:.0} examples/s; {} invocations",
            p.rounds.len(),
            p.rounds.len() as f64 / secs,
            examples as f64 / secs,
            rt.invocations()
        );
        let dead = rt.dead_letters();
        if !jd.final_json().exists() {
            for d in &dead {
                eprintln!("failed for good: {} — {}", d.event, d.error);
            }
            bail!("job {job} stopped before the end; fix the cause and run `lml train --root {} --resume {job}`", args.root.display());
        }
        print_summary(&p);
        if let Some(job_record) = p.job.as_ref().filter(|j| j.status == JobStatus::Failed) {
            bail!("job {job} failed: {}", job_record.reason.as_deref().unwrap_or("no reason recorded"));
        }
        Ok(())
    })
}

/// `10 classes: airplane, automobile, …` (at most 20 names shown).
fn classes_line(count: usize, names: &[String]) -> String {
    const SHOWN: usize = 20;
    if names.is_empty() {
        return format!("{count} classes");
    }
    let more = if names.len() > SHOWN { format!(", … ({} more)", names.len() - SHOWN) } else { String::new() };
    format!("{count} classes: {}{more}", names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", "))
}

fn round_line(r: &RoundRecord) -> String {
    let eval = r.eval.map_or(String::new(), |e| format!("  eval loss {:.4} acc {:.3}", e.loss, e.accuracy));
    format!(
        "round {:>4} (epoch {:>2})  loss {:.4}  acc {:.3}{eval}  {:>6.0} img/s  combine {} ms",
        r.round,
        r.epoch,
        r.train.loss,
        r.train.accuracy,
        r.train.examples as f64 / (r.round_ms.max(1) as f64 / 1e3),
        r.combine_ms
    )
}

fn print_summary(p: &Progress) {
    let Some(job) = &p.job else {
        println!("no job record yet");
        return;
    };
    let status = match job.status {
        JobStatus::Running => "running",
        JobStatus::Finished => "finished",
        JobStatus::Stopped => "stopped",
        JobStatus::Failed => "failed",
    };
    let last = p.rounds.values().last();
    println!(
        "job {}: {status}{}, {} of {} rounds ({} workers, {} examples)",
        job.job,
        job.reason.as_deref().map_or(String::new(), |r| format!(" ({r})")),
        p.rounds.len(),
        job.total_rounds,
        job.workers,
        job.examples
    );
    if job.classes > 0 {
        println!("{}", classes_line(job.classes, &job.class_names));
    }
    if let Some(r) = last {
        println!("last round: training loss {:.4}, accuracy {:.3}", r.train.loss, r.train.accuracy);
    }
    match job.eval.or_else(|| p.rounds.values().rev().find_map(|r| r.eval)) {
        Some(e) => println!(
            "{} accuracy {:.3} (loss {:.4}) on {} held-out examples",
            if job.status == JobStatus::Running { "latest" } else { "final" },
            e.accuracy,
            e.loss,
            e.examples
        ),
        None => println!("no held-out evaluation (no test split)"),
    }
}

#[derive(Parser)]
pub struct StatusArgs {
    /// The job id.
    job: String,
    /// Storage root.
    #[arg(long, default_value = "runs/local")]
    root: PathBuf,
    /// Also list every round.
    #[arg(long)]
    rounds: bool,
    /// Read the progress from this DynamoDB table (a job on AWS) instead of the job folder.
    #[arg(long)]
    table: Option<String>,
    /// DynamoDB endpoint URL (an emulator); default: AWS's, from the environment's region.
    #[arg(long, requires = "table")]
    endpoint_url: Option<String>,
}

pub fn status(args: &StatusArgs) -> Result<()> {
    let job = JobId::new(&args.job)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let p = match &args.table {
        Some(table) => runtime.block_on(async {
            let store = lml_lambda::aws::DynamoProgress::from_env(table, args.endpoint_url.as_deref()).await;
            let p = store.load(&job).await.with_context(|| format!("reading job {job} from table {table}"))?;
            if p.job.is_none() {
                bail!("table {table} has no job {job}");
            }
            Ok(p)
        })?,
        None => {
            let jd = JobDir::new(&args.root, &job);
            jd.read_config().with_context(|| format!("job {job} under {}", args.root.display()))?;
            runtime.block_on(LocalProgress::new(&args.root).load(&job))?
        }
    };
    if args.rounds {
        for r in p.rounds.values() {
            println!("{}", round_line(r));
        }
    }
    print_summary(&p);
    Ok(())
}

#[derive(Parser)]
pub struct StopArgs {
    /// The job id.
    job: String,
    /// Storage root.
    #[arg(long, default_value = "runs/local")]
    root: PathBuf,
}

pub fn stop(args: &StopArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let rt = LocalRuntime::start(&args.root, SystemClock, LocalConfig::default());
        rt.call(&json!({"stop": true, "job": args.job})).await?;
        println!("job {}: stop requested; it ends after the round in progress", args.job);
        Ok(())
    })
}
