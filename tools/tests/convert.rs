//! Weight conversion from safetensors checkpoints, in torchvision and timm
//! layouts, and every kind of malformed checkpoint.

use std::fs;
use std::path::Path;

use lml_kernel::vgg::{random_weights, tensor_specs, MODEL};
use lml_kernel::weights::WeightStore;
use lml_kernel::{Cut, Preset};
use lml_tools::convert::{convert_safetensors, to_timm_layout, write_safetensors, ConvertError, Converted};
use ndarray::ArrayD;

/// A safetensors file from raw parts: (name, dtype, shape, little-endian bytes).
fn raw_safetensors(path: &Path, parts: &[(String, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dtype, shape, bytes) in parts {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let text = serde_json::to_string(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    for (_, _, _, bytes) in parts {
        out.extend_from_slice(bytes);
    }
    fs::write(path, out).unwrap();
}

fn f32_parts(tensors: &[(String, ArrayD<f32>)]) -> Vec<(String, &'static str, Vec<usize>, Vec<u8>)> {
    tensors
        .iter()
        .map(|(n, t)| (n.clone(), "F32", t.shape().to_vec(), t.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect()
}

fn convert(input: &Path, out: &Path) -> Result<Converted, ConvertError> {
    convert_safetensors(input, out, Preset::Torchvision)
}

fn assert_store_equals(out: &Path, cut: Cut, tensors: &[(String, ArrayD<f32>)]) {
    let store = WeightStore::open(out, MODEL, &tensor_specs(cut)).unwrap();
    for (name, t) in tensors {
        assert_eq!(store.view(name).unwrap(), t.view(), "{name}");
    }
}

#[test]
fn torchvision_layout_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let w = random_weights(4, Cut::Pool5);
    let st = tmp.path().join("vgg19.safetensors");
    let views: Vec<_> = w.iter().map(|(n, a)| (n.clone(), a.view())).collect();
    write_safetensors(&st, &views).unwrap();
    let out = tmp.path().join("w");
    let c = convert(&st, &out).unwrap();
    assert_eq!(c, Converted { tensors: 32, cut: Cut::Pool5, ignored: vec![] });
    assert_store_equals(&out, Cut::Pool5, &w);
    assert!(matches!(convert(&st, &out), Err(ConvertError::Kernel(_))), "existing output is refused");
}

/// timm stores fc1/fc2 as convolutions and names the head `head.fc`; the
/// converter must reshape them into the dense layouts with the same values.
#[test]
fn timm_layout_through_fc7() {
    let tmp = tempfile::tempdir().unwrap();
    let w = random_weights(5, Cut::Fc7);
    let timm = to_timm_layout(w.clone());
    assert!(timm.iter().any(|(n, t)| n == "pre_logits.fc1.weight" && t.shape() == [4096, 512, 7, 7]));
    let st = tmp.path().join("timm.safetensors");
    let views: Vec<_> = timm.iter().map(|(n, a)| (n.clone(), a.view())).collect();
    write_safetensors(&st, &views).unwrap();
    let out = tmp.path().join("w");
    let c = convert(&st, &out).unwrap();
    assert_eq!((c.tensors, c.cut), (36, Cut::Fc7));
    assert_store_equals(&out, Cut::Fc7, &w);
}

#[test]
fn half_precision_sources_are_widened_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let w = random_weights(6, Cut::Pool5);
    let mut parts = f32_parts(&w);
    // features.0.bias as F16 and features.2.bias as BF16, values exact in both.
    let values: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) / 8.0).collect();
    let f16: Vec<u8> = values
        .iter()
        .flat_map(|&v| {
            // Exact for these values: sign, exponent rebias, top 10 mantissa bits.
            let b = v.to_bits();
            let h = if v == 0.0 {
                0u16
            } else {
                (((b >> 16) & 0x8000) | (((b >> 23) & 0xff) + 15 - 127) << 10 | ((b >> 13) & 0x3ff)) as u16
            };
            h.to_le_bytes()
        })
        .collect();
    let bf16: Vec<u8> = values.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect();
    for p in parts.iter_mut() {
        if p.0 == "features.0.bias" {
            (p.1, p.3) = ("F16", f16.clone());
        }
        if p.0 == "features.2.bias" {
            (p.1, p.3) = ("BF16", bf16.clone());
        }
    }
    let st = tmp.path().join("half.safetensors");
    raw_safetensors(&st, &parts);
    let out = tmp.path().join("w");
    convert(&st, &out).unwrap();
    let store = WeightStore::open(&out, MODEL, &tensor_specs(Cut::Pool5)).unwrap();
    for name in ["features.0.bias", "features.2.bias"] {
        assert_eq!(store.view(name).unwrap().iter().copied().collect::<Vec<_>>(), values, "{name}");
    }
}

/// Builds a pool5 checkpoint, applies `damage` to its parts or bytes, and
/// returns the conversion error (checking nothing was created).
fn broken(
    damage: impl FnOnce(&mut Vec<(String, &'static str, Vec<usize>, Vec<u8>)>),
    bytes: impl FnOnce(&mut Vec<u8>),
) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut parts = f32_parts(&random_weights(7, Cut::Pool5));
    damage(&mut parts);
    let st = tmp.path().join("bad.safetensors");
    raw_safetensors(&st, &parts);
    let mut raw = fs::read(&st).unwrap();
    bytes(&mut raw);
    fs::write(&st, &raw).unwrap();
    let out = tmp.path().join("w");
    let err = convert(&st, &out).expect_err("damaged checkpoint must not convert").to_string();
    assert!(!out.exists(), "nothing may be left at the output");
    assert!(fs::read_dir(tmp.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("partial")));
    assert!(err.contains("bad.safetensors"), "{err}");
    err
}

#[test]
fn malformed_checkpoints_are_clear_errors() {
    let missing = broken(|p| p.retain(|t| t.0 != "features.34.weight"), |_| {});
    assert!(missing.contains("missing tensor features.34.weight"), "{missing}");

    let shape = broken(
        |p| {
            p.iter_mut().filter(|t| t.0 == "features.0.weight").for_each(|t| {
                t.2 = vec![64, 3, 3, 2];
                t.3.truncate(64 * 3 * 3 * 2 * 4);
            })
        },
        |_| {},
    );
    assert!(shape.contains("features.0.weight") && shape.contains("[64, 3, 3, 2]"), "{shape}");

    let dtype = broken(
        |p| {
            p.iter_mut().filter(|t| t.0 == "features.5.bias").for_each(|t| {
                t.1 = "I64";
                t.3.extend(vec![0u8; t.3.len()]);
            })
        },
        |_| {},
    );
    assert!(dtype.contains("features.5.bias") && dtype.contains("I64"), "{dtype}");

    let truncated = broken(|_| {}, |b| b.truncate(b.len() - 100));
    assert!(truncated.contains("truncated"), "{truncated}");

    let header_len = broken(|_| {}, |b| b[..8].copy_from_slice(&u64::MAX.to_le_bytes()));
    assert!(header_len.contains("header length"), "{header_len}");

    let json = broken(|_| {}, |b| b[8] = b'[');
    assert!(json.contains("JSON"), "{json}");

    let size = broken(|p| p.iter_mut().filter(|t| t.0 == "features.7.bias").for_each(|t| t.3.push(0)), |_| {});
    assert!(size.contains("features.7.bias"), "{size}");
}
