//! Classifying an image with the kernel crate alone.
//!
//! A trained classifier leaves a job folder as the kernel's own folder:
//!
//! ```sh
//! lml export --job JOB --format npy --out model      # model.json, weights/, head.*.npy, stats.*.npy
//! cargo run --release -p lml-kernel --example classify -- model photo.ppm [TOP]
//! ```
//!
//! prints the `TOP` (default 5) most probable classes with their
//! probabilities, then every class's logit (as `lml predict --json` gives them). The image is a binary PPM (`P6`, 8 bits per channel: e.g.
//! `python3 -c 'from PIL import Image; Image.open("photo.jpg").convert("RGB").save("photo.ppm")'`),
//! a format simple enough to read here in a few lines, or a `.npy` of
//! `uint8 [H, W, 3]` RGB. Any size: [`Classifier::logits`] brings it to the
//! training images' size first, exactly as `lml predict` does (which reads
//! PNG and JPEG itself), so both print the same probabilities.
//!
//! The whole program is [`classify`]: open the folder, decode the image,
//! [`Classifier::logits`], softmax, [`top_k`].

use std::error::Error;
use std::path::Path;

use lml_kernel::classifier::{top_k, Classifier};
use lml_kernel::layers::softmax;
use ndarray::{Array3, Axis, Ix3};

/// Decodes a binary PPM (`P6`, maxval 255): the header's fields are
/// separated by whitespace, `#` starts a comment to the end of the line, and
/// one whitespace byte ends the header before `width × height × 3` bytes.
fn read_ppm(bytes: &[u8]) -> Result<Array3<u8>, String> {
    let mut pos = 0;
    let mut field = || -> Result<&[u8], String> {
        loop {
            match bytes.get(pos) {
                Some(b'#') => pos += bytes[pos..].iter().position(|&b| b == b'\n').unwrap_or(bytes.len() - pos),
                Some(b) if b.is_ascii_whitespace() => pos += 1,
                Some(_) => break,
                None => return Err("header ends early".into()),
            }
        }
        let start = pos;
        pos += bytes[pos..].iter().position(|b| b.is_ascii_whitespace()).unwrap_or(bytes.len() - pos);
        Ok(&bytes[start..pos])
    };
    if field()? != b"P6" {
        return Err("not a binary PPM (P6)".into());
    }
    let mut number = |what: &str| -> Result<usize, String> {
        let f = field()?;
        std::str::from_utf8(f)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad {what} {:?}", String::from_utf8_lossy(f)))
    };
    let (w, h, max) = (number("width")?, number("height")?, number("maxval")?);
    if max != 255 {
        return Err(format!("maxval {max}: only 8-bit PPM (maxval 255) is read"));
    }
    let data = &bytes[(pos + 1).min(bytes.len())..];
    let want = w.checked_mul(h).and_then(|n| n.checked_mul(3)).ok_or("width × height overflows")?;
    if w == 0 || h == 0 || data.len() != want {
        return Err(format!("{w}×{h} pixels need {want} bytes, the file has {} after its header", data.len()));
    }
    Array3::from_shape_vec((h, w, 3), data.to_vec()).map_err(|e| e.to_string())
}

/// Reads `path`: `.npy` (`uint8 [H, W, 3]`), else binary PPM.
fn read_image(path: &Path) -> Result<Array3<u8>, Box<dyn Error>> {
    if path.extension().is_some_and(|e| e == "npy") {
        let mapped = lml_kernel::npy::MappedNpy::open(path)?;
        let view = mapped.view::<u8>()?.into_dimensionality::<Ix3>()?;
        if view.shape()[2] != 3 {
            return Err(format!("{}: shape {:?}, expected [H, W, 3]", path.display(), view.shape()).into());
        }
        return Ok(view.to_owned());
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(read_ppm(&bytes).map_err(|e| format!("{}: {e}", path.display()))?)
}

/// What [`classify`] finds.
struct Classified {
    /// `[C]`.
    logits: Vec<f32>,
    /// The most probable classes, `(name, probability)`, most probable first.
    best: Vec<(String, f32)>,
}

/// Classifies the image at `image` with the classifier folder `model`:
/// its logits and the `top` most probable classes.
fn classify(model: &Path, image: &Path, top: usize) -> Result<Classified, Box<dyn Error>> {
    let classifier = Classifier::open(model)?;
    let pixels = read_image(image)?;
    let logits = classifier.logits(pixels.view().insert_axis(Axis(0)))?;
    let probabilities = softmax(logits.view());
    let best = top_k(probabilities.row(0).as_slice().expect("a fresh row"), top)
        .into_iter()
        .map(|(c, p)| (classifier.classes()[c].clone(), p))
        .collect();
    Ok(Classified { logits: logits.row(0).to_vec(), best })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, image, top) = match args.as_slice() {
        [m, i] => (m, i, Ok(5)),
        [m, i, t] => (m, i, t.parse::<usize>()),
        _ => {
            eprintln!("usage: classify MODEL_DIR IMAGE.ppm|IMAGE.npy [TOP]");
            std::process::exit(2);
        }
    };
    let Ok(top) = top else {
        eprintln!("TOP must be a number");
        std::process::exit(2);
    };
    match classify(Path::new(model), Path::new(image), top) {
        Ok(found) => {
            for (name, p) in found.best {
                println!("{name:<20} {p:.4}");
            }
            let logits: Vec<String> = found.logits.iter().map(|v| v.to_string()).collect();
            println!("logits {}", logits.join(" "));
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// The example run on generated files: a classifier of random VGG19
/// weights (to pool5 at 32×32, so the test takes seconds), a random head and
/// statistics, saved as `lml export --format npy` saves it; images as PPM
/// and `.npy`, one of another size.
#[cfg(test)]
mod tests {
    use super::*;
    use lml_kernel::standardize::FeatureStats;
    use lml_kernel::trainer::Head;
    use lml_kernel::vgg::{random_weights, MODEL};
    use lml_kernel::weights::WeightStore;
    use lml_kernel::{Cut, Preset, Vgg19};
    use ndarray::Array1;

    fn ppm(img: &Array3<u8>) -> Vec<u8> {
        let (h, w, _) = img.dim();
        let mut out = format!("P6\n# generated\n{w} {h}\n255\n").into_bytes();
        out.extend(img.iter());
        out
    }

    #[test]
    fn the_example_classifies_generated_images_as_the_classifier_does() {
        let tmp = tempfile::tempdir().unwrap();
        let w = random_weights(7, Cut::Pool5);
        WeightStore::write(
            tmp.path().join("w"),
            MODEL,
            Preset::Torchvision,
            w.iter().map(|(n, a)| (n.clone(), a.view())),
        )
        .unwrap();
        let vgg = Vgg19::open(tmp.path().join("w"), 32, Cut::Pool5).unwrap();
        let stats = FeatureStats::from_arrays(
            Array1::from_shape_fn(512, |j| (j % 7) as f32 * 0.01).into_dyn().view(),
            Array1::from_shape_fn(512, |j| 0.5 + (j % 5) as f32 * 0.1).into_dyn().view(),
        )
        .unwrap();
        let names = vec!["cat".to_string(), "dog".into(), "ship".into()];
        let c = Classifier::new(vgg, Some(stats), Head::new(3, 512, 1), names.clone(), Some((32, 32))).unwrap();
        let model = tmp.path().join("model");
        c.save(&model, Some("test")).unwrap();

        let mut state = 1u32;
        let mut image = |h, w| {
            Array3::from_shape_simple_fn((h, w, 3), || {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
        };
        // One at the training size, one larger and not square.
        for img in [image(32, 32), image(45, 70)] {
            let want = c.logits(img.view().insert_axis(Axis(0))).unwrap().row(0).to_vec();
            let p = tmp.path().join("x.ppm");
            std::fs::write(&p, ppm(&img)).unwrap();
            let Classified { logits, best } = classify(&model, &p, 2).unwrap();
            assert_eq!(logits, want, "the saved classifier gives the in-memory one's logits");
            let probs = softmax(ndarray::Array2::from_shape_vec((1, 3), want.clone()).unwrap().view());
            let order = top_k(probs.as_slice().unwrap(), 2);
            assert_eq!(best, order.iter().map(|&(k, p)| (names[k].clone(), p)).collect::<Vec<_>>());
            let n = tmp.path().join("x.npy");
            lml_kernel::npy::write_npy_atomic(&n, &img).unwrap();
            assert_eq!(classify(&model, &n, 2).unwrap().logits, want, ".npy image");
        }
        // Broken images are errors naming the file.
        for (bytes, needle) in [
            (b"P5\n2 2\n255\n....".to_vec(), "not a binary PPM"),
            (b"P6\n2 2\n255\n\x01\x02".to_vec(), "need 12 bytes"),
            (b"P6\n2 2\n65535\n".to_vec(), "only 8-bit"),
            (b"P6\n99999999999 99999999999\n255\n".to_vec(), "overflows"),
            (b"P6 2".to_vec(), "header ends early"),
        ] {
            let p = tmp.path().join("bad.ppm");
            std::fs::write(&p, &bytes).unwrap();
            let e = classify(&model, &p, 1).err().expect("an error").to_string();
            assert!(e.contains(needle) && e.contains("bad.ppm"), "{e}");
        }
    }
}
