//! One in-memory image → faces with landmarks: [`LandmarkEngine`] crops the faces a
//! [`FaceFinder`] finds and runs the landmark model on them, the faces of several images sharing
//! forward passes. No files: the CLI's run loop, the Python package and the service all call it.

use super::boxes::{FaceFinder, FoundFace};
use super::pose::{add_poses, HeadPose};
use crate::data::codec::decode_preds_with;
use crate::data::imageio::Rgb8;
use crate::data::sample::normalize_rgb8_into;
use crate::data::transforms::{crop_rgb8, InputType};
use crate::eval::{test_heatmaps, TestOptions};
use crate::model::HrNet;
use crate::tensor::Device;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// How the model is run.
#[derive(Clone, Debug)]
pub struct LandmarkOptions {
    pub test: TestOptions,
    /// Mirrored landmark pairs (flip test only).
    pub pairs: Vec<(usize, usize)>,
    /// Faces per forward pass (across images).
    pub batch: usize,
}

impl LandmarkOptions {
    /// `test` with `batch` faces per forward pass, and for the flip test the config's mirrored
    /// landmark pairs (its dataset's layout).
    pub fn for_config(cfg: &crate::config::Config, test: TestOptions, batch: usize) -> Result<Self> {
        let pairs = if test.flip_test {
            crate::data::dataset::DatasetSpec::from_config(cfg, false, None)?.mirror_pairs().context("--flip-test")?
        } else {
            Vec::new()
        };
        Ok(LandmarkOptions { test, pairs, batch })
    }
}

/// One face's result, in original-image pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct FaceResult {
    /// Where the face is and the crop the model saw.
    pub face: FoundFace,
    pub landmarks: Vec<[f32; 2]>,
    /// Each landmark's heatmap maximum.
    pub landmark_scores: Vec<f32>,
    /// The face's track in a frame stream (None for photos).
    pub id: Option<u32>,
    /// Head pose from the landmarks (None for layouts without pose points, pose.rs).
    pub pose: Option<HeadPose>,
}

/// One image's result.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageResult {
    /// What the outputs call the image (its path as listed; the JSON's `"image"`).
    pub path: PathBuf,
    pub width: usize,
    pub height: usize,
    pub faces: Vec<FaceResult>,
}

/// An image's faces cropped for the model.
#[derive(Debug)]
pub struct CroppedFaces {
    pub faces: Vec<FoundFace>,
    /// The faces' normalised inputs, [faces, 3, H, W] concatenated.
    pub inputs: Vec<f32>,
}

/// The landmark model with its run options: crops → landmarks.
pub struct LandmarkEngine<'a> {
    net: &'a mut HrNet,
    opts: LandmarkOptions,
    image_size: [usize; 2],
}

impl<'a> LandmarkEngine<'a> {
    /// `image_size` is the model's input (MODEL.IMAGE_SIZE, height × width).
    pub fn new(net: &'a mut HrNet, opts: LandmarkOptions, image_size: [usize; 2]) -> Result<Self> {
        if opts.batch == 0 {
            bail!("predict: batch size must be positive");
        }
        Ok(LandmarkEngine { net, opts, image_size })
    }

    /// Values of one face's input crop (3 × H × W).
    pub fn input_len(&self) -> usize {
        3 * self.image_size[0] * self.image_size[1]
    }

    /// Whether the model runs on the CPU (then face finding runs on every core beside it; a GPU's
    /// kernels serialise anyway).
    pub fn on_cpu(&self) -> bool {
        matches!(self.net.device(), Device::Cpu)
    }

    /// Images per wave of a stream: enough to keep every core busy and to fill a batch with one
    /// face each.
    pub fn wave_len(&self) -> usize {
        (2 * rayon::current_num_threads()).max(self.opts.batch).max(1)
    }

    /// The faces of one decoded image, each with its landmarks: the in-memory entry point.
    pub fn faces_in(&mut self, rgb: &Rgb8, finder: &FaceFinder) -> Result<Vec<FaceResult>> {
        let cropped = self.crop(rgb, finder.find(rgb)?)?;
        let mut faces = self.infer_batched(&[Some(cropped)])?.pop().unwrap_or_default();
        add_poses(&mut faces, rgb.width, rgb.height);
        Ok(faces)
    }

    /// Crops and normalises `faces` of `rgb` for the model.
    pub fn crop(&self, rgb: &Rgb8, faces: Vec<FoundFace>) -> Result<CroppedFaces> {
        crop_faces(rgb, faces, self.image_size)
    }

    /// Runs the landmark model on `n` faces (inputs concatenated): landmarks and heatmap maxima.
    fn infer(&mut self, inputs: Vec<f32>, centers: &[[f32; 2]], scales: &[f64]) -> Result<(Vec<[f32; 2]>, Vec<f32>)> {
        let n = centers.len();
        let [ih, iw] = self.image_size;
        let (hm, [hn, j, h, w]) = test_heatmaps(self.net, inputs, [n, 3, ih, iw], &self.opts.test, &self.opts.pairs)?;
        let points = decode_preds_with(&hm, hn, j, h, w, centers, scales, self.opts.test.decode)?;
        let scores =
            hm.chunks_exact((h * w).max(1)).map(|m| m.iter().copied().fold(f32::NEG_INFINITY, f32::max)).collect();
        Ok((points, scores))
    }

    /// Runs every face of `images` (None: an image that failed before the model) through the
    /// model, `batch` faces per forward pass across images in order; the results per image.
    pub fn infer_batched(&mut self, images: &[Option<CroppedFaces>]) -> Result<Vec<Vec<FaceResult>>> {
        let per = self.input_len();
        let mut results: Vec<Vec<FaceResult>> = images.iter().map(|_| Vec::new()).collect();
        let refs: Vec<(usize, usize, &CroppedFaces)> = images
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .flat_map(|(i, c)| (0..c.faces.len()).map(move |f| (i, f, c)))
            .collect();
        for chunk in refs.chunks(self.opts.batch) {
            let mut inputs = Vec::with_capacity(chunk.len() * per);
            let (mut centers, mut scales) = (Vec::new(), Vec::new());
            for &(_, f, c) in chunk {
                inputs.extend_from_slice(&c.inputs[f * per..(f + 1) * per]);
                centers.push(c.faces[f].center);
                scales.push(c.faces[f].crop_scale);
            }
            let (points, scores) = self.infer(inputs, &centers, &scales)?;
            let joints = points.len() / chunk.len().max(1);
            for (k, &(i, f, c)) in chunk.iter().enumerate() {
                results[i].push(FaceResult {
                    face: c.faces[f].clone(),
                    landmarks: points[k * joints..(k + 1) * joints].to_vec(),
                    landmark_scores: scores[k * joints..(k + 1) * joints].to_vec(),
                    id: None,
                    pose: None,
                });
            }
        }
        Ok(results)
    }
}

/// Crops and normalises `faces` of `rgb` for a model whose input is `image_size` (height × width):
/// [`LandmarkEngine::crop`] without the engine, for callers whose model runs elsewhere (the
/// service's inference thread).
pub fn crop_faces(rgb: &Rgb8, faces: Vec<FoundFace>, image_size: [usize; 2]) -> Result<CroppedFaces> {
    let per = 3 * image_size[0] * image_size[1];
    let mut inputs = crate::memory_budget::try_zeroed_vec(faces.len() * per, "the faces' input crops")?;
    for (face, buf) in faces.iter().zip(inputs.chunks_exact_mut(per.max(1))) {
        let c = crop_rgb8(rgb, false, InputType::Float32, face.center, face.crop_scale, image_size, 0.0)?;
        normalize_rgb8_into(&c, buf)?;
    }
    Ok(CroppedFaces { faces, inputs })
}
