//! Any bytes as a COFW .mat (HDF5) file. The reader takes a path, so the input is written to a
//! per-process temp file first.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("hrk-fuzz-cofw-{}.mat", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        let _ = hrk::data::cofw::read_cofw(&path, false);
        let _ = hrk::data::cofw::read_cofw(&path, true);
    }
});
