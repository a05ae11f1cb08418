//! Image decoding for the datasets: what `PIL.Image.open(p).convert('RGB')` followed by
//! `np.array(..., dtype=float32)` gives in the reference (HWC, RGB, 0..255).
//!
//! Formats: JPEG, PNG, PPM/PGM (pnm), BMP, detected from the file content like PIL does.
//! Grey, grey+alpha, RGBA and 16-bit images are converted to 8-bit RGB (alpha dropped).

use super::image::{check_dimensions, Image};
pub use super::jpeg::{Decoded, Rect};
pub use super::pillow::Rgb8;
use anyhow::{anyhow, bail, Result};
use image::{DynamicImage, ImageDecoder, ImageReader};
use std::borrow::Cow;
use std::io::Cursor;
use std::path::Path;

/// Float copy (0..255) of a decoded image: the reference's `np.array(img, dtype=np.float32)`.
/// With `flip`, mirrored left-right (`np.fliplr`) during the conversion, at no extra pass. The float
/// copy is 4× the photo: an allocation that fails is an error, not an abort.
pub fn rgb8_to_image(rgb: &Rgb8, flip: bool) -> Result<Image> {
    let (w, h) = (rgb.width, rgb.height);
    let mut data = crate::memory_budget::try_zeroed_vec(rgb.data.len(), "the float copy of the image")?;
    if !flip || w == 0 {
        data.iter_mut().zip(&rgb.data).for_each(|(d, &v)| *d = v as f32);
        return Ok(Image { width: w, height: h, data });
    }
    for (src, dst) in rgb.data.chunks_exact(w * 3).zip(data.chunks_exact_mut(w * 3)) {
        for (d, s) in dst.chunks_exact_mut(3).zip(src.chunks_exact(3).rev()) {
            d[0] = s[0] as f32;
            d[1] = s[1] as f32;
            d[2] = s[2] as f32;
        }
    }
    Ok(Image { width: w, height: h, data })
}

/// Error text from a library, flattened to one line.
fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Decodes an image file to 8-bit RGB. Truncated files are an error, like PIL's default.
pub fn decode_rgb8(path: &Path) -> Result<Rgb8> {
    decode_rgb8_opts(path, false)
}

/// `decode_rgb8`; with `allow_truncated` a JPEG cut short is decoded anyway, with a warning
/// (the reference sets PIL's `LOAD_TRUNCATED_IMAGES` for AFLW).
pub fn decode_rgb8_opts(path: &Path, allow_truncated: bool) -> Result<Rgb8> {
    let bytes = read_checked(path, allow_truncated)?;
    decode_rgb8_bytes(&bytes, path)
}

/// [`decode_rgb8_opts`] of only the pixels `choose(width, height)` names (`None`: all of them).
/// JPEGs decode just that rectangle (see `jpeg::decode_region`); other formats decode whole, and
/// the result says which pixels it holds either way.
pub fn decode_rgb8_region_opts(
    path: &Path, allow_truncated: bool, choose: impl FnOnce(usize, usize) -> Option<Rect>,
) -> Result<Decoded> {
    let bytes = read_checked(path, allow_truncated)?;
    if bytes.is_empty() {
        bail!("image {}: file is empty", path.display());
    }
    if super::jpeg::is_jpeg(&bytes) {
        if let Some(decoded) = super::jpeg::decode_region(&bytes, path, choose)? {
            return Ok(decoded);
        }
    }
    let pixels = decode_rgb8_bytes(&bytes, path)?;
    Ok(Decoded { full: [pixels.width, pixels.height], origin: [0, 0], pixels })
}

/// The file's bytes, refusing a truncated JPEG unless `allow_truncated`.
fn read_checked(path: &Path, allow_truncated: bool) -> Result<Vec<u8>> {
    let bytes = crate::input_file::read_input(path, "image", crate::input_file::MAX_IMAGE_BYTES)?;
    if jpeg_is_truncated(&bytes) {
        if !allow_truncated {
            bail!("image {}: truncated JPEG (no end-of-image marker after the last scan)", path.display());
        }
        log::warn!("image {}: truncated JPEG, decoding what is there", path.display());
    }
    Ok(bytes)
}

/// True for a JPEG whose last scan is not followed by an EOI marker (FF D9). The decoder
/// would silently fill the missing part; PIL refuses such files. Inside entropy-coded data
/// 0xFF is always followed by 0x00 or a restart marker, so FF D9 can only be the real EOI.
pub fn jpeg_is_truncated(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    // The usual file ends with EOI: then the answer only needs some SOS before it, which the
    // marker segments from the start reach in a few hundred bytes (no walk through the scan data).
    if bytes.ends_with(&[0xFF, 0xD9]) && has_sos_segment(bytes) {
        return false;
    }
    // Byte searches from the end (the EOI is normally the last two bytes): same answer as a
    // forward pair scan, without walking the whole entropy-coded data twice.
    let rfind_pair = |hay: &[u8], second: u8| {
        let mut end = hay.len();
        while let Some(i) = hay[..end].iter().rposition(|&b| b == second) {
            if i > 0 && hay[i - 1] == 0xFF {
                return Some(i - 1);
            }
            end = i;
        }
        None
    };
    let Some(last_sos) = rfind_pair(bytes, 0xDA) else {
        return true;
    };
    rfind_pair(&bytes[last_sos..], 0xD9).is_none()
}

/// True when walking the marker segments after SOI reaches an SOS marker (FF DA). False for
/// anything unexpected (the caller then scans the bytes).
fn has_sos_segment(bytes: &[u8]) -> bool {
    let mut i = 2;
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            return false;
        }
        let marker = bytes[i + 1];
        match marker {
            0xDA => return true,
            // Fill byte before a marker.
            0xFF => i += 1,
            // Markers without a length.
            0x01 | 0xD0..=0xD9 => i += 2,
            _ => {
                let Some(len) = bytes.get(i + 2..i + 4).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize) else {
                    return false;
                };
                if len < 2 {
                    return false;
                }
                i += 2 + len;
            }
        }
    }
    false
}

/// A PNG's bytes without its iCCP chunk (other bytes as they are). The profile is never used (as
/// in the reference, whose Pillow `convert('RGB')` ignores it), and its deflated text would be
/// inflated whole by the decoder: a 1 MB file could hold a 1 GB profile.
fn png_without_icc_profile(bytes: &[u8]) -> Cow<'_, [u8]> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !bytes.starts_with(SIGNATURE) {
        return Cow::Borrowed(bytes);
    }
    // Chunks: length (4, big-endian), type (4), data, CRC (4); iCCP comes before the first IDAT.
    let (mut kept, mut copied_to) = (Vec::new(), 0);
    let mut at = SIGNATURE.len();
    while let Some(head) = bytes.get(at..at + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let end = at.saturating_add(12).saturating_add(len);
        match &head[4..8] {
            b"iCCP" if end <= bytes.len() => {
                kept.extend_from_slice(&bytes[copied_to..at]);
                copied_to = end;
            }
            b"IDAT" | b"IEND" => break,
            _ => {}
        }
        at = end;
    }
    if copied_to == 0 {
        return Cow::Borrowed(bytes);
    }
    kept.extend_from_slice(&bytes[copied_to..]);
    Cow::Owned(kept)
}

/// Decodes encoded image bytes; `path` is only used in messages. Does not check JPEG
/// truncation (see `jpeg_is_truncated`).
pub fn decode_rgb8_bytes(bytes: &[u8], path: &Path) -> Result<Rgb8> {
    if bytes.is_empty() {
        bail!("image {}: file is empty", path.display());
    }
    // JPEGs go through libjpeg-turbo's decoder, as in the reference (Pillow); only CMYK/YCCK
    // files, which it hands back, fall through to the generic decoder below.
    if super::jpeg::is_jpeg(bytes) {
        if let Some(rgb) = super::jpeg::decode(bytes, path)? {
            return Ok(rgb);
        }
    }
    let bytes = &*png_without_icc_profile(bytes);
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| anyhow!("image {}: {}", path.display(), one_line(e)))?;
    if reader.format().is_none() {
        bail!("image {}: unrecognised image format (supported: JPEG, PNG, PPM/PGM, BMP)", path.display());
    }
    // Our own size check below gives the message; the crate's limits would only duplicate it.
    reader.no_limits();
    let decoder =
        reader.into_decoder().map_err(|e| anyhow!("image {}: cannot read header: {}", path.display(), one_line(e)))?;
    let (w, h) = decoder.dimensions();
    check_dimensions(path, w as u64, h as u64)?;
    let len = (w as usize) * (h as usize) * 3;
    if decoder.color_type() == image::ColorType::Rgb8 && decoder.total_bytes() == len as u64 {
        // Straight into a buffer allocated fallibly (a failure is an error naming the image, not an
        // abort); other layouts go through the crate's conversion.
        let mut data = crate::memory_budget::try_zeroed_vec(len, "the decoded pixels")
            .map_err(|e| anyhow!("image {}: {e}", path.display()))?;
        decoder
            .read_image(&mut data)
            .map_err(|e| anyhow!("image {}: corrupt or truncated: {}", path.display(), one_line(e)))?;
        return Ok(Rgb8 { width: w as usize, height: h as usize, data });
    }
    let img = DynamicImage::from_decoder(decoder)
        .map_err(|e| anyhow!("image {}: corrupt or truncated: {}", path.display(), one_line(e)))?;
    let rgb = match img {
        DynamicImage::ImageRgb8(b) => b,
        other => other.to_rgb8(),
    };
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    Ok(Rgb8 { width, height, data: rgb.into_raw() })
}

/// Decodes an image file to the float HWC RGB `Image` the pipeline works on.
pub fn load_image(path: &Path) -> Result<Image> {
    rgb8_to_image(&decode_rgb8(path)?, false)
}
