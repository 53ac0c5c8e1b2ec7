//! `lml synth`: format-exact fixtures for tests and demos.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use lml_kernel::vgg::random_weights;
use lml_kernel::Cut;

#[derive(Subcommand)]
pub enum Command {
    /// A CIFAR-10 archive (`cifar-10-binary.tar.gz` or `cifar-10-python.tar.gz` layout) of generated images.
    Cifar10 {
        /// Archive to write.
        #[arg(long)]
        out: PathBuf,
        /// Which distribution: binary or python.
        #[arg(long, default_value = "binary")]
        format: String,
        /// Records in each of the six .bin members.
        #[arg(long, default_value_t = 1000)]
        per_batch: usize,
        /// Seed of the generated images.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Random VGG19 weights as a Keras `.h5`.
    Vgg19KerasH5 {
        /// File to write.
        #[arg(long)]
        out: PathBuf,
        /// Which Keras layout: applications-2017 (Keras 1 save_weights, as in
        /// vgg19_weights_tf_dim_ordering_tf_kernels.h5), keras2 (save_weights
        /// to .h5) or keras3 (.weights.h5).
        #[arg(long, default_value = "applications-2017")]
        layout: lml_tools::keras::KerasLayout,
        /// Deepest layer included: pool5, fc6 or fc7.
        #[arg(long, default_value = "fc7")]
        cut: Cut,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Random VGG19 weights as a `.safetensors` checkpoint (torchvision or timm keys).
    Vgg19Safetensors {
        /// File to write.
        #[arg(long)]
        out: PathBuf,
        /// Key layout: torchvision or timm.
        #[arg(long, default_value = "torchvision")]
        layout: String,
        /// Deepest layer included: pool5, fc6 or fc7.
        #[arg(long, default_value = "fc7")]
        cut: Cut,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Cifar10 { out, format, per_batch, seed } => {
            match format.as_str() {
                "binary" => lml_tools::cifar::write_binary_archive(&out, per_batch, seed),
                "python" => lml_tools::cifar::write_python_archive(&out, per_batch, seed),
                other => bail!("--format {other:?}: expected binary or python"),
            }
            .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} ({} train + {} test records)", out.display(), 5 * per_batch, per_batch);
            Ok(())
        }
        Command::Vgg19KerasH5 { out, layout, cut, seed } => {
            let w = random_weights(seed, cut);
            lml_tools::keras::write_keras_h5(&out, &w, layout)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
            println!("wrote {} ({} layers with weights, Keras layout {layout:?})", out.display(), w.len() / 2);
            Ok(())
        }
        Command::Vgg19Safetensors { out, layout, cut, seed } => {
            let mut w = random_weights(seed, cut);
            match layout.as_str() {
                "torchvision" => {}
                "timm" => w = lml_tools::convert::to_timm_layout(w),
                other => bail!("--layout {other:?}: expected torchvision or timm"),
            }
            let views: Vec<_> = w.iter().map(|(n, a)| (n.clone(), a.view())).collect();
            lml_tools::convert::write_safetensors(&out, &views)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} ({} tensors, {layout} keys)", out.display(), views.len());
            Ok(())
        }
    }
}
