//! CIFAR-10: reading the official archives — the binary version and the
//! python version (pickled batches, see [`crate::pickle`]) — or their
//! extracted folders into memory-mappable `.npy` files, and writing
//! format-exact archives of both kinds for tests and demos.
//!
//! # The format (`cifar-10-binary.tar.gz`)
//! Members `cifar-10-batches-bin/data_batch_{1..5}.bin`, `test_batch.bin`
//! and `batches.meta.txt` (class names, one per line). Each `.bin` is a
//! sequence of 3,073-byte records: one label byte (`0..10`), then the
//! 32×32 image as three planes, R, G, B, each row-major. The official files
//! hold 10,000 records each.
//!
//! # The output
//! `train_x.npy` (`u8`, `[N, 32, 32, 3]`, RGB, HWC), `train_y.npy` (`u8`,
//! `[N]`), `test_x.npy`, `test_y.npy` and `classes.txt`, each published by
//! temp-write, fsync and rename: a failed run leaves no partial output.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use lml_kernel::npy::{publish_atomic, write_npy_header};

/// Bytes of one record: label + 3 planes of 32×32.
pub const RECORD: usize = 1 + 3 * 32 * 32;
/// Records per file in the official archive.
pub const OFFICIAL_RECORDS_PER_BATCH: usize = 10_000;
/// The training members, in order.
pub const TRAIN_MEMBERS: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
/// The test member.
pub const TEST_MEMBER: &str = "test_batch.bin";
/// The class-name member (binary version).
pub const META_MEMBER: &str = "batches.meta.txt";
/// The class-name member (python version, a pickle with `label_names`).
pub const PYTHON_META: &str = "batches.meta";
/// The folder inside the binary archive.
pub const ARCHIVE_DIR: &str = "cifar-10-batches-bin";
/// The folder inside the python archive (`cifar-10-python.tar.gz`), whose
/// members are pickles: `data_batch_{1..5}`, `test_batch`, `batches.meta`.
pub const PYTHON_DIR: &str = "cifar-10-batches-py";
/// Number of classes.
pub const CLASSES: u8 = 10;
/// The most bytes a python batch may take per record: 3,072 pixels, the
/// label, the file name and their opcodes (the official batches take
/// about 3,104). Bounds what is read into memory for one member.
pub const PYTHON_BYTES_PER_RECORD: u64 = 4096;
/// Bytes a python batch may hold besides its records, and the most a meta
/// member (`batches.meta`, `batches.meta.txt`, ~160 bytes officially) may hold.
pub const MEMBER_OVERHEAD: u64 = 1 << 20;

/// What can go wrong reading CIFAR-10.
#[derive(Debug, thiserror::Error)]
pub enum CifarError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no member {member} (looked at the top, in {ARCHIVE_DIR}/ and in {PYTHON_DIR}/)", input.display())]
    Missing { input: PathBuf, member: String },
    #[error("{}: member {member} is {size} bytes, not a whole number of {RECORD}-byte records", input.display())]
    Size { input: PathBuf, member: String, size: u64 },
    #[error("{}: member {member} holds {records} records, expected {expected}", input.display())]
    Count { input: PathBuf, member: String, records: usize, expected: usize },
    #[error("{}: member {member} is truncated at byte offset {offset} (record {record}): {reason}", input.display())]
    Truncated { input: PathBuf, member: String, offset: u64, record: usize, reason: String },
    #[error("{}: member {member}, record {record} (byte offset {offset}): label {label} is not in 0..{CLASSES}", input.display())]
    Label { input: PathBuf, member: String, record: usize, offset: u64, label: u8 },
    #[error("{}: {reason}", input.display())]
    Meta { input: PathBuf, reason: String },
    #[error("{}: member {member}: not a CIFAR-10 python batch: {reason}", input.display())]
    Pickle { input: PathBuf, member: String, reason: String },
    #[error("{} already exists (use --force to replace it)", .0.display())]
    Exists(PathBuf),
    #[error("{}: member {member} is larger than the {limit} bytes a batch of its records can take", input.display())]
    TooLarge { input: PathBuf, member: String, limit: u64 },
    #[error("records_per_batch = {value}: {reason}")]
    RecordsPerBatch { value: usize, reason: String },
}

type Result<T> = std::result::Result<T, CifarError>;

/// Where the members come from: a `.tar.gz` archive or an extracted folder.
#[derive(Clone, Debug)]
pub enum Source {
    Archive(PathBuf),
    Folder(PathBuf),
}

impl Source {
    /// A folder if `path` is a directory, an archive otherwise.
    pub fn new(path: &Path) -> Self {
        if path.is_dir() {
            Source::Folder(path.to_path_buf())
        } else {
            Source::Archive(path.to_path_buf())
        }
    }

    fn path(&self) -> &Path {
        match self {
            Source::Archive(p) | Source::Folder(p) => p,
        }
    }

    /// Calls `f(reader, size)` on member `name` (at the top level or under
    /// `cifar-10-batches-bin/`). An archive is scanned from the start each
    /// time: one streaming pass per member, nothing held in memory.
    fn with_member<T>(&self, name: &str, f: impl FnOnce(&mut dyn Read, u64) -> Result<T>) -> Result<T> {
        let io = |source| CifarError::Io { path: self.path().to_path_buf(), source };
        let missing = || CifarError::Missing { input: self.path().to_path_buf(), member: name.to_string() };
        match self {
            Source::Folder(dir) => {
                let path = [dir.join(name), dir.join(ARCHIVE_DIR).join(name), dir.join(PYTHON_DIR).join(name)]
                    .into_iter()
                    .find(|p| p.is_file())
                    .ok_or_else(missing)?;
                let mut file = File::open(&path).map_err(|e| CifarError::Io { path: path.clone(), source: e })?;
                let size = file.metadata().map_err(|e| CifarError::Io { path: path.clone(), source: e })?.len();
                f(&mut std::io::BufReader::new(&mut file), size)
            }
            Source::Archive(path) => {
                let file = File::open(path).map_err(io)?;
                let archive = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
                member_in_tar(path, archive, name, f)
            }
        }
    }
}

/// Calls `f(reader, size)` on the first member of the tar stream `archive`
/// (named `path` in errors) called `name`, at the top or under one of the
/// two archive folders.
pub(crate) fn member_in_tar<R: Read, T>(
    path: &Path,
    mut archive: tar::Archive<R>,
    name: &str,
    f: impl FnOnce(&mut dyn Read, u64) -> Result<T>,
) -> Result<T> {
    let io = |source| CifarError::Io { path: path.to_path_buf(), source };
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let entry_path = entry.path().map_err(io)?.to_string_lossy().into_owned();
        let entry_path = entry_path.trim_start_matches("./");
        if entry_path == name
            || entry_path == format!("{ARCHIVE_DIR}/{name}")
            || entry_path == format!("{PYTHON_DIR}/{name}")
        {
            let size = entry.header().size().map_err(io)?;
            return f(&mut entry, size);
        }
    }
    Err(CifarError::Missing { input: path.to_path_buf(), member: name.to_string() })
}

/// Which CIFAR-10 distribution the input is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `cifar-10-binary.tar.gz`: `.bin` record files.
    Binary,
    /// `cifar-10-python.tar.gz`: pickled batch dicts.
    Python,
}

impl Format {
    fn member(self, binary_name: &str) -> String {
        match self {
            Format::Binary => binary_name.to_string(),
            Format::Python => binary_name.trim_end_matches(".bin").to_string(),
        }
    }
}

/// Reads a whole member (one python batch is ~31 MB) of at most `limit`
/// bytes, naming where it ended early. `size` is what the archive claims,
/// so it only sizes the buffer up to `limit`.
pub(crate) fn read_member(
    source: &Source,
    member: &str,
    reader: &mut dyn Read,
    size: u64,
    limit: u64,
) -> Result<Vec<u8>> {
    let too_large = || CifarError::TooLarge { input: source.path().to_path_buf(), member: member.into(), limit };
    if size > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).map_err(|_| too_large())?);
    reader.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| CifarError::Truncated {
        input: source.path().to_path_buf(),
        member: member.into(),
        offset: bytes.len() as u64,
        record: 0,
        reason: e.to_string(),
    })?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    if (bytes.len() as u64) < size {
        return Err(CifarError::Truncated {
            input: source.path().to_path_buf(),
            member: member.into(),
            offset: bytes.len() as u64,
            record: 0,
            reason: format!("member ends after {} of {size} bytes", bytes.len()),
        });
    }
    Ok(bytes)
}

/// Converts one pickled python batch: checks it holds `expected` images of
/// 3,072 `u8` and as many labels, then writes them like binary records.
#[allow(clippy::too_many_arguments)]
pub(crate) fn convert_python_member(
    source: &Source,
    member: &str,
    reader: &mut dyn Read,
    size: u64,
    expected: usize,
    images: &mut dyn Write,
    labels: &mut Vec<u8>,
    progress: &mut dyn FnMut(usize),
) -> Result<()> {
    let bad = |reason: String| CifarError::Pickle { input: source.path().to_path_buf(), member: member.into(), reason };
    let limit = python_member_limit(expected)?;
    let bytes = read_member(source, member, reader, size, limit)?;
    let batch = crate::pickle::parse(&bytes).map_err(bad)?;
    let Some(crate::pickle::Value::Array(data)) = batch.get("data") else {
        return Err(bad("no 'data' array".into()));
    };
    let data = data.borrow();
    if !matches!(data.descr.as_str(), "u1" | "|u1") || data.shape.len() != 2 || data.shape[1] != 3072 {
        return Err(bad(format!("'data' is {} {:?}, expected uint8 [N, 3072]", data.descr, data.shape)));
    }
    let n = data.shape[0];
    if n.checked_mul(3072) != Some(data.data.len()) {
        return Err(bad(format!("'data' holds {} bytes for shape {:?}", data.data.len(), data.shape)));
    }
    let Some(crate::pickle::Value::List(list)) = batch.get("labels") else {
        return Err(bad("no 'labels' list".into()));
    };
    let list = list.borrow();
    if list.len() != n {
        return Err(bad(format!("{} labels for {n} images", list.len())));
    }
    if n != expected {
        return Err(CifarError::Count {
            input: source.path().to_path_buf(),
            member: member.into(),
            records: n,
            expected,
        });
    }
    for (r, (label, planar)) in list.iter().zip(data.data.chunks_exact(3072)).enumerate() {
        let label = match label {
            crate::pickle::Value::Int(v) => u8::try_from(*v).unwrap_or(u8::MAX),
            _ => return Err(bad(format!("label {r} is not an integer"))),
        };
        put_record(source, member, (r, (r * 3072) as u64), label, planar, images, labels)?;
    }
    progress(n);
    Ok(())
}

/// The class names and the format, from whichever meta member exists.
pub(crate) fn read_meta(source: &Source, input: &Path) -> Result<(Format, Vec<String>)> {
    let meta = |reason: String| CifarError::Meta { input: input.to_path_buf(), reason };
    match source.with_member(META_MEMBER, |r, _| read_meta_text(r).map_err(meta)) {
        Ok(names) => Ok((Format::Binary, names)),
        Err(CifarError::Missing { .. }) => {
            let names = source.with_member(PYTHON_META, |r, size| {
                let bytes = read_member(source, PYTHON_META, r, size, MEMBER_OVERHEAD)?;
                parse_meta_pickle(&bytes).map_err(meta)
            });
            match names {
                Err(CifarError::Missing { .. }) => Err(meta(format!(
                    "neither {META_MEMBER} (binary version) nor {PYTHON_META} (python version) found: not a CIFAR-10 archive"
                ))),
                other => Ok((Format::Python, other?)),
            }
        }
        Err(e) => Err(e),
    }
}

/// Checks a records-per-batch count (`--records-per-batch`): at least 1, and
/// small enough that every size derived from it — six members of records
/// of up to [`PYTHON_BYTES_PER_RECORD`] bytes — is representable. A count
/// the archive does not hold is found member by member
/// ([`CifarError::Count`]); nothing is allocated by the count alone.
///
/// # Errors
/// [`CifarError::RecordsPerBatch`] naming the value.
pub fn check_records_per_batch(n: usize) -> Result<usize> {
    let bad = |reason: String| CifarError::RecordsPerBatch { value: n, reason };
    if n == 0 {
        return Err(bad("must be at least 1".into()));
    }
    let members = TRAIN_MEMBERS.len() as u64 + 1;
    let bytes = (n as u64)
        .checked_mul(members)
        .and_then(|r| r.checked_mul(PYTHON_BYTES_PER_RECORD))
        .and_then(|b| b.checked_add(MEMBER_OVERHEAD))
        .filter(|&b| usize::try_from(b).is_ok());
    if bytes.is_none() {
        return Err(bad(format!(
            "too large: {members} batches of that many records of up to {PYTHON_BYTES_PER_RECORD} bytes overflow"
        )));
    }
    Ok(n)
}

/// The most bytes a python batch of `records` records may take.
fn python_member_limit(records: usize) -> Result<u64> {
    (records as u64)
        .checked_mul(PYTHON_BYTES_PER_RECORD)
        .and_then(|b| b.checked_add(MEMBER_OVERHEAD))
        .ok_or_else(|| CifarError::RecordsPerBatch { value: records, reason: "too large".into() })
}

/// The class names of `batches.meta.txt`: one per non-blank line.
pub(crate) fn read_meta_text(r: &mut dyn Read) -> std::result::Result<Vec<String>, String> {
    let mut text = String::new();
    r.take(MEMBER_OVERHEAD + 1).read_to_string(&mut text).map_err(|e| format!("{META_MEMBER}: {e}"))?;
    if text.len() as u64 > MEMBER_OVERHEAD {
        return Err(format!("{META_MEMBER} is larger than {MEMBER_OVERHEAD} bytes"));
    }
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

/// The class names of `batches.meta`: its `label_names` list of strings.
pub(crate) fn parse_meta_pickle(bytes: &[u8]) -> std::result::Result<Vec<String>, String> {
    let value = crate::pickle::parse(bytes).map_err(|e| format!("{PYTHON_META}: {e}"))?;
    match value.get("label_names") {
        Some(crate::pickle::Value::List(l)) => Ok(l
            .borrow()
            .iter()
            .filter_map(|v| v.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()))
            .collect()),
        _ => Err(format!("{PYTHON_META}: no label_names list")),
    }
}

/// Number of records in a member of `size` bytes.
pub(crate) fn records_in(source: &Source, member: &str, size: u64) -> Result<usize> {
    let bad = || CifarError::Size { input: source.path().to_path_buf(), member: member.into(), size };
    if !size.is_multiple_of(RECORD as u64) {
        return Err(bad());
    }
    usize::try_from(size / RECORD as u64).map_err(|_| bad())
}

/// Checks one record's label and writes its planar image as HWC.
fn put_record(
    source: &Source,
    member: &str,
    (record, offset): (usize, u64),
    label: u8,
    planar: &[u8],
    images: &mut dyn Write,
    labels: &mut Vec<u8>,
) -> Result<()> {
    if label >= CLASSES {
        return Err(CifarError::Label {
            input: source.path().to_path_buf(),
            member: member.into(),
            record,
            offset,
            label,
        });
    }
    labels.push(label);
    let mut hwc = [0u8; RECORD - 1];
    for p in 0..1024 {
        for c in 0..3 {
            hwc[p * 3 + c] = planar[c * 1024 + p];
        }
    }
    images.write_all(&hwc).map_err(|e| CifarError::Io { path: PathBuf::from("<output>"), source: e })
}

/// Streams one member's records: images (converted to HWC) to `images`,
/// labels appended to `labels`. Calls `progress(records)` now and then.
pub(crate) fn convert_member(
    source: &Source,
    member: &str,
    reader: &mut dyn Read,
    records: usize,
    images: &mut dyn Write,
    labels: &mut Vec<u8>,
    progress: &mut dyn FnMut(usize),
) -> Result<()> {
    let mut rec = [0u8; RECORD];
    for r in 0..records {
        let offset = r as u64 * RECORD as u64;
        if let Err(e) = reader.read_exact(&mut rec) {
            return Err(CifarError::Truncated {
                input: source.path().to_path_buf(),
                member: member.into(),
                offset,
                record: r,
                reason: e.to_string(),
            });
        }
        put_record(source, member, (r, offset), rec[0], &rec[1..], images, labels)?;
        if r % 1000 == 999 {
            progress(1000);
        }
    }
    progress(records % 1000);
    Ok(())
}

/// What [`prepare`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub train: usize,
    pub test: usize,
    pub classes: Vec<String>,
}

/// Converts the binary CIFAR-10 at `input` into `.npy` files under `out`.
///
/// `records_per_batch` is the count each `.bin` must hold (10,000 for the
/// official archive). Existing outputs are refused unless `force`.
/// `progress(records)` is called as records are converted (out of
/// `6 · records_per_batch`).
///
/// # Errors
/// A [`CifarError`] naming the archive, the member and the byte offset for a
/// missing, truncated, mis-sized, oversized or mislabelled member or a bad
/// pickle, and [`CifarError::RecordsPerBatch`] for a count
/// [`check_records_per_batch`] refuses. On any error nothing is published and
/// nothing is left behind: no staging folder, and no `out` folder if this
/// call created it.
pub fn prepare(
    input: &Path,
    out: &Path,
    records_per_batch: usize,
    force: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<Prepared> {
    check_records_per_batch(records_per_batch)?;
    let source = Source::new(input);
    let outputs = ["train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy", "classes.txt"].map(|f| out.join(f));
    if !force {
        if let Some(existing) = outputs.iter().find(|p| p.exists()) {
            return Err(CifarError::Exists(existing.clone()));
        }
    }

    // Class names first: cheap, and tells which distribution this is.
    let (format, classes) = read_meta(&source, input)?;
    if classes.len() != CLASSES as usize {
        return Err(CifarError::Meta {
            input: input.to_path_buf(),
            reason: format!("the class list names {} classes, expected {CLASSES}", classes.len()),
        });
    }

    // Everything is written into a staging folder and moved into place only
    // when all of it is complete, so a failure publishes nothing at all; the
    // guard removes the staging folder, and on failure the folders this call
    // created, however it returns (an unwinding panic included).
    let mut cleanup = Cleanup { stage: None, created: missing_dirs(out), succeeded: false };
    std::fs::create_dir_all(out).map_err(|e| CifarError::Io { path: out.to_path_buf(), source: e })?;
    let stage = out.join(format!(".prepare-cifar10-{}", std::process::id()));
    cleanup.stage = Some(stage.clone());
    std::fs::create_dir_all(&stage).map_err(|e| CifarError::Io { path: stage.clone(), source: e })?;
    let (train, test) = write_all(&source, format, input, &stage, records_per_batch, &classes, progress)?;
    for path in &outputs {
        let from = stage.join(path.file_name().expect("output names are files"));
        std::fs::rename(&from, path).map_err(|e| CifarError::Io { path: path.clone(), source: e })?;
    }
    cleanup.succeeded = true;
    Ok(Prepared { train, test, classes })
}

/// `dir` and those of its ancestors that do not exist yet, deepest first.
fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    dir.ancestors().filter(|d| !d.as_os_str().is_empty()).take_while(|d| !d.exists()).map(Path::to_path_buf).collect()
}

/// Removes [`prepare`]'s staging folder, and after a failure the (empty)
/// folders it created, when dropped.
struct Cleanup {
    stage: Option<PathBuf>,
    created: Vec<PathBuf>,
    succeeded: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(stage) = &self.stage {
            let _ = std::fs::remove_dir_all(stage);
        }
        if !self.succeeded {
            // remove_dir only removes empty folders: anything else put there stays.
            for dir in &self.created {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// Writes the five outputs into `out`; returns the train and test counts.
#[allow(clippy::too_many_arguments)]
fn write_all(
    source: &Source,
    format: Format,
    input: &Path,
    out: &Path,
    records_per_batch: usize,
    classes: &[String],
    progress: &mut dyn FnMut(usize),
) -> Result<(usize, usize)> {
    let mut counts = Vec::new();
    for (split, members) in [("train", &TRAIN_MEMBERS[..]), ("test", &[TEST_MEMBER][..])] {
        let n = members.len().checked_mul(records_per_batch).ok_or_else(|| CifarError::RecordsPerBatch {
            value: records_per_batch,
            reason: format!("{} members of that many records overflow", members.len()),
        })?;
        // Grows as records are read: the count is a flag, not data.
        let mut labels = Vec::new();
        let x_path = out.join(format!("{split}_x.npy"));
        let mut failure: Option<CifarError> = None;
        let published = publish_atomic(&x_path, |w: &mut BufWriter<&File>| {
            write_npy_header(w, "|u1", &[n, 32, 32, 3])?;
            for member in members {
                let member = &format.member(member);
                let result = source.with_member(member, |reader, size| {
                    if format == Format::Python {
                        return convert_python_member(
                            source,
                            member,
                            reader,
                            size,
                            records_per_batch,
                            w,
                            &mut labels,
                            progress,
                        );
                    }
                    let records = records_in(source, member, size)?;
                    if records != records_per_batch {
                        return Err(CifarError::Count {
                            input: input.to_path_buf(),
                            member: member.to_string(),
                            records,
                            expected: records_per_batch,
                        });
                    }
                    convert_member(source, member, reader, records, w, &mut labels, progress)
                });
                if let Err(e) = result {
                    failure = Some(e);
                    return Err(std::io::Error::other("conversion failed"));
                }
            }
            Ok(())
        });
        if let Some(e) = failure {
            return Err(e);
        }
        published.map_err(|e| CifarError::Io { path: x_path.clone(), source: std::io::Error::other(e.to_string()) })?;
        let y_path = out.join(format!("{split}_y.npy"));
        lml_kernel::npy::write_npy_atomic(&y_path, &ndarray::Array1::from_vec(labels))
            .map_err(|e| CifarError::Io { path: y_path, source: std::io::Error::other(e.to_string()) })?;
        counts.push(n);
    }
    let names = classes.join("\n") + "\n";
    let c_path = out.join("classes.txt");
    publish_atomic(&c_path, |w| w.write_all(names.as_bytes()))
        .map_err(|e| CifarError::Io { path: c_path, source: std::io::Error::other(e.to_string()) })?;
    Ok((counts[0], counts[1]))
}

/// The official class names, in label order.
pub const CLASS_NAMES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Writes a format-exact `cifar-10-binary.tar.gz` with `per_batch` records in
/// each of the six `.bin` members (generated images with learnable classes,
/// see [`crate::synth`]), plus `batches.meta.txt`.
///
/// # Errors
/// I/O errors writing `path` (published atomically).
pub fn write_binary_archive(path: &Path, per_batch: usize, seed: u64) -> std::io::Result<()> {
    let members = TRAIN_MEMBERS.iter().copied().chain([TEST_MEMBER]).enumerate();
    let batches = members.map(|(i, m)| (m.to_string(), binary_records(per_batch, seed + i as u64)));
    let meta = (META_MEMBER.to_string(), (CLASS_NAMES.join("\n") + "\n\n").into_bytes());
    write_tar_gz(path, ARCHIVE_DIR, std::iter::once(meta).chain(batches))
}

/// Writes `members` (name, bytes) under `dir/` into a `.tar.gz` at `path`,
/// built under a temporary name, fsynced and renamed into place.
fn write_tar_gz(path: &Path, dir: &str, members: impl Iterator<Item = (String, Vec<u8>)>) -> std::io::Result<()> {
    let tmp = path.with_extension("partial");
    let result = (|| {
        let file = File::create(&tmp)?;
        let gz = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, bytes) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, format!("{dir}/{name}"), &bytes[..])?;
        }
        let file = tar.into_inner()?.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes a format-exact `cifar-10-python.tar.gz`: the same generated images as
/// [`write_binary_archive`] with the same seed, as Python 2 protocol-2 pickles
/// (`cifar-10-batches-py/data_batch_{1..5}`, `test_batch`, `batches.meta`).
///
/// # Errors
/// I/O errors writing `path`.
pub fn write_python_archive(path: &Path, per_batch: usize, seed: u64) -> std::io::Result<()> {
    let members = TRAIN_MEMBERS.iter().copied().chain([TEST_MEMBER]).enumerate();
    let batches = members.map(|(i, member)| {
        let records = binary_records(per_batch, seed + i as u64);
        let labels: Vec<u8> = records.chunks_exact(RECORD).map(|r| r[0]).collect();
        let data: Vec<u8> = records.chunks_exact(RECORD).flat_map(|r| r[1..].iter().copied()).collect();
        let names: Vec<String> = (0..per_batch).map(|j| format!("synthetic_{i}_{j}.png")).collect();
        let label = format!("{} batch {} of 5", if i < 5 { "training" } else { "testing" }, i + 1);
        (Format::Python.member(member), crate::pickle::write_batch(&label, &labels, &data, &names))
    });
    let meta = (PYTHON_META.to_string(), crate::pickle::write_meta(&CLASS_NAMES, per_batch));
    write_tar_gz(path, PYTHON_DIR, std::iter::once(meta).chain(batches))
}

/// `n` generated records in the binary format (label, R plane, G plane, B plane).
pub fn binary_records(n: usize, seed: u64) -> Vec<u8> {
    let (x, y) = crate::synth::images(n, CLASSES as usize, 32, seed);
    let mut out = Vec::with_capacity(n * RECORD);
    for i in 0..n {
        out.push(y[i]);
        for c in 0..3 {
            for row in 0..32 {
                for col in 0..32 {
                    out.push(x[[i, row, col, c]]);
                }
            }
        }
    }
    out
}
