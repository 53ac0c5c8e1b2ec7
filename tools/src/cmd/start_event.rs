//! `lml start-event`: the start event of a job on AWS Lambda, printed for
//! `aws lambda invoke --payload`, built from the same flags as `lml train`
//! (and sent by `lml aws start`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Parser;
use lml_lambda::event::{Event, JobId, StartEvent};
use lml_tools::job::{DataArgs, JobArgs, DEFAULT_WORKERS};

#[derive(Parser)]
pub struct Args {
    /// Job id.
    #[arg(long)]
    job: String,
    /// Parallel workers per round.
    #[arg(long, default_value_t = DEFAULT_WORKERS)]
    workers: usize,
    /// The data, as paths relative to the function's storage root (the EFS
    /// access point's folder): not looked at here.
    #[command(flatten)]
    data: DataArgs,
    /// Do not evaluate on the test split beside the training data.
    #[arg(long)]
    no_eval: bool,
    #[command(flatten)]
    spec: JobArgs,
}

/// `p` as the spec writes it (the function checks it stays under its root).
fn written(p: &Path, flag: &str) -> Result<String> {
    p.to_str().map(str::to_string).with_context(|| format!("{flag} {}: not UTF-8", p.display()))
}

pub fn run(args: &Args) -> Result<()> {
    println!("{}", event(args)?.to_json());
    Ok(())
}

/// The start event the flags ask for, parsed as the function parses it: a
/// bad flag is reported here, naming the spec's field.
pub fn event(args: &Args) -> Result<Event> {
    let (dir, weights) = match (&args.data.features, &args.data.images, &args.data.weights) {
        (Some(f), _, _) => (written(f, "--features")?, None),
        (None, Some(i), Some(w)) => (written(i, "--images")?, Some(written(w, "--weights")?)),
        _ => bail!("give --features DIR, or --images DIR --weights DIR (folders under the function's storage root)"),
    };
    let split = |s| args.data.split(&dir, weights.as_deref(), s);
    let spec = args.spec.spec(split("train"), (!args.no_eval).then(|| split("test")));
    let json = Event::Start(StartEvent { job: JobId::new(&args.job)?, workers: args.workers, spec }).to_json();
    Ok(Event::parse(&json)?)
}
