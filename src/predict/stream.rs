//! A stream of frames → faces, with state per stream: a [`FrameSource`] delivers frames in waves,
//! [`process_wave`] finds and crops each frame's faces (through the stream's [`StreamState`]) and
//! runs them through one [`LandmarkEngine`] in shared batches, and [`run_stream`] hands each
//! finished wave to an [`OutputSink`] and reports every frame in order.

use super::boxes::{FaceFinder, FoundFace};
use super::engine::{CroppedFaces, ImageResult, LandmarkEngine};
use super::given::GivenBoxes;
use super::pose::add_poses;
use super::sink::OutputSink;
use super::track::{TrackOptions, Tracker};
use crate::atomic_file::is_storage_full;
use crate::data::imageio::Rgb8;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// One frame as its source delivers it.
pub struct Frame {
    /// What the outputs call the frame (the image path: the JSON's `"image"`, the CSV's first field).
    pub label: PathBuf,
    /// The frame's output name (file stem).
    pub name: String,
    /// The frame's time in seconds, where its source knows it (a video's timestamps); a frame
    /// stream's sink otherwise counts it from the frame rate.
    pub time: Option<f64>,
    /// The frame, or why it could not be read (the stream goes on without it).
    pub content: Result<FrameContent>,
}

/// What a frame brings.
pub enum FrameContent {
    /// Decoded pixels; the stream's [`StreamState`] finds the faces.
    Pixels(Rgb8),
    /// Pixels whose faces the source found and cropped itself (a dataset's annotated faces).
    Cropped(Rgb8, CroppedFaces),
}

/// Where a stream's frames come from: a list of image files today ([`super::ImageFiles`],
/// [`super::DatasetFrames`]); a video decoder or raw frames on stdin are other implementors.
pub trait FrameSource {
    /// The next frames of the stream, at most `max` (one wave, in stream order); empty at its end.
    /// A source may deliver fewer (a tracker needs one frame at a time). A frame that cannot be
    /// read comes with its error.
    fn next_frames(&mut self, max: usize) -> Vec<Frame>;
}

/// How a stream's faces are found in frames that come as pixels.
pub enum FaceSource<'a> {
    /// The same way in every frame (the whole image, the detector, or the same boxes).
    Same(FaceFinder<'a>),
    /// Boxes looked up by the frame's label (`--box` per image, `--boxes FILE.csv`).
    ByPath(&'a GivenBoxes),
}

/// What the run loop keeps per stream between waves: how the stream's faces are found, and for a
/// frame stream (video, stdin) its [`Tracker`]: between detections, faces come from the previous
/// frame's landmarks (track.rs).
pub struct StreamState<'a> {
    faces: FaceSource<'a>,
    tracker: Option<Tracker>,
}

impl<'a> StreamState<'a> {
    /// Independent images: every frame's faces come from `faces`.
    pub fn new(faces: FaceSource<'a>) -> Self {
        StreamState { faces, tracker: None }
    }

    /// A frame stream whose faces are tracked: `faces` (the detector, or given boxes) is the
    /// detector of [`Tracker`]. The whole image (`--detector none`) has nothing to track: it is
    /// the face on every frame (`redetect` 1), ids still come from IoU matching and landmarks are
    /// smoothed alike.
    pub fn tracked(faces: FaceSource<'a>, mut opts: TrackOptions) -> Self {
        if matches!(faces, FaceSource::Same(FaceFinder::WholeImage)) {
            opts.redetect = 1;
        }
        StreamState { faces, tracker: Some(Tracker::new(opts)) }
    }

    /// A stream whose frames come cropped ([`FrameContent::Cropped`]): the whole image stands in
    /// for its (unused) face source.
    pub fn for_cropped_frames() -> Self {
        StreamState::new(FaceSource::Same(FaceFinder::WholeImage))
    }

    /// The stream's tracker (None for independent images).
    pub fn tracker(&self) -> Option<&Tracker> {
        self.tracker.as_ref()
    }

    /// Frames per wave: one for a tracked stream (each frame needs the previous one's landmarks).
    fn wave_len(&self, engine: &LandmarkEngine) -> usize {
        if self.tracker.is_some() {
            1
        } else {
            engine.wave_len()
        }
    }

    /// A tracked stream going on with the `tracker` of its earlier frames (taken out with
    /// [`StreamState::into_tracker`]), its faces from `faces`: a caller that borrows the face source
    /// only for one wave at a time (the Python module's `Model.track`, between whose frames the model
    /// may serve other calls) keeps the tracker in between.
    pub fn resumed(faces: FaceSource<'a>, tracker: Tracker) -> Self {
        StreamState { faces, tracker: Some(tracker) }
    }

    /// The stream's tracker, to go on with in [`StreamState::resumed`] (None for independent images).
    pub fn into_tracker(self) -> Option<Tracker> {
        self.tracker
    }

    /// Finishes a wave from [`process_wave`]: the tracker's ids, lost tracks and smoothing, then
    /// each face's head pose (from the landmarks as reported: smoothed in a tracked stream).
    pub fn finish_wave(&mut self, outcomes: &mut [FrameOutcome]) {
        if let Some(tracker) = &mut self.tracker {
            for o in outcomes.iter_mut() {
                match &mut o.result {
                    Ok(f) => {
                        let detected = tracker.wants_detection();
                        tracker.update(&mut f.image.faces, detected);
                    }
                    Err(_) => tracker.skip_frame(),
                }
            }
        }
        for f in outcomes.iter_mut().filter_map(|o| o.result.as_mut().ok()) {
            add_poses(&mut f.image.faces, f.rgb.width, f.rgb.height);
        }
    }

    /// The faces of the frame `label` with pixels `rgb`.
    fn find_faces(&self, label: &Path, rgb: &Rgb8) -> Result<Vec<FoundFace>> {
        if let Some(t) = self.tracker.as_ref().filter(|t| !t.wants_detection()) {
            return Ok(t.tracked_faces());
        }
        match &self.faces {
            FaceSource::Same(finder) => finder.find(rgb),
            FaceSource::ByPath(given) => FaceFinder::Boxes(given.for_image(label, [rgb.width, rgb.height])?).find(rgb),
        }
    }
}

/// A frame after the model: its faces and pixels, or why it failed (one line naming the frame).
pub struct FrameOutcome {
    pub label: PathBuf,
    pub name: String,
    /// The source's time for the frame ([`Frame::time`]).
    pub time: Option<f64>,
    pub result: std::result::Result<FrameFaces, String>,
}

/// A finished frame: its faces and its pixels.
pub struct FrameFaces {
    pub image: ImageResult,
    pub rgb: Rgb8,
}

/// What the observer hears after each frame.
#[derive(Debug)]
pub struct ImageReport<'a> {
    pub path: &'a Path,
    /// Faces found and written (0 on failure).
    pub faces: usize,
    /// Why the image was skipped (one line, naming the image).
    pub error: Option<String>,
}

impl FrameOutcome {
    pub fn report(&self) -> ImageReport<'_> {
        match &self.result {
            Ok(f) => ImageReport { path: &self.label, faces: f.image.faces.len(), error: None },
            Err(e) => ImageReport { path: &self.label, faces: 0, error: Some(e.clone()) },
        }
    }
}

/// An error as one line (its causes joined by `: `), as the frame reports print it.
pub fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A frame's faces between finding and the model.
enum Faces {
    /// Found in the pixels, still to crop.
    Found(Vec<FoundFace>),
    /// Cropped by the source.
    Cropped(CroppedFaces),
}

/// A frame's label, name and time, carried past its pixels to its outcome.
type FrameHead = (PathBuf, String, Option<f64>);

/// One wave: find the faces of the frames that came as pixels (in parallel on the CPU), crop
/// them (in parallel), and run every face through `engine` in shared batches. A frame that cannot
/// be read, searched or cropped fails alone; errors of the model end the stream.
pub fn process_wave(engine: &mut LandmarkEngine, state: &StreamState, frames: Vec<Frame>) -> Result<Vec<FrameOutcome>> {
    let (heads, contents): (Vec<FrameHead>, Vec<Result<FrameContent>>) =
        frames.into_iter().map(|f| ((f.label, f.name, f.time), f.content)).unzip();
    let find = |(label, content): (&PathBuf, Result<FrameContent>)| -> Result<(Rgb8, Faces)> {
        match content? {
            FrameContent::Pixels(rgb) => {
                let faces = state.find_faces(label, &rgb).with_context(|| format!("image {}", label.display()))?;
                Ok((rgb, Faces::Found(faces)))
            }
            FrameContent::Cropped(rgb, cropped) => Ok((rgb, Faces::Cropped(cropped))),
        }
    };
    let found: Vec<Result<(Rgb8, Faces)>> = if engine.on_cpu() {
        heads.par_iter().map(|(label, ..)| label).zip(contents.into_par_iter()).map(find).collect()
    } else {
        // One GPU: its kernels serialise anyway; keep the detector on one thread.
        heads.iter().map(|(label, ..)| label).zip(contents).map(find).collect()
    };
    let eng = &*engine;
    let cropped: Vec<Result<(Rgb8, CroppedFaces)>> = heads
        .par_iter()
        .zip(found.into_par_iter())
        .map(|((label, ..), found)| match found? {
            (rgb, Faces::Cropped(c)) => Ok((rgb, c)),
            (rgb, Faces::Found(faces)) => {
                let c = eng.crop(&rgb, faces).with_context(|| format!("image {}", label.display()))?;
                Ok((rgb, c))
            }
        })
        .collect();
    let (crops, pixels): (Vec<Option<CroppedFaces>>, Vec<std::result::Result<Rgb8, String>>) = cropped
        .into_iter()
        .map(|p| match p {
            Ok((rgb, c)) => (Some(c), Ok(rgb)),
            Err(e) => (None, Err(one_line(&e))),
        })
        .unzip();
    let faces = engine.infer_batched(&crops)?;
    Ok(heads
        .into_iter()
        .zip(pixels)
        .zip(faces)
        .map(|(((label, name, time), rgb), faces)| {
            let result = rgb.map(|rgb| {
                let image = ImageResult { path: label.clone(), width: rgb.width, height: rgb.height, faces };
                FrameFaces { image, rgb }
            });
            FrameOutcome { label, name, time, result }
        })
        .collect())
}

/// One wave of a stream, finished: [`process_wave`] then [`StreamState::finish_wave`] (tracker,
/// poses). [`run_stream`] runs each wave through it; a caller that pulls frames itself (one at a
/// time for a tracked stream) gets the same results.
pub fn stream_wave(
    engine: &mut LandmarkEngine, state: &mut StreamState, frames: Vec<Frame>,
) -> Result<Vec<FrameOutcome>> {
    let mut outcomes = process_wave(engine, state, frames)?;
    state.finish_wave(&mut outcomes);
    Ok(outcomes)
}

/// Runs a stream to its end: waves of `engine.wave_len()` frames (one for a tracked stream)
/// through [`stream_wave`] (the model, the stream's tracker, poses), each wave's outcomes to
/// `sink`, then each frame to `on_frame`, in stream order. A frame whose outputs cannot be written is reported
/// failed; when that is for want of space, the stream ends (an error) after the wave.
pub fn run_stream(
    engine: &mut LandmarkEngine, frames: &mut dyn FrameSource, state: &mut StreamState, sink: &mut dyn OutputSink,
    on_frame: &mut dyn FnMut(&ImageReport),
) -> Result<()> {
    let wave = state.wave_len(engine);
    loop {
        let batch = frames.next_frames(wave);
        if batch.is_empty() {
            return Ok(());
        }
        let outcomes = stream_wave(engine, state, batch)?;
        let unwritten = sink.write_frames(&outcomes)?;
        let mut storage_full = false;
        for (o, failed) in outcomes.iter().zip(unwritten) {
            match failed {
                None => on_frame(&o.report()),
                Some(e) => {
                    storage_full |= is_storage_full(&e);
                    on_frame(&ImageReport { path: &o.label, faces: 0, error: Some(one_line(&e)) });
                }
            }
        }
        if storage_full {
            bail!("stopped: no space left for the outputs");
        }
    }
}
