//! The in-memory seam against the file-based run of the CLI.

use super::*;
use crate::config::DecodeMode;
use crate::data::imageio::Rgb8;
use crate::eval::TestOptions;
use crate::model::{HrNet, HrnetSpec};
use std::path::{Path, PathBuf};

/// HRNetV2-W18's layout with 5 outputs cut down to one block per stage and channels 2..16.
fn tiny_net() -> HrNet {
    let mut spec = HrnetSpec::w18(5);
    for (k, st) in spec.stages.iter_mut().enumerate() {
        st.num_modules = 1;
        st.num_blocks = vec![1; k + 2];
        st.num_channels = (0..k + 2).map(|i| 2 << i).collect();
    }
    HrNet::new(&spec, 11).unwrap()
}

fn options() -> LandmarkOptions {
    let test = TestOptions { flip_test: false, shift_heatmap: false, decode: DecodeMode::Dark };
    LandmarkOptions { test, pairs: Vec::new(), batch: 4 }
}

/// The JSON document `hrk predict` would write for `faces` of the image at `path`.
fn json_text(path: &Path, rgb: &Rgb8, faces: Vec<FaceResult>) -> String {
    let r = ImageResult { path: path.to_path_buf(), width: rgb.width, height: rgb.height, faces };
    serde_json::to_string_pretty(&image_json(&r)).unwrap() + "\n"
}

#[test]
fn an_image_in_memory_gives_the_faces_of_the_file_run() {
    const IMAGE_SIZE: [usize; 2] = [64, 64];
    let (w, h) = (72, 56);
    let data: Vec<u8> = (0..w * h * 3).map(|i| ((i * 37 + (i / 7) % 11 * 13) % 251) as u8).collect();
    let rgb = Rgb8::new(w, h, data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("face.png");
    image::RgbImage::from_raw(w as u32, h as u32, rgb.data.clone()).unwrap().save(&path).unwrap();
    let boxes = vec![FaceBox::new(10.0, 8.0, 50.0, 44.0).unwrap(), FaceBox::new(30.5, 20.0, 70.0, 55.0).unwrap()];
    let mut net = tiny_net();

    for (tag, faces) in [("boxes", 2), ("whole", 1)] {
        let finder = || if tag == "boxes" { FaceFinder::Boxes(boxes.clone()) } else { FaceFinder::WholeImage };
        let out = dir.path().join(tag);
        let mut run = PredictRun::new(&mut net, options(), IMAGE_SIZE, &out, false).unwrap();
        let mut seen = Vec::new();
        let (images, names) = (vec![path.clone()], vec!["face".to_string()]);
        run.run_images(&images, &names, FaceSource::Same(finder()), &mut |r| seen.push((r.faces, r.error.clone())))
            .unwrap();
        assert_eq!(run.finish("predictions.csv").unwrap(), Summary { images: 1, faces, failed: 0 });
        assert_eq!(seen, [(faces, None)]);
        let written = std::fs::read_to_string(out.join("face.json")).unwrap();

        let mut engine = LandmarkEngine::new(&mut net, options(), IMAGE_SIZE).unwrap();
        let found = engine.faces_in(&rgb, &finder()).unwrap();
        assert_eq!(found.len(), faces);
        assert!(found.iter().all(|f| f.landmarks.len() == 5 && f.landmark_scores.len() == 5));
        assert_eq!(json_text(&path, &rgb, found), written, "{tag}");
    }
}

#[test]
fn a_frame_that_cannot_be_read_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.png");
    image::RgbImage::from_pixel(40, 30, image::Rgb([90, 120, 150])).save(&good).unwrap();
    let images: Vec<PathBuf> = vec![dir.path().join("missing.png"), good];
    let names = output_names(&images);
    let mut net = tiny_net();
    let mut run = PredictRun::new(&mut net, options(), [64, 64], &dir.path().join("out"), false).unwrap();
    let mut seen = Vec::new();
    let source = FaceSource::Same(FaceFinder::WholeImage);
    run.run_images(&images, &names, source, &mut |r| seen.push((r.path.to_path_buf(), r.faces, r.error.is_some())))
        .unwrap();
    assert_eq!(run.finish("p.csv").unwrap(), Summary { images: 2, faces: 1, failed: 1 });
    assert_eq!(seen, [(images[0].clone(), 0, true), (images[1].clone(), 1, false)]);
    let csv = std::fs::read_to_string(dir.path().join("out/p.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
}
