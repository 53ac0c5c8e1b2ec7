//! `lml train`: the distributed job on the local runtime, with a live progress display.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use lml_kernel::Cut;
use lml_lambda::event::{Event, JobId, StartEvent};
use lml_lambda::layout::JobDir;
use lml_lambda::progress::{JobStatus, LocalProgress, ProgressStore};
use lml_lambda::services::{lambda_threads, SystemClock};
use lml_lambda::{DataSpec, LocalConfig, LocalRuntime};
use lml_tools::job::{DataArgs, JobArgs, DEFAULT_WORKERS};
use lml_tools::report::{classes_line, print_summary, round_line};
use lml_tools::work::{ensure_images, weights_or_random};

#[derive(Parser)]
pub struct Args {
    /// Storage root shared by all invocations (EFS on AWS, a folder here);
    /// data paths must lie under it.
    #[arg(long, default_value = lml_tools::job::DEFAULT_ROOT)]
    root: PathBuf,
    /// Job id (default: train-<unix seconds>).
    #[arg(long)]
    job: Option<String>,
    /// Restart this job from its last checkpoint instead of starting a new one.
    #[arg(long, conflicts_with = "job")]
    resume: Option<String>,
    /// Parallel workers per round.
    #[arg(long, default_value_t = DEFAULT_WORKERS)]
    workers: usize,
    /// Function memory in MB: 1,769 MB buys one vCPU (compute thread), at most 6.
    #[arg(long, default_value_t = 3538)]
    memory: u32,
    /// Most invocations running at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The data (folders under --root); neither --features nor --images: a
    /// generated learnable dataset.
    #[command(flatten)]
    data: DataArgs,
    /// Training images to generate when neither --features nor --images is given.
    #[arg(long, default_value_t = 2000)]
    generate: usize,
    #[command(flatten)]
    spec: JobArgs,
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

/// The data spec and optional eval spec from the arguments. With neither
/// `--features` nor `--images`, a learnable dataset of images (and random
/// VGG19 weights to fc7) is generated under `<root>/generated/` and the job
/// runs on it as on any images: its workers extract the features first.
fn data_specs(args: &Args) -> Result<(DataSpec, Option<DataSpec>)> {
    let data = &args.data;
    let (dir, weights) = match (&data.images, &data.features) {
        (Some(images), _) => {
            let weights = data.weights.as_deref().expect("clap requires it");
            (under_root(&args.root, images, "--images")?, under_root(&args.root, weights, "--weights")?)
        }
        (None, Some(f)) => {
            let dir = under_root(&args.root, f, "--features")?;
            let eval = args.root.join(&dir).join("test_features.npy").exists().then(|| data.split(&dir, None, "test"));
            return Ok((data.split(&dir, None, "train"), eval));
        }
        (None, None) => generate(args)?,
    };
    let eval = args.root.join(&dir).join("test_x.npy").exists().then(|| data.split(&dir, Some(&weights), "test"));
    Ok((data.split(&dir, Some(&weights), "train"), eval))
}

/// Generated images with learnable classes (`--generate` + a quarter as many
/// held out) and random VGG19 weights to fc7, under `<root>/generated/`,
/// kept for later runs: the folder and the weights, relative to the root.
fn generate(args: &Args) -> Result<(String, String)> {
    let dir = args.root.join("generated");
    let n = args.generate;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let t = Instant::now();
    let train = ensure_images(&dir, "train", n, 10, args.spec.seed)?;
    let test = ensure_images(&dir, "test", n / 4, 10, args.spec.seed + 1)?;
    let weights = weights_or_random(None, &dir, args.spec.seed, Cut::Fc7)?;
    eprintln!(
        "no --features or --images: {} + {} generated images with learnable classes and random VGG19 weights in {} ({:.1} s)",
        train.len(),
        test.len(),
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    let rel = |p: &Path| under_root(&args.root, p, "generated data");
    Ok((rel(&dir)?, rel(&weights)?))
}

/// A job on images first extracts their features on its workers (its
/// extraction sub-jobs, [`lml_lambda::pipeline`]): shows their progress
/// until the training job exists. Returns whether it does (false: the
/// runtime went idle first, the extraction died).
async fn extract_first(rt: &LocalRuntime<SystemClock, LocalProgress>, root: &Path, job: &JobId) -> Result<bool> {
    let jd = JobDir::new(root, job);
    let store = LocalProgress::new(root);
    let mut shown: Option<(String, ProgressBar)> = None;
    let idle = rt.idle();
    tokio::pin!(idle);
    let t = Instant::now();
    loop {
        if jd.exists() {
            break;
        }
        let done = tokio::select! {
            _ = &mut idle => true,
            _ = tokio::time::sleep(Duration::from_millis(250)) => false,
        };
        for split in ["test", "train"] {
            let sub = lml_lambda::pipeline::sub_job(job, split)?;
            if !lml_lambda::extract::is_extract_job(root, &sub) {
                continue;
            }
            let p = store.load(&sub).await?;
            let Some(x) = &p.extract else { break };
            if shown.as_ref().is_none_or(|(s, _)| s != split) {
                if let Some((_, pb)) = shown.take() {
                    pb.finish();
                }
                eprintln!(
                    "job {job}: extracting the {split} features first on {} workers ({} images, {} shards; job {sub})",
                    x.workers, x.images, x.shards
                );
                shown = Some((split.to_string(), lml_tools::bars::image_bar(x.images as u64, split)));
            }
            if let Some((_, pb)) = &shown {
                pb.set_position(p.shards.values().map(|s| s.images).sum::<usize>() as u64);
            }
            break;
        }
        if done {
            break;
        }
    }
    if let Some((_, pb)) = shown {
        pb.finish();
        eprintln!("features extracted in {:.1} s", t.elapsed().as_secs_f64());
    }
    Ok(jd.exists())
}

pub fn run(args: &Args) -> Result<()> {
    std::fs::create_dir_all(&args.root).with_context(|| format!("creating {}", args.root.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let config = LocalConfig {
            memory_mb: args.memory,
            time_limit_ms: args.spec.time_limit_ms(),
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
                let spec = args.spec.spec(data, eval);
                let id = args.job.clone().unwrap_or_else(|| format!("train-{}", lml_lambda::services::Clock::now_ms(&SystemClock) / 1000));
                let job = JobId::new(&id)?;
                let start = Event::Start(StartEvent { job: job.clone(), workers: args.workers, spec });
                // Synchronously, so a bad spec is reported here, not as a dead letter.
                rt.call(&start.to_json()).await?;
                job
            }
        };
        let jd = JobDir::new(&args.root, &job);
        if !extract_first(&rt, &args.root, &job).await? {
            for d in rt.dead_letters() {
                eprintln!("failed for good: {} — {}", d.event, d.error);
            }
            bail!(
                "job {job} stopped while extracting its features; fix the cause and run `lml train --root {} --resume {job}`",
                args.root.display()
            );
        }
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
