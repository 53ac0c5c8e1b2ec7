//! Fuzz harnesses: one function per parser of outside input, shared by the
//! coverage-guided targets in `fuzz/` (libFuzzer, see `fuzz/campaign.sh`) and
//! by the short, seeded run in `tools/tests/fuzz.rs` that CI executes.
//!
//! Each harness takes arbitrary bytes, runs the parser exactly as production
//! does (the same functions, on an in-memory input where production reads a
//! file), and returns `Ok` when the input was accepted, or the parser's error
//! text. It panics — which the fuzzer records as a crash — on a panic inside
//! the parser or when an accepted input breaks an invariant: a parsed `.npy`'s
//! data is exactly its shape's bytes, a parsed event prints back to itself,
//! a safetensors tensor lies inside the file and decodes to its shape, and so
//! on. Seeds ([`seeds`]) are valid files made by our own writers; the
//! committed ones in `fuzz/seeds/` come from numpy, h5py and Python's pickle.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use lml_kernel::npy;
use lml_lambda::{Event, JobSpec};

use crate::cifar::{self, CifarError, Source};

/// Every harness, by the name its fuzz target and seed folder use.
pub const TARGETS: [&str; 9] = [
    "event_json",
    "job_spec",
    "npy_header",
    "safetensors_header",
    "pickle",
    "cifar_binary",
    "cifar_python",
    "tar_members",
    "keras_h5",
];

/// Records per batch in the CIFAR seeds, and what the CIFAR harnesses expect.
pub const SEED_RECORDS: usize = 2;

/// Runs harness `target` (one of [`TARGETS`]) on `data`.
///
/// # Panics
/// On an unknown target, and wherever the harness itself panics.
pub fn run(target: &str, data: &[u8]) -> Result<(), String> {
    match target {
        "event_json" => event_json(data),
        "job_spec" => job_spec(data),
        "npy_header" => npy_header(data),
        "safetensors_header" => safetensors_header(data),
        "pickle" => pickle(data),
        "cifar_binary" => cifar_binary(data),
        "cifar_python" => cifar_python(data),
        "tar_members" => tar_members(data),
        "keras_h5" => keras_h5(data),
        other => panic!("no fuzz harness {other:?} (have {TARGETS:?})"),
    }
}

/// An invocation event (`Event::parse`); an accepted event must print
/// (`to_json`) to JSON that parses back to the same event.
pub fn event_json(data: &[u8]) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| format!("JSON: {e}"))?;
    let event = Event::parse(&v).map_err(|e| e.to_string())?;
    let printed = event.to_json();
    let again = Event::parse(&printed).unwrap_or_else(|e| panic!("{printed} (from {v}) does not parse back: {e}"));
    assert_eq!(again, event, "{v} → {printed}");
    let _ = event.describe();
    Ok(())
}

/// A job spec (`JobSpec::from_json`); an accepted spec must validate and
/// survive serialising and parsing again unchanged.
pub fn job_spec(data: &[u8]) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| format!("JSON: {e}"))?;
    let spec = JobSpec::from_json(&v).map_err(|e| e.to_string())?;
    spec.validate().unwrap_or_else(|e| panic!("{v} parsed but does not validate: {e}"));
    let printed = serde_json::to_value(&spec).expect("a spec serialises");
    let again =
        JobSpec::from_json(&printed).unwrap_or_else(|e| panic!("{printed} (from {v}) does not parse back: {e}"));
    assert_eq!(again, spec, "{v} → {printed}");
    Ok(())
}

/// A `.npy` file (`npy::parse_header`, as `MappedNpy::header`): when
/// accepted, the data after the header is exactly `product(shape) · item`
/// bytes, every row of a 2-D array is in bounds (what `CachedFeatures` reads),
/// and where the `ndarray-npy` view (`MappedNpy::view`) accepts it too, both
/// agree on the shape.
pub fn npy_header(data: &[u8]) -> Result<(), String> {
    let path = Path::new("<fuzz input>.npy");
    let h = npy::parse_header(path, data).map_err(|e| e.to_string())?;
    let item = npy::dtype_size(&h.descr).unwrap_or_else(|| panic!("accepted unknown dtype {:?}", h.descr));
    let bytes = h.shape.iter().try_fold(item, |a, &d| a.checked_mul(d));
    assert_eq!(bytes, data.len().checked_sub(h.data_offset), "{h:?} of a {}-byte file", data.len());
    if let [rows, dim] = h.shape[..] {
        let row = dim * item;
        for i in 0..rows.min(64) {
            assert!(data[h.data_offset..].get(i * row..(i + 1) * row).is_some(), "row {i} of {h:?}");
        }
    }
    let theirs = match h.descr.as_str() {
        "<f4" => npy::view_bytes::<f32>(path, data).map(|v| v.shape().to_vec()),
        "|u1" => npy::view_bytes::<u8>(path, data).map(|v| v.shape().to_vec()),
        "<u2" => npy::view_bytes::<u16>(path, data).map(|v| v.shape().to_vec()),
        "<i4" => npy::view_bytes::<i32>(path, data).map(|v| v.shape().to_vec()),
        "<i8" => npy::view_bytes::<i64>(path, data).map(|v| v.shape().to_vec()),
        _ => return Ok(()),
    };
    // ndarray-npy also checks alignment and is stricter about the header
    // text, so it may refuse what we accept; it must never see another shape.
    if let Ok(shape) = theirs {
        assert_eq!(shape, h.shape, "ndarray-npy and parse_header disagree on {h:?}");
    }
    Ok(())
}

/// A `.safetensors` file (`SafeTensors::open`'s header check, then
/// `read_f32`'s decoding): every accepted tensor lies inside the file and
/// decodes to exactly its shape.
pub fn safetensors_header(data: &[u8]) -> Result<(), String> {
    let path = Path::new("<fuzz input>.safetensors");
    let (start, entries) = crate::convert::parse_safetensors_header(path, data.len() as u64, &mut Cursor::new(data))
        .map_err(|e| e.to_string())?;
    for (key, e) in &entries {
        let range = start.checked_add(e.begin).zip(start.checked_add(e.end));
        let bytes = range
            .and_then(|(b, e)| data.get(usize::try_from(b).ok()?..usize::try_from(e).ok()?))
            .unwrap_or_else(|| panic!("{key}: accepted offsets {e:?} outside a {}-byte file", data.len()));
        match crate::convert::decode_tensor(path, key, e, bytes) {
            Ok(t) => assert_eq!(t.shape(), e.shape.as_slice(), "{key}"),
            Err(err) if ["F32", "F16", "BF16"].contains(&e.dtype.as_str()) => {
                panic!("{key}: a checked {} tensor fails to decode: {err}", e.dtype)
            }
            Err(_) => {}
        }
    }
    Ok(())
}

/// A pickle (`pickle::parse`): an accepted value nests at most
/// [`crate::pickle::MAX_DEPTH`] deep, and CIFAR's lookups on it work.
pub fn pickle(data: &[u8]) -> Result<(), String> {
    let v = crate::pickle::parse(data)?;
    assert!(v.depth() <= crate::pickle::MAX_DEPTH, "depth {}", v.depth());
    for key in ["data", "labels", "label_names", "batch_label", "filenames"] {
        let _ = v.get(key);
    }
    Ok(())
}

/// Counts the bytes written to it.
#[derive(Default)]
struct Count(usize);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn source() -> Source {
    Source::Archive(PathBuf::from("<fuzz input>"))
}

/// Checks what a CIFAR member conversion wrote: `records` labels below 10
/// and 3,072 image bytes each.
fn check_converted(records: usize, images: &Count, labels: &[u8]) {
    assert_eq!(labels.len(), records);
    assert_eq!(images.0, records * (cifar::RECORD - 1));
    assert!(labels.iter().all(|&l| l < cifar::CLASSES), "{labels:?}");
}

/// A binary CIFAR-10 batch (`.bin` member): its records counted from its
/// size and converted as `prepare` does.
pub fn cifar_binary(data: &[u8]) -> Result<(), String> {
    binary_member(&mut Cursor::new(data), data.len() as u64).map_err(|e| e.to_string())
}

fn binary_member(r: &mut dyn Read, size: u64) -> Result<(), CifarError> {
    let src = source();
    let member = cifar::TRAIN_MEMBERS[0];
    let records = cifar::records_in(&src, member, size)?;
    let (mut images, mut labels) = (Count::default(), Vec::new());
    cifar::convert_member(&src, member, r, records, &mut images, &mut labels, &mut |_| {})?;
    check_converted(records, &images, &labels);
    Ok(())
}

/// A python CIFAR-10 batch (pickled dict), converted as `prepare` does with
/// [`SEED_RECORDS`] records expected.
pub fn cifar_python(data: &[u8]) -> Result<(), String> {
    python_member(&mut Cursor::new(data), data.len() as u64).map_err(|e| e.to_string())
}

fn python_member(r: &mut dyn Read, size: u64) -> Result<(), CifarError> {
    let src = source();
    let (mut images, mut labels) = (Count::default(), Vec::new());
    cifar::convert_python_member(&src, "data_batch_1", r, size, SEED_RECORDS, &mut images, &mut labels, &mut |_| {})?;
    check_converted(SEED_RECORDS, &images, &labels);
    Ok(())
}

/// A CIFAR-10 archive as a tar stream (gzipped when it starts with the gzip
/// magic): each member `prepare` looks for is found as it does and parsed —
/// both meta members, and a training and the test batch of both formats
/// (python batches with [`SEED_RECORDS`] records expected).
pub fn tar_members(data: &[u8]) -> Result<(), String> {
    let path = Path::new("<fuzz input>.tar");
    let mut errors = Vec::new();
    let mut found = 0;
    let mut each = |name: &str, parse: &dyn Fn(&mut dyn Read, u64) -> Result<(), CifarError>| {
        let result = if data.starts_with(&[0x1f, 0x8b]) {
            cifar::member_in_tar(path, tar::Archive::new(flate2::read::GzDecoder::new(data)), name, parse)
        } else {
            cifar::member_in_tar(path, tar::Archive::new(data), name, parse)
        };
        match result {
            Ok(()) => found += 1,
            Err(e) => errors.push(e.to_string()),
        }
    };
    each(cifar::META_MEMBER, &|r, _| cifar::read_meta_text(r).map(drop).map_err(meta_error));
    each(cifar::PYTHON_META, &|r, size| {
        let bytes = cifar::read_member(&source(), cifar::PYTHON_META, r, size, cifar::MEMBER_OVERHEAD)?;
        cifar::parse_meta_pickle(&bytes).map(drop).map_err(meta_error)
    });
    for member in [cifar::TRAIN_MEMBERS[0], cifar::TEST_MEMBER] {
        each(member, &binary_member);
        each(member.trim_end_matches(".bin"), &python_member);
    }
    // A binary archive has no python members and the reverse: an input is
    // accepted when either set is complete.
    if found >= 3 {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn meta_error(reason: String) -> CifarError {
    CifarError::Meta { input: PathBuf::from("<fuzz input>"), reason }
}

/// A Keras Applications `.h5` (`convert::convert_keras_h5`, on a copy of
/// `data` in a scratch folder of this thread, into a store there that must
/// not exist after a failed conversion and is removed after a successful one).
pub fn keras_h5(data: &[u8]) -> Result<(), String> {
    thread_local! {
        static SCRATCH: PathBuf = {
            let dir = std::env::temp_dir().join(format!("lml-fuzz-h5-{}-{:?}", std::process::id(), std::thread::current().id()));
            std::fs::create_dir_all(&dir).expect("creating the fuzz scratch folder");
            dir
        };
    }
    SCRATCH.with(|dir| {
        let input = dir.join("input.h5");
        std::fs::write(&input, data).expect("writing the fuzz input");
        let out = dir.join("store");
        let result = crate::convert::convert_keras_h5(&input, &out);
        if result.is_err() {
            assert!(!out.exists(), "a failed conversion left {}", out.display());
        } else {
            std::fs::remove_dir_all(&out).expect("removing a converted store");
        }
        result.map(drop).map_err(|e| e.to_string())
    })
}

/// Valid inputs for `target` made by our own writers (the committed
/// `fuzz/seeds/` add files made by numpy, h5py and Python).
///
/// # Panics
/// On an unknown target, or when a writer fails.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    use serde_json::json;
    let tmp = std::env::temp_dir().join(format!("lml-fuzz-seeds-{}-{target}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("creating the seed scratch folder");
    let seeds = match target {
        "event_json" => [
            json!({"start": true, "workers": 4}),
            json!({"start": true, "workers": 2, "job": "j-1", "spec": {"batch": 8, "epochs": 2}}),
            json!({"workerno": 1, "workers": 4, "epochsdone": 3, "job": "j-1", "continuation": 2}),
            json!({"workerno": 0, "workers": 1, "round": 7}),
            json!({"combine": true, "workers": 16, "epochsdone": 6}),
            json!({"combine": true, "workers": 3, "round": 12, "epochsdone": 4}),
            json!({"resume": true, "job": "a.b_c"}),
            json!({"stop": true, "job": "x"}),
        ]
        .iter()
        .map(|v| v.to_string().into_bytes())
        .collect(),
        "job_spec" => {
            let full = serde_json::to_value(JobSpec::default()).expect("serialises");
            [
                json!({}),
                full,
                json!({"epochs": 3, "batch": 16, "lr": 0.05, "momentum": 0.0, "seed": 9}),
                json!({"rounds": 10, "sync": "model-average", "local_steps": 4, "target_loss": 0.5}),
                json!({"data": {"features": "f/train.npy", "labels": "f/train_y.npy"},
                       "eval": {"features": "f/test.npy", "labels": "f/test_y.npy"}, "eval_every": 2}),
                json!({"classes": 10, "time_limit_ms": 60000, "safety_ms": 1000, "eval_examples": 100}),
            ]
            .iter()
            .map(|v| v.to_string().into_bytes())
            .collect()
        }
        "npy_header" => {
            let mut out = Vec::new();
            for (descr, shape) in [
                ("<f4", vec![2, 3]),
                ("<f2", vec![2, 2]),
                ("|u1", vec![4, 2, 2, 3]),
                ("<i8", vec![5]),
                ("<u2", vec![]),
                ("<f4", vec![0, 7]),
            ] {
                let mut f = Vec::new();
                npy::write_npy_header(&mut f, descr, &shape).expect("in memory");
                let n: usize = shape.iter().product::<usize>() * npy::dtype_size(descr).expect("known");
                f.extend((0..n).map(|i| (i * 37 % 251) as u8));
                out.push(f);
            }
            let p = tmp.join("a.npy");
            npy::write_npy_atomic(&p, &ndarray::Array2::<f32>::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f32))
                .expect("writing a seed");
            out.push(std::fs::read(&p).expect("reading a seed"));
            out
        }
        "safetensors_header" => {
            let p = tmp.join("a.safetensors");
            let a = ndarray::ArrayD::<f32>::from_shape_fn(ndarray::IxDyn(&[2, 3]), |i| i[0] as f32 - i[1] as f32);
            let b = ndarray::ArrayD::<f32>::ones(ndarray::IxDyn(&[4]));
            crate::convert::write_safetensors(&p, &[("features.0.weight".into(), a.view()), ("x".into(), b.view())])
                .expect("writing a seed");
            let mut out = vec![std::fs::read(&p).expect("reading a seed")];
            for (dtype, n) in [("F16", 2), ("BF16", 2), ("I64", 8)] {
                let header = format!(
                    r#"{{"t":{{"dtype":"{dtype}","shape":[2,2],"data_offsets":[0,{}]}},"__metadata__":{{"format":"pt"}}}}"#,
                    4 * n
                );
                let mut f = (header.len() as u64).to_le_bytes().to_vec();
                f.extend(header.as_bytes());
                f.extend((0..4 * n).map(|i| (i * 29) as u8));
                out.push(f);
            }
            out
        }
        "pickle" => vec![
            python_batch(1),
            crate::pickle::write_meta(&cifar::CLASS_NAMES, 10_000),
            b"\x80\x02]q\x00(K\x01K\x02e.".to_vec(),
        ],
        "cifar_python" => vec![python_batch(SEED_RECORDS)],
        "cifar_binary" => vec![cifar::binary_records(SEED_RECORDS, 1), cifar::binary_records(1, 2)],
        "tar_members" => {
            let (bin, py) = (tmp.join("b.tar.gz"), tmp.join("p.tar.gz"));
            cifar::write_binary_archive(&bin, SEED_RECORDS, 1).expect("writing a seed");
            cifar::write_python_archive(&py, SEED_RECORDS, 1).expect("writing a seed");
            let read = |p: &Path| std::fs::read(p).expect("reading a seed");
            let (bin, py) = (read(&bin), read(&py));
            let gunzip = |gz: &[u8]| {
                let mut tar = Vec::new();
                flate2::read::GzDecoder::new(gz).read_to_end(&mut tar).expect("our own archive");
                tar
            };
            vec![gunzip(&bin), gunzip(&py), bin, py]
        }
        "keras_h5" => {
            // The first layers only, in each layout Keras wrote: a whole
            // VGG19 is 548 MB. Conversion stops at the first missing layer.
            use crate::keras::KerasLayout;
            let w = lml_kernel::vgg::random_weights(1, lml_kernel::Cut::Pool5);
            let mut out = Vec::new();
            for layout in [KerasLayout::Applications2017, KerasLayout::Keras2, KerasLayout::Keras3] {
                for layers in [2, 4] {
                    let p = tmp.join(format!("k{layers}-{layout:?}.h5"));
                    crate::convert::write_keras_h5(&p, &w[..layers], layout).expect("writing a seed");
                    out.push(std::fs::read(&p).expect("reading a seed"));
                }
            }
            out
        }
        other => panic!("no fuzz harness {other:?} (have {TARGETS:?})"),
    };
    let _ = std::fs::remove_dir_all(&tmp);
    seeds
}

/// A python CIFAR-10 batch of `n` generated records, as our writer makes it.
fn python_batch(n: usize) -> Vec<u8> {
    let records = cifar::binary_records(n, 7);
    let labels: Vec<u8> = records.chunks_exact(cifar::RECORD).map(|r| r[0]).collect();
    let data: Vec<u8> = records.chunks_exact(cifar::RECORD).flat_map(|r| r[1..].to_vec()).collect();
    let names: Vec<String> = (0..n).map(|i| format!("f{i}.png")).collect();
    crate::pickle::write_batch("training batch 1 of 5", &labels, &data, &names)
}
