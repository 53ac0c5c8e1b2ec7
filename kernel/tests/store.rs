//! Weight store and dataset: round trips and every kind of bad input.

use std::fs;
use std::path::Path;

use lml_kernel::dataset::ImageDataset;
use lml_kernel::npy::write_npy_atomic;
use lml_kernel::weights::{TensorSpec, WeightStore, MANIFEST};
use lml_kernel::{KernelError, Preset};
use ndarray::{Array1, Array2, Array4, ArrayD};

fn specs() -> Vec<TensorSpec> {
    vec![
        TensorSpec { name: "a.weight".into(), shape: vec![2, 3], required: true },
        TensorSpec { name: "a.bias".into(), shape: vec![2], required: true },
        TensorSpec { name: "b.weight".into(), shape: vec![4], required: false },
    ]
}

fn write_store(dir: &Path) {
    let w = Array2::from_shape_fn((2, 3), |(i, j)| (i * 3 + j) as f32).into_dyn();
    let b = Array1::from_vec(vec![0.5f32, -0.5]).into_dyn();
    WeightStore::write(
        dir,
        "toy",
        Preset::Torchvision,
        [("a.weight".to_string(), w.view()), ("a.bias".to_string(), b.view())],
    )
    .unwrap();
}

fn open(dir: &Path) -> Result<WeightStore, KernelError> {
    WeightStore::open(dir, "toy", &specs())
}

#[test]
fn round_trip_maps_without_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    write_store(&dir);
    let store = open(&dir).unwrap();
    assert_eq!(store.preset(), Preset::Torchvision);
    let w = store.view("a.weight").unwrap();
    assert_eq!(w.shape(), &[2, 3]);
    assert_eq!(w[[1, 2]], 5.0);
    assert!(!store.contains("b.weight"));
    assert!(matches!(store.view("b.weight"), Err(KernelError::MissingTensor { .. })));
    // Writing over an existing store is refused.
    assert!(matches!(
        WeightStore::write(&dir, "toy", Preset::Caffe, std::iter::empty()),
        Err(KernelError::Invalid { .. })
    ));
}

/// Applies `damage` to a fresh store and returns the open error's message.
fn broken(damage: impl FnOnce(&Path)) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    write_store(&dir);
    damage(&dir);
    let err = open(&dir).expect_err("damaged store must not open");
    err.to_string()
}

fn edit_manifest(dir: &Path, from: &str, to: &str) {
    let p = dir.join(MANIFEST);
    let text = fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{from} not in {text}");
    fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn missing_manifest() {
    let msg = broken(|d| fs::remove_file(d.join(MANIFEST)).unwrap());
    assert!(msg.contains("manifest.json"), "{msg}");
}

#[test]
fn unparsable_or_wrong_manifest() {
    assert!(broken(|d| fs::write(d.join(MANIFEST), "{").unwrap()).contains("bad manifest"));
    assert!(broken(|d| edit_manifest(d, "lml-weights/1", "lml-weights/9")).contains("format"));
    assert!(broken(|d| edit_manifest(d, "\"toy\"", "\"resnet\"")).contains("model"));
    assert!(broken(|d| edit_manifest(d, "\"torchvision\"", "\"keras\"")).contains("bad manifest"));
    assert!(broken(|d| edit_manifest(d, "<f4", "<f8")).contains("dtype"));
}

#[test]
fn missing_file_names_the_file() {
    let msg = broken(|d| fs::remove_file(d.join("a.bias.npy")).unwrap());
    assert!(msg.contains("a.bias") && msg.contains("missing"), "{msg}");
}

#[test]
fn missing_required_tensor() {
    let msg = broken(|d| {
        fs::remove_file(d.join("a.bias.npy")).unwrap();
        let p = d.join(MANIFEST);
        let mut m: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
        m["tensors"].as_array_mut().unwrap().retain(|t| t["name"] != "a.bias");
        fs::write(&p, m.to_string()).unwrap();
    });
    assert!(msg.contains("missing tensor a.bias"), "{msg}");
}

#[test]
fn stray_or_misnamed_file() {
    let msg = broken(|d| fs::write(d.join("a.wieght.npy"), b"x").unwrap());
    assert!(msg.contains("a.wieght.npy") && msg.contains("not listed"), "{msg}");
    let msg = broken(|d| fs::rename(d.join("a.bias.npy"), d.join("a.biases.npy")).unwrap());
    assert!(msg.contains("a.bias"), "{msg}");
}

#[test]
fn unknown_tensor_in_manifest() {
    let msg = broken(|d| {
        edit_manifest(d, "\"a.bias\"", "\"z.bias\"");
        fs::rename(d.join("a.bias.npy"), d.join("z.bias.npy")).unwrap();
    });
    assert!(msg.contains("z.bias") && msg.contains("no tensor of that name"), "{msg}");
}

#[test]
fn wrong_dtype_in_file() {
    let msg = broken(|d| write_npy_atomic(d.join("a.bias.npy"), &Array1::from_vec(vec![0.5f64, 1.0])).unwrap());
    assert!(msg.contains("a.bias.npy") && msg.contains("f32"), "{msg}");
}

#[test]
fn wrong_shape_in_file() {
    let msg = broken(|d| write_npy_atomic(d.join("a.weight.npy"), &ArrayD::<f32>::zeros(vec![3, 2])).unwrap());
    assert!(msg.contains("a.weight") && msg.contains("[3, 2]") && msg.contains("[2, 3]"), "{msg}");
}

#[test]
fn truncated_file() {
    let msg = broken(|d| {
        let p = d.join("a.weight.npy");
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
    });
    assert!(msg.contains("a.weight.npy"), "{msg}");
    let msg = broken(|d| fs::write(d.join("a.weight.npy"), b"").unwrap());
    assert!(msg.contains("a.weight.npy"), "{msg}");
}

#[test]
fn manifest_shape_disagrees_with_model() {
    let msg = broken(|d| edit_manifest(d, "2,\n        3", "3,\n        2"));
    assert!(msg.contains("a.weight"), "{msg}");
}

#[test]
fn dataset_round_trip_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let x = Array4::from_shape_fn((5, 4, 4, 3), |(n, y, x, c)| (n * 50 + y * 10 + x * 2 + c) as u8);
    let (xp, yp) = (tmp.path().join("x.npy"), tmp.path().join("y.npy"));
    write_npy_atomic(&xp, &x).unwrap();
    write_npy_atomic(&yp, &Array1::from_vec(vec![0i64, 1, 2, 3, 9])).unwrap();
    let ds = ImageDataset::open(&xp, &yp).unwrap();
    assert_eq!(ds.len(), 5);
    let (b, l) = ds.gather(&[4, 0]).unwrap();
    assert_eq!(l, vec![9, 0]);
    assert_eq!(b.index_axis(ndarray::Axis(0), 0), x.index_axis(ndarray::Axis(0), 4));
    assert!(ds.gather(&[5]).is_err());

    write_npy_atomic(&yp, &Array1::from_vec(vec![0u8, 1, 2])).unwrap();
    assert!(ImageDataset::open(&xp, &yp).unwrap_err().to_string().contains("one per image"));
    write_npy_atomic(&yp, &Array1::from_vec(vec![0i32, 1, -2, 3, 4])).unwrap();
    assert!(ImageDataset::open(&xp, &yp).unwrap_err().to_string().contains("-2"));
    write_npy_atomic(&yp, &Array1::from_vec(vec![0.0f32; 5])).unwrap();
    assert!(ImageDataset::open(&xp, &yp).unwrap_err().to_string().contains("integer labels"));
    write_npy_atomic(&xp, &Array4::<u8>::zeros((5, 4, 4, 1))).unwrap();
    write_npy_atomic(&yp, &Array1::from_vec(vec![0u8; 5])).unwrap();
    assert!(ImageDataset::open(&xp, &yp).unwrap_err().to_string().contains("[N, H, W, 3]"));
    write_npy_atomic(&xp, &Array4::<f32>::zeros((5, 4, 4, 3))).unwrap();
    assert!(matches!(ImageDataset::open(&xp, &yp), Err(KernelError::Npy { .. })));
}

#[test]
fn streamed_npy_header_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    for shape in [vec![7usize], vec![3, 4, 2], vec![0, 5]] {
        let p = tmp.path().join("s.npy");
        let n: usize = shape.iter().product();
        lml_kernel::npy::publish_atomic(&p, |w| {
            lml_kernel::npy::write_npy_header(w, "|u1", &shape)?;
            std::io::Write::write_all(w, &(0..n).map(|i| i as u8).collect::<Vec<_>>())
        })
        .unwrap();
        let m = lml_kernel::npy::MappedNpy::open(&p).unwrap();
        let v = m.view::<u8>().unwrap();
        assert_eq!(v.shape(), shape.as_slice());
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u8));
    }
}

#[test]
fn npy_header_parser_and_its_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("h.npy");
    write_npy_atomic(&p, &Array2::<f32>::zeros((3, 5))).unwrap();
    let h = lml_kernel::npy::MappedNpy::open(&p).unwrap().header().unwrap();
    assert_eq!((h.descr.as_str(), h.shape.as_slice()), ("<f4", &[3usize, 5][..]));
    assert_eq!(h.data_offset % 64, 0);
    let bytes = fs::read(&p).unwrap();
    let bad = |data: &[u8]| {
        fs::write(&p, data).unwrap();
        lml_kernel::npy::MappedNpy::open(&p).unwrap().header().unwrap_err().to_string()
    };
    assert!(bad(&bytes[..bytes.len() - 4]).contains("truncated"));
    assert!(bad(b"PK\x03\x04 not npy at all").contains("magic"));
    let (from, to) = (b"'fortran_order': False", b"'fortran_order': True ");
    let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
    let mut fortran = bytes.clone();
    fortran[at..at + to.len()].copy_from_slice(to);
    assert!(bad(&fortran).contains("Fortran"));
}
