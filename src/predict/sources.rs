//! Today's frame sources: still image files ([`ImageFiles`], decoded a wave at a time in
//! parallel) and a dataset CSV/.mat's annotated images ([`DatasetFrames`], cropped by `hrk test`'s
//! pipeline).

use super::boxes::FoundFace;
use super::engine::CroppedFaces;
use super::stream::{Frame, FrameContent, FrameSource};
use crate::data::augment::Augmentation;
use crate::data::dataset::{Annotations, FaceDataset};
use crate::data::image::check_face_image_size;
use crate::data::imageio::{decode_rgb8, Rgb8};
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// An image file decoded as `hrk predict` decodes it, its size checked against the image limits.
pub fn read_image(path: &Path) -> Result<Rgb8> {
    let rgb = decode_rgb8(path)?;
    check_face_image_size(|| format!("image {}", path.display()), [rgb.width, rgb.height])?;
    Ok(rgb)
}

/// Image files in list order, each with its output name; a file that cannot be decoded is a
/// failed frame.
pub struct ImageFiles<'a> {
    images: &'a [PathBuf],
    names: &'a [String],
    next: usize,
}

impl<'a> ImageFiles<'a> {
    pub fn new(images: &'a [PathBuf], names: &'a [String]) -> Result<Self> {
        if images.len() != names.len() {
            bail!("predict: {} images and {} output names", images.len(), names.len());
        }
        Ok(ImageFiles { images, names, next: 0 })
    }
}

impl FrameSource for ImageFiles<'_> {
    fn next_frames(&mut self, max: usize) -> Vec<Frame> {
        let end = (self.next + max.max(1)).min(self.images.len());
        let (paths, names) = (&self.images[self.next..end], &self.names[self.next..end]);
        self.next = end;
        paths
            .par_iter()
            .zip(names.par_iter())
            .map(|(p, name)| Frame {
                label: p.clone(),
                name: name.clone(),
                time: None,
                content: read_image(p).map(FrameContent::Pixels),
            })
            .collect()
    }
}

/// The samples of a dataset CSV/.mat through the test-time pipeline of `hrk test` (its own
/// center and scale, `DatasetSpec` crop), grouped by image, one image per wave (its faces form
/// their own batches); `names` are the output names of [`dataset_images`]'s list.
pub struct DatasetFrames<'a> {
    ds: &'a FaceDataset,
    groups: std::vec::IntoIter<(PathBuf, Vec<usize>)>,
    names: std::slice::Iter<'a, String>,
}

impl<'a> DatasetFrames<'a> {
    /// `input_len`: the model's values per face, which the dataset's crops must match.
    pub fn new(ds: &'a FaceDataset, names: &'a [String], input_len: usize) -> Result<Self> {
        let groups = dataset_groups(ds);
        if groups.len() != names.len() {
            bail!("predict: {} dataset images and {} output names", groups.len(), names.len());
        }
        let per = ds.input_len();
        if per != input_len {
            bail!("predict: dataset input {per} values, model input {input_len}");
        }
        Ok(DatasetFrames { ds, groups: groups.into_iter(), names: names.iter() })
    }

    /// One image's annotated faces, cropped as `hrk test` crops them.
    fn crop(&self, samples: &[usize]) -> Result<FrameContent> {
        let ds = self.ds;
        let per = ds.input_len();
        let mut inputs = vec![0f32; samples.len() * per];
        let mut target = vec![0f32; ds.target_len()];
        let mut faces = Vec::new();
        for (&i, buf) in samples.iter().zip(inputs.chunks_exact_mut(per.max(1))) {
            let meta = ds.fill_sample(i, &Augmentation::NONE, buf, &mut target)?;
            // The row's own scale (meta.scale / 1.25 need not give it back bit for bit).
            let annotation_scale = ds.annotation(i)?.scale;
            // The square box the annotation describes.
            let half = 100.0 * annotation_scale;
            let (cx, cy) = (meta.center[0] as f64, meta.center[1] as f64);
            faces.push(FoundFace {
                bbox: [cx - half, cy - half, cx + half, cy + half],
                score: None,
                center: meta.center,
                annotation_scale,
                crop_scale: meta.scale,
            });
        }
        let rgb = ds.source_rgb8(samples[0])?.into_owned();
        Ok(FrameContent::Cropped(rgb, CroppedFaces { faces, inputs }))
    }
}

impl FrameSource for DatasetFrames<'_> {
    fn next_frames(&mut self, _max: usize) -> Vec<Frame> {
        let (Some((label, samples)), Some(name)) = (self.groups.next(), self.names.next()) else {
            return Vec::new();
        };
        let content = self.crop(&samples);
        vec![Frame { label, name: name.clone(), time: None, content }]
    }
}

/// The images of a dataset in sample order, each with its samples (a photo may hold several
/// annotated faces): what [`DatasetFrames`] iterates.
pub fn dataset_images(ds: &FaceDataset) -> Vec<PathBuf> {
    dataset_groups(ds).into_iter().map(|(p, _)| p).collect()
}

fn dataset_groups(ds: &FaceDataset) -> Vec<(PathBuf, Vec<usize>)> {
    let mut groups: Vec<(PathBuf, Vec<usize>)> = Vec::new();
    let mut at: HashMap<PathBuf, usize> = HashMap::new();
    for i in 0..ds.len() {
        let path = match &ds.annotations {
            Annotations::Csv(r) => r[i].image_path.clone(),
            Annotations::Cofw(_) => PathBuf::from(ds.describe(i)),
        };
        match at.get(&path) {
            Some(&g) => groups[g].1.push(i),
            None => {
                at.insert(path.clone(), groups.len());
                groups.push((path, vec![i]));
            }
        }
    }
    groups
}
