//! `lml experiment` at the tiny scale and `lml plot` on a finished job, as a
//! user runs them: the tables printed and written (markdown and CSV, with
//! the seed's rows), the figures written and checked for content (PNG
//! decoded, SVG parsed).

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use lml_kernel::npy::write_npy_atomic;
use lml_tools::pictures::colour;
use ndarray::{Array1, Array2};

fn lml(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lml")).args(args).output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "lml {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    (stdout, stderr)
}

/// The CSV's rows (header first): RFC 4180 fields, quoted ones unquoted (no newlines in cells here).
fn csv(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let parse = |line: &str| {
        let (mut fields, mut field, mut quoted, mut chars) =
            (Vec::new(), String::new(), false, line.chars().peekable());
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                ('"', _) => quoted = !quoted,
                (',', false) => fields.push(std::mem::take(&mut field)),
                (c, _) => field.push(c),
            }
        }
        fields.push(field);
        fields
    };
    text.lines().map(parse).collect()
}

/// Decodes a PNG: its size and RGB pixels.
fn png(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    let px = buf[..info.buffer_size()].chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
    (info.width, info.height, px)
}

/// A figure of the experiments: PNG of two panels with both series' colours
/// and many shades (text, lines), under 200 KB; SVG that parses and names `labels`.
fn check_figure(dir: &Path, stem: &str, labels: &[&str]) {
    let path = dir.join(format!("{stem}.png"));
    let bytes = std::fs::metadata(&path).unwrap().len();
    assert!(bytes > 5_000 && bytes < 200_000, "{stem}.png: {bytes} bytes");
    let (w, h, px) = png(&path);
    assert_eq!((w, h), (1120, 520), "{stem}.png");
    let distinct: HashSet<[u8; 3]> = px.iter().copied().collect();
    assert!(distinct.len() > 40, "{stem}.png: {} colours", distinct.len());
    for i in 0..2 {
        let c = colour(i);
        let n = px.iter().filter(|p| **p == [c.0, c.1, c.2]).count();
        assert!(n > 100, "{stem}.png: {n} pixels of series {i}'s colour");
    }
    let svg = std::fs::read_to_string(dir.join(format!("{stem}.svg"))).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{stem}.svg: {e}"));
    let text: String = doc.descendants().filter_map(|n| n.has_tag_name("text").then(|| n.text()).flatten()).collect();
    for l in labels {
        assert!(text.contains(l), "{stem}.svg lacks {l:?}: {text}");
    }
}

/// The cell of `row` under the column whose header starts with `col`.
fn cell<'a>(rows: &'a [Vec<String>], row: usize, col: &str) -> &'a str {
    let i = rows[0].iter().position(|h| h.starts_with(col)).unwrap_or_else(|| panic!("no column {col}: {:?}", rows[0]));
    &rows[row][i]
}

#[test]
fn time_limit_reproduces_table_3_rows_with_the_seeds_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("lab"), tmp.path().join("out"));
    let (stdout, _) = lml(&[
        "experiment",
        "time-limit",
        "--scale",
        "tiny",
        "--root",
        root.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(stdout.contains("Table 3: training steps in one invocation"), "{stdout}");
    let rows = csv(&out.join("table3-time-limit.csv"));
    assert_eq!(rows.len(), 3, "header + the tiny scale's 2 limits: {rows:?}");
    // The seed's rows for 2 and 8 minutes: 4 and 37 steps.
    assert_eq!((cell(&rows, 1, "limit (min)"), cell(&rows, 1, "seed: total")), ("2", "4"));
    assert_eq!(
        (cell(&rows, 2, "limit (min)"), cell(&rows, 2, "seed: total"), cell(&rows, 2, "seed: epochs")),
        ("8", "37", "1")
    );
    for r in 1..3 {
        let first: u64 = cell(&rows, r, "here: steps in one").split(' ').next().unwrap().parse().unwrap();
        // "3", or "3, then timed out" when a step outran the limit on every try (a loaded machine).
        let invocations = cell(&rows, r, "here: invocations");
        let timed_out = invocations.ends_with("then timed out");
        let invocations: u64 = invocations.split(',').next().unwrap().parse().unwrap();
        assert!((1..=8).contains(&first) || timed_out, "row {r}: {first} steps in the first invocation");
        // Each invocation runs at least one step: the job of 8 steps needs at most 8.
        assert!((1..=8).contains(&invocations), "row {r}: {invocations} invocations");
        if !timed_out {
            assert_eq!(invocations == 1, first == 8, "row {r}: one invocation iff it did every step");
        }
        let projected: u64 = cell(&rows, r, "AWS projection").split(' ').next().unwrap().parse().unwrap();
        assert!(projected > 0, "row {r}");
    }
    let md = std::fs::read_to_string(out.join("table3-time-limit.md")).unwrap();
    assert_eq!(md.lines().filter(|l| l.starts_with("| ")).count(), 3, "{md}");
    check_figure(
        &out,
        "table3-time-limit",
        &["seed, AWS Lambda (measured)", "ours, local runtime (measured)", "ours (projected)"],
    );
}

#[test]
fn memory_reproduces_table_5_rows_with_shares_and_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("lab"), tmp.path().join("out"));
    lml(&["experiment", "memory", "--scale", "tiny", "--root", root.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let rows = csv(&out.join("table5-memory.csv"));
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(
        (
            cell(&rows, 1, "memory"),
            cell(&rows, 1, "seed: time"),
            cell(&rows, 1, "vCPU share"),
            cell(&rows, 1, "threads")
        ),
        ("1", "out of memory", "0.58", "1")
    );
    assert_eq!(
        (
            cell(&rows, 2, "memory"),
            cell(&rows, 2, "seed: time"),
            cell(&rows, 2, "vCPU share"),
            cell(&rows, 2, "threads")
        ),
        ("10", "11 min 42 s", "5.79", "6")
    );
    // The projection divides one step's time by the share: 10 GB is 10 × faster than 1 GB.
    let min = |r: usize| -> f64 { cell(&rows, r, "AWS projection").trim_end_matches(" min").parse().unwrap() };
    assert!(min(1) > 5.0 * min(2), "{} vs {}", min(1), min(2));
    check_figure(&out, "table5-memory", &["memory (GB)", "seed (measured)", "ours (projected)"]);
}

#[test]
fn workers_reproduces_table_6_and_draws_figures_12_and_14() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("lab"), tmp.path().join("out"));
    let (stdout, _) = lml(&[
        "experiment",
        "workers",
        "--scale",
        "tiny",
        "--root",
        root.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(stdout.contains("Table 6: time against the number of workers"), "{stdout}");
    let rows = csv(&out.join("table6-workers.csv"));
    assert_eq!(rows.len(), 4, "header, 1 and 2 workers, one process: {rows:?}");
    assert_eq!(
        (cell(&rows, 1, "workers"), cell(&rows, 1, "seed: time"), cell(&rows, 1, "here: batch")),
        ("1", "221", "16")
    );
    assert_eq!(
        (cell(&rows, 2, "workers"), cell(&rows, 2, "seed: time"), cell(&rows, 2, "here: batch")),
        ("2", "193", "8")
    );
    assert!(cell(&rows, 3, "workers").starts_with("one process"), "{rows:?}");
    for r in 1..=3 {
        assert_eq!(cell(&rows, r, "here: rounds"), "2", "32 images, 16 a round");
        let s: f64 = cell(&rows, r, "here: time").parse().unwrap();
        assert!(s > 0.0);
    }
    // Every round invokes each worker and a combine.
    let inv = |r: usize| -> u64 { cell(&rows, r, "here: invocations").parse().unwrap() };
    assert!(inv(1) >= 2 * 2 && inv(2) >= 2 * 3, "{} {}", inv(1), inv(2));
    let aws = |r: usize| -> f64 { cell(&rows, r, "AWS projection").parse().unwrap() };
    assert!(aws(1) > 0.0 && aws(2) > 0.0);
    check_figure(
        &out,
        "fig12-workers",
        &["workers", "seed (measured)", "ours (projected)", "local runtime, 1 vCPU a worker"],
    );
    check_figure(&out, "fig14-vm", &["VM, 4 vCPUs,", "workers of 8 GB", "one process,", "Lambda, 16"]);
}

/// Features where class `c` lights up dimension `c` (plus a little noise).
fn write_split(dir: &Path, split: &str, n: usize, seed: u64) {
    let (classes, dim) = (3, 8);
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as f32 / (1u64 << 31) as f32
    };
    let y = Array1::from_shape_fn(n, |i| (i % classes) as u32);
    let x = Array2::from_shape_fn((n, dim), |(i, j)| if j == y[i] as usize { 1.0 } else { 0.0 } + 0.3 * next());
    std::fs::create_dir_all(dir).unwrap();
    write_npy_atomic(dir.join(format!("{split}_features.npy")), &x).unwrap();
    write_npy_atomic(dir.join(format!("{split}_y.npy")), &y).unwrap();
}

#[test]
fn plot_draws_a_finished_jobs_curves() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap();
    let feats = tmp.path().join("feats");
    write_split(&feats, "train", 90, 1);
    write_split(&feats, "test", 30, 2);
    let f = feats.to_str().unwrap();
    let common =
        ["--root", root, "--features", f, "--workers", "3", "--epochs", "3", "--batch", "5", "--memory", "1769"];
    lml(&[&["train", "--job", "every"][..], &common, &["--eval-every", "1"]].concat());
    lml(&[&["train", "--job", "epochs"][..], &common].concat());
    // Every round evaluated: 18 training and 18 held-out points.
    let png_path = tmp.path().join("every.png");
    let (stdout, _) = lml(&["plot", "every", "--root", root, "--out", png_path.to_str().unwrap()]);
    assert!(stdout.contains("18 rounds, 18 held-out evaluation(s)"), "{stdout}");
    let (w, h, px) = png(&png_path);
    assert_eq!((w, h), (960, 720));
    for i in 0..2 {
        let c = colour(i);
        let n = px.iter().filter(|p| **p == [c.0, c.1, c.2]).count();
        assert!(n > 500, "series {i}: {n} pixels");
    }
    assert!(px.iter().filter(|p| **p == [150, 150, 150]).count() > 50, "epoch marks");
    // By default, evaluated at each epoch's end; SVG names the job and the series.
    let svg_path = tmp.path().join("epochs.svg");
    let (stdout, _) = lml(&["plot", "epochs", "--root", root, "--out", svg_path.to_str().unwrap()]);
    assert!(stdout.contains("18 rounds, 3 held-out evaluation(s)"), "{stdout}");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let text: String = doc.descendants().filter_map(|n| n.has_tag_name("text").then(|| n.text()).flatten()).collect();
    for l in ["job epochs, 3 workers", "training loss", "held-out accuracy", "epoch 2"] {
        assert!(text.contains(l), "{l:?}: {text}");
    }
    // A job that does not exist, or an unknown format: errors naming them.
    let out = Command::new(env!("CARGO_BIN_EXE_lml")).args(["plot", "nope", "--root", root]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no job nope"));
    let out = Command::new(env!("CARGO_BIN_EXE_lml"))
        .args(["plot", "every", "--root", root, "--out", "x.jpg"])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("expected a .png or .svg"));
}
