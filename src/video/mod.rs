//! Video files: decoding a container's frames in display order (decode.rs) and writing the overlay
//! MP4 (encode.rs), through the system's FFmpeg libraries (the `ffmpeg-next` binding). Both exist only
//! with the opt-in `video` Cargo feature; without it, [`NOT_BUILT`] is what a user is told.

#[cfg(feature = "video")]
pub mod decode;
#[cfg(feature = "video")]
pub mod encode;

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
