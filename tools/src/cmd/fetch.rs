//! `lml fetch`: download the official CIFAR-10 archive (MD5-checked, resumable).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser)]
pub struct Args {
    /// Which archive: binary (what prepare-cifar10 reads fastest) or python.
    #[arg(long, default_value = "binary")]
    format: String,
    /// Folder to download into.
    #[arg(long, default_value = "data")]
    out: PathBuf,
    /// Override the URL (a mirror); the published MD5 is still checked unless --md5 is given.
    #[arg(long)]
    url: Option<String>,
    /// Override the expected MD5 (hex).
    #[arg(long)]
    md5: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let Args { format, out, url, md5 } = args;
    use lml_tools::fetch::{fetch, CIFAR10_BINARY, CIFAR10_PYTHON};
    let remote = match format.as_str() {
        "binary" => CIFAR10_BINARY,
        "python" => CIFAR10_PYTHON,
        other => bail!("--format {other:?}: expected binary or python"),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let dest = out.join(remote.file);
    let url = url.unwrap_or_else(|| remote.url.to_string());
    let pb = lml_tools::bars::bytes_bar();
    let got = fetch(&url, &dest, md5.as_deref().unwrap_or(remote.md5), &mut |done, total| {
        if let Some(t) = total {
            pb.set_length(t);
        }
        pb.set_position(done);
    });
    pb.finish_and_clear();
    let got = got?;
    println!("{} ready ({} bytes downloaded now, MD5 verified)", dest.display(), got);
    Ok(())
}
