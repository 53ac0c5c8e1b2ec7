//! A directory of `.npy` weight tensors, memory-mapped.
//!
//! # Layout
//! ```text
//! weights/
//!   manifest.json              {"format": "lml-weights/1", "model": "vgg19",
//!                               "preset": "torchvision" | "caffe",
//!                               "tensors": [{"name": "features.0.weight",
//!                                            "shape": [64, 3, 3, 3], "dtype": "<f4"}, …]}
//!   features.0.weight.npy      one little-endian f32 C-order array per tensor,
//!   features.0.bias.npy        named by its torchvision key
//!   …
//! ```
//!
//! Opening a store maps every listed file and checks that the manifest, the
//! files and the model's expectations agree (names, shapes, dtype). Nothing
//! is read into memory: views point into the mappings, and pages are faulted
//! in as layers touch them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayViewD};
use serde::{Deserialize, Serialize};

use crate::error::{KernelError, Result};
use crate::npy::{publish_atomic, write_npy_atomic, MappedNpy};
use crate::preprocess::Preset;

/// The manifest's format tag.
pub const FORMAT: &str = "lml-weights/1";
/// The manifest's file name inside a weight directory.
pub const MANIFEST: &str = "manifest.json";

/// One tensor's entry in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
}

/// `manifest.json` of a weight directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub model: String,
    pub preset: Preset,
    pub tensors: Vec<TensorEntry>,
}

/// What a model needs from a store: tensor names with shapes, and whether
/// each is required (optional ones, like the ImageNet classifier, may be absent).
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub required: bool,
}

/// File name of a tensor: `<name>.npy`.
pub fn file_name(tensor: &str) -> String {
    format!("{tensor}.npy")
}

/// Memory-mapped weight tensors, validated against a model's [`TensorSpec`]s.
#[derive(Debug)]
pub struct WeightStore {
    dir: PathBuf,
    manifest: Manifest,
    maps: BTreeMap<String, MappedNpy>,
}

impl WeightStore {
    /// Opens `dir` for `model`, checking it against `specs`.
    ///
    /// # Errors
    /// * [`KernelError::Manifest`] — no or unparsable manifest, wrong format or
    ///   model, a tensor listed twice, a non-`<f4` dtype, or a manifest shape
    ///   that disagrees with the file.
    /// * [`KernelError::MissingTensor`] — a required tensor is not listed or its file is absent.
    /// * [`KernelError::UnexpectedTensor`] — the manifest lists a tensor the
    ///   model does not know, or the directory holds a `.npy` file the manifest
    ///   does not list (a misnamed file).
    /// * [`KernelError::TensorShape`] / [`KernelError::Npy`] — a file's shape,
    ///   dtype, alignment or length is wrong (truncated files included).
    pub fn open(dir: impl AsRef<Path>, model: &str, specs: &[TensorSpec]) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join(MANIFEST);
        let text = fs::read_to_string(&manifest_path).map_err(|e| KernelError::io(&manifest_path, e))?;
        let bad = |reason: String| KernelError::Manifest { path: manifest_path.clone(), reason };
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if manifest.format != FORMAT {
            return Err(bad(format!("format {:?}, expected {FORMAT:?}", manifest.format)));
        }
        if manifest.model != model {
            return Err(bad(format!("model {:?}, expected {model:?}", manifest.model)));
        }
        let spec_by_name: BTreeMap<&str, &TensorSpec> = specs.iter().map(|s| (s.name.as_str(), s)).collect();

        let mut maps = BTreeMap::new();
        for entry in &manifest.tensors {
            let Some(spec) = spec_by_name.get(entry.name.as_str()) else {
                return Err(KernelError::UnexpectedTensor {
                    dir,
                    what: "manifest tensor",
                    name: entry.name.clone(),
                    hint: format!("{model} has no tensor of that name"),
                });
            };
            if entry.dtype != "<f4" {
                return Err(bad(format!("tensor {} has dtype {:?}, expected \"<f4\"", entry.name, entry.dtype)));
            }
            if entry.shape != spec.shape {
                return Err(KernelError::TensorShape {
                    path: manifest_path.clone(),
                    name: entry.name.clone(),
                    expected: spec.shape.clone(),
                    actual: entry.shape.clone(),
                });
            }
            let path = dir.join(file_name(&entry.name));
            if !path.is_file() {
                return Err(KernelError::MissingTensor { dir, name: entry.name.clone(), file: file_name(&entry.name) });
            }
            let mapped = MappedNpy::open(&path)?;
            let view = mapped.view::<f32>()?;
            if view.shape() != spec.shape.as_slice() {
                return Err(KernelError::TensorShape {
                    path,
                    name: entry.name.clone(),
                    expected: spec.shape.clone(),
                    actual: view.shape().to_vec(),
                });
            }
            if maps.insert(entry.name.clone(), mapped).is_some() {
                return Err(bad(format!("tensor {} is listed twice", entry.name)));
            }
        }
        if let Some(missing) = specs.iter().find(|s| s.required && !maps.contains_key(&s.name)) {
            return Err(KernelError::MissingTensor { dir, name: missing.name.clone(), file: file_name(&missing.name) });
        }
        // A stray .npy is most likely a misnamed tensor: refuse rather than ignore it.
        let listing = fs::read_dir(&dir).map_err(|e| KernelError::io(&dir, e))?;
        for item in listing {
            let item = item.map_err(|e| KernelError::io(&dir, e))?;
            let fname = item.file_name().to_string_lossy().into_owned();
            if let Some(stem) = fname.strip_suffix(".npy") {
                if !maps.contains_key(stem) {
                    return Err(KernelError::UnexpectedTensor {
                        dir,
                        what: "file",
                        name: fname,
                        hint: "not listed in manifest.json (misnamed or stray tensor)".into(),
                    });
                }
            }
        }
        Ok(WeightStore { dir, manifest, maps })
    }

    /// The directory this store maps.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The input normalisation these weights expect.
    pub fn preset(&self) -> Preset {
        self.manifest.preset
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Whether the store holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.maps.contains_key(name)
    }

    /// A view of tensor `name`, straight into the mapping.
    ///
    /// # Errors
    /// [`KernelError::MissingTensor`] if the store does not hold it.
    pub fn view(&self, name: &str) -> Result<ArrayViewD<'_, f32>> {
        match self.maps.get(name) {
            Some(m) => m.view::<f32>(),
            None => {
                Err(KernelError::MissingTensor { dir: self.dir.clone(), name: name.to_string(), file: file_name(name) })
            }
        }
    }

    /// Writes a weight directory: one `.npy` per tensor plus the manifest
    /// (see [`WeightStoreWriter`], which this wraps).
    ///
    /// # Errors
    /// As [`WeightStoreWriter::create`] and [`WeightStoreWriter::add`].
    pub fn write<'a>(
        dir: impl AsRef<Path>,
        model: &str,
        preset: Preset,
        tensors: impl IntoIterator<Item = (String, ArrayViewD<'a, f32>)>,
    ) -> Result<()> {
        let mut w = WeightStoreWriter::create(dir, model, preset)?;
        for (name, view) in tensors {
            w.add(&name, view)?;
        }
        w.finish()
    }
}

/// Builds a weight directory one tensor at a time (so a converter never holds
/// more than one tensor in memory).
///
/// Files go to a temporary folder beside the target, renamed into place by
/// [`finish`](Self::finish); dropping the writer unfinished removes it, so a
/// failed conversion never leaves a half-written store.
#[derive(Debug)]
pub struct WeightStoreWriter {
    dir: PathBuf,
    tmp: PathBuf,
    model: String,
    preset: Preset,
    entries: Vec<TensorEntry>,
    done: bool,
}

impl WeightStoreWriter {
    /// Starts a store at `dir`.
    ///
    /// # Errors
    /// [`KernelError::Invalid`] if `dir` already exists; [`KernelError::Io`]
    /// if the temporary folder cannot be made.
    pub fn create(dir: impl AsRef<Path>, model: &str, preset: Preset) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if dir.exists() {
            return Err(KernelError::invalid("weight directory", format!("{} already exists", dir.display())));
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        fs::create_dir_all(&tmp).map_err(|e| KernelError::io(&tmp, e))?;
        Ok(WeightStoreWriter { dir, tmp, model: model.into(), preset, entries: Vec::new(), done: false })
    }

    /// Adds tensor `name`.
    ///
    /// # Errors
    /// [`KernelError::Invalid`] if `name` was added already or could escape
    /// the folder; [`KernelError::Io`] on I/O failure.
    pub fn add(&mut self, name: &str, view: ArrayViewD<'_, f32>) -> Result<()> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(KernelError::invalid("tensor name", format!("{name:?}")));
        }
        if self.entries.iter().any(|e| e.name == name) {
            return Err(KernelError::invalid("tensor name", format!("{name:?} added twice")));
        }
        write_npy_atomic(self.tmp.join(file_name(name)), &view)?;
        self.entries.push(TensorEntry { name: name.into(), shape: view.shape().to_vec(), dtype: "<f4".into() });
        Ok(())
    }

    /// Writes the manifest and moves the folder into place.
    ///
    /// # Errors
    /// [`KernelError::Io`] on I/O failure (the temporary folder is removed).
    pub fn finish(mut self) -> Result<()> {
        let manifest = Manifest {
            format: FORMAT.into(),
            model: self.model.clone(),
            preset: self.preset,
            tensors: std::mem::take(&mut self.entries),
        };
        let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
        publish_atomic(&self.tmp.join(MANIFEST), |w| std::io::Write::write_all(w, text.as_bytes()))?;
        fs::rename(&self.tmp, &self.dir).map_err(|e| KernelError::io(&self.dir, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for WeightStoreWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Owned tensors with names, e.g. freshly generated weights.
pub type NamedTensors = Vec<(String, ArrayD<f32>)>;
