//! Any bytes through the format-detecting loader (zip / legacy .pth and safetensors).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hrk::io::state_dict_from_bytes(data);
});
