//! Layers, one file each, forward and backward side by side.
//!
//! Every forward states its shapes; every backward takes what the forward
//! saw (and, for max-pool, its argmax) and returns gradients of the *sum* of
//! the loss over the batch, so that gradients from several workers add up.

pub mod avgpool;
pub mod conv2d;
pub mod dense;
pub mod maxpool;
#[cfg(target_arch = "x86_64")]
mod maxpool_x86;
pub mod padded;
pub mod relu;
pub mod softmax;
pub mod winograd;
#[cfg(target_arch = "x86_64")]
mod winograd_x86;

pub use avgpool::{adaptive_avgpool2d_backward, adaptive_avgpool2d_forward, adaptive_pool_window};
pub use conv2d::{conv2d_backward, conv2d_forward, Conv2dGrads};
pub use dense::{dense_backward, dense_forward, dense_forward_on, DenseGrads};
pub use maxpool::{maxpool2d_backward, maxpool2d_forward, maxpool2d_values_into, MaxPoolOutput};
pub use padded::PaddedLayout;
pub use relu::{relu_backward, relu_inplace};
pub use softmax::{argmax, softmax, softmax_cross_entropy, SoftmaxCrossEntropy};
pub use winograd::{conv2d_winograd, WinogradFilters, WinogradTile};
