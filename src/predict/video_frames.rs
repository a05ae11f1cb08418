//! A video file as a frame stream (`hrk predict clip.mp4`): the frames of [`VideoDecoder`] in
//! display order, one per wave (the stream is tracked), each with its time from the file. A frame
//! the decoder rejects is a failed frame (reported with its index, the stream goes on); a file that
//! ends early ends the stream, its error kept for [`VideoFrames::take_error`].

use super::stream::{Frame, FrameContent, FrameSource};
use crate::video::decode::{Decoded, VideoDecoder};
use std::path::PathBuf;

/// The frames of one video file, labelled with its path and named `stem` for outputs.
pub struct VideoFrames {
    decoder: VideoDecoder,
    label: PathBuf,
    stem: String,
    error: Option<anyhow::Error>,
}

impl VideoFrames {
    pub fn new(decoder: VideoDecoder, label: PathBuf, stem: &str) -> Self {
        VideoFrames { decoder, label, stem: stem.to_string(), error: None }
    }

    pub fn decoder(&self) -> &VideoDecoder {
        &self.decoder
    }

    /// Why the stream ended early (a truncated or unreadable file), once.
    pub fn take_error(&mut self) -> Option<anyhow::Error> {
        self.error.take()
    }
}

impl FrameSource for VideoFrames {
    /// One frame at a time (`max` aside): a tracked stream goes frame by frame.
    fn next_frames(&mut self, _max: usize) -> Vec<Frame> {
        if self.error.is_some() {
            return Vec::new();
        }
        let (time, content) = match self.decoder.next_frame() {
            Ok(None) => return Vec::new(),
            Err(e) => {
                self.error = Some(e);
                return Vec::new();
            }
            Ok(Some(Decoded::Frame(f))) => (Some(f.time), Ok(FrameContent::Pixels(f.rgb))),
            Ok(Some(Decoded::Skipped { error, .. })) => (None, Err(error)),
        };
        vec![Frame { label: self.label.clone(), name: self.stem.clone(), time, content }]
    }
}
