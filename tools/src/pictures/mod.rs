//! Pictures: training curves, a confusion-matrix heat map, a grid of
//! classified images, and line and bar plots for the experiments, as PNG or
//! SVG, drawn with `plotters`.
//!
//! Every function takes plain data (numbers, strings, `u8` pixels) and
//! returns a [`Picture`]: the encoded bytes, which [`Picture::write`]
//! publishes to a file (temp file, fsync, rename) or a caller embeds
//! elsewhere (an HTML page). The format is chosen by the caller, usually
//! from the output file's extension ([`Format::from_path`]).
//!
//! # Text without system fonts
//! Text in a PNG is rasterised by `ab_glyph` from a font compiled into the
//! binary ([`FONT`]: Ubuntu Light from the `epaint_default_fonts` crate,
//! 362 KB, Ubuntu Font Licence 1.0), placed glyph by glyph by `glyphs.rs`
//! (plotters' own placement drops the glyphs' side bearings) and registered
//! with plotters as `sans-serif` for its text measurements. plotters'
//! default `ttf` feature (font-kit, which finds fonts through fontconfig) is
//! off, so nothing here reads the machine's fonts: a PNG looks the same on
//! every machine. An SVG names the family `sans-serif` and leaves the glyphs
//! to the viewer.
//!
//! # Pictures
//! * [`curves::training_curves`]: training and held-out loss and accuracy
//!   per round, with epoch marks (`lml plot`);
//! * [`confusion::confusion_matrix`]: counts per (true, predicted) class,
//!   shaded by the share of the true class;
//! * [`grid::prediction_grid`]: images (any size, upscaled) with predicted
//!   and true labels, wrong ones framed in red (the seed's Fig. 13);
//! * [`plots::line_panels`], [`plots::bar_panels`]: the experiments'
//!   figures (the seed's Figs. 12 and 14).

pub mod confusion;
pub mod curves;
mod glyphs;
pub mod grid;
pub mod plots;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

/// The font every PNG's text is drawn with (see the module docs).
pub const FONT: &[u8] = epaint_default_fonts::UBUNTU_LIGHT;

/// The family name text is drawn in.
pub const FAMILY: &str = "sans-serif";

/// Errors of drawing or writing a picture.
#[derive(Debug, thiserror::Error)]
pub enum PictureError {
    #[error("picture {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("picture {path}: unknown format (expected a .png or .svg file name)")]
    Format { path: PathBuf },
    #[error("{what}: {message}")]
    Data { what: &'static str, message: String },
    #[error("drawing {what}: {message}")]
    Draw { what: &'static str, message: String },
    #[error("encoding a PNG: {0}")]
    Png(String),
}

impl PictureError {
    fn data(what: &'static str, message: impl Into<String>) -> Self {
        PictureError::Data { what, message: message.into() }
    }
}

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
}

impl Format {
    /// The format a file name asks for: `.png` or `.svg` (any case).
    ///
    /// # Errors
    /// [`PictureError::Format`] for any other name.
    pub fn from_path(path: &Path) -> Result<Format, PictureError> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => Err(PictureError::Format { path: path.to_owned() }),
        }
    }

    /// The file extension, without the dot.
    pub const fn extension(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Svg => "svg",
        }
    }
}

/// An encoded picture.
#[derive(Clone, Debug, PartialEq)]
pub struct Picture {
    pub format: Format,
    /// Width and height in pixels (an SVG's user units).
    pub size: (u32, u32),
    pub bytes: Vec<u8>,
}

impl Picture {
    /// Publishes the picture at `path`: written to a temporary file beside
    /// it, fsynced, then renamed over `path`, so a reader never sees a
    /// partial file. Creates the parent folder.
    ///
    /// # Errors
    /// [`PictureError::Io`] naming the path that failed.
    pub fn write(&self, path: &Path) -> Result<(), PictureError> {
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| PictureError::Io { path: p, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let name = path.file_name().ok_or_else(|| PictureError::Format { path: path.to_owned() })?;
        let tmp = path.with_file_name(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
        let result = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&self.bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io(path))
    }
}

/// Registers [`FONT`] as [`FAMILY`] with plotters, once per process.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is a constant compiled into the binary: failing to parse
        // it is a build defect, not an input error.
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            panic!("the embedded font does not parse");
        }
    });
}

/// Something drawn the same way on either backend.
trait Draw {
    /// What is drawn, for error messages.
    const WHAT: &'static str;
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PictureError>;
}

/// A drawn canvas before encoding: RGB pixels or SVG text.
enum Canvas {
    Rgb { size: (u32, u32), pixels: Vec<u8> },
    Svg { size: (u32, u32), text: String },
}

/// Draws `d` on a white canvas of `size` in `format`.
fn render<D: Draw>(d: &D, format: Format, size: (u32, u32)) -> Result<Canvas, PictureError> {
    register_font();
    let (w, h) = size;
    if w == 0 || h == 0 || u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(PictureError::data(D::WHAT, format!("canvas {w}×{h} is empty or larger than {MAX_PIXELS} pixels")));
    }
    match format {
        Format::Png => {
            let mut pixels = vec![255u8; w as usize * h as usize * 3];
            {
                let root = glyphs::Glyphs::new(BitMapBackend::with_buffer(&mut pixels, size)).into_drawing_area();
                root.fill(&WHITE).map_err(drawing(D::WHAT))?;
                d.draw(&root)?;
                root.present().map_err(drawing(D::WHAT))?;
            }
            Ok(Canvas::Rgb { size, pixels })
        }
        Format::Svg => {
            let mut text = String::new();
            {
                let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
                root.fill(&WHITE).map_err(drawing(D::WHAT))?;
                d.draw(&root)?;
                root.present().map_err(drawing(D::WHAT))?;
            }
            Ok(Canvas::Svg { size, text })
        }
    }
}

impl Canvas {
    fn finish(self) -> Result<Picture, PictureError> {
        match self {
            Canvas::Rgb { size, pixels } => {
                Ok(Picture { format: Format::Png, size, bytes: encode_png(size, &pixels, png::ColorType::Rgb)? })
            }
            Canvas::Svg { size, text } => Ok(Picture { format: Format::Svg, size, bytes: text.into_bytes() }),
        }
    }
}

/// Largest canvas drawn (pixels): 64 MP, 192 MB of RGB.
pub const MAX_PIXELS: u64 = 1 << 26;

/// A PNG of `pixels` (rows of `size.0` pixels of `color`'s samples, 8 bits each).
fn encode_png(size: (u32, u32), pixels: &[u8], color: png::ColorType) -> Result<Vec<u8>, PictureError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, size.0, size.1);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::High);
    let mut writer = enc.write_header().map_err(|e| PictureError::Png(e.to_string()))?;
    writer.write_image_data(pixels).map_err(|e| PictureError::Png(e.to_string()))?;
    writer.finish().map_err(|e| PictureError::Png(e.to_string()))?;
    Ok(out)
}

/// Maps a plotters error to [`PictureError::Draw`].
fn drawing<E: std::error::Error + Send + Sync>(
    what: &'static str,
) -> impl Fn(plotters::drawing::DrawingAreaErrorKind<E>) -> PictureError {
    move |e| PictureError::Draw { what, message: e.to_string() }
}

/// The series colours, in order (Tableau 10: distinguishable, colour-blind aware).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of series `i`.
pub fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Text style of `size` pixels in [`FAMILY`].
fn text(size: u32) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&BLACK)
}

/// `s` cut to at most `max` characters (an ellipsis marks the cut).
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Base64 (RFC 4648, with padding) of `bytes`, for images embedded in an SVG.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `s` with XML's special characters escaped, for text placed in an SVG by hand.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")];
        for (input, want) in cases {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn formats_come_from_the_extension() {
        assert_eq!(Format::from_path(Path::new("a/b.PNG")).unwrap(), Format::Png);
        assert_eq!(Format::from_path(Path::new("b.svg")).unwrap(), Format::Svg);
        for bad in ["b.jpg", "b", "png"] {
            assert!(matches!(Format::from_path(Path::new(bad)), Err(PictureError::Format { .. })), "{bad}");
        }
    }

    #[test]
    fn clip_and_escape() {
        assert_eq!(clip("airplane", 8), "airplane");
        assert_eq!(clip("automobile", 5), "auto…");
        assert_eq!(xml_escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }
}
