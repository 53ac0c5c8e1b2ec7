//! The frozen-feature cache: run the frozen VGG19 once over a prepared split
//! and keep its features on disk, so that training the head never runs the
//! backbone again.
//!
//! # Layout (under the output folder)
//! ```text
//! {split}.shard-0003-of-0010.npy   f32 [rows, D]: rows [3·N/10, 4·N/10) — one per shard
//! {split}_features.npy             f32 [N, D]: the shards concatenated (when all exist)
//! {split}_y.npy                    the labels, copied
//! {split}_features.json            what produced them (cut, input size, weights, dims)
//! classes.txt                      the class names, carried from the images' folder
//! ```
//! Shards are independent (`--shard i/n` lets many workers share the work)
//! and each is published atomically, so an interrupted run is resumed by
//! running it again: finished shards are kept, the rest recomputed. Features
//! are computed in batches of [`BATCH`] starting at each shard's first row,
//! so a resumed run gives bit-for-bit the same file as an uninterrupted one.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use lml_kernel::dataset::ImageDataset;
use lml_kernel::npy::{publish_atomic, write_npy_header, MappedNpy};
use lml_kernel::{KernelError, Vgg19};
use ndarray::s;

/// Images per forward pass. At most 16, so the dense layers take the same
/// (dot-product) path for every batch and results do not depend on where a
/// batch starts.
pub const BATCH: usize = 16;

/// What can go wrong building the cache.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("shard {index}/{count}: {reason}")]
    Shard { index: usize, count: usize, reason: String },
    #[error("{}: {reason}", path.display())]
    Existing { path: PathBuf, reason: String },
}

type Result<T> = std::result::Result<T, FeatureError>;

/// How cached features are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// `<f4`: exact.
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

    fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        out.clear();
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

/// Rows `[start, end)` of shard `index` of `count` over `n` rows.
pub fn shard_rows(n: usize, index: usize, count: usize) -> (usize, usize) {
    (index * n / count, (index + 1) * n / count)
}

/// The file of shard `index` of `count`.
pub fn shard_path(out: &Path, split: &str, index: usize, count: usize) -> PathBuf {
    out.join(format!("{split}.shard-{index:04}-of-{count:04}.npy"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FeatureError + '_ {
    move |e| FeatureError::Kernel(KernelError::Io { path: path.to_path_buf(), source: e })
}

/// Computes shard `index` of `count` unless it is already on disk (then its
/// shape is checked). Returns whether it was computed. `progress(images)` is
/// called after each batch.
///
/// # Errors
/// Kernel errors (bad images, weights); [`FeatureError::Shard`] for a bad
/// index or count; [`FeatureError::Existing`] if an existing shard has the wrong shape.
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
        return Err(FeatureError::Shard {
            index,
            count,
            reason: format!("need 0 <= index < count <= {} images", data.len()),
        });
    }
    let (start, end) = shard_rows(data.len(), index, count);
    let path = shard_path(out, split, index, count);
    let dim = vgg.feature_dim();
    if path.exists() {
        let header = MappedNpy::open(&path)?.header()?;
        if header.shape != [end - start, dim] || header.descr != dtype.descr() {
            return Err(FeatureError::Existing {
                path,
                reason: format!(
                    "{} {:?}, expected {} [{}, {dim}] (delete it to recompute)",
                    header.descr,
                    header.shape,
                    dtype.descr(),
                    end - start
                ),
            });
        }
        progress(end - start);
        return Ok(false);
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let images = data.images();
    let mut failure = None;
    let published = publish_atomic(&path, |w| {
        write_npy_header(w, dtype.descr(), &[end - start, dim])?;
        let mut bytes = Vec::new();
        for b0 in (start..end).step_by(BATCH) {
            let b1 = (b0 + BATCH).min(end);
            match vgg.features(images.slice(s![b0..b1, .., .., ..])) {
                Ok(f) => {
                    dtype.encode(f.as_slice().expect("fresh array"), &mut bytes);
                    w.write_all(&bytes)?;
                    progress(b1 - b0);
                }
                Err(e) => {
                    failure = Some(e);
                    return Err(std::io::Error::other("feature extraction failed"));
                }
            }
        }
        Ok(())
    });
    if let Some(e) = failure {
        return Err(e.into());
    }
    published?;
    Ok(true)
}

/// Concatenates all `count` shards into `{split}_features.npy` and copies the
/// labels, if every shard exists. Returns the merged file, or `None` when
/// shards are missing.
///
/// # Errors
/// [`FeatureError::Shard`] for a `count` of 0 (there is nothing to merge,
/// and an empty cache is not a result); I/O and format errors naming the file.
pub fn merge(
    out: &Path,
    split: &str,
    count: usize,
    labels: &Path,
    note: &serde_json::Value,
) -> Result<Option<PathBuf>> {
    if count == 0 {
        return Err(FeatureError::Shard { index: 0, count, reason: "the shard count must be at least 1".into() });
    }
    let paths: Vec<PathBuf> = (0..count).map(|i| shard_path(out, split, i, count)).collect();
    if paths.iter().any(|p| !p.exists()) {
        return Ok(None);
    }
    let maps = paths.iter().map(MappedNpy::open).collect::<std::result::Result<Vec<_>, _>>()?;
    let mut rows = 0;
    let mut first: Option<(String, usize)> = None;
    for m in &maps {
        let h = m.header()?;
        let ok = h.shape.len() == 2 && first.as_ref().is_none_or(|(d, c)| *d == h.descr && *c == h.shape[1]);
        if !ok {
            return Err(FeatureError::Existing {
                path: m.path().to_path_buf(),
                reason: format!("{} {:?}", h.descr, h.shape),
            });
        }
        first.get_or_insert((h.descr.clone(), h.shape[1]));
        rows = usize::checked_add(rows, h.shape[0]).ok_or_else(|| FeatureError::Existing {
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
    File::open(labels).and_then(|mut f| f.read_to_end(&mut label_bytes)).map_err(io(labels))?;
    publish_atomic(&y, |w| w.write_all(&label_bytes))?;
    let meta = out.join(format!("{split}_features.json"));
    let text = serde_json::to_string_pretty(note).expect("json value serialises");
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
/// [`FeatureError::Existing`] if `out` holds a different class list.
pub fn carry_class_list(data: &Path, out: &Path) -> Result<bool> {
    use lml_kernel::dataset::{read_class_list, CLASS_LIST};
    let (from, to) = (data.join(CLASS_LIST), out.join(CLASS_LIST));
    let Some(names) = read_class_list(&from)? else { return Ok(false) };
    match read_class_list(&to)? {
        Some(existing) if existing == names => return Ok(false),
        Some(_) => {
            return Err(FeatureError::Existing {
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
