//! Where a face is and which crop the model sees of it: [`FaceBox`], the box → crop convention,
//! and [`FaceFinder`], the ways one image's faces are found.
//!
//! # From a face box to the dataset convention
//!
//! The official CSVs store a face as `center` and `scale` where the box is the **tight box of the
//! ground-truth landmarks** (HRNet-Facial-Landmark-Detection issue #3; the published .0/.5 centres
//! and whole-pixel sides are the COFW rounding rule `floor(min)`, `ceil(max)`), `center` its centre
//! and `scale` its longer side / 200. Every dataset class then enlarges the scale by 1.25 at test
//! time (official lib/datasets/*.py `__getitem__`, and tools/test.py through the same classes): the
//! crop is `crop(img, center, 1.25·scale, IMAGE_SIZE)`. A box (x1, y1, x2, y2)
//! therefore becomes
//!
//! ```text
//! center = ((x1 + x2) / 2, (y1 + y2) / 2)          (f32, as the datasets store it)
//! scale  = max(x2 − x1, y2 − y1) / 200 × margin     (the annotation scale, f64)
//! crop   = crop(img, center, scale × 1.25, IMAGE_SIZE)
//! ```
//!
//! `margin` maps the box's own convention to the tight landmark box: 1.0 for boxes the user gives
//! (`--box`, `--boxes`: they are taken to be drawn like the CSVs' boxes, so a CSV row's own box
//! reproduces `hrk test`'s crop exactly, `tests/cli_predict_faces.rs`), and [`MTCNN_MARGIN`] for
//! detector boxes (how it was measured is documented there). Detector boxes also sit higher on the
//! face than the landmark box (they hold the forehead), so for them the centre moves down by
//! [`MTCNN_CENTER_SHIFT`] × the box side before the crop:
//!
//! ```text
//! center = ((x1 + x2) / 2, (y1 + y2) / 2 + shift × max(x2 − x1, y2 − y1))   (shift 0 for given boxes)
//! ```

use crate::data::annotations::box_center_scale;
use crate::data::image::MAX_BOX_COORDINATE;
use crate::data::imageio::{rgb8_to_image, Rgb8};
use crate::detect::{DetectorOptions, Mtcnn};
use anyhow::{anyhow, bail, Result};

/// The test-time enlargement of the annotation scale (`scale *= 1.25` in every dataset class).
pub const SCALE_ENLARGEMENT: f64 = 1.25;

/// Detector box side → tight-landmark-box side, measured with facenet-pytorch's MTCNN (the
/// reference the detector matches, default options) on faces whose landmarks are known:
/// `experiments/mtcnn_margin/measure.py` over the 240 train faces of `hrk synth --joints 68
/// --count 300 --seed 7` paired 226 MTCNN boxes with a face (the box holding the landmark box's
/// centre, best IoU); landmark side / MTCNN side had median 0.894, mean 0.891, p10–p90
/// 0.806–0.973. No real photos with landmarks were at hand (no WFLW/300W images here), so the
/// margin comes from synthetic faces only. The same run found the landmark box's centre 0.093 ×
/// side below the MTCNN box's (MTCNN's boxes hold the forehead): [`MTCNN_CENTER_SHIFT`].
pub const MTCNN_MARGIN: f64 = 0.89;

/// Detector box centre → tight-landmark-box centre, downward, as a fraction of the detector box's
/// side: the median dy (+0.093, p10–p90 +0.056…+0.137; dx median 0.000) of the same measurement
/// as [`MTCNN_MARGIN`] (`experiments/mtcnn_margin/`).
pub const MTCNN_CENTER_SHIFT: f64 = 0.093;

/// A face box in original-image pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaceBox {
    pub x1: f64,
    pub y1: f64,
    pub x2: f64,
    pub y2: f64,
}

impl FaceBox {
    /// A box from its corners: finite, within ±[`MAX_BOX_COORDINATE`], x2 > x1 and y2 > y1.
    pub fn new(x1: f64, y1: f64, x2: f64, y2: f64) -> Result<FaceBox> {
        if ![x1, y1, x2, y2].iter().all(|v| v.is_finite()) {
            bail!("not finite");
        }
        if ![x1, y1, x2, y2].iter().all(|v| v.abs() <= MAX_BOX_COORDINATE) {
            bail!("a coordinate beyond ±{MAX_BOX_COORDINATE} pixels");
        }
        if x2 <= x1 || y2 <= y1 {
            bail!("x2 must exceed x1 and y2 must exceed y1");
        }
        Ok(FaceBox { x1, y1, x2, y2 })
    }

    /// Parses `x1,y1,x2,y2` (the `--box` flag).
    pub fn parse(s: &str) -> Result<FaceBox> {
        let bad = |why: &str| anyhow!("--box '{s}': {why} (expected x1,y1,x2,y2 in pixels)");
        let v: Vec<f64> = s
            .split(',')
            .map(|t| t.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("not four numbers"))?;
        if v.len() != 4 {
            return Err(bad(&format!("{} numbers", v.len())));
        }
        FaceBox::new(v[0], v[1], v[2], v[3]).map_err(|e| bad(&e.to_string()))
    }

    /// Center and the annotation scale (box side / 200, before the ×1.25 enlargement), the
    /// convention of the dataset CSVs.
    pub fn center_scale(&self) -> ([f32; 2], f64) {
        let (c, s) = box_center_scale(self.corners());
        ([c[0] as f32, c[1] as f32], s)
    }

    pub fn corners(&self) -> [f64; 4] {
        [self.x1, self.y1, self.x2, self.y2]
    }

    /// The face this box stands for: `margin` maps the box to the tight landmark box and
    /// `center_shift` moves its centre down (module doc).
    fn face(self, score: Option<f32>, margin: f64, center_shift: f64) -> FoundFace {
        let (center, side_scale) = self.center_scale();
        let center = detector_center(center, side_scale, center_shift);
        let annotation_scale = side_scale * margin;
        FoundFace {
            bbox: self.corners(),
            score,
            center,
            annotation_scale,
            crop_scale: annotation_scale * SCALE_ENLARGEMENT,
        }
    }
}

/// A box centre moved down by `center_shift` × the box side (`side_scale` = side / 200): the
/// detector-box correction of the module doc; `center_shift` 0 leaves the centre as it is.
pub fn detector_center(center: [f32; 2], side_scale: f64, center_shift: f64) -> [f32; 2] {
    if center_shift == 0.0 {
        return center;
    }
    [center[0], (center[1] as f64 + center_shift * side_scale * 200.0) as f32]
}

/// A face found in an image and the crop the model sees of it.
#[derive(Clone, Debug, PartialEq)]
pub struct FoundFace {
    /// The box as given or detected (x1, y1, x2, y2); the whole image for [`FaceFinder::WholeImage`].
    pub bbox: [f64; 4],
    /// Detector score; None for given boxes and the whole image.
    pub score: Option<f32>,
    /// Crop center and annotation scale (the crop uses `scale × 1.25`, or `scale` for the whole image).
    pub center: [f32; 2],
    pub annotation_scale: f64,
    pub crop_scale: f64,
}

/// How the faces of one image are found.
pub enum FaceFinder<'a> {
    /// The whole image is the face: center = image center, scale = longer side / 200, no
    /// enlargement (the behaviour of `hrk predict` before the detector; `--detector none`).
    WholeImage,
    /// Boxes the caller gives (`--box`, `--boxes`), margin 1.0.
    Boxes(Vec<FaceBox>),
    /// Every face MTCNN finds; its boxes are scaled by `margin` (normally [`MTCNN_MARGIN`]) and
    /// their centres moved down by `center_shift` × side (normally [`MTCNN_CENTER_SHIFT`]).
    Detector { mtcnn: &'a Mtcnn, options: DetectorOptions, margin: f64, center_shift: f64 },
}

impl FaceFinder<'_> {
    /// The faces of `rgb`, in the order found (box order, or the detector's).
    pub fn find(&self, rgb: &Rgb8) -> Result<Vec<FoundFace>> {
        Ok(match self {
            FaceFinder::WholeImage => {
                let (w, h) = (rgb.width as f64, rgb.height as f64);
                let crop_scale = w.max(h) / 200.0;
                vec![FoundFace {
                    bbox: [0.0, 0.0, w, h],
                    score: None,
                    center: [rgb.width as f32 / 2.0, rgb.height as f32 / 2.0],
                    annotation_scale: crop_scale / SCALE_ENLARGEMENT,
                    crop_scale,
                }]
            }
            FaceFinder::Boxes(boxes) => boxes.iter().map(|b| b.face(None, 1.0, 0.0)).collect(),
            FaceFinder::Detector { mtcnn, options, margin, center_shift } => {
                // Before the float copy of the photo: a refused photo costs nothing more.
                options.check_work(rgb.width, rgb.height)?;
                let img = rgb8_to_image(rgb, false)?;
                let dets = mtcnn.detect(&img, options)?;
                dets.into_iter()
                    .filter_map(|d| {
                        let [x1, y1, x2, y2] = d.bbox.map(f64::from);
                        // A degenerate box (possible only at the image border) has no face to crop.
                        FaceBox::new(x1, y1, x2, y2).ok().map(|b| b.face(Some(d.score), *margin, *center_shift))
                    })
                    .collect()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_parsing() {
        let b = FaceBox::parse("10, 20,110,70").unwrap();
        assert_eq!(b.center_scale(), ([60.0, 45.0], 0.5));
        for bad in ["1,2,3", "a,b,c,d", "5,5,1,10", "0,0,10,nan", "", "0,0,1e30,1e30", "-1e30,0,10,10"] {
            let e = FaceBox::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--box"), "{e}");
        }
    }

    #[test]
    fn detector_centres_move_down_by_the_shift_times_the_side() {
        // A 100-pixel box (scale 0.5) moves down 9.3 pixels; given boxes (shift 0) stay put.
        let moved = detector_center([60.0, 45.0], 0.5, MTCNN_CENTER_SHIFT);
        assert_eq!(moved[0], 60.0);
        assert!((moved[1] - 54.3).abs() < 1e-5, "{moved:?}");
        assert_eq!(detector_center([60.0, 45.0], 0.5, 0.0), [60.0, 45.0]);
    }
}
