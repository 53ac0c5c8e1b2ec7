//! `lml export`: a finished job's classifier as torchvision's VGG19
//! (`.safetensors`) or as the kernel's own folder (`--format npy`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use lml_tools::export::{export_npy, export_safetensors, Format};
use lml_tools::model::{name, ModelArgs};

#[derive(Parser)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The file (safetensors) or folder (npy) to write.
    #[arg(long)]
    out: PathBuf,
    /// safetensors: torchvision's VGG19 layout (`torchvision.models.vgg19(num_classes=C)`
    /// loads it), the standardisation folded into classifier.6; npy: the
    /// kernel's folder (`lml_kernel::classifier::Classifier::open`).
    #[arg(long, default_value = "safetensors")]
    format: Format,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let m = args.model.load()?;
    let source = format!("lml job {} (params {})", m.job, m.params.display());
    let c = &m.classifier;
    match args.format {
        Format::Safetensors => {
            let bytes = export_safetensors(c, &args.out, &source, args.force)?;
            println!(
                "wrote {} ({:.1} MB): torchvision VGG19, {} classes, input {} (preset {}), cut {}",
                args.out.display(),
                bytes as f64 / 1e6,
                c.classes().len(),
                c.vgg().input_size(),
                name(&c.vgg().preset()),
                name(&c.vgg().cut())
            );
        }
        Format::Npy => {
            export_npy(c, &args.out, &source, args.force)?;
            println!(
                "wrote {}: lml classifier folder ({} classes, cut {})",
                args.out.display(),
                c.classes().len(),
                name(&c.vgg().cut())
            );
        }
    }
    Ok(())
}
