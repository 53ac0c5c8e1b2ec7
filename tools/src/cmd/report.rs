//! `lml report`: one self-contained HTML page about a trained job — its
//! spec, its timings (what `lml status` reads), what it would cost on AWS
//! Lambda (the model `lml plan` uses, both architectures), its training
//! curves (`lml plot`), and, on a split of images, its accuracy, confusion
//! heat map and prediction grid (`lml evaluate --heatmap`, `lml predict
//! --grid`). A section whose inputs are missing says why instead of failing
//! the page; a job that does not exist fails before anything is written.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use lml_lambda::cost::{compute_threads, seconds_per_example, vcpu_share, JobShape, Prices};
use lml_lambda::event::JobId;
use lml_lambda::layout::JobDir;
use lml_lambda::progress::{LocalProgress, Progress, ProgressStore};
use lml_lambda::spec::Forward;
use lml_lambda::JobConfig;
use lml_tools::calibrate::{default_path, Arch, CalibrationFile};
use lml_tools::model::{classify_dataset, confusion, load_job, open_split, split_grid, Overrides};
use lml_tools::page::{facts, missing, para, picture, pre, table, Page, Section};
use lml_tools::pictures::confusion::confusion_matrix;
use lml_tools::pictures::curves::{training_curves, Curves};
use lml_tools::pictures::Format;
use lml_tools::report::{extract_lines, held_out, status_word, summary_lines};

use crate::plan::{speed, Work};

#[derive(Parser)]
pub struct Args {
    /// The job id.
    job: String,
    /// Storage root the job is under (as given to `lml train`).
    #[arg(long, default_value = lml_tools::job::DEFAULT_ROOT)]
    root: PathBuf,
    /// Folder with {split}_x.npy and {split}_y.npy (from prepare-cifar10) to
    /// evaluate on (default: the held-out images the job's spec names, if any).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The split of --data.
    #[arg(long, default_value = "test", requires = "data")]
    split: String,
    /// Evaluate on the first N images only.
    #[arg(long)]
    limit: Option<usize>,
    /// VGG19 weight folder the job's features were extracted with, when the
    /// job does not record it or it has moved (as for `lml evaluate`).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Function memory (MB) the cost is estimated for (the job does not
    /// record one; default: `lml train`'s).
    #[arg(long, default_value_t = lml_lambda::LocalConfig::default().memory_mb)]
    memory: u32,
    /// Worker threads for the evaluation (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Output file (default: report.html in the job's folder, <root>/jobs/<job>/).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<()> {
    let job = JobId::new(&args.job)?;
    let jd = JobDir::new(&args.root, &job);
    if !jd.exists() {
        if lml_lambda::pipeline::phase_one(&args.root, &job).is_some() {
            bail!("job {job} is still extracting its features: nothing to report yet (`lml status {job}`)");
        }
        bail!("no job {job} under {}", args.root.display());
    }
    let cfg = jd.read_config().with_context(|| format!("job {job} under {}", args.root.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let store = LocalProgress::new(&args.root);
    let p = runtime.block_on(store.load(&job)).with_context(|| format!("reading the progress of job {job}"))?;
    let mut phases = Vec::new();
    for split in ["train", "test"] {
        if let Ok(sub) = lml_lambda::pipeline::sub_job(&job, split) {
            if lml_lambda::extract::is_extract_job(&args.root, &sub) {
                phases.push(runtime.block_on(store.load(&sub)).with_context(|| format!("reading job {sub}"))?);
            }
        }
    }
    let out = args.out.clone().unwrap_or_else(|| jd.dir.join("report.html"));

    let (evaluation, grid) = data_sections(args, &cfg);
    let page = Page {
        title: format!("lml report: job {job}"),
        // Pictures first: what a reader looks for before the numbers.
        sections: vec![
            overview(&p),
            curves(&job, &p),
            evaluation,
            grid,
            timings(&p, &phases),
            cost(args, &cfg),
            spec_section(&cfg)?,
        ],
    };
    page.write(&out).with_context(|| format!("writing the report of job {job}"))?;
    println!("wrote {}", out.display());
    Ok(())
}

fn section(id: &'static str, heading: &str, body: String) -> Section {
    Section { id, heading: heading.into(), body }
}

/// `lml status`'s summary.
fn overview(p: &Progress) -> Section {
    section("overview", "Overview", pre(&summary_lines(p).join("\n")))
}

/// The spec's main facts, then `config.json` as stored.
fn spec_section(cfg: &JobConfig) -> Result<Section> {
    let s = &cfg.spec;
    let epochs = cfg.total_rounds as f64 / cfg.rounds_per_epoch.max(1) as f64;
    let names = if cfg.class_names.is_empty() { "(no class list)".to_string() } else { cfg.class_names.join(", ") };
    let data = |d: &lml_lambda::DataSpec| {
        d.images.as_deref().or(d.features.as_deref()).map_or(d.labels.clone(), |x| format!("{x} (labels {})", d.labels))
    };
    let mut rows = vec![
        ("job", cfg.job.clone()),
        ("workers", cfg.workers.to_string()),
        ("training examples", cfg.examples.to_string()),
        ("feature length", cfg.feature_dim.to_string()),
        ("classes", format!("{}: {names}", cfg.classes)),
        ("epochs", format!("{epochs}")),
        ("rounds", format!("{} ({} per epoch)", cfg.total_rounds, cfg.rounds_per_epoch)),
        ("batch per worker", format!("{} (micro-batch {}, {} local step(s))", s.batch, s.micro_batch, s.local_steps)),
        ("synchronisation", s.sync.to_string()),
        ("learning rate", format!("{} ({} schedule)", s.lr, s.schedule)),
        ("momentum, weight decay", format!("{}, {}", s.momentum, s.weight_decay)),
        ("features", if s.standardize { "standardised".into() } else { "raw".into() }),
        ("training data", data(&s.data)),
    ];
    rows.push(("held-out data", s.eval.as_ref().map_or("none".into(), data)));
    let json = serde_json::to_string_pretty(cfg).context("serialising the job's config")?;
    Ok(section("spec", "Spec", facts(&rows) + &para("config.json as stored:") + &pre(&json)))
}

/// Milliseconds as seconds.
fn secs(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1e3)
}

/// Wall time, rounds and invocations from the progress records, every round
/// in a table, and the extraction sub-jobs' lines.
fn timings(p: &Progress, phases: &[Progress]) -> Section {
    let Some(j) = &p.job else {
        return section("timings", "Timings", missing("the job has no progress record yet: no timings"));
    };
    let mut body = String::new();
    let now = lml_lambda::services::Clock::now_ms(&lml_lambda::services::SystemClock);
    let extraction: Vec<String> = phases.iter().filter_map(|q| extract_lines(q, now)).flatten().collect();
    if !extraction.is_empty() {
        body += &para("Feature extraction (before the rounds):");
        body += &pre(&extraction.join("\n"));
    }
    let rounds: Vec<_> = p.rounds.values().collect();
    let round_ms: Vec<u64> = rounds.iter().map(|r| r.round_ms).collect();
    let total_round_ms: u64 = round_ms.iter().sum();
    let worker_invocations: u64 = p.workers.values().map(|w| 1 + w.continuations).sum();
    let compute_ms: u64 = p.workers.values().map(|w| w.compute_ms).sum();
    let continuations: u64 = p.workers.values().map(|w| w.continuations).sum();
    let wall = j.finished_ms.map(|f| f.saturating_sub(j.started_ms));
    let mut rows = vec![
        ("status", status_word(j.status).to_string()),
        ("started (unix ms)", j.started_ms.to_string()),
        ("total wall time", wall.map_or("still running".into(), |w| format!("{} (start to the last record)", secs(w)))),
        ("rounds recorded", format!("{} of {}", rounds.len(), j.total_rounds)),
    ];
    if !rounds.is_empty() {
        let min = round_ms.iter().min().copied().unwrap_or(0);
        let max = round_ms.iter().max().copied().unwrap_or(0);
        rows.push((
            "round time",
            format!(
                "mean {}, min {}, max {} ({} over all rounds)",
                secs(total_round_ms / rounds.len() as u64),
                secs(min),
                secs(max),
                secs(total_round_ms)
            ),
        ));
        let combine: u64 = rounds.iter().map(|r| r.combine_ms).sum();
        rows.push(("combine time", format!("{} over all rounds", secs(combine))));
    }
    rows.push(("worker compute", format!("{} over all workers and rounds", secs(compute_ms))));
    rows.push((
        "invocations",
        format!(
            "{} ({worker_invocations} worker invocations, {continuations} of them continuations; {} combines; 1 start)",
            worker_invocations + rounds.len() as u64 + 1,
            rounds.len()
        ),
    ));
    if let Some(e) = held_out(p) {
        rows.push(("held-out accuracy", format!("{:.4} (loss {:.4}) on {} examples", e.accuracy, e.loss, e.examples)));
    }
    body += &facts(&rows);
    let f4 = |v: f64| format!("{v:.4}");
    let table_rows: Vec<Vec<String>> = rounds
        .iter()
        .map(|r| {
            vec![
                r.round.to_string(),
                r.epoch.to_string(),
                f4(r.train.loss),
                f4(r.train.accuracy),
                r.eval.map_or(String::new(), |e| f4(e.loss)),
                r.eval.map_or(String::new(), |e| f4(e.accuracy)),
                r.round_ms.to_string(),
                r.worker_ms.to_string(),
                r.combine_ms.to_string(),
                format!("{:.0}", r.train.examples as f64 / (r.round_ms.max(1) as f64 / 1e3)),
            ]
        })
        .collect();
    body += &table(
        &[
            "round",
            "epoch",
            "loss",
            "accuracy",
            "held-out loss",
            "held-out accuracy",
            "round ms",
            "worker ms",
            "combine ms",
            "img/s",
        ],
        &table_rows,
    );
    section("timings", "Timings", body)
}

/// The planner's estimate for the job's workers, rounds and examples at
/// `--memory`, on both architectures (`lml plan`'s model and speeds).
fn cost(args: &Args, cfg: &JobConfig) -> Section {
    match cost_body(args, cfg) {
        Ok(body) => section("cost", "Cost estimate on AWS Lambda", body),
        Err(e) => section("cost", "Cost estimate on AWS Lambda", missing(&format!("no estimate: {e:#}"))),
    }
}

fn cost_body(args: &Args, cfg: &JobConfig) -> Result<String> {
    let memory = args.memory;
    if !(lml_lambda::cost::MIN_MEMORY_MB..=lml_lambda::cost::MAX_MEMORY_MB).contains(&memory) {
        bail!(
            "--memory {memory}: Lambda takes {} to {} MB",
            lml_lambda::cost::MIN_MEMORY_MB,
            lml_lambda::cost::MAX_MEMORY_MB
        );
    }
    let d = &cfg.spec.data;
    let every_step = d.images.is_some() && d.forward == Some(Forward::EveryStep);
    let (work, bytes, what) = if every_step {
        match d.input_size() {
            224 => (Work::Image224, 3072.0, "images through VGG19 at every step, 224×224"),
            32 => (Work::Image32, 3072.0, "images through VGG19 at every step, 32×32"),
            s => bail!("input size {s}: the planner has speeds for 224 and 32 only"),
        }
    } else {
        (Work::Feature, 4.0 * cfg.feature_dim as f64, "cached features")
    };
    let epochs = cfg.total_rounds as f64 / cfg.rounds_per_epoch.max(1) as f64;
    let examples = (cfg.examples as f64 * epochs).round() as u64;
    let path = default_path()?;
    let file = CalibrationFile::load(&path)?;
    let prices = Prices::default();
    let head = cfg.feature_dim as f64 * cfg.classes as f64 + cfg.classes as f64;
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut sources = Vec::new();
    for arch in Arch::ALL {
        let (per_vcpu, source) = speed(work, arch, &file);
        sources.push(format!("{}: {per_vcpu:.3e} s per example on one vCPU, {source}", arch.lambda_name()));
        let shape = JobShape {
            workers: cfg.workers,
            memory_mb: memory,
            arm64: arch == Arch::Aarch64,
            examples,
            rounds: cfg.total_rounds,
            seconds_per_example: seconds_per_example(per_vcpu, memory),
            worker_overhead_s: lml_lambda::cost::DEFAULT_WORKER_OVERHEAD_S,
            combine_s: lml_lambda::cost::DEFAULT_COMBINE_S,
            time_limit_s: cfg.spec.time_limit_ms as f64 / 1e3,
            bytes_per_example: bytes,
            parameter_bytes: 2.0 * 4.0 * head,
            stored_gb: cfg.examples as f64 * bytes / 1e9,
            stored_days: 1.0,
            endpoint_azs: 2,
        };
        let e = shape.estimate(&prices);
        rows.push(vec![
            arch.lambda_name().to_string(),
            format!("{:.4}", e.hours * 60.0),
            format!("{:.1}", e.gb_seconds),
            e.requests.to_string(),
            format!("${:.4}", e.lambda_compute),
            format!("${:.4}", e.lambda_requests),
            format!("${:.4}", e.dynamodb),
            format!("${:.4}", e.efs_storage + e.efs_throughput),
            format!("${:.4}", e.endpoint),
            format!("${:.4}", e.total),
        ]);
    }
    let intro = format!(
        "{} workers × {memory} MB ({} compute thread(s) on {:.2} vCPUs), {} examples × {epochs} epoch(s) from {what}: {} rounds. Prices: us-east-1 list prices, data kept one day on EFS, endpoint in 2 AZs (as `lml plan`; check current prices).",
        cfg.workers,
        compute_threads(memory),
        vcpu_share(memory),
        cfg.examples,
        cfg.total_rounds
    );
    Ok(para(&intro)
        + &table(
            &[
                "architecture",
                "wall time (min)",
                "GB-s",
                "invocations",
                "Lambda compute",
                "Lambda requests",
                "DynamoDB",
                "EFS",
                "endpoint",
                "total",
            ],
            &rows,
        )
        + &para(&format!("Speeds (calibration file {}):", path.display()))
        + &pre(&sources.join("\n")))
}

/// `lml plot`'s picture, as an inline SVG.
fn curves(job: &JobId, p: &Progress) -> Section {
    let body = if p.rounds.is_empty() {
        missing("no rounds recorded yet: no curves")
    } else {
        match training_curves(&Curves::from_progress(job.as_str(), p), Format::Svg) {
            Ok(pic) => picture(&pic, "training curves"),
            Err(e) => missing(&format!("no curves: {e}")),
        }
    };
    section("curves", "Training curves", body)
}

/// The folder and split of the images to evaluate on: `--data`, else the
/// held-out images the job trained against — those its held-out extraction
/// sub-job read (a job on images), or those its spec names (a job that
/// reads images at every step, or held-out labels with `{split}_x.npy`
/// beside them).
fn images_to_evaluate(args: &Args, cfg: &JobConfig) -> Result<(PathBuf, String), String> {
    if let Some(dir) = &args.data {
        return Ok((dir.clone(), args.split.clone()));
    }
    let Some(eval) = &cfg.spec.eval else {
        return Err("the job's spec names no held-out data, and no --data DIR was given".into());
    };
    let job = JobId::new(&args.job).map_err(|e| e.to_string())?;
    let sub =
        lml_lambda::pipeline::sub_job(&job, "test").ok().filter(|s| lml_lambda::extract::is_extract_job(&args.root, s));
    let images = match (sub, &eval.images) {
        (Some(sub), _) => {
            let x = lml_lambda::extract::read_config(&JobDir::new(&args.root, &sub)).map_err(|e| e.to_string())?;
            args.root.join(x.spec.images)
        }
        (None, Some(images)) => args.root.join(images),
        (None, None) => {
            let labels = args.root.join(&eval.labels);
            let name = labels.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            match name.strip_suffix("_y.npy") {
                Some(split) => labels.with_file_name(format!("{split}_x.npy")),
                None => {
                    return Err(format!(
                        "the held-out labels {} are not a prepared split ({{split}}_y.npy); give --data DIR",
                        labels.display()
                    ))
                }
            }
        }
    };
    let name = images.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let Some(split) = name.strip_suffix("_x.npy") else {
        return Err(format!(
            "the held-out images {} are not a prepared split ({{split}}_x.npy); give --data DIR",
            images.display()
        ));
    };
    if !images.is_file() {
        return Err(format!("the job's held-out images {} are not there; give --data DIR", images.display()));
    }
    let dir = images.parent().unwrap_or(Path::new(".")).to_path_buf();
    Ok((dir, split.to_string()))
}

/// The evaluation section (accuracy, per-class scores, confusion heat map)
/// and the prediction grid, or both saying why there is none.
fn data_sections(args: &Args, cfg: &JobConfig) -> (Section, Section) {
    const EVAL: (&str, &str) = ("evaluation", "Evaluation");
    const GRID: (&str, &str) = ("predictions", "Predictions");
    let why = |reason: String| {
        (
            section(EVAL.0, EVAL.1, missing(&format!("no evaluation: {reason}"))),
            section(GRID.0, GRID.1, missing(&format!("no prediction grid: {reason}"))),
        )
    };
    let (dir, split) = match images_to_evaluate(args, cfg) {
        Ok(x) => x,
        Err(reason) => return why(reason),
    };
    let run = || -> Result<(Section, Section)> {
        let (pool, _) = lml_tools::bars::pool(args.threads)?;
        pool.install(|| {
            let overrides = Overrides { weights: args.weights.clone(), ..Overrides::default() };
            let m = load_job(&args.root, &args.job, &overrides)?;
            let names = m.classifier.classes().to_vec();
            let data = open_split(&dir, &split, names.len())?;
            let n = data.len().min(args.limit.unwrap_or(usize::MAX));
            let preds = classify_dataset(&m.classifier, &data, args.limit, &mut |_| {})?;
            let c = confusion(&names, &data.labels()[..n], &preds);
            let where_ = format!("{n} images of split {split} of {}", dir.display());
            let title = format!("job {}: {split} of {} ({n} images)", m.job, dir.display());
            let heat = confusion_matrix(&c.matrix, &c.names, &title, Format::Png)?;
            let eval = para(&format!(
                "accuracy {:.4} ({} of {} correct) on {where_}, with the head after {} rounds",
                c.accuracy(),
                c.correct(),
                c.total(),
                m.summary.rounds
            )) + &picture(&heat, "confusion matrix")
                + &pre(&c.to_text());
            let title = format!("job {}: {split} of {}", m.job, dir.display());
            let grid = split_grid(&data, &preds, &names, &title, Format::Png)?;
            let shown = preds.len().min(lml_tools::model::GRID_IMAGES);
            let grid = para(&format!("the first {shown} of {where_}; wrong ones framed in red"))
                + &picture(&grid, "prediction grid");
            Ok((section(EVAL.0, EVAL.1, eval), section(GRID.0, GRID.1, grid)))
        })
    };
    run().unwrap_or_else(|e| why(format!("{e:#}")))
}
