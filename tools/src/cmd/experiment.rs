//! `lml experiment`: the seed's Tables 3, 5 and 6 and Figs. 12 and 14 on
//! the local runtime, scaled down (see `lml_tools::experiment`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lml_tools::experiment::{self, Lab, Outcome, Scale};
use lml_tools::pictures::Format;

#[derive(Subcommand)]
pub enum Command {
    /// Table 3: training steps one invocation completes against its time
    /// limit (1 worker, batch 8), and invocations and time for the whole job.
    TimeLimit(Args),
    /// Table 5: steps and time against the function's memory (its vCPU share and threads).
    Memory(Args),
    /// Table 6 and Fig. 12: time against 1 to 32 workers; Fig. 14: against
    /// the same training in one process.
    Workers(Args),
    /// All three, one after another.
    All(Args),
}

#[derive(Parser)]
pub struct Args {
    /// Working folder: generated images and random weights (made once, kept
    /// for later runs) and one job folder per run.
    #[arg(long, default_value = "runs/experiments")]
    root: PathBuf,
    /// Folder for the tables (.md, .csv) and figures (.png, .svg); default: <root>/results.
    #[arg(long)]
    out: Option<PathBuf>,
    /// `small`: every row of the seed's tables, minutes on 2 cores; `tiny`: a few rows in seconds (the tests).
    #[arg(long, default_value_t = Scale::Small)]
    scale: Scale,
}

pub fn run(command: Command) -> Result<()> {
    let (args, which): (&Args, &[&str]) = match &command {
        Command::TimeLimit(a) => (a, &["time-limit"]),
        Command::Memory(a) => (a, &["memory"]),
        Command::Workers(a) => (a, &["workers"]),
        Command::All(a) => (a, &["time-limit", "memory", "workers"]),
    };
    let out = args.out.clone().unwrap_or_else(|| args.root.join("results"));
    eprintln!(
        "preparing {} (generated images, random VGG19 weights to pool5; kept for later runs)",
        args.root.display()
    );
    let lab = Lab::new(&args.root, args.scale)?;
    for name in which {
        eprintln!("experiment {name} at the {} scale …", args.scale);
        let t = std::time::Instant::now();
        let outcome = match *name {
            "time-limit" => experiment::time_limit::run(&lab),
            "memory" => experiment::memory::run(&lab),
            _ => experiment::workers::run(&lab),
        }
        .with_context(|| format!("experiment {name}"))?;
        write(&outcome, &out)?;
        eprintln!("experiment {name}: {:.1} s", t.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Prints the tables and writes them and the figures into `out`.
fn write(outcome: &Outcome, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (stem, table) in &outcome.tables {
        println!("{}", table.text());
        for (ext, text) in [("md", table.markdown()), ("csv", table.csv())] {
            let path = out.join(format!("{stem}.{ext}"));
            publish(&path, text.as_bytes())?;
            println!("wrote {}", path.display());
        }
    }
    for (stem, figure) in &outcome.figures {
        for format in [Format::Png, Format::Svg] {
            let path = out.join(format!("{stem}.{}", format.extension()));
            figure.draw(format)?.write(&path)?;
            println!("wrote {}", path.display());
        }
    }
    println!();
    Ok(())
}

/// Writes `bytes` to `path` by temp file, fsync and rename.
fn publish(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
