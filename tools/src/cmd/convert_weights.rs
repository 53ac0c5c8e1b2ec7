//! `lml convert-weights`: a VGG19 checkpoint (torchvision or timm
//! `.safetensors`, or a Keras `.h5`) into the kernel's .npy weight directory.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use lml_kernel::Preset;

#[derive(Parser)]
pub struct Args {
    /// The checkpoint: `.safetensors`, or `.h5` (Keras; preset caffe is recorded).
    #[arg(long)]
    input: PathBuf,
    /// Weight directory to create.
    #[arg(long)]
    out: PathBuf,
    /// Input normalisation the weights were trained with (torchvision for torchvision/timm checkpoints).
    #[arg(long, default_value = "torchvision")]
    preset: Preset,
}

pub fn run(args: Args) -> Result<()> {
    let Args { input, out, preset } = args;
    let ext = input.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    let c = match ext.as_str() {
        "h5" | "hdf5" => lml_tools::convert::convert_keras_h5(&input, &out)?,
        "safetensors" => lml_tools::convert::convert_safetensors(&input, &out, preset)?,
        other => bail!("{}: unknown checkpoint type {other:?} (expected .safetensors or .h5)", input.display()),
    };
    println!(
        "wrote {}: {} tensors, usable to cut {:?}{}",
        out.display(),
        c.tensors,
        c.cut,
        if c.ignored.is_empty() { String::new() } else { format!("; ignored {}", c.ignored.join(", ")) }
    );
    Ok(())
}
