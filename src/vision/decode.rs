//! Image files → 8-bit RGB, refusing what is not a usable image before decoding its pixels.
//!
//! JPEG, PNG and WebP through the `image` crate (zune-jpeg, png, image-webp). The header is
//! read first so that absurd sizes are refused without allocating them. Colour handling
//! follows Pillow's `convert("RGB")`: grey is replicated, palettes expanded, alpha dropped
//! (not composited). The EXIF orientation is not applied, as `Image.open` does not.

use std::io::Cursor;
use std::path::Path;

use image::{ImageError, ImageFormat, ImageReader, Limits};

use super::RgbImage;
use crate::error::InputError;

/// Largest image we decode, in pixels: Pillow's decompression-bomb threshold
/// (`Image.MAX_IMAGE_PIXELS`, 89 478 485; Pillow refuses twice that, we refuse above it).
pub const MAX_IMAGE_PIXELS: u64 = 89_478_485;
/// Largest image file we read.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

const FIX_FORMAT: &str = "pass a JPEG, PNG or WebP photo (convert other formats first, e.g. with \
                          `convert in.gif out.png`)";

/// Reads `path` and decodes it to RGB8. Every failure is an [`InputError`] naming the file.
pub fn load_rgb(path: &Path) -> Result<RgbImage, InputError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        InputError::invalid(
            path,
            format!("cannot open the image: {e}"),
            "check the image path",
        )
    })?;
    if meta.len() > MAX_IMAGE_FILE_BYTES {
        return Err(InputError::invalid(
            path,
            format!(
                "image file is {} MiB, more than the {} MiB allowed",
                meta.len() >> 20,
                MAX_IMAGE_FILE_BYTES >> 20
            ),
            "downscale the image (a VLM sees at most a few megapixels anyway)",
        ));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| InputError::invalid(path, format!("cannot read: {e}"), "check the file"))?;
    decode_rgb(&bytes, path)
}

/// Decodes an image held in memory; `path` only names it in errors.
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage, InputError> {
    if bytes.is_empty() {
        return Err(InputError::invalid(path, "the file is empty", FIX_FORMAT));
    }
    let format = image::guess_format(bytes).map_err(|_| {
        InputError::invalid(
            path,
            "not an image (no JPEG, PNG or WebP signature)",
            FIX_FORMAT,
        )
    })?;
    if !matches!(
        format,
        ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP
    ) {
        return Err(InputError::invalid(
            path,
            format!("{format:?} images are not supported"),
            FIX_FORMAT,
        ));
    }
    let reader = || {
        let mut r = ImageReader::with_format(Cursor::new(bytes), format);
        let mut limits = Limits::default();
        limits.max_alloc = Some(MAX_IMAGE_PIXELS * 8 + (64 << 20));
        r.limits(limits);
        r
    };
    // The png crate rejects a 0 width or height as merely "invalid": say what it is.
    if format == ImageFormat::Png && bytes.len() >= 24 {
        let be = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        check_dimensions(path, be(16), be(20))?;
    }
    let (w, h) = reader()
        .into_dimensions()
        .map_err(|e| decode_error(path, format, e))?;
    check_dimensions(path, w, h)?;
    // zune-jpeg fills a cut-off JPEG with grey where Pillow refuses it ("image file is
    // truncated"): refuse it too.
    if format == ImageFormat::Jpeg && !jpeg_has_end(bytes) {
        return Err(InputError::invalid(
            path,
            "the JPEG file is truncated (no end-of-image marker after the image data)",
            "the file is cut short: copy or download it again",
        ));
    }
    let img = reader()
        .decode()
        .map_err(|e| decode_error(path, format, e))?;
    let rgb = img.into_rgb8();
    Ok(RgbImage {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
        source: path.to_path_buf(),
    })
}

/// Whether a JPEG has its end-of-image marker (FF D9) after the first scan. Header segments
/// are skipped by their lengths, since an EXIF thumbnail carries its own FF D9; inside the
/// entropy-coded data an FF is always stuffed (FF 00) or a restart/scan marker, so the first
/// FF D9 found there is the real end.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return false;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        if marker == 0xDA {
            return bytes[i + 2 + len.min(bytes.len() - i - 2)..]
                .windows(2)
                .any(|m| m == [0xFF, 0xD9]);
        }
        i += 2 + len;
    }
    false
}

/// Refuses zero-sized and absurdly large images from their header dimensions.
pub fn check_dimensions(path: &Path, width: u32, height: u32) -> Result<(), InputError> {
    if width == 0 || height == 0 {
        return Err(InputError::invalid(
            path,
            format!("the image is zero-sized ({width}×{height})"),
            "pass an image with at least one pixel in each direction",
        ));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_IMAGE_PIXELS {
        return Err(InputError::invalid(
            path,
            format!(
                "the image is {width}×{height} = {pixels} pixels, more than the {MAX_IMAGE_PIXELS} allowed"
            ),
            "downscale the image first (a VLM sees at most a few megapixels anyway)",
        ));
    }
    Ok(())
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        _ => "image",
    }
}

fn decode_error(path: &Path, format: ImageFormat, err: ImageError) -> InputError {
    let format = format_name(format);
    let (problem, fix) = match &err {
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => (
            format!("the {format} file is truncated ({err})"),
            "the file is cut short: copy or download it again",
        ),
        ImageError::Limits(_) => (
            format!("the {format} image is too large to decode ({err})"),
            "downscale the image first",
        ),
        ImageError::Unsupported(_) => (
            format!("unsupported {format} variant ({err})"),
            "re-save it as an ordinary 8-bit JPEG or PNG",
        ),
        _ => (
            format!("the {format} file is corrupt or truncated ({err})"),
            "the file is damaged: copy or download it again, or re-save it",
        ),
    };
    InputError::invalid(path, problem, fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<RgbImage, InputError>) -> String {
        match r {
            Ok(img) => panic!("decoded a {}×{} image", img.width, img.height),
            Err(e) => e.to_string(),
        }
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, 99])
        });
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png)
            .expect("encoding a test png");
        out.into_inner()
    }

    #[test]
    fn decodes_png_to_rgb() {
        let img = decode_rgb(&png(5, 3), Path::new("a.png")).expect("valid png");
        assert_eq!((img.width, img.height), (5, 3));
        assert_eq!(&img.data[3 * 4..3 * 5], &[28, 0, 99]);
    }

    #[test]
    fn refuses_non_images_empty_and_truncated_files() {
        let p = Path::new("photo.jpg");
        let m = message(decode_rgb(b"hello, not an image at all", p));
        assert!(m.contains("photo.jpg") && m.contains("not an image"), "{m}");
        let m = message(decode_rgb(b"", p));
        assert!(m.contains("empty"), "{m}");
        let full = png(64, 64);
        let m = message(decode_rgb(&full[..full.len() / 2], Path::new("cut.png")));
        assert!(m.contains("cut.png") && m.contains("truncated"), "{m}");
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        let m = message(decode_rgb(gif, Path::new("x.gif")));
        assert!(m.contains("Gif images are not supported"), "{m}");
    }

    #[test]
    fn jpeg_end_marker_is_searched_after_the_headers() {
        // SOI, an APP1 segment that holds FF D9 (like an EXIF thumbnail), SOS, scan data.
        let head = [
            0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0x00, 0x00, 0xFF, 0xDA, 0x00, 0x02,
        ];
        let mut cut = head.to_vec();
        cut.extend([0x12, 0xFF, 0x00, 0x34]);
        assert!(!jpeg_has_end(&cut));
        let mut whole = cut.clone();
        whole.extend([0xFF, 0xD9]);
        assert!(jpeg_has_end(&whole));
        assert!(!jpeg_has_end(&[0xFF, 0xD8, 0xFF]));
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// The test photo PNG with its IHDR width/height replaced (CRC fixed up).
    fn png_with_size(w: u32, h: u32) -> Vec<u8> {
        let mut png = include_bytes!("../../tests/data/astronaut_crop.png").to_vec();
        png[16..20].copy_from_slice(&w.to_be_bytes());
        png[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
    }

    /// The test photo JPEG with its SOF0 height/width replaced.
    fn jpeg_with_size(w: u16, h: u16) -> Vec<u8> {
        let mut jpg = include_bytes!("../../tests/data/grace_hopper_300.jpg").to_vec();
        let sof = jpg
            .windows(2)
            .position(|m| m == [0xFF, 0xC0])
            .expect("baseline SOF0");
        jpg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
        jpg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
        jpg
    }

    #[test]
    fn zero_sized_and_huge_headers_are_refused_before_decoding() {
        assert!(decode_rgb(&png_with_size(176, 138), Path::new("ok.png")).is_ok());
        let m = message(decode_rgb(&png_with_size(0, 138), Path::new("zero.png")));
        assert!(m.contains("zero.png") && m.contains("zero-sized"), "{m}");
        // 1.2 G pixels: refused from the header, never allocated.
        let m = message(decode_rgb(
            &png_with_size(40_000, 30_000),
            Path::new("huge.png"),
        ));
        assert!(
            m.contains("huge.png") && m.contains("more than the 89478485 allowed"),
            "{m}"
        );
        let m = message(decode_rgb(
            &jpeg_with_size(60_000, 60_000),
            Path::new("huge.jpg"),
        ));
        assert!(
            m.contains("huge.jpg") && m.contains("more than the 89478485 allowed"),
            "{m}"
        );
    }

    #[test]
    fn refuses_zero_sized_and_absurd_dimensions_from_the_header() {
        let m = check_dimensions(Path::new("z.png"), 0, 10)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(m.contains("zero-sized"), "{m}");
        let m = check_dimensions(Path::new("big.png"), 100_000, 100_000)
            .unwrap_err()
            .to_string();
        assert!(m.contains("big.png") && m.contains("more than"), "{m}");
        assert!(check_dimensions(Path::new("ok.png"), 9000, 9000).is_ok());
    }
}
