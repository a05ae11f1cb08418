//! Decoding a video file to RGB frames in display order (FFmpeg: libavformat demuxing, libavcodec
//! decoding, libswscale to RGB24). To be written.
