//! `lml stop`: ask a running job to stop after the round in progress.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use lml_lambda::event::{Event, JobId};
use lml_lambda::services::SystemClock;
use lml_lambda::{LocalConfig, LocalRuntime};

#[derive(Parser)]
pub struct Args {
    /// The job id.
    job: String,
    /// Storage root.
    #[arg(long, default_value = lml_tools::job::DEFAULT_ROOT)]
    root: PathBuf,
}

pub fn run(args: &Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let rt = LocalRuntime::start(&args.root, SystemClock, LocalConfig::default());
        rt.call(&Event::Stop { job: JobId::new(&args.job)? }.to_json()).await?;
        println!("job {}: stop requested; it ends after the round in progress", args.job);
        Ok(())
    })
}
