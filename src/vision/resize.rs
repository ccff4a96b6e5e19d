//! Bicubic resize of 8-bit RGB, bit-exact with Pillow's `Image.resize(size, Image.BICUBIC)`.
//!
//! This ports Pillow's `libImaging/Resample.c` (unchanged from Pillow 7 through 11) rather than
//! using the `image` crate's CatmullRom filter: both are the a = −0.5 cubic, but Pillow widens
//! the filter support by the scale when downscaling (an antialiasing box), normalises the
//! weights per output pixel, quantises them to 22-bit fixed point and rounds the horizontal
//! pass to u8 before the vertical pass. Matching all of that gives the very pixels
//! transformers' PIL processors feed the model (tests/vision_preprocess.rs checks it).

use super::RgbImage;

/// Pillow's `PRECISION_BITS` for 8-bit images: 32 − 8 − 2.
const PRECISION_BITS: u32 = 22;

/// Pillow's `bicubic_filter` (a = −0.5), support 2.
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

/// Per output pixel: the first input pixel and the fixed-point weights of the inputs it reads.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a full-image box.
fn taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ss = 1.0 / filterscale;
    let mut first = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero, as `as i64` does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let raw: Vec<f64> = (xmin..xmax)
            .map(|x| bicubic((x as f64 - center + 0.5) * ss))
            .collect();
        let total: f64 = raw.iter().sum();
        let fixed = raw
            .iter()
            .map(|&w| {
                let w = if total != 0.0 { w / total } else { w };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                if w < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                }
            })
            .collect();
        first.push(xmin);
        weights.push(fixed);
    }
    Taps { first, weights }
}

/// Pillow's `clip8`: the accumulator (with its rounding bias) shifted back to u8, clamped.
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One resampling pass along rows (`horizontal`) or columns, like Pillow's
/// `ImagingResample{Horizontal,Vertical}_8bpc`.
fn pass(src: &RgbImage, out_w: usize, out_h: usize, taps: &Taps, horizontal: bool) -> RgbImage {
    let w = src.width;
    let mut data = vec![0u8; out_w * out_h * 3];
    let bias = 1i64 << (PRECISION_BITS - 1);
    for y in 0..out_h {
        for x in 0..out_w {
            let (k, first) = if horizontal {
                (&taps.weights[x], taps.first[x])
            } else {
                (&taps.weights[y], taps.first[y])
            };
            let mut acc = [bias; 3];
            for (i, &wt) in k.iter().enumerate() {
                let (sx, sy) = if horizontal {
                    (first + i, y)
                } else {
                    (x, first + i)
                };
                let p = (sy * w + sx) * 3;
                for (a, &v) in acc.iter_mut().zip(&src.data[p..p + 3]) {
                    *a += i64::from(v) * i64::from(wt);
                }
            }
            let o = (y * out_w + x) * 3;
            for (d, &a) in data[o..o + 3].iter_mut().zip(&acc) {
                *d = clip8(a);
            }
        }
    }
    RgbImage {
        width: out_w,
        height: out_h,
        data,
        source: src.source.clone(),
    }
}

/// `img` resized to `width × height` exactly as Pillow's BICUBIC does it: horizontal pass
/// first (skipped when the width is unchanged), then vertical (skipped when the height is).
pub fn resize_bicubic(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    let mut out = img.clone();
    if width != img.width {
        let taps = taps(img.width, width);
        out = pass(&out, width, img.height, &taps, true);
    }
    if height != img.height {
        let taps = taps(img.height, height);
        out = pass(&out, width, height, &taps, false);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: usize, height: usize, f: impl Fn(usize, usize, usize) -> u8) -> RgbImage {
        let mut data = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                for c in 0..3 {
                    data.push(f(x, y, c));
                }
            }
        }
        RgbImage {
            width,
            height,
            data,
            source: "test.png".into(),
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(100, 37), (37, 100), (448, 448), (5, 1), (1, 5)] {
            let t = taps(i, o);
            for k in &t.weights {
                let s: i32 = k.iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= k.len() as i32,
                    "{i}->{o}: {s}"
                );
            }
        }
    }

    #[test]
    fn flat_image_stays_flat_and_same_size_is_a_copy() {
        let img = image(13, 7, |_, _, c| [10, 128, 250][c]);
        let out = resize_bicubic(&img, 29, 3);
        assert!(out.data.chunks(3).all(|p| p == [10, 128, 250]));
        let noisy = image(9, 9, |x, y, c| ((x * 31 + y * 17 + c * 7) % 256) as u8);
        assert_eq!(resize_bicubic(&noisy, 9, 9).data, noisy.data);
    }

    #[test]
    fn downscaling_widens_the_support_like_pillow() {
        // 16 → 4 pixels: Pillow's support is ±2·4 inputs around the centre (clamped at the
        // border), where a CatmullRom without widening would read only 4.
        let t = taps(16, 4);
        assert_eq!((t.first[0], t.weights[0].len()), (0, 10));
        assert_eq!((t.first[1], t.weights[1].len()), (0, 14));
        assert!(t.weights[1].iter().all(|&w| w != 0));
    }

    #[test]
    fn overshoot_is_clamped() {
        // A sharp edge overshoots with the negative lobes; values must clamp at 0 and 255.
        let img = image(8, 1, |x, _, _| if x < 4 { 0 } else { 255 });
        let out = resize_bicubic(&img, 24, 1);
        assert_eq!(out.data[0], 0);
        assert_eq!(*out.data.last().unwrap_or(&0), 255);
    }
}
