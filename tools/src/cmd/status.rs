//! `lml status`: a job's progress and final accuracy (a training job) or its
//! shards, speed and cache (an extraction job), from the job folder under
//! `--root`. A job on AWS: `lml aws status` (progress in DynamoDB).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use lml_lambda::event::JobId;
use lml_lambda::layout::JobDir;
use lml_lambda::progress::{LocalProgress, Progress, ProgressStore};
use lml_lambda::services::{Clock, SystemClock};
use lml_tools::report::{extract_lines, ingest_lines, print_summary, round_line};

#[derive(Parser)]
pub struct Args {
    /// The job id.
    job: String,
    /// Storage root.
    #[arg(long, default_value = lml_tools::job::DEFAULT_ROOT)]
    root: PathBuf,
    /// Also list every round.
    #[arg(long)]
    rounds: bool,
    /// Moved to `lml aws status JOB --table T`; kept only to say so.
    #[arg(long, hide = true)]
    table: Option<String>,
    /// Moved with --table.
    #[arg(long, hide = true)]
    endpoint_url: Option<String>,
}

/// The sub-jobs a training job on images extracts its splits in.
pub fn phases_of(job: &JobId) -> Vec<JobId> {
    ["train", "test"].iter().filter_map(|s| lml_lambda::pipeline::sub_job(job, s).ok()).collect()
}

pub fn run(args: &Args) -> Result<()> {
    if let Some(table) = &args.table {
        bail!(
            "`lml status --table` has moved: run `lml aws status {} --table {table}` (region, credentials and \
             endpoints come from the environment, as for the AWS CLI)",
            args.job
        );
    }
    let job = JobId::new(&args.job)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let store = LocalProgress::new(&args.root);
    let mut phases = Vec::new();
    for sub in phases_of(&job).iter().filter(|s| lml_lambda::extract::is_extract_job(&args.root, s)) {
        phases.push(runtime.block_on(store.load(sub))?);
    }
    let jd = JobDir::new(&args.root, &job);
    let p = if !jd.exists() && !phases.is_empty() {
        Default::default()
    } else {
        let other_kind = lml_lambda::extract::is_extract_job(&args.root, &job)
            || lml_lambda::ingest::is_ingest_job(&args.root, &job);
        if !other_kind {
            jd.read_config().with_context(|| format!("job {job} under {}", args.root.display()))?;
        }
        runtime.block_on(store.load(&job))?
    };
    print_status(&job, &p, &phases, args.rounds);
    Ok(())
}

/// Prints what the records say of `job` (`p`) and of its extraction phases.
pub fn print_status(job: &JobId, p: &Progress, phases: &[Progress], rounds: bool) {
    let now = SystemClock.now_ms();
    for lines in phases.iter().chain([p]).filter_map(|q| extract_lines(q, now)) {
        for line in lines {
            println!("{line}");
        }
    }
    if let Some(lines) = ingest_lines(p) {
        for line in lines {
            println!("{line}");
        }
        return;
    }
    if p.job.is_none() && p.extract.is_none() {
        println!("job {job}: extracting its features first; training has not started");
        return;
    }
    if p.extract.is_some() {
        return;
    }
    if rounds {
        for r in p.rounds.values() {
            println!("{}", round_line(r));
        }
    }
    print_summary(p);
}
