//! A trained classifier as one model: the frozen VGG19 to its cut, the
//! feature standardisation the head was trained on, and the head.
//!
//! ```text
//! u8 image [H, W, 3] ──resize to the training images' size──▶ [T_h, T_w, 3]
//!   ──preprocess (bilinear to S×S, the weights' preset)──▶ [3, S, S]
//!   ──VGG19 to the cut──▶ x [D] ──(x − mean) / scale──▶ ──W·x + b──▶ logits [C]
//! ```
//!
//! Every step after the resize is the one the training features went
//! through ([`crate::features`]: batches of at most [`BATCH`] images, so an
//! image's features do not depend on its batch), so an image of the
//! training images' size gets the logits its cached features give.
//!
//! # Images of another size
//! The training images (CIFAR-10's are 32×32) were resized to the input
//! side `S` by [`preprocess`](crate::preprocess())'s bilinear interpolation. A
//! new image of another size is first brought to the training images' size
//! `T` by [`resize`] (the same bilinear filter when enlarging; widened to the
//! scale when shrinking, so a 500×375 photograph is averaged down, not
//! sampled with aliasing), then takes the training images' path. Resizing
//! it straight to `S` instead would show the network a sharper image than
//! any it was trained on when `S > T` (224 from 32: the training images are
//! blurred by the enlargement, and the head learned from features of
//! blurred images). When `T` is not known (features made before it was
//! recorded), `T = S × S`.
//!
//! # Layout on disk ([`save`](Classifier::save) / [`open`](Classifier::open))
//! ```text
//! model/
//!   model.json          {"format": "lml-classifier/1", "input_size": 32, "cut": "fc7",
//!                        "image_size": [32, 32], "classes": ["airplane", …],
//!                        "standardized": true, "source": "job cifar"}
//!   weights/            a weight store (manifest.json + one .npy per tensor, see
//!                       crate::weights): the tensors up to the cut; its manifest names the preset
//!   head.weight.npy     [C, D] f32
//!   head.bias.npy       [C]
//!   stats.mean.npy      [D]     (when "standardized")
//!   stats.scale.npy     [D]
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{s, Array2, Array4, ArrayView3, ArrayView4, Axis};
use serde::{Deserialize, Serialize};

use crate::error::{KernelError, Result};
use crate::features::BATCH;
use crate::npy::{publish_atomic, write_npy_atomic, MappedNpy};
use crate::preprocess::resize;
use crate::standardize::{FeatureStats, STATS_MEAN, STATS_SCALE};
use crate::trainer::{Head, HEAD_BIAS, HEAD_WEIGHT};
use crate::vgg::{tensor_specs, Vgg19, MODEL};
use crate::weights::WeightStoreWriter;
use crate::Cut;

/// `model.json`'s format tag.
pub const FORMAT: &str = "lml-classifier/1";
/// The description file of a saved classifier.
pub const MODEL_JSON: &str = "model.json";
/// The weight store's folder inside a saved classifier.
pub const WEIGHTS_DIR: &str = "weights";

/// `model.json` of a saved classifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelNote {
    /// [`FORMAT`].
    pub format: String,
    /// Side `S` of the network's square input.
    pub input_size: usize,
    pub cut: Cut,
    /// `[H, W]` of the training images, when known (see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<[usize; 2]>,
    /// Class names, class `i` at index `i`.
    pub classes: Vec<String>,
    /// Whether `stats.*.npy` standardise the features before the head.
    pub standardized: bool,
    /// Where the classifier came from (e.g. `job cifar`), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The frozen VGG19, the standardisation and the head (see the module docs).
#[derive(Clone, Debug)]
pub struct Classifier {
    vgg: Vgg19,
    stats: Option<FeatureStats>,
    head: Head,
    classes: Vec<String>,
    image_size: Option<(usize, usize)>,
}

impl Classifier {
    /// Puts the parts together. `classes` may be empty: the classes are then
    /// named by their index (`"0"`, `"1"`, …).
    ///
    /// # Errors
    /// [`KernelError::Shape`] if the head's or the statistics' feature length
    /// is not the extractor's, or there are not as many names as classes;
    /// [`KernelError::Invalid`] for a head of no class or an image size with a zero side.
    pub fn new(
        vgg: Vgg19,
        stats: Option<FeatureStats>,
        head: Head,
        classes: Vec<String>,
        image_size: Option<(usize, usize)>,
    ) -> Result<Self> {
        let dim = vgg.feature_dim();
        if head.feature_dim() != dim {
            return Err(KernelError::shape(
                HEAD_WEIGHT,
                format!("[classes, {dim}] (the features at {:?})", vgg.cut()),
                head.weight.shape(),
            ));
        }
        if head.classes() == 0 {
            return Err(KernelError::invalid(HEAD_WEIGHT, "the head has no class"));
        }
        if let Some(s) = &stats {
            if s.dim() != dim {
                return Err(KernelError::shape(STATS_MEAN, format!("[{dim}]"), &[s.dim()]));
            }
        }
        let classes = if classes.is_empty() { (0..head.classes()).map(|c| c.to_string()).collect() } else { classes };
        if classes.len() != head.classes() {
            return Err(KernelError::shape(
                "class names",
                format!("[{}] (one per class of the head)", head.classes()),
                &[classes.len()],
            ));
        }
        if let Some((h, w)) = image_size {
            if h == 0 || w == 0 {
                return Err(KernelError::invalid("training image size", format!("{h}×{w} has a zero side")));
            }
        }
        Ok(Classifier { vgg, stats, head, classes, image_size })
    }

    /// The frozen extractor.
    pub fn vgg(&self) -> &Vgg19 {
        &self.vgg
    }

    /// The standardisation applied before the head, if any.
    pub fn stats(&self) -> Option<&FeatureStats> {
        self.stats.as_ref()
    }

    /// The head, as trained (on standardised features if [`stats`](Self::stats) is set).
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// The head on raw features: the standardisation folded into it
    /// ([`FeatureStats::fold`]), or the head itself without one.
    ///
    /// # Errors
    /// As [`FeatureStats::fold`] (not on a classifier built by [`new`](Self::new)).
    pub fn folded_head(&self) -> Result<Head> {
        match &self.stats {
            Some(s) => s.fold(&self.head),
            None => Ok(self.head.clone()),
        }
    }

    /// Class names, class `i` at index `i`.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// `(H, W)` of the training images, when known.
    pub fn image_size(&self) -> Option<(usize, usize)> {
        self.image_size
    }

    /// The size a new image is brought to before [`preprocess`](crate::preprocess()):
    /// the training images' size, else `S × S`.
    pub fn target_size(&self) -> (usize, usize) {
        let s = self.vgg.input_size();
        self.image_size.unwrap_or((s, s))
    }

    /// Logits `[N, C]` of `u8` RGB images `[N, H, W, 3]`: each image brought
    /// to [`target_size`](Self::target_size) by [`resize`] (nothing happens
    /// to images of that size), then preprocessed, run through VGG19 in
    /// batches of at most [`BATCH`], standardised and classified.
    ///
    /// # Errors
    /// As [`resize`], [`Vgg19::features`] and [`Head::logits`].
    pub fn logits(&self, images: ArrayView4<'_, u8>) -> Result<Array2<f32>> {
        let (n, h, w, c) = images.dim();
        let target = self.target_size();
        let mut out = Array2::<f32>::zeros((n, self.head.classes()));
        for start in (0..n).step_by(BATCH) {
            let end = (start + BATCH).min(n);
            let batch = images.slice(s![start..end, .., .., ..]);
            let features = if (h, w) == target {
                self.vgg.features(batch)?
            } else {
                let mut sized = Array4::<u8>::zeros((end - start, target.0, target.1, c));
                for (mut dst, src) in sized.outer_iter_mut().zip(batch.outer_iter()) {
                    dst.assign(&resize(src, target)?);
                }
                self.vgg.features(sized.view())?
            };
            out.slice_mut(s![start..end, ..]).assign(&self.logits_of_features(features)?);
        }
        Ok(out)
    }

    /// [`logits`](Self::logits) of one image `[H, W, 3]`.
    ///
    /// # Errors
    /// As [`logits`](Self::logits).
    pub fn logits_one(&self, image: ArrayView3<'_, u8>) -> Result<Vec<f32>> {
        Ok(self.logits(image.insert_axis(Axis(0)))?.into_raw_vec_and_offset().0)
    }

    /// Logits `[N, C]` of features `[N, D]` at the cut: standardised, then the head.
    ///
    /// # Errors
    /// [`KernelError::Shape`] if the feature length is not `D`.
    pub fn logits_of_features(&self, mut features: Array2<f32>) -> Result<Array2<f32>> {
        if let Some(s) = &self.stats {
            s.apply(&mut features)?;
        }
        self.head.logits(features.view())
    }

    /// Opens a classifier saved by [`save`](Self::save).
    ///
    /// # Errors
    /// [`KernelError::Manifest`] naming `model.json` if it is missing,
    /// malformed or of another format; the weight store's errors; npy errors
    /// naming the head's or statistics' file; [`new`](Self::new)'s checks.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let note_path = dir.join(MODEL_JSON);
        let bad = |reason: String| KernelError::Manifest { path: note_path.clone(), reason };
        let text = fs::read_to_string(&note_path).map_err(|e| KernelError::io(&note_path, e))?;
        let note: ModelNote = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if note.format != FORMAT {
            return Err(bad(format!("format {:?}, expected {FORMAT:?}", note.format)));
        }
        let vgg = Vgg19::open(dir.join(WEIGHTS_DIR), note.input_size, note.cut)?;
        let read = |name: &str| -> Result<MappedNpy> { MappedNpy::open(dir.join(format!("{name}.npy"))) };
        let (w, b) = (read(HEAD_WEIGHT)?, read(HEAD_BIAS)?);
        let head = Head::from_arrays(w.view::<f32>()?, b.view::<f32>()?)?;
        let stats = if note.standardized {
            let (m, s) = (read(STATS_MEAN)?, read(STATS_SCALE)?);
            Some(FeatureStats::from_arrays(m.view::<f32>()?, s.view::<f32>()?)?)
        } else {
            None
        };
        Self::new(vgg, stats, head, note.classes, note.image_size.map(|[h, w]| (h, w)))
    }

    /// What [`save`](Self::save) writes as `model.json`.
    pub fn note(&self, source: Option<&str>) -> ModelNote {
        ModelNote {
            format: FORMAT.into(),
            input_size: self.vgg.input_size(),
            cut: self.vgg.cut(),
            image_size: self.image_size.map(|(h, w)| [h, w]),
            classes: self.classes.clone(),
            standardized: self.stats.is_some(),
            source: source.map(String::from),
        }
    }

    /// Saves the classifier as a folder at `dir` (see the module docs): the
    /// weight tensors up to the cut are copied, so the folder stands alone.
    /// Written in a temporary folder beside `dir`, every file fsynced, then
    /// renamed into place: `dir` appears whole or not at all.
    ///
    /// # Errors
    /// [`KernelError::Invalid`] if `dir` exists; [`KernelError::Io`] naming
    /// the path on I/O failure (the temporary folder is removed).
    pub fn save(&self, dir: impl AsRef<Path>, source: Option<&str>) -> Result<()> {
        let dir = dir.as_ref();
        if dir.exists() {
            return Err(KernelError::invalid("classifier folder", format!("{} already exists", dir.display())));
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = TempDir(dir.with_file_name(format!(".{name}.partial-{}", std::process::id())));
        let _ = fs::remove_dir_all(&tmp.0);
        fs::create_dir_all(&tmp.0).map_err(|e| KernelError::io(&tmp.0, e))?;
        let store = self.vgg.store();
        let mut writer = WeightStoreWriter::create(tmp.0.join(WEIGHTS_DIR), MODEL, store.preset())?;
        for spec in tensor_specs(self.vgg.cut()).iter().filter(|s| s.required) {
            writer.add(&spec.name, store.view(&spec.name)?)?;
        }
        writer.finish()?;
        let mut tensors = self.head.tensors().to_vec();
        if let Some(s) = &self.stats {
            tensors.extend(s.tensors());
        }
        for (name, t) in tensors {
            write_npy_atomic(tmp.0.join(format!("{name}.npy")), &t)?;
        }
        let text = serde_json::to_string_pretty(&self.note(source)).expect("the note serialises");
        publish_atomic(&tmp.0.join(MODEL_JSON), |w| w.write_all(text.as_bytes()))?;
        fs::File::open(&tmp.0).and_then(|d| d.sync_all()).map_err(|e| KernelError::io(&tmp.0, e))?;
        fs::rename(&tmp.0, dir).map_err(|e| KernelError::io(dir, e))?;
        if let Some(parent) =
            dir.parent().and_then(|p| fs::File::open(if p.as_os_str().is_empty() { Path::new(".") } else { p }).ok())
        {
            let _ = parent.sync_all();
        }
        Ok(())
    }
}

/// A temporary folder removed on drop (after a successful rename there is nothing left).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The `k` most probable classes of one row of probabilities, most probable
/// first (the lower index first on ties): `(class, probability)`.
pub fn top_k(probabilities: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]).then(a.cmp(&b)));
    order.into_iter().take(k).map(|c| (c, probabilities[c])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_probability_then_index() {
        let p = [0.1, 0.4, 0.1, 0.4];
        assert_eq!(top_k(&p, 3), [(1, 0.4), (3, 0.4), (0, 0.1)]);
        assert_eq!(top_k(&p, 10).len(), 4);
        assert!(top_k(&p, 0).is_empty());
    }
}
