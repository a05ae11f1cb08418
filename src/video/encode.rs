//! Writing the overlay video: RGB frames → H.264 (libx264 through libavcodec) in an MP4. To be written.
