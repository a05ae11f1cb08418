//! Without the `video` feature (the default build), a video input fails in one line that says how
//! to build hrk with video (`hrk::video::NOT_BUILT`), whether given as a file or found in a folder.
#![cfg(not(feature = "video"))]

mod common;

use common::model::{tiny_config, write_tiny_model};
use common::{assert_cli_error, hrk_cmd, s, scratch};

#[test]
fn a_video_input_says_how_to_build_with_video() {
    let dir = scratch("predict-video-off");
    hrk::synth::generate(&dir, 68, 1, 11).unwrap();
    let (cfg, weights) = write_tiny_model(&dir, &tiny_config(&dir, 68, 64, 16, hrk::synth::TEST_CSV), 3);
    std::fs::create_dir_all(dir.join("clips")).unwrap();
    std::fs::write(dir.join("clips/clip.MP4"), b"not decoded").unwrap();
    for input in ["clips/clip.MP4", "clips"] {
        let o = hrk_cmd()
            .current_dir(&*dir)
            .args(["predict", "--cfg", s(&cfg), "--model-file", s(&weights), "--out", "out", input])
            .output()
            .unwrap();
        assert_cli_error(&o, &[hrk::video::NOT_BUILT]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(stderr.trim_end().trim_start_matches("hrk: error: "), hrk::video::NOT_BUILT, "{input}");
    }
}
