//! `lml prepare-cifar10`: the official CIFAR-10 archive into memory-mappable .npy files.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use lml_tools::bars::bar;

#[derive(Parser)]
pub struct Args {
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

fn parse_records_per_batch(s: &str) -> std::result::Result<usize, String> {
    let n: usize = s.trim().parse().map_err(|_| format!("{s:?} is not a count of records"))?;
    lml_tools::cifar::check_records_per_batch(n).map_err(|e| e.to_string())
}

pub fn run(args: &Args) -> Result<()> {
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
