//! The frozen-feature cache of `lml extract-features`: the kernel's
//! [`lml_kernel::features`], which the distributed extraction job of
//! `lml-lambda` runs too, so both give the same bytes. See there for the
//! layout and the guarantees.

pub use lml_kernel::features::{
    carry_class_list, check_shard, extract_rows, extract_shard, merge, publish_shard, shard_path, shard_rows,
    CacheNote, Dtype, BATCH, CACHE_FORMAT,
};

use lml_kernel::dataset::ImageDataset;
use lml_kernel::trainer::InMemoryFeatures;
use lml_kernel::{KernelError, Vgg19};
use ndarray::Array2;

/// The features of every image of `data`, in memory (for jobs on generated
/// data and the demo): the cache's own loop ([`extract_rows`], batches of
/// [`BATCH`] from row 0), so the values are the bytes a cache would hold.
/// `progress(images)` is called after each batch.
///
/// # Errors
/// Kernel errors from the forward.
pub fn extract_in_memory(
    vgg: &Vgg19,
    data: &ImageDataset,
    progress: &mut dyn FnMut(usize),
) -> Result<InMemoryFeatures, KernelError> {
    let (n, dim) = (data.len(), vgg.feature_dim());
    let mut bytes = Vec::with_capacity(n.saturating_mul(dim).saturating_mul(4));
    let mut go_on = |_| true;
    extract_rows(
        vgg,
        data.images(),
        (0, n),
        Dtype::F32,
        &mut bytes,
        std::path::Path::new("<memory>"),
        &mut go_on,
        progress,
    )?;
    let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let features = Array2::from_shape_vec((n, dim), values).expect("extract_rows wrote n × dim values");
    Ok(InMemoryFeatures { features, labels: data.labels().to_vec() })
}
