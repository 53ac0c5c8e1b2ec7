//! Keras VGG19 weights (`.h5`) into the kernel's weight store, read the way
//! Keras' own loader reads them, and a writer of each layout for fixtures.
//!
//! # Layouts
//! Which Keras wrote what (from `keras/engine/topology.py` 1.2.2,
//! `keras/engine/saving.py` 2.2.4, `keras/src/legacy/saving/legacy_h5_format.py`
//! and `keras/src/saving/saving_lib.py` 3.x):
//!
//! * **Keras 1 `save_weights`** — the Applications files
//!   `vgg19_weights_tf_dim_ordering_tf_kernels.h5` and `…_notop.h5`
//!   (released in 2016 for Keras 1 and still what
//!   `keras.applications.VGG19(weights="imagenet")` downloads in Keras 2 and
//!   3). Root attribute `layer_names` (fixed-length byte strings) lists every
//!   layer, weightless ones included (`input_1`, `block1_pool`, `flatten`);
//!   no `keras_version` or `backend`. One group per layer with attribute
//!   `weight_names` (an empty array for a weightless layer) naming datasets
//!   that sit in the group: `block1_conv1_W_1:0`, `block1_conv1_b_1:0` (the
//!   TensorFlow variable names).
//! * **Keras 2 `save_weights("….h5")`** (Keras 2.x and `tf.keras`): the same
//!   tree plus root attributes `backend` and `keras_version`; weights are
//!   named `block1_conv1/kernel:0`, so they sit at
//!   `block1_conv1/block1_conv1/kernel:0`. From 2.1.5 a list attribute over
//!   64512 bytes is split into `layer_names0`, `layer_names1`, …. With h5py 3
//!   the lists are variable-length strings. **`model.save("….h5")`** (Keras
//!   2, and Keras 3's legacy `.h5`) puts the same tree under the group
//!   `model_weights`; Keras 3 names the weights `block1_conv1/kernel` and adds
//!   a `top_level_model_weights` group.
//! * **Keras 3 `save_weights("….weights.h5")`** (and the `model.weights.h5`
//!   inside a `.keras` archive): no lists; each layer's variables are the
//!   datasets `0`, `1`, … of `layers/<class>/vars`, where `<class>` is the
//!   layer's class in snake case numbered in model order (`conv2d`,
//!   `conv2d_1`, …, `max_pooling2d`, `dense`, `dense_1`, `dense_2`), so
//!   Keras matches them by position, not by name. From 3.6 each `vars` group
//!   also carries a `name` attribute. When there is no `layers` group, Keras
//!   3's loader looks under `_layer_checkpoint_dependencies` ("for 2.13
//!   compatibility"), and so does this reader, with the same names. (Keras
//!   2.13's own writer, not run here, walks a dict that holds each weighted
//!   layer twice, so its files may number them differently; such a file
//!   fails here with the missing layer named, as it would in Keras 3.)
//!
//! Every layout stores convolution kernels HWIO `[3, 3, in, out]` and dense
//! kernels `[in, out]`, each layer's kernel before its bias; `fc1`'s rows are
//! in the NHWC flatten order of a channels-last model (every Applications
//! file, and Keras' default), permuted here to torchvision's NCHW order.
//!
//! # Not converted
//! `vgg19_weights_th_dim_ordering_th_kernels.h5` (Keras 1 on Theano) stores
//! kernels `[out, in, 3, 3]`, spatially flipped for Theano's true
//! convolution; it is recognised by that shape and refused with an error
//! naming the file it should have been. A Keras 2 file saved with
//! `backend = "theano"` has HWIO kernels that are flipped: they are flipped
//! back, as Keras' loader does (`_need_convert_kernel`). Keras 3's bfloat16
//! variables (datasets tagged `dtype = "bfloat16"`, their HDF5 type whatever
//! h5py makes of ml_dtypes' bfloat16; not generated here) are read if that
//! type is an HDF5 float of the bfloat16 layout, and otherwise refused as
//! non-float with the type named.

use std::collections::HashMap;
use std::path::Path;

use lml_kernel::vgg::{LayerKind, LayerSpec, MODEL, VGG19};
use lml_kernel::weights::WeightStoreWriter;
use lml_kernel::{Cut, Preset};
use ndarray::{ArrayD, IxDyn};
use rust_hdf5::{ByteOrder, DatatypeMessage, H5File};

use crate::convert::{ConvertError, Converted};

mod h5meta;
use h5meta::{describe, H5Meta};

type Result<T> = std::result::Result<T, ConvertError>;

/// A Keras layout [`write_keras_h5`] can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KerasLayout {
    /// Keras 1 `save_weights`, as in `vgg19_weights_tf_dim_ordering_tf_kernels.h5`.
    Applications2017,
    /// Keras 2 `save_weights("….h5")`.
    Keras2,
    /// Keras 3 `save_weights("….weights.h5")`.
    Keras3,
}

impl std::str::FromStr for KerasLayout {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "applications-2017" => Ok(KerasLayout::Applications2017),
            "keras2" => Ok(KerasLayout::Keras2),
            "keras3" => Ok(KerasLayout::Keras3),
            _ => Err(format!("{s:?} (expected applications-2017, keras2 or keras3)")),
        }
    }
}

/// Permutes a Keras `fc1` kernel (`[H·W·C, out]`, rows in NHWC flatten order
/// `(h·W + w)·C + c`) into torchvision's dense layout `[out, C·H·W]` (columns
/// in NCHW flatten order `c·H·W + h·W + w`).
pub fn keras_fc1_to_torchvision(
    kernel: ndarray::ArrayView2<'_, f32>,
    (h, w, c): (usize, usize, usize),
) -> ndarray::Array2<f32> {
    let out = kernel.ncols();
    ndarray::Array2::from_shape_fn((out, c * h * w), |(o, col)| {
        let (ch, rest) = (col / (h * w), col % (h * w));
        let (y, x) = (rest / w, rest % w);
        kernel[[(y * w + x) * c + ch, o]]
    })
}

fn bad(path: &Path, reason: impl Into<String>) -> ConvertError {
    ConvertError::Keras { path: path.into(), reason: reason.into() }
}

fn tensor_err(path: &Path, key: &str, reason: impl Into<String>) -> ConvertError {
    ConvertError::Tensor { path: path.into(), key: key.into(), reason: reason.into() }
}

/// `[3, 3, in, out]` or `[in, out]`, and `[out]`.
fn keras_shapes(kind: LayerKind) -> Option<(Vec<usize>, Vec<usize>)> {
    match kind {
        LayerKind::Conv { in_channels, out_channels } => {
            Some((vec![3, 3, in_channels, out_channels], vec![out_channels]))
        }
        LayerKind::Dense { in_features, out_features } => Some((vec![in_features, out_features], vec![out_features])),
        LayerKind::MaxPool => None,
    }
}

/// Keras 3's name for a table row: its class in snake case, numbered among
/// the earlier rows of the same class (`conv2d`, `conv2d_1`, …).
fn keras3_name(index: usize) -> String {
    let kind = |l: &LayerSpec| std::mem::discriminant(&l.kind);
    let class = match VGG19[index].kind {
        LayerKind::Conv { .. } => "conv2d",
        LayerKind::MaxPool => "max_pooling2d",
        LayerKind::Dense { .. } => "dense",
    };
    match VGG19[..index].iter().filter(|l| kind(l) == kind(&VGG19[index])).count() {
        0 => class.to_string(),
        n => format!("{class}_{n}"),
    }
}

fn join(group: &str, name: &str) -> String {
    if group.is_empty() {
        name.to_string()
    } else {
        format!("{group}/{name}")
    }
}

/// How the file keeps its layers.
enum Tree {
    /// `layer_names` → groups → `weight_names` (Keras 1 and 2); the group
    /// holding the list (`""` for the root, or `model_weights`).
    Lists { root: String },
    /// `<prefix>/<class>/vars/<i>` (Keras 3; `_layer_checkpoint_dependencies`
    /// as Keras 3's loader's fallback).
    Keras3 { prefix: String },
}

/// One VGG19 layer found in the file, with its datasets in Keras' order.
struct Found {
    row: usize,
    group: String,
    weights: Vec<String>,
}

/// The layers of a file, as Keras' loader finds them.
struct Plan {
    tree: Tree,
    found: Vec<Found>,
    /// Layers with weights that are not VGG19's.
    ignored: Vec<String>,
    /// `backend = "theano"`: kernels are flipped for true convolution.
    flip: bool,
}

/// An open Keras file: rust-hdf5 for datasets, [`H5Meta`] for group
/// attributes and links.
struct Source<'a> {
    path: &'a Path,
    h5: H5File,
    meta: H5Meta,
}

impl<'a> Source<'a> {
    fn open(path: &'a Path) -> Result<Self> {
        let meta = H5Meta::open(path).map_err(|r| bad(path, format!("not a readable HDF5 file: {r}")))?;
        let h5 = H5File::open(path).map_err(|e| bad(path, format!("not a readable HDF5 file: {e}")))?;
        Ok(Source { path, h5, meta })
    }

    fn meta<T>(&self, what: &str, r: h5meta::MetaResult<T>) -> Result<T> {
        r.map_err(|e| bad(self.path, format!("{what}: {e}")))
    }

    fn group(&mut self, path: &str) -> Result<Option<u64>> {
        let r = self.meta.group(path);
        self.meta(&format!("group /{path}"), r)
    }

    /// Attribute `name` of the group at `at` (path `group`) as strings.
    fn strings(&mut self, group: &str, at: u64, name: &str) -> Result<Option<Vec<String>>> {
        let what = format!("attribute {name} of /{group}");
        let attr = self.meta.attribute(at, name);
        let Some(attr) = self.meta(&what, attr)? else { return Ok(None) };
        let values = self.meta.strings(&attr);
        self.meta(&what, values).map(Some)
    }

    /// A Keras list attribute: `name`, or the chunks `name0`, `name1`, …
    /// (`load_attributes_from_hdf5_group`); `None` when neither is there.
    fn list(&mut self, group: &str, at: u64, name: &str) -> Result<Option<Vec<String>>> {
        if let Some(values) = self.strings(group, at, name)? {
            return Ok(Some(values));
        }
        let mut all: Option<Vec<String>> = None;
        for chunk in 0usize.. {
            match self.strings(group, at, &format!("{name}{chunk}"))? {
                Some(values) => all.get_or_insert_with(Vec::new).extend(values),
                None => break,
            }
        }
        Ok(all)
    }

    /// Finds the layers: the lists if the root or `model_weights` has
    /// `layer_names`, else Keras 3's `layers` tree.
    fn plan(&mut self) -> Result<Plan> {
        let root = self.group("")?.ok_or_else(|| bad(self.path, "no root group"))?;
        for (name, at) in [("", Some(root)), ("model_weights", self.group("model_weights")?)] {
            let Some(at) = at else { continue };
            if let Some(names) = self.list(name, at, "layer_names")? {
                return self.plan_lists(name, at, names);
            }
        }
        for prefix in ["layers", "_layer_checkpoint_dependencies"] {
            if let Some(at) = self.group(prefix)? {
                return self.plan_keras3(prefix, at);
            }
        }
        Err(bad(
            self.path,
            "not a Keras weights file: no layer_names attribute at / or /model_weights (Keras 1/2) \
             and no /layers group (Keras 3 .weights.h5)",
        ))
    }

    fn plan_lists(&mut self, root: &str, root_at: u64, names: Vec<String>) -> Result<Plan> {
        let members = self.meta.members(root_at);
        let members: HashMap<String, u64> = self.meta(&format!("group /{root}"), members)?.into_iter().collect();
        let flip = match self.strings(root, root_at, "backend")? {
            Some(b) => b.first().is_some_and(|b| b == "theano"),
            None => false,
        };
        let mut plan = Plan { tree: Tree::Lists { root: root.into() }, found: Vec::new(), ignored: Vec::new(), flip };
        let mut extra = names.clone();
        // Keras 3's legacy .h5 keeps the model's own variables here, unlisted.
        extra.push("top_level_model_weights".into());
        for (i, name) in extra.iter().enumerate() {
            let listed = i < names.len();
            let group = join(root, name);
            let Some(&at) = members.get(name) else {
                if listed {
                    return Err(bad(
                        self.path,
                        format!("layer {name} is in layer_names but /{group} is not in the file"),
                    ));
                }
                continue;
            };
            let weights = self.list(&group, at, "weight_names")?.unwrap_or_default();
            if weights.is_empty() {
                continue; // weightless: input, pooling, flatten, dropout
            }
            match VGG19.iter().position(|l| l.keras == name).filter(|_| listed) {
                Some(row) if plan.found.iter().any(|f| f.row == row) => {
                    return Err(bad(self.path, format!("layer {name} is listed twice in layer_names")));
                }
                Some(row) => {
                    let weights = weights.iter().map(|w| join(&group, w.trim_start_matches('/'))).collect();
                    plan.found.push(Found { row, group, weights });
                }
                None => plan.ignored.push(group),
            }
        }
        plan.found.sort_by_key(|f| f.row);
        Ok(plan)
    }

    fn plan_keras3(&mut self, prefix: &str, prefix_at: u64) -> Result<Plan> {
        let members = self.meta.members(prefix_at);
        let members = self.meta(&format!("group /{prefix}"), members)?;
        let mut plan =
            Plan { tree: Tree::Keras3 { prefix: prefix.into() }, found: Vec::new(), ignored: Vec::new(), flip: false };
        for (name, at) in members {
            let group = format!("{prefix}/{name}");
            let vars = self.meta.members(at);
            let vars = self.meta(&format!("group /{group}"), vars)?;
            let Some(&(_, vars_at)) = vars.iter().find(|(n, _)| n == "vars") else { continue };
            let vars_group = format!("{group}/vars");
            let datasets = self.meta.members(vars_at);
            let mut datasets: Vec<String> =
                self.meta(&format!("group /{vars_group}"), datasets)?.into_iter().map(|(n, _)| n).collect();
            if datasets.is_empty() {
                continue; // weightless
            }
            let Some(row) = (0..VGG19.len()).find(|&r| keras_shapes(VGG19[r].kind).is_some() && keras3_name(r) == name)
            else {
                plan.ignored.push(group);
                continue;
            };
            // Keras assigns variable i from dataset "i" (`Layer.load_own_variables`).
            datasets.sort_by_key(|d| (d.len(), d.clone()));
            if datasets.iter().enumerate().any(|(i, d)| *d != i.to_string()) {
                return Err(tensor_err(
                    self.path,
                    &vars_group,
                    format!("variables named {datasets:?}, expected \"0\", \"1\", …"),
                ));
            }
            let weights = datasets.iter().map(|d| format!("{vars_group}/{d}")).collect();
            plan.found.push(Found { row, group: vars_group, weights });
        }
        plan.found.sort_by_key(|f| f.row);
        Ok(plan)
    }

    /// Checks dataset `key` against `expected` and returns its float type.
    fn check(&self, key: &str, expected: &[usize], conv: bool) -> Result<FloatType> {
        let ds =
            self.h5.dataset(key).map_err(|e| tensor_err(self.path, key, format!("not a readable dataset: {e}")))?;
        let shape = ds.shape();
        if conv && shape.len() == 4 && shape != expected && shape == [expected[3], expected[2], 3, 3] {
            return Err(tensor_err(
                self.path,
                key,
                format!(
                    "kernel shape {shape:?} is Theano dimension ordering (out, in, rows, cols) with flipped kernels, \
                     the layout of vgg19_weights_th_dim_ordering_th_kernels.h5 (Keras 1, Theano backend), which is \
                     not converted: use vgg19_weights_tf_dim_ordering_tf_kernels.h5 (or _notop.h5), expected {expected:?}"
                ),
            ));
        }
        if shape != expected {
            return Err(tensor_err(self.path, key, format!("shape {shape:?}, expected {expected:?}")));
        }
        let dt = ds.datatype().map_err(|e| tensor_err(self.path, key, format!("datatype: {e}")))?;
        float_type(&dt).map_err(|r| tensor_err(self.path, key, r))
    }

    /// Reads dataset `key` (already checked) as f32.
    fn read(&self, key: &str, shape: &[usize], t: FloatType) -> Result<ArrayD<f32>> {
        let ds =
            self.h5.dataset(key).map_err(|e| tensor_err(self.path, key, format!("not a readable dataset: {e}")))?;
        let bytes =
            ds.read_raw_bytes().map_err(|e| tensor_err(self.path, key, format!("reading: {e} (truncated file?)")))?;
        let numel: usize = shape.iter().product();
        if bytes.len() != numel * t.size() {
            return Err(tensor_err(
                self.path,
                key,
                format!("{} bytes for {numel} values of {} bytes", bytes.len(), t.size()),
            ));
        }
        let values = t.decode(&bytes);
        drop(bytes);
        Ok(ArrayD::from_shape_vec(IxDyn(shape), values).expect("length checked"))
    }
}

/// An IEEE float layout of the HDF5 float class, in either byte order.
#[derive(Clone, Copy, Debug)]
struct FloatType {
    format: FloatFormat,
    big_endian: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FloatFormat {
    Half,
    BFloat16,
    Single,
    Double,
}

impl FloatType {
    fn size(self) -> usize {
        match self.format {
            FloatFormat::Half | FloatFormat::BFloat16 => 2,
            FloatFormat::Single => 4,
            FloatFormat::Double => 8,
        }
    }

    /// Widens (f16, bf16: exactly) or rounds (f64: to nearest) to f32.
    fn decode(self, bytes: &[u8]) -> Vec<f32> {
        let be = self.big_endian;
        let u16_at = |b: &[u8]| if be { u16::from_be_bytes([b[0], b[1]]) } else { u16::from_le_bytes([b[0], b[1]]) };
        match self.format {
            FloatFormat::Half => bytes.chunks_exact(2).map(|b| half::f16::from_bits(u16_at(b)).to_f32()).collect(),
            FloatFormat::BFloat16 => bytes.chunks_exact(2).map(|b| half::bf16::from_bits(u16_at(b)).to_f32()).collect(),
            FloatFormat::Single => bytes
                .chunks_exact(4)
                .map(|b| {
                    let a = [b[0], b[1], b[2], b[3]];
                    f32::from_bits(if be { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) })
                })
                .collect(),
            FloatFormat::Double => bytes
                .chunks_exact(8)
                .map(|b| {
                    let a: [u8; 8] = b.try_into().expect("chunks of 8");
                    (if be { f64::from_be_bytes(a) } else { f64::from_le_bytes(a) }) as f32
                })
                .collect(),
        }
    }
}

/// The float layout of an HDF5 datatype, or why it is not one we read.
fn float_type(dt: &DatatypeMessage) -> std::result::Result<FloatType, String> {
    let &DatatypeMessage::FloatingPoint {
        size,
        byte_order,
        sign_location,
        bit_offset,
        bit_precision,
        exponent_location,
        exponent_size,
        mantissa_location,
        mantissa_size,
        exponent_bias,
    } = dt
    else {
        let class = match dt {
            DatatypeMessage::FixedPoint { .. } => "an integer",
            _ => "a non-float",
        };
        return Err(format!("{class} dataset ({}); weights must be floats (f16, f32 or f64)", describe(dt)));
    };
    // (size, exponent bits, mantissa bits, bias) of the IEEE layouts.
    let format = match (size, exponent_size, mantissa_size, exponent_bias) {
        (2, 5, 10, 15) => FloatFormat::Half,
        (2, 8, 7, 127) => FloatFormat::BFloat16,
        (4, 8, 23, 127) => FloatFormat::Single,
        (8, 11, 52, 1023) => FloatFormat::Double,
        _ => return Err(format!("HDF5 type {} is not an IEEE half, single or double (or bfloat16)", describe(dt))),
    };
    let bits = size * 8;
    let ieee = bit_offset == 0
        && u32::from(bit_precision) == bits
        && u32::from(sign_location) == bits - 1
        && exponent_location == mantissa_size
        && mantissa_location == 0;
    if !ieee {
        return Err(format!("HDF5 type {} has a non-IEEE bit layout", describe(dt)));
    }
    Ok(FloatType { format, big_endian: byte_order == ByteOrder::BigEndian })
}

/// Converts a Keras VGG19 `.h5` — any layout in the module docs, full or
/// `_notop` — into a weight store at `out`, preset `caffe`.
///
/// Layers are found as Keras' loader finds them: `layer_names` (at the root,
/// or in `model_weights` for a full-model file; chunked or not), then each
/// layer's `weight_names`, datasets in that order (kernel, then bias); or, in
/// a Keras 3 `.weights.h5`, `layers/<class>/vars/<i>` by position. Weightless
/// layers are skipped; layers with weights that VGG19 does not have are
/// listed in [`Converted::ignored`]. Convolution kernels go HWIO → OIHW,
/// dense kernels `[in, out]` → `[out, in]`, `fc1` is permuted from NHWC to
/// NCHW flatten order ([`keras_fc1_to_torchvision`]); float data of any IEEE
/// width and byte order becomes f32. The 16 convolutions are required; the
/// dense layers present set the deepest cut (a `_notop` file gives pool5),
/// and `predictions` is converted as `classifier.6` when present.
///
/// # Errors
/// [`ConvertError`] naming the file and the layer or dataset: not HDF5,
/// truncated, not a Keras layout, a missing convolution, a layer with other
/// than two weights, a shape other than VGG19's (expected and actual shown),
/// Theano-ordered kernels, or a dataset that is not float (its type named).
/// Nothing is left at `out` on error.
pub fn convert_keras_h5(input: &Path, out: &Path) -> Result<Converted> {
    let mut src = Source::open(input)?;
    let plan = src.plan()?;
    // Check every found layer's datasets before writing anything.
    let mut layers = Vec::new();
    for f in &plan.found {
        let spec = &VGG19[f.row];
        let Some((kernel_shape, bias_shape)) = keras_shapes(spec.kind) else {
            return Err(tensor_err(input, &f.group, format!("{} weights on a pooling layer", f.weights.len())));
        };
        if f.weights.len() != 2 {
            return Err(tensor_err(
                input,
                &f.group,
                format!("{} weights {:?}, expected 2 (kernel, bias)", f.weights.len(), f.weights),
            ));
        }
        let conv = matches!(spec.kind, LayerKind::Conv { .. });
        let kt = src.check(&f.weights[0], &kernel_shape, conv)?;
        let bt = src.check(&f.weights[1], &bias_shape, conv)?;
        layers.push((f, kernel_shape, kt, bias_shape, bt));
    }
    for (row, spec) in VGG19.iter().enumerate() {
        if matches!(spec.kind, LayerKind::Conv { .. }) && !plan.found.iter().any(|f| f.row == row) {
            let tried = match &plan.tree {
                Tree::Lists { root } => format!("a layer {} with weights in the layer_names of /{root}", spec.keras),
                Tree::Keras3 { prefix } => format!("/{prefix}/{}/vars/0 and 1", keras3_name(row)),
            };
            return Err(ConvertError::Missing { path: input.into(), tensor: spec.keras.into(), tried });
        }
    }
    let mut writer = WeightStoreWriter::create(out, MODEL, Preset::Caffe)?;
    let mut converted = Vec::new();
    for (f, kernel_shape, kt, bias_shape, bt) in layers {
        let spec = &VGG19[f.row];
        let kernel = src.read(&f.weights[0], &kernel_shape, kt)?;
        let bias = src.read(&f.weights[1], &bias_shape, bt)?;
        let weight: ArrayD<f32> = match spec.kind {
            LayerKind::Conv { .. } => {
                let mut k = kernel.permuted_axes(IxDyn(&[3, 2, 0, 1]));
                if plan.flip {
                    // Theano convolves: Keras' `convert_kernel` reverses the spatial axes.
                    k.invert_axis(ndarray::Axis(2));
                    k.invert_axis(ndarray::Axis(3));
                }
                k.as_standard_layout().into_owned()
            }
            _ if spec.keras == "fc1" => {
                let k = kernel.into_dimensionality::<ndarray::Ix2>().expect("2-D checked");
                keras_fc1_to_torchvision(k.view(), (7, 7, 512)).into_dyn()
            }
            _ => kernel.reversed_axes().as_standard_layout().into_owned(),
        };
        writer.add(&format!("{}.weight", spec.name), weight.view())?;
        writer.add(&format!("{}.bias", spec.name), bias.view())?;
        converted.push(spec.name);
    }
    let cut = match (converted.contains(&"classifier.0"), converted.contains(&"classifier.3")) {
        (true, true) => Cut::Fc7,
        (true, false) => Cut::Fc6,
        _ => Cut::Pool5,
    };
    writer.finish()?;
    Ok(Converted { tensors: 2 * converted.len(), cut, ignored: plan.ignored })
}

/// A layer for [`write_keras_h5`]: its table row, kernel and bias in Keras' layout.
type KerasWeights = (usize, ArrayD<f32>, ArrayD<f32>);

/// Writes torchvision-layout tensors as a Keras VGG19 `.h5` in `layout` (the
/// inverse of [`convert_keras_h5`]), for fixtures: every VGG19 layer whose
/// weight and bias are in `tensors`, plus the weightless layers Keras lists
/// (input, pools, `flatten` when a dense layer is present). rust-hdf5 writes
/// string lists as variable-length strings (as h5py 3 does); Keras 1's
/// fixed-length lists are what the h5py tests write. Published atomically.
///
/// # Errors
/// HDF5 or I/O errors, as text.
pub fn write_keras_h5(
    path: &Path,
    tensors: &[(String, ArrayD<f32>)],
    layout: KerasLayout,
) -> std::result::Result<(), String> {
    let get = |name: String| tensors.iter().find(|(n, _)| *n == name).map(|(_, t)| t);
    let mut layers: Vec<(String, Option<KerasWeights>)> = vec![(input_name(layout), None)];
    let has_dense =
        VGG19.iter().any(|l| matches!(l.kind, LayerKind::Dense { .. }) && get(format!("{}.weight", l.name)).is_some());
    for (row, layer) in VGG19.iter().enumerate() {
        if matches!(layer.kind, LayerKind::Dense { .. }) && !layers.iter().any(|(n, _)| n == "flatten") {
            if !has_dense {
                break;
            }
            layers.push(("flatten".into(), None));
        }
        if matches!(layer.kind, LayerKind::MaxPool) {
            layers.push((layer.keras.into(), None));
            continue;
        }
        let (Some(w), Some(b)) = (get(format!("{}.weight", layer.name)), get(format!("{}.bias", layer.name))) else {
            continue;
        };
        let kernel: ArrayD<f32> = match layer.kind {
            LayerKind::Conv { .. } => w.view().permuted_axes(IxDyn(&[2, 3, 1, 0])).as_standard_layout().into_owned(),
            LayerKind::Dense { .. } if layer.keras == "fc1" => {
                // [out, c·49 + h·7 + w] → [(h·7 + w)·512 + c, out]
                let out = w.shape()[0];
                ArrayD::from_shape_fn(IxDyn(&[25088, out]), |ix| {
                    let (hw, c) = (ix[0] / 512, ix[0] % 512);
                    w[[ix[1], c * 49 + hw]]
                })
            }
            _ => w.t().as_standard_layout().into_owned(),
        };
        layers.push((layer.keras.into(), Some((row, kernel, b.clone()))));
    }
    let tmp = path.with_extension("partial");
    let e = |e: rust_hdf5::Hdf5Error| e.to_string();
    let file = H5File::create(&tmp).map_err(e)?;
    let write = |g: &rust_hdf5::H5Group, name: &str, t: &ArrayD<f32>| -> std::result::Result<(), String> {
        let ds = g.new_dataset::<f32>().shape(t.shape()).create(name).map_err(e)?;
        ds.write_raw(t.as_standard_layout().as_slice().expect("standard layout")).map_err(e)
    };
    match layout {
        KerasLayout::Applications2017 | KerasLayout::Keras2 => {
            let names: Vec<&str> = layers.iter().map(|(n, _)| n.as_str()).collect();
            file.root_group().set_attr_string_array("layer_names", &names).map_err(e)?;
            if layout == KerasLayout::Keras2 {
                file.root_group().set_attr_string("backend", "tensorflow").map_err(e)?;
                file.root_group().set_attr_string("keras_version", "2.2.4").map_err(e)?;
            }
            for (name, weights) in &layers {
                let g = file.create_group(name).map_err(e)?;
                let Some((_, kernel, bias)) = weights else { continue };
                if layout == KerasLayout::Applications2017 {
                    let wn = [format!("{name}_W_1:0"), format!("{name}_b_1:0")];
                    g.set_attr_string_array("weight_names", &[&wn[0], &wn[1]]).map_err(e)?;
                    write(&g, &wn[0], kernel)?;
                    write(&g, &wn[1], bias)?;
                } else {
                    g.set_attr_string_array("weight_names", &[&format!("{name}/kernel:0"), &format!("{name}/bias:0")])
                        .map_err(e)?;
                    let inner = g.create_group(name).map_err(e)?;
                    write(&inner, "kernel:0", kernel)?;
                    write(&inner, "bias:0", bias)?;
                }
            }
        }
        KerasLayout::Keras3 => {
            file.create_group("vars").map_err(e)?.set_attr_string("name", "vgg19").map_err(e)?;
            let top = file.create_group("layers").map_err(e)?;
            for (name, weights) in &layers {
                let class = match (name.as_str(), weights) {
                    (_, Some((row, ..))) => keras3_name(*row),
                    ("flatten", None) => "flatten".into(),
                    (n, None) => match VGG19.iter().position(|l| l.keras == n) {
                        Some(row) => keras3_name(row),
                        None => "input_layer".into(),
                    },
                };
                let vars = top.create_group(&class).map_err(e)?.create_group("vars").map_err(e)?;
                vars.set_attr_string("name", name).map_err(e)?;
                if let Some((_, kernel, bias)) = weights {
                    write(&vars, "0", kernel)?;
                    write(&vars, "1", bias)?;
                }
            }
        }
    }
    file.close().map_err(e)?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

/// The input layer's name: Keras 1 and 2 number it, Keras 3 does not.
fn input_name(layout: KerasLayout) -> String {
    match layout {
        KerasLayout::Keras3 => "input_layer".into(),
        _ => "input_1".into(),
    }
}
