//! Any bytes through the dataset image decoder (PNG/JPEG/PPM/BMP, size limits).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hrk::data::imageio::jpeg_is_truncated(data);
    let _ = hrk::data::imageio::decode_rgb8_bytes(data, std::path::Path::new("fuzz.img"));
});
