//! JPEG decoding with libjpeg-turbo's decoder (the MozJPEG fork, built from vendored C source
//! by `mozjpeg-sys`), configured as Pillow configures it: islow IDCT, fancy upsampling, no
//! block smoothing, RGB output, EXIF orientation ignored. Pillow links libjpeg-turbo, so the
//! pixels, and with them the reference's crops, are bit-identical (tests/jpeg_fixtures.rs).
//!
//! libjpeg reports fatal errors through `error_exit`, whose default calls `exit()`. Ours
//! formats the message and unwinds (`resume_unwind`: no panic hook, nothing printed) back to
//! `catch_unwind` in `decode`; the C code is built with `-fexceptions` (the crate's
//! `unwinding` feature) so the unwind crosses its frames soundly. Warnings (corrupt data that
//! libjpeg recovers from, like Pillow does) go to `log::debug` instead of stderr.

use super::image::check_dimensions;
use super::pillow::Rgb8;
use anyhow::{bail, Result};
use mozjpeg_sys as sys;
use std::os::raw::{c_int, c_ulong};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;

/// Payload of the unwind started by `error_exit`: libjpeg's message.
struct JpegError(String);

/// libjpeg's text for the current message code (`format_message` into its 80-byte buffer).
///
/// # Safety
/// `cinfo.err` must point to the live error manager set up in `decode`.
unsafe fn message(cinfo: &mut sys::jpeg_common_struct) -> String {
    // JMSG_LENGTH_MAX in jpeglib.h (the binding's `[u8; 80]` understates it).
    let mut buf = [0u8; 200];
    // SAFETY: `err` was set by `jpeg_std_error` in `decode` and outlives `cinfo`.
    let format = unsafe { (*cinfo.err).format_message };
    if let Some(f) = format {
        // SAFETY: the C function takes `char *buffer` and writes at most JMSG_LENGTH_MAX
        // bytes; the binding's `&[u8; 80]` is the same pointer ABI, so call it with a
        // mutable pointer to a buffer of the full size.
        let f: unsafe extern "C-unwind" fn(&mut sys::jpeg_common_struct, *mut u8) = unsafe { std::mem::transmute(f) };
        // SAFETY: `cinfo` is live and `buf` holds JMSG_LENGTH_MAX bytes.
        unsafe { f(cinfo, buf.as_mut_ptr()) };
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut sys::jpeg_common_struct) {
    // SAFETY: called by libjpeg with the cinfo whose error manager `decode` installed.
    let msg = unsafe { message(cinfo) };
    resume_unwind(Box::new(JpegError(msg)));
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut sys::jpeg_common_struct, level: c_int) {
    // Level -1 is a warning (recoverable corrupt data); higher levels are trace output,
    // which is off (trace_level 0) but would only be noise.
    if level < 0 {
        // SAFETY: as in `error_exit`.
        let msg = unsafe { message(cinfo) };
        log::debug!("libjpeg warning: {msg}");
        // SAFETY: `err` is live (see `message`); the counter is what libjpeg's default keeps.
        unsafe { (*cinfo.err).num_warnings += 1 };
    }
}

/// True for JPEG content (SOI then a marker), detected from the bytes as PIL does.
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Decodes a JPEG to 8-bit RGB as Pillow's `Image.open(p).convert('RGB')` does. Returns
/// `Ok(None)` for 4-channel (CMYK/YCCK) files, which the caller decodes otherwise.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Option<Rgb8>> {
    Ok(decode_region(bytes, path, |_, _| None)?.map(|d| d.pixels))
}

/// Columns `[x, x+w)` and rows `[y, y+h)` of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// A decoded rectangle of a `full` = [width, height] image: `pixels` is the part at `origin`.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub full: [usize; 2],
    pub origin: [usize; 2],
    pub pixels: Rgb8,
}

impl Decoded {
    pub fn is_whole(&self) -> bool {
        self.origin == [0, 0] && [self.pixels.width, self.pixels.height] == self.full
    }
}

/// Decoded columns kept on each side of a requested rectangle: libjpeg-turbo's cropped decode
/// treats the crop's edges as image edges (fancy upsampling replicates the edge chroma sample),
/// so the pixels next to them may differ from a full decode; farther inside they are the same
/// arithmetic on the same coefficients. 32 is two of the widest iMCUs' edge pixels over.
const COLUMN_MARGIN: usize = 32;
/// Decoded rows kept above a requested rectangle after `jpeg_skip_scanlines`, likewise (two
/// iMCU rows of the tallest sampling), so the upsampler's context rows are real decoded rows.
const ROW_MARGIN: usize = 32;

/// [`decode`] of only the pixels a caller needs: `choose(width, height)` names them once the
/// header is read (`None`: the whole image). Rows above the rectangle are entropy-decoded but
/// not transformed, columns beside it are not transformed (`jpeg_skip_scanlines`,
/// `jpeg_crop_scanline`), and decoding stops after its last row, so corrupt data below it goes
/// unnoticed where a whole decode would log a warning. The pixels are those of the whole decode
/// (tests/data_region_decode.rs compares them on every sampling layout).
pub fn decode_region(
    bytes: &[u8], path: &Path, choose: impl FnOnce(usize, usize) -> Option<Rect>,
) -> Result<Option<Decoded>> {
    // SAFETY: zeroed is the state C code gives these structs before `jpeg_std_error` /
    // `jpeg_create_decompress` fill them (all fields are integers, pointers or Option<fn>).
    let mut err: Box<sys::jpeg_error_mgr> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: as above.
    let mut cinfo: Box<sys::jpeg_decompress_struct> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: `err` is a valid, boxed (address-stable) error manager.
    unsafe { sys::jpeg_std_error(&mut err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    cinfo.common.err = &mut *err;

    let mut out: Option<Decoded> = None;
    let mut checked: Result<()> = Ok(());
    let run = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `cinfo` has its error manager; `bytes` outlives the decompressor (destroyed
        // below, before returning); every libjpeg call follows the documented sequence.
        unsafe {
            sys::jpeg_create_decompress(&mut *cinfo);
            sys::jpeg_mem_src(&mut cinfo, bytes.as_ptr(), bytes.len() as c_ulong);
            sys::jpeg_read_header(&mut cinfo, 1);
        }
        checked = check_dimensions(path, cinfo.image_width as u64, cinfo.image_height as u64);
        if checked.is_err() {
            return;
        }
        match cinfo.jpeg_color_space {
            sys::J_COLOR_SPACE::JCS_GRAYSCALE | sys::J_COLOR_SPACE::JCS_YCbCr | sys::J_COLOR_SPACE::JCS_RGB => {}
            _ => return,
        }
        // Pillow's settings (its JpegDecode.c leaves libjpeg's defaults, which are these);
        // set explicitly so a changed default cannot silently change the pixels.
        cinfo.out_color_space = sys::J_COLOR_SPACE::JCS_RGB;
        cinfo.dct_method = sys::J_DCT_METHOD::JDCT_ISLOW;
        cinfo.do_fancy_upsampling = 1;
        cinfo.do_block_smoothing = 0;
        cinfo.scale_num = 1;
        cinfo.scale_denom = 1;
        let full = [cinfo.image_width as usize, cinfo.image_height as usize];
        let rect = choose(full[0], full[1]).filter(|r| [r.x, r.y, r.w, r.h] != [0, 0, full[0], full[1]]);
        if let Some(r) = rect {
            if r.x + r.w > full[0] || r.y + r.h > full[1] {
                checked = Err(anyhow::anyhow!(
                    "image {}: region {}x{} at ({}, {}) outside the {}x{} image",
                    path.display(),
                    r.w,
                    r.h,
                    r.x,
                    r.y,
                    full[0],
                    full[1]
                ));
                return;
            }
            if r.w == 0 || r.h == 0 {
                out =
                    Some(Decoded { full, origin: [r.x, r.y], pixels: Rgb8 { width: 0, height: 0, data: Vec::new() } });
                return;
            }
        }
        // SAFETY: header read, parameters set.
        unsafe { sys::jpeg_start_decompress(&mut cinfo) };
        let (w, h) = (cinfo.output_width as usize, cinfo.output_height as usize);
        if cinfo.output_components != 3 || [w, h] != full {
            checked = Err(anyhow::anyhow!(
                "image {}: libjpeg gave {} components of {w}x{h} for RGB output of {}x{}",
                path.display(),
                cinfo.output_components,
                full[0],
                full[1]
            ));
            return;
        }
        let Some(r) = rect else {
            let mut data = match crate::memory_budget::try_zeroed_vec(w * h * 3, "the decoded pixels") {
                Ok(d) => d,
                Err(e) => {
                    checked = Err(anyhow::anyhow!("image {}: {e}", path.display()));
                    return;
                }
            };
            // Row pointers into the final buffer: libjpeg writes every row in place.
            let mut rows: Vec<*mut u8> = data.chunks_exact_mut(w * 3).map(|r| r.as_mut_ptr()).collect();
            while (cinfo.output_scanline as usize) < h {
                let next = cinfo.output_scanline as usize;
                // SAFETY: rows[next..] point to distinct `w * 3`-byte rows of `data`, which
                // outlives the call; libjpeg writes at most `h - next` rows.
                let got =
                    unsafe { sys::jpeg_read_scanlines(&mut cinfo, rows.as_mut_ptr().add(next), (h - next) as u32) };
                if got == 0 {
                    // Only a suspending source returns 0 rows; the memory source never suspends.
                    checked = Err(anyhow::anyhow!("image {}: libjpeg stopped at row {next} of {h}", path.display()));
                    return;
                }
            }
            // SAFETY: all scanlines read.
            unsafe { sys::jpeg_finish_decompress(&mut cinfo) };
            out = Some(Decoded { full, origin: [0, 0], pixels: Rgb8 { width: w, height: h, data } });
            return;
        };
        // Columns: libjpeg moves the left edge down to an iMCU boundary and reports it.
        let left = r.x.saturating_sub(COLUMN_MARGIN);
        let right = (r.x + r.w + COLUMN_MARGIN).min(w);
        let (mut xoffset, mut width) = (left as u32, (right - left) as u32);
        // SAFETY: decompression started, no scanline read yet; both values are within the image.
        unsafe { sys::jpeg_crop_scanline(&mut cinfo, &mut xoffset, &mut width) };
        let (xoffset, width) = (xoffset as usize, width as usize);
        if xoffset > r.x || xoffset + width < r.x + r.w || cinfo.output_width as usize != width {
            checked = Err(anyhow::anyhow!(
                "image {}: libjpeg cropped columns {xoffset}..{} for {}..{}",
                path.display(),
                xoffset + width,
                r.x,
                r.x + r.w
            ));
            return;
        }
        let first_row = r.y.saturating_sub(ROW_MARGIN);
        while (cinfo.output_scanline as usize) < first_row {
            let left_to_skip = first_row - cinfo.output_scanline as usize;
            // SAFETY: decompression started; the skip stays above the last row.
            if unsafe { sys::jpeg_skip_scanlines(&mut cinfo, left_to_skip as u32) } == 0 {
                checked = Err(anyhow::anyhow!("image {}: libjpeg could not skip to row {first_row}", path.display()));
                return;
            }
        }
        let mut data = match crate::memory_budget::try_zeroed_vec(r.w * r.h * 3, "the decoded region's pixels") {
            Ok(d) => d,
            Err(e) => {
                checked = Err(anyhow::anyhow!("image {}: {e}", path.display()));
                return;
            }
        };
        let mut line = vec![0u8; width * 3];
        let from = (r.x - xoffset) * 3;
        while (cinfo.output_scanline as usize) < r.y + r.h {
            let y = cinfo.output_scanline as usize;
            let mut row_ptr = line.as_mut_ptr();
            // SAFETY: `line` holds one output row of the cropped width; libjpeg writes one row.
            if unsafe { sys::jpeg_read_scanlines(&mut cinfo, &mut row_ptr, 1) } != 1 {
                checked = Err(anyhow::anyhow!("image {}: libjpeg stopped at row {y} of {h}", path.display()));
                return;
            }
            if y >= r.y {
                let dst = (y - r.y) * r.w * 3;
                data[dst..dst + r.w * 3].copy_from_slice(&line[from..from + r.w * 3]);
            }
        }
        // The rest of the file is not read: `jpeg_destroy_decompress` below frees the state.
        out = Some(Decoded { full, origin: [r.x, r.y], pixels: Rgb8 { width: r.w, height: r.h, data } });
    }));
    // SAFETY: frees libjpeg's pools whatever state it stopped in (valid after a create, and
    // a no-op on a never-created struct, whose `mem` is null).
    unsafe { sys::jpeg_destroy_decompress(&mut cinfo) };
    match run {
        Ok(()) => {
            checked?;
            Ok(out)
        }
        Err(payload) => match payload.downcast::<JpegError>() {
            Ok(e) => bail!("image {}: corrupt or truncated JPEG: {}", path.display(), e.0),
            // Not ours (a bug elsewhere): keep unwinding.
            Err(other) => resume_unwind(other),
        },
    }
}
