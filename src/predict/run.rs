//! A run of `hrk predict`: one [`LandmarkEngine`] and one [`FileSink`] over the streams of the
//! command line (the image list, then a dataset's images), counting what they did.

use super::engine::{LandmarkEngine, LandmarkOptions};
use super::sink::FileSink;
use super::sources::{DatasetFrames, ImageFiles};
use super::stream::{run_stream, FaceSource, FrameSource, ImageReport, StreamState};
use super::stream_sink::{FrameStreamOutputs, FrameStreamSink};
use super::track::TrackOptions;
use crate::data::dataset::FaceDataset;
use crate::model::HrNet;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// Counts of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub images: usize,
    pub faces: usize,
    pub failed: usize,
}

impl Summary {
    fn record(&mut self, r: &ImageReport) {
        self.images += 1;
        self.faces += r.faces;
        self.failed += usize::from(r.error.is_some());
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} images, {} faces, {} failed", self.images, self.faces, self.failed)
    }
}

/// A run of `hrk predict`: writes `<name>.json` and `<name>_landmarks.png` per image into `out`
/// as images finish, and the CSV (a row per face) in [`PredictRun::finish`].
pub struct PredictRun<'a> {
    engine: LandmarkEngine<'a>,
    sink: FileSink,
    summary: Summary,
}

impl<'a> PredictRun<'a> {
    /// Creates `out` if needed; `labels` draws landmark indices on the overlays.
    pub fn new(
        net: &'a mut HrNet, opts: LandmarkOptions, image_size: [usize; 2], out: &Path, labels: bool,
    ) -> Result<Self> {
        let joints = net.spec.num_joints;
        let engine = LandmarkEngine::new(net, opts, image_size)?;
        let sink = FileSink::new(out, labels, joints)?;
        Ok(PredictRun { engine, sink, summary: Summary::default() })
    }

    /// Also writes each face's aligned crop (`--aligned SIZE`, [`FileSink::with_aligned`]).
    pub fn with_aligned(mut self, size: Option<usize>) -> Self {
        self.sink = self.sink.with_aligned(size);
        self
    }

    /// Predicts `images` (output `names`, same length) with faces from `faces`, a wave at a time:
    /// decode, find faces and crop in parallel, run the model on the wave's faces in batches,
    /// write. An image that cannot be decoded or searched is reported (observer) and counted as
    /// failed, as is one whose outputs cannot be written; the run goes on. Errors of the model,
    /// and a full disk, end the run.
    pub fn run_images(
        &mut self, images: &[PathBuf], names: &[String], faces: FaceSource, on_image: &mut dyn FnMut(&ImageReport),
    ) -> Result<()> {
        let mut frames = ImageFiles::new(images, names)?;
        self.run(&mut frames, &mut StreamState::new(faces), on_image)
    }

    /// The images of a dataset CSV/.mat ([`DatasetFrames`]); `names` are the output names of
    /// [`super::dataset_images`]'s list.
    pub fn run_dataset(
        &mut self, ds: &FaceDataset, names: &[String], on_image: &mut dyn FnMut(&ImageReport),
    ) -> Result<()> {
        let mut frames = DatasetFrames::new(ds, names, self.engine.input_len())?;
        self.run(&mut frames, &mut StreamState::for_cropped_frames(), on_image)
    }

    fn run(
        &mut self, frames: &mut dyn FrameSource, state: &mut StreamState, on_image: &mut dyn FnMut(&ImageReport),
    ) -> Result<()> {
        let summary = &mut self.summary;
        run_stream(&mut self.engine, frames, state, &mut self.sink, &mut |r| {
            summary.record(r);
            on_image(r);
        })
    }

    /// The counts so far.
    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// Writes the CSV (`csv_name` in the output folder) and gives the counts.
    pub fn finish(self, csv_name: &str) -> Result<Summary> {
        self.sink.finish(csv_name)?;
        Ok(self.summary)
    }
}

/// Counts of a tracked frame stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    pub frames: usize,
    pub faces: usize,
    pub failed: usize,
    /// Frames the detector (or the face source standing in for it) ran on.
    pub detections: usize,
}

impl std::fmt::Display for StreamSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} frames, {} faces, {} failed, detector on {} frames",
            self.frames, self.faces, self.failed, self.detections
        )
    }
}

/// Runs one frame stream (stdin frames, a video file) with tracking: `<stem>.jsonl`,
/// `<stem>.csv` and the overlay video into `outputs.out` ([`FrameStreamSink`]). A failed frame (a
/// truncated last frame) is reported and counted; errors of the model or of writing end the run
/// (with no overlay video: it is written whole or not at all).
pub fn run_frame_stream(
    engine: &mut LandmarkEngine, frames: &mut dyn FrameSource, faces: FaceSource, track: TrackOptions,
    outputs: &FrameStreamOutputs, on_frame: &mut dyn FnMut(&ImageReport),
) -> Result<StreamSummary> {
    let mut sink = FrameStreamSink::new(outputs, track.fps)?;
    let mut state = StreamState::tracked(faces, track);
    let mut counts = Summary::default();
    run_stream(engine, frames, &mut state, &mut sink, &mut |r| {
        counts.record(r);
        on_frame(r);
    })?;
    sink.finish()?;
    let detections = state.tracker().map_or(0, |t| t.detections());
    Ok(StreamSummary { frames: counts.images, faces: counts.faces, failed: counts.failed, detections })
}
