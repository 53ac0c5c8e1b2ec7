//! Memory-mapped image datasets: `uint8` images and integer labels.

use std::path::Path;

use ndarray::{Array4, ArrayView4, Axis, Ix4};

use crate::error::{KernelError, Result};
use crate::npy::MappedNpy;

/// Images `[N, H, W, 3]` (`u8`, RGB) mapped from one `.npy`, with labels.
///
/// The images stay on disk (or EFS) and are paged in as batches touch them;
/// labels are small and are read into memory as `u32`.
#[derive(Debug)]
pub struct ImageDataset {
    images: MappedNpy,
    labels: Vec<u32>,
}

impl ImageDataset {
    /// Opens `images` (`.npy`, `u8`, `[N, H, W, 3]`) and `labels` (`.npy`, one
    /// of `u8`, `u16`, `u32`, `i32`, `i64`, shape `[N]`).
    ///
    /// # Errors
    /// [`KernelError::Io`] / [`KernelError::Npy`] naming the file if either
    /// cannot be mapped or parsed; [`KernelError::Shape`] if the images are
    /// not `[N, H, W, 3]` or the label count differs from `N`;
    /// [`KernelError::Invalid`] if a label is negative or too large.
    pub fn open(images: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<Self> {
        let images = MappedNpy::open(images)?;
        let shape = images.view::<u8>()?.shape().to_vec();
        if shape.len() != 4 || shape[3] != 3 {
            return Err(KernelError::shape(format!("images {}", images.path().display()), "[N, H, W, 3]", &shape));
        }
        let labels = read_labels(labels.as_ref())?;
        if labels.len() != shape[0] {
            return Err(KernelError::shape(
                "labels",
                format!("[{}] (one per image in {})", shape[0], images.path().display()),
                &[labels.len()],
            ));
        }
        Ok(ImageDataset { images, labels })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// All images, `[N, H, W, 3]`, a view into the mapping.
    pub fn images(&self) -> ArrayView4<'_, u8> {
        self.images
            .view::<u8>()
            .and_then(|v| v.into_dimensionality::<Ix4>().map_err(|e| KernelError::invalid("images", e.to_string())))
            .expect("validated at open")
    }

    /// All labels.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Copies the images and labels at `indices` into a batch.
    ///
    /// # Errors
    /// [`KernelError::Invalid`] if an index is out of range.
    pub fn gather(&self, indices: &[usize]) -> Result<(Array4<u8>, Vec<u32>)> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(KernelError::invalid("dataset index", format!("{bad} >= {} images", self.len())));
        }
        let all = self.images();
        let batch = all.select(Axis(0), indices);
        Ok((batch, indices.iter().map(|&i| self.labels[i]).collect()))
    }
}

/// Reads a 1-D label array of any common integer dtype as `u32`.
pub fn read_labels(path: &Path) -> Result<Vec<u32>> {
    let m = MappedNpy::open(path)?;
    let bad_value =
        |v: i128| KernelError::invalid(format!("label in {}", path.display()), format!("{v} is not a class index"));
    let to_vec = |shape: &[usize]| -> Result<()> {
        if shape.len() != 1 {
            return Err(KernelError::shape(format!("labels {}", path.display()), "[N]", shape));
        }
        Ok(())
    };
    macro_rules! try_dtype {
        ($t:ty) => {
            if let Ok(v) = m.view::<$t>() {
                to_vec(v.shape())?;
                return v.iter().map(|&x| u32::try_from(x).map_err(|_| bad_value(x as i128))).collect();
            }
        };
    }
    try_dtype!(u8);
    try_dtype!(u16);
    try_dtype!(u32);
    try_dtype!(i32);
    try_dtype!(i64);
    Err(KernelError::Npy {
        path: path.to_path_buf(),
        expected_dtype: "integer labels (u8, u16, u32, i32 or i64)",
        reason: m.view::<u8>().err().map(|e| e.to_string()).unwrap_or_default(),
    })
}
