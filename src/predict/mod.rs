//! `hrk predict`'s work: frames (image files, a dataset's annotated images) → faces (the MTCNN
//! detector, given boxes, or the whole image) → crops → batched landmark inference → outputs. The
//! CLI parses flags and prints; everything else is here, built around three seams:
//!
//! - **one in-memory image → faces**: [`LandmarkEngine::faces_in`] takes a decoded RGB image and
//!   a [`FaceFinder`] and returns each face with its landmarks, no files involved (engine.rs; how
//!   a box becomes a crop: boxes.rs).
//! - **a stream of frames → faces, with state per stream**: a [`FrameSource`] delivers frames a
//!   wave at a time ([`ImageFiles`], [`DatasetFrames`] in sources.rs); [`run_stream`] finds and
//!   crops each wave's faces through the stream's [`StreamState`] and runs them in shared batches
//!   (stream.rs). Raw frames on stdin are one more `FrameSource` ([`RawFrames`], raw_frames.rs), a
//!   video file another (`VideoFrames` over `crate::video::decode`, video_frames.rs, with the
//!   `video` feature); a frame stream's state tracks its faces ([`Tracker`], track.rs)
//!   and smooths their landmarks ([`OneEuro`], smooth.rs). Every face gets a head pose from its
//!   landmarks ([`head_pose`], pose.rs), and with `--aligned` an aligned crop ([`aligned_face`],
//!   aligned.rs).
//! - **faces → outputs**: each finished wave goes to an [`OutputSink`]; [`FileSink`] writes the
//!   CLI's per-image JSON and overlay PNG and the run's CSV, and [`image_json`] / [`face_json`]
//!   build the JSON values on their own (sink.rs); [`FrameStreamSink`] writes a frame stream's
//!   JSONL, CSV and overlay video (stream_sink.rs; the MP4 itself: video/encode.rs).
//!
//! given.rs reads `--box` / `--boxes`, inputs.rs lists, shards and names the images, run.rs is the
//! CLI's run (one engine and one file sink over its streams, with the counts).

mod aligned;
mod boxes;
mod engine;
mod given;
mod inputs;
mod pose;
mod raw_frames;
mod run;
mod sink;
mod smooth;
mod sources;
mod stream;
mod stream_sink;
mod track;
#[cfg(feature = "video")]
mod video_frames;

pub use aligned::{aligned_face, check_aligned_size, five_points, TEMPLATE_112};
pub use boxes::{detector_center, FaceBox, FaceFinder, FoundFace, MTCNN_CENTER_SHIFT, MTCNN_MARGIN, SCALE_ENLARGEMENT};
pub use engine::{crop_faces, CroppedFaces, FaceResult, ImageResult, LandmarkEngine, LandmarkOptions};
pub use given::GivenBoxes;
pub use inputs::{collect_images, output_names, parse_shard, shard_indices, IMAGE_EXTENSIONS};
pub use pose::{add_poses, head_pose, pose_indices, solve_pose, Camera, HeadPose, MEAN_FACE_MM};
pub use raw_frames::{PixelFormat, RawFormat, RawFrames};
pub use run::{run_frame_stream, PredictRun, StreamSummary, Summary};
pub use sink::{face_json, image_json, FileSink, OutputSink};
pub use smooth::{LandmarkSmoother, OneEuro, OneEuroParams};
pub use sources::{dataset_images, read_image, DatasetFrames, ImageFiles};
pub use stream::{
    one_line, process_wave, run_stream, stream_wave, FaceSource, Frame, FrameContent, FrameFaces, FrameOutcome,
    FrameSource, ImageReport, StreamState,
};
pub use stream_sink::{AlignedEvery, FrameStreamOutputs, FrameStreamSink};
pub use track::{face_from_landmarks, TrackOptions, Tracker, COLLAPSE_RATIO, MATCH_IOU};
#[cfg(feature = "video")]
pub use video_frames::VideoFrames;

#[cfg(test)]
mod tests;
