//! `lml report` on a job trained here (generated 32×32 images of four
//! classes, one named `<b>&bars` to catch unescaped HTML, random VGG19
//! weights to pool5, two workers): every section with the job's facts, the
//! accuracy `lml evaluate` and `lml status` print, every embedded picture
//! decoded, nothing outside the file; the sections that need data saying
//! why when it is gone; a missing job failing with nothing written; and the
//! page rendered by a real browser (headless Chromium).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lml_kernel::npy::write_npy_atomic;
use lml_kernel::vgg::{random_weights, MODEL};
use lml_kernel::weights::WeightStore;
use lml_kernel::{Cut, Preset};
use serde_json::Value;

const CLASSES: [&str; 4] = ["stripes", "<b>&bars", "waves", "checks"];
const ESCAPED: &str = "&lt;b&gt;&amp;bars";
const JOB: &str = "rep-1";

fn run(args: &[&str], calibration: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lml"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        // The planner's documented default speeds, not this machine's calibration.
        .env("LML_CALIBRATION", calibration)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A storage root with generated images (`data/`: 48 train, 24 test,
/// `classes.txt`), random VGG19 weights to pool5 (`vgg/`) and job [`JOB`]
/// trained on them for 2 epochs (its workers extract the features first).
struct Trained {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Trained {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        for (split, n, seed) in [("train", 48, 1), ("test", 24, 2)] {
            let (x, y) = lml_tools::synth::images(n, CLASSES.len(), 32, seed);
            write_npy_atomic(data.join(format!("{split}_x.npy")), &x).unwrap();
            write_npy_atomic(data.join(format!("{split}_y.npy")), &y).unwrap();
        }
        std::fs::write(data.join("classes.txt"), CLASSES.join("\n") + "\n").unwrap();
        let w = random_weights(5, Cut::Pool5);
        WeightStore::write(root.join("vgg"), MODEL, Preset::Torchvision, w.iter().map(|(n, a)| (n.clone(), a.view())))
            .unwrap();
        let t = Trained { _tmp: tmp, root };
        let (data, vgg) = (t.root.join("data"), t.root.join("vgg"));
        let (ok, stdout, stderr) = t.lml(&[
            "train",
            "--root",
            t.s(),
            "--images",
            data.to_str().unwrap(),
            "--weights",
            vgg.to_str().unwrap(),
            "--cut",
            "pool5",
            "--job",
            JOB,
            "--workers",
            "2",
            "--batch",
            "8",
            "--epochs",
            "2",
        ]);
        assert!(ok && stdout.contains("finished (rounds)"), "train\nstdout:\n{stdout}\nstderr:\n{stderr}");
        t
    }

    fn s(&self) -> &str {
        self.root.to_str().unwrap()
    }

    fn lml(&self, args: &[&str]) -> (bool, String, String) {
        run(args, &self.root.join("no-calibration.json"))
    }

    /// `lml report JOB --root R extra…`; the page's text.
    fn report(&self, extra: &[&str]) -> String {
        let mut args = vec!["report", JOB, "--root", self.s()];
        args.extend(extra);
        let (ok, stdout, stderr) = self.lml(&args);
        assert!(ok, "{args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        let out = match extra.iter().position(|&a| a == "--out") {
            Some(i) => PathBuf::from(extra[i + 1]),
            None => self.root.join("jobs").join(JOB).join("report.html"),
        };
        assert!(stdout.contains(&format!("wrote {}", out.display())), "{stdout}");
        std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()))
    }
}

/// The HTML of section `id` (from its opening tag to the next section's).
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let open = format!("<section id=\"{id}\">");
    let start = html.find(&open).unwrap_or_else(|| panic!("no section {id}"));
    let end = html[start..].find("</section>").map_or(html.len(), |e| start + e);
    &html[start..end]
}

/// Decodes RFC 4648 base64 (with padding).
fn unbase64(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {:?}", c as char),
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(value(c)) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// Every `data:image/png;base64,…` PNG in `html`, decoded.
fn pngs(html: &str) -> Vec<image::RgbImage> {
    const PREFIX: &str = "src=\"data:image/png;base64,";
    html.match_indices(PREFIX)
        .map(|(i, _)| {
            let start = i + PREFIX.len();
            let end = start + html[start..].find('"').unwrap();
            image::load_from_memory_with_format(&unbase64(&html[start..end]), image::ImageFormat::Png)
                .unwrap_or_else(|e| panic!("embedded PNG does not decode: {e}"))
                .to_rgb8()
        })
        .collect()
}

fn distinct_colours(img: &image::RgbImage) -> usize {
    img.pixels().map(|p| p.0).collect::<HashSet<_>>().len()
}

/// Every `src` is a `data:` URI, every `href` an anchor in the page; no
/// script, stylesheet link or other fetch.
fn assert_self_contained(html: &str) {
    for (i, _) in html.match_indices("src=\"") {
        assert!(html[i..].starts_with("src=\"data:"), "external src: {}", &html[i..(i + 60).min(html.len())]);
    }
    for (i, _) in html.match_indices("href=\"") {
        assert!(html[i..].starts_with("href=\"#"), "link out of the page: {}", &html[i..(i + 60).min(html.len())]);
    }
    // The inline SVG names its XML namespaces, which are never fetched.
    let text = html
        .replace("xmlns=\"http://www.w3.org/2000/svg\"", "")
        .replace("xmlns:xlink=\"http://www.w3.org/1999/xlink\"", "");
    for bad in ["http:", "https:", "<script", "<link", "<iframe", "url(", "@import", "file:"] {
        assert!(!text.contains(bad), "{bad} in the page");
    }
}

#[test]
fn report_holds_every_section_with_the_jobs_facts() {
    let t = Trained::new();
    let html = t.report(&[]);
    // The job's facts.
    let spec = section(&html, "spec");
    for needle in [
        format!("<th>job</th><td>{JOB}</td>"),
        "<th>workers</th><td>2</td>".into(),
        "<th>epochs</th><td>2</td>".into(),
        "<th>training examples</th><td>48</td>".into(),
        format!("4: stripes, {ESCAPED}, waves, checks"),
    ] {
        assert!(spec.contains(&needle), "spec lacks {needle}:\n{spec}");
    }
    // Class names are escaped everywhere, never markup.
    assert!(!html.contains("<b>&"), "an unescaped class name");
    assert!(html.contains(ESCAPED));

    // The accuracy `lml evaluate` and `lml status` print.
    let data = t.root.join("data");
    let (ok, stdout, stderr) =
        t.lml(&["evaluate", "--job", JOB, "--root", t.s(), "--data", data.to_str().unwrap(), "--json"]);
    assert!(ok, "{stderr}");
    let ev: Value = serde_json::from_str(&stdout).unwrap();
    let eval = section(&html, "evaluation");
    let line = format!(
        "accuracy {:.4} ({} of {} correct) on 24 images of split test",
        ev["accuracy"].as_f64().unwrap(),
        ev["correct"],
        ev["images"]
    );
    assert!(eval.contains(&line), "evaluation lacks {line:?}:\n{eval}");
    let (ok, status, stderr) = t.lml(&["status", JOB, "--root", t.s()]);
    assert!(ok, "{stderr}");
    let final_line = status.lines().find(|l| l.starts_with("final accuracy")).expect(&status);
    assert!(section(&html, "overview").contains(final_line), "overview lacks {final_line:?}");

    // Timings and cost.
    let timings = section(&html, "timings");
    let rounds = status.lines().find(|l| l.starts_with(&format!("job {JOB}: finished"))).expect(&status);
    let done = rounds.split(", ").nth(1).unwrap().split(" of").next().unwrap();
    for needle in [format!("<th>rounds recorded</th><td>{done} of {done}</td>"), "total wall time".into()] {
        assert!(timings.contains(&needle), "timings lack {needle}:\n{timings}");
    }
    assert!(timings.contains("worker invocations") && timings.contains("Feature extraction"), "{timings}");
    let cost = section(&html, "cost");
    for needle in ["<td>arm64</td>", "<td>x86_64</td>", "2 workers × 3538 MB", "$"] {
        assert!(cost.contains(needle), "cost lacks {needle}:\n{cost}");
    }

    // The pictures: the curves as inline SVG, the heat map and grid as PNGs.
    let curves = section(&html, "curves");
    let svg = &curves[curves.find("<svg").expect("no inline svg")..curves.find("</svg>").unwrap() + 6];
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("inline SVG does not parse: {e}"));
    let text: String = doc.descendants().filter_map(|n| n.text()).collect();
    assert!(text.contains(&format!("job {JOB}")), "{text}");
    assert!(doc.descendants().filter(|n| n.has_tag_name("polyline") || n.has_tag_name("path")).count() >= 2);
    let images = pngs(&html);
    assert_eq!(images.len(), 2, "heat map and grid");
    assert_eq!(pngs(eval).len(), 1);
    assert_eq!(pngs(section(&html, "predictions")).len(), 1);
    for img in &images {
        assert!(img.width() >= 200 && img.height() >= 200, "{}×{}", img.width(), img.height());
        let n = distinct_colours(img);
        assert!(n > 20, "{n} colours");
    }
    assert_self_contained(&html);
}

#[test]
fn missing_data_is_said_in_its_sections_and_a_missing_job_writes_nothing() {
    let t = Trained::new();
    // The held-out images the spec names are gone: the page is still
    // written, the data sections say why, the others are whole.
    let test_x = t.root.join("data/test_x.npy");
    std::fs::rename(&test_x, t.root.join("data/moved.npy")).unwrap();
    let html = t.report(&[]);
    for (id, why) in [("evaluation", "no evaluation: "), ("predictions", "no prediction grid: ")] {
        let s = section(&html, id);
        assert!(s.contains(&format!("<p class=\"missing\">{why}")), "{id}:\n{s}");
        assert!(s.contains(test_x.to_str().unwrap()) && s.contains("give --data DIR"), "{id} names the file:\n{s}");
    }
    assert!(pngs(&html).is_empty());
    assert!(section(&html, "curves").contains("<svg"), "the curves stay");
    assert!(section(&html, "spec").contains(&format!("<td>{JOB}</td>")));
    assert_self_contained(&html);

    // --data naming a folder without the split: the sections name the file.
    let empty = t.root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = t.root.join("out/page.html");
    let html = t.report(&["--data", empty.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let s = section(&html, "evaluation");
    assert!(s.contains("no evaluation: ") && s.contains("test_x.npy"), "{s}");

    // A missing job: a clear error, and no page (nor a temporary file) left.
    let out = t.root.join("pages/nope.html");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let (ok, stdout, stderr) = t.lml(&["report", "nope", "--root", t.s(), "--out", out.to_str().unwrap()]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("no job nope under"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(std::fs::read_dir(out.parent().unwrap()).unwrap().count(), 0, "something was written");
    // A malformed config: the error names the job and the file.
    let cfg = t.root.join("jobs").join(JOB).join("config.json");
    std::fs::write(&cfg, "{").unwrap();
    let (ok, _, stderr) = t.lml(&["report", JOB, "--root", t.s(), "--out", out.to_str().unwrap()]);
    assert!(!ok && stderr.contains(JOB) && stderr.contains("config.json"), "{stderr}");
    assert!(!out.exists());
}

/// Where the browser is expected (Debian's `chromium` package).
const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs `cmd`, killing it after `limit`; its exit status, or `None` if killed.
fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Option<std::process::ExitStatus> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn report_renders_in_a_real_browser() {
    if !Path::new(CHROMIUM).exists() {
        if std::env::var("LML_SKIP_BROWSER").as_deref() == Ok("1") {
            let line = format!(
                "SKIPPED: {CHROMIUM} is missing and LML_SKIP_BROWSER=1: the report was NOT rendered in a browser"
            );
            println!("{line}");
            eprintln!("{line}");
            return;
        }
        panic!(
            "{CHROMIUM} is missing: install it (`apt-get install -y chromium`, as .ci/run does), or set LML_SKIP_BROWSER=1 to skip this test"
        );
    }
    let t = Trained::new();
    let page = t.root.join("page.html");
    t.report(&["--out", page.to_str().unwrap()]);
    let profile = tempfile::tempdir().unwrap();
    let shot = t.root.join("shot.png");
    let status = run_with_timeout(
        Command::new(CHROMIUM).args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,3000",
            &format!("file://{}", page.display()),
        ]),
        Duration::from_secs(60),
    )
    .expect("chromium did not finish within 60 s (killed)");
    assert!(status.success(), "chromium: {status}");
    let img = image::open(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display())).to_rgb8();
    assert_eq!((img.width(), img.height()), (1200, 3000));
    let n = distinct_colours(&img);
    assert!(n > 100, "{n} colours: a blank page?");
    // The pictures were drawn: saturated pixels (the curves' series, the
    // heat map's blues, the grid's images and red frames), where text is grey.
    let saturated = img.pixels().filter(|p| p.0.iter().max().unwrap() - p.0.iter().min().unwrap() > 60).count();
    assert!(saturated > 5_000, "{saturated} coloured pixels: pictures not rendered?");
    // The curves' training series (inline SVG), in its exact colour.
    let [r, g, b] = [31u8, 119, 180];
    let series = img.pixels().filter(|p| p.0 == [r, g, b]).count();
    assert!(series > 100, "{series} pixels of the training curve's colour");
    // The image area is not uniform: colour in many rows.
    let rows = (0..img.height())
        .filter(|&y| {
            (0..img.width()).any(|x| {
                let p = img.get_pixel(x, y).0;
                p.iter().max().unwrap() - p.iter().min().unwrap() > 60
            })
        })
        .count();
    assert!(rows > 500, "{rows} rows with colour");
}
