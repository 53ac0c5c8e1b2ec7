//! Keras VGG19 `.h5` conversion. Every layout Keras has written is generated
//! here by h5py (the library Keras saves with), from the same tensors as a
//! torchvision-layout safetensors file, and the two conversions are compared
//! exactly; the fc1 permutation is proved on values that encode their own
//! position; malformed files are clear errors that leave nothing behind.

use std::path::Path;
use std::process::Command;

use lml_kernel::vgg::{random_weights, tensor_specs, LayerKind, MODEL, VGG19};
use lml_kernel::weights::WeightStore;
use lml_kernel::{Cut, Preset, Vgg19};
use lml_tools::convert::{
    convert_keras_h5, convert_safetensors, keras_fc1_to_torchvision, write_keras_h5, write_safetensors, ConvertError,
    Converted, KerasLayout,
};
use ndarray::{Array2, Array4, ArrayD};
use rand::{Rng, SeedableRng};

/// Writes Keras layouts with h5py from a torchvision-layout safetensors file,
/// reproducing what each Keras version writes (see `lml_tools::keras`).
/// argv[1] is JSON: `{"safetensors", "table": [[torch, keras, kind]], "jobs": [{"layout", "out", ...}]}`.
const KERAS_WRITER: &str = r#"
import json, sys
import numpy as np, h5py

args = json.loads(sys.argv[1])
table = args['table']

def load(path):
    with open(path, 'rb') as f:
        n = int.from_bytes(f.read(8), 'little')
        header = json.loads(f.read(n))
    mm = np.memmap(path, dtype=np.uint8, mode='r')
    return {k: mm[8 + n + v['data_offsets'][0]:8 + n + v['data_offsets'][1]].view('<f4').reshape(v['shape'])
            for k, v in header.items() if k != '__metadata__'}

tv = load(args['safetensors'])

def keras_weights(torch, keras, kind, flip):
    # torchvision -> Keras: OIHW -> HWIO, [out, in] -> [in, out]; fc1's columns
    # (NCHW flatten c*49 + h*7 + w) become rows in NHWC flatten order (h*7 + w)*512 + c.
    w, b = tv.get(torch + '.weight'), tv.get(torch + '.bias')
    if w is None:
        return None
    if kind == 'conv':
        k = w.transpose(2, 3, 1, 0)
        if flip:
            k = k[::-1, ::-1]  # Theano kernels: Keras' convert_kernel
    elif keras == 'fc1':
        k = w.reshape(w.shape[0], 512, 7, 7).transpose(2, 3, 1, 0).reshape(25088, w.shape[0])
    else:
        k = w.T
    return [np.ascontiguousarray(k), np.asarray(b)]

def layer_list(job):
    names = ['input_layer' if job['layout'] in ('keras3', 'keras213') else 'input_1']
    dense = any(tv.get(t + '.weight') is not None for t, k, kind in table if kind == 'dense')
    for torch, keras, kind in table:
        if kind == 'dense' and 'flatten' not in names:
            if not dense:
                break
            names.append('flatten')
        if kind == 'pool':
            names.append(keras)
            continue
        if tv.get(torch + '.weight') is not None:
            names.append(keras)
    return names

def save_attributes(group, name, data):
    # keras/src/legacy/saving/legacy_h5_format.py save_attributes_to_hdf5_group (Keras >= 2.1.5)
    limit = 64512
    data_npy = np.asarray(data)
    num_chunks = 1
    chunked = np.array_split(data_npy, num_chunks)
    while any(x.nbytes > limit for x in chunked):
        num_chunks += 1
        chunked = np.array_split(data_npy, num_chunks)
    if num_chunks > 1:
        for i, chunk in enumerate(chunked):
            group.attrs['%s%d' % (name, i)] = chunk
    else:
        group.attrs[name] = data

def write(job):
    layout = job['layout']
    dtypes = job.get('dtypes', {})
    by_keras = {keras: (torch, kind) for torch, keras, kind in table}
    names = layer_list(job)
    if job.get('extra'):
        names.insert(-1, 'extra_dense')
    if job.get('pad_names'):
        # enough weightless layers to push layer_names past Keras' 64512-byte attribute limit
        names[1:1] = ['dropout_%05d_padding_the_list' % i for i in range(3000)]
    def weights(name):
        if name == 'extra_dense':
            return [np.ones((7, 5), 'f4'), np.zeros(5, 'f4')]
        if name not in by_keras or by_keras[name][1] == 'pool':
            return None
        w = keras_weights(by_keras[name][0], name, by_keras[name][1], job.get('theano', False))
        if w is not None and name in dtypes:
            w = [x.astype(d) for x, d in zip(w, dtypes[name])]
        return w
    f = h5py.File(job['out'], 'w')
    if layout in ('applications-2017', 'keras2'):
        root = f
        if job.get('full_model'):
            # model.save('x.h5'): metadata at the root, weights in model_weights (Keras 3 legacy writer)
            f.attrs['keras_version'] = '3.6.0'
            f.attrs['backend'] = 'tensorflow'
            f.attrs['model_config'] = json.dumps({'class_name': 'Functional'}).encode('utf8')
            root = f.create_group('model_weights')
        if layout == 'applications-2017':
            # Keras 1.x save_weights under h5py 2: a list of bytes became a fixed-length 'S' array.
            root.attrs['layer_names'] = np.array([n.encode('utf8') for n in names])
        else:
            save_attributes(root, 'layer_names', [n.encode('utf8') for n in names])
            root.attrs['backend'] = ('theano' if job.get('theano') else 'tensorflow').encode('utf8')
            root.attrs['keras_version'] = ('3.6.0' if job.get('full_model') else '2.2.4').encode('utf8')
        for name in sorted(names) if layout == 'keras2' else names:
            g = root.create_group(name)
            w = weights(name)
            if w is None:
                if layout == 'applications-2017':
                    g.attrs['weight_names'] = []  # numpy makes [] an empty float64 array
                else:
                    save_attributes(g, 'weight_names', [])
                continue
            if layout == 'applications-2017':
                wn = ['%s_W_1:0' % name, '%s_b_1:0' % name]
                g.attrs['weight_names'] = np.array([n.encode('utf8') for n in wn])
            elif job.get('full_model'):
                wn = ['%s/kernel' % name, '%s/bias' % name]
                save_attributes(g, 'weight_names', [n.encode('utf8') for n in wn])
            else:
                wn = ['%s/kernel:0' % name, '%s/bias:0' % name]
                save_attributes(g, 'weight_names', [n.encode('utf8') for n in wn])
            for n, v in zip(wn, w):
                d = g.create_dataset(n, v.shape, dtype=v.dtype)
                d[:] = v
        if job.get('full_model'):
            save_attributes(root.create_group('top_level_model_weights'), 'weight_names', [])
    else:
        # Keras 3 save_weights('x.weights.h5'): layers/<class>[_n]/vars/<i>, numbered per class in
        # model order; 3.6+ puts the layer name on each vars group. 'keras213': the same names
        # under _layer_checkpoint_dependencies, the prefix Keras 3's loader falls back to.
        prefix = 'layers' if layout == 'keras3' else '_layer_checkpoint_dependencies'
        named = layout == 'keras3'
        v = f.create_group('vars')
        if named:
            v.attrs['name'] = 'vgg19'
        # A class's number is its position among the full model's layers of that class, so
        # fc2 is dense_1 even in these fixtures that leave fc1 out.
        group = {'input_layer': 'input_layer', 'input_1': 'input_layer', 'flatten': 'flatten',
                 'extra_dense': 'batch_normalization'}
        classes = {'conv': 'conv2d', 'pool': 'max_pooling2d', 'dense': 'dense'}
        for kind, cls in classes.items():
            rows = [keras for torch, keras, k in table if k == kind]
            group.update({keras: cls if i == 0 else '%s_%d' % (cls, i) for i, keras in enumerate(rows)})
        for name in names:
            vars_ = f.create_group('%s/%s/vars' % (prefix, group[name]))
            if named:
                vars_.attrs['name'] = name
            for i, x in enumerate(weights(name) or []):
                vars_[str(i)] = x
    f.close()

for job in args['jobs']:
    write(job)
"#;

fn h5py_available() -> bool {
    let ok = Command::new("python3").args(["-c", "import h5py, numpy"]).status().map(|s| s.success()).unwrap_or(false);
    if !ok && std::env::var_os("CI").is_some() {
        panic!("python3 with h5py and numpy is required under CI (.ci/run installs them)");
    }
    ok
}

/// Runs [`KERAS_WRITER`] on `safetensors` for each job.
fn h5py_write(safetensors: &Path, jobs: serde_json::Value) {
    let table: Vec<[&str; 3]> = VGG19
        .iter()
        .map(|l| {
            let kind = match l.kind {
                LayerKind::Conv { .. } => "conv",
                LayerKind::MaxPool => "pool",
                LayerKind::Dense { .. } => "dense",
            };
            [l.name, l.keras, kind]
        })
        .collect();
    let args = serde_json::json!({"safetensors": safetensors, "table": table, "jobs": jobs});
    let out = Command::new("python3").args(["-c", KERAS_WRITER, &args.to_string()]).output().unwrap();
    assert!(out.status.success(), "h5py writer failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

fn write_st(path: &Path, tensors: &[(String, ArrayD<f32>)]) {
    let views: Vec<_> = tensors.iter().map(|(n, a)| (n.clone(), a.view())).collect();
    write_safetensors(path, &views).unwrap();
}

/// Asserts the stores at `a` and `b` hold the same tensors, bit for bit.
fn assert_same_store(a: &Path, b: &Path, cut: Cut) {
    let what = b.file_name().unwrap().to_string_lossy().into_owned();
    let (a, b) = (
        WeightStore::open(a, MODEL, &tensor_specs(cut)).unwrap(),
        WeightStore::open(b, MODEL, &tensor_specs(cut)).unwrap(),
    );
    assert_eq!(a.preset(), b.preset());
    let mut compared = 0;
    for spec in tensor_specs(Cut::Fc7) {
        assert_eq!(a.contains(&spec.name), b.contains(&spec.name), "{what}: {}", spec.name);
        if a.contains(&spec.name) {
            let (x, y) = (a.view(&spec.name).unwrap(), b.view(&spec.name).unwrap());
            assert_eq!(x.shape(), y.shape(), "{what}: {}", spec.name);
            assert!(x.iter().zip(y.iter()).all(|(p, q)| p.to_bits() == q.to_bits()), "{what}: {} differs", spec.name);
            compared += 1;
        }
    }
    assert!(compared >= 32, "{what}: only {compared} tensors compared");
}

/// A dense layer's random weight and bias, torchvision layout.
fn dense(name: &str, out: usize, inp: usize, seed: u64) -> [(String, ArrayD<f32>); 2] {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let w = ArrayD::from_shape_simple_fn(vec![out, inp], || rng.random_range(-0.05f32..0.05));
    let b = ArrayD::from_shape_simple_fn(vec![out], || rng.random_range(-0.01f32..0.01));
    [(format!("{name}.weight"), w), (format!("{name}.bias"), b)]
}

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

/// The fixture writer's three layouts (rust-hdf5: v2 object headers,
/// variable-length string lists) convert back to the tensors written.
#[test]
fn writer_layouts_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = random_weights(8, Cut::Pool5);
    w.extend(dense("classifier.6", 1000, 4096, 3));
    for layout in [KerasLayout::Applications2017, KerasLayout::Keras2, KerasLayout::Keras3] {
        let h5 = tmp.path().join(format!("{layout:?}.h5"));
        write_keras_h5(&h5, &w, layout).unwrap();
        let out = tmp.path().join(format!("{layout:?}"));
        let c = convert_keras_h5(&h5, &out).unwrap();
        assert_eq!(c, Converted { tensors: 34, cut: Cut::Pool5, ignored: vec![] }, "{layout:?}");
        let store = WeightStore::open(&out, MODEL, &tensor_specs(Cut::Pool5)).unwrap();
        assert_eq!(store.preset(), Preset::Caffe);
        for (name, t) in &w {
            assert_eq!(store.view(name).unwrap(), t.view(), "{layout:?} {name}");
        }
    }
}

/// The file `keras.applications.VGG19(weights="imagenet")` downloads, in the
/// layout Keras 1 wrote it (fixed-length string lists, `*_W_1:0` datasets,
/// weightless layers listed), with full-size random weights: converted, it
/// holds exactly the tensors the torchvision-layout file converts to, and
/// VGG19 to fc7 computes bit-identical features from both.
#[test]
fn applications_file_gives_the_same_fc7_features_as_torchvision_layout() {
    if !h5py_available() {
        eprintln!("skipping: h5py not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut w = random_weights(21, Cut::Fc7);
    w.extend(dense("classifier.6", 1000, 4096, 22));
    let st = tmp.path().join("vgg19.safetensors");
    write_st(&st, &w);
    drop(w);
    let h5 = tmp.path().join("vgg19_weights_tf_dim_ordering_tf_kernels.h5");
    h5py_write(&st, serde_json::json!([{"layout": "applications-2017", "out": h5}]));
    let (a, b) = (tmp.path().join("from_st"), tmp.path().join("from_h5"));
    convert_safetensors(&st, &a, Preset::Caffe).unwrap();
    let c = convert_keras_h5(&h5, &b).unwrap();
    assert_eq!(c, Converted { tensors: 38, cut: Cut::Fc7, ignored: vec![] });
    assert_same_store(&a, &b, Cut::Fc7);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let images = Array4::from_shape_simple_fn((3, 32, 32, 3), || rng.random::<u8>());
    let fa = Vgg19::open(&a, 32, Cut::Fc7).unwrap().features(images.view()).unwrap();
    let fb = Vgg19::open(&b, 32, Cut::Fc7).unwrap().features(images.view()).unwrap();
    assert_eq!(fa.dim(), (3, 4096));
    assert!(fa.iter().any(|&v| v != 0.0), "features are all zero: the comparison would prove nothing");
    assert!(fa.iter().zip(fb.iter()).all(|(x, y)| x.to_bits() == y.to_bits()), "fc7 features differ");
}

/// Every other layout, written by h5py as the Keras version named writes it,
/// converts to exactly the tensors of the torchvision-layout file: the
/// `_notop` Applications file (pool5 cut); Keras 3 `.weights.h5` with fc2
/// and predictions (`dense_1`, `dense_2`), an f16 bias, an f64 kernel and an
/// extra layer; Keras 2 `save_weights` saved on Theano (flipped kernels) with
/// h5py 3's variable-length lists, big-endian f32 kernels, f16 and f64
/// biases and an extra layer; a full-model `.h5` (`model_weights`, Keras 3
/// legacy weight names) whose `layer_names` Keras had to chunk past 64512
/// bytes (3000 weightless layers: a multi-level group B-tree); the
/// `_layer_checkpoint_dependencies` prefix Keras 3's loader falls back to.
/// fc1 (411 MB) is left to the test above.
#[test]
fn every_keras_layout_converts_exactly() {
    if !h5py_available() {
        eprintln!("skipping: h5py not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Convolutions, fc2 and the predictions layer; without fc1 the files
    // convert to the pool5 cut.
    let mut w = random_weights(30, Cut::Pool5);
    w.extend(dense("classifier.3", 4096, 4096, 31));
    w.extend(dense("classifier.6", 1000, 4096, 32));
    // Exact in f16, so the f16 copy converts to the same f32 values.
    let b0 = w.iter_mut().find(|(n, _)| n == "features.0.bias").unwrap();
    b0.1 = ArrayD::from_shape_fn(vec![64], |i| (i[0] as f32 - 32.0) / 8.0);
    let st = tmp.path().join("vgg19.safetensors");
    write_st(&st, &w);
    let reference = tmp.path().join("reference");
    convert_safetensors(&st, &reference, Preset::Caffe).unwrap();
    let notop: Vec<_> = w.iter().filter(|(n, _)| n.starts_with("features.")).cloned().collect();
    let st_notop = tmp.path().join("notop.safetensors");
    write_st(&st_notop, &notop);
    let reference_notop = tmp.path().join("reference_notop");
    convert_safetensors(&st_notop, &reference_notop, Preset::Caffe).unwrap();

    let file = |n: &str| tmp.path().join(n);
    h5py_write(
        &st,
        serde_json::json!([
            {"layout": "keras3", "out": file("vgg19.weights.h5"), "extra": true,
             "dtypes": {"block1_conv1": ["<f4", "<f2"], "fc2": ["<f8", ">f4"]}},
        ]),
    );
    h5py_write(
        &st_notop,
        serde_json::json!([
            {"layout": "applications-2017", "out": file("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")},
            {"layout": "keras2", "out": file("keras2.h5"), "extra": true, "theano": true,
             "dtypes": {"block1_conv1": [">f4", "<f2"], "block2_conv1": [">f4", ">f8"]}},
            {"layout": "keras2", "out": file("model.h5"), "full_model": true, "pad_names": true},
            {"layout": "keras213", "out": file("keras213.weights.h5")},
        ]),
    );
    let notop_out = file("notop");
    let c = convert_keras_h5(&file("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"), &notop_out).unwrap();
    assert_eq!(c, Converted { tensors: 32, cut: Cut::Pool5, ignored: vec![] });
    assert_same_store(&reference_notop, &notop_out, Cut::Pool5);
    for (name, tensors, ignored) in [
        ("vgg19.weights.h5", 36, vec!["layers/batch_normalization"]),
        ("keras2.h5", 32, vec!["extra_dense"]),
        ("model.h5", 32, vec![]),
        ("keras213.weights.h5", 32, vec![]),
    ] {
        let out = file(&format!("{name}.store"));
        let c = convert_keras_h5(&file(name), &out).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ignored: Vec<String> = ignored.into_iter().map(String::from).collect();
        assert_eq!(c, Converted { tensors, cut: Cut::Pool5, ignored }, "{name}");
        assert_same_store(if tensors == 36 { &reference } else { &reference_notop }, &out, Cut::Pool5);
    }
    // The chunked form really is chunked, and the Theano file really is flipped.
    let py = |code: &str| {
        let o = Command::new("python3").args(["-c", code]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let keys = py(&format!(
        "import h5py; print(sorted(k for k in h5py.File({:?})['model_weights'].attrs if k.startswith('layer_names')))",
        file("model.h5").to_str().unwrap()
    ));
    assert_eq!(keys, "['layer_names0', 'layer_names1']");
    let flipped = py(&format!(
        "import h5py, numpy as np; a = h5py.File({:?})['block3_conv1/block3_conv1/kernel:0'][:]; \
         b = h5py.File({:?})['model_weights/block3_conv1/block3_conv1/kernel'][:]; \
         print(np.array_equal(a, b[::-1, ::-1]), np.array_equal(a, b))",
        file("keras2.h5").to_str().unwrap(),
        file("model.h5").to_str().unwrap()
    ));
    assert_eq!(flipped, "True False");
}

/// Runs a conversion expected to fail; checks the message names the file and
/// `names`, and that nothing was created at the output.
fn fails(input: &Path, names: &[&str]) -> String {
    let out = input.with_extension("store");
    let err = convert_keras_h5(input, &out).expect_err("must not convert").to_string();
    let file = input.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(file), "{err}");
    for n in names {
        assert!(err.contains(n), "{n} not in: {err}");
    }
    assert!(!out.exists(), "{} left behind", out.display());
    let dir = input.parent().unwrap();
    assert!(
        std::fs::read_dir(dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("partial")),
        "a partial store was left behind"
    );
    err
}

/// Runs a short h5py script with `f` open for writing at `path` and
/// `np`/`h5py` imported.
fn h5py_file(path: &Path, body: &str) {
    let code = format!("import h5py, numpy as np\nf = h5py.File({:?}, 'w')\n{body}\nf.close()", path.to_str().unwrap());
    let out = Command::new("python3").args(["-c", &code]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Keras 1 layout with `block1_conv1` only, its datasets given as Python.
fn block1(kernel: &str, bias: &str) -> String {
    format!(
        "f.attrs['layer_names'] = np.array([b'input_1', b'block1_conv1'])\n\
         f.create_group('input_1').attrs['weight_names'] = []\n\
         g = f.create_group('block1_conv1')\n\
         g.attrs['weight_names'] = np.array([b'block1_conv1_W_1:0', b'block1_conv1_b_1:0'])\n\
         g['block1_conv1_W_1:0'] = {kernel}\n\
         g['block1_conv1_b_1:0'] = {bias}"
    )
}

#[test]
fn malformed_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.h5");
    std::fs::write(&bad, b"not hdf5 at all").unwrap();
    fails(&bad, &["not a readable HDF5 file"]);

    // Our own writer's output, truncated as by an interrupted download.
    let w = random_weights(8, Cut::Pool5);
    let whole = tmp.path().join("whole.h5");
    write_keras_h5(&whole, &w, KerasLayout::Applications2017).unwrap();
    let bytes = std::fs::read(&whole).unwrap();
    let cut = tmp.path().join("cut.h5");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    fails(&cut, &["truncated"]);

    let partial: Vec<_> = w.iter().filter(|(n, _)| !n.starts_with("features.34")).cloned().collect();
    let missing = tmp.path().join("missing.h5");
    write_keras_h5(&missing, &partial, KerasLayout::Keras3).unwrap();
    fails(&missing, &["block5_conv4", "layers/conv2d_15/vars"]);

    if !h5py_available() {
        eprintln!("skipping the h5py-written cases: h5py not installed");
        return;
    }
    let kernel = "np.zeros((3, 3, 3, 64), 'f4')";
    let case = |name: &str, body: String| {
        let p = tmp.path().join(name);
        h5py_file(&p, &body);
        p
    };
    // Only block1_conv1 is there: the next convolution is missing.
    let err = fails(&case("one_layer.h5", block1(kernel, "np.zeros(64, 'f4')")), &["block1_conv2", "layer_names"]);
    assert!(err.contains("missing"), "{err}");
    let err = fails(&case("int.h5", block1(kernel, "np.zeros(64, 'i4')")), &["block1_conv1/block1_conv1_b_1:0"]);
    assert!(err.contains("integer"), "{err}");
    let err = fails(
        &case("shape.h5", block1("np.zeros((3, 3, 3, 32), 'f4')", "np.zeros(64, 'f4')")),
        &["block1_conv1/block1_conv1_W_1:0", "[3, 3, 3, 32]", "[3, 3, 3, 64]"],
    );
    assert!(err.contains("expected"), "{err}");
    fails(
        &case(
            "vgg19_weights_th_dim_ordering_th_kernels.h5",
            block1("np.zeros((64, 3, 3, 3), 'f4')", "np.zeros(64, 'f4')"),
        ),
        &["block1_conv1/block1_conv1_W_1:0", "[64, 3, 3, 3]", "Theano", "vgg19_weights_tf_dim_ordering_tf_kernels.h5"],
    );
    let three = block1(kernel, "np.zeros(64, 'f4')").replace(
        "np.array([b'block1_conv1_W_1:0', b'block1_conv1_b_1:0'])",
        "np.array([b'block1_conv1_W_1:0', b'block1_conv1_b_1:0', b'block1_conv1_b_1:0'])",
    );
    fails(&case("three.h5", three), &["block1_conv1", "3 weights"]);
    fails(
        &case("listed.h5", "f.attrs['layer_names'] = np.array([b'input_1', b'block1_conv1'])".into()),
        &["input_1", "layer_names"],
    );
    fails(&case("plain.h5", "f['x'] = np.zeros(3)".into()), &["not a Keras weights file"]);
    // Keras 3 numbers layers per class: `dense` is fc1, whatever its shape.
    let keras3 = "f['layers/conv2d/vars/0'] = np.zeros((3, 3, 3, 64), 'f4')\n\
                  f['layers/conv2d/vars/1'] = np.zeros(64, 'f4')\n\
                  f['layers/dense/vars/0'] = np.zeros((7, 5), 'f4')\n\
                  f['layers/dense/vars/1'] = np.zeros(5, 'f4')";
    fails(&case("dense.weights.h5", keras3.into()), &["layers/dense/vars/0", "[7, 5]", "[25088, 4096]"]);
    let named = "f['layers/conv2d/vars/kernel'] = np.zeros((3, 3, 3, 64), 'f4')\n\
                 f['layers/conv2d/vars/bias'] = np.zeros(64, 'f4')";
    fails(&case("named.weights.h5", named.into()), &["layers/conv2d/vars", "\"bias\""]);
}

/// Damaged files (random bytes overwritten, or cut short) are errors, never
/// panics or hangs: every size and address in them is checked.
#[test]
fn damaged_files_are_errors_not_panics() {
    if !h5py_available() {
        eprintln!("skipping: h5py not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mut runs = 0;
    for libver in ["earliest", "latest"] {
        let clean = tmp.path().join(format!("{libver}.h5"));
        let body = block1("np.ones((3, 3, 3, 64), 'f4')", "np.ones(64, '>f8')")
            .replace("f.attrs['layer_names']", "f.attrs['backend'] = b'tensorflow'\nf.attrs['layer_names']");
        h5py_file(&clean, &body);
        if libver == "latest" {
            // Same content in libhdf5's newest format.
            let code = format!(
                "import h5py\na = h5py.File({0:?})\nb = h5py.File({0:?} + '.l', 'w', libver='latest')\n\
                 [a.copy(a[k], b) for k in a]\n[b.attrs.create(k, v) for k, v in a.attrs.items()]\nb.close()",
                clean.to_str().unwrap()
            );
            let o = Command::new("python3").args(["-c", &code]).output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            std::fs::rename(clean.with_extension("h5.l"), &clean).unwrap();
        }
        let bytes = std::fs::read(&clean).unwrap();
        let err = convert_keras_h5(&clean, &tmp.path().join("clean")).unwrap_err().to_string();
        assert!(
            err.contains("missing tensor block1_conv2"),
            "{libver}: the undamaged file must get as far as the layers: {err}"
        );
        for i in 0..300 {
            let mut damaged = bytes.clone();
            if i % 10 == 0 {
                damaged.truncate(rng.random_range(0..bytes.len()));
            } else {
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..damaged.len());
                    damaged[at] = rng.random();
                }
            }
            let path = tmp.path().join("damaged.h5");
            std::fs::write(&path, &damaged).unwrap();
            let out = tmp.path().join("out");
            if convert_keras_h5(&path, &out).is_ok() {
                panic!("{libver} damage {i}: a file without block1_conv2 converted");
            }
            assert!(!out.exists());
            runs += 1;
        }
    }
    assert_eq!(runs, 600);
}

/// An existing output directory is never overwritten.
#[test]
fn existing_output_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let h5 = tmp.path().join("w.h5");
    write_keras_h5(&h5, &random_weights(2, Cut::Pool5), KerasLayout::Keras2).unwrap();
    std::fs::create_dir(tmp.path().join("out")).unwrap();
    assert!(matches!(convert_keras_h5(&h5, &tmp.path().join("out")), Err(ConvertError::Kernel(_))));
}
