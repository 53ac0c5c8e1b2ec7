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

pub fn run(args: &Args) -> Result<()> {
    let job = JobId::new(&args.job)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let p = match &args.table {
        Some(table) => runtime.block_on(async {
            let store = lml_lambda::aws::DynamoProgress::from_env(table, args.endpoint_url.as_deref()).await;
            let p = store.load(&job).await.with_context(|| format!("reading job {job} from table {table}"))?;
            if p.job.is_none() && p.extract.is_none() {
                bail!("table {table} has no job {job}");
            }
            Ok(p)
        })?,
        None => {
            if !lml_lambda::extract::is_extract_job(&args.root, &job) {
                let jd = JobDir::new(&args.root, &job);
                jd.read_config().with_context(|| format!("job {job} under {}", args.root.display()))?;
            }
            runtime.block_on(LocalProgress::new(&args.root).load(&job))?
        }
    };
    if let Some(lines) = extract_lines(&p, SystemClock.now_ms()) {
        for line in lines {
            println!("{line}");
        }
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
