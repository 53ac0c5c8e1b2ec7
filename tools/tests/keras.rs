//! Keras Applications VGG19 `.h5` conversion: layouts, the fc1 permutation
//! proved on a tensor whose values encode their own position, and files
//! written by h5py itself (when installed; `.ci/run` installs it).

use std::process::Command;

use lml_kernel::vgg::{random_weights, tensor_specs, MODEL};
use lml_kernel::weights::WeightStore;
use lml_kernel::{Cut, Preset};
use lml_tools::convert::{convert_keras_h5, keras_fc1_to_torchvision, write_keras_h5};
use ndarray::Array2;

/// Keras flattens a `[H, W, C]` map as `(h·W + w)·C + c`; torchvision flattens
/// `[C, H, W]` as `c·H·W + h·W + w`. Each kernel value here encodes its own
/// (h, w, c, o), so every moved value can be checked against where it must land.
#[test]
fn fc1_permutation_moves_every_value_to_its_torchvision_place() {
    let (h, w, c, out) = (7, 7, 5, 3);
    let code = |y: usize, x: usize, ch: usize, o: usize| (o * 1_000_000 + y * 10_000 + x * 100 + ch) as f32;
    let kernel = Array2::from_shape_fn((h * w * c, out), |(row, o)| {
        let (yx, ch) = (row / c, row % c);
        code(yx / w, yx % w, ch, o)
    });
    let t = keras_fc1_to_torchvision(kernel.view(), (h, w, c));
    assert_eq!(t.dim(), (out, c * h * w));
    for o in 0..out {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    assert_eq!(t[[o, ch * h * w + y * w + x]], code(y, x, ch, o), "o{o} c{ch} y{y} x{x}");
                }
            }
        }
    }
}

#[test]
fn keras_round_trip_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let w = random_weights(8, Cut::Pool5);
    let h5 = tmp.path().join("vgg19.h5");
    write_keras_h5(&h5, &w).unwrap();
    let out = tmp.path().join("w");
    let c = convert_keras_h5(&h5, &out).unwrap();
    assert_eq!((c.tensors, c.cut), (32, Cut::Pool5));
    let store = WeightStore::open(&out, MODEL, &tensor_specs(Cut::Pool5)).unwrap();
    assert_eq!(store.preset(), Preset::Caffe);
    for (name, t) in &w {
        assert_eq!(store.view(name).unwrap(), t.view(), "{name}");
    }
    // Not HDF5 at all; a missing layer.
    std::fs::write(tmp.path().join("bad.h5"), b"not hdf5").unwrap();
    let err = convert_keras_h5(&tmp.path().join("bad.h5"), &tmp.path().join("w2")).unwrap_err();
    assert!(err.to_string().contains("bad.h5") && err.to_string().contains("HDF5"), "{err}");
    let partial: Vec<_> = w.iter().filter(|(n, _)| !n.starts_with("features.34")).cloned().collect();
    write_keras_h5(&tmp.path().join("partial.h5"), &partial).unwrap();
    let err = convert_keras_h5(&tmp.path().join("partial.h5"), &tmp.path().join("w3")).unwrap_err();
    assert!(err.to_string().contains("block5_conv4"), "{err}");
    // A truncated download.
    let bytes = std::fs::read(&h5).unwrap();
    std::fs::write(tmp.path().join("cut.h5"), &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = convert_keras_h5(&tmp.path().join("cut.h5"), &tmp.path().join("w4")).unwrap_err();
    assert!(err.to_string().contains("cut.h5"), "{err}");
    assert!(!tmp.path().join("w2").exists() && !tmp.path().join("w3").exists() && !tmp.path().join("w4").exists());
}

fn h5py_available() -> bool {
    let ok = Command::new("python3").args(["-c", "import h5py, numpy"]).status().map(|s| s.success()).unwrap_or(false);
    if !ok && std::env::var_os("CI").is_some() {
        panic!("python3 with h5py and numpy is required under CI (.ci/run installs them)");
    }
    ok
}

/// h5py writes the Keras layout (HWIO kernels from a formula); the converter
/// must produce OIHW tensors that match the same formula evaluated here.
#[test]
fn converts_files_written_by_h5py() {
    if !h5py_available() {
        eprintln!("skipping: h5py not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let h5 = tmp.path().join("keras.h5");
    let layers: Vec<(String, usize, usize)> = lml_kernel::vgg::VGG19
        .iter()
        .filter_map(|l| match l.kind {
            lml_kernel::vgg::LayerKind::Conv { in_channels, out_channels } => {
                Some((l.keras.to_string(), in_channels, out_channels))
            }
            _ => None,
        })
        .collect();
    let spec: Vec<String> = layers.iter().map(|(n, i, o)| format!("({n:?}, {i}, {o})")).collect();
    let code = format!(
        "import h5py, numpy as np\n\
         f = h5py.File({path:?}, 'w')\n\
         for k, (name, cin, cout) in enumerate([{spec}]):\n\
         \x20   y, x, i, o = np.meshgrid(np.arange(3), np.arange(3), np.arange(cin), np.arange(cout), indexing='ij')\n\
         \x20   kern = (((y * 3 + x) * 7 + i * 3 + o + k) % 17).astype('f4') / 16 - 0.5\n\
         \x20   g = f.create_group(name)\n\
         \x20   g.attrs['weight_names'] = [(name + '/kernel:0').encode(), (name + '/bias:0').encode()]\n\
         \x20   g.create_dataset(name + '/kernel:0', data=kern)\n\
         \x20   g.create_dataset(name + '/bias:0', data=(np.arange(cout) % 5).astype('f4'))\n\
         f.close()",
        path = h5.to_str().unwrap(),
        spec = spec.join(", ")
    );
    let out = Command::new("python3").args(["-c", &code]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tmp.path().join("w");
    convert_keras_h5(&h5, &dir).unwrap();
    let store = WeightStore::open(&dir, MODEL, &tensor_specs(Cut::Pool5)).unwrap();
    for (k, (name, _, _)) in layers.iter().enumerate() {
        let key = lml_kernel::vgg::VGG19.iter().find(|l| l.keras == name).unwrap().name;
        let wt = store.view(&format!("{key}.weight")).unwrap();
        for ((o, i, y, x), &v) in wt.into_dimensionality::<ndarray::Ix4>().unwrap().indexed_iter() {
            let want = (((y * 3 + x) * 7 + i * 3 + o + k) % 17) as f32 / 16.0 - 0.5;
            assert_eq!(v, want, "{name} o{o} i{i} y{y} x{x}");
        }
        let b = store.view(&format!("{key}.bias")).unwrap();
        assert!(b.iter().enumerate().all(|(o, &v)| v == (o % 5) as f32), "{name} bias");
    }
}
