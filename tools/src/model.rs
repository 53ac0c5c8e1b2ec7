//! What a finished job trained, as one model: the frozen VGG19 the job's
//! features came from, the job's feature standardisation and its final head
//! ([`lml_kernel::classifier::Classifier`]); image files read for it; and
//! what `lml predict` and `lml evaluate` compute with it.
//!
//! # Where the parts come from
//! A job folder (`<root>/jobs/<job>/`, [`JobDir`]) holds `config.json`
//! (the spec, the classes and their names), `stats/` (the standardisation,
//! when the spec standardises), `params/NNNNNN/` (the head after `NNNNNN`
//! rounds) and `final.json` (how many rounds the job applied, and how it
//! ended). The head is `params/<final rounds>/`.
//!
//! The backbone is the one the training features came from:
//! * a job on images (`"forward": "every-step"`) names its weights, input
//!   size and cut in its spec, and the images' size is in their `.npy` header;
//! * a job on cached features (the usual case: `lml train --images` trains
//!   on the cache its extraction made, `--features` on one `lml
//!   extract-features` made) finds them in the cache's note
//!   (`{split}_features.json` beside `{split}_features.npy`,
//!   [`CacheNote`]): its weights (relative to the root, or absolute), input
//!   size, cut, preset and images' size.
//!
//! Features without a note (made by other means), or a note whose weight
//! folder is gone, need `--weights DIR` ([`Overrides`]), and then `--input-size`
//! and `--cut` unless they are the defaults ([`DEFAULT_INPUT_SIZE`],
//! [`DEFAULT_CUT`]). What the job records cannot be overridden (the head
//! was trained on those features), except the weights' place; their preset
//! and feature length are checked against the job's, not their content.

use std::path::{Path, PathBuf};

use lml_kernel::classifier::{top_k, Classifier};
use lml_kernel::dataset::{check_labels, ImageDataset};
use lml_kernel::features::CacheNote;
use lml_kernel::layers::{argmax, softmax};
use lml_kernel::{Cut, KernelError, Preset, Vgg19};
use lml_lambda::compute::{read_stats, Params};
use lml_lambda::layout::{present, read_json, JobDir};
use lml_lambda::meta::FinalSummary;
use lml_lambda::progress::JobStatus;
use lml_lambda::spec::{DEFAULT_CUT, DEFAULT_INPUT_SIZE};
use lml_lambda::{JobConfig, JobId, ProtocolError};
use ndarray::{Array2, Array3, Array4};
use serde::Serialize;

/// Most bytes an image file may decode to (a 16384 × 16384 RGB image is
/// 768 MB): a larger image is refused before it is allocated.
pub const MAX_IMAGE_BYTES: u64 = 1 << 30;

/// What can go wrong loading a job's classifier or an image for it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The job folder is missing, malformed, or holds something inconsistent.
    #[error(transparent)]
    Job(#[from] ProtocolError),
    /// The weights, statistics or head were refused by the kernel.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The job has not finished: there is no final head yet.
    #[error("job {job} has not finished ({progress}): there is no final head to classify with yet; wait for it, or `lml stop {job}` and try again once it has stopped")]
    NotFinished { job: String, progress: String },
    /// The job failed (diverged): its last head is not a classifier.
    #[error("job {job} failed ({reason}): its parameters are not a usable classifier")]
    Failed { job: String, reason: String },
    /// The job does not say where its VGG19 weights are, or they are gone.
    #[error("job {job}: {reason}; give --weights DIR (the VGG19 weight folder its features were extracted with)")]
    NeedWeights { job: String, reason: String },
    /// A flag disagrees with what the job records.
    #[error("job {job}: {flag} {given} disagrees with the {recorded} its features were made with (the head was trained on those)")]
    Conflict { job: String, flag: &'static str, given: String, recorded: String },
    /// The job's parts do not fit together (head, weights, statistics).
    #[error("job {job}: {}: {reason}", path.display())]
    Mismatch { job: String, path: PathBuf, reason: String },
    /// An image file that cannot be read or decoded.
    #[error("{}: {reason}", path.display())]
    Image { path: PathBuf, reason: String },
}

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Flags for jobs that do not record how their features were made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// The VGG19 weight folder (also where the recorded one has moved).
    pub weights: Option<PathBuf>,
    pub input_size: Option<usize>,
    pub cut: Option<Cut>,
}

/// How the job's features were made, as far as the job records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    pub weights: Option<PathBuf>,
    pub input_size: Option<usize>,
    pub cut: Option<Cut>,
    pub preset: Option<Preset>,
    pub image_size: Option<(usize, usize)>,
    /// Where the record was read (a cache note or `config.json`), for messages.
    pub source: PathBuf,
}

/// A finished job's classifier and what it was loaded from.
#[derive(Debug)]
pub struct JobModel {
    pub job: JobId,
    pub config: JobConfig,
    pub summary: FinalSummary,
    /// The parameter bundle the head came from.
    pub params: PathBuf,
    /// The weight folder the backbone maps.
    pub weights: PathBuf,
    pub classifier: Classifier,
}

/// The flags that name a job's classifier, shared by `lml predict`,
/// `lml evaluate` and `lml export`.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct ModelArgs {
    /// The finished training job.
    #[arg(long)]
    pub job: String,
    /// Storage root the job is under (as given to `lml train`).
    #[arg(long, default_value = crate::job::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// VGG19 weight folder the job's features were extracted with: needed
    /// when the job does not record it (features without a note) or it has moved.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Network input side, for a job that does not record it (default: 32).
    #[arg(long)]
    pub input_size: Option<usize>,
    /// Feature cut (pool5, fc6, fc7), for a job that does not record it (default: fc7).
    #[arg(long)]
    pub cut: Option<Cut>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ModelArgs {
    /// The flags for jobs that do not record their features' making.
    pub fn overrides(&self) -> Overrides {
        Overrides { weights: self.weights.clone(), input_size: self.input_size, cut: self.cut }
    }

    /// Loads the job's classifier ([`load_job`]).
    ///
    /// # Errors
    /// As [`load_job`].
    pub fn load(&self) -> Result<JobModel> {
        load_job(&self.root, &self.job, &self.overrides())
    }
}

/// The cache note of a features file `…/{split}_features.npy`:
/// `…/{split}_features.json`, when the name has that form.
fn note_path(features: &Path) -> Option<PathBuf> {
    let name = features.file_name()?.to_str()?;
    let stem = name.strip_suffix("_features.npy")?;
    Some(features.with_file_name(format!("{stem}_features.json")))
}

/// What the job records about its features (see the module docs).
///
/// # Errors
/// [`ModelError::Job`] naming a note or `.npy` header that cannot be read.
pub fn provenance(root: &Path, jd: &JobDir, cfg: &JobConfig) -> Result<Provenance> {
    let data = &cfg.spec.data;
    if let Some(images) = &data.images {
        let path = root.join(images);
        let shape = lml_kernel::npy::MappedNpy::open(&path)?.header()?.shape;
        let image_size = match shape[..] {
            [_, h, w, 3] => Some((h, w)),
            _ => None,
        };
        return Ok(Provenance {
            weights: data.weights.as_ref().map(|w| root.join(w)),
            input_size: Some(data.input_size()),
            cut: Some(data.cut()),
            preset: None,
            image_size,
            source: jd.config(),
        });
    }
    let features = root.join(data.features.as_deref().unwrap_or_default());
    let Some(note) = note_path(&features).filter(|p| present(p)) else {
        return Ok(Provenance { source: features, ..Provenance::default() });
    };
    let n: CacheNote = read_json(&note)?;
    let weights = if n.weights.is_absolute() { n.weights.clone() } else { root.join(&n.weights) };
    Ok(Provenance {
        weights: Some(weights),
        input_size: Some(n.input_size),
        cut: Some(n.cut),
        preset: Some(n.preset),
        image_size: n.image_size.map(|[h, w]| (h, w)),
        source: note,
    })
}

/// The name a value serialises to (`pool5`, `torchvision`), for messages.
pub fn name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// `recorded`, or `given` when the job records nothing; a `given` that
/// differs from a `recorded` is a [`ModelError::Conflict`].
fn agree<T: PartialEq + Serialize>(
    job: &JobId,
    flag: &'static str,
    given: Option<T>,
    recorded: Option<T>,
    default: T,
) -> Result<T> {
    match (given, recorded) {
        (Some(g), Some(r)) if g != r => {
            Err(ModelError::Conflict { job: job.to_string(), flag, given: name(&g), recorded: name(&r) })
        }
        (_, Some(r)) => Ok(r),
        (Some(g), None) => Ok(g),
        (None, None) => Ok(default),
    }
}

/// Loads the classifier of the finished job `job` under `root`.
///
/// # Errors
/// [`ModelError::Job`] for a job id that is not one, a job that does not
/// exist or whose folder is malformed; [`ModelError::NotFinished`] /
/// [`ModelError::Failed`]; [`ModelError::NeedWeights`] when the weights are
/// not known or gone; [`ModelError::Conflict`] for a flag against the
/// record; [`ModelError::Mismatch`] for a head, weights or statistics that
/// do not fit the job (naming the file); kernel errors naming weight files.
pub fn load_job(root: &Path, job: &str, overrides: &Overrides) -> Result<JobModel> {
    let id = JobId::new(job)?;
    let jd = JobDir::new(root, &id);
    if !jd.exists() {
        if let Some(sub) = lml_lambda::pipeline::phase_one(root, &id) {
            return Err(ModelError::NotFinished {
                job: id.to_string(),
                progress: format!("still extracting its features in job {sub}; training has not started"),
            });
        }
    }
    let cfg = jd.read_config()?;
    if !present(&jd.final_json()) {
        let done = jd.latest_params()?;
        return Err(ModelError::NotFinished {
            job: id.to_string(),
            progress: format!("{done} of {} rounds applied", cfg.total_rounds),
        });
    }
    let summary: FinalSummary = read_json(&jd.final_json())?;
    if summary.status == JobStatus::Failed {
        return Err(ModelError::Failed { job: id.to_string(), reason: summary.reason.clone() });
    }
    let params = jd.params(summary.rounds);
    let (p, _) = Params::read(&params)?;
    let mismatch =
        |path: &Path, reason: String| ModelError::Mismatch { job: id.to_string(), path: path.to_path_buf(), reason };
    if (p.head.classes(), p.head.feature_dim()) != (cfg.classes, cfg.feature_dim) {
        return Err(mismatch(
            &params,
            format!(
                "head of {} classes × {} features, the job has {} × {}",
                p.head.classes(),
                p.head.feature_dim(),
                cfg.classes,
                cfg.feature_dim
            ),
        ));
    }
    let stats = read_stats(&jd, &cfg)?;
    let prov = provenance(root, &jd, &cfg)?;
    let weights = match (&overrides.weights, &prov.weights) {
        (Some(w), _) => w.clone(),
        (None, Some(w)) if w.join(lml_kernel::weights::MANIFEST).is_file() => w.clone(),
        (None, Some(w)) => {
            return Err(ModelError::NeedWeights {
                job: id.to_string(),
                reason: format!(
                    "{} names the weights {}, which hold no VGG19 weights (moved?)",
                    prov.source.display(),
                    w.display()
                ),
            })
        }
        (None, None) => {
            return Err(ModelError::NeedWeights {
                job: id.to_string(),
                reason: format!(
                    "it trained on features ({}) with no note of the weights they came from",
                    prov.source.display()
                ),
            })
        }
    };
    let input_size = agree(&id, "--input-size", overrides.input_size, prov.input_size, DEFAULT_INPUT_SIZE)?;
    let cut = agree(&id, "--cut", overrides.cut, prov.cut, DEFAULT_CUT)?;
    let vgg = Vgg19::open(&weights, input_size, cut)?;
    if let Some(preset) = prov.preset.filter(|&p| p != vgg.preset()) {
        return Err(mismatch(
            &weights,
            format!("weights of preset {}, the features were made with {}", name(&vgg.preset()), name(&preset)),
        ));
    }
    if vgg.feature_dim() != cfg.feature_dim {
        return Err(mismatch(
            &weights,
            format!(
                "{} features at {} for input {input_size}, the job's head takes {}",
                vgg.feature_dim(),
                name(&cut),
                cfg.feature_dim
            ),
        ));
    }
    let classifier = Classifier::new(vgg, stats, p.head, cfg.class_names.clone(), prov.image_size)?;
    Ok(JobModel { job: id, config: cfg, summary, params, weights, classifier })
}

/// Decodes an image file (PNG or JPEG, recognised by its content) to RGB
/// `u8` `[H, W, 3]`: turned upright as its EXIF orientation says, grey
/// replicated to RGB, 16-bit values scaled to 8, alpha dropped (not composited).
///
/// # Errors
/// [`ModelError::Image`] naming the file: unreadable, not PNG or JPEG,
/// truncated or corrupt, or larger than [`MAX_IMAGE_BYTES`] decoded.
pub fn read_image(path: &Path) -> Result<Array3<u8>> {
    use image::ImageDecoder;
    use std::io::BufRead;
    let bad = |reason: String| ModelError::Image { path: path.to_path_buf(), reason };
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut buffered = std::io::BufReader::new(file);
    // By content, never by the name's extension.
    let head = buffered.fill_buf().map_err(|e| bad(format!("cannot read: {e}")))?;
    let format = image::guess_format(head)
        .ok()
        .filter(|f| matches!(f, image::ImageFormat::Png | image::ImageFormat::Jpeg))
        .ok_or_else(|| bad("not a PNG or JPEG image".into()))?;
    let mut reader = image::ImageReader::with_format(buffered, format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let orientation = decoder.orientation().map_err(|e| bad(e.to_string()))?;
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| bad(e.to_string()))?;
    img.apply_orientation(orientation);
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err(bad(format!("image of {w}×{h} pixels")));
    }
    Array3::from_shape_vec((h, w, 3), rgb.into_raw()).map_err(|e| bad(e.to_string()))
}

/// One image's classification.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// `[C]`.
    pub logits: Vec<f32>,
    /// Softmax of the logits, `[C]`.
    pub probabilities: Vec<f32>,
    /// The arg-max class (the first one on ties, as training counts hits).
    pub predicted: usize,
}

impl Prediction {
    /// From one row of logits.
    pub fn from_logits(logits: Vec<f32>) -> Self {
        let p = softmax(ndarray::ArrayView2::from_shape((1, logits.len()), &logits).expect("one row"));
        let predicted = argmax(&logits).unwrap_or(0);
        Prediction { probabilities: p.into_raw_vec_and_offset().0, logits, predicted }
    }

    /// The `k` most probable classes, `(class, probability)`, most probable first.
    pub fn top(&self, k: usize) -> Vec<(usize, f32)> {
        top_k(&self.probabilities, k)
    }
}

/// Rows of `logits` as predictions.
pub fn predictions(logits: Array2<f32>) -> Vec<Prediction> {
    logits.outer_iter().map(|r| Prediction::from_logits(r.to_vec())).collect()
}

/// Classifies image files, every file read before any is classified (so a
/// bad file fails the call before work is spent). Images of one size go
/// through the network together.
///
/// # Errors
/// [`read_image`]'s, naming the file; kernel errors.
pub fn classify_files(model: &Classifier, files: &[PathBuf]) -> Result<Vec<Prediction>> {
    let images = files.iter().map(|f| read_image(f)).collect::<Result<Vec<_>>>()?;
    let mut out: Vec<Option<Prediction>> = vec![None; images.len()];
    // Group by size: one batch per size.
    let mut sizes: Vec<(usize, usize)> = images.iter().map(|i| (i.dim().0, i.dim().1)).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for (h, w) in sizes {
        let idx: Vec<usize> = (0..images.len()).filter(|&i| (images[i].dim().0, images[i].dim().1) == (h, w)).collect();
        let mut batch = Array4::<u8>::zeros((idx.len(), h, w, 3));
        for (mut dst, &i) in batch.outer_iter_mut().zip(&idx) {
            dst.assign(&images[i]);
        }
        for (p, &i) in predictions(model.logits(batch.view())?).into_iter().zip(&idx) {
            out[i] = Some(p);
        }
    }
    Ok(out.into_iter().map(|p| p.expect("every size classified")).collect())
}

/// Classifies the first `limit` images of `data` (all if `None`), in
/// chunks; `progress(images)` after each.
///
/// # Errors
/// Kernel errors.
pub fn classify_dataset(
    model: &Classifier,
    data: &ImageDataset,
    limit: Option<usize>,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Prediction>> {
    let n = data.len().min(limit.unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(n);
    const CHUNK: usize = 256;
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let logits = model.logits(data.images().slice(ndarray::s![start..end, .., .., ..]))?;
        out.extend(predictions(logits));
        progress(end - start);
    }
    Ok(out)
}

/// Opens split `split` of a prepared folder (`{split}_x.npy`, `{split}_y.npy`,
/// as `prepare-cifar10` writes) and checks its labels against the classifier's classes.
///
/// # Errors
/// Kernel errors naming the file; a label outside the classes (naming the
/// file, position and value).
pub fn open_split(dir: &Path, split: &str, classes: usize) -> Result<ImageDataset> {
    let (x, y) = (dir.join(format!("{split}_x.npy")), dir.join(format!("{split}_y.npy")));
    let data = ImageDataset::open(&x, &y)?;
    check_labels(&y, data.labels(), classes, &format!("the model has {classes} classes"))?;
    Ok(data)
}

/// Images in a prediction grid (the seed's Fig. 13 shows 30).
pub const GRID_IMAGES: usize = 30;

/// The first images of `data` (at most [`GRID_IMAGES`], and at most one per
/// prediction) with their predicted and true classes, wrong ones marked, as
/// the seed's Fig. 13 (`lml predict --grid`, `lml report`).
///
/// # Errors
/// The picture's: no image to draw, drawing and encoding.
///
/// # Panics
/// If a label or prediction is not a class of `names` (labels are checked
/// by [`open_split`]; predictions are arg-maxes over the classes).
pub fn split_grid(
    data: &ImageDataset,
    preds: &[Prediction],
    names: &[String],
    title: &str,
    format: crate::pictures::Format,
) -> Result<crate::pictures::Picture, crate::pictures::PictureError> {
    use crate::pictures::grid::{prediction_grid, GridImage};
    let images = data.images();
    let [_, height, width, channels] = <[usize; 4]>::try_from(images.shape()).expect("a 4-d view");
    let shown = preds.len().min(data.len()).min(GRID_IMAGES);
    let pixels: Vec<Vec<u8>> =
        (0..shown).map(|i| images.index_axis(ndarray::Axis(0), i).iter().copied().collect()).collect();
    let cells: Vec<GridImage<'_>> = pixels
        .iter()
        .zip(preds.iter().zip(data.labels()))
        .map(|(px, (p, &t))| GridImage {
            pixels: px,
            height,
            width,
            channels,
            predicted: names[p.predicted].clone(),
            truth: names[t as usize].clone(),
        })
        .collect();
    prediction_grid(&cells, title, format)
}

/// A confusion matrix: `matrix[truth][predicted]` counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// `[C][C]`, rows the true class, columns the predicted one.
    pub matrix: Vec<Vec<u64>>,
    /// Class names, class `i` at index `i`.
    pub names: Vec<String>,
}

/// Per-class precision and recall (`None` where undefined: no prediction of
/// the class, or no example of it).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassScore {
    pub class: usize,
    pub name: String,
    /// Examples of the class.
    pub support: u64,
    /// Correct / predicted as the class.
    pub precision: Option<f64>,
    /// Correct / examples of the class.
    pub recall: Option<f64>,
}

impl Confusion {
    /// An empty matrix over `names`.
    pub fn new(names: Vec<String>) -> Self {
        let c = names.len();
        Confusion { matrix: vec![vec![0; c]; c], names }
    }

    /// Counts `truth` predicted as `predicted`.
    ///
    /// # Panics
    /// If either is not a class (callers check labels first, [`open_split`]).
    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.matrix[truth][predicted] += 1;
    }

    /// Examples counted.
    pub fn total(&self) -> u64 {
        self.matrix.iter().flatten().sum()
    }

    /// Examples on the diagonal.
    pub fn correct(&self) -> u64 {
        (0..self.matrix.len()).map(|c| self.matrix[c][c]).sum()
    }

    /// `correct / total` (NaN when empty).
    pub fn accuracy(&self) -> f64 {
        self.correct() as f64 / self.total() as f64
    }

    /// Precision and recall of every class.
    pub fn scores(&self) -> Vec<ClassScore> {
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        (0..self.matrix.len())
            .map(|c| {
                let support: u64 = self.matrix[c].iter().sum();
                let predicted: u64 = self.matrix.iter().map(|row| row[c]).sum();
                let hit = self.matrix[c][c];
                ClassScore {
                    class: c,
                    name: self.names[c].clone(),
                    support,
                    precision: ratio(hit, predicted),
                    recall: ratio(hit, support),
                }
            })
            .collect()
    }

    /// The report `lml evaluate` prints: accuracy, a precision / recall table
    /// and the matrix (rows: true class, columns: predicted, by index).
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "accuracy {:.4} ({} of {})", self.accuracy(), self.correct(), self.total());
        let width = self.names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(5);
        let _ = writeln!(s, "\n{:>3}  {:<width$}  {:>9}  {:>9}  {:>7}", "", "class", "precision", "recall", "support");
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        for c in self.scores() {
            let _ = writeln!(
                s,
                "{:>3}  {:<width$}  {:>9}  {:>9}  {:>7}",
                c.class,
                c.name,
                f(c.precision),
                f(c.recall),
                c.support
            );
        }
        let cell = self
            .matrix
            .iter()
            .flatten()
            .max()
            .map_or(1, |m| m.to_string().len())
            .max(self.matrix.len().to_string().len());
        let _ = writeln!(s, "\nconfusion (rows: true class, columns: predicted)");
        let _ = write!(s, "{:>3} ", "");
        for c in 0..self.matrix.len() {
            let _ = write!(s, " {c:>cell$}");
        }
        let _ = writeln!(s);
        for (t, row) in self.matrix.iter().enumerate() {
            let _ = write!(s, "{t:>3} ");
            for v in row {
                let _ = write!(s, " {v:>cell$}");
            }
            let _ = writeln!(s);
        }
        s
    }
}

/// The confusion matrix of `predictions` against `labels` (in order).
///
/// # Panics
/// If a label or prediction is not a class of `names` (labels are checked
/// by [`open_split`]; predictions are arg-maxes over the classes).
pub fn confusion(names: &[String], labels: &[u32], predictions: &[Prediction]) -> Confusion {
    let mut c = Confusion::new(names.to_vec());
    for (&t, p) in labels.iter().zip(predictions) {
        c.add(t as usize, p.predicted);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_counts_precision_and_recall() {
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let p = |c: usize| Prediction { logits: vec![], probabilities: vec![], predicted: c };
        // truth → predicted: a→a, a→b, b→b, b→b, c→b.
        let c = confusion(&names, &[0, 0, 1, 1, 2], &[p(0), p(1), p(1), p(1), p(1)]);
        assert_eq!(c.matrix, [[1, 1, 0], [0, 2, 0], [0, 1, 0]]);
        assert_eq!((c.correct(), c.total()), (3, 5));
        let s = c.scores();
        assert_eq!((s[0].precision, s[0].recall), (Some(1.0), Some(0.5)));
        assert_eq!((s[1].precision, s[1].recall), (Some(0.5), Some(1.0)));
        assert_eq!((s[2].precision, s[2].recall, s[2].support), (None, Some(0.0), 1));
        let text = c.to_text();
        assert!(text.starts_with("accuracy 0.6000 (3 of 5)"), "{text}");
        assert!(text.contains("  2  c              -     0.0000        1"), "{text}");
    }

    #[test]
    fn notes_sit_beside_their_features() {
        assert_eq!(
            note_path(Path::new("cache/k/test_features.npy")),
            Some(PathBuf::from("cache/k/test_features.json"))
        );
        assert_eq!(note_path(Path::new("x.npy")), None);
    }
}
