//! A grid of classified images with their predicted and true labels, the
//! wrong ones framed in red (the seed's Fig. 13: 30 held-out images).
//!
//! Images are `u8` HWC arrays of any size, scaled (nearest neighbour,
//! aspect kept) to fit a [`IMAGE_SIDE`]-pixel box, so a 32×32 CIFAR image is
//! shown 3.5× larger with its pixels sharp. In an SVG each image is an
//! embedded PNG at its own resolution, drawn pixelated by the viewer.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{base64, clip, drawing, encode_png, render, text, xml_escape, Canvas, Draw, Format, Picture, PictureError};

/// One image with its labels.
#[derive(Clone, Debug, PartialEq)]
pub struct GridImage<'a> {
    /// `height × width × channels` bytes, rows top to bottom (RGB or grey).
    pub pixels: &'a [u8],
    pub height: usize,
    pub width: usize,
    /// 3 (RGB) or 1 (grey).
    pub channels: usize,
    pub predicted: String,
    pub truth: String,
}

impl GridImage<'_> {
    fn correct(&self) -> bool {
        self.predicted == self.truth
    }
}

/// Side of the box each image is scaled to fit (pixels).
pub const IMAGE_SIDE: u32 = 112;
/// Images per row.
pub const COLUMNS: usize = 6;
/// Most images in one grid.
pub const MAX_IMAGES: usize = 600;
/// Largest image side accepted (pixels).
pub const MAX_SIDE: usize = 1 << 14;

const CELL_W: u32 = IMAGE_SIDE + 36;
const LABELS_H: u32 = 40;
const CELL_H: u32 = IMAGE_SIDE + LABELS_H + 16;
const TOP: u32 = 52;
const MARGIN: u32 = 16;
const WRONG: RGBColor = RGBColor(214, 39, 40);
const RIGHT: RGBColor = RGBColor(30, 120, 30);
const GREY: RGBColor = RGBColor(90, 90, 90);

struct Grid<'a, 'b> {
    images: &'b [GridImage<'a>],
    title: String,
    columns: usize,
}

/// Where image `i`'s box lies: its top-left corner.
fn box_at(i: usize, columns: usize) -> (u32, u32) {
    let (row, col) = ((i / columns) as u32, (i % columns) as u32);
    (MARGIN + col * CELL_W + (CELL_W - IMAGE_SIDE) / 2, TOP + row * CELL_H)
}

/// The scaled size of an image `h × w` in the box, and its offset in it.
fn fit(h: usize, w: usize) -> ((u32, u32), (u32, u32)) {
    let side = IMAGE_SIDE as f64;
    let scale = side / h.max(w) as f64;
    let (sw, sh) = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
    ((sw, sh), ((IMAGE_SIDE - sw) / 2, (IMAGE_SIDE - sh) / 2))
}

/// Draws `images` in rows of [`COLUMNS`] under `title`, which gets the count
/// of correct predictions appended.
///
/// # Errors
/// [`PictureError::Data`] naming the image whose size does not match its
/// pixels, whose channels are not 1 or 3, or if there are no images or more
/// than [`MAX_IMAGES`]; drawing and encoding errors.
pub fn prediction_grid(images: &[GridImage<'_>], title: &str, format: Format) -> Result<Picture, PictureError> {
    let n = images.len();
    if n == 0 || n > MAX_IMAGES {
        return Err(PictureError::data("prediction grid", format!("{n} images: expected 1 to {MAX_IMAGES}")));
    }
    for (i, im) in images.iter().enumerate() {
        let bad = |m: String| PictureError::data("prediction grid", format!("image {i}: {m}"));
        if !matches!(im.channels, 1 | 3) {
            return Err(bad(format!("{} channels, expected 1 (grey) or 3 (RGB)", im.channels)));
        }
        if im.height == 0 || im.width == 0 || im.height > MAX_SIDE || im.width > MAX_SIDE {
            return Err(bad(format!("{}×{} pixels: each side must be 1 to {MAX_SIDE}", im.height, im.width)));
        }
        let want = im.height * im.width * im.channels;
        if im.pixels.len() != want {
            return Err(bad(format!(
                "{} bytes for {}×{}×{} (expected {want})",
                im.pixels.len(),
                im.height,
                im.width,
                im.channels
            )));
        }
    }
    let columns = COLUMNS.min(n);
    let rows = n.div_ceil(columns) as u32;
    let size = (2 * MARGIN + columns as u32 * CELL_W, TOP + rows * CELL_H + MARGIN);
    let correct = images.iter().filter(|i| i.correct()).count();
    let grid = Grid { images, title: format!("{title}: {correct} of {n} correct"), columns };
    match render(&grid, format, size)? {
        Canvas::Rgb { size, mut pixels } => {
            for (i, im) in images.iter().enumerate() {
                blit(&mut pixels, size.0, box_at(i, columns), im);
            }
            Canvas::Rgb { size, pixels }.finish()
        }
        Canvas::Svg { size, text } => {
            let mut tags = String::new();
            for (i, im) in images.iter().enumerate() {
                let (bx, by) = box_at(i, columns);
                let ((sw, sh), (ox, oy)) = fit(im.height, im.width);
                let color = if im.channels == 3 { png::ColorType::Rgb } else { png::ColorType::Grayscale };
                let png = encode_png((im.width as u32, im.height as u32), im.pixels, color)?;
                tags.push_str(&format!(
                    "<image x=\"{}\" y=\"{}\" width=\"{sw}\" height=\"{sh}\" style=\"image-rendering:pixelated\" href=\"data:image/png;base64,{}\"><title>{}</title></image>\n",
                    bx + ox,
                    by + oy,
                    base64(&png),
                    xml_escape(&format!("predicted {}, true {}", im.predicted, im.truth)),
                ));
            }
            let at = text.rfind("</svg>").ok_or_else(|| PictureError::Draw {
                what: "prediction grid",
                message: "the SVG backend wrote no closing tag".into(),
            })?;
            let mut text = text;
            text.insert_str(at, &tags);
            Canvas::Svg { size, text }.finish()
        }
    }
}

/// Copies `im`, scaled to fit, into the RGB canvas `pixels` (`width` wide) at the box `(bx, by)`.
fn blit(pixels: &mut [u8], width: u32, (bx, by): (u32, u32), im: &GridImage<'_>) {
    let ((sw, sh), (ox, oy)) = fit(im.height, im.width);
    for y in 0..sh {
        let sy = (y as usize * im.height / sh as usize).min(im.height - 1);
        for x in 0..sw {
            let sx = (x as usize * im.width / sw as usize).min(im.width - 1);
            let src = (sy * im.width + sx) * im.channels;
            let rgb = if im.channels == 3 {
                [im.pixels[src], im.pixels[src + 1], im.pixels[src + 2]]
            } else {
                [im.pixels[src]; 3]
            };
            let dst = (((by + oy + y) * width + bx + ox + x) * 3) as usize;
            pixels[dst..dst + 3].copy_from_slice(&rgb);
        }
    }
}

impl Draw for Grid<'_, '_> {
    const WHAT: &'static str = "prediction grid";

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PictureError> {
        let err = drawing::<DB::ErrorType>(Self::WHAT);
        let (w, _) = root.dim_in_pixel();
        root.draw(&Text::new(self.title.clone(), (w as i32 / 2, 16), text(20).pos(Pos::new(HPos::Center, VPos::Top))))
            .map_err(&err)?;
        let side = IMAGE_SIDE as i32;
        for (i, im) in self.images.iter().enumerate() {
            let (bx, by) = box_at(i, self.columns);
            let (bx, by) = (bx as i32, by as i32);
            let (frame, width, ink): (RGBColor, u32, &'static RGBColor) =
                if im.correct() { (RGBColor(190, 190, 190), 1, &RIGHT) } else { (WRONG, 4, &WRONG) };
            let pad = width as i32;
            root.draw(&Rectangle::new(
                [(bx - pad, by - pad), (bx + side + pad - 1, by + side + pad - 1)],
                frame.stroke_width(width),
            ))
            .map_err(&err)?;
            let cx = bx + side / 2;
            let label = |s: String, y: i32, color: &'static RGBColor| {
                Text::new(s, (cx, y), text(13).color(color).pos(Pos::new(HPos::Center, VPos::Top)))
            };
            let mark = if im.correct() { "" } else { "× " };
            root.draw(&label(format!("{mark}{}", clip(&im.predicted, 16)), by + side + 8, ink)).map_err(&err)?;
            root.draw(&label(format!("true: {}", clip(&im.truth, 14)), by + side + 24, &GREY)).map_err(&err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_that_do_not_match_their_size_are_refused_by_index() {
        let px = vec![0u8; 12];
        let ok = GridImage { pixels: &px, height: 2, width: 2, channels: 3, predicted: "a".into(), truth: "a".into() };
        let cases = [
            (GridImage { channels: 2, ..ok.clone() }, "image 1: 2 channels"),
            (GridImage { height: 3, ..ok.clone() }, "image 1: 12 bytes for 3×2×3"),
            (GridImage { width: 0, ..ok.clone() }, "image 1: 2×0 pixels"),
        ];
        for (bad, needle) in cases {
            let e = prediction_grid(&[ok.clone(), bad], "t", Format::Png).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        assert!(prediction_grid(&[], "t", Format::Png).unwrap_err().to_string().contains("0 images"));
    }

    #[test]
    fn fitting_keeps_the_aspect_and_centres() {
        assert_eq!(fit(32, 32), ((IMAGE_SIDE, IMAGE_SIDE), (0, 0)));
        assert_eq!(fit(10, 20), ((IMAGE_SIDE, IMAGE_SIDE / 2), (0, IMAGE_SIDE / 4)));
        assert_eq!(fit(1000, 1), ((1, IMAGE_SIDE), ((IMAGE_SIDE - 1) / 2, 0)));
    }
}
