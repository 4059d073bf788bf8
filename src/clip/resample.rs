//! Bicubic resizing exactly as Pillow does it for 8-bit images (`Image.resize` with
//! `BICUBIC`, `Resample.c`): separable, horizontal pass first, the kernel (a = -0.5) widened
//! by the scale when shrinking, coefficients normalised then rounded to 22-bit fixed point,
//! and each pass rounded and clipped to 8 bits. `CLIPImageProcessor` resizes with Pillow, so
//! this is what makes resized images match the reference to float error; `image`'s own
//! CatmullRom filter differs from it by a level or two at some pixels.

use image::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;
const SUPPORT: f64 = 2.0;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output position: the first input position, and the fixed-point weights.
struct Coefficients {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc` for the whole input range.
fn coefficients(in_size: usize, out_size: usize) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // (int)(v + 0.5) in C truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(xmax) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if w < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coefficients {
        bounds,
        ksize,
        weights,
    }
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes `src` to `width` x `height` as Pillow's `resize(..., Image.BICUBIC)`.
pub fn resize_bicubic(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w0, h0) = (src.width() as usize, src.height() as usize);
    let (w1, h1) = (width as usize, height as usize);
    let half = 1i64 << (PRECISION_BITS - 1);
    let raw = src.as_raw();
    // Horizontal pass (when the width changes).
    let (tmp, tw) = if w1 != w0 {
        let c = coefficients(w0, w1);
        let mut out = vec![0u8; w1 * h0 * 3];
        for y in 0..h0 {
            let row = &raw[y * w0 * 3..(y + 1) * w0 * 3];
            for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
                let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
                for ch in 0..3 {
                    let mut ss = half;
                    for (x, &kx) in k.iter().enumerate() {
                        ss += row[(xmin + x) * 3 + ch] as i64 * kx as i64;
                    }
                    out[(y * w1 + xx) * 3 + ch] = clip8(ss);
                }
            }
        }
        (out, w1)
    } else {
        (raw.clone(), w0)
    };
    // Vertical pass (when the height changes).
    let out = if h1 != h0 {
        let c = coefficients(h0, h1);
        let mut out = vec![0u8; tw * h1 * 3];
        for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
            let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
            for x in 0..tw {
                for ch in 0..3 {
                    let mut ss = half;
                    for (y, &ky) in k.iter().enumerate() {
                        ss += tmp[((ymin + y) * tw + x) * 3 + ch] as i64 * ky as i64;
                    }
                    out[(yy * tw + x) * 3 + ch] = clip8(ss);
                }
            }
        }
        out
    } else {
        tmp
    };
    RgbImage::from_raw(width, height, out).expect("sizes match")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_size_is_the_same_image() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
        assert_eq!(resize_bicubic(&img, 5, 3), img);
    }

    #[test]
    fn a_flat_image_stays_flat_and_weights_sum_to_one() {
        let img = RgbImage::from_pixel(17, 9, image::Rgb([200, 13, 255]));
        let out = resize_bicubic(&img, 40, 4);
        assert!(out.pixels().all(|p| p.0 == [200, 13, 255]));
        for (n_in, n_out) in [(17, 40), (40, 17), (224, 298)] {
            let c = coefficients(n_in, n_out);
            for (i, &(_, n)) in c.bounds.iter().enumerate() {
                let sum: i64 = c.weights[i * c.ksize..i * c.ksize + n]
                    .iter()
                    .map(|&w| w as i64)
                    .sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= n as i64,
                    "{n_in}->{n_out}"
                );
            }
        }
    }
}
