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

    /// `(H, W)` of every image.
    pub fn image_size(&self) -> (usize, usize) {
        let (_, h, w, _) = self.images().dim();
        (h, w)
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

/// Most classes a head may have: a label at or above it is an error, not an
/// allocation of a `[label + 1, D]` weight matrix.
pub const MAX_CLASSES: usize = 100_000;

/// The class list's file name, beside a split's label file (`prepare-cifar10`
/// writes it, `extract-features` carries it into the feature cache).
pub const CLASS_LIST: &str = "classes.txt";

/// Longest class name (bytes).
pub const MAX_CLASS_NAME: usize = 200;

/// Reads a class list: one name per line, class `i` on line `i + 1` (a final
/// newline is optional, `\r\n` is accepted). `Ok(None)` if `path` does not exist.
///
/// # Errors
/// [`KernelError::Io`] naming the file if it exists but cannot be read;
/// [`KernelError::Invalid`] naming the file and line if a name is empty,
/// longer than [`MAX_CLASS_NAME`] bytes or repeated, or the list is empty or
/// longer than [`MAX_CLASSES`].
pub fn read_class_list(path: &Path) -> Result<Option<Vec<String>>> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(KernelError::io(path, e)),
    };
    // Bounded read: a list of MAX_CLASSES names of MAX_CLASS_NAME bytes at most.
    let limit = (MAX_CLASSES * (MAX_CLASS_NAME + 2)) as u64;
    let mut text = String::new();
    file.take(limit + 1).read_to_string(&mut text).map_err(|e| KernelError::io(path, e))?;
    let what = |line: usize| format!("class list {} line {line}", path.display());
    if text.len() as u64 > limit {
        return Err(KernelError::invalid(format!("class list {}", path.display()), "larger than any class list"));
    }
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let mut names: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in body.split('\n').enumerate() {
        let name = line.strip_suffix('\r').unwrap_or(line).trim();
        if name.is_empty() {
            return Err(KernelError::invalid(what(i + 1), "empty class name"));
        }
        if name.len() > MAX_CLASS_NAME {
            return Err(KernelError::invalid(what(i + 1), format!("name longer than {MAX_CLASS_NAME} bytes")));
        }
        if !seen.insert(name.to_string()) {
            return Err(KernelError::invalid(what(i + 1), format!("class {name:?} is listed twice")));
        }
        names.push(name.to_string());
        if names.len() > MAX_CLASSES {
            return Err(KernelError::invalid(what(i + 1), format!("more than {MAX_CLASSES} classes")));
        }
    }
    Ok(Some(names))
}

/// Checks that every label in `labels` (read from `path`) is below `classes`.
/// `why` says where the bound comes from, for the message.
///
/// # Errors
/// [`KernelError::Invalid`] naming the file, the first bad position and its value.
pub fn check_labels(path: &Path, labels: &[u32], classes: usize, why: &str) -> Result<()> {
    match labels.iter().position(|&l| l as usize >= classes) {
        None => Ok(()),
        Some(i) => Err(KernelError::invalid(
            format!("labels {}", path.display()),
            format!("label {} at position {i} is outside 0..{classes} ({why})", labels[i]),
        )),
    }
}

/// The number of classes of a dataset from its label files: the length of
/// `names` (a class list) if given, else the largest label of all files + 1.
/// Every label is checked first, against the class list or [`MAX_CLASSES`],
/// so a corrupt label is an error naming its file and position, never a huge head.
///
/// # Errors
/// As [`check_labels`]; [`KernelError::Invalid`] if there is no label at all.
pub fn class_count(files: &[(&Path, &[u32])], names: Option<&[String]>) -> Result<usize> {
    for (path, labels) in files {
        match names {
            Some(n) => check_labels(path, labels, n.len(), &format!("the class list names {} classes", n.len()))?,
            None => check_labels(path, labels, MAX_CLASSES, &format!("at most {MAX_CLASSES} classes"))?,
        }
    }
    if let Some(n) = names {
        return Ok(n.len());
    }
    let max = files.iter().flat_map(|(_, l)| l.iter().copied()).max();
    match max {
        Some(m) => Ok(m as usize + 1),
        None => Err(KernelError::invalid("labels", "no label at all: cannot tell the number of classes")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_lists_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CLASS_LIST);
        assert_eq!(read_class_list(&p).unwrap(), None, "no list");
        std::fs::write(&p, "cat\r\ndog\nbird\n").unwrap();
        assert_eq!(read_class_list(&p).unwrap().unwrap(), ["cat", "dog", "bird"]);
        std::fs::write(&p, "cat\ndog").unwrap();
        assert_eq!(read_class_list(&p).unwrap().unwrap().len(), 2, "no final newline");
        for (text, needle) in [("cat\n\ndog\n", "line 2: empty"), ("cat\ncat\n", "line 2"), ("\n", "line 1")] {
            std::fs::write(&p, text).unwrap();
            let err = read_class_list(&p).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("classes.txt"), "{text:?}: {err}");
        }
    }

    #[test]
    fn class_counts_check_every_label_first() {
        let (a, b) = (Path::new("train_y.npy"), Path::new("test_y.npy"));
        // The held-out split has a class the training split lacks.
        assert_eq!(class_count(&[(a, &[0, 3, 7]), (b, &[8, 1])], None).unwrap(), 9);
        let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        assert_eq!(class_count(&[(a, &[0, 3]), (b, &[1])], Some(&names)).unwrap(), 10);
        let err = class_count(&[(a, &[0, 3]), (b, &[1, 10])], Some(&names)).unwrap_err().to_string();
        assert!(err.contains("test_y.npy") && err.contains("label 10 at position 1"), "{err}");
        // A label too large to be a class is an error, not a head of 4·10⁹ rows.
        let err = class_count(&[(a, &[0, 4_000_000_000])], None).unwrap_err().to_string();
        assert!(err.contains("train_y.npy") && err.contains("label 4000000000 at position 1"), "{err}");
        assert!(class_count(&[(a, &[])], None).is_err());
    }
}
