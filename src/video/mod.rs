//! Video files: decoding a container's frames in display order (decode.rs) and writing the overlay
//! MP4 (encode.rs), through the system's FFmpeg libraries (the `ffmpeg-next` binding). Both exist only
//! with the opt-in `video` Cargo feature; without it, [`NOT_BUILT`] is what a user is told.

#[cfg(feature = "video")]
pub mod decode;
#[cfg(feature = "video")]
pub mod encode;

use anyhow::{bail, Result};

/// The frames of a file to keep: `start <= time < end` (seconds from the stream's start).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TimeRange {
    pub start: f64,
    pub end: Option<f64>,
}

impl TimeRange {
    /// The whole file.
    pub fn all() -> Self {
        TimeRange::default()
    }

    /// `--start` / `--end`, checked: 0 <= start < end, both finite.
    pub fn new(start: Option<f64>, end: Option<f64>) -> Result<Self> {
        let start = start.unwrap_or(0.0);
        if !(start.is_finite() && start >= 0.0) {
            bail!("--start {start}: expected seconds >= 0");
        }
        if let Some(e) = end {
            if !(e.is_finite() && e > start) {
                bail!("--end {e}: expected seconds after --start ({start})");
            }
        }
        Ok(TimeRange { start, end })
    }

    /// Whether the range is the whole file (no --start, no --end).
    pub fn is_all(&self) -> bool {
        self.start == 0.0 && self.end.is_none()
    }
}

/// Whether this binary was built with the `video` feature.
pub const BUILT: bool = cfg!(feature = "video");

/// The one line a video input gets from a binary built without the `video` feature.
pub const NOT_BUILT: &str = "this hrk was built without video; install FFmpeg's libraries (apt-get install \
     libavformat-dev libavcodec-dev libswscale-dev libavutil-dev libclang-dev pkg-config) and rebuild with \
     `cargo build --release --features video`";

/// File extensions read as video (lower case).
pub const VIDEO_EXTENSIONS: &[&str] = &["mp4", "mov", "mkv", "avi", "m4v", "webm"];

/// Whether `path` names a video by its extension (compared case-insensitively).
pub fn is_video_path(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ranges_are_checked() {
        assert!(TimeRange::new(None, None).unwrap().is_all());
        assert_eq!(TimeRange::new(Some(1.5), Some(2.0)).unwrap(), TimeRange { start: 1.5, end: Some(2.0) });
        assert!(TimeRange::new(Some(-1.0), None).unwrap_err().to_string().contains("--start -1"));
        assert!(TimeRange::new(Some(2.0), Some(2.0)).unwrap_err().to_string().contains("--end 2"));
        assert!(TimeRange::new(Some(f64::NAN), None).is_err());
    }
}
