//! `lml aws`: jobs on the deployed function, driven through the AWS SDK
//! (region, credentials and endpoints from the environment and profiles,
//! as for the AWS CLI; `--endpoint-url` or `AWS_ENDPOINT_URL_LAMBDA` /
//! `AWS_ENDPOINT_URL_DYNAMODB` for emulators). Every event is built from
//! typed flags (`start` takes the flags of `lml train`) and checked as the
//! function checks it before it is sent; the function's answer is printed,
//! and an error it reports is this command's error.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use lml_lambda::aws::{DynamoProgress, FunctionClient};
use lml_lambda::event::{Event, JobId};
use lml_lambda::ingest::{IngestEvent, IngestSpec};
use lml_lambda::progress::{JobStatus, Progress, ProgressStore};
use lml_tools::report::{extract_lines, ingest_lines, round_line};

use super::status::{phases_of, print_status};

#[derive(Parser)]
pub struct Args {
    /// Endpoint URL of every AWS service called (an emulator); default: the
    /// SDK's (`AWS_ENDPOINT_URL_LAMBDA`, `AWS_ENDPOINT_URL_DYNAMODB`,
    /// `AWS_ENDPOINT_URL`, the profile's `endpoint_url`, else AWS).
    #[arg(long, global = true)]
    endpoint_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a training job on the function: the flags of `lml train`, data
    /// paths relative to the function's storage root (the EFS access point).
    Start(Box<StartArgs>),
    /// A job's progress from the DynamoDB table: rounds and accuracy, the
    /// extraction phases, or an ingest's objects.
    Status(StatusArgs),
    /// Ask a job (training, extraction or ingest) to stop after the round or range in progress.
    Stop(JobArgs),
    /// Restart a job whose invocations all died, from its last checkpoint.
    Resume(JobArgs),
    /// Copy every object under an S3 prefix onto the function's storage root
    /// (streamed, resumable, checked against S3's checksums, each file
    /// published whole).
    Ingest(IngestArgs),
}

/// Where progress is read, and whether to wait for the job to end.
#[derive(clap::Args)]
struct Watch {
    /// The DynamoDB progress table (the stack's `TableName` output).
    #[arg(long)]
    table: Option<String>,
    /// Wait until the job ends, printing its progress as it changes (needs --table).
    #[arg(long, requires = "table")]
    wait: bool,
    /// Seconds between two reads of the table while waiting.
    #[arg(long, default_value_t = 2.0)]
    poll: f64,
    /// Give up waiting after this many seconds (the job goes on).
    #[arg(long)]
    timeout: Option<f64>,
}

#[derive(clap::Args)]
struct StartArgs {
    /// The function (the stack's `FunctionName` output).
    #[arg(long)]
    function: String,
    #[command(flatten)]
    event: super::start_event::Args,
    #[command(flatten)]
    watch: Watch,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The job id.
    job: String,
    /// Also list every round.
    #[arg(long)]
    rounds: bool,
    #[command(flatten)]
    watch: Watch,
}

#[derive(clap::Args)]
struct JobArgs {
    /// The job id.
    job: String,
    /// The function (the stack's `FunctionName` output).
    #[arg(long)]
    function: String,
}

#[derive(clap::Args)]
struct IngestArgs {
    /// The function (the stack's `FunctionName` output).
    #[arg(long)]
    function: String,
    /// Job id of the copy.
    #[arg(long)]
    job: String,
    /// The bucket (the stack's `DataBucket`: the only one its S3 endpoint reaches).
    #[arg(long)]
    bucket: String,
    /// Copy every object whose key starts with this ("": the whole bucket).
    #[arg(long, default_value = "")]
    prefix: String,
    /// Folder under the storage root that receives them ("": the root);
    /// each object lands at its key minus the prefix.
    #[arg(long, default_value = "")]
    dest: String,
    /// Bytes per ranged GET (the unit of progress between deadline checks).
    #[arg(long, default_value_t = IngestSpec::new("", "", "").range_bytes)]
    range_bytes: u64,
    /// Invocation time limit in seconds, used when Lambda reports no usable deadline.
    #[arg(long, default_value_t = IngestSpec::new("", "", "").time_limit_ms as f64 / 1000.0)]
    time_limit: f64,
    #[command(flatten)]
    watch: Watch,
}

pub fn run(args: &Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(dispatch(args))
}

async fn dispatch(args: &Args) -> Result<()> {
    let endpoint = args.endpoint_url.as_deref();
    match &args.command {
        Command::Start(a) => {
            let event = super::start_event::event(&a.event)?;
            send(&a.function, endpoint, &event).await?;
            after(&a.watch, endpoint, event.job()).await
        }
        Command::Status(a) => {
            let Some(table) = &a.watch.table else { bail!("lml aws status needs --table (the stack's TableName)") };
            let store = DynamoProgress::from_env(table, endpoint).await;
            let job = JobId::new(&a.job)?;
            if a.watch.wait {
                wait(&store, &job, &a.watch).await?;
            }
            let (p, phases) = load(&store, table, &job).await?;
            print_status(&job, &p, &phases, a.rounds);
            failed(&job, &p, &phases)
        }
        Command::Stop(a) => {
            send(&a.function, endpoint, &Event::Stop { job: JobId::new(&a.job)? }).await?;
            println!("job {}: stop requested; it ends after the round (or range) in progress", a.job);
            Ok(())
        }
        Command::Resume(a) => send(&a.function, endpoint, &Event::Resume { job: JobId::new(&a.job)? }).await,
        Command::Ingest(a) => {
            let time_limit_ms = (a.time_limit * 1000.0) as u64;
            let spec = IngestSpec {
                range_bytes: a.range_bytes,
                time_limit_ms,
                safety_ms: (time_limit_ms / 10).min(IngestSpec::new("", "", "").safety_ms),
                ..IngestSpec::new(&a.bucket, &a.prefix, &a.dest)
            };
            let json = Event::Ingest(IngestEvent::Start { job: JobId::new(&a.job)?, spec }).to_json();
            // Checked as the function checks it: a bad flag is named here.
            let event = Event::parse(&json)?;
            send(&a.function, endpoint, &event).await?;
            after(&a.watch, endpoint, event.job()).await
        }
    }
}

/// Sends `event` to `function` and prints the function's answer.
async fn send(function: &str, endpoint: Option<&str>, event: &Event) -> Result<()> {
    let client = FunctionClient::from_env(function, endpoint).await;
    let answer = client.call(event).await.with_context(|| format!("function {function}"))?;
    let said = answer.get("ok").and_then(|v| v.as_str()).map_or(answer.to_string(), str::to_string);
    println!("{}: {said}", event.describe());
    Ok(())
}

/// After a start: waits and reports if asked to, else says how to watch.
async fn after(watch: &Watch, endpoint: Option<&str>, job: &JobId) -> Result<()> {
    match &watch.table {
        Some(table) if watch.wait => {
            let store = DynamoProgress::from_env(table, endpoint).await;
            wait(&store, job, watch).await?;
            let (p, phases) = load(&store, table, job).await?;
            print_status(job, &p, &phases, false);
            failed(job, &p, &phases)
        }
        Some(table) => {
            println!("watch it: lml aws status {job} --table {table}");
            Ok(())
        }
        None => Ok(()),
    }
}

/// The records of `job` and of its extraction phases.
async fn load(store: &DynamoProgress, table: &str, job: &JobId) -> Result<(Progress, Vec<Progress>)> {
    let read =
        |j: JobId| async move { store.load(&j).await.with_context(|| format!("reading job {j} from table {table}")) };
    let p = read(job.clone()).await?;
    let mut phases = Vec::new();
    for sub in phases_of(job) {
        let q = read(sub).await?;
        if q.extract.is_some() {
            phases.push(q);
        }
    }
    if p.job.is_none() && p.extract.is_none() && p.ingest.is_none() && phases.is_empty() {
        bail!("table {table} has no job {job}");
    }
    Ok((p, phases))
}

/// Whether the job has ended, however it ended; `None` while it runs.
fn ended(p: &Progress, phases: &[Progress]) -> Option<JobStatus> {
    let over = |s: JobStatus| (s != JobStatus::Running).then_some(s);
    if let Some(i) = &p.ingest {
        return over(i.status);
    }
    if let Some(j) = &p.job {
        return over(j.status);
    }
    if let Some(x) = &p.extract {
        return over(x.status);
    }
    // A training job on images before its training starts: a phase that
    // did not finish ends it.
    phases
        .iter()
        .filter_map(|q| q.extract.as_ref())
        .map(|x| x.status)
        .find(|&s| s != JobStatus::Running && s != JobStatus::Finished)
}

/// An error if the job failed (the status printed says why).
fn failed(job: &JobId, p: &Progress, phases: &[Progress]) -> Result<()> {
    match ended(p, phases) {
        Some(JobStatus::Failed) => bail!("job {job} failed"),
        _ => Ok(()),
    }
}

/// One line that changes as the job progresses.
fn headline(p: &Progress, phases: &[Progress]) -> String {
    if let Some(lines) = ingest_lines(p) {
        return lines[0].clone();
    }
    if let Some(r) = p.rounds.values().last() {
        return round_line(r);
    }
    let now = lml_lambda::services::Clock::now_ms(&lml_lambda::services::SystemClock);
    match phases.iter().chain([p]).filter_map(|q| extract_lines(q, now)).next_back() {
        Some(lines) => lines[0].clone(),
        None => "waiting for the first record".into(),
    }
}

/// Reads the table every `poll` seconds until the job ends (or `timeout`).
async fn wait(store: &DynamoProgress, job: &JobId, watch: &Watch) -> Result<()> {
    let t = Instant::now();
    let mut last = String::new();
    loop {
        let p = store.load(job).await?;
        let mut phases = Vec::new();
        for sub in phases_of(job) {
            let q = store.load(&sub).await?;
            if q.extract.is_some() {
                phases.push(q);
            }
        }
        if ended(&p, &phases).is_some() {
            return Ok(());
        }
        let line = headline(&p, &phases);
        if line != last {
            println!("{line}");
            last = line;
        }
        if let Some(limit) = watch.timeout {
            if t.elapsed().as_secs_f64() > limit {
                bail!("job {job} still runs after {limit} s (it goes on; lml aws status {job} to look again)");
            }
        }
        tokio::time::sleep(Duration::from_secs_f64(watch.poll.max(0.05))).await;
    }
}
