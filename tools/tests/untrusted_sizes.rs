//! The exact cases of issue 10 where a size from a file, a flag or a pickle
//! overflowed, wrapped or allocated without bound: each is now an error that
//! names the field and the value, and leaves nothing behind.

use std::fs;
use std::path::Path;
use std::process::Command;

use lml_kernel::npy::{self, write_npy_header};
use lml_kernel::trainer::CachedFeatures;
use lml_tools::cifar::{self, CifarError};
use lml_tools::pickle::{self, Value};

fn lml() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lml"))
}

/// `<f2` shape (2, 2⁶²+4): 2 · (2⁶²+4) · 2 bytes wraps to 16, so 16 data
/// bytes used to pass the size check and the first row read then panicked.
#[test]
fn an_npy_shape_whose_byte_count_overflows_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("features.npy");
    let mut f = Vec::new();
    write_npy_header(&mut f, "<f2", &[2, (1 << 62) + 4]).unwrap();
    f.extend([0u8; 16]);
    fs::write(&path, &f).unwrap();
    let err = npy::parse_header(&path, &f).unwrap_err().to_string();
    assert!(err.contains("features.npy") && err.contains("'shape'") && err.contains("4611686018427387908"), "{err}");
    npy::write_npy_atomic(tmp.path().join("y.npy"), &ndarray::Array1::<u8>::zeros(2)).unwrap();
    let err = CachedFeatures::open(&path, tmp.path().join("y.npy")).unwrap_err().to_string();
    assert!(err.contains("'shape'"), "{err}");
    // The same for every item size, and for a shape that overflows before the item size.
    for (descr, shape) in [("|u1", vec![1usize << 63, 2]), ("<f4", vec![1 << 62, 1]), ("<f8", vec![3, 1 << 62])] {
        let mut f = Vec::new();
        write_npy_header(&mut f, descr, &shape).unwrap();
        let err = npy::parse_header(Path::new("x.npy"), &f).unwrap_err().to_string();
        assert!(err.contains("'shape'"), "{descr} {shape:?}: {err}");
    }
}

/// A shape with a zero length holds no data, but its other lengths must
/// still be addressable (ndarray's rule), in either order.
#[test]
fn npy_shapes_with_a_zero_length() {
    for (shape, ok) in
        [(vec![3, 0], true), (vec![0, 1 << 40], true), (vec![usize::MAX, 0], false), (vec![0, 1 << 62], false)]
    {
        let mut f = Vec::new();
        write_npy_header(&mut f, "<f4", &shape).unwrap();
        let parsed = npy::parse_header(Path::new("x.npy"), &f);
        assert_eq!(parsed.is_ok(), ok, "{shape:?}: {parsed:?}");
        if ok {
            assert_eq!(parsed.unwrap().shape, shape);
            assert_eq!(npy::view_bytes::<f32>(Path::new("x.npy"), &f).unwrap().shape(), shape.as_slice());
        }
    }
}

/// Writes a safetensors file with `header` and `data`.
fn safetensors(path: &Path, header: &str, data: &[u8]) {
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend(header.as_bytes());
    f.extend(data);
    fs::write(path, f).unwrap();
}

/// `data_offsets` chosen so that `header end + begin` wraps to 0: the tensor
/// used to be read from the start of the file, header included.
#[test]
fn wrapped_safetensors_offsets_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("w.safetensors");
    // Fix the header's length first (padded), then place the offsets.
    let make =
        |begin: u64, end: u64| format!(r#"{{"t":{{"dtype":"F32","shape":[4],"data_offsets":[{begin},{end}]}}}}"#);
    let len = make(u64::MAX, u64::MAX).len() as u64;
    let begin = 0u64.wrapping_sub(8 + len); // 8 + len + begin ≡ 0 (mod 2⁶⁴)
    let mut header = make(begin, begin + 16);
    while (header.len() as u64) < len {
        header.push(' ');
    }
    safetensors(&path, &header, &[0u8; 16]);
    let err = lml_tools::convert::SafeTensors::open(&path).unwrap_err().to_string();
    assert!(err.contains("w.safetensors") && err.contains("data_offsets") && err.contains(&begin.to_string()), "{err}");

    // An end past the data, and a shape whose byte count overflows.
    safetensors(&path, r#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,17]}}"#, &[0u8; 16]);
    let err = lml_tools::convert::SafeTensors::open(&path).unwrap_err().to_string();
    assert!(err.contains("[0, 17]"), "{err}");
    let huge = r#"{"t":{"dtype":"F16","shape":[4611686018427387904,4],"data_offsets":[0,0]}}"#;
    safetensors(&path, huge, &[]);
    let err = lml_tools::convert::SafeTensors::open(&path).unwrap_err().to_string();
    assert!(err.contains("shape") && err.contains("4611686018427387904"), "{err}");
    // A header length past the file.
    fs::write(&path, u64::MAX.to_le_bytes()).unwrap();
    let err = lml_tools::convert::SafeTensors::open(&path).unwrap_err().to_string();
    assert!(err.contains(&format!("header length {}", u64::MAX)), "{err}");
}

/// The 9-byte `batches.meta` whose LONG_BINPUT index is 2³²−1 (it used to
/// allocate 206 GB and abort), and index 2²⁶ (3 GB).
#[test]
fn a_memo_index_beyond_the_input_is_refused() {
    for index in [u32::MAX, 1 << 26] {
        let mut p = vec![0x80, 2, b']', b'r'];
        p.extend(index.to_le_bytes());
        p.push(b'.');
        assert_eq!(p.len(), 9);
        let err = pickle::parse(&p).unwrap_err();
        assert!(err.contains(&format!("memo index {index}")), "{err}");
    }
    // Sequential indices, as Python writes them, are fine.
    let v = pickle::parse(b"\x80\x02]q\x00(K\x01]q\x01r\x02\x00\x00\x00h\x01e.").unwrap();
    let Value::List(l) = v else { panic!("not a list") };
    assert_eq!(l.borrow().len(), 3);
}

/// The meta member of a python archive with that pickle: an error naming the
/// member, no staging folder, and nothing at `--out`.
#[test]
fn a_bad_meta_pickle_in_prepare_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("in").join(cifar::PYTHON_DIR);
    fs::create_dir_all(&folder).unwrap();
    fs::write(folder.join(cifar::PYTHON_META), b"\x80\x02]r\xff\xff\xff\xff.").unwrap();
    let out = tmp.path().join("new").join("out");
    let err = cifar::prepare(&tmp.path().join("in"), &out, 2, false, &mut |_| {}).unwrap_err();
    assert!(matches!(err, CifarError::Meta { .. }) && err.to_string().contains("memo index 4294967295"), "{err}");
    assert!(!tmp.path().join("new").exists(), "prepare left {}", tmp.path().join("new").display());
}

/// A parse error in a data batch, after the staging folder exists: the
/// staging folder goes, and so does the `--out` folder this run created.
#[test]
fn a_bad_batch_in_prepare_leaves_no_staging_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let py = tmp.path().join("p.tar.gz");
    cifar::write_python_archive(&py, 2, 3).unwrap();
    let input = tmp.path().join("in");
    tar::Archive::new(flate2::read::GzDecoder::new(fs::File::open(&py).unwrap())).unpack(&input).unwrap();
    // data_batch_3: 2 records' dict, then a stray LONG_BINPUT with a wild index.
    let batch = input.join(cifar::PYTHON_DIR).join("data_batch_3");
    let mut bytes = fs::read(&batch).unwrap();
    bytes.pop(); // STOP
    bytes.extend(b"r\x00\x00\x00\x40.");
    fs::write(&batch, bytes).unwrap();
    let out = tmp.path().join("out");
    let err = cifar::prepare(&input, &out, 2, false, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("data_batch_3") && err.to_string().contains("memo index"), "{err}");
    assert!(!out.exists(), "prepare left {:?}", fs::read_dir(&out).map(|d| d.count()));

    // An --out that already existed stays, empty.
    fs::create_dir(&out).unwrap();
    cifar::prepare(&input, &out, 2, false, &mut |_| {}).unwrap_err();
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
}

/// A list nested 10⁶ deep (`]` ×10⁶, `a` ×(10⁶−1)) used to overflow the
/// stack when dropped; now it stops at the depth limit.
#[test]
fn a_pickle_nested_a_million_deep_is_refused() {
    let n = 1_000_000;
    let mut p = vec![0x80, 2];
    p.extend(std::iter::repeat_n(b']', n));
    p.extend(std::iter::repeat_n(b'a', n - 1));
    p.push(b'.');
    let err = pickle::parse(&p).unwrap_err();
    assert!(err.contains(&format!("{} deep", pickle::MAX_DEPTH + 1)), "{err}");
    // Tuples too: `(` ×n with `t` ×n nests tuples.
    let mut p = vec![0x80, 2];
    p.extend(std::iter::repeat_n(b'(', n));
    p.push(b')');
    p.extend(std::iter::repeat_n(b'\x85', n));
    p.push(b'.');
    let err = pickle::parse(&p).unwrap_err();
    assert!(err.contains("deep"), "{err}");
    // Exactly at the limit is accepted.
    let depth = pickle::MAX_DEPTH;
    let mut p = vec![0x80, 2];
    p.extend(std::iter::repeat_n(b']', depth));
    p.extend(std::iter::repeat_n(b'a', depth - 1));
    p.push(b'.');
    assert_eq!(pickle::parse(&p).unwrap().depth(), depth);
}

/// A list that would contain itself (`]q\0h\0a`), or a list changed after
/// it was put inside another one, is refused: the values stay acyclic.
#[test]
fn recursive_pickles_are_refused() {
    let err = pickle::parse(b"\x80\x02]q\x00h\x00a.").unwrap_err();
    assert!(err.contains("recursive"), "{err}");
    let err = pickle::parse(b"\x80\x02]q\x00]h\x00ah\x00K\x01a.").unwrap_err();
    assert!(err.contains("already inside another one"), "{err}");
}

#[test]
fn extract_features_refuses_zero_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().to_str().unwrap();
    let out =
        lml().args(["extract-features", "--data", p, "--weights", p, "--out", p, "--shards", "0"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--shards") && stderr.contains('0'), "{stderr}");
    assert!(fs::read_dir(tmp.path()).unwrap().next().is_none(), "extract-features wrote into {p}");
    // The library refuses too: an empty cache is not "ready".
    let err = lml_tools::features::merge(tmp.path(), "train", 0, &tmp.path().join("y.npy"), &serde_json::json!({}))
        .unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
    assert!(fs::read_dir(tmp.path()).unwrap().next().is_none());
}

#[test]
fn prepare_cifar10_refuses_a_huge_or_zero_records_per_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    for value in ["0", &usize::MAX.to_string(), &(1usize << 60).to_string()] {
        let run = lml()
            .args(["prepare-cifar10", "--input", "/nonexistent", "--out", out.to_str().unwrap()])
            .args(["--records-per-batch", value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{value}: {stderr}");
        assert!(stderr.contains("records_per_batch") || stderr.contains("records-per-batch"), "{stderr}");
        assert!(stderr.contains(value), "{value}: {stderr}");
    }
    assert!(!out.exists());
    // A large count the arithmetic allows is simply not what the archive holds.
    let arc = tmp.path().join("b.tar.gz");
    cifar::write_binary_archive(&arc, 2, 1).unwrap();
    let err = cifar::prepare(&arc, &out, 1 << 40, false, &mut |_| {}).unwrap_err();
    assert!(matches!(err, CifarError::Count { expected, .. } if expected == 1 << 40), "{err}");
    assert!(!out.exists());
    let err = cifar::prepare(&arc, &out, usize::MAX, false, &mut |_| {}).unwrap_err();
    assert!(matches!(err, CifarError::RecordsPerBatch { value: usize::MAX, .. }), "{err}");
}

/// A tar member that claims an absurd size is refused before anything is
/// allocated for it (the buffer used to be sized by the claim).
#[test]
fn a_member_claiming_a_huge_size_is_refused_before_reading() {
    let mut header = tar::Header::new_gnu();
    header.set_path(format!("{}/data_batch_1", cifar::PYTHON_DIR)).unwrap();
    header.set_size(1 << 50);
    header.set_cksum();
    let mut f = header.as_bytes().to_vec();
    f.extend([0u8; 1024]);
    let err = lml_tools::fuzz::tar_members(&f).unwrap_err();
    assert!(err.contains("data_batch_1 is larger than"), "{err}");
}
