//! Work folders of the commands that generate what they are not given:
//! images with learnable classes, and random VGG19 weights, each written
//! once and reused by later runs.

use std::path::{Path, PathBuf};

use lml_kernel::dataset::ImageDataset;
use lml_kernel::npy::write_npy_atomic;
use lml_kernel::vgg::{random_weights, MODEL};
use lml_kernel::weights::{WeightStore, MANIFEST};
use lml_kernel::{Cut, KernelError, Preset};

use crate::synth;

/// The weight directory to use: `weights` if given, else random weights to
/// `cut` for `seed`, generated once under `workdir` (and reused).
///
/// # Errors
/// [`KernelError::Io`] naming the folder that cannot be created or written.
pub fn weights_or_random(weights: Option<&Path>, workdir: &Path, seed: u64, cut: Cut) -> Result<PathBuf, KernelError> {
    if let Some(w) = weights {
        return Ok(w.to_path_buf());
    }
    let dir = workdir.join(format!("random-weights-{seed}-{}", format!("{cut:?}").to_lowercase()));
    if !dir.join(MANIFEST).exists() {
        std::fs::create_dir_all(workdir).map_err(|e| KernelError::Io { path: workdir.to_path_buf(), source: e })?;
        eprintln!("generating random VGG19 weights to {cut:?} in {} (no --weights given)", dir.display());
        let w = random_weights(seed, cut);
        WeightStore::write(&dir, MODEL, Preset::Torchvision, w.iter().map(|(n, a)| (n.clone(), a.view())))?;
    }
    Ok(dir)
}

/// `dir/name_x.npy` and `dir/name_y.npy`: `n` generated 32×32 images of
/// `classes` learnable classes ([`synth::images`]), written unless files of
/// `n` images are already there.
///
/// # Errors
/// Kernel errors naming the file that cannot be written or read back.
pub fn ensure_images(dir: &Path, name: &str, n: usize, classes: usize, seed: u64) -> Result<ImageDataset, KernelError> {
    let (xp, yp) = (dir.join(format!("{name}_x.npy")), dir.join(format!("{name}_y.npy")));
    if let Some(d) = ImageDataset::open(&xp, &yp).ok().filter(|d| d.len() == n) {
        return Ok(d);
    }
    let (x, y) = synth::images(n, classes, 32, seed);
    write_npy_atomic(&xp, &x)?;
    write_npy_atomic(&yp, &y)?;
    ImageDataset::open(&xp, &yp)
}
