//! Every picture, drawn as PNG and as SVG, checked for content: the PNG is
//! decoded and its pixels inspected (the series' colours inside the plot
//! area, anti-aliased text, the images copied exactly, the wrong ones framed
//! in red), the SVG parsed and its text searched for the labels.

use std::collections::HashSet;

use lml_tools::pictures::confusion::confusion_matrix;
use lml_tools::pictures::curves::{training_curves, Curves, Point};
use lml_tools::pictures::grid::{prediction_grid, GridImage, IMAGE_SIDE};
use lml_tools::pictures::plots::{bar_panels, line_panels, BarPanel, Panel, Series};
use lml_tools::pictures::{colour, Format, Picture};

/// A decoded RGB PNG.
struct Rgb {
    w: usize,
    h: usize,
    px: Vec<[u8; 3]>,
}

impl Rgb {
    fn at(&self, x: usize, y: usize) -> [u8; 3] {
        self.px[y * self.w + x]
    }
    /// Pixels of the rectangle `[x0, x1) × [y0, y1)`.
    fn region(&self, (x0, y0): (usize, usize), (x1, y1): (usize, usize)) -> Vec<[u8; 3]> {
        (y0..y1.min(self.h))
            .flat_map(|y| (x0..x1.min(self.w)).map(move |x| (x, y)))
            .map(|(x, y)| self.at(x, y))
            .collect()
    }
    fn count(&self, c: [u8; 3]) -> usize {
        self.px.iter().filter(|&&p| p == c).count()
    }
}

/// With `LML_KEEP_PICTURES=DIR`, keeps each picture drawn in DIR to look at.
fn keep(name: &str, p: &Picture) {
    if let Some(dir) = std::env::var_os("LML_KEEP_PICTURES") {
        p.write(&std::path::Path::new(&dir).join(format!("{name}.{}", p.format.extension()))).unwrap();
    }
}

fn decode(p: &Picture) -> Rgb {
    assert_eq!(p.format, Format::Png);
    let dec = png::Decoder::new(std::io::Cursor::new(&p.bytes));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!((info.width, info.height), p.size);
    let px = buf[..info.buffer_size()].chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
    Rgb { w: info.width as usize, h: info.height as usize, px }
}

fn rgb(c: plotters::style::RGBColor) -> [u8; 3] {
    [c.0, c.1, c.2]
}

/// Text was rasterised in the band: dark pixels, and the grey levels of anti-aliased glyph edges.
fn assert_text(img: &Rgb, from: (usize, usize), to: (usize, usize), what: &str) {
    let band = img.region(from, to);
    let dark = band.iter().filter(|p| p.iter().all(|&v| v < 100)).count();
    let greys: HashSet<u8> =
        band.iter().filter(|p| p[0] == p[1] && p[1] == p[2] && p[0] > 0 && p[0] < 255).map(|p| p[0]).collect();
    assert!(dark > 40, "{what}: {dark} dark pixels, no text drawn?");
    assert!(greys.len() > 10, "{what}: {} grey levels, glyphs not anti-aliased?", greys.len());
}

/// The SVG parses; returns all its text.
fn svg_text(p: &Picture) -> String {
    assert_eq!(p.format, Format::Svg);
    let s = std::str::from_utf8(&p.bytes).unwrap();
    let doc = roxmltree::Document::parse(s).unwrap_or_else(|e| panic!("SVG does not parse: {e}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let w: f64 = doc.root_element().attribute("width").unwrap().parse().unwrap();
    assert_eq!(w as u32, p.size.0);
    doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).collect::<Vec<_>>().join("\n")
}

fn curves() -> Curves {
    let train = (0..40u64)
        .map(|k| Point {
            round: k,
            loss: 2.3 * (-(k as f64) / 12.0).exp() + 0.1,
            accuracy: 1.0 - 0.9 * (-(k as f64) / 10.0).exp(),
        })
        .collect();
    let held_out = (1..=4u64)
        .map(|e| Point { round: e * 10, loss: 2.0 * (-(e as f64) / 1.5).exp() + 0.2, accuracy: 0.5 + 0.1 * e as f64 })
        .collect();
    Curves { title: "job demo, 4 workers".into(), rounds_per_epoch: 10, train, held_out }
}

#[test]
fn training_curves_show_both_series_epoch_marks_and_text() {
    let c = curves();
    let png = training_curves(&c, Format::Png).unwrap();
    keep("curves", &png);
    assert!(png.bytes.len() > 10_000 && png.bytes.len() < 200_000, "{} bytes", png.bytes.len());
    let img = decode(&png);
    assert_eq!((img.w, img.h), (960, 720));
    let colours: HashSet<[u8; 3]> = img.px.iter().copied().collect();
    assert!(colours.len() > 50, "{} distinct colours", colours.len());
    // Both series' colours in each panel's plot area (top: loss, bottom: accuracy).
    for (panel, y) in [("loss", (40, 360)), ("accuracy", (380, 700))] {
        let area = img.region((80, y.0), (950, y.1));
        for (i, name) in [(0, "training"), (1, "held-out")] {
            let n = area.iter().filter(|&&p| p == rgb(colour(i))).count();
            assert!(n > 100, "{panel} panel: {n} pixels of the {name} colour");
        }
    }
    // The epoch marks: grey dashes in the plot area.
    assert!(img.count([150, 150, 150]) > 100, "no epoch marks");
    assert_text(&img, (200, 0), (760, 36), "title");
    assert_text(&img, (0, 40), (70, 360), "loss axis labels");

    let svg = training_curves(&c, Format::Svg).unwrap();
    let t = svg_text(&svg);
    for needle in [
        "job demo, 4 workers",
        "training loss",
        "held-out loss",
        "training accuracy",
        "held-out accuracy",
        "round",
        "epoch 3",
    ] {
        assert!(t.contains(needle), "SVG lacks {needle:?}: {t}");
    }
    // No finite point: refused, not an empty picture.
    let empty = Curves { train: vec![Point { round: 0, loss: f64::NAN, accuracy: 0.0 }], ..Curves::default() };
    assert!(training_curves(&empty, Format::Png).is_err());
}

#[test]
fn confusion_matrix_shades_rows_and_writes_counts_and_names() {
    let names: Vec<String> = ["airplane", "automobile", "bird"].map(String::from).to_vec();
    // Rows: all correct; half and half; all predicted as the first class.
    let m = vec![vec![10, 0, 0], vec![0, 5, 5], vec![7, 0, 0]];
    let png = confusion_matrix(&m, &names, "held-out", Format::Png).unwrap();
    keep("confusion", &png);
    let img = decode(&png);
    assert!(png.bytes.len() < 200_000);
    // Two full cells in the darkest shade, two half cells in the middle shade
    // (the counts' text and the frames take a few of their pixels).
    let (dark, half) = (img.count([8, 48, 107]), img.count([132, 152, 181]));
    let cell = 64 * 64;
    assert!(dark > cell && dark < 2 * cell, "{dark} dark pixels");
    assert!(half > cell && half < 2 * cell, "{half} half-shade pixels");
    assert_text(&img, (0, 56), (130, 56 + 3 * 64), "row names");
    assert_text(&img, (100, 0), (400, 50), "title");
    let t = svg_text(&confusion_matrix(&m, &names, "held-out", Format::Svg).unwrap());
    for needle in [
        "airplane",
        "automobile",
        "bird",
        "held-out: 27 examples, accuracy 0.556",
        "predicted class",
        "true class",
        "10",
        "7",
    ] {
        assert!(t.contains(needle), "SVG lacks {needle:?}: {t}");
    }
    // Many classes: drawn without counts, within bounds.
    let big: Vec<Vec<u64>> = (0..100).map(|i| (0..100).map(|j| u64::from(i == j) * 3 + 1).collect()).collect();
    let img = decode(&confusion_matrix(&big, &[], "100 classes", Format::Png).unwrap());
    assert!(img.w < 1000 && img.h < 1000, "{}×{}", img.w, img.h);
}

#[test]
fn prediction_grid_copies_every_image_and_frames_the_wrong_ones() {
    // 30 images of 32×32 (and one 20×40 grey image), each a distinct flat colour
    // with a white diagonal, so that the upscaled copy can be checked exactly.
    let mut pixels: Vec<Vec<u8>> = (0..30)
        .map(|i| {
            let mut v = Vec::new();
            for y in 0..32 {
                for x in 0..32 {
                    v.extend(if x == y { [255, 255, 255] } else { [(i * 8) as u8, 100, (250 - i * 8) as u8] });
                }
            }
            v
        })
        .collect();
    pixels.push((0..20 * 40).map(|i| (i % 256) as u8).collect());
    let classes = ["cat", "dog", "ship"];
    let images: Vec<GridImage> = pixels
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let grey = i == 30;
            GridImage {
                pixels: p,
                height: if grey { 20 } else { 32 },
                width: if grey { 40 } else { 32 },
                channels: if grey { 1 } else { 3 },
                predicted: classes[i % 3].into(),
                truth: classes[if i % 7 == 0 { (i + 1) % 3 } else { i % 3 }].into(),
            }
        })
        .collect();
    let wrong = images.iter().filter(|g| g.predicted != g.truth).count();
    assert_eq!(wrong, 5);
    let png = prediction_grid(&images[..30], "held-out images", Format::Png).unwrap();
    keep("grid", &png);
    assert!(png.bytes.len() < 200_000, "{} bytes", png.bytes.len());
    let img = decode(&png);
    assert_eq!(img.w, 2 * 16 + 6 * (IMAGE_SIDE as usize + 36));
    // Each image is scaled 3.5× (32 → 112): its colour fills its box but for the diagonal.
    for i in 0..30 {
        let c = [(i * 8) as u8, 100, (250 - i * 8) as u8];
        let n = img.count(c);
        let side = IMAGE_SIDE as usize;
        assert!(n >= side * side - 2 * 4 * side && n <= side * side, "image {i}: {n} pixels of its colour");
    }
    // Wrong ones framed in red (4 px around a 112 px box), none for the right ones.
    let red = img.count([214, 39, 40]);
    assert!(red > wrong * 4 * 4 * 112 && red < wrong * 4 * 4 * 130 + 3000, "{red} red pixels for {wrong} wrong");
    assert_text(&img, (200, 0), (700, 40), "title");
    let right = prediction_grid(&images[1..3], "all right", Format::Png).unwrap();
    assert_eq!(decode(&right).count([214, 39, 40]), 0);

    let svg = prediction_grid(&images, "held-out images", Format::Svg).unwrap();
    keep("grid", &svg);
    let s = std::str::from_utf8(&svg.bytes).unwrap();
    assert_eq!(s.matches("<image ").count(), 31);
    assert!(s.contains("data:image/png;base64,iVBORw0KGgo"), "embedded PNGs");
    let t = svg_text(&svg);
    for needle in ["held-out images: 26 of 31 correct", "true: dog", "× cat"] {
        assert!(t.contains(needle), "SVG lacks {needle:?}: {t}");
    }
}

#[test]
fn line_and_bar_panels_draw_every_series_and_bar() {
    let workers: [f64; 6] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0];
    let seed = [221.0, 193.0, 157.0, 139.0, 118.0, 132.0];
    let panels = vec![
        Panel {
            title: "measured here".into(),
            x_label: "workers".into(),
            y_label: "time (s)".into(),
            series: vec![Series {
                name: "local runtime".into(),
                points: workers.iter().map(|&w| (w, 10.0 / w.min(2.0) + w * 0.1)).collect(),
                dashed: false,
            }],
            log2_x: true,
        },
        Panel {
            title: "AWS Lambda".into(),
            x_label: "workers".into(),
            y_label: "time (min)".into(),
            series: vec![
                Series {
                    name: "seed, measured".into(),
                    points: workers.iter().copied().zip(seed).collect(),
                    dashed: false,
                },
                Series {
                    name: "ours, projected".into(),
                    points: workers.iter().map(|&w| (w, 20.0 / w + 5.0)).collect(),
                    dashed: true,
                },
            ],
            log2_x: true,
        },
    ];
    let png = line_panels("Fig. 12: time against workers", &panels, Format::Png).unwrap();
    keep("lines", &png);
    let img = decode(&png);
    assert_eq!((img.w, img.h), (1120, 520));
    for (i, (x0, x1)) in [(0, (0, 560)), (0, (560, 1120)), (1, (560, 1120))] {
        let n = img.region((x0, 40), (x1, 500)).iter().filter(|&&p| p == rgb(colour(i))).count();
        assert!(n > 150, "series {i} in x {x0}..{x1}: {n} pixels");
    }
    assert_eq!(img.region((0, 40), (560, 500)).iter().filter(|&&p| p == rgb(colour(1))).count(), 0);
    assert_text(&img, (300, 0), (820, 36), "title");
    let t = svg_text(&line_panels("Fig. 12", &panels, Format::Svg).unwrap());
    for needle in
        ["measured here", "AWS Lambda", "seed, measured", "ours, projected", "workers", "time (min)", "32", "16"]
    {
        assert!(t.contains(needle), "SVG lacks {needle:?}: {t}");
    }

    let bars = vec![BarPanel {
        title: "this machine".into(),
        y_label: "time (s)".into(),
        bars: vec![("one process".into(), 12.5), ("local runtime, 1 worker".into(), 20.0), ("16 workers".into(), 9.0)],
        unit: " s".into(),
    }];
    let png = bar_panels("Fig. 14", &bars, Format::Png).unwrap();
    keep("bars", &png);
    let img = decode(&png);
    let heights: Vec<usize> = (0..3).map(|i| img.count(rgb(colour(i)))).collect();
    // Bar areas in proportion to the values (same widths).
    assert!(heights[1] > heights[0] && heights[0] > heights[2], "{heights:?}");
    let ratio = heights[1] as f64 / heights[2] as f64;
    assert!((ratio - 20.0 / 9.0).abs() < 0.15, "areas {heights:?}");
    let t = svg_text(&bar_panels("Fig. 14", &bars, Format::Svg).unwrap());
    for needle in ["one process", "12.5 s", "20.0 s", "9.0 s", "16 workers"] {
        assert!(t.contains(needle), "SVG lacks {needle:?}: {t}");
    }
}

#[test]
fn pictures_are_published_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sub/curves.png");
    let p = training_curves(&curves(), Format::from_path(&path).unwrap()).unwrap();
    p.write(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), p.bytes);
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["curves.png"], "a temp file was left");
}
