//! Images to pixel values exactly as Hugging Face's `CLIPImageProcessor` makes them:
//! transparent pixels composited onto the background, shortest edge resized with bicubic,
//! centre crop, rescale, normalise; channels first.
//!
//! The resize is Pillow's bicubic, reproduced exactly ([`super::resample`]), so resized
//! images match the reference to float error as well as those already at the model's size.

use super::config::Preprocess;
use anyhow::{Context, Result, bail};
use image::RgbImage;

/// Decodes an image file's bytes (PNG or JPEG), naming `what` in errors.
pub fn decode(bytes: &[u8], what: &str) -> Result<image::DynamicImage> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .with_context(|| format!("{what}: reading the image"))?;
    if reader.format().is_none() {
        bail!("{what} is not an image mvc can read (PNG or JPEG)");
    }
    reader
        .decode()
        .with_context(|| format!("{what}: the image cannot be decoded (truncated or damaged?)"))
}

/// `src·a + bg·(1−a)` per channel, rounded to the nearest 8-bit level: what compositing an
/// RGBA render onto an opaque background with PIL gives.
pub fn composite(image: &image::DynamicImage, background: [u8; 3]) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u32;
        for c in 0..3 {
            let v = p[c] as u32 * a + background[c] as u32 * (255 - a);
            // round(v / 255), exactly, in integers
            o[c] = ((v + 127) / 255) as u8;
        }
    }
    out
}

/// The size `CLIPImageProcessor` resizes to: the shortest edge becomes `edge`, the other
/// `int(edge * long / short)` (truncated, as Python's `int`). (width, height).
pub fn resized_size(width: u32, height: u32, edge: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    // Python's int(size * long / short): the floor of the exact quotient (float rounding
    // cannot cross an integer at image sizes).
    let new_long = (edge as u64 * long as u64 / short as u64) as u32;
    if width <= height {
        (edge, new_long)
    } else {
        (new_long, edge)
    }
}

/// Pixel values for one image, `[3, crop_h, crop_w]` in row-major order.
pub fn pixel_values(image: &image::DynamicImage, p: &Preprocess) -> Result<Vec<f32>> {
    let rgb = composite(image, p.background);
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        bail!("the image is empty ({w}x{h})");
    }
    let (rw, rh) = resized_size(w, h, p.shortest_edge);
    let resized = if (rw, rh) == (w, h) {
        rgb
    } else {
        super::resample::resize_bicubic(&rgb, rw, rh)
    };
    let (ch, cw) = p.crop;
    if ch > rh || cw > rw {
        bail!("the crop {cw}x{ch} is larger than the resized image {rw}x{rh}");
    }
    let top = (rh - ch) / 2;
    let left = (rw - cw) / 2;
    let plane = (ch * cw) as usize;
    let mut out = vec![0f32; 3 * plane];
    // As HF does: rescale in f64, then f32; normalise in f32.
    let mean = p.mean.map(|m| m as f32);
    let std = p.std.map(|s| s as f32);
    for y in 0..ch {
        for x in 0..cw {
            let px = resized.get_pixel(left + x, top + y);
            let at = (y * cw + x) as usize;
            for c in 0..3 {
                let v = (px[c] as f64 * p.rescale) as f32;
                out[c * plane + at] = (v - mean[c]) / std[c];
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortest_edge_becomes_the_size_and_the_other_is_truncated() {
        assert_eq!(resized_size(320, 240, 224), (298, 224));
        assert_eq!(resized_size(96, 128, 224), (224, 298));
        assert_eq!(resized_size(224, 224, 224), (224, 224));
        assert_eq!(resized_size(448, 224, 224), (448, 224));
    }

    #[test]
    fn compositing_rounds_to_the_nearest_level() {
        let mut img = image::RgbaImage::new(1, 1);
        img.put_pixel(0, 0, image::Rgba([0, 100, 255, 128]));
        let out = composite(&image::DynamicImage::ImageRgba8(img), [255, 255, 255]);
        // 0·128/255 + 255·127/255 = 127; 100·128/255 + 127 = 177.2; 255
        assert_eq!(out.get_pixel(0, 0).0, [127, 177, 255]);
    }

    #[test]
    fn bytes_that_are_not_an_image_are_named() {
        let e = format!("{:#}", decode(b"hello", "views/a@b/x.png").unwrap_err());
        assert!(e.contains("views/a@b/x.png is not an image"), "{e}");
    }
}
