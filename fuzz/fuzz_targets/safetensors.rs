//! Any bytes through the safetensors parser.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hrk::io::read_safetensors_bytes(data);
});
