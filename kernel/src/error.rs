//! The kernel's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the kernel on input a caller controls.
///
/// Each variant names what was wrong (the file, the tensor, the expected and
/// the actual value) so that a message is actionable without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// An array argument had the wrong shape.
    #[error("{what}: expected shape {expected}, got {actual:?}")]
    Shape { what: String, expected: String, actual: Vec<usize> },

    /// A scalar argument was out of its valid range.
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A `.npy` file was malformed, truncated, misaligned or of the wrong dtype.
    #[error("{}: not a readable .npy of {expected_dtype}: {reason}", path.display())]
    Npy { path: PathBuf, expected_dtype: &'static str, reason: String },

    /// A tensor in a weight directory had the wrong shape.
    #[error("{}: tensor {name} has shape {actual:?}, expected {expected:?}", path.display())]
    TensorShape { path: PathBuf, name: String, expected: Vec<usize>, actual: Vec<usize> },

    /// A tensor the model needs is not in the weight directory.
    #[error("{}: missing tensor {name} (expected file {file})", dir.display())]
    MissingTensor { dir: PathBuf, name: String, file: String },

    /// A weight directory holds a file or manifest entry the model does not know.
    #[error("{}: unexpected {what} {name:?}: {hint}", dir.display())]
    UnexpectedTensor { dir: PathBuf, what: &'static str, name: String, hint: String },

    /// A manifest file could not be parsed or contradicts the files.
    #[error("{}: bad manifest: {reason}", path.display())]
    Manifest { path: PathBuf, reason: String },

    /// A label was outside `0..classes`.
    #[error("label {label} at position {index} is outside 0..{classes}")]
    Label { index: usize, label: u32, classes: usize },

    /// A feature cache file (a shard, the merged features, the class list
    /// beside them) is not what the request expects.
    #[error("{}: {reason}", path.display())]
    Cache { path: PathBuf, reason: String },

    /// A thread pool could not be built.
    #[error("cannot build a thread pool of {threads} threads: {reason}")]
    ThreadPool { threads: usize, reason: String },
}

/// Shorthand for results with [`KernelError`].
pub type Result<T, E = KernelError> = std::result::Result<T, E>;

impl KernelError {
    pub(crate) fn shape(what: impl Into<String>, expected: impl Into<String>, actual: &[usize]) -> Self {
        KernelError::Shape { what: what.into(), expected: expected.into(), actual: actual.to_vec() }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        KernelError::Invalid { what: what.into(), reason: reason.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        KernelError::Io { path: path.into(), source }
    }
}
