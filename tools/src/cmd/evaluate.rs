//! `lml evaluate`: accuracy, per-class precision and recall, and the
//! confusion matrix of a finished job's classifier on a prepared split.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use lml_tools::model::{classify_dataset, confusion, open_split, ModelArgs};
use lml_tools::pictures::confusion::confusion_matrix;
use lml_tools::pictures::Format;
use serde_json::json;

#[derive(Parser)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Folder with {split}_x.npy and {split}_y.npy (from prepare-cifar10).
    #[arg(long)]
    data: PathBuf,
    /// Which split.
    #[arg(long, default_value = "test")]
    split: String,
    /// Evaluate on the first N images only.
    #[arg(long)]
    limit: Option<usize>,
    /// Print one JSON document (nothing else on stdout).
    #[arg(long)]
    json: bool,
    /// Also draw the confusion matrix as a heat map (`.png` or `.svg`).
    #[arg(long, value_name = "FILE")]
    heatmap: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<()> {
    let (pool, _) = lml_tools::bars::pool(args.model.threads)?;
    pool.install(|| evaluate(args))
}

fn evaluate(args: &Args) -> Result<()> {
    let m = args.model.load()?;
    let names = m.classifier.classes().to_vec();
    let data = open_split(&args.data, &args.split, names.len())?;
    // A bad picture name fails before minutes of classification, not after.
    let format = args.heatmap.as_deref().map(Format::from_path).transpose()?;
    let n = data.len().min(args.limit.unwrap_or(usize::MAX));
    let pb = lml_tools::bars::image_bar(n as u64, &args.split);
    let preds = classify_dataset(&m.classifier, &data, args.limit, &mut |k| pb.inc(k as u64))?;
    pb.finish_and_clear();
    let c = confusion(&names, &data.labels()[..n], &preds);
    if let (Some(path), Some(format)) = (&args.heatmap, format) {
        let title = format!("job {}: {} of {} ({} images)", m.job, args.split, args.data.display(), n);
        confusion_matrix(&c.matrix, &c.names, &title, format)?.write(path)?;
    }
    if args.json {
        let doc = json!({
            "job": m.job.as_str(), "data": args.data, "split": args.split, "images": n,
            "correct": c.correct(), "accuracy": c.accuracy(), "classes": c.scores(), "confusion": c,
        });
        super::predict::print_all(&(serde_json::to_string_pretty(&doc)? + "\n"))
    } else {
        let head = format!("job {} on {} ({} images of split {})\n", m.job, args.data.display(), n, args.split);
        super::predict::print_all(&(head + &c.to_text()))
    }
}
