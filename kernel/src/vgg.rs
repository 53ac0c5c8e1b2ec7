//! VGG19 as a table of layers keyed by torchvision names, and its frozen
//! forward pass to a chosen cut.
//!
//! # Layout
//! Activations are NCHW f32; convolution weights OIHW; dense weights
//! `[out, in]`. The classifier's input is the NCHW flattening `c·49 + y·7 + x`
//! of the 7×7 adaptive-average-pooled pool5 output — torchvision's order, so
//! torchvision checkpoints load unchanged (Keras' `fc1` is stored in NHWC
//! flatten order and is permuted by the weight converter).
//!
//! # Input size
//! Any multiple of 32 from 32 up: 224 as in the ImageNet model and the seed's
//! paper, 32 for CIFAR-native features. Pool5 is then `(S/32)²` cells per
//! channel; the classifier sees it through torchvision's
//! `AdaptiveAvgPool2d((7, 7))`, which is the identity at 224.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use ndarray::{Array1, Array2, ArrayD, ArrayView4, Ix1, Ix2, Ix4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{KernelError, Result};
use crate::gemm::{Microkernel, PackedA};
use crate::geometry::Window2d;
use crate::layers::conv2d::{conv2d_forward_into, conv2d_padded, pack_filters, ConvAlgorithm, ConvPolicy};
use crate::layers::padded::PaddedLayout;
use crate::layers::winograd::{conv2d_winograd, WinogradFilters};
use crate::layers::{adaptive_avgpool2d_forward, dense_forward_on, maxpool2d_values_into};
use crate::preprocess::{preprocess, Preset};
use crate::weights::{NamedTensors, TensorSpec, WeightStore};

/// The model name written in weight manifests.
pub const MODEL: &str = "vgg19";

/// What a layer of the table does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// 3×3 convolution, stride 1, padding 1, fused bias + ReLU.
    Conv { in_channels: usize, out_channels: usize },
    /// 2×2 max-pool, stride 2.
    MaxPool,
    /// Dense layer with fused bias + ReLU (dropout is the identity when frozen).
    Dense { in_features: usize, out_features: usize },
}

/// One row of the VGG19 table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerSpec {
    /// torchvision key prefix: `features.0` … `classifier.6`.
    pub name: &'static str,
    /// Keras Applications layer name (`block1_conv1`, `fc1`, …).
    pub keras: &'static str,
    pub kind: LayerKind,
}

const fn conv(name: &'static str, keras: &'static str, i: usize, o: usize) -> LayerSpec {
    LayerSpec { name, keras, kind: LayerKind::Conv { in_channels: i, out_channels: o } }
}
const fn pool(name: &'static str, keras: &'static str) -> LayerSpec {
    LayerSpec { name, keras, kind: LayerKind::MaxPool }
}
const fn dense(name: &'static str, keras: &'static str, i: usize, o: usize) -> LayerSpec {
    LayerSpec { name, keras, kind: LayerKind::Dense { in_features: i, out_features: o } }
}

/// Flattened size of the pooled feature map fed to the classifier (512·7·7).
pub const CLASSIFIER_IN: usize = 512 * 7 * 7;

/// VGG19 (configuration "E"): 16 convolutions, 5 pools, 3 dense layers.
/// ReLUs are fused into the layer before them and are not listed.
pub const VGG19: [LayerSpec; 24] = [
    conv("features.0", "block1_conv1", 3, 64),
    conv("features.2", "block1_conv2", 64, 64),
    pool("features.4", "block1_pool"),
    conv("features.5", "block2_conv1", 64, 128),
    conv("features.7", "block2_conv2", 128, 128),
    pool("features.9", "block2_pool"),
    conv("features.10", "block3_conv1", 128, 256),
    conv("features.12", "block3_conv2", 256, 256),
    conv("features.14", "block3_conv3", 256, 256),
    conv("features.16", "block3_conv4", 256, 256),
    pool("features.18", "block3_pool"),
    conv("features.19", "block4_conv1", 256, 512),
    conv("features.21", "block4_conv2", 512, 512),
    conv("features.23", "block4_conv3", 512, 512),
    conv("features.25", "block4_conv4", 512, 512),
    pool("features.27", "block4_pool"),
    conv("features.28", "block5_conv1", 512, 512),
    conv("features.30", "block5_conv2", 512, 512),
    conv("features.32", "block5_conv3", 512, 512),
    conv("features.34", "block5_conv4", 512, 512),
    pool("features.36", "block5_pool"),
    dense("classifier.0", "fc1", CLASSIFIER_IN, 4096),
    dense("classifier.3", "fc2", 4096, 4096),
    dense("classifier.6", "predictions", 4096, 1000),
];

/// Where the frozen feature extractor stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cut {
    /// After `features.36` (max-pool 5), flattened NCHW: `512·(S/32)²` features.
    Pool5,
    /// After `classifier.0` + ReLU: 4096 features.
    Fc6,
    /// After `classifier.3` + ReLU: 4096 features (the default, as in the seed).
    Fc7,
}

impl Cut {
    /// Number of table rows run for this cut.
    pub fn layers(self) -> usize {
        match self {
            Cut::Pool5 => 21,
            Cut::Fc6 => 22,
            Cut::Fc7 => 23,
        }
    }
}

impl std::str::FromStr for Cut {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pool5" => Ok(Cut::Pool5),
            "fc6" => Ok(Cut::Fc6),
            "fc7" => Ok(Cut::Fc7),
            _ => Err(KernelError::invalid("cut", format!("{s:?} (expected pool5, fc6 or fc7)"))),
        }
    }
}

/// Tensors a VGG19 weight store may hold: those up to `cut` are required,
/// the rest (including the ImageNet classifier) optional.
pub fn tensor_specs(cut: Cut) -> Vec<TensorSpec> {
    let mut specs = Vec::new();
    for (i, layer) in VGG19.iter().enumerate() {
        let required = i < cut.layers();
        let (w, b) = match layer.kind {
            LayerKind::Conv { in_channels, out_channels } => (vec![out_channels, in_channels, 3, 3], out_channels),
            LayerKind::Dense { in_features, out_features } => (vec![out_features, in_features], out_features),
            LayerKind::MaxPool => continue,
        };
        specs.push(TensorSpec { name: format!("{}.weight", layer.name), shape: w, required });
        specs.push(TensorSpec { name: format!("{}.bias", layer.name), shape: vec![b], required });
    }
    specs
}

/// Random VGG19 weights (He-uniform, small random biases) for tests, demos and
/// benchmarks: activations keep a stable scale through all 19 layers.
/// Holds the tensors `cut` requires (not the ImageNet classifier).
pub fn random_weights(seed: u64, cut: Cut) -> NamedTensors {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for spec in tensor_specs(cut).into_iter().filter(|s| s.required) {
        let fan_in: usize = spec.shape.iter().skip(1).product::<usize>().max(1);
        let is_bias = spec.shape.len() == 1;
        let bound = if is_bias { 0.01 } else { (6.0 / fan_in as f64).sqrt() as f32 };
        let n: usize = spec.shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
        out.push((spec.name, ArrayD::from_shape_vec(spec.shape, data).expect("shape matches length")));
    }
    out
}

/// Nominal FLOPs of one image through the network to `cut` at `size × size`
/// (2 per multiply-add, convolutions and dense layers only).
pub fn flops_per_image(size: usize, cut: Cut) -> u64 {
    let mut s = size as u64;
    let mut total = 0u64;
    for layer in &VGG19[..cut.layers()] {
        match layer.kind {
            LayerKind::Conv { in_channels, out_channels } => {
                total += 2 * s * s * 9 * in_channels as u64 * out_channels as u64
            }
            LayerKind::MaxPool => s /= 2,
            LayerKind::Dense { in_features, out_features } => total += 2 * in_features as u64 * out_features as u64,
        }
    }
    total
}

/// Buffers a forward pass reuses across calls: two activation buffers (plain
/// or padded, see `Held`) and a padded copy for a convolution whose input is
/// not already padded (the network's input). Fresh pages cost
/// a page fault each on first touch (0.43 ms per MB on the development VM,
/// 10.8× a rewrite: `cargo bench -p lml-benches --bench peak -- 'fresh|rewrite'`),
/// so they are kept: about 2 × 105 MB at batch 8, 224×224.
#[derive(Debug, Default)]
struct Workspace {
    a: Vec<f32>,
    b: Vec<f32>,
    pad: Vec<f32>,
}

/// `buf` grown to hold `len` floats (never shrunk), its first `len`.
fn grown(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// `buf` grown to hold `shape` in standard layout, viewed as that shape.
fn plain(buf: &mut Vec<f32>, shape: [usize; 4]) -> ndarray::ArrayViewMut4<'_, f32> {
    ndarray::ArrayViewMut4::from_shape(shape, grown(buf, shape.iter().product())).expect("sized")
}

/// Where the current activations are.
#[derive(Clone, Copy, Debug)]
enum Held {
    /// In the caller's input array.
    Input,
    /// In a buffer, standard NCHW.
    Plain([usize; 4]),
    /// In a buffer, padded for the implicit convolution.
    Padded(PaddedLayout),
}

impl Held {
    fn view<'a>(&self, input: ArrayView4<'a, f32>, buf: &'a [f32]) -> ArrayView4<'a, f32> {
        match *self {
            Held::Input => input,
            Held::Plain(shape) => ArrayView4::from_shape(shape, &buf[..shape.iter().product()]).expect("sized"),
            Held::Padded(layout) => layout.view(buf),
        }
    }
}

/// A convolution's filters as its algorithm needs them.
#[derive(Debug)]
enum ConvFilters {
    /// Packed for the direct algorithms (implicit, packed im2col).
    Direct(PackedA),
    /// Transformed and packed for Winograd.
    Winograd(WinogradFilters),
}

/// The frozen VGG19 feature extractor over a [`WeightStore`].
///
/// Dense weights (fc6, fc7: 469 MB) are read straight from the mapping. The
/// convolution filters are packed into the panel layout of the extractor's
/// [`Microkernel`] for the algorithm each layer runs ([`conv_plan`](Self::conv_plan):
/// 80 MB for the direct algorithms, 4× that for Winograd F(4×4, 3×3)) on the
/// first forward pass and kept for the life of the extractor (shared by its clones).
#[derive(Clone, Debug)]
pub struct Vgg19 {
    store: Arc<WeightStore>,
    input_size: usize,
    cut: Cut,
    kernel: Microkernel,
    policy: ConvPolicy,
    packed: Arc<OnceLock<HashMap<&'static str, ConvFilters>>>,
    workspace: Arc<Mutex<Workspace>>,
}

impl Vgg19 {
    /// Opens the weight directory `dir` for a forward to `cut` at `input_size`.
    ///
    /// # Errors
    /// As [`WeightStore::open`] and [`new`](Self::new).
    pub fn open(dir: impl AsRef<std::path::Path>, input_size: usize, cut: Cut) -> Result<Self> {
        let store = WeightStore::open(dir, MODEL, &tensor_specs(cut))?;
        Self::new(Arc::new(store), input_size, cut)
    }

    /// Wraps an already opened store (it must have been opened with
    /// [`tensor_specs`] of at least `cut`). The convolutions run on the
    /// microkernel [`Microkernel::select`] picks (the fastest this CPU runs,
    /// or the one `LML_MICROKERNEL` names); [`with_microkernel`](Self::with_microkernel) picks another.
    /// Their algorithms follow the policy [`ConvPolicy::select`] reads
    /// (`LML_CONV`, default `auto`); [`with_conv_policy`](Self::with_conv_policy) picks another.
    ///
    /// # Errors
    /// [`KernelError::Invalid`] if `input_size` is not a positive multiple of
    /// 32, `LML_MICROKERNEL` names no kernel this CPU runs or `LML_CONV` no policy;
    /// [`KernelError::MissingTensor`] if the store lacks a tensor `cut` needs.
    pub fn new(store: Arc<WeightStore>, input_size: usize, cut: Cut) -> Result<Self> {
        if input_size == 0 || !input_size.is_multiple_of(32) {
            return Err(KernelError::invalid("input size", format!("{input_size} is not a positive multiple of 32")));
        }
        for spec in tensor_specs(cut).iter().filter(|s| s.required) {
            store.view(&spec.name)?;
        }
        let kernel = Microkernel::select()?;
        let policy = ConvPolicy::select()?;
        Ok(Vgg19 { store, input_size, cut, kernel, policy, packed: Arc::default(), workspace: Arc::default() })
    }

    /// The same extractor on `kernel` (for tests and benchmarks that compare
    /// kernels); filters are packed anew for it on its first forward.
    ///
    /// # Errors
    /// [`KernelError::Invalid`] if this CPU cannot run `kernel`.
    pub fn with_microkernel(self, kernel: Microkernel) -> Result<Self> {
        kernel.require()?;
        Ok(Vgg19 { kernel, packed: Arc::default(), workspace: Arc::default(), ..self })
    }

    /// The same extractor with the convolution algorithms `policy` chooses
    /// (for tests and benchmarks that compare them); filters are packed anew
    /// on its first forward.
    pub fn with_conv_policy(self, policy: ConvPolicy) -> Self {
        Vgg19 { policy, packed: Arc::default(), workspace: Arc::default(), ..self }
    }

    /// The microkernel the convolutions run on.
    pub fn microkernel(&self) -> Microkernel {
        self.kernel
    }

    /// The policy that chose the convolution algorithms.
    pub fn conv_policy(&self) -> ConvPolicy {
        self.policy
    }

    /// The algorithm each convolution runs, in table order (torchvision names).
    pub fn conv_plan(&self) -> Vec<(&'static str, ConvAlgorithm)> {
        let mut side = self.input_size;
        let mut plan = Vec::new();
        for layer in &VGG19 {
            match layer.kind {
                LayerKind::Conv { in_channels, out_channels } => plan.push((
                    layer.name,
                    self.policy.algorithm((in_channels, out_channels), (side, side), &Window2d::VGG_CONV),
                )),
                LayerKind::MaxPool => side /= 2,
                LayerKind::Dense { .. } => {}
            }
        }
        plan
    }

    /// Side of the square input.
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    /// The cut this extractor stops at.
    pub fn cut(&self) -> Cut {
        self.cut
    }

    /// The weight store the extractor reads (for exporting its tensors).
    pub fn store(&self) -> &WeightStore {
        &self.store
    }

    /// The normalisation the weights expect.
    pub fn preset(&self) -> Preset {
        self.store.preset()
    }

    /// Length of one image's feature vector.
    pub fn feature_dim(&self) -> usize {
        match self.cut {
            Cut::Pool5 => 512 * (self.input_size / 32).pow(2),
            Cut::Fc6 | Cut::Fc7 => 4096,
        }
    }

    /// A layer's weight (as `D`) and bias views.
    fn params<D: ndarray::Dimension>(
        &self,
        layer: &str,
    ) -> Result<(ndarray::ArrayView<'_, f32, D>, ndarray::ArrayView1<'_, f32>)> {
        let w = self.store.view(&format!("{layer}.weight"))?;
        let b = self.store.view(&format!("{layer}.bias"))?;
        let rank =
            |name: &str, e: ndarray::ShapeError| KernelError::invalid(format!("{layer}.{name} rank"), e.to_string());
        Ok((
            w.into_dimensionality::<D>().map_err(|e| rank("weight", e))?,
            b.into_dimensionality::<Ix1>().map_err(|e| rank("bias", e))?,
        ))
    }

    /// Conv filters packed for the extractor's microkernel, as each layer's algorithm needs them.
    fn packed_filters(&self) -> Result<&HashMap<&'static str, ConvFilters>> {
        if let Some(p) = self.packed.get() {
            return Ok(p);
        }
        let packed: Result<HashMap<&'static str, ConvFilters>> = self
            .conv_plan()
            .into_par_iter()
            .map(|(name, algo)| {
                let w = self.params::<Ix4>(name)?.0;
                let filters = match algo {
                    ConvAlgorithm::Winograd(tile) => ConvFilters::Winograd(WinogradFilters::new(w, tile, self.kernel)?),
                    _ => ConvFilters::Direct(pack_filters(w, self.kernel)?),
                };
                Ok((name, filters))
            })
            .collect();
        let map = packed?;
        Ok(self.packed.get_or_init(|| map))
    }

    /// Forward pass of preprocessed input to the cut.
    ///
    /// # Arguments
    /// * `input` — `[N, 3, S, S]` with `S = input_size`, normalised with [`preset`](Self::preset).
    ///
    /// # Shapes
    /// Returns `[N, feature_dim]`.
    ///
    /// # Errors
    /// [`KernelError::Shape`] if `input` is not `[N, 3, S, S]`.
    pub fn forward(&self, input: ArrayView4<'_, f32>) -> Result<Array2<f32>> {
        self.forward_observed(input, |_, _| {})
    }

    /// [`forward`](Self::forward), calling `observe(layer name, output)` after
    /// every table layer (for tests and per-layer profiling).
    pub fn forward_observed(
        &self,
        input: ArrayView4<'_, f32>,
        mut observe: impl FnMut(&str, ndarray::ArrayViewD<'_, f32>),
    ) -> Result<Array2<f32>> {
        let s = self.input_size;
        let n = input.shape()[0];
        if input.shape() != [n, 3, s, s] {
            return Err(KernelError::shape("VGG19 input", format!("[N, 3, {s}, {s}]"), input.shape()));
        }
        let packed = self.packed_filters()?;
        // Reuse the activation buffers of earlier calls when no other call
        // holds them (see `Workspace`); otherwise work in fresh ones.
        let mut guard = self.workspace.try_lock().ok();
        let mut local = Workspace::default();
        let ws: &mut Workspace = match guard.as_deref_mut() {
            Some(ws) => ws,
            None => &mut local,
        };
        // Ping-pong between two buffers: `bufs[src]` holds the current
        // activations as `held` says, the layer writes `bufs[1 - src]`.
        // Convolutions that run the implicit or Winograd algorithms
        // read and write padded layouts, so a block's convolutions pass
        // their activations on without copies, and the pool before a block
        // writes straight into its first convolution's padded input.
        let mut bufs = [std::mem::take(&mut ws.a), std::mem::take(&mut ws.b)];
        let mut src = 0;
        let mut held = Held::Input;
        let mut flat: Option<Array2<f32>> = None;
        let layers = &VGG19[..self.cut.layers()];
        let result = (|| -> Result<()> {
            for (i, layer) in layers.iter().enumerate() {
                let (current, next) = match &mut bufs {
                    [a, b] if src == 0 => (&*a, b),
                    [a, b] => (&*b, a),
                };
                let x = held.view(input.view(), current);
                let [_, c, h, w] = [n, x.shape()[1], x.shape()[2], x.shape()[3]];
                match layer.kind {
                    LayerKind::Conv { out_channels, .. } => {
                        let (wt, b) = self.params::<Ix4>(layer.name)?;
                        let window = &Window2d::VGG_CONV;
                        // The filters were packed for the algorithm `conv_plan` chose.
                        let filters = packed.get(layer.name).expect("every convolution's filters are packed");
                        let algo = self.policy.algorithm((c, out_channels), (h, w), window);
                        if matches!(algo, ConvAlgorithm::Implicit | ConvAlgorithm::Winograd(_)) {
                            let lin = PaddedLayout::conv_input(n, c, h, w, window);
                            let (input, lin) = match held {
                                Held::Padded(l) if l == lin => (&current[..], l),
                                _ => {
                                    lin.fill(grown(&mut ws.pad, lin.len()), x)?;
                                    (&ws.pad[..], lin)
                                }
                            };
                            let lout = lin.conv_output(out_channels, window);
                            let out = grown(next, lout.len());
                            match filters {
                                ConvFilters::Direct(p) => conv2d_padded(input, &lin, p, b, window, true, out, &lout)?,
                                ConvFilters::Winograd(f) => {
                                    conv2d_winograd(input, &lin, f, b, window, true, out, &lout)?
                                }
                            }
                            held = Held::Padded(lout);
                        } else {
                            let ConvFilters::Direct(p) = filters else {
                                unreachable!("{algo:?} runs on directly packed filters")
                            };
                            let shape = [n, out_channels, h, w];
                            let out = plain(next, shape);
                            conv2d_forward_into(x, wt, Some(p), b, window, true, algo, out, &mut ws.pad)?;
                            held = Held::Plain(shape);
                        }
                    }
                    LayerKind::MaxPool => {
                        let (oh, ow) = (h / 2, w / 2);
                        // Pool into the next convolution's padded input when it reads one.
                        let padded_next = match layers.get(i + 1).map(|l| l.kind) {
                            Some(LayerKind::Conv { out_channels, .. }) => matches!(
                                self.policy.algorithm((c, out_channels), (oh, ow), &Window2d::VGG_CONV),
                                ConvAlgorithm::Implicit | ConvAlgorithm::Winograd(_)
                            ),
                            _ => false,
                        };
                        if padded_next {
                            let l = PaddedLayout::conv_input(n, c, oh, ow, &Window2d::VGG_CONV);
                            let buf = grown(next, l.len());
                            maxpool2d_values_into(x, &Window2d::VGG_POOL, l.view_mut(buf))?;
                            l.zero_frame(buf);
                            held = Held::Padded(l);
                        } else {
                            let shape = [n, c, oh, ow];
                            maxpool2d_values_into(x, &Window2d::VGG_POOL, plain(next, shape))?;
                            held = Held::Plain(shape);
                        }
                    }
                    LayerKind::Dense { .. } => {
                        let input2 = match flat.take() {
                            Some(f) => f,
                            None => {
                                let pooled = adaptive_avgpool2d_forward(x, (7, 7))?;
                                pooled.into_shape_with_order((n, CLASSIFIER_IN)).expect("contiguous")
                            }
                        };
                        let (wt, b) = self.params::<Ix2>(layer.name)?;
                        let y = dense_forward_on(input2.view(), wt, b, true, self.kernel)?;
                        observe(layer.name, y.view().into_dyn());
                        flat = Some(y);
                        continue;
                    }
                }
                observe(layer.name, held.view(input.view(), next).into_dyn());
                src = 1 - src;
            }
            Ok(())
        })();
        let features = match (&result, flat) {
            (Err(_), _) => None,
            (Ok(()), Some(f)) => Some(f),
            (Ok(()), None) => {
                let x = held.view(input.view(), &bufs[src]);
                let len = x.len();
                let owned = x.as_standard_layout().into_owned();
                Some(owned.into_shape_with_order((n, len / n.max(1))).expect("standard layout"))
            }
        };
        [ws.a, ws.b] = bufs;
        result?;
        Ok(features.expect("set on success"))
    }

    /// Preprocesses `u8` RGB images `[N, H, W, 3]` with the store's preset and
    /// runs [`forward`](Self::forward).
    ///
    /// # Errors
    /// As [`preprocess`] and [`forward`](Self::forward).
    pub fn features(&self, images: ArrayView4<'_, u8>) -> Result<Array2<f32>> {
        let x = preprocess(images, self.input_size, self.preset())?;
        self.forward(x.view())
    }
}

/// A new classifier head's initial parameters: `[classes, features]` weight
/// (uniform in `±1/√features`, PyTorch's `nn.Linear` default) and zero bias.
pub fn init_head(classes: usize, features: usize, seed: u64) -> (Array2<f32>, Array1<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bound = 1.0 / (features.max(1) as f32).sqrt();
    let w = Array2::from_shape_simple_fn((classes, features), || rng.random_range(-bound..=bound));
    (w, Array1::zeros(classes))
}
