//! The frozen-feature cache: the frozen VGG19 run once over a split of
//! images, its features kept on disk so that training the head never runs
//! the backbone again. `lml extract-features` (one process) and the
//! distributed extraction job of `lml-lambda` both run this code, so their
//! caches are the same bytes.
//!
//! # Layout (under the output folder)
//! ```text
//! {split}.shard-0003-of-0010.npy   [rows, D]: rows [3·N/10, 4·N/10) — one per shard
//! {split}_features.npy             [N, D]: the shards concatenated (when all exist)
//! {split}_y.npy                    the labels, copied
//! {split}_features.json            what produced them ([`CacheNote`])
//! classes.txt                      the class names, carried from the images' folder
//! ```
//! Shards are independent and each is published atomically, so an
//! interrupted run is resumed by running it again: finished shards are kept,
//! the rest recomputed. Features are computed in batches of [`BATCH`]
//! starting at each shard's first row (or at a batch boundary inside it,
//! where a distributed worker resumes), and a batch of at most [`BATCH`]
//! images gives every image the same bits wherever the batch starts, so the
//! merged file does not depend on the shard count or on where work stopped.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ndarray::{s, ArrayView4};
use serde::{Deserialize, Serialize};

use crate::dataset::ImageDataset;
use crate::error::{KernelError, Result};
use crate::npy::{publish_atomic, write_npy_header, MappedNpy};
use crate::{Cut, Preset, Vgg19};

/// Images per forward pass. At most 16, so the dense layers take the same
/// (dot-product) path for every batch and results do not depend on where a
/// batch starts.
pub const BATCH: usize = 16;

/// Version tag of `{split}_features.json`.
pub const CACHE_FORMAT: &str = "lml-features/1";

/// How cached features are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// `<f4`: exact.
    #[default]
    F32,
    /// `<f2`: half the disk and page cache, IEEE round-to-nearest (relative
    /// error ≤ 2⁻¹¹; values above 65504 become infinite, which VGG's ReLU
    /// features at the usual scales do not reach).
    F16,
}

impl Dtype {
    /// The `.npy` descriptor.
    pub fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::F16 => "<f2",
        }
    }

    /// Bytes per stored value.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
        }
    }

    /// Appends `values` to `out` in this encoding (little-endian).
    pub fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        match self {
            Dtype::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
            Dtype::F16 => out.extend(values.iter().flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())),
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Dtype::F32),
            "f16" => Ok(Dtype::F16),
            _ => Err(format!("{s:?}: expected f32 or f16")),
        }
    }
}

/// What produced a cache: `{split}_features.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheNote {
    /// [`CACHE_FORMAT`].
    pub format: String,
    pub split: String,
    pub images: usize,
    pub dim: usize,
    /// The `.npy` descriptor of the features (`<f4` or `<f2`).
    pub dtype: String,
    pub cut: Cut,
    pub input_size: usize,
    pub preset: Preset,
    /// The weight directory, as the producer named it.
    pub weights: PathBuf,
    pub shards: usize,
    /// `[H, W]` of the images the features came from (before the resize to
    /// `input_size`): a new image of another size is brought to it first
    /// ([`crate::classifier`]). Absent in notes written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<[usize; 2]>,
}

/// Rows `[start, end)` of shard `index` of `count` over `n` rows
/// (`⌊index·n/count⌋` to `⌊(index+1)·n/count⌋`, computed without overflow).
///
/// # Panics
/// If `count` is 0.
pub fn shard_rows(n: usize, index: usize, count: usize) -> (usize, usize) {
    let at = |i: usize| (i as u128 * n as u128 / count as u128) as usize;
    (at(index), at(index + 1))
}

/// The file of shard `index` of `count`.
pub fn shard_path(out: &Path, split: &str, index: usize, count: usize) -> PathBuf {
    out.join(format!("{split}.shard-{index:04}-of-{count:04}.npy"))
}

/// Computes the features of `images[from..end]` in batches of [`BATCH`]
/// starting at `from`, and appends each batch's rows to `w` encoded as
/// `dtype` (row-major `[rows, D]`, no header). Before each batch,
/// `before_batch(row)` (the batch's first row) decides whether to go on;
/// after it, `after_batch(images)` is told how many images it held.
/// Returns the row reached: `end`, or the first row not computed when
/// `before_batch` said stop.
///
/// For a cache that does not depend on where work stops, `from` must be a
/// shard's first row or a batch boundary after it.
///
/// # Errors
/// [`KernelError::Invalid`] if `from..end` is not inside `images`; kernel
/// errors from the forward; [`KernelError::Io`] naming `path` (what `w`
/// writes) if a write fails.
#[allow(clippy::too_many_arguments)]
pub fn extract_rows(
    vgg: &Vgg19,
    images: ArrayView4<'_, u8>,
    (from, end): (usize, usize),
    dtype: Dtype,
    w: &mut dyn Write,
    path: &Path,
    before_batch: &mut dyn FnMut(usize) -> bool,
    after_batch: &mut dyn FnMut(usize),
) -> Result<usize> {
    if from > end || end > images.shape()[0] {
        return Err(KernelError::invalid(
            "feature rows",
            format!("{from}..{end} is not inside the {} images", images.shape()[0]),
        ));
    }
    let mut bytes = Vec::new();
    let mut row = from;
    while row < end {
        if !before_batch(row) {
            return Ok(row);
        }
        let next = (row + BATCH).min(end);
        let f = vgg.features(images.slice(s![row..next, .., .., ..]))?;
        bytes.clear();
        dtype.encode(f.as_slice().expect("a fresh array is contiguous"), &mut bytes);
        w.write_all(&bytes).map_err(|e| KernelError::io(path, e))?;
        after_batch(next - row);
        row = next;
    }
    Ok(row)
}

/// Publishes a shard file at `path` (temp, fsync, rename): a `.npy` header
/// for `[rows, dim]` of `dtype`, then `chunks` (encoded rows) in order.
///
/// # Errors
/// [`KernelError::Invalid`] if the chunks do not hold exactly `rows × dim`
/// values; [`KernelError::Io`] naming the file.
pub fn publish_shard(path: &Path, dtype: Dtype, rows: usize, dim: usize, chunks: &[&[u8]]) -> Result<()> {
    let have: usize = chunks.iter().map(|c| c.len()).sum();
    let want = rows.checked_mul(dim).and_then(|v| v.checked_mul(dtype.size()));
    if want != Some(have) {
        return Err(KernelError::invalid(
            format!("shard {}", path.display()),
            format!("{have} bytes of features for [{rows}, {dim}] {}", dtype.descr()),
        ));
    }
    publish_atomic(path, |w| {
        write_npy_header(w, dtype.descr(), &[rows, dim])?;
        chunks.iter().try_for_each(|c| w.write_all(c))
    })
}

/// Checks that the shard file at `path` holds `[rows, dim]` of `dtype`.
///
/// # Errors
/// [`KernelError::Cache`] naming the file if it does not; its read errors.
pub fn check_shard(path: &Path, dtype: Dtype, rows: usize, dim: usize) -> Result<()> {
    let header = MappedNpy::open(path)?.header()?;
    if header.shape != [rows, dim] || header.descr != dtype.descr() {
        return Err(KernelError::Cache {
            path: path.to_path_buf(),
            reason: format!(
                "{} {:?}, expected {} [{rows}, {dim}] (delete it to recompute)",
                header.descr,
                header.shape,
                dtype.descr()
            ),
        });
    }
    Ok(())
}

/// Computes shard `index` of `count` unless it is already on disk (then its
/// shape is checked). Returns whether it was computed. `progress(images)` is
/// called after each batch.
///
/// # Errors
/// Kernel errors (bad images, weights); [`KernelError::Invalid`] for a bad
/// index or count; [`KernelError::Cache`] if an existing shard has the wrong shape.
pub fn extract_shard(
    vgg: &Vgg19,
    data: &ImageDataset,
    out: &Path,
    split: &str,
    (index, count): (usize, usize),
    dtype: Dtype,
    progress: &mut dyn FnMut(usize),
) -> Result<bool> {
    if count == 0 || index >= count || count > data.len().max(1) {
        return Err(KernelError::invalid(
            format!("shard {index}/{count}"),
            format!("need 0 <= index < count <= {} images", data.len()),
        ));
    }
    let (start, end) = shard_rows(data.len(), index, count);
    let path = shard_path(out, split, index, count);
    let dim = vgg.feature_dim();
    if path.exists() {
        check_shard(&path, dtype, end - start, dim)?;
        progress(end - start);
        return Ok(false);
    }
    std::fs::create_dir_all(out).map_err(|e| KernelError::io(out, e))?;
    let mut failure = None;
    let published = publish_atomic(&path, |w| {
        write_npy_header(w, dtype.descr(), &[end - start, dim])?;
        let r = extract_rows(vgg, data.images(), (start, end), dtype, w, &path, &mut |_| true, progress);
        r.map(|_| ()).map_err(|e| {
            failure = Some(e);
            std::io::Error::other("feature extraction failed")
        })
    });
    if let Some(e) = failure {
        return Err(e);
    }
    published?;
    Ok(true)
}

/// Concatenates all `count` shards into `{split}_features.npy`, copies the
/// labels to `{split}_y.npy` and writes `note` as `{split}_features.json`,
/// if every shard exists. Returns the merged file, or `None` when shards are
/// missing. Every file is published atomically, so merging again (a retry,
/// a second merger) replaces them with the same bytes.
///
/// # Errors
/// [`KernelError::Invalid`] for a `count` of 0 (there is nothing to merge,
/// and an empty cache is not a result); [`KernelError::Cache`] for shards
/// that do not fit together; I/O and format errors naming the file.
pub fn merge(out: &Path, split: &str, count: usize, labels: &Path, note: &impl Serialize) -> Result<Option<PathBuf>> {
    if count == 0 {
        return Err(KernelError::invalid("shard count", "the shard count must be at least 1"));
    }
    let paths: Vec<PathBuf> = (0..count).map(|i| shard_path(out, split, i, count)).collect();
    if paths.iter().any(|p| !p.exists()) {
        return Ok(None);
    }
    let maps = paths.iter().map(MappedNpy::open).collect::<Result<Vec<_>>>()?;
    let mut rows = 0;
    let mut first: Option<(String, usize)> = None;
    for m in &maps {
        let h = m.header()?;
        let ok = h.shape.len() == 2 && first.as_ref().is_none_or(|(d, c)| *d == h.descr && *c == h.shape[1]);
        if !ok {
            return Err(KernelError::Cache {
                path: m.path().to_path_buf(),
                reason: format!("{} {:?}", h.descr, h.shape),
            });
        }
        first.get_or_insert((h.descr.clone(), h.shape[1]));
        rows = usize::checked_add(rows, h.shape[0]).ok_or_else(|| KernelError::Cache {
            path: m.path().to_path_buf(),
            reason: format!("{} rows bring the merged row count past {}", h.shape[0], usize::MAX),
        })?;
    }
    let (descr, dim) = first.unwrap_or_else(|| ("<f4".into(), 0));
    let merged = out.join(format!("{split}_features.npy"));
    publish_atomic(&merged, |w| {
        write_npy_header(w, &descr, &[rows, dim])?;
        for m in &maps {
            w.write_all(m.data_bytes().map_err(std::io::Error::other)?)?;
        }
        Ok(())
    })?;
    let y = out.join(format!("{split}_y.npy"));
    let mut label_bytes = Vec::new();
    File::open(labels).and_then(|mut f| f.read_to_end(&mut label_bytes)).map_err(|e| KernelError::io(labels, e))?;
    publish_atomic(&y, |w| w.write_all(&label_bytes))?;
    let meta = out.join(format!("{split}_features.json"));
    let text = serde_json::to_string_pretty(note).map_err(|e| KernelError::invalid("cache note", e.to_string()))?;
    publish_atomic(&meta, |w| w.write_all(text.as_bytes()))?;
    Ok(Some(merged))
}

/// Carries the class list (`classes.txt`, from `prepare-cifar10`) from the
/// images' folder `data` into the cache folder `out`, where training finds
/// it beside the labels. Nothing to do if `data` has none; an identical copy
/// is kept.
///
/// # Errors
/// Kernel errors if the list is unreadable or malformed;
/// [`KernelError::Cache`] if `out` holds a different class list.
pub fn carry_class_list(data: &Path, out: &Path) -> Result<bool> {
    use crate::dataset::{read_class_list, CLASS_LIST};
    let (from, to) = (data.join(CLASS_LIST), out.join(CLASS_LIST));
    let Some(names) = read_class_list(&from)? else { return Ok(false) };
    match read_class_list(&to)? {
        Some(existing) if existing == names => return Ok(false),
        Some(_) => {
            return Err(KernelError::Cache {
                path: to,
                reason: format!("differs from {} (features of another dataset? delete it)", from.display()),
            })
        }
        None => {}
    }
    let text = names.join("\n") + "\n";
    publish_atomic(&to, |w| w.write_all(text.as_bytes()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_rows_without_overflow() {
        for (n, count) in [(10, 3), (45, 7), (1, 1), (5, 5), (100, 1)] {
            let mut next = 0;
            for i in 0..count {
                let (a, b) = shard_rows(n, i, count);
                assert_eq!(a, next);
                assert!(b > a, "n {n} count {count} shard {i} is empty");
                next = b;
            }
            assert_eq!(next, n);
        }
        assert_eq!(shard_rows(usize::MAX, 1, 2), (usize::MAX / 2, usize::MAX));
    }

    #[test]
    fn dtypes_parse_and_serialise_by_name() {
        assert_eq!("f16".parse::<Dtype>().unwrap(), Dtype::F16);
        assert!("f64".parse::<Dtype>().is_err());
        assert_eq!(serde_json::to_value(Dtype::F32).unwrap(), "f32");
        assert_eq!(serde_json::from_value::<Dtype>("f16".into()).unwrap(), Dtype::F16);
        let mut out = vec![];
        Dtype::F16.encode(&[1.0, -2.0], &mut out);
        assert_eq!(out, [0x00, 0x3c, 0x00, 0xc0]);
    }
}
