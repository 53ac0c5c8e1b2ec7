//! VGG19 weight conversion into the kernel's `.npy` weight store.
//!
//! # safetensors (torchvision / timm)
//! An 8-byte little-endian header length `n`, a JSON header of `n` bytes
//! (`{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
//! "__metadata__": {..}}`), then the tensors' bytes, little-endian, C order,
//! offsets relative to the end of the header. Accepted dtypes: `F32`, `F16`,
//! `BF16` (widened to f32). Keys are torchvision's (`features.N.*`,
//! `classifier.{0,3,6}.*`, OIHW / `[out, in]`) or timm's VGG (`features.N.*`,
//! `pre_logits.fc1.*` as a 4096×512×7×7 convolution, `pre_logits.fc2.*` as
//! 4096×4096×1×1, `head.fc.*`), which are reshaped to the dense layouts
//! (same element order: `c·49 + y·7 + x`).
//!
//! Every tensor of the VGG19 table is looked up and checked for shape and
//! dtype; the convolutions are required, the classifier layers converted when
//! present. Tensors are read one at a time (seek + read), so a 548 MB
//! checkpoint never sits in memory whole.
//!
//! # Keras `.h5`
//! See [`crate::keras`]: every layout Keras has written, read as Keras'
//! loader reads it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use lml_kernel::vgg::{tensor_specs, MODEL};
use lml_kernel::weights::WeightStoreWriter;
use lml_kernel::{Cut, KernelError, Preset};

pub use crate::keras::{convert_keras_h5, keras_fc1_to_torchvision, write_keras_h5, KerasLayout};
use ndarray::{ArrayD, ArrayViewD, IxDyn};

/// What can go wrong converting weights.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: bad safetensors header: {reason}", path.display())]
    Header { path: PathBuf, reason: String },
    #[error("{}: tensor {key}: {reason}", path.display())]
    Tensor { path: PathBuf, key: String, reason: String },
    #[error("{}: missing tensor {tensor} (looked for {tried})", path.display())]
    Missing { path: PathBuf, tensor: String, tried: String },
    /// A Keras `.h5` that is not HDF5, truncated, or not laid out as Keras writes.
    #[error("{}: {reason}", path.display())]
    Keras { path: PathBuf, reason: String },
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

type Result<T> = std::result::Result<T, ConvertError>;

/// One tensor of a safetensors header: offsets relative to the data start.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) dtype: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) begin: u64,
    pub(crate) end: u64,
}

/// An open `.safetensors` file with a validated header.
#[derive(Debug)]
pub struct SafeTensors {
    path: PathBuf,
    file: File,
    data_start: u64,
    entries: BTreeMap<String, Entry>,
    metadata: BTreeMap<String, String>,
}

fn dtype_size(dtype: &str) -> Option<u64> {
    match dtype {
        "F32" => Some(4),
        "F16" | "BF16" => Some(2),
        _ => None,
    }
}

impl SafeTensors {
    /// Opens `path` and validates its header against the file size.
    ///
    /// # Errors
    /// As [`parse_safetensors_header`]; I/O errors.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |e| ConvertError::Io { path: path.to_path_buf(), source: e };
        let mut file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let header = parse_header(path, file_len, &mut file)?;
        Ok(SafeTensors {
            path: path.to_path_buf(),
            file,
            data_start: header.data_start,
            entries: header.entries,
            metadata: header.metadata,
        })
    }

    /// Tensor names in the file.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The header's `__metadata__`: its string entries (the format allows
    /// strings only; an entry of another type is not kept).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Tensor `key`'s shape, if the file holds it.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.entries.get(key).map(|e| e.shape.as_slice())
    }

    /// Reads tensor `key` as f32.
    ///
    /// # Errors
    /// [`ConvertError::Tensor`] for an unsupported dtype; I/O errors.
    pub fn read_f32(&mut self, key: &str) -> Result<ArrayD<f32>> {
        let e = self.entries.get(key).cloned().ok_or_else(|| ConvertError::Missing {
            path: self.path.clone(),
            tensor: key.into(),
            tried: key.into(),
        })?;
        if dtype_size(&e.dtype).is_none() {
            return decode_tensor(&self.path, key, &e, &[]);
        }
        let io = |err| ConvertError::Io { path: self.path.clone(), source: err };
        // Both fit: the header check put begin ≤ end inside the file.
        let mut bytes = vec![0u8; (e.end - e.begin) as usize];
        self.file.seek(SeekFrom::Start(self.data_start + e.begin)).map_err(io)?;
        self.file.read_exact(&mut bytes).map_err(io)?;
        decode_tensor(&self.path, key, &e, &bytes)
    }
}

/// Most bytes a safetensors JSON header may take (real VGG19 headers take ~4 KB).
pub const MAX_HEADER_BYTES: u64 = 100 << 20;

/// Reads and validates the header of a `.safetensors` file of `file_len`
/// bytes (named `path` in errors) from `r`, positioned at the file's start.
/// Returns where the data starts and the tensors by name. Every size in the
/// header comes from the file and is checked without wrapping: each tensor's
/// `data_offsets` lie inside the data that follows the header, and match its
/// `shape` and `dtype`.
///
/// # Errors
/// [`ConvertError::Header`] naming the field and value for an absurd header
/// length, invalid JSON, a missing field, offsets that run past the end of the
/// file (a truncated download) or disagree with the shape and dtype, or a shape
/// whose size overflows.
pub(crate) fn parse_safetensors_header(
    path: &Path,
    file_len: u64,
    r: &mut dyn Read,
) -> Result<(u64, BTreeMap<String, Entry>)> {
    parse_header(path, file_len, r).map(|h| (h.data_start, h.entries))
}

/// A validated safetensors header.
struct Header {
    data_start: u64,
    entries: BTreeMap<String, Entry>,
    metadata: BTreeMap<String, String>,
}

/// [`parse_safetensors_header`], keeping `__metadata__` too.
fn parse_header(path: &Path, file_len: u64, r: &mut dyn Read) -> Result<Header> {
    let bad = |reason: String| ConvertError::Header { path: path.to_path_buf(), reason };
    let mut len = [0u8; 8];
    r.read_exact(&mut len).map_err(|_| bad(format!("file of {file_len} bytes has no 8-byte header length")))?;
    let n = u64::from_le_bytes(len);
    let data_len = file_len.checked_sub(8).and_then(|rest| rest.checked_sub(n));
    let Some(data_len) = data_len.filter(|_| n <= MAX_HEADER_BYTES) else {
        return Err(bad(format!(
            "header length {n} does not fit a {file_len}-byte file (at most {MAX_HEADER_BYTES} bytes)"
        )));
    };
    let mut header = vec![0u8; n as usize];
    r.read_exact(&mut header).map_err(|e| ConvertError::Io { path: path.to_path_buf(), source: e })?;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("JSON: {e}")))?;
    let mut entries = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (key, v) in json {
        if key == "__metadata__" {
            if let serde_json::Value::Object(m) = v {
                metadata.extend(m.into_iter().filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string()))));
            }
            continue;
        }
        let e: serde_json::Map<String, serde_json::Value> =
            serde_json::from_value(v).map_err(|e| bad(format!("{key}: {e}")))?;
        let dtype = e.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad(format!("{key}: no dtype")))?;
        let shape: Vec<usize> = e
            .get("shape")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| bad(format!("{key}: no shape (a list of sizes)")))?;
        let [begin, end]: [u64; 2] = e
            .get("data_offsets")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| bad(format!("{key}: no data_offsets (two byte offsets)")))?;
        if begin > end || end > data_len {
            return Err(bad(format!(
                "{key}: data_offsets [{begin}, {end}] are not inside the {data_len} data bytes after the header \
                 (truncated?)"
            )));
        }
        if let Some(size) = dtype_size(dtype) {
            let want = shape
                .iter()
                .try_fold(size, |acc, &d| acc.checked_mul(d as u64))
                .ok_or_else(|| bad(format!("{key}: shape {shape:?} of {dtype} is more than {} bytes", u64::MAX)))?;
            if end - begin != want {
                return Err(bad(format!(
                    "{key}: data_offsets [{begin}, {end}] hold {} bytes; {dtype} {shape:?} needs {want}",
                    end - begin
                )));
            }
        }
        entries.insert(key, Entry { dtype: dtype.into(), shape, begin, end });
    }
    Ok(Header { data_start: 8 + n, entries, metadata })
}

/// Decodes tensor `key`'s little-endian bytes (exactly its entry's size, as
/// [`parse_safetensors_header`] checked) to f32.
pub(crate) fn decode_tensor(path: &Path, key: &str, e: &Entry, bytes: &[u8]) -> Result<ArrayD<f32>> {
    let values: Vec<f32> = match e.dtype.as_str() {
        "F32" => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        "BF16" => {
            bytes.chunks_exact(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)).collect()
        }
        "F16" => bytes.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
        other => {
            return Err(ConvertError::Tensor {
                path: path.to_path_buf(),
                key: key.into(),
                reason: format!("dtype {other} (expected F32, F16 or BF16)"),
            })
        }
    };
    ArrayD::from_shape_vec(IxDyn(&e.shape), values).map_err(|err| ConvertError::Tensor {
        path: path.to_path_buf(),
        key: key.into(),
        reason: format!("{} bytes for shape {:?}: {err}", bytes.len(), e.shape),
    })
}

/// IEEE half → single (exact: every f16 is an f32).
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: value = f · 2^-24.
            return if sign != 0 { -(f as f32) * 2f32.powi(-24) } else { f as f32 * 2f32.powi(-24) };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | (((e - 15 + 127) as u32) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Keys that may hold torchvision tensor `name` in a checkpoint.
fn candidates(name: &str) -> Vec<String> {
    let mut c = vec![name.to_string()];
    let (layer, kind) = name.rsplit_once('.').unwrap_or((name, ""));
    let timm = match layer {
        "classifier.0" => Some("pre_logits.fc1"),
        "classifier.3" => Some("pre_logits.fc2"),
        "classifier.6" => Some("head.fc"),
        _ => None,
    };
    if let Some(t) = timm {
        c.push(format!("{t}.{kind}"));
    }
    c
}

/// What [`convert_safetensors`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Converted {
    pub tensors: usize,
    /// The deepest cut the converted store supports.
    pub cut: Cut,
    /// Keys of the checkpoint that were not used.
    pub ignored: Vec<String>,
}

/// Converts a VGG19 `.safetensors` checkpoint into a weight store at `out`.
///
/// # Errors
/// [`ConvertError`] naming the file and tensor for anything missing or
/// malformed; nothing is left at `out` on error.
pub fn convert_safetensors(input: &Path, out: &Path, preset: Preset) -> Result<Converted> {
    let mut st = SafeTensors::open(input)?;
    let mut writer = WeightStoreWriter::create(out, MODEL, preset)?;
    let mut used = Vec::new();
    let mut converted = Vec::new();
    // The convolutions (every tensor the pool5 cut needs) are required.
    let required: Vec<String> = tensor_specs(Cut::Pool5).into_iter().filter(|s| s.required).map(|s| s.name).collect();
    for spec in tensor_specs(Cut::Fc7) {
        let tried = candidates(&spec.name);
        let Some(key) = tried.iter().find(|k| st.shape(k).is_some()).cloned() else {
            // Convolutions are required; a missing classifier layer only
            // limits the cut (classifier.6 is the ImageNet head, replaced anyway).
            if required.contains(&spec.name) {
                return Err(ConvertError::Missing { path: input.into(), tensor: spec.name, tried: tried.join(" or ") });
            }
            continue;
        };
        let numel: usize = spec.shape.iter().product();
        let actual = st.shape(&key).expect("found above").to_vec();
        // A classifier.6 of another class count is another task's head (an
        // `lml export` of a trained classifier): not the ImageNet head, not converted.
        if spec.name.starts_with("classifier.6.") && actual.first() != spec.shape.first() {
            continue;
        }
        if actual.iter().product::<usize>() != numel || (key == spec.name && actual != spec.shape) {
            return Err(ConvertError::Tensor {
                path: input.into(),
                key,
                reason: format!("shape {actual:?}, expected {:?}", spec.shape),
            });
        }
        let t = st.read_f32(&key)?;
        let t = t.into_shape_with_order(IxDyn(&spec.shape)).expect("element count checked");
        writer.add(&spec.name, t.view())?;
        used.push(key);
        converted.push(spec.name);
    }
    let has = |layer: &str| ["weight", "bias"].iter().all(|k| converted.contains(&format!("{layer}.{k}")));
    let cut = match (has("classifier.0"), has("classifier.3")) {
        (true, true) => Cut::Fc7,
        (true, false) => Cut::Fc6,
        _ => Cut::Pool5,
    };
    writer.finish()?;
    let ignored = st.keys().filter(|k| !used.iter().any(|u| u == k)).map(String::from).collect();
    Ok(Converted { tensors: used.len(), cut, ignored })
}

/// Writes `tensors` as a `.safetensors` file (dtype `F32`), published atomically.
///
/// # Errors
/// I/O errors.
pub fn write_safetensors(path: &Path, tensors: &[(String, ArrayViewD<'_, f32>)]) -> std::io::Result<()> {
    lml_kernel::npy::publish_atomic(path, |w| write_safetensors_to(w, tensors, &BTreeMap::new()))
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Streams `tensors` as `.safetensors` (dtype `F32`, in the order given) to
/// `w`, with `metadata` in the header's `__metadata__` beside
/// `"format": "pt"` (what PyTorch's loaders expect).
///
/// # Errors
/// I/O errors from `w`.
pub fn write_safetensors_to(
    w: &mut dyn Write,
    tensors: &[(String, ArrayViewD<'_, f32>)],
    metadata: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, t) in tensors {
        let bytes = t.len() as u64 * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape(), "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), "pt".into());
    meta.extend(metadata.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))));
    header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    let mut text = serde_json::to_string(&header).expect("header serialises");
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    w.write_all(&(text.len() as u64).to_le_bytes())?;
    w.write_all(text.as_bytes())?;
    let mut bytes = Vec::with_capacity(4 << 16);
    for (_, t) in tensors {
        let standard = t.as_standard_layout();
        for chunk in standard.as_slice().expect("standard layout").chunks(1 << 16) {
            bytes.clear();
            bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            w.write_all(&bytes)?;
        }
    }
    Ok(())
}

/// Renames torchvision keys to timm's VGG layout (and reshapes fc1/fc2 to
/// its convolution form), for generating timm-style fixtures.
pub fn to_timm_layout(tensors: Vec<(String, ArrayD<f32>)>) -> Vec<(String, ArrayD<f32>)> {
    tensors
        .into_iter()
        .map(|(name, t)| {
            let (layer, kind) = name.rsplit_once('.').unwrap_or((&name, ""));
            match (layer, kind) {
                ("classifier.0", "weight") => {
                    ("pre_logits.fc1.weight".into(), t.into_shape_with_order(IxDyn(&[4096, 512, 7, 7])).expect("numel"))
                }
                ("classifier.3", "weight") => (
                    "pre_logits.fc2.weight".into(),
                    t.into_shape_with_order(IxDyn(&[4096, 4096, 1, 1])).expect("numel"),
                ),
                ("classifier.0", k) => (format!("pre_logits.fc1.{k}"), t),
                ("classifier.3", k) => (format!("pre_logits.fc2.{k}"), t),
                ("classifier.6", k) => (format!("head.fc.{k}"), t),
                _ => (name, t),
            }
        })
        .collect()
}
