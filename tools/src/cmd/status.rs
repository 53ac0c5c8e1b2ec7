//! `lml status`: a job's progress and final accuracy (a training job) or its
//! shards, speed and cache (an extraction job), from the job folder or DynamoDB.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use lml_lambda::event::JobId;
use lml_lambda::layout::JobDir;
use lml_lambda::progress::{LocalProgress, ProgressStore};
use lml_lambda::services::{Clock, SystemClock};
use lml_tools::report::{extract_lines, print_summary, round_line};

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
    /// Read the progress from this DynamoDB table (a job on AWS) instead of the job folder.
    #[arg(long)]
    table: Option<String>,
    /// DynamoDB endpoint URL (an emulator); default: AWS's, from the environment's region.
    #[arg(long, requires = "table")]
    endpoint_url: Option<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let job = JobId::new(&args.job)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // A training job on images extracts its features first, in sub-jobs.
    let subs: Vec<JobId> =
        ["train", "test"].iter().filter_map(|s| lml_lambda::pipeline::sub_job(&job, s).ok()).collect();
    let (p, phases) = match &args.table {
        Some(table) => runtime.block_on(async {
            let store = lml_lambda::aws::DynamoProgress::from_env(table, args.endpoint_url.as_deref()).await;
            let load = |j: JobId| {
                let store = &store;
                async move { store.load(&j).await.with_context(|| format!("reading job {j} from table {table}")) }
            };
            let p = load(job.clone()).await?;
            let mut phases = Vec::new();
            for sub in &subs {
                let q = load(sub.clone()).await?;
                if q.extract.is_some() {
                    phases.push(q);
                }
            }
            if p.job.is_none() && p.extract.is_none() && phases.is_empty() {
                bail!("table {table} has no job {job}");
            }
            Ok((p, phases))
        })?,
        None => {
            let store = LocalProgress::new(&args.root);
            let mut phases = Vec::new();
            for sub in subs.iter().filter(|s| lml_lambda::extract::is_extract_job(&args.root, s)) {
                phases.push(runtime.block_on(store.load(sub))?);
            }
            let jd = JobDir::new(&args.root, &job);
            if !jd.exists() && !phases.is_empty() {
                (Default::default(), phases)
            } else {
                if !lml_lambda::extract::is_extract_job(&args.root, &job) {
                    jd.read_config().with_context(|| format!("job {job} under {}", args.root.display()))?;
                }
                (runtime.block_on(store.load(&job))?, phases)
            }
        }
    };
    let now = SystemClock.now_ms();
    for lines in phases.iter().chain([&p]).filter_map(|q| extract_lines(q, now)) {
        for line in lines {
            println!("{line}");
        }
    }
    if p.job.is_none() && p.extract.is_none() {
        println!("job {job}: extracting its features first; training has not started");
        return Ok(());
    }
    if p.extract.is_some() {
        return Ok(());
    }
    if args.rounds {
        for r in p.rounds.values() {
            println!("{}", round_line(r));
        }
    }
    print_summary(&p);
    Ok(())
}
