//! The python version of CIFAR-10: pickled batches, checked against real
//! Python (with numpy) in both directions when it is installed — `.ci/run`
//! installs it, and under CI a missing numpy is a failure, not a skip.

use std::fs;
use std::path::Path;
use std::process::Command;

use lml_tools::cifar::{self, CifarError, PYTHON_DIR};
use lml_tools::pickle::{self, Value};

const PER_BATCH: usize = 9;

/// Runs a Python snippet; `None` when python3 with numpy is unavailable outside CI.
fn python(code: &str) -> Option<String> {
    let out = Command::new("python3").args(["-c", code]).output();
    match out {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            if err.contains("No module named 'numpy'") && std::env::var_os("CI").is_none() {
                eprintln!("skipping the Python cross-check: numpy is not installed");
                return None;
            }
            panic!("python failed:\n{err}");
        }
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping the Python cross-check: {e}");
            None
        }
        Err(e) => panic!("python3 is required under CI: {e}"),
    }
}

#[test]
fn python_archive_prepares_to_the_same_files_as_the_binary_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (bin, py) = (tmp.path().join("b.tar.gz"), tmp.path().join("p.tar.gz"));
    cifar::write_binary_archive(&bin, PER_BATCH, 11).unwrap();
    cifar::write_python_archive(&py, PER_BATCH, 11).unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    cifar::prepare(&bin, &a, PER_BATCH, false, &mut |_| {}).unwrap();
    let p = cifar::prepare(&py, &b, PER_BATCH, false, &mut |_| {}).unwrap();
    assert_eq!((p.train, p.test, p.classes[9].as_str()), (5 * PER_BATCH, PER_BATCH, "truck"));
    for f in ["train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy", "classes.txt"] {
        assert_eq!(fs::read(a.join(f)).unwrap(), fs::read(b.join(f)).unwrap(), "{f}");
    }
}

/// Our fixture pickles load in Python exactly as the official ones do
/// (`pickle.load(f, encoding='bytes')`, the CIFAR-10 page's recipe).
#[test]
fn python_reads_our_pickles() {
    let tmp = tempfile::tempdir().unwrap();
    let labels: Vec<u8> = (0..PER_BATCH as u8).map(|i| i % 10).collect();
    let data: Vec<u8> = (0..PER_BATCH * 3072).map(|i| (i * 7 % 251) as u8).collect();
    let names: Vec<String> = (0..PER_BATCH).map(|i| format!("f{i}.png")).collect();
    let path = tmp.path().join("data_batch_1");
    fs::write(&path, pickle::write_batch("training batch 1 of 5", &labels, &data, &names)).unwrap();
    let meta = tmp.path().join("batches.meta");
    fs::write(&meta, pickle::write_meta(&cifar::CLASS_NAMES, PER_BATCH)).unwrap();
    let code = format!(
        "import pickle\nd = pickle.load(open({:?}, 'rb'), encoding='bytes')\nm = pickle.load(open({:?}, 'rb'), encoding='bytes')\n\
         print(d[b'data'].dtype, d[b'data'].shape, int(d[b'data'].astype('int64').sum()), d[b'labels'], d[b'batch_label'].decode(), d[b'filenames'][-1].decode())\n\
         print([n.decode() for n in m[b'label_names']], m[b'num_cases_per_batch'], m[b'num_vis'])",
        path.to_str().unwrap(),
        meta.to_str().unwrap()
    );
    let Some(out) = python(&code) else { return };
    let sum: u64 = data.iter().map(|&v| v as u64).sum();
    let want = format!(
        "uint8 ({PER_BATCH}, 3072) {sum} {labels:?} training batch 1 of 5 f{}.png\n{:?} {PER_BATCH} 3072\n",
        PER_BATCH - 1,
        cifar::CLASS_NAMES
    );
    assert_eq!(out.replace('\'', "\""), want.replace('\'', "\""));
}

/// Pickles written by Python itself — protocol 2 with str or bytes keys (the
/// latter uses `_codecs.encode`), and protocol 4 — parse to the same arrays.
#[test]
fn we_read_pythons_pickles() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let code = format!(
        "import pickle, numpy\n\
         data = (numpy.arange(4 * 3072) % 253).astype('uint8').reshape(4, 3072)\n\
         for name, proto, key in [('p2str', 2, str), ('p2bytes', 2, lambda s: s.encode()), ('p4', 4, str)]:\n\
         \x20   d = {{key('batch_label'): key('x'), key('labels'): [0, 9, 3, 1], key('data'): data}}\n\
         \x20   open('{dir}/' + name, 'wb').write(pickle.dumps(d, protocol=proto))\n\
         print('ok')"
    );
    if python(&code).is_none() {
        return;
    }
    for name in ["p2str", "p2bytes", "p4"] {
        let v = pickle::parse(&fs::read(tmp.path().join(name)).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let Some(Value::Array(a)) = v.get("data") else { panic!("{name}: no data") };
        let a = a.borrow();
        assert_eq!(a.shape, [4, 3072], "{name}");
        assert!(a.data.iter().enumerate().all(|(i, &b)| b as usize == i % 253), "{name}");
        let Some(Value::List(l)) = v.get("labels") else { panic!("{name}: no labels") };
        let l: Vec<i64> = l.borrow().iter().map(|x| if let Value::Int(i) = x { *i } else { -1 }).collect();
        assert_eq!(l, [0, 9, 3, 1], "{name}");
    }
}

#[test]
fn hostile_or_corrupt_pickles_are_refused() {
    // A pickle that would run os.system in Python.
    let evil = b"\x80\x02cos\nsystem\nq\x00U\x04trueq\x01\x85q\x02Rq\x03.";
    assert!(pickle::parse(evil).unwrap_err().contains("refusing to call os.system"));
    assert!(pickle::parse(b"\x80\x02}q\x00(U\x04data").unwrap_err().contains("truncated"));
    assert!(pickle::parse(b"\x80\x02\xff.").unwrap_err().contains("opcode 0xff"));

    // In an archive: the member is named.
    let tmp = tempfile::tempdir().unwrap();
    let py = tmp.path().join("p.tar.gz");
    cifar::write_python_archive(&py, PER_BATCH, 3).unwrap();
    let folder = tmp.path().join("x");
    tar::Archive::new(flate2::read::GzDecoder::new(fs::File::open(&py).unwrap())).unpack(&folder).unwrap();
    let batch = folder.join(PYTHON_DIR).join("data_batch_4");
    let bytes = fs::read(&batch).unwrap();
    fs::write(&batch, &bytes[..bytes.len() / 2]).unwrap();
    let out = tmp.path().join("out");
    let err = cifar::prepare(&folder, &out, PER_BATCH, false, &mut |_| {}).unwrap_err();
    assert!(matches!(err, CifarError::Pickle { .. }), "{err}");
    assert!(err.to_string().contains("data_batch_4") && err.to_string().contains("truncated"), "{err}");
    assert!(!out.join("train_x.npy").exists());
    let err = cifar::prepare(Path::new("/nonexistent/cifar"), &out, PER_BATCH, false, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/cifar"), "{err}");
}
