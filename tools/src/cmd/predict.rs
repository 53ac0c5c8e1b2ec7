//! `lml predict`: classify image files, or a prepared split, with a finished job's classifier.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use lml_tools::model::{classify_dataset, classify_files, open_split, split_grid, JobModel, ModelArgs, Prediction};
use lml_tools::pictures::Format;
use serde_json::{json, Value};

#[derive(Parser)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Image files (PNG or JPEG, any size) to classify.
    #[arg(conflicts_with = "data", required_unless_present = "data")]
    images: Vec<PathBuf>,
    /// Classify a prepared split instead: the folder with {split}_x.npy and
    /// {split}_y.npy (from prepare-cifar10).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The split of --data.
    #[arg(long, default_value = "test", requires = "data")]
    split: String,
    /// Classify only the first N images of the split.
    #[arg(long, requires = "data")]
    limit: Option<usize>,
    /// Show the K most probable classes.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Print one JSON document (nothing else on stdout).
    #[arg(long)]
    json: bool,
    /// Also draw the first images of the split (at most 30) with their
    /// predicted and true classes, wrong ones marked, as the seed's Fig. 13
    /// (`.png` or `.svg`).
    #[arg(long, value_name = "FILE", requires = "data")]
    grid: Option<PathBuf>,
}

/// `{"class": c, "name": …, "probability": p}` for each of the top `k`.
fn top_json(m: &JobModel, p: &Prediction, k: usize) -> Value {
    let names = m.classifier.classes();
    p.top(k).iter().map(|&(c, pr)| json!({"class": c, "name": names[c], "probability": pr})).collect()
}

/// `name 0.8123, name 0.1000, …`
fn top_text(m: &JobModel, p: &Prediction, k: usize) -> String {
    let names = m.classifier.classes();
    p.top(k).iter().map(|&(c, pr)| format!("{} {pr:.4}", names[c])).collect::<Vec<_>>().join(", ")
}

/// What the JSON output says about the model.
fn model_json(m: &JobModel) -> Value {
    let c = &m.classifier;
    json!({
        "job": m.job.as_str(),
        "params": m.params,
        "weights": m.weights,
        "input_size": c.vgg().input_size(),
        "cut": c.vgg().cut(),
        "preset": c.vgg().preset(),
        "image_size": c.image_size().map(|(h, w)| [h, w]),
        "standardized": c.stats().is_some(),
        "classes": c.classes(),
    })
}

/// Writes `text` to stdout in one go; a closed pipe (`lml predict … | head`)
/// is not an error.
pub(crate) fn print_all(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

pub fn run(args: &Args) -> Result<()> {
    let (pool, _) = lml_tools::bars::pool(args.model.threads)?;
    pool.install(|| predict(args))
}

fn predict(args: &Args) -> Result<()> {
    if args.top == 0 {
        bail!("--top 0: show at least one class");
    }
    let m = args.model.load()?;
    let names = m.classifier.classes();
    let k = args.top.min(names.len());
    let Some(dir) = &args.data else {
        let preds = classify_files(&m.classifier, &args.images)?;
        return if args.json {
            let items: Vec<Value> = args
                .images
                .iter()
                .zip(&preds)
                .map(|(f, p)| {
                    json!({"file": f, "predicted": p.predicted, "name": names[p.predicted],
                           "top": top_json(&m, p, k), "probabilities": p.probabilities, "logits": p.logits})
                })
                .collect();
            print_all(&(serde_json::to_string_pretty(&json!({"model": model_json(&m), "predictions": items}))? + "\n"))
        } else {
            let lines: String = args
                .images
                .iter()
                .zip(&preds)
                .map(|(f, p)| format!("{}: {}\n", f.display(), top_text(&m, p, k)))
                .collect();
            print_all(&lines)
        };
    };
    let data = open_split(dir, &args.split, names.len())?;
    // A bad picture name fails before the classification, not after.
    let grid_format = args.grid.as_deref().map(Format::from_path).transpose()?;
    let n = data.len().min(args.limit.unwrap_or(usize::MAX));
    let pb = lml_tools::bars::image_bar(n as u64, &args.split);
    let preds = classify_dataset(&m.classifier, &data, args.limit, &mut |k| pb.inc(k as u64))?;
    pb.finish_and_clear();
    let labels = &data.labels()[..n];
    let correct = preds.iter().zip(labels).filter(|(p, &t)| p.predicted == t as usize).count();
    if let (Some(path), Some(format)) = (&args.grid, grid_format) {
        let title = format!("job {}: {} of {}", m.job, args.split, dir.display());
        split_grid(&data, &preds, names, &title, format)?.write(path)?;
    }
    if args.json {
        let items: Vec<Value> = preds
            .iter()
            .zip(labels)
            .enumerate()
            .map(|(i, (p, &t))| {
                json!({"index": i, "truth": t, "truth_name": names[t as usize], "predicted": p.predicted,
                       "name": names[p.predicted], "top": top_json(&m, p, k), "probabilities": p.probabilities,
                       "logits": p.logits})
            })
            .collect();
        let doc = json!({"model": model_json(&m), "data": dir, "split": args.split, "images": n,
                         "correct": correct, "predictions": items});
        print_all(&(serde_json::to_string_pretty(&doc)? + "\n"))
    } else {
        let mut text = String::new();
        for (i, (p, &t)) in preds.iter().zip(labels).enumerate() {
            let mark = if p.predicted == t as usize { "" } else { "  WRONG" };
            text += &format!("{i:>6}  true {:<12}  {}{mark}\n", names[t as usize], top_text(&m, p, k));
        }
        text += &format!("{correct} of {n} correct ({:.4})\n", correct as f64 / n.max(1) as f64);
        print_all(&text)
    }
}
