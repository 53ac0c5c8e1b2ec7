//! Memory-mapped `.npy` files and atomic `.npy` publication.
//!
//! A [`MappedNpy`] maps a whole file read-only and hands out `ndarray` views
//! straight into the mapping: nothing is copied, and pages are read from disk
//! (or EFS) only when touched. Files are published with [`write_npy_atomic`]
//! (temp file, fsync, rename), and a published file is never modified in
//! place, which is what makes the mapping sound (see the `SAFETY` note).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use ndarray::{ArrayBase, ArrayViewD, Data, Dimension};
use ndarray_npy::{ViewElement, ViewNpyExt, WritableElement, WriteNpyExt};

use crate::error::{KernelError, Result};

/// A read-only memory mapping of one `.npy` file.
///
/// Truncating or rewriting a mapped file in place is not supported: touching
/// a page past a new, shorter end raises `SIGBUS`, which kills the process
/// (no error can be returned), and a rewrite changes the bytes under a view.
/// So every writer publishes by rename ([`write_npy_atomic`]): the replaced
/// file stays mapped and valid until its mapping drops, and whoever opens the
/// path again gets the new file.
#[derive(Debug)]
pub struct MappedNpy {
    path: PathBuf,
    map: Mmap,
}

impl MappedNpy {
    /// Maps `path`.
    ///
    /// # Errors
    /// [`KernelError::Io`] if the file cannot be opened or mapped.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| KernelError::io(&path, e))?;
        // SAFETY: the mapping is read-only and lives as long as `self`. A
        // mapped file that another process truncates or rewrites in place
        // would make the views undefined; the whole system only ever
        // publishes new files by rename (`write_npy_atomic`) and never
        // modifies a published file, so a mapped file's bytes do not change.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| KernelError::io(&path, e))?;
        Ok(MappedNpy { path, map })
    }

    /// The mapped file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header: dtype descriptor, shape and where the data starts.
    ///
    /// # Errors
    /// As [`parse_header`].
    pub fn header(&self) -> Result<NpyHeader> {
        parse_header(&self.path, &self.map)
    }

    /// The mapped bytes from `offset` (a data offset from [`header`](Self::header)).
    pub(crate) fn data_bytes_unchecked(&self, offset: usize) -> &[u8] {
        &self.map[offset..]
    }

    /// The raw data bytes (after the header).
    ///
    /// # Errors
    /// As [`header`](Self::header).
    pub fn data_bytes(&self) -> Result<&[u8]> {
        Ok(&self.map[self.header()?.data_offset..])
    }

    /// A view of the array inside, of element type `A` and any dimension.
    ///
    /// # Errors
    /// [`KernelError::Npy`] naming the file if the header is malformed, the
    /// dtype is not `A`'s (little-endian), the data is truncated or has extra
    /// bytes, or the data is not aligned for `A`.
    pub fn view<A: ViewElement>(&self) -> Result<ArrayViewD<'_, A>> {
        view_bytes(&self.path, &self.map)
    }
}

/// Parses the header of the `.npy` file `bytes` (named `path` in errors) and
/// checks that the data after it is exactly `product(shape) · item size`
/// bytes. Sizes come from the file, so every one is checked: a shape whose
/// byte count overflows is an error, never a wrapped (small) size.
///
/// # Errors
/// [`KernelError::Npy`] naming the file, the header field and its value if
/// the magic, version, header length, `descr`, `fortran_order` or `shape` is
/// malformed or unsupported, or the data length disagrees with the header.
pub fn parse_header(path: &Path, b: &[u8]) -> Result<NpyHeader> {
    let bad = |reason: String| KernelError::Npy { path: path.to_path_buf(), expected_dtype: "any", reason };
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (bad magic)".into()));
    }
    let (len, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10usize),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    let text = start.checked_add(len).and_then(|end| b.get(start..end)).ok_or_else(|| {
        bad(format!("header length {len} runs past the end of the {}-byte file (truncated?)", b.len()))
    })?;
    let data_offset = start + text.len();
    let text = String::from_utf8_lossy(text);
    let field = |key: &str| -> Option<String> {
        let at = text.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest.to_string())
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\'').and_then(|r| r.split('\'').next()).map(String::from))
        .ok_or_else(|| bad("header has no descr".into()))?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(bad("Fortran-ordered arrays are not supported".into()));
    }
    let shape_text =
        field("shape").and_then(|r| r.strip_prefix('(').and_then(|r| r.split(')').next()).map(String::from));
    let shape: Vec<usize> = shape_text
        .ok_or_else(|| bad("header has no shape".into()))?
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().map_err(|_| bad(format!("field 'shape': bad entry {t:?}"))))
        .collect::<Result<_>>()?;
    let item = dtype_size(&descr).ok_or_else(|| bad(format!("field 'descr': unsupported dtype {descr:?}")))?;
    // ndarray's rule, so that every accepted shape can be viewed: the
    // product of the non-zero lengths, in bytes, fits in an isize.
    let nonzero = shape.iter().filter(|&&d| d != 0).try_fold(item, |acc: usize, &d| acc.checked_mul(d));
    let need = match nonzero.filter(|&n| isize::try_from(n).is_ok()) {
        Some(_) if shape.contains(&0) => 0,
        Some(n) => n,
        None => {
            return Err(bad(format!(
                "field 'shape': {shape:?} of {item}-byte {descr} is more than {} bytes",
                isize::MAX
            )))
        }
    };
    let have = b.len() - data_offset;
    if have != need {
        return Err(bad(format!("{have} data bytes, the header needs {need} for {descr} {shape:?} (truncated?)")));
    }
    Ok(NpyHeader { descr, shape, data_offset })
}

/// Bytes per element of the little-endian numeric dtypes [`parse_header`] accepts.
pub fn dtype_size(descr: &str) -> Option<usize> {
    match descr {
        "<f4" | "<i4" | "<u4" => Some(4),
        "<f2" | "<i2" | "<u2" => Some(2),
        "|u1" | "|i1" | "|b1" => Some(1),
        "<f8" | "<i8" | "<u8" => Some(8),
        _ => None,
    }
}

/// A view of the `.npy` file `bytes` (named `path` in errors) as elements of
/// type `A`: what [`MappedNpy::view`] does on its mapping.
///
/// # Errors
/// As [`MappedNpy::view`].
pub fn view_bytes<'a, A: ViewElement>(path: &Path, bytes: &'a [u8]) -> Result<ArrayViewD<'a, A>> {
    ArrayViewD::<A>::view_npy(bytes).map_err(|e| KernelError::Npy {
        path: path.to_path_buf(),
        expected_dtype: std::any::type_name::<A>(),
        reason: e.to_string(),
    })
}

/// A `.npy` header: what [`MappedNpy::header`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    /// NumPy dtype descriptor, e.g. `<f4`, `<f2`, `|u1`.
    pub descr: String,
    /// C-order shape.
    pub shape: Vec<usize>,
    /// Byte offset of the data.
    pub data_offset: usize,
}

/// Writes `array` to `path` as `.npy`, atomically: the bytes go to a temp
/// file in the same directory, which is fsynced and then renamed over `path`.
/// A reader never sees a partial file, and a crash leaves either the old file
/// or the new one.
///
/// # Errors
/// [`KernelError::Io`] naming the file on any I/O failure (the temp file is removed).
pub fn write_npy_atomic<A, S, D>(path: impl AsRef<Path>, array: &ArrayBase<S, D>) -> Result<()>
where
    A: WritableElement,
    S: Data<Elem = A>,
    D: Dimension,
{
    let path = path.as_ref();
    publish_atomic(path, |w| array.write_npy(w).map_err(|e| std::io::Error::other(format!("writing .npy: {e}"))))
}

/// Publishes a file by temp-write, fsync and rename; `fill` writes the bytes.
///
/// # Errors
/// [`KernelError::Io`] naming `path` on any I/O failure (the temp file is removed).
pub fn publish_atomic(path: &Path, fill: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), unique()));
    let result = (|| {
        let file = File::create(&tmp)?;
        {
            let mut w = BufWriter::new(&file);
            fill(&mut w)?;
            w.flush()?;
        }
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        KernelError::io(path, e)
    })
}

/// Writes a `.npy` (format 1.0) header for a C-order array of `descr`
/// (e.g. `"|u1"`, `"<f4"`) and `shape`, padded so the data that follows is
/// 64-byte aligned; the caller then writes exactly `product(shape)` elements.
/// This lets large arrays be streamed to disk without existing in memory.
///
/// # Errors
/// Any I/O error from `w`.
pub fn write_npy_header(w: &mut impl std::io::Write, descr: &str, shape: &[usize]) -> std::io::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    // magic (6) + version (2) + header length (2) + dict + '\n' ≡ 0 (mod 64)
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let len = u16::try_from(dict.len()).map_err(|_| std::io::Error::other("npy header too long"))?;
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(dict.as_bytes())
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
