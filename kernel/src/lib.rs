//! # lml-kernel: CPU layers and a frozen VGG19 for serverless training
//!
//! A small, dependency-light library that computes everything the training
//! system needs on a CPU: convolution by im2col + GEMM, max-pooling, dense
//! layers, ReLU, softmax cross-entropy and SGD, each with its backward pass;
//! a VGG19 feature extractor over memory-mapped `.npy` weights; and a trainer
//! for a softmax head. It knows nothing of Lambda, files beyond `.npy`, or async.
//!
//! ## Conventions
//! * **Layout.** Activations are NCHW (`[batch, channels, height, width]`),
//!   convolution weights OIHW, dense weights `[out, in]` — torchvision's
//!   layouts, so its checkpoints need no transposition. Images on disk are
//!   `[N, H, W, 3]` `u8` RGB and are converted by [`preprocess`](fn@preprocess).
//! * **Gradients are sums.** Every backward returns `∂(Σ_batch loss)/∂·` and
//!   [`optim::Sgd::step`] divides by the example count, so gradient sums
//!   from several workers add up to exactly the large-batch gradient.
//! * **Training defaults.** The head starts at zero and by default trains on
//!   standardised features ([`standardize`]: per-feature mean and scale
//!   from the training data, so every example's squared norm is about 1
//!   whatever the features' scale) with SGD at [`optim::Sgd::default`] under a
//!   cosine schedule ([`optim::LrSchedule`]); a loss far above `ln classes` or
//!   a non-finite value is divergence ([`trainer::divergence`]).
//! * **Threads.** One level: rayon tasks across images, tiles or output
//!   features, with single-threaded GEMM inside. Run inside a
//!   [`parallel::thread_pool`] to choose the thread count. Results do not
//!   depend on the thread count.
//! * **Errors.** Bad input a caller controls gives a [`KernelError`] naming
//!   what was wrong; panics are reserved for internal invariants.
//! * **Correctness.** [`reference`](mod@reference) keeps a naive f64 implementation of every
//!   layer; the tests compare every fast path with it under the tolerances
//!   named in [`approx`], and check every backward by finite differences.
//!
//! ## Example
//! ```
//! use lml_kernel::{layers, geometry::Window2d};
//! use ndarray::{Array1, Array4};
//!
//! let x = Array4::<f32>::ones((1, 3, 8, 8));            // [N, C, H, W]
//! let w = Array4::<f32>::from_elem((4, 3, 3, 3), 0.1);   // [O, C, KH, KW]
//! let b = Array1::<f32>::zeros(4);
//! let y = layers::conv2d_forward(x.view(), w.view(), b.view(), &Window2d::VGG_CONV, true)?;
//! assert_eq!(y.shape(), &[1, 4, 8, 8]);
//! assert!((y[[0, 0, 4, 4]] - 2.7).abs() < 1e-5);         // 27 taps × 0.1 inside
//! let p = layers::maxpool2d_forward(y.view(), &Window2d::VGG_POOL)?;
//! assert_eq!(p.output.shape(), &[1, 4, 4, 4]);
//! # Ok::<(), lml_kernel::KernelError>(())
//! ```

pub mod approx;
pub mod classifier;
pub mod dataset;
pub mod error;
pub mod features;
pub mod gemm;
pub mod geometry;
pub mod layers;
pub mod npy;
pub mod optim;
pub mod parallel;
pub mod preprocess;
pub mod reference;
pub mod standardize;
pub mod trainer;
pub mod vgg;
pub mod weights;

pub use error::{KernelError, Result};
pub use preprocess::{preprocess, Preset};
pub use vgg::{Cut, Vgg19};
