//! `lml export`: a trained classifier for use elsewhere.
//!
//! # torchvision (`.safetensors`)
//! The whole classifier in the layout of `torchvision.models.vgg19`:
//! `features.N.weight/bias` (the 16 convolutions), `classifier.0` and
//! `classifier.3` (fc6, fc7), and `classifier.6` = the trained head with the
//! feature standardisation folded into its weight and bias
//! ([`FeatureStats::fold`](lml_kernel::standardize::FeatureStats::fold)),
//! so that
//!
//! ```python
//! m = torchvision.models.vgg19(num_classes=C)
//! m.load_state_dict(safetensors.torch.load_file("model.safetensors"))
//! m.eval()(x)          # the logits of `lml predict`, x preprocessed as below
//! ```
//!
//! The header's `__metadata__` holds, as strings: `format` (`pt`),
//! `preset` (`torchvision` or `caffe`: how to normalise, see
//! [`Preset`](lml_kernel::Preset)), `input_size` (the side `S`), `cut`,
//! `class_names` (a JSON list), `image_size` (the training images' `[H, W]`
//! as JSON, when known) and `source`.
//!
//! **What holds at which input size.** torchvision's VGG19 runs
//! `features → AdaptiveAvgPool2d((7, 7)) → flatten → classifier`; the
//! kernel's forward does the same ([`lml_kernel::vgg`]): at 224 the pool is
//! the identity, at 32 pool5 is 512×1×1 and the pool repeats each channel's
//! value 49 times before `classifier.0`. So for a job cut at **fc7** (the
//! default) the exported model gives `lml predict`'s logits at every input
//! size, 32 and 224 included, when fed the same preprocessed input
//! (`[N, 3, S, S]`: the image resized as [`lml_kernel::classifier`] says, then
//! normalised by `preset`). At **fc6** `classifier.3` is the identity (fc6's
//! output is already ≥ 0, so its ReLU changes nothing). At **pool5** the
//! head reads pool5 directly: at `S` = 32 and 64 (512 and 2,048 features)
//! `classifier.0` is a 0/1 matrix that picks each pool5 value out of the
//! 7×7 pooled map (a cell whose pooling window is that value alone),
//! `classifier.3` the identity, and the head fills the first columns of
//! `classifier.6`; pool5 values are ≥ 0, so the ReLUs change nothing and the
//! logits are the head's exactly. Past 64 pool5 has more than 4,096 values and
//! no torchvision VGG19 holds such a head: export `--format npy` instead.
//!
//! # The kernel's own layout (`--format npy`)
//! A folder [`Classifier::open`] reads (see [`lml_kernel::classifier`]):
//! the weight store up to the cut, the head and the statistics unfolded.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use lml_kernel::classifier::Classifier;
use lml_kernel::layers::adaptive_pool_window;
use lml_kernel::vgg::{LayerKind, CLASSIFIER_IN, VGG19};
use lml_kernel::{Cut, KernelError};
use ndarray::{s, Array1, Array2, ArrayD, ArrayViewD};

use crate::convert::write_safetensors_to;

/// Width of fc6 and fc7, the input of `classifier.6`.
pub const FC_WIDTH: usize = 4096;

/// What `lml export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// torchvision's VGG19 as one `.safetensors` file.
    Safetensors,
    /// The kernel's folder ([`Classifier::save`]).
    Npy,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "safetensors" => Ok(Format::Safetensors),
            "npy" => Ok(Format::Npy),
            _ => Err(format!("{s:?}: expected safetensors or npy")),
        }
    }
}

/// What can go wrong exporting.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: already exists (--force replaces it)", .0.display())]
    Exists(PathBuf),
    #[error("{reason}")]
    Unsupported { reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

type Result<T> = std::result::Result<T, ExportError>;

/// The tensors of the torchvision layout that are not the backbone's own
/// (the head, and for pool5 and fc6 cuts the pass-through layers), built for
/// `model`; the backbone's are views into its weight store.
struct Generated {
    tensors: Vec<(String, ArrayD<f32>)>,
}

/// The identity `[n, n]`.
fn identity(n: usize) -> Array2<f32> {
    Array2::from_shape_fn((n, n), |(i, j)| f32::from(u8::from(i == j)))
}

/// `classifier.0` for a pool5 cut at `side = S/32`: row `r` (feature `r` of
/// the kernel's pool5 flattening, `c·side² + y·side + x`) holds a single 1 at
/// the column of a 7×7 pooled cell whose window is `(y, x)` alone, so that
/// `classifier.0 · pooled = pool5` in its first rows.
///
/// # Errors
/// [`ExportError::Unsupported`] when pool5 has more than [`FC_WIDTH`] values
/// or a position has no cell of its own.
fn pool5_selection(side: usize) -> Result<Array2<f32>> {
    let dim = 512 * side * side;
    if dim > FC_WIDTH {
        return Err(ExportError::Unsupported {
            reason: format!(
                "a head on pool5 at input {} reads {dim} features; torchvision's VGG19 passes at most {FC_WIDTH} to classifier.6 (pool5 fits at input 32 and 64): export --format npy",
                side * 32
            ),
        });
    }
    // For each pool5 position along an axis, a pooled cell whose window is that position alone.
    let own: Vec<usize> = (0..side)
        .map(|i| (0..7).find(|&o| adaptive_pool_window(o, side, 7) == (i, i + 1)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ExportError::Unsupported {
            reason: format!("pool5 of side {side}: no 7×7 cell pools one position alone"),
        })?;
    let mut m = Array2::<f32>::zeros((FC_WIDTH, CLASSIFIER_IN));
    for c in 0..512 {
        for (y, &oy) in own.iter().enumerate() {
            for (x, &ox) in own.iter().enumerate() {
                m[[c * side * side + y * side + x, c * 49 + oy * 7 + ox]] = 1.0;
            }
        }
    }
    Ok(m)
}

/// The generated tensors for `model` (see [`Generated`]).
fn generated(model: &Classifier) -> Result<Generated> {
    let vgg = model.vgg();
    let head = model.folded_head()?;
    let (classes, dim) = (head.classes(), head.feature_dim());
    let mut w6 = Array2::<f32>::zeros((classes, FC_WIDTH));
    let mut tensors = Vec::new();
    match vgg.cut() {
        Cut::Fc7 => {}
        Cut::Fc6 => tensors.push(("classifier.3.weight".to_string(), identity(FC_WIDTH).into_dyn())),
        Cut::Pool5 => {
            tensors.push(("classifier.0.weight".to_string(), pool5_selection(vgg.input_size() / 32)?.into_dyn()));
            tensors.push(("classifier.3.weight".to_string(), identity(FC_WIDTH).into_dyn()));
        }
    }
    for layer in ["classifier.0", "classifier.3"] {
        if tensors.iter().any(|(n, _)| n == &format!("{layer}.weight")) {
            tensors.push((format!("{layer}.bias"), Array1::<f32>::zeros(FC_WIDTH).into_dyn()));
        }
    }
    w6.slice_mut(s![.., ..dim]).assign(&head.weight);
    tensors.push(("classifier.6.weight".to_string(), w6.into_dyn()));
    tensors.push(("classifier.6.bias".to_string(), head.bias.into_dyn()));
    Ok(Generated { tensors })
}

/// The header metadata of an export (see the module docs).
pub fn metadata(model: &Classifier, source: &str) -> BTreeMap<String, String> {
    let vgg = model.vgg();
    let name = |v: serde_json::Value| v.as_str().map(String::from).unwrap_or_else(|| v.to_string());
    let mut m = BTreeMap::new();
    m.insert("preset".into(), name(serde_json::to_value(vgg.preset()).expect("serialisable")));
    m.insert("input_size".into(), vgg.input_size().to_string());
    m.insert("cut".into(), name(serde_json::to_value(vgg.cut()).expect("serialisable")));
    m.insert("class_names".into(), serde_json::to_string(model.classes()).expect("serialisable"));
    if let Some((h, w)) = model.image_size() {
        m.insert("image_size".into(), format!("[{h}, {w}]"));
    }
    m.insert("source".into(), source.to_string());
    m
}

/// Every tensor of the torchvision layout, in the table's order: views into
/// the weight store, or into `generated`.
fn torchvision_views<'a>(
    model: &'a Classifier,
    generated: &'a Generated,
) -> Result<Vec<(String, ArrayViewD<'a, f32>)>> {
    let store = model.vgg().store();
    let mut out = Vec::new();
    for layer in VGG19.iter().filter(|l| !matches!(l.kind, LayerKind::MaxPool)) {
        for kind in ["weight", "bias"] {
            let name = format!("{}.{kind}", layer.name);
            let view = match generated.tensors.iter().find(|(n, _)| *n == name) {
                Some((_, t)) => t.view(),
                None => store.view(&name)?,
            };
            out.push((name, view));
        }
    }
    Ok(out)
}

/// Publishes a file at `path` whose bytes `fill` writes: a temp file beside
/// it, fsynced, then linked into place (refused if `path` exists) or, with
/// `force`, renamed over it. Nothing is left behind on error.
fn publish_file(path: &Path, force: bool, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let io = |e| ExportError::Io { path: path.to_path_buf(), source: e };
    if !force && path.symlink_metadata().is_ok() {
        return Err(ExportError::Exists(path.to_path_buf()));
    }
    let tmp = temp_beside(path, "partial");
    let result = (|| {
        let file = fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &file);
        fill(&mut w)?;
        w.flush()?;
        drop(w);
        file.sync_all()?;
        if force {
            fs::rename(&tmp, path)
        } else {
            // link(2) fails if the name exists: no overwrite even in a race.
            fs::hard_link(&tmp, path).and_then(|()| fs::remove_file(&tmp))
        }
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            return Err(ExportError::Exists(path.to_path_buf()));
        }
        return Err(io(e));
    }
    if let Some(d) = parent(path).and_then(|p| fs::File::open(p).ok()) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn parent(path: &Path) -> Option<&Path> {
    path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
}

/// `.NAME.WHAT-PID` beside `path`.
fn temp_beside(path: &Path, what: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{what}-{}", std::process::id()))
}

/// Writes `model` as torchvision's VGG19 in `.safetensors` at `out` (see
/// the module docs), `source` recorded in the metadata. Returns the bytes written.
///
/// # Errors
/// [`ExportError::Exists`] if `out` exists and not `force`;
/// [`ExportError::Unsupported`] for a pool5 head past input 64; the weight
/// store's errors; I/O errors naming `out`.
pub fn export_safetensors(model: &Classifier, out: &Path, source: &str, force: bool) -> Result<u64> {
    let generated = generated(model)?;
    let views = torchvision_views(model, &generated)?;
    let meta = metadata(model, source);
    publish_file(out, force, |w| write_safetensors_to(w, &views, &meta))?;
    fs::metadata(out).map(|m| m.len()).map_err(|e| ExportError::Io { path: out.to_path_buf(), source: e })
}

/// Writes `model` as the kernel's folder at `out` ([`Classifier::save`]);
/// with `force` an existing folder is replaced (the new one is complete
/// before the old one is moved away).
///
/// # Errors
/// [`ExportError::Exists`] if `out` exists and not `force`; the save's errors.
pub fn export_npy(model: &Classifier, out: &Path, source: &str, force: bool) -> Result<()> {
    if !out.exists() {
        return Ok(model.save(out, Some(source))?);
    }
    if !force {
        return Err(ExportError::Exists(out.to_path_buf()));
    }
    let (new, old) = (temp_beside(out, "new"), temp_beside(out, "old"));
    let _ = fs::remove_dir_all(&new);
    model.save(&new, Some(source))?;
    let swap = fs::rename(out, &old).and_then(|()| fs::rename(&new, out));
    if let Err(e) = swap {
        let _ = fs::remove_dir_all(&new);
        return Err(ExportError::Io { path: out.to_path_buf(), source: e });
    }
    let _ = if old.is_dir() { fs::remove_dir_all(&old) } else { fs::remove_file(&old) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool5_selection_reads_pool5_out_of_the_pooled_map() {
        use lml_kernel::layers::adaptive_avgpool2d_forward;
        for side in [1, 2] {
            let dim = 512 * side * side;
            let pool5 =
                ndarray::Array4::from_shape_fn((1, 512, side, side), |(_, c, y, x)| (c * 7 + y * 3 + x) as f32 + 0.5);
            let pooled = adaptive_avgpool2d_forward(pool5.view(), (7, 7)).unwrap();
            let flat = pooled.into_shape_with_order(CLASSIFIER_IN).unwrap();
            let m = pool5_selection(side).unwrap();
            let y = m.dot(&flat);
            let want = pool5.into_shape_with_order(dim).unwrap();
            assert_eq!(y.slice(s![..dim]), want, "side {side}");
            assert!(y.slice(s![dim..]).iter().all(|&v| v == 0.0), "side {side}: rows past pool5 are zero");
            assert!(m.iter().all(|&v| v == 0.0 || v == 1.0));
        }
        let err = pool5_selection(3).unwrap_err().to_string();
        assert!(err.contains("input 96") && err.contains("--format npy"), "{err}");
    }
}
