//! Any UTF-8 text through the config loader; an accepted config must validate and build a spec.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = hrk::config::Config::from_yaml_str(text, "fuzz.yaml") {
        cfg.validate("fuzz.yaml").expect("accepted config validates");
        hrk::model::HrnetSpec::from_config(&cfg).expect("accepted config builds a spec");
    }
});
