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

use super::imageio::{check_dimensions, Rgb8};
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

    let mut out: Option<Rgb8> = None;
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
        // SAFETY: header read, parameters set.
        unsafe { sys::jpeg_start_decompress(&mut cinfo) };
        let (w, h) = (cinfo.output_width as usize, cinfo.output_height as usize);
        if cinfo.output_components != 3 {
            checked = Err(anyhow::anyhow!(
                "image {}: libjpeg gave {} components for RGB output",
                path.display(),
                cinfo.output_components
            ));
            return;
        }
        let mut data = vec![0u8; w * h * 3];
        // Row pointers into the final buffer: libjpeg writes every row in place.
        let mut rows: Vec<*mut u8> = data.chunks_exact_mut(w * 3).map(|r| r.as_mut_ptr()).collect();
        while (cinfo.output_scanline as usize) < h {
            let next = cinfo.output_scanline as usize;
            // SAFETY: rows[next..] point to distinct `w * 3`-byte rows of `data`, which
            // outlives the call; libjpeg writes at most `h - next` rows.
            let got = unsafe { sys::jpeg_read_scanlines(&mut cinfo, rows.as_mut_ptr().add(next), (h - next) as u32) };
            if got == 0 {
                // Only a suspending source returns 0 rows; the memory source never suspends.
                checked = Err(anyhow::anyhow!("image {}: libjpeg stopped at row {next} of {h}", path.display()));
                return;
            }
        }
        // SAFETY: all scanlines read.
        unsafe { sys::jpeg_finish_decompress(&mut cinfo) };
        out = Some(Rgb8 { width: w, height: h, data });
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
