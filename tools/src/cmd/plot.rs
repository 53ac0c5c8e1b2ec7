//! `lml plot`: a job's training curves (training and held-out loss and
//! accuracy per round, epoch marks) from its progress records, as PNG or SVG.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use lml_lambda::event::JobId;
use lml_lambda::layout::JobDir;
use lml_lambda::progress::{LocalProgress, ProgressStore};
use lml_tools::pictures::curves::{training_curves, Curves};
use lml_tools::pictures::Format;

#[derive(Parser)]
pub struct Args {
    /// The job id.
    job: String,
    /// Storage root.
    #[arg(long, default_value = lml_tools::job::DEFAULT_ROOT)]
    root: PathBuf,
    /// Output file, `.png` or `.svg` (default: `<job>-curves.png` in the current folder).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<()> {
    let job = JobId::new(&args.job)?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("{job}-curves.png")));
    let format = Format::from_path(&out)?;
    let jd = JobDir::new(&args.root, &job);
    if !jd.exists() {
        if lml_lambda::pipeline::phase_one(&args.root, &job).is_some() {
            bail!("job {job} is still extracting its features: no rounds to plot yet (`lml status {job}`)");
        }
        bail!("no job {job} under {}", args.root.display());
    }
    jd.read_config().with_context(|| format!("job {job} under {}", args.root.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let p = runtime.block_on(LocalProgress::new(&args.root).load(&job))?;
    if p.rounds.is_empty() {
        bail!("job {job} has no rounds recorded yet");
    }
    let curves = Curves::from_progress(job.as_str(), &p);
    training_curves(&curves, format)?.write(&out)?;
    println!(
        "wrote {}: {} rounds, {} held-out evaluation(s){}",
        out.display(),
        curves.train.len(),
        curves.held_out.len(),
        if curves.held_out.is_empty() { " (the job has no held-out split)" } else { "" }
    );
    Ok(())
}
