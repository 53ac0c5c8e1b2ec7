//! CIFAR-10 binary ingestion: round trips through generated archives in the
//! exact official layout, and every kind of damage (clear error, nothing published).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use lml_kernel::dataset::ImageDataset;
use lml_tools::cifar::{self, CifarError, Prepared, ARCHIVE_DIR, RECORD, TEST_MEMBER, TRAIN_MEMBERS};

const PER_BATCH: usize = 12;

fn archive(dir: &Path) -> PathBuf {
    let p = dir.join("cifar-10-binary.tar.gz");
    cifar::write_binary_archive(&p, PER_BATCH, 5).unwrap();
    p
}

fn prepare(input: &Path, out: &Path) -> Result<Prepared, CifarError> {
    cifar::prepare(input, out, PER_BATCH, false, &mut |_| {})
}

/// Extracts the archive into `dir` (as a user who ran `tar xzf` would have).
fn extract(archive: &Path, dir: &Path) -> PathBuf {
    let gz = flate2::read::GzDecoder::new(fs::File::open(archive).unwrap());
    tar::Archive::new(gz).unpack(dir).unwrap();
    dir.to_path_buf()
}

fn outputs(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(out) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => vec![],
    };
    names.sort();
    names
}

#[test]
fn archive_round_trip_matches_the_records() {
    let tmp = tempfile::tempdir().unwrap();
    let arc = archive(tmp.path());
    let out = tmp.path().join("out");
    let prepared = prepare(&arc, &out).unwrap();
    assert_eq!((prepared.train, prepared.test), (5 * PER_BATCH, PER_BATCH));
    assert_eq!(prepared.classes[3], "cat");
    assert_eq!(outputs(&out), ["classes.txt", "test_x.npy", "test_y.npy", "train_x.npy", "train_y.npy"]);

    let train = ImageDataset::open(out.join("train_x.npy"), out.join("train_y.npy")).unwrap();
    assert_eq!(train.images().shape(), &[5 * PER_BATCH, 32, 32, 3]);
    // Record r of data_batch_b, decoded by hand from the planar layout.
    for (b, member_seed) in (0..5).zip(5u64..) {
        let records = cifar::binary_records(PER_BATCH, member_seed);
        for r in [0, PER_BATCH - 1] {
            let rec = &records[r * RECORD..(r + 1) * RECORD];
            let i = b * PER_BATCH + r;
            assert_eq!(train.labels()[i], rec[0] as u32);
            for (y, x, c) in [(0, 0, 0), (31, 31, 2), (7, 20, 1)] {
                assert_eq!(train.images()[[i, y, x, c]], rec[1 + c * 1024 + y * 32 + x], "image {i} ({y},{x},{c})");
            }
        }
    }
    let test = ImageDataset::open(out.join("test_x.npy"), out.join("test_y.npy")).unwrap();
    assert_eq!(test.len(), PER_BATCH);
    assert_eq!(fs::read_to_string(out.join("classes.txt")).unwrap().lines().count(), 10);
}

#[test]
fn extracted_folder_gives_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let arc = archive(tmp.path());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    prepare(&arc, &a).unwrap();
    let folder = extract(&arc, &tmp.path().join("x"));
    prepare(&folder, &b).unwrap();
    prepare(&folder.join(ARCHIVE_DIR), &tmp.path().join("c")).unwrap();
    for f in ["train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy", "classes.txt"] {
        assert_eq!(fs::read(a.join(f)).unwrap(), fs::read(b.join(f)).unwrap(), "{f}");
    }
}

#[test]
fn existing_outputs_are_kept_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let arc = archive(tmp.path());
    let out = tmp.path().join("out");
    prepare(&arc, &out).unwrap();
    assert!(matches!(prepare(&arc, &out), Err(CifarError::Exists(_))));
    cifar::prepare(&arc, &out, PER_BATCH, true, &mut |_| {}).unwrap();
}

/// Rewrites the archive with `edit` applied to the bytes of its tar stream.
fn damaged_archive(dir: &Path, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let arc = archive(dir);
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(fs::File::open(&arc).unwrap()).read_to_end(&mut raw).unwrap();
    edit(&mut raw);
    let p = dir.join("damaged.tar.gz");
    let mut gz = flate2::write::GzEncoder::new(fs::File::create(&p).unwrap(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    gz.finish().unwrap();
    p
}

/// Byte offset of member `name`'s data inside a tar stream.
fn member_data_offset(raw: &[u8], name: &str) -> usize {
    let mut ar = tar::Archive::new(raw);
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_string_lossy().ends_with(name) {
            return e.raw_file_position() as usize;
        }
    }
    panic!("{name} not found");
}

#[test]
fn truncated_archive_names_member_and_offset_and_publishes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cut_at = 5 * RECORD + 100; // inside record 5 of data_batch_3
    let arc = damaged_archive(tmp.path(), |raw| {
        let start = member_data_offset(raw, TRAIN_MEMBERS[2]);
        raw.truncate(start + cut_at);
    });
    let out = tmp.path().join("out");
    let err = prepare(&arc, &out).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CifarError::Truncated { record: 5, .. }), "{msg}");
    assert!(msg.contains("data_batch_3.bin") && msg.contains(&format!("offset {}", 5 * RECORD)), "{msg}");
    assert!(outputs(&out).is_empty(), "published {:?}", outputs(&out));
}

#[test]
fn corrupt_gzip_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let arc = archive(tmp.path());
    let mut bytes = fs::read(&arc).unwrap();
    let mid = bytes.len() / 2;
    bytes.truncate(mid);
    fs::write(&arc, &bytes).unwrap();
    let out = tmp.path().join("out");
    let err = prepare(&arc, &out).unwrap_err();
    assert!(err.to_string().contains("cifar-10-binary.tar.gz"), "{err}");
    assert!(outputs(&out).is_empty());
}

#[test]
fn bad_label_names_record_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = extract(&archive(tmp.path()), &tmp.path().join("x")).join(ARCHIVE_DIR);
    let test_bin = folder.join(TEST_MEMBER);
    let mut bytes = fs::read(&test_bin).unwrap();
    bytes[7 * RECORD] = 10;
    fs::write(&test_bin, &bytes).unwrap();
    let out = tmp.path().join("out");
    let err = prepare(&folder, &out).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("test_batch.bin") && msg.contains("record 7") && msg.contains(&format!("{}", 7 * RECORD)),
        "{msg}"
    );
    assert!(msg.contains("label 10"), "{msg}");
    // The training split was complete, but nothing is published.
    assert!(outputs(&out).is_empty(), "published {:?}", outputs(&out));
}

#[test]
fn wrong_sizes_and_counts_and_missing_members() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = extract(&archive(tmp.path()), &tmp.path().join("x")).join(ARCHIVE_DIR);
    let out = tmp.path().join("out");

    // The official count is checked by default.
    let err = cifar::prepare(&folder, &out, cifar::OFFICIAL_RECORDS_PER_BATCH, false, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("holds 12 records, expected 10000"), "{err}");

    let b2 = folder.join(TRAIN_MEMBERS[1]);
    let bytes = fs::read(&b2).unwrap();
    fs::write(&b2, &bytes[..bytes.len() - 1]).unwrap();
    let err = prepare(&folder, &out).unwrap_err();
    assert!(err.to_string().contains("data_batch_2.bin") && err.to_string().contains("not a whole number"), "{err}");

    fs::remove_file(&b2).unwrap();
    let err = prepare(&folder, &out).unwrap_err();
    assert!(matches!(err, CifarError::Missing { .. }) && err.to_string().contains("data_batch_2.bin"), "{err}");

    fs::write(folder.join(cifar::META_MEMBER), "cat\ndog\n").unwrap();
    let err = prepare(&folder, &out).unwrap_err();
    assert!(err.to_string().contains("names 2 classes"), "{err}");
    assert!(outputs(&out).is_empty());
}
