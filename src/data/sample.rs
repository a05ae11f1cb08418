//! The per-sample pipeline of the reference `Dataset.__getitem__` (all four datasets):
//! scale ×1.25, train-time scale jitter / rotation / flip (see `augment.rs`), crop to
//! MODEL.IMAGE_SIZE, heatmap targets on MODEL.HEATMAP_SIZE for every landmark with y > 0,
//! ImageNet mean/std normalisation to float32 CHW.

use super::augment::{sample_augmentation, Augmentation};
use super::codec::HeatmapCodec;
use super::dataset::{AnnotationRef, Annotations, FaceDataset};
use super::flip::fliplr_joints_with;
use super::image::{box_misses_image, check_face_image_size, Image};
use super::imageio::{decode_rgb8_opts, decode_rgb8_region_opts, rgb8_to_image, Rect, Rgb8};
use super::transforms::{crop_rgb8, crop_rgb8_region, crop_source, CropSource, InputType};
use crate::config::DatasetKind;
use anyhow::{anyhow, bail, Context, Result};
use std::borrow::Cow;

/// ImageNet mean/std (RGB) the reference normalises with, as float32.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The reference's `meta` dict.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleMeta {
    /// Dataset index.
    pub index: usize,
    /// Crop center (float32; x mirrored when flipped).
    pub center: [f32; 2],
    /// Crop scale, float64: annotation scale × 1.25 (× jitter in training).
    pub scale: f64,
    /// Landmarks in original pixels, float32 (flipped if the sample was flipped, never rotated).
    pub pts: Vec<[f32; 2]>,
    /// 1-based integer heatmap coordinates (`trunc(q)+1`); unchanged `pts` for missing landmarks.
    pub tpts: Vec<[f32; 2]>,
    /// AFLW only: the NME normaliser.
    pub box_size: Option<f64>,
    /// What augmentation produced this sample (NONE at test time).
    pub augmentation: Augmentation,
}

/// One sample: `input` [3,H,W], `target` [J,h,w], both float32 row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub input: Vec<f32>,
    pub target: Vec<f32>,
    pub meta: SampleMeta,
}

/// The three CHW planes of `out` for an H×W crop of `values` HWC numbers, checked to fit.
fn channel_planes(out: &mut [f32], [h, w]: [usize; 2], values: usize) -> Result<[&mut [f32]; 3]> {
    let hw = h * w;
    if out.len() != 3 * hw || values != 3 * hw {
        bail!("normalize: crop is {h}x{w} ({values} values), output buffer holds {}", out.len());
    }
    let (r, rest) = out.split_at_mut(hw);
    let (g, b) = rest.split_at_mut(hw);
    Ok([r, g, b])
}

/// `((x/255) - mean) / std`, HWC → CHW, in float32 like the reference.
pub fn normalize_into(img: &Image, out: &mut [f32]) -> Result<()> {
    let [r, g, b] = channel_planes(out, [img.height, img.width], img.data.len())?;
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        r[i] = (px[0] / 255.0 - MEAN[0]) / STD[0];
        g[i] = (px[1] / 255.0 - MEAN[1]) / STD[1];
        b[i] = (px[2] / 255.0 - MEAN[2]) / STD[2];
    }
    Ok(())
}

/// [`normalize_into`] of a u8 crop: the same float32 expression per value, tabulated.
pub fn normalize_rgb8_into(img: &Rgb8, out: &mut [f32]) -> Result<()> {
    let [r, g, b] = channel_planes(out, [img.height, img.width], img.data.len())?;
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, t) in table.iter_mut().enumerate() {
            *t = (v as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        r[i] = lut[0][px[0] as usize];
        g[i] = lut[1][px[1] as usize];
        b[i] = lut[2][px[2] as usize];
    }
    Ok(())
}

impl FaceDataset {
    /// Values per input: 3·H·W.
    pub fn input_len(&self) -> usize {
        3 * self.spec.image_size[0] * self.spec.image_size[1]
    }

    /// Values per target: J·h·w.
    pub fn target_len(&self) -> usize {
        self.spec.num_joints * self.spec.heatmap_size[0] * self.spec.heatmap_size[1]
    }

    /// The augmentation sample `index` gets in `epoch` (NONE when not training).
    pub fn augmentation_for(&self, index: usize, seed: u64, epoch: u64) -> Augmentation {
        if !self.spec.is_train {
            return Augmentation::NONE;
        }
        sample_augmentation(seed, epoch, index, self.spec.scale_factor, self.spec.rot_factor, self.spec.flip)
    }

    /// The source image of sample `index` as float HWC RGB, mirrored if `flip`.
    pub fn source_image(&self, index: usize, flip: bool) -> Result<Image> {
        rgb8_to_image(&*self.source_rgb8(index)?, flip)
    }

    /// The source image of sample `index` as decoded bytes (COFW images are borrowed).
    pub fn source_rgb8(&self, index: usize) -> Result<Cow<'_, Rgb8>> {
        Ok(match &self.annotations {
            Annotations::Csv(r) => {
                let rec = r.get(index).ok_or_else(|| anyhow!("sample index {index} out of range (len {})", r.len()))?;
                let img = decode_rgb8_opts(&rec.image_path, self.spec.kind == DatasetKind::Aflw)
                    .with_context(|| format!("{}:{}", self.spec.annotations.display(), rec.line))?;
                Cow::Owned(img)
            }
            Annotations::Cofw(c) => Cow::Borrowed(
                c.images
                    .get(index)
                    .ok_or_else(|| anyhow!("sample index {index} out of range (len {})", c.images.len()))?,
            ),
        })
    }

    /// The array type the reference's dataset class hands to `crop`.
    pub fn crop_input_type(&self) -> InputType {
        match &self.annotations {
            Annotations::Cofw(_) => InputType::Uint8,
            Annotations::Csv(_) => InputType::Float32,
        }
    }

    /// Sample `index` with the augmentation of (seed, epoch).
    pub fn get(&self, index: usize, seed: u64, epoch: u64) -> Result<Sample> {
        self.get_with(index, &self.augmentation_for(index, seed, epoch))
    }

    /// Sample `index` with a given augmentation.
    pub fn get_with(&self, index: usize, aug: &Augmentation) -> Result<Sample> {
        let mut input = crate::memory_budget::try_zeroed_vec(self.input_len(), "the sample's input crop")?;
        let mut target = crate::memory_budget::try_zeroed_vec(self.target_len(), "the sample's target heatmaps")?;
        let meta = self.fill_sample_on_zeros(index, aug, &mut input, &mut target)?;
        Ok(Sample { input, target, meta })
    }

    /// Refuses, naming the sample, an image too small for a face and an annotation whose face box
    /// (center ± 100·scale) lies entirely outside its `full` = [width, height] image.
    fn check_face_in_image(&self, index: usize, ann: &AnnotationRef, full: [usize; 2]) -> Result<()> {
        check_face_image_size(|| self.describe(index), full)?;
        let half = 100.0 * ann.scale;
        let [cx, cy] = ann.center.map(f64::from);
        let face = [cx - half, cy - half, cx + half, cy + half];
        if box_misses_image(face, full) {
            bail!(
                "{}: face box {face:?} (center {:?}, scale {}) lies entirely outside the {}x{} image",
                self.describe(index),
                ann.center,
                ann.scale,
                full[0],
                full[1]
            );
        }
        Ok(())
    }

    /// The pipeline, writing into caller buffers (`input` [3,H,W], `target` [J,h,w]).
    pub fn fill_sample(
        &self, index: usize, aug: &Augmentation, input: &mut [f32], target: &mut [f32],
    ) -> Result<SampleMeta> {
        target.fill(0.0);
        self.fill_sample_on_zeros(index, aug, input, target)
    }

    /// [`FaceDataset::fill_sample`] into a `target` the caller knows to be all zeros (a fresh
    /// buffer), which is then not zeroed a second time.
    pub fn fill_sample_on_zeros(
        &self, index: usize, aug: &Augmentation, input: &mut [f32], target: &mut [f32],
    ) -> Result<SampleMeta> {
        let ann = self.annotation(index)?;
        let (mut center, box_size) = (ann.center, ann.box_size);
        let spec = &self.spec;
        let mut pts = ann.pts.to_vec();
        if pts.len() != spec.num_joints {
            bail!("{}: {} landmarks, config expects {}", self.describe(index), pts.len(), spec.num_joints);
        }
        let mut scale = ann.scale * 1.25;
        if spec.is_train {
            scale *= aug.scale_mult;
        }
        let input_type = self.crop_input_type();
        // The crop's source: a JPEG's needed rectangle only, or the whole image.
        let decoded = match &self.annotations {
            Annotations::Csv(r) if spec.region_decode => {
                let rec = r.get(index).ok_or_else(|| anyhow!("sample index {index} out of range (len {})", r.len()))?;
                let want = |w: usize, h: usize| {
                    let c = if aug.flip { [w as f32 - center[0], center[1]] } else { center };
                    match crop_source([w, h], aug.flip, input_type, c, scale, spec.image_size, aug.rot) {
                        CropSource::Whole => None,
                        CropSource::Rect { x, y, w, h } => Some(Rect { x, y, w, h }),
                    }
                };
                let decoded = decode_rgb8_region_opts(&rec.image_path, spec.kind == DatasetKind::Aflw, want)
                    .with_context(|| format!("{}:{}", spec.annotations.display(), rec.line))?;
                Some(decoded)
            }
            _ => None,
        };
        let whole;
        let (img, full, origin) = match &decoded {
            Some(d) => (&d.pixels, d.full, d.origin),
            None => {
                whole = self.source_rgb8(index)?;
                (&*whole, [whole.width, whole.height], [0, 0])
            }
        };
        self.check_face_in_image(index, &ann, full)?;
        if aug.flip {
            let pairs = spec.mirror_pairs().map_err(|e| anyhow!("{}: {e}", self.describe(index)))?;
            fliplr_joints_with(&mut pts, full[0], &pairs).map_err(|e| anyhow!("{}: {e}", self.describe(index)))?;
            center[0] = full[0] as f32 - center[0];
        }
        let (flip, res, rot) = (aug.flip, spec.image_size, aug.rot);
        let with_name = |e: anyhow::Error| anyhow!("{}: {e}", self.describe(index));
        let cropped = match crop_rgb8_region(img, full, origin, flip, input_type, center, scale, res, rot) {
            Ok(Some(out)) => out,
            // The crop needs pixels outside the decoded rectangle after all: decode them all.
            Ok(None) => {
                let whole = self.source_rgb8(index)?;
                crop_rgb8(&whole, flip, input_type, center, scale, res, rot).map_err(with_name)?
            }
            Err(e) => return Err(with_name(e)),
        };
        drop(decoded);
        if cropped.height != spec.image_size[0] || cropped.width != spec.image_size[1] {
            bail!(
                "{}: crop returned {}x{}, expected {}x{}",
                self.describe(index),
                cropped.height,
                cropped.width,
                spec.image_size[0],
                spec.image_size[1]
            );
        }
        normalize_rgb8_into(&cropped, input)?;
        let tpts = HeatmapCodec::for_spec(spec).encode_on_zeros(&pts, center, scale, aug.rot, target)?;
        Ok(SampleMeta {
            index,
            center,
            scale,
            pts: pts.iter().map(|p| [p[0] as f32, p[1] as f32]).collect(),
            tpts,
            box_size,
            augmentation: *aug,
        })
    }
}
